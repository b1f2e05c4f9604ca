package raft

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/ballotdb/ballot/consensus"
)

// TestScenarios runs the scripts in testdata/. Each names the rule or the
// figure of the Raft paper (or thesis) it checks, drives a small cluster
// step by step, and asserts with check-* commands, which fail the test when
// the state is not what the rule demands. Regenerate the printed output with
// `go test ./raft -run TestScenarios -rewrite`, then read the diff: the
// checks hold the rule, the output documents the run.
func TestScenarios(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		env := &scenarioEnv{t: t}
		datadriven.RunTest(t, path, env.handle)
	})
}

type msgFilter struct {
	from consensus.NodeID // None: any
	typ  string           // "": any
}

type scenarioEnv struct {
	t       *testing.T
	n       *testNet
	groups  [][]consensus.NodeID // partition: messages only within a group
	filters []msgFilter
	lastErr error
}

func (e *scenarioEnv) drop(m consensus.Message) bool {
	for _, f := range e.filters {
		if (f.from == consensus.None || f.from == m.From) && (f.typ == "" || f.typ == m.Type.String()) {
			return true
		}
	}
	if len(e.groups) == 0 {
		return false
	}
	for _, g := range e.groups {
		if slices.Contains(g, m.From) && slices.Contains(g, m.To) {
			return false
		}
	}
	return true
}

func ids64(t testing.TB, vals []string) []consensus.NodeID {
	var out []consensus.NodeID
	for _, v := range vals {
		if v == "" {
			continue
		}
		x, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("bad node id %q", v)
		}
		out = append(out, consensus.NodeID(x))
	}
	return out
}

func (e *scenarioEnv) arg(td *datadriven.TestData, key string) []string {
	a, ok := td.Arg(key)
	if !ok {
		return nil
	}
	return a.Vals
}

func (e *scenarioEnv) argU(td *datadriven.TestData, key string) (uint64, bool) {
	v := e.arg(td, key)
	if len(v) == 0 {
		return 0, false
	}
	x, err := strconv.ParseUint(v[0], 10, 64)
	if err != nil {
		td.Fatalf(e.t, "bad %s=%q", key, v[0])
	}
	return x, true
}

// node is the first bare argument, a node ID.
func (e *scenarioEnv) node(td *datadriven.TestData) *testNode {
	for _, a := range td.CmdArgs {
		if len(a.Vals) == 0 {
			if x, err := strconv.ParseUint(a.Key, 10, 64); err == nil {
				tn := e.n.nodes[consensus.NodeID(x)]
				if tn == nil {
					td.Fatalf(e.t, "no node %d", x)
				}
				return tn
			}
		}
	}
	td.Fatalf(e.t, "%s needs a node ID", td.Cmd)
	return nil
}

func (e *scenarioEnv) messages() string {
	out := strings.Join(e.n.log, "\n")
	e.n.log = nil
	if out == "" {
		return "ok"
	}
	return out
}

