package sim

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
)

// command is a client write as it travels through the log.
type command struct {
	client int
	op     int // the client's sequence number, from 1
	key    string
	value  string
}

func (c command) encode() []byte {
	return []byte("P|" + strconv.Itoa(c.client) + "|" + strconv.Itoa(c.op) + "|" + c.key + "|" + c.value)
}

func decodeCommand(b []byte) (command, error) {
	f := strings.Split(string(b), "|")
	if len(f) != 5 || f[0] != "P" {
		return command{}, fmt.Errorf("malformed command %q", b)
	}
	client, err1 := strconv.Atoi(f[1])
	op, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return command{}, fmt.Errorf("malformed command %q", b)
	}
	return command{client: client, op: op, key: f[3], value: f[4]}, nil
}

// kvState is the simulated application: a map with exactly-once writes. Each
// client's last applied sequence is remembered so a duplicated proposal (the
// network may deliver a forwarded proposal twice) is applied once, as
// DESIGN.md requires of every ballot state machine.
type kvState struct {
	data   map[string]string
	lastOp map[int]int
}

func newKV() *kvState { return &kvState{data: map[string]string{}, lastOp: map[int]int{}} }

// apply applies c and reports whether it took effect (false for a
// duplicate).
func (kv *kvState) apply(c command) bool {
	if c.op <= kv.lastOp[c.client] {
		return false
	}
	kv.lastOp[c.client] = c.op
	kv.data[c.key] = c.value
	return true
}

// encode is the snapshot image: deterministic, sorted.
func (kv *kvState) encode() []byte {
	var b strings.Builder
	keys := make([]string, 0, len(kv.data))
	for k := range kv.data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "k|%s|%s\n", k, kv.data[k])
	}
	clients := make([]int, 0, len(kv.lastOp))
	for c := range kv.lastOp {
		clients = append(clients, c)
	}
	slices.Sort(clients)
	for _, c := range clients {
		fmt.Fprintf(&b, "c|%d|%d\n", c, kv.lastOp[c])
	}
	return []byte(b.String())
}

func decodeKV(b []byte) (*kvState, error) {
	kv := newKV()
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) != 3 {
			return nil, fmt.Errorf("malformed snapshot line %q", line)
		}
		switch f[0] {
		case "k":
			kv.data[f[1]] = f[2]
		case "c":
			c, err1 := strconv.Atoi(f[1])
			op, err2 := strconv.Atoi(f[2])
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("malformed snapshot line %q", line)
			}
			kv.lastOp[c] = op
		default:
			return nil, fmt.Errorf("malformed snapshot line %q", line)
		}
	}
	return kv, nil
}

// hash identifies the state; two nodes that applied the same prefix have the
// same hash.
func (kv *kvState) hash() uint64 {
	h := fnv.New64a()
	h.Write(kv.encode())
	return h.Sum64()
}

func dataHash(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}
