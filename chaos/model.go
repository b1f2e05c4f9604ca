package chaos

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Register workload operations.
type opKind uint8

const (
	opGet opKind = iota
	opPut
	opCAS
	opDel
)

// regInput is one client operation on one key.
type regInput struct {
	kind     opKind
	key      string
	value    string // put, cas: the new value
	expected string // cas: the value compared against
}

// regOutput is what the client was told.
type regOutput struct {
	exists  bool   // get: the key existed
	value   string // get: its value
	ok      bool   // cas: the compare held
	unknown bool   // the outcome was never learned (a timeout)
}

// regState is one key: absent, or present with a value.
type regState struct {
	exists bool
	value  string
}

// registerModel is the sequential specification of the register workload:
// independent keys, each absent or holding a value. Partitioned per key, so
// each key's history is checked on its own.
var registerModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range h {
			k := op.Input.(regInput).key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return regState{} },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(regState), input.(regInput), output.(regOutput)
		switch in.kind {
		case opGet:
			return out.exists == s.exists && (!s.exists || out.value == s.value), s
		case opPut:
			return true, regState{exists: true, value: in.value}
		case opDel:
			return true, regState{}
		case opCAS:
			holds := s.exists && s.value == in.expected
			if out.unknown {
				if holds {
					return true, regState{exists: true, value: in.value}
				}
				return true, s
			}
			if out.ok != holds {
				return false, s
			}
			if holds {
				return true, regState{exists: true, value: in.value}
			}
			return true, s
		}
		return false, s
	},
	Equal: func(a, b any) bool { return a.(regState) == b.(regState) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(regInput), output.(regOutput)
		switch in.kind {
		case opGet:
			if !out.exists {
				return fmt.Sprintf("get(%s) → absent", in.key)
			}
			return fmt.Sprintf("get(%s) → %s", in.key, out.value)
		case opPut:
			return fmt.Sprintf("put(%s, %s)%s", in.key, in.value, unknownMark(out))
		case opDel:
			return fmt.Sprintf("del(%s)%s", in.key, unknownMark(out))
		default:
			return fmt.Sprintf("cas(%s, %s→%s) → %v%s", in.key, in.expected, in.value, out.ok, unknownMark(out))
		}
	},
	DescribeState: func(state any) string {
		s := state.(regState)
		if !s.exists {
			return "absent"
		}
		return s.value
	},
}

func unknownMark(o regOutput) string {
	if o.unknown {
		return " (unknown)"
	}
	return ""
}

// unknownReturn is the return time of an operation whose outcome was never
// learned: it may take effect at any time after its call.
const unknownReturn = math.MaxInt64 / 2

// checkRegister checks a history. An Unknown verdict (the checker ran out
// of time) is a failure, not a pass. On failure the visualization is
// written to dir (when set) and its path returned.
func checkRegister(ops []porcupine.Operation, timeout time.Duration, dir string) (ok bool, detail, vis string) {
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, timeout)
	if res == porcupine.Ok {
		return true, "", ""
	}
	if dir != "" {
		vis = filepath.Join(dir, "linearizability.html")
		if f, err := os.Create(vis); err == nil {
			porcupine.Visualize(registerModel, info, f)
			f.Close()
		} else {
			vis = ""
		}
	}
	if res == porcupine.Unknown {
		return false, fmt.Sprintf("porcupine gave no verdict within %v over %d operations (Unknown counts as a failure)", timeout, len(ops)), vis
	}
	bad := failingKeys(ops, timeout)
	if dir != "" {
		for _, k := range bad {
			writeKeyHistory(filepath.Join(dir, "history-"+strings.ReplaceAll(k, "/", "_")+".txt"), k, ops)
		}
	}
	return false, fmt.Sprintf("history of %d operations is not linearizable; failing keys %v", len(ops), bad), vis
}

// failingKeys checks each key's history on its own and names those that
// fail.
func failingKeys(ops []porcupine.Operation, timeout time.Duration) []string {
	var bad []string
	for _, part := range registerModel.Partition(ops) {
		if porcupine.CheckOperationsTimeout(registerModel, part, timeout) != porcupine.Ok {
			bad = append(bad, part[0].Input.(regInput).key)
		}
	}
	return bad
}

// writeKeyHistory writes one key's operations in call order, for a person.
func writeKeyHistory(path, key string, ops []porcupine.Operation) {
	var mine []porcupine.Operation
	for _, op := range ops {
		if op.Input.(regInput).key == key {
			mine = append(mine, op)
		}
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].Call < mine[j].Call })
	var b strings.Builder
	fmt.Fprintf(&b, "history of %s: call and return in ms since the start\n", key)
	for _, op := range mine {
		ret := "?"
		if op.Return != unknownReturn {
			ret = fmt.Sprintf("%.3f", float64(op.Return)/1e6)
		}
		fmt.Fprintf(&b, "[%10.3f .. %10s] client %2d  %s\n", float64(op.Call)/1e6, ret, op.ClientId,
			registerModel.DescribeOperation(op.Input, op.Output))
	}
	os.WriteFile(path, []byte(b.String()), 0o600)
}