func (e *scenarioEnv) handle(t *testing.T, td *datadriven.TestData) string {
	e.t = t
	switch td.Cmd {
	case "add-nodes":
		voters := ids64(t, e.arg(td, "voters"))
		learners := ids64(t, e.arg(td, "learners"))
		flag := func(k string, def bool) bool {
			if v := e.arg(td, k); len(v) > 0 {
				return v[0] == "true"
			}
			return def
		}
		knobs := &TestingKnobs{}
		for _, k := range e.arg(td, "knobs") {
			switch k {
			case "commit-prior-term":
				knobs.CommitPriorTermByCounting = true
			case "readindex-before-noop":
				knobs.ReadIndexBeforeNoopCommit = true
			default:
				td.Fatalf(t, "unknown knob %q", k)
			}
		}
		maxMsg, _ := e.argU(td, "max-msg")
		e.n = newTestNet(t, voters, learners, func(c *Config) {
			c.PreVote, c.CheckQuorum = flag("prevote", true), flag("checkquorum", true)
			if maxMsg > 0 {
				// Few bytes per append: one entry per message.
				c.MaxSizePerMsg, c.MaxEntrySize = maxMsg, 1024
			}
			if *knobs != (TestingKnobs{}) {
				c.Knobs = knobs
			}
		})
		e.n.drop = e.drop
		e.groups, e.filters, e.lastErr = nil, nil, nil
		e.n.stabilize() // the bootstrap entries
		e.n.log = nil
		return "ok"

	case "set-log":
		// Replace a node's log after the bootstrap entries with entries of
		// the given terms, as if it had lived through them, and restart it.
		tn := e.node(td)
		k := uint64(len(e.n.ids()))
		boot := slices.Clone(tn.st.ents[:k])
		ents := boot
		for i, term := range e.arg(td, "terms") {
			ep, _ := strconv.ParseUint(term, 10, 64)
			idx := k + uint64(i) + 1
			ents = append(ents, consensus.Entry{Index: idx, Epoch: ep, Data: []byte(fmt.Sprintf("t%d", ep))})
		}
		epoch, _ := e.argU(td, "epoch")
		tn.st.ents = ents
		tn.st.hs = consensus.HardState{Epoch: epoch, Commit: k}
		e.n.restart(tn.cfg.ID)
		for e.n.processReady(tn.cfg.ID) {
		}
		return e.raftLog(tn)

	case "campaign":
		e.node(td).r.Campaign()
		return "ok"
	case "tick":
		tn := e.node(td)
		c, _ := e.argU(td, "count")
		for range c {
			tn.r.Tick()
		}
		return "ok"
	case "tick-all":
		c, _ := e.argU(td, "count")
		e.n.tickAll(int(c))
		e.n.log = nil
		return "ok"
	case "stabilize":
		e.n.stabilize()
		return e.messages()
	case "round":
		// One round: every node handles its Ready, then every queued
		// message is delivered once.
		for _, id := range e.n.ids() {
			e.n.processReady(id)
		}
		e.n.deliver()
		return e.messages()

	case "propose":
		tn := e.node(td)
		e.lastErr = tn.r.Propose([]byte(e.arg(td, "data")[0]))
		return errString(e.lastErr)
	case "propose-conf-change":
		tn := e.node(td)
		var cc consensus.ConfChange
		for _, a := range td.CmdArgs[1:] {
			if len(a.Vals) > 0 {
				continue
			}
			typ := map[byte]consensus.ConfChangeType{'v': consensus.AddVoter, 'l': consensus.AddLearner, 'r': consensus.RemoveNode}[a.Key[0]]
			id, _ := strconv.ParseUint(a.Key[1:], 10, 64)
			cc.Changes = append(cc.Changes, consensus.ConfChangeSingle{Type: typ, NodeID: consensus.NodeID(id)})
		}
		e.lastErr = tn.r.ProposeConfChange(cc)
		return errString(e.lastErr)
	case "add-node":
		// Start a new, empty node that learns its membership from the leader.
		id := ids64(t, []string{td.CmdArgs[0].Key})[0]
		cfg := Config{ID: id, ElectionTick: 10, HeartbeatTick: 1, Seed: uint64(id) * 7919, PreVote: true, CheckQuorum: true}
		r, err := New(cfg, consensus.InitialState{})
		if err != nil {
			td.Fatalf(t, "new node: %v", err)
		}
		e.n.nodes[id] = &testNode{r: r, cfg: cfg}
		return "ok"
	case "transfer-leadership":
		from, _ := e.argU(td, "from")
		to, _ := e.argU(td, "to")
		e.lastErr = e.n.nodes[consensus.NodeID(from)].r.TransferLeadership(consensus.NodeID(to))
		return errString(e.lastErr)
	case "read-index":
		tn := e.node(td)
		e.lastErr = tn.r.ReadIndex([]byte(e.arg(td, "ctx")[0]))
		return errString(e.lastErr)

	case "partition":
		e.groups = nil
		for _, a := range td.CmdArgs {
			e.groups = append(e.groups, ids64(t, a.Vals))
		}
		return "ok"
	case "isolate":
		id := e.node(td).cfg.ID
		var rest []consensus.NodeID
		for _, x := range e.n.ids() {
			if x != id {
				rest = append(rest, x)
			}
		}
		e.groups = [][]consensus.NodeID{{id}, rest}
		return "ok"
	case "drop":
		f := msgFilter{}
		if v, ok := e.argU(td, "from"); ok {
			f.from = consensus.NodeID(v)
		}
		if v := e.arg(td, "type"); len(v) > 0 {
			f.typ = v[0]
		}
		e.filters = append(e.filters, f)
		return "ok"
	case "heal":
		e.groups, e.filters = nil, nil
		return "ok"
	case "compact":
		tn := e.node(td)
		i, _ := e.argU(td, "index")
		if err := tn.r.Compact(i); err != nil {
			return errString(err)
		}
		// The runtime's snapshot: drop the compacted prefix from storage.
		tn.st.snap = consensus.Snapshot{Meta: tn.r.snapshotMeta()}
		var keep []consensus.Entry
		for _, en := range tn.st.ents {
			if en.Index > i {
				keep = append(keep, en)
			}
		}
		tn.st.ents = keep
		return "ok"
	case "restart":
		// A crash and restart from durable storage; the restarted node
		// handles its first Ready (re-applying committed entries).
		id := e.node(td).cfg.ID
		e.n.restart(id)
		for e.n.processReady(id) {
		}
		e.n.queue = slices.DeleteFunc(e.n.queue, func(m consensus.Message) bool { return m.From == id })
		return "ok"

	case "status":
		return e.status(e.node(td))
	case "raft-log":
		return e.raftLog(e.node(td))

	case "check-leader":
		tn := e.node(td)
		ep, _ := e.argU(td, "epoch")
		st := tn.r.Status()
		if st.Role != consensus.Leader || st.Epoch != ep {
			td.Fatalf(t, "node %d is %s of epoch %d, want leader of %d", tn.cfg.ID, st.Role, st.Epoch, ep)
		}
		for _, id := range e.n.ids() {
			if s := e.n.nodes[id].r.Status(); id != tn.cfg.ID && s.Role == consensus.Leader && s.Epoch == ep {
				td.Fatalf(t, "node %d also leads epoch %d", id, ep)
			}
		}
		return "ok"
	case "check-role":
		tn := e.node(td)
		if got := tn.r.Status().Role.String(); got != e.arg(td, "role")[0] {
			td.Fatalf(t, "node %d is %s, want %s", tn.cfg.ID, got, e.arg(td, "role")[0])
		}
		return "ok"
	case "check-epoch":
		tn := e.node(td)
		want, _ := e.argU(td, "epoch")
		if got := tn.r.Status().Epoch; got != want {
			td.Fatalf(t, "node %d is in epoch %d, want %d", tn.cfg.ID, got, want)
		}
		return "ok"
	case "check-committed":
		tn := e.node(td)
		want, _ := e.argU(td, "index")
		if got := tn.r.Status().Commit; got != want {
			td.Fatalf(t, "node %d committed %d, want %d", tn.cfg.ID, got, want)
		}
		return "ok"
	case "check-applied", "check-not-applied":
		tn := e.node(td)
		data := e.arg(td, "data")[0]
		found := slices.ContainsFunc(tn.applied, func(en consensus.Entry) bool { return string(en.Data) == data })
		if found != (td.Cmd == "check-applied") {
			td.Fatalf(t, "node %d: %q applied = %v", tn.cfg.ID, data, found)
		}
		return "ok"
	case "check-read", "check-no-read":
		tn := e.node(td)
		ctx := e.arg(td, "ctx")[0]
		idx := slices.IndexFunc(tn.reads, func(rs consensus.ReadState) bool { return string(rs.RequestCtx) == ctx })
		if td.Cmd == "check-no-read" {
			if idx >= 0 {
				td.Fatalf(t, "node %d confirmed read %q at %d", tn.cfg.ID, ctx, tn.reads[idx].Index)
			}
			return "ok"
		}
		if idx < 0 {
			td.Fatalf(t, "node %d has no confirmed read %q", tn.cfg.ID, ctx)
		}
		if want, ok := e.argU(td, "index"); ok && tn.reads[idx].Index != want {
			td.Fatalf(t, "read %q confirmed at %d, want %d", ctx, tn.reads[idx].Index, want)
		}
		return fmt.Sprintf("read %q at index %d", ctx, tn.reads[idx].Index)
	case "check-error":
		want := e.arg(td, "contains")[0]
		if e.lastErr == nil || !strings.Contains(e.lastErr.Error(), want) {
			td.Fatalf(t, "last error %v, want one containing %q", e.lastErr, want)
		}
		return "ok"
	case "check-logs-match":
		var first string
		for i, id := range ids64(t, e.arg(td, "ids")) {
			l := e.raftLog(e.n.nodes[id])
			if i == 0 {
				first = l
			} else if l != first {
				td.Fatalf(t, "node %d's log differs:\n%s\nfrom\n%s", id, l, first)
			}
		}
		return "ok"
	case "check-conf":
		tn := e.node(td)
		cs := tn.r.Status().ConfState
		if got, want := fmt.Sprint(sorted64(cs.Voters)), fmt.Sprint(ids64(t, e.arg(td, "voters"))); got != want {
			td.Fatalf(t, "node %d voters %s, want %s", tn.cfg.ID, got, want)
		}
		if got, want := fmt.Sprint(sorted64(cs.Learners)), fmt.Sprint(ids64(t, e.arg(td, "learners"))); got != want {
			td.Fatalf(t, "node %d learners %s, want %s", tn.cfg.ID, got, want)
		}
		if j := e.arg(td, "joint"); len(j) > 0 && (j[0] == "true") != cs.Joint() {
			td.Fatalf(t, "node %d joint = %v: %s", tn.cfg.ID, cs.Joint(), cs)
		}
		return cs.String()
	}
	td.Fatalf(t, "unknown command %q", td.Cmd)
	return ""
}

