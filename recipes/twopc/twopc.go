// Package twopc is two-phase commit among independent participants —
// services that are not ballot — with the decision kept in ballot (or any
// etcd v3 API), so that no participant stays blocked when the coordinator
// dies.
//
// # The protocol
//
// A Coordinator asks every Participant to prepare transaction tx. A
// participant that answers yes has made a durable promise: it can commit tx
// whatever happens, and it will not abort on its own. Then the coordinator
// records the decision at
//
//	ballot/twopc/TX/decision   "COMMIT" or "ABORT"
//
// by compare-and-swap from absent — COMMIT only if every participant voted
// yes, ABORT otherwise (a no, an error, a timeout) — and only then tells the
// participants, retrying; Commit and Abort are idempotent.
//
// # Where classic two-phase commit blocks, and why this does not
//
// In classic 2PC the decision lives only in the coordinator. A participant
// that voted yes may neither commit (someone else may have voted no) nor
// abort (the coordinator may have decided COMMIT and told others), so if the
// coordinator crashes after collecting the votes and before telling
// everyone, every prepared participant is blocked — holding its locks —
// until that very coordinator comes back. Asking the other participants
// does not help when they are all prepared and none heard the decision.
//
// Here the decision is a key in a replicated consensus group: it survives
// the coordinator, and it is written exactly once (compare-and-swap from
// absent). A participant that voted yes and hears nothing within its
// patience reads the key (Await, Agent.Resolve): if a decision is there it
// follows it; if not, it writes ABORT by compare-and-swap from absent, and
// follows whatever the key says afterwards — its own ABORT, or a COMMIT
// that the coordinator wrote first. The coordinator's own compare-and-swap
// then fails and it learns ABORT, so the coordinator and every participant
// agree. A restarted coordinator (Coordinator.Recover) and a restarted
// participant (Agent.Recover) recover from the key the same way. The
// protocol blocks only while the consensus group itself has no majority.
//
// # Guarantee
//
// Every participant that commits or aborts tx does what the decision key
// says, and the key is written once, so no participant commits while
// another aborts. COMMIT is written only after every participant promised;
// no participant stays in doubt longer than its patience plus the time to
// reach a majority of the ballot cluster.
//
// # Assumption
//
// A participant keeps its promise: its prepared state and its Journal
// survive its crashes (MemJournal is durable only as long as the process
// that holds it — real participants keep the journal with their data).
// Patience is measured on the participant's own clock; a short patience
// or a fast clock only turns would-be commits into aborts, never breaks
// agreement. Decision keys are never deleted by this package: deleting one
// while a participant may still be in doubt would let it abort a
// committed transaction.
package twopc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/recipes/internal/queue"
)

// Prefix is where every transaction's decision key lives.
const Prefix = "ballot/twopc/"

// Decision is the outcome of a transaction.
type Decision string

// The decisions; the zero Decision means none was recorded yet.
const (
	Commit Decision = "COMMIT"
	Abort  Decision = "ABORT"
)

var (
	// ErrCrashed is what a step hook returns to crash a Coordinator or an
	// Agent at that step (tests, the kitchen example); a crashed object
	// refuses every further call with it, as a dead process would.
	ErrCrashed = errors.New("twopc: crashed")
	// ErrUnreached is returned with a recorded decision when some
	// participants could not be told; they learn it from the decision key.
	ErrUnreached = errors.New("twopc: decision recorded but not every participant was told")
	// ErrConflict means a participant was told to commit what it aborted,
	// or the reverse: a broken invariant, never expected.
	ErrConflict = errors.New("twopc: conflicting decision")
	// ErrBadName is returned for a transaction name that cannot be a key
	// segment.
	ErrBadName = queue.ErrBadName
)

// DecisionKey is where the decision of tx is kept.
func DecisionKey(tx string) string { return Prefix + tx + "/decision" }

// Participant is the coordinator's view of one participant.
type Participant interface {
	Name() string
	// Prepare asks the participant to promise it can commit tx; true is
	// a yes vote, after which the participant keeps the promise durably.
	// Prepare is idempotent: asked again, it answers the same.
	Prepare(ctx context.Context, tx string) (bool, error)
	// Commit and Abort carry the decision; both are idempotent.
	Commit(ctx context.Context, tx string) error
	Abort(ctx context.Context, tx string) error
}

