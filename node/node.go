package node

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/snap"
	"github.com/ballotdb/ballot/transport"
	"github.com/ballotdb/ballot/wal"
)

// Node is one member of a replicated group: the engine, its durable storage,
// its peer transport and the application's state machine, with the
// goroutines that join them (see the package doc). Its methods are safe for
// concurrent use.
type Node struct {
	cfg         Config
	log         *slog.Logger
	obs         Observer // cfg.Observer: metrics and dashboards
	id          consensus.NodeID
	incarnation uint64

	wal   *wal.WAL
	snaps *snap.Store
	tr    transport.Transport
	peers *peerBook

	// Into the engine goroutine. Every channel is bounded.
	recvc       chan consensus.Message // from the transport; full: dropped
	propc       chan *proposal         // capacity MaxPendingProposals
	reqc        chan func(*loop)       // reads, membership, transfer, status
	applyc      chan applyTask         // engine → apply goroutine
	persist     chan *persistJob       // engine → persister (one in flight)
	persisted   chan *persistJob       // persister → engine
	snapSave    chan *snapJob          // engine → snapshotter (one in flight)
	snapSaved   chan *snapJob          // snapshotter → engine
	snapSend    chan consensus.Message
	snapTaken   chan *snapJob // apply goroutine → engine (one in flight)
	appliedNote chan struct{} // apply goroutine → engine, coalesced
	reports     *reports      // transport → engine, coalesced

	props        *proposals
	snapInFlight atomic.Bool // a local snapshot is being taken or saved

	applied    atomic.Uint64 // last index applied to the state machine
	appliedN   notifier      // broadcast when applied advances
	statusN    notifier      // broadcast when leader or term changes
	lead       atomic.Uint64
	term       atomic.Uint64
	role       atomic.Uint32
	diskFull   atomic.Pointer[error] // the ENOSPC error while the disk is full
	lastStatus atomic.Pointer[consensus.Status]

	ctx      context.Context // cancelled when the node stops
	cancel   context.CancelFunc
	stopc    chan struct{} // closed to ask every goroutine to stop
	stopOnce sync.Once
	done     chan struct{} // closed when everything has stopped
	failMu   sync.Mutex
	failErr  error // the storage failure that stopped the node, if any
	wg       sync.WaitGroup
}

// Start opens (or creates) the data directory, recovers the engine and the
// state machine from it, connects to the peers and starts the node's
// goroutines. ctx bounds only the start itself.
func Start(ctx context.Context, cfg Config, sm StateMachine) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sm == nil {
		return nil, errors.New("node: Start needs a StateMachine")
	}
	cfg = cfg.withDefaults()
	cfg.Peers = maps.Clone(cfg.Peers) // the caller may change its map
	n := &Node{
		cfg: cfg, id: cfg.ID,
		log:         cfg.Logger.With("node", cfg.ID),
		obs:         cfg.Observer,
		recvc:       make(chan consensus.Message, cmp.Or(cfg.RecvQueue, 4096)),
		propc:       make(chan *proposal, cfg.MaxPendingProposals),
		reqc:        make(chan func(*loop), 64),
		applyc:      make(chan applyTask, 64),
		persist:     make(chan *persistJob, 1),
		persisted:   make(chan *persistJob, 1),
		snapSave:    make(chan *snapJob, 1),
		snapSaved:   make(chan *snapJob, 1),
		snapSend:    make(chan consensus.Message, 16),
		snapTaken:   make(chan *snapJob, 1),
		appliedNote: make(chan struct{}, 1),
		reports:     newReports(),
		props:       newProposals(cfg.MaxPendingProposals, cfg.Observer),
		stopc:       make(chan struct{}),
		done:        make(chan struct{}),
	}
	n.appliedN.init()
	n.statusN.init()
	n.ctx, n.cancel = context.WithCancel(context.Background())
	var b [8]byte
	rand.Read(b[:])
	n.incarnation = binary.LittleEndian.Uint64(b[:])
	seed := cfg.Seed
	for seed == 0 {
		rand.Read(b[:])
		seed = binary.LittleEndian.Uint64(b[:])
	}

	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rec, err := n.recover(sm)
	if err != nil {
		return nil, err
	}
	eng, err := cfg.Engine(EngineConfig{ID: cfg.ID, ElectionTicks: cfg.ElectionTicks,
		HeartbeatTicks: cfg.HeartbeatTicks, Seed: seed}, rec.initial)
	if err != nil {
		n.wal.Close()
		return nil, fmt.Errorf("node: start engine: %w", err)
	}
	if cfg.WrapEngine != nil {
		eng = cfg.WrapEngine(eng)
	}
	if err := n.startTransport(rec.app.book); err != nil {
		n.wal.Close()
		return nil, err
	}
	st := eng.Status()
	n.lastStatus.Store(&st)
	n.term.Store(st.Epoch)
	n.log.Info("node started", "term", st.Epoch, "index", st.LastIndex, "commit", st.Commit,
		"applied", rec.app.applied, "members", st.ConfState.String(), "bootstrap", rec.bootstrap, "join", rec.join)

	l := newLoop(n, eng, rec)
	n.wg.Add(4)
	go func() { defer n.wg.Done(); l.run() }()
	go func() { defer n.wg.Done(); rec.app.run() }()
	go func() { defer n.wg.Done(); n.runPersister() }()
	go func() { defer n.wg.Done(); n.runSnapshotter() }()
	go n.reap()
	return n, nil
}

