package sim

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ballotdb/ballot/consensus"
)

// kvInput is a client operation as porcupine sees it.
type kvInput struct {
	put   bool
	key   string
	value string
}

// kvOutput is what the client was told; for a put with an unknown outcome it
// is ignored.
type kvOutput struct {
	value string
}

// kvModel is the sequential specification of the simulated store: a map
// from key to value, partitioned by key.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(kvInput)
		if in.put {
			return true, in.value
		}
		return output.(kvOutput).value == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(kvInput)
		if in.put {
			return fmt.Sprintf("put(%s, %s)", in.key, in.value)
		}
		return fmt.Sprintf("get(%s) → %q", in.key, output.(kvOutput).value)
	},
}

// unknownReturn is the return time of an operation whose outcome the client
// never learned: it may take effect at any time after its call.
const unknownReturn = math.MaxInt64 / 2

// clientOp is one operation a simulated client has outstanding.
type clientOp struct {
	client   int
	op       int
	in       kvInput
	call     int64
	node     consensus.NodeID // the node the client sent it to
	inc      int              // that node's incarnation
	deadline int64
}

// history collects finished operations for the linearizability check.
type history struct {
	ops []porcupine.Operation
}

func (h *history) complete(op *clientOp, out kvOutput, at int64) {
	h.ops = append(h.ops, porcupine.Operation{ClientId: op.client, Input: op.in, Call: op.call, Output: out, Return: at})
}

// unknown records a write whose outcome is unknown: it may have happened.
func (h *history) unknown(op *clientOp) {
	h.ops = append(h.ops, porcupine.Operation{ClientId: op.client, Input: op.in, Call: op.call, Output: kvOutput{}, Return: unknownReturn})
}

// checkLinearizable runs porcupine over the history. A timeout (Unknown) is
// a failure: a sweep must prove, not shrug.
func checkLinearizable(ops []porcupine.Operation, timeout time.Duration) *Violation {
	res, info := porcupine.CheckOperationsVerbose(kvModel, ops, timeout)
	switch res {
	case porcupine.Ok:
		return nil
	case porcupine.Unknown:
		return violation(Linearizability, "porcupine gave no verdict within %v over %d operations (Unknown counts as failure)", timeout, len(ops))
	}
	return violation(Linearizability, "history of %d operations is not linearizable; longest linearizable prefix per key:\n%s", len(ops), describePartial(ops, info))
}

func describePartial(ops []porcupine.Operation, info porcupine.LinearizationInfo) string {
	var b strings.Builder
	for p, parts := range info.PartialLinearizationsOperations() {
		if p > 0 && b.Len() > 4000 {
			break
		}
		longest := []porcupine.Operation{}
		for _, l := range parts {
			if len(l) > len(longest) {
				longest = l
			}
		}
		for _, op := range longest {
			ret := fmt.Sprint(op.Return)
			if op.Return == unknownReturn {
				ret = "?"
			}
			fmt.Fprintf(&b, "  [%d..%s] client %d %s\n", op.Call, ret, op.ClientId, kvModel.DescribeOperation(op.Input, op.Output))
		}
		b.WriteString("  --\n")
	}
	return b.String()
}