// ReadDecision returns the recorded decision of tx, or "" if none is.
func ReadDecision(ctx context.Context, cli *clientv3.Client, tx string) (Decision, error) {
	resp, err := cli.Get(ctx, DecisionKey(tx))
	if err != nil {
		return "", fmt.Errorf("twopc %s: read decision: %w", tx, err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return parseDecision(tx, resp.Kvs[0].Value)
}

func parseDecision(tx string, v []byte) (Decision, error) {
	switch d := Decision(v); d {
	case Commit, Abort:
		return d, nil
	}
	return "", fmt.Errorf("twopc %s: decision key holds %q, neither COMMIT nor ABORT", tx, v)
}

// record writes want as the decision of tx if none is recorded, and returns
// the decision the key holds afterwards (want, or what was there first).
// Retrying it is safe.
func record(ctx context.Context, cli *clientv3.Client, tx string, want Decision) (Decision, error) {
	k := DecisionKey(tx)
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(want))).Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return "", fmt.Errorf("twopc %s: record %s: %w", tx, want, err)
	}
	if resp.Succeeded {
		return want, nil
	}
	return parseDecision(tx, resp.Responses[0].GetResponseRange().GetKvs()[0].Value)
}

// Await is what a participant that voted yes does when it has not heard
// the decision: it waits up to patience for a decision to be recorded,
// then records ABORT if there still is none, and returns the decision the
// key holds. It never records COMMIT.
func Await(ctx context.Context, cli *clientv3.Client, tx string, patience time.Duration) (Decision, error) {
	deadline := time.Now().Add(patience)
	for {
		resp, err := cli.Get(ctx, DecisionKey(tx))
		if err != nil {
			return "", fmt.Errorf("twopc %s: await: %w", tx, err)
		}
		if len(resp.Kvs) > 0 {
			return parseDecision(tx, resp.Kvs[0].Value)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return record(ctx, cli, tx, Abort)
		}
		d, err := watchDecision(ctx, cli, tx, resp.Header.Revision+1, left)
		if err != nil || d != "" {
			return d, err
		}
		// The wait timed out or the watch ended: read again.
	}
}