// startTransport builds the transport and tells it where the peers are.
func (n *Node) startTransport(learned map[consensus.NodeID]string) error {
	pb, err := loadPeerBook(n)
	if err != nil {
		return err
	}
	pb.merge(learned)
	n.peers = pb
	h := handler{n}
	if n.cfg.NewTransport != nil {
		n.tr, err = n.cfg.NewTransport(h)
	} else {
		n.tr, err = transport.NewTCP(transport.Config{ID: n.id, ClusterID: n.cfg.ClusterID,
			Listener: n.cfg.Listen, Handler: h, TLS: n.cfg.TLS, Logger: n.cfg.Logger.With("node", n.id)})
	}
	if err != nil {
		return fmt.Errorf("node: start transport: %w", err)
	}
	addrs := pb.snapshot()
	for _, id := range slices.Sorted(maps.Keys(addrs)) {
		if id != n.id && addrs[id] != "" {
			n.tr.AddPeer(id, addrs[id])
		}
	}
	pb.save()
	return nil
}

// reap waits for the stop signal, then for the other goroutines, then
// closes the transport and the WAL.
func (n *Node) reap() {
	<-n.stopc
	n.cancel()
	n.wg.Wait()
	if err := n.tr.Close(); err != nil {
		n.log.Debug("transport close", "err", err)
	}
	if err := n.wal.Close(); err != nil {
		n.log.Debug("wal close", "err", err)
	}
	n.props.failAll(n.stoppedErr())
	n.log.Info("node stopped", "err", n.cause())
	close(n.done)
}

// signalStop asks every goroutine to stop; cause is a storage failure, or
// nil for an ordinary Stop.
func (n *Node) signalStop(cause error) {
	if cause != nil {
		n.failMu.Lock()
		if n.failErr == nil {
			n.failErr = cause
		}
		n.failMu.Unlock()
	}
	n.stopOnce.Do(func() { close(n.stopc) })
}

func (n *Node) cause() error {
	n.failMu.Lock()
	defer n.failMu.Unlock()
	return n.failErr
}

func (n *Node) stoppedErr() error { return &stoppedError{cause: n.cause()} }

// Done is closed once the node has stopped, whether by Stop or on its own
// after a storage failure (then Err says why).
func (n *Node) Done() <-chan struct{} { return n.done }

// Err returns the failure that stopped the node on its own, or nil.
func (n *Node) Err() error { return n.cause() }

// ID returns this member's ID.
func (n *Node) ID() consensus.NodeID { return n.id }

