package sim

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/ballotdb/ballot/consensus"
)

// envelope is a message in flight.
type envelope struct {
	at  int64  // virtual time of delivery
	seq uint64 // tie-break, so delivery order is a function of the seed
	m   consensus.Message
	// group is the index of the group whose message this is: one
	// connection between two machines carries the messages of every group.
	group int
	// fromInc is the sender's incarnation: a snapshot report goes back
	// only to the process that sent the snapshot.
	fromInc int
}

// network is the hostile virtual network: it drops, delays, reorders and
// duplicates messages, and cuts links one way or both. A link joins two
// machines and carries the messages of every group between them: a cut or
// a flaky period hits them all, and they share one queue and one delay
// distribution, as messages multiplexed over one connection would.
type network struct {
	rng      *rand.Rand
	inflight []envelope // kept sorted by (at, seq)
	seq      uint64
	// cut[from][to] blocks the one-way link from → to.
	cut map[consensus.NodeID]map[consensus.NodeID]bool
	// Fault rates, in [0, 1].
	drop, dup float64
	// Delay bounds in time units; a slow message takes up to slowDelay.
	minDelay, maxDelay, slowDelay int64
	slowRate                      float64
	limit                         int // bound on messages in flight
}

func newNetwork(rng *rand.Rand) *network {
	return &network{
		rng: rng, cut: map[consensus.NodeID]map[consensus.NodeID]bool{},
		minDelay: 1, maxDelay: 8, slowDelay: 60, slowRate: 0.05, limit: 20000,
	}
}

func (n *network) blocked(from, to consensus.NodeID) bool { return n.cut[from][to] }

func (n *network) block(from, to consensus.NodeID) {
	if n.cut[from] == nil {
		n.cut[from] = map[consensus.NodeID]bool{}
	}
	n.cut[from][to] = true
}

func (n *network) heal() { n.cut = map[consensus.NodeID]map[consensus.NodeID]bool{} }

func (n *network) partitioned() bool {
	for _, m := range n.cut {
		if len(m) > 0 {
			return true
		}
	}
	return false
}

// send queues m at time now, unless the network loses it. It reports
// whether the message (or a copy) is on its way.
func (n *network) send(now int64, group int, m consensus.Message, fromInc int) bool {
	if n.blocked(m.From, m.To) || n.rng.Float64() < n.drop || len(n.inflight) >= n.limit {
		return false
	}
	copies := 1
	if n.rng.Float64() < n.dup {
		copies = 2
	}
	for range copies {
		d := n.minDelay + n.rng.Int64N(n.maxDelay-n.minDelay+1)
		if n.rng.Float64() < n.slowRate {
			d += n.rng.Int64N(n.slowDelay)
		}
		n.seq++
		e := envelope{at: now + d, seq: n.seq, m: m, group: group, fromInc: fromInc}
		i, _ := slices.BinarySearchFunc(n.inflight, e, func(a, b envelope) int {
			if a.at != b.at {
				return cmp.Compare(a.at, b.at)
			}
			return cmp.Compare(a.seq, b.seq)
		})
		n.inflight = slices.Insert(n.inflight, i, e)
	}
	return true
}

// due removes and returns the next message due at or before now, if any.
// lost says a link cut while the message was in flight lost it (the sender's
// transport would notice: a lost snapshot is reported).
func (n *network) due(now int64) (e envelope, lost, ok bool) {
	if len(n.inflight) == 0 || n.inflight[0].at > now {
		return envelope{}, false, false
	}
	e = n.inflight[0]
	n.inflight = n.inflight[1:]
	return e, n.blocked(e.m.From, e.m.To), true
}

// partitionShape names the kinds of partition the nemesis makes.
type partitionShape int

const (
	shapeSplit      partitionShape = iota // two halves, no traffic between
	shapeIsolate                          // one node (often the leader) alone
	shapeOneWay                           // a node hears the others but is not heard
	shapeBridge                           // two halves joined only through one node
	shapeAsymmetric                       // random one-way cuts
	numPartitionShapes
)

func (s partitionShape) String() string {
	return [...]string{"split", "isolate", "one-way", "bridge", "asymmetric"}[s]
}

// partition cuts the network into the given shape over ids; target is the
// node to single out (the leader, when known). It returns a description.
func (n *network) partition(shape partitionShape, ids []consensus.NodeID, target consensus.NodeID, rng *rand.Rand) string {
	n.heal()
	ids = slices.Clone(ids)
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	if target == consensus.None || !slices.Contains(ids, target) {
		target = ids[0]
	}
	both := func(a, b []consensus.NodeID) {
		for _, x := range a {
			for _, y := range b {
				n.block(x, y)
				n.block(y, x)
			}
		}
	}
	others := func(x consensus.NodeID) []consensus.NodeID {
		var o []consensus.NodeID
		for _, id := range ids {
			if id != x {
				o = append(o, id)
			}
		}
		return o
	}
	switch shape {
	case shapeSplit:
		k := 1 + rng.IntN(len(ids)-1)
		both(ids[:k], ids[k:])
		return fmt.Sprintf("split %v | %v", sorted(ids[:k]), sorted(ids[k:]))
	case shapeIsolate:
		both([]consensus.NodeID{target}, others(target))
		return fmt.Sprintf("isolate %d", target)
	case shapeOneWay:
		for _, y := range others(target) {
			n.block(target, y)
		}
		return fmt.Sprintf("one-way: %d is not heard", target)
	case shapeBridge:
		rest := others(target)
		k := max(1, len(rest)/2)
		both(rest[:k], rest[k:])
		return fmt.Sprintf("bridge %d between %v and %v", target, sorted(rest[:k]), sorted(rest[k:]))
	default:
		var cuts []string
		for _, x := range ids {
			for _, y := range ids {
				if x != y && rng.IntN(3) == 0 {
					n.block(x, y)
					cuts = append(cuts, fmt.Sprintf("%d→%d", x, y))
				}
			}
		}
		return fmt.Sprintf("asymmetric cuts %v", cuts)
	}
}

func sorted(ids []consensus.NodeID) []consensus.NodeID {
	s := slices.Clone(ids)
	slices.Sort(s)
	return s
}