// watchDecision watches the decision key from rev for at most d and
// returns the decision if one is recorded in that time, else "".
func watchDecision(ctx context.Context, cli *clientv3.Client, tx string, rev int64, d time.Duration) (Decision, error) {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for wr := range cli.Watch(clientv3.WithRequireLeader(wctx), DecisionKey(tx), clientv3.WithRev(rev)) {
		if wr.Canceled || wr.Err() != nil {
			break
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.PUT {
				return parseDecision(tx, ev.Kv.Value)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("twopc %s: await: %w", tx, err)
	}
	return "", nil
}

// StepKind names a step of the protocol at which a hook may crash a
// Coordinator or an Agent.
type StepKind string

// The steps. The coordinator passes StepPrepare and StepNotify once per
// participant, before asking or telling it; StepDecide before recording
// the decision; StepDone after telling everyone. An agent passes
// StepAgentPrepare before its local prepare, StepAgentPrepared after
// promising durably and before answering yes, and StepAgentCommit and
// StepAgentAbort before applying the decision.
const (
	StepPrepare       StepKind = "prepare"
	StepDecide        StepKind = "decide"
	StepNotify        StepKind = "notify"
	StepDone          StepKind = "done"
	StepAgentPrepare  StepKind = "agent-prepare"
	StepAgentPrepared StepKind = "agent-prepared"
	StepAgentCommit   StepKind = "agent-commit"
	StepAgentAbort    StepKind = "agent-abort"
)

// Step is one step of the protocol.
type Step struct {
	Kind        StepKind
	Tx          string
	Participant string // the participant asked or told, or the agent
}

func (s Step) String() string { return fmt.Sprintf("%s %s/%s", s.Kind, s.Tx, s.Participant) }

type config struct {
	prepareTimeout time.Duration
	notifyAttempts int
	patience       time.Duration
	hook           func(Step) error
}

// Option configures a Coordinator or an Agent.
type Option func(*config)

// WithPrepareTimeout bounds how long the coordinator waits for one
// participant's vote (default 5 s); no answer in time counts as no.
func WithPrepareTimeout(d time.Duration) Option { return func(c *config) { c.prepareTimeout = d } }

// WithNotifyAttempts bounds how many times the coordinator tries to tell a
// participant the decision (default 3).
func WithNotifyAttempts(n int) Option { return func(c *config) { c.notifyAttempts = max(n, 1) } }

// WithPatience sets how long an agent in doubt waits for a decision before
// recording ABORT (default 10 s).
func WithPatience(d time.Duration) Option { return func(c *config) { c.patience = d } }

// WithStepHook calls hook before each step; if it returns an error (use
// ErrCrashed), the Coordinator or Agent stops there as if its process had
// died: the call returns the error and every later call fails.
func WithStepHook(hook func(Step) error) Option { return func(c *config) { c.hook = hook } }

func newConfig(opts []Option) config {
	c := config{prepareTimeout: 5 * time.Second, notifyAttempts: 3, patience: 10 * time.Second}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// crasher runs the step hook and remembers a crash.
type crasher struct {
	hook    func(Step) error
	crashed atomic.Bool
}

func (c *crasher) step(s Step) error {
	if c.crashed.Load() {
		return fmt.Errorf("%v: %w", s, ErrCrashed)
	}
	if c.hook == nil {
		return nil
	}
	if err := c.hook(s); err != nil {
		c.crashed.Store(true)
		return fmt.Errorf("twopc: at %v: %w", s, err)
	}
	return nil
}

func (c *crasher) alive() error {
	if c.crashed.Load() {
		return ErrCrashed
	}
	return nil
}

// Coordinator drives transactions. One Coordinator may run many
// transactions, concurrently.
type Coordinator struct {
	cli *clientv3.Client
	cfg config
	crasher
}

// NewCoordinator returns a coordinator that records decisions through cli.
func NewCoordinator(cli *clientv3.Client, opts ...Option) *Coordinator {
	cfg := newConfig(opts)
	return &Coordinator{cli: cli, cfg: cfg, crasher: crasher{hook: cfg.hook}}
}

// Run runs transaction tx among parts: it asks each to prepare (in order,
// stopping at the first no), records the decision, and tells every
// participant. It returns the recorded decision — which is ABORT, even if
// all voted yes, when a participant in doubt recorded ABORT first — and
// ErrUnreached (with the decision) when some participant could not be told.
func (c *Coordinator) Run(ctx context.Context, tx string, parts []Participant) (Decision, error) {
	if err := checkRun(tx, parts); err != nil {
		return "", err
	}
	want := Commit
	for _, p := range parts {
		if err := c.step(Step{StepPrepare, tx, p.Name()}); err != nil {
			return "", err
		}
		pctx, cancel := context.WithTimeout(ctx, c.cfg.prepareTimeout)
		yes, err := p.Prepare(pctx, tx)
		cancel()
		if err != nil || !yes {
			want = Abort
			break
		}
	}
	if err := c.step(Step{StepDecide, tx, ""}); err != nil {
		return "", err
	}
	d, err := record(ctx, c.cli, tx, want)
	if err != nil {
		return "", err
	}
	return d, c.notify(ctx, tx, d, parts)
}

// Recover finishes tx after a coordinator crash: if no decision was
// recorded, it records ABORT (the crashed coordinator may have asked only
// some participants); then it tells every participant the decision.
func (c *Coordinator) Recover(ctx context.Context, tx string, parts []Participant) (Decision, error) {
	if err := checkRun(tx, parts); err != nil {
		return "", err
	}
	if err := c.alive(); err != nil {
		return "", err
	}
	d, err := record(ctx, c.cli, tx, Abort)
	if err != nil {
		return "", err
	}
	return d, c.notify(ctx, tx, d, parts)
}

func checkRun(tx string, parts []Participant) error {
	if err := queue.CheckName(tx); err != nil {
		return fmt.Errorf("twopc: %w", err)
	}
	seen := map[string]bool{}
	for _, p := range parts {
		if seen[p.Name()] {
			return fmt.Errorf("twopc %s: participant %q listed twice", tx, p.Name())
		}
		seen[p.Name()] = true
	}
	return nil
}

// notify tells every participant d, each up to notifyAttempts times.
func (c *Coordinator) notify(ctx context.Context, tx string, d Decision, parts []Participant) error {
	var unreached []string
	for _, p := range parts {
		if err := c.step(Step{StepNotify, tx, p.Name()}); err != nil {
			return err
		}
		var err error
		for attempt := range c.cfg.notifyAttempts {
			if attempt > 0 && !sleepCtx(ctx, time.Duration(attempt)*50*time.Millisecond) {
				break
			}
			if d == Commit {
				err = p.Commit(ctx, tx)
			} else {
				err = p.Abort(ctx, tx)
			}
			if err == nil || errors.Is(err, ErrCrashed) || errors.Is(err, ErrConflict) {
				break
			}
		}
		if err != nil {
			unreached = append(unreached, fmt.Sprintf("%s (%v)", p.Name(), err))
		}
	}
	if err := c.step(Step{StepDone, tx, ""}); err != nil {
		return err
	}
	if len(unreached) > 0 {
		return fmt.Errorf("twopc %s: %s not told %s: %w", tx, strings.Join(unreached, ", "), d, ErrUnreached)
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// State is a participant's state for one transaction.
type State string

// The states; the zero State means the participant never prepared tx.
const (
	Prepared  State = "prepared"
	Committed State = "committed"
	Aborted   State = "aborted"
)

// Journal is a participant's durable memory of its promises: it must
// survive the participant's crashes.
type Journal interface {
	State(tx string) (State, error)
	SetState(tx string, s State) error
	// InDoubt lists the transactions in state Prepared.
	InDoubt() ([]string, error)
}

// MemJournal is a Journal in memory: durable across Agent objects that
// share it (a crash modelled in-process), not across processes.
type MemJournal struct {
	mu sync.Mutex
	m  map[string]State
}

// NewMemJournal returns an empty MemJournal.
func NewMemJournal() *MemJournal { return &MemJournal{m: map[string]State{}} }

// State implements Journal.
func (j *MemJournal) State(tx string) (State, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.m[tx], nil
}

// SetState implements Journal.
func (j *MemJournal) SetState(tx string, s State) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.m[tx] = s
	return nil
}

// InDoubt implements Journal.
func (j *MemJournal) InDoubt() ([]string, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []string
	for tx, s := range j.m {
		if s == Prepared {
			out = append(out, tx)
		}
	}
	return out, nil
}

// Work is what a participant actually does; an Agent calls it. Prepare
// must make commit possible whatever happens next (reserve, lock, write
// ahead) and say whether it can; Commit and Abort must be idempotent,
// since a crash between doing the work and journaling it repeats them.
type Work interface {
	Prepare(ctx context.Context, tx string) (bool, error)
	Commit(ctx context.Context, tx string) error
	Abort(ctx context.Context, tx string) error
}

// Agent is the participant's half of the protocol around its Work: it
// journals its promise before answering yes, answers repeated requests the
// same, applies the decision once, and resolves transactions it is in doubt
// about from the decision key. It implements Participant, so a coordinator
// in the same process can call it directly; across processes, serve its
// methods over any RPC.
type Agent struct {
	name    string
	cli     *clientv3.Client
	work    Work
	journal Journal
	cfg     config
	mu      sync.Mutex // serializes state changes of the journal
	crasher
}

// NewAgent returns the agent of participant name, with its Work and its
// Journal; cli reaches the ballot cluster that keeps decisions.
func NewAgent(cli *clientv3.Client, name string, work Work, journal Journal, opts ...Option) *Agent {
	cfg := newConfig(opts)
	return &Agent{name: name, cli: cli, work: work, journal: journal, cfg: cfg, crasher: crasher{hook: cfg.hook}}
}

// Name implements Participant.
func (a *Agent) Name() string { return a.name }

// Prepare implements Participant.
func (a *Agent) Prepare(ctx context.Context, tx string) (bool, error) {
	if err := a.alive(); err != nil {
		return false, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	st, err := a.journal.State(tx)
	if err != nil {
		return false, fmt.Errorf("twopc %s: %s: journal: %w", tx, a.name, err)
	}
	switch st {
	case Prepared, Committed:
		return true, nil
	case Aborted:
		return false, nil
	}
	if err := a.step(Step{StepAgentPrepare, tx, a.name}); err != nil {
		return false, err
	}
	yes, err := a.work.Prepare(ctx, tx)
	if err != nil || !yes {
		// Not promised: this participant may abort on its own.
		if aerr := a.work.Abort(ctx, tx); aerr != nil {
			return false, fmt.Errorf("twopc %s: %s: abort after refusing: %w", tx, a.name, aerr)
		}
		if jerr := a.journal.SetState(tx, Aborted); jerr != nil {
			return false, fmt.Errorf("twopc %s: %s: journal: %w", tx, a.name, jerr)
		}
		if err != nil {
			return false, fmt.Errorf("twopc %s: %s: prepare: %w", tx, a.name, err)
		}
		return false, nil
	}
	if err := a.journal.SetState(tx, Prepared); err != nil {
		return false, fmt.Errorf("twopc %s: %s: journal: %w", tx, a.name, err)
	}
	if err := a.step(Step{StepAgentPrepared, tx, a.name}); err != nil {
		return false, err
	}
	return true, nil
}

// Commit implements Participant.
func (a *Agent) Commit(ctx context.Context, tx string) error { return a.apply(ctx, tx, Commit) }

// Abort implements Participant.
func (a *Agent) Abort(ctx context.Context, tx string) error { return a.apply(ctx, tx, Abort) }

func (a *Agent) apply(ctx context.Context, tx string, d Decision) error {
	if err := a.alive(); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	st, err := a.journal.State(tx)
	if err != nil {
		return fmt.Errorf("twopc %s: %s: journal: %w", tx, a.name, err)
	}
	kind, final := StepAgentAbort, Aborted
	if d == Commit {
		kind, final = StepAgentCommit, Committed
	}
	switch {
	case st == final:
		return nil
	case st == Committed || st == Aborted:
		return fmt.Errorf("twopc %s: %s is %s and was told %s: %w", tx, a.name, st, d, ErrConflict)
	case st == "" && d == Commit:
		return fmt.Errorf("twopc %s: %s never promised and was told %s: %w", tx, a.name, d, ErrConflict)
	}
	if err := a.step(Step{kind, tx, a.name}); err != nil {
		return err
	}
	if d == Commit {
		err = a.work.Commit(ctx, tx)
	} else {
		err = a.work.Abort(ctx, tx)
	}
	if err != nil {
		return fmt.Errorf("twopc %s: %s: %s: %w", tx, a.name, d, err)
	}
	if err := a.journal.SetState(tx, final); err != nil {
		return fmt.Errorf("twopc %s: %s: journal: %w", tx, a.name, err)
	}
	return nil
}

// State returns the participant's state for tx.
func (a *Agent) State(tx string) (State, error) { return a.journal.State(tx) }

// Resolve settles a transaction the participant promised but has not heard
// the decision of: it waits for the decision key up to its patience,
// records ABORT if nothing was decided (Await), and applies what the key
// says. It is what the participant runs when the coordinator goes quiet;
// for a transaction already settled it only reports the state.
func (a *Agent) Resolve(ctx context.Context, tx string) (Decision, error) {
	if err := a.alive(); err != nil {
		return "", err
	}
	st, err := a.journal.State(tx)
	if err != nil {
		return "", fmt.Errorf("twopc %s: %s: journal: %w", tx, a.name, err)
	}
	switch st {
	case Committed:
		return Commit, nil
	case Aborted:
		return Abort, nil
	case "":
		// Never promised: nothing to wait for; abort locally, and let
		// the key say what everyone else does.
		if err := a.apply(ctx, tx, Abort); err != nil {
			return "", err
		}
		return ReadDecision(ctx, a.cli, tx)
	}
	d, err := Await(ctx, a.cli, tx, a.cfg.patience)
	if err != nil {
		return "", err
	}
	return d, a.apply(ctx, tx, d)
}

// Recover resolves every transaction the journal holds in doubt: what a
// restarted participant runs before serving again.
func (a *Agent) Recover(ctx context.Context) error {
	txs, err := a.journal.InDoubt()
	if err != nil {
		return fmt.Errorf("twopc: %s: journal: %w", a.name, err)
	}
	for _, tx := range txs {
		if _, err := a.Resolve(ctx, tx); err != nil {
			return err
		}
	}
	return nil
}