// Stop stops the node. A leader first hands leadership to its most
// up-to-date voter, waiting at most two election timeouts for it to take
// over; then every goroutine of the node stops and Stop returns. Waiters
// get ErrStopped. Stop is idempotent.
func (n *Node) Stop() {
	select {
	case <-n.stopc:
	default:
		n.handOff()
	}
	n.signalStop(nil)
	<-n.done
}

// handOff transfers leadership away before stopping, within a bound.
func (n *Node) handOff() {
	if consensus.NodeID(n.lead.Load()) != n.id {
		return
	}
	bound := 2 * time.Duration(n.cfg.ElectionTicks) * n.cfg.TickInterval
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	target := make(chan consensus.NodeID, 1)
	if err := n.request(ctx, func(l *loop) { target <- l.handOffTarget() }); err != nil {
		return
	}
	var to consensus.NodeID
	select {
	case to = <-target:
	case <-ctx.Done():
		return
	}
	if to == consensus.None {
		return
	}
	n.log.Info("stopping: transferring leadership", "peer", to, "term", n.term.Load())
	if err := n.TransferLeadership(ctx, to); err != nil {
		n.log.Warn("stopping: leadership transfer did not finish", "peer", to, "err", err)
	}
}

// kill stops the node at once, as a crash would (no leadership transfer).
// Tests use it; what the storage holds is then what a crash leaves.
func (n *Node) kill() {
	n.signalStop(nil)
	<-n.done
}

// request runs fn on the engine goroutine.
func (n *Node) request(ctx context.Context, fn func(*loop)) error {
	select {
	case n.reqc <- fn:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stopc:
		return n.stoppedErr()
	}
}

// admit refuses new work when the node is stopped or the disk is full.
func (n *Node) admit() error {
	select {
	case <-n.stopc:
		return n.stoppedErr()
	default:
	}
	if e := n.diskFull.Load(); e != nil {
		return fmt.Errorf("%w: %w", ErrNoSpace, *e)
	}
	return nil
}

// Propose replicates cmd and returns the state machine's result once the
// command is committed and applied on this node. A follower forwards it to
// the leader, and forwards it again if it has not applied after an election
// timeout with a new leader; it is applied at most once however often it was
// sent.
//
// Errors: ErrNotLeader when no leader is known (retry shortly), ErrBusy,
// ErrNoSpace, ErrStopped, ErrOutcomeUnknown when ctx ends after the engine
// took the proposal (it may still apply), ctx's error when it ends before
// (it will not apply), or the engine's refusal (consensus.ErrTooLarge,
// consensus.ErrProposalDropped during a leadership transfer).
func (n *Node) Propose(ctx context.Context, cmd []byte) ([]byte, error) {
	if err := n.admit(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := n.props.add(propNormal, func(p *proposal, floor uint64) {
		p.data = encodeEnvelope(envelope{origin: n.id, incarnation: n.incarnation, seq: p.seq, floor: floor, payload: cmd})
	})
	if err != nil {
		return nil, err
	}
	select {
	case n.propc <- p:
	default:
		n.props.forget(p.seq)
		return nil, ErrBusy
	}
	return n.wait(ctx, p)
}

// ProposeAsLeader is Propose for a command only the leader of term may
// make, such as a lease revocation decided on the leader's own clock: it
// fails with ErrNotLeader unless this node leads in term when the engine
// takes it, and it is never forwarded to, or sent again through, another
// leader. A leader deposed while paused therefore cannot have a decision
// it made on its stale view committed by its successor.
func (n *Node) ProposeAsLeader(ctx context.Context, term uint64, cmd []byte) ([]byte, error) {
	if err := n.admit(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if term == 0 {
		return nil, fmt.Errorf("node: ProposeAsLeader needs a term: %w", ErrNotLeader)
	}
	p, err := n.props.add(propNormal, func(p *proposal, floor uint64) {
		p.leaderTerm = term
		p.data = encodeEnvelope(envelope{origin: n.id, incarnation: n.incarnation, seq: p.seq, floor: floor, payload: cmd})
	})
	if err != nil {
		return nil, err
	}
	select {
	case n.propc <- p:
	default:
		n.props.forget(p.seq)
		return nil, ErrBusy
	}
	return n.wait(ctx, p)
}

// wait waits for p to settle.
func (n *Node) wait(ctx context.Context, p *proposal) ([]byte, error) {
	select {
	case r := <-p.done:
		return r.val, r.err
	case <-ctx.Done():
	case <-n.done:
		select {
		case r := <-p.done: // settled by reap, or just before
			return r.val, r.err
		default:
			return nil, n.stoppedErr()
		}
	}
	if p.state.CompareAndSwap(propQueued, propAbandoned) {
		n.props.forget(p.seq)
		return nil, fmt.Errorf("node: proposal not submitted: %w", ctx.Err())
	}
	n.props.forget(p.seq)
	select {
	case r := <-p.done:
		return r.val, r.err
	default:
	}
	return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
}

// ReadBarrier returns once this node has applied everything committed
// before the call: a read of the state machine after it is linearizable.
// It asks the leader for its commit index (ReadIndex, confirmed by a quorum
// of heartbeats sent after the request arrived) and waits until this node
// has applied up to it.
//
// Errors: ErrNotLeader when no leader is known, ErrBusy, ErrStopped, or
// ctx's error.
func (n *Node) ReadBarrier(ctx context.Context) error {
	select {
	case <-n.stopc:
		return n.stoppedErr()
	default:
	}
	rr := &readReq{done: make(chan result, 1)}
	if err := n.request(ctx, func(l *loop) { l.startRead(rr) }); err != nil {
		return err
	}
	var index uint64
	select {
	case r := <-rr.done:
		if r.err != nil {
			return r.err
		}
		index = binary.LittleEndian.Uint64(r.val)
	case <-ctx.Done():
		rr.abandoned.Store(true)
		return ctx.Err()
	case <-n.stopc:
		return n.stoppedErr()
	}
	return n.waitApplied(ctx, index)
}

// waitApplied waits until the state machine has applied index.
func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	for {
		ch := n.appliedN.wait()
		if n.applied.Load() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-n.stopc:
			return n.stoppedErr()
		}
	}
}