func sorted64(ids []consensus.NodeID) []consensus.NodeID {
	s := slices.Clone(ids)
	slices.Sort(s)
	if s == nil {
		s = []consensus.NodeID{}
	}
	return s
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return "error: " + err.Error()
}

func (e *scenarioEnv) status(tn *testNode) string {
	st := tn.r.Status()
	return fmt.Sprintf("%d: %s epoch=%d lead=%d commit=%d applied=%d last=%d %s", st.ID, st.Role, st.Epoch, st.Leader, st.Commit, st.Applied, st.LastIndex, st.ConfState)
}

// raftLog prints a node's durable log: its snapshot and the entries after.
func (e *scenarioEnv) raftLog(tn *testNode) string {
	var b strings.Builder
	if tn.st.snap.Meta.Index > 0 {
		fmt.Fprintf(&b, "snapshot %d/%d\n", tn.st.snap.Meta.Index, tn.st.snap.Meta.Epoch)
	}
	for _, en := range tn.st.ents {
		fmt.Fprintf(&b, "%d/%d %s", en.Index, en.Epoch, en.Type)
		if en.Type == consensus.EntryNormal {
			fmt.Fprintf(&b, " %s", en.Data)
		}
		b.WriteByte('\n')
	}
	if b.Len() == 0 {
		return "empty"
	}
	return strings.TrimSuffix(b.String(), "\n")
}