// Applied returns the index of the last entry applied to the state machine.
func (n *Node) Applied() uint64 { return n.applied.Load() }

// Leader returns the leader this node knows of, or consensus.None. It is
// refreshed every tick and every time the engine reports a new term.
func (n *Node) Leader() consensus.NodeID { return consensus.NodeID(n.lead.Load()) }

// Term returns the current term (epoch) this node knows, refreshed like
// Leader; cheap enough for every response header.
func (n *Node) Term() uint64 { return n.term.Load() }

// Role returns this node's current role, refreshed like Leader.
func (n *Node) Role() consensus.Role { return consensus.Role(n.role.Load()) }

// Status returns the engine's status (Applied is the state machine's). On a
// stopped node it returns the last status seen.
func (n *Node) Status() consensus.Status {
	ch := make(chan consensus.Status, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if n.request(ctx, func(l *loop) { ch <- l.status() }) == nil {
		select {
		case st := <-ch:
			return st
		case <-n.stopc:
		case <-ctx.Done():
		}
	}
	return *n.lastStatus.Load()
}

// AddMember adds id, reachable at addr, as a voter. Prefer AddLearner then
// PromoteMember: a voter that must first catch up weakens the quorum.
func (n *Node) AddMember(ctx context.Context, id consensus.NodeID, addr string) error {
	return n.changeMembership(ctx, consensus.AddVoter, id, addr)
}

// AddLearner adds id, reachable at addr, as a learner: it receives the log
// but does not vote until promoted.
func (n *Node) AddLearner(ctx context.Context, id consensus.NodeID, addr string) error {
	return n.changeMembership(ctx, consensus.AddLearner, id, addr)
}

// PromoteMember makes learner id a voter once it has caught up (the engine
// refuses it before, with an error wrapping consensus.ErrInvalidConfChange).
func (n *Node) PromoteMember(ctx context.Context, id consensus.NodeID) error {
	return n.changeMembership(ctx, consensus.AddVoter, id, "")
}

// RemoveMember removes id from the group for good; its ID is never reused.
func (n *Node) RemoveMember(ctx context.Context, id consensus.NodeID) error {
	return n.changeMembership(ctx, consensus.RemoveNode, id, "")
}

// UpdatePeerAddr records, through the log, that member id now listens for
// peers at addr; its role does not change.
func (n *Node) UpdatePeerAddr(ctx context.Context, id consensus.NodeID, addr string) error {
	if addr == "" {
		return fmt.Errorf("%w: empty peer address", consensus.ErrInvalidConfChange)
	}
	t := consensus.AddVoter
	if slices.Contains(n.Status().ConfState.Learners, id) {
		t = consensus.AddLearner
	}
	err := n.changeMembership(ctx, t, id, addr)
	if errors.Is(err, ErrConfUnchanged) {
		return nil
	}
	return err
}

// PeerAddrs returns where this node believes each member listens for
// peers: the addresses given in Config.Peers and learned from the log.
func (n *Node) PeerAddrs() map[consensus.NodeID]string {
	if n.peers == nil {
		return map[consensus.NodeID]string{}
	}
	return n.peers.snapshot()
}

// changeMembership proposes one membership step on the leader and waits
// until this node has applied it. Membership changes are not forwarded:
// on a follower they fail with ErrNotLeader and the leader hint, so that
// the engine's refusals (a change already pending, a learner not caught up)
// reach the caller. A change that the log committed but the engine found
// invalid when applying it fails with consensus.ErrInvalidConfChange.
func (n *Node) changeMembership(ctx context.Context, t consensus.ConfChangeType, id consensus.NodeID, addr string) error {
	if err := n.admit(); err != nil {
		return err
	}
	if id == consensus.None {
		return fmt.Errorf("%w: node ID 0", consensus.ErrInvalidConfChange)
	}
	p, err := n.props.add(propConf, func(p *proposal, _ uint64) {
		p.cc = consensus.ConfChange{Changes: []consensus.ConfChangeSingle{{Type: t, NodeID: id}},
			Context: encodeConfContext(n.id, n.incarnation, p.seq, addr)}
	})
	if err != nil {
		return err
	}
	if err := n.request(ctx, func(l *loop) { l.proposeConf(p) }); err != nil {
		n.props.forget(p.seq)
		return err
	}
	_, err = n.wait(ctx, p)
	if err == nil {
		n.log.Info("membership changed", "change", t.String(), "peer", id, "addr", addr)
	}
	return err
}

// TransferLeadership asks the leader to hand leadership to id, a voter, and
// waits until this node sees id lead. The engine abandons a transfer that
// does not finish within an election timeout.
func (n *Node) TransferLeadership(ctx context.Context, id consensus.NodeID) error {
	if err := n.admit(); err != nil && !errors.Is(err, ErrNoSpace) {
		return err
	}
	errc := make(chan error, 1)
	if err := n.request(ctx, func(l *loop) { errc <- l.eng.TransferLeadership(id) }); err != nil {
		return err
	}
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("node: transfer leadership to %d: %w", id, err)
		}
	case <-ctx.Done():
		return ctx.Err()
	case <-n.stopc:
		return n.stoppedErr()
	}
	for {
		ch := n.statusN.wait()
		if n.Leader() == id {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("node: transfer leadership to %d (leader now %d): %w", id, n.Leader(), ctx.Err())
		case <-n.stopc:
			return n.stoppedErr()
		}
	}
}

// notifier broadcasts "something changed" to any number of waiters: wait
// returns a channel closed at the next notify.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func (nt *notifier) init() { nt.ch = make(chan struct{}) }

func (nt *notifier) wait() <-chan struct{} {
	nt.mu.Lock()
	defer nt.mu.Unlock()
	return nt.ch
}

func (nt *notifier) notify() {
	nt.mu.Lock()
	close(nt.ch)
	nt.ch = make(chan struct{})
	nt.mu.Unlock()
}

// dirs of the data directory.
func (n *Node) walDir() string  { return filepath.Join(n.cfg.DataDir, "wal") }
func (n *Node) snapDir() string { return filepath.Join(n.cfg.DataDir, "snap") }
