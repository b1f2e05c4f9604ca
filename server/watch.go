package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"
)

// Watch delivery.
//
// The store calls hub.observe inside Apply with each new revision's events.
// observe never blocks: it hands them to a bounded queue, and if the queue
// is full it only raises a flag. One hub goroutine takes revisions from the
// queue and delivers them to watchers.
//
// A watcher is synced when every revision it has not yet received will
// come through the queue; it is then fed from the queue. Otherwise it is
// unsynced and the hub catches it up from the store's history, a batch at
// a time, until it is synced again. A watcher becomes unsynced when its
// stream's bounded send buffer is full (a slow client), when the queue
// overflowed (the flag), when the store was replaced by a snapshot, or
// when it starts from an old revision. Apply is never held up by a watcher,
// and no watcher ever sees a gap: a watcher behind a compaction gets the
// compacted error with the compact revision instead.
//
// Every response for one stream goes through one bounded channel, in the
// order the hub produced it: created, then events in revision order (all
// events of one revision, such as one Txn's, in one response), progress
// notifications and cancellations.

const (
	hubQueue      = 1024 // revisions between apply and the hub
	streamBuffer  = 256  // responses between the hub and one stream
	catchUpEvents = 1000 // events read from history per catch-up step
)

type revEvents struct {
	rev    int64
	events []*mvccpb.Event
}

type hub struct {
	s      *Server
	queue  chan revEvents
	gap    atomic.Bool
	poke   chan struct{}
	mu     sync.Mutex
	all    map[*watcher]struct{}
	lastRv int64 // the newest revision taken from the queue, or skipped past
	// ProgressInterval is how often watchers that asked for progress
	// notifications get one.
	progressInterval time.Duration
	// cuts are the ranges a shard split moved away (see split.go), newest
	// last: a watcher of such a range is cancelled with ShardSplitReason
	// once it has every event up to the split.
	cuts []rangeCut
}

// rangeCut is a key range moved away at revision rev.
type rangeCut struct {
	start, end []byte
	rev        int64
}

// maxCuts bounds the cuts a hub remembers.
const maxCuts = 64

// ShardSplitReason is the cancel reason of a watch whose range a shard
// split moved to another shard; the sharded router re-creates such a
// watch on the new shard from the revision it had reached, so a client of
// the router never sees it.
const ShardSplitReason = "ballot: shard split"

// WrongShardReason is the cancel reason of a watch created on a shard that
// does not keep its range.
const WrongShardReason = "ballot: wrong shard"

type watcher struct {
	id             int64
	st             *watchStream
	key, end       []byte
	prevKV         bool
	noPut, noDel   bool
	fragment       bool
	progressNotify bool
	next           int64 // the first revision not yet delivered
	synced         bool
}

type watchStream struct {
	out    chan *pb.WatchResponse
	nextID int64
	ids    map[int64]*watcher // under hub.mu
	ctx    context.Context
}

func newHub(s *Server) *hub {
	return &hub{s: s, queue: make(chan revEvents, hubQueue), poke: make(chan struct{}, 1),
		all: map[*watcher]struct{}{}, progressInterval: 10 * time.Minute}
}

// observe is the store's observer, called inside Apply.
func (h *hub) observe(rev int64, events []*mvccpb.Event) {
	select {
	case h.queue <- revEvents{rev, events}:
	default:
		h.gap.Store(true)
		h.nudge()
	}
}

// restored is called after the store was replaced by a snapshot.
func (h *hub) restored() {
	h.gap.Store(true)
	h.nudge()
}

func (h *hub) nudge() {
	select {
	case h.poke <- struct{}{}:
	default:
	}
}

func (h *hub) run() {
	h.mu.Lock()
	h.lastRv = h.s.store.Rev()
	h.mu.Unlock()
	// The catch-up timer runs only while some watcher needs catching up
	// (or a split's cut is pending): an idle hub wakes for nothing, which
	// matters on a host with many groups.
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	armed := false
	progress := time.NewTicker(h.progressInterval)
	defer progress.Stop()
	work := func() {
		h.handleGap()
		h.catchUp()
		h.applyCuts()
	}
	for {
		select {
		case <-h.s.stopc:
			retry.Stop()
			return
		case re := <-h.queue:
			h.mu.Lock()
			h.dispatch(re)
			for range 255 {
				select {
				case re := <-h.queue:
					h.dispatch(re)
					continue
				default:
				}
				break
			}
		case <-h.poke:
			h.mu.Lock()
			work()
		case <-retry.C:
			armed = false
			h.mu.Lock()
			work()
		case <-progress.C:
			h.mu.Lock()
			for w := range h.all {
				if w.progressNotify && w.synced {
					h.push(w, &pb.WatchResponse{Header: h.s.header(h.lastRv), WatchId: w.id})
				}
			}
		}
		need := h.needsWork()
		h.mu.Unlock()
		if need && !armed {
			retry.Reset(catchUpRetry)
			armed = true
		}
	}
}

// catchUpRetry is how soon the hub tries again to catch up watchers it
// could not (a slow client's buffer was full).
const catchUpRetry = 20 * time.Millisecond

// needsWork reports whether some watcher is behind or a cut is pending.
// REQUIRES: h.mu held.
func (h *hub) needsWork() bool {
	if h.gap.Load() {
		return true
	}
	for w := range h.all {
		if !w.synced {
			return true
		}
		for _, c := range h.cuts {
			if overlaps(w.key, w.end, c.start, c.end) {
				return true
			}
		}
	}
	return false
}

// handleGap makes every watcher unsynced after the queue lost revisions.
// REQUIRES: h.mu held.
func (h *hub) handleGap() {
	if !h.gap.Swap(false) {
		return
	}
	for {
		select {
		case <-h.queue:
			continue
		default:
		}
		break
	}
	// Revisions up to here are read from history; later ones arrive
	// through the queue (older ones still in it are skipped).
	h.lastRv = h.s.store.Rev()
	for w := range h.all {
		w.synced = false
	}
}

// dispatch delivers one revision to the synced watchers.
// REQUIRES: h.mu held.
func (h *hub) dispatch(re revEvents) {
	if h.gap.Load() || re.rev <= h.lastRv {
		return
	}
	h.lastRv = re.rev
	for w := range h.all {
		if !w.synced || w.next > re.rev {
			continue
		}
		evs := w.filter(re.events)
		if len(evs) > 0 {
			if !h.push(w, &pb.WatchResponse{Header: h.s.header(re.rev), WatchId: w.id, Events: evs}) {
				w.synced = false // w.next stays at re.rev: read from history
				continue
			}
		}
		w.next = re.rev + 1
	}
}

// catchUp feeds unsynced watchers from the store's history.
// REQUIRES: h.mu held.
func (h *hub) catchUp() {
	for w := range h.all {
		if w.synced {
			continue
		}
		for !w.synced {
			if len(w.st.out) >= cap(w.st.out)/2 {
				break // the client is slow: try again later
			}
			evs, next, err := h.s.store.EventsSince(w.key, w.end, w.next, catchUpEvents)
			if err != nil {
				if errors.Is(err, rpctypes.ErrGRPCCompacted) {
					h.push(w, &pb.WatchResponse{Header: h.s.header(0), WatchId: w.id, Canceled: true,
						CompactRevision: h.s.store.CompactRev(), CancelReason: err.Error()})
					h.remove(w)
				}
				break
			}
			if out := w.filter(evs); len(out) > 0 {
				if !h.push(w, &pb.WatchResponse{Header: h.s.header(0), WatchId: w.id, Events: out}) {
					break
				}
			}
			w.next = max(w.next, next)
			if w.next > h.lastRv {
				w.synced = true
			}
			if len(evs) == 0 && !w.synced {
				break // history has nothing more yet; the queue will
			}
		}
	}
}

// cut records that [start, end) moved away at revision rev (a split).
func (h *hub) cut(start, end []byte, rev int64) {
	h.mu.Lock()
	h.cuts = append(h.cuts, rangeCut{start: start, end: end, rev: rev})
	if len(h.cuts) > maxCuts {
		h.cuts = h.cuts[len(h.cuts)-maxCuts:]
	}
	h.mu.Unlock()
	h.nudge()
}

// applyCuts cancels every watcher of a moved range that has received all
// events up to the move (one still catching up is cancelled once it has).
// REQUIRES: h.mu held.
func (h *hub) applyCuts() {
	if len(h.cuts) == 0 {
		return
	}
	for w := range h.all {
		for _, c := range h.cuts {
			if w.next <= c.rev || !overlaps(w.key, w.end, c.start, c.end) {
				continue
			}
			if h.push(w, &pb.WatchResponse{Header: h.s.header(c.rev), WatchId: w.id, Canceled: true, CancelReason: ShardSplitReason}) {
				h.remove(w)
			}
			break
		}
	}
}

// overlaps reports whether the watch range [key, end) (etcd's conventions)
// and the key range [start, stop) (empty stop: to the end) share a key.
func overlaps(key, end, start, stop []byte) bool {
	var hi []byte // the watch's exclusive upper bound; nil: unbounded
	switch {
	case len(end) == 0:
		hi = append(append([]byte(nil), key...), 0)
	case len(end) == 1 && end[0] == 0:
	default:
		hi = end
	}
	if hi != nil && bytes.Compare(hi, start) <= 0 {
		return false
	}
	return len(stop) == 0 || bytes.Compare(key, stop) < 0
}

// push hands a response to w's stream without blocking.
// REQUIRES: h.mu held.
func (h *hub) push(w *watcher, r *pb.WatchResponse) bool {
	for _, part := range fragment(w, r, h.s.cfg.MaxRequestBytes) {
		select {
		case w.st.out <- part:
		default:
			return false
		}
	}
	return true
}

// fragment splits a large response into pieces when the watcher asked for
// it, as etcd does; only the last piece has Fragment unset.
func fragment(w *watcher, r *pb.WatchResponse, limit int) []*pb.WatchResponse {
	if !w.fragment || len(r.Events) < 2 || proto.Size(r) <= limit {
		return []*pb.WatchResponse{r}
	}
	var out []*pb.WatchResponse
	cur := &pb.WatchResponse{Header: r.Header, WatchId: r.WatchId, Fragment: true}
	size := 0
	for _, e := range r.Events {
		es := proto.Size(e)
		if size+es > limit && len(cur.Events) > 0 {
			out = append(out, cur)
			cur = &pb.WatchResponse{Header: r.Header, WatchId: r.WatchId, Fragment: true}
			size = 0
		}
		cur.Events = append(cur.Events, e)
		size += es
	}
	cur.Fragment = false
	return append(out, cur)
}

// filter returns the events w wants, without prev_kv unless asked for.
// Events are shared between watchers: never modified, copied when changed.
func (w *watcher) filter(evs []*mvccpb.Event) []*mvccpb.Event {
	var out []*mvccpb.Event
	for _, e := range evs {
		if e.Kv == nil || !inRange(e.Kv.Key, w.key, w.end) {
			continue
		}
		if (e.Type == mvccpb.Event_PUT && w.noPut) || (e.Type == mvccpb.Event_DELETE && w.noDel) {
			continue
		}
		if !w.prevKV && e.PrevKv != nil {
			e = &mvccpb.Event{Type: e.Type, Kv: e.Kv}
		}
		out = append(out, e)
	}
	return out
}

// add registers a watcher and answers its creation. It runs on the
// stream's receiving goroutine and may wait for room in the stream buffer.
func (h *hub) add(st *watchStream, r *pb.WatchCreateRequest) {
	if h.s.rangeKnown() && !h.s.owns(r.Key, r.RangeEnd) { // unknown: wait for the state
		id := r.WatchId // the router always names its watches
		if id == 0 {
			id = -1
		}
		st.send(&pb.WatchResponse{Header: h.s.header(0), WatchId: id, Created: true, Canceled: true,
			CancelReason: WrongShardReason})
		return
	}
	h.mu.Lock()
	id := r.WatchId
	if id == 0 {
		for st.ids[st.nextID] != nil {
			st.nextID++
		}
		id = st.nextID
		st.nextID++
	} else if st.ids[id] != nil {
		h.mu.Unlock()
		st.send(&pb.WatchResponse{Header: h.s.header(0), WatchId: id, Created: true, Canceled: true,
			CancelReason: "etcdserver: duplicate watch ID"})
		return
	}
	w := &watcher{id: id, st: st, key: r.Key, end: r.RangeEnd, prevKV: r.PrevKv,
		fragment: r.Fragment, progressNotify: r.ProgressNotify, next: r.StartRevision}
	st.ids[id] = w // reserved; not yet fed
	h.mu.Unlock()
	for _, f := range r.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDel = true
		}
	}
	rev := h.s.store.Rev()
	if w.next <= 0 {
		w.next = rev + 1
	}
	// The creation answer goes first: the watcher is fed only after it.
	if !st.send(&pb.WatchResponse{Header: h.s.header(rev), WatchId: id, Created: true}) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if st.ids[id] != w {
		return // cancelled meanwhile
	}
	h.all[w] = struct{}{}
	w.synced = !h.gap.Load() && w.next > h.lastRv
	if !w.synced {
		h.nudge()
	}
}

// cancel removes watcher id of st and answers the client.
func (h *hub) cancel(st *watchStream, id int64) {
	h.mu.Lock()
	w := st.ids[id]
	if w != nil {
		h.remove(w)
	}
	h.mu.Unlock()
	if w != nil {
		st.send(&pb.WatchResponse{Header: h.s.header(0), WatchId: id, Canceled: true})
	}
}

// progress answers a progress request: the revision every watcher of st
// has been brought up to, if all are synced (as etcd, otherwise nothing).
func (h *hub) progress(st *watchStream) {
	h.mu.Lock()
	rev := h.lastRv
	for _, w := range st.ids {
		if !w.synced {
			h.mu.Unlock()
			return
		}
	}
	h.mu.Unlock()
	st.send(&pb.WatchResponse{Header: h.s.header(rev), WatchId: -1})
}

// send hands r to the stream, waiting for room; false if the stream ended.
func (st *watchStream) send(r *pb.WatchResponse) bool {
	select {
	case st.out <- r:
		return true
	case <-st.ctx.Done():
		return false
	}
}

// REQUIRES: h.mu held.
func (h *hub) remove(w *watcher) {
	delete(h.all, w)
	delete(w.st.ids, w.id)
}

func (h *hub) closeStream(st *watchStream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, w := range st.ids {
		h.remove(w)
	}
}

// watchServer is etcd's Watch service.
type watchServer struct {
	pb.UnimplementedWatchServer
	s *Server
}

func (ws *watchServer) Watch(stream pb.Watch_WatchServer) error {
	h := ws.s.hub
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	st := &watchStream{out: make(chan *pb.WatchResponse, streamBuffer), ids: map[int64]*watcher{}, ctx: ctx}
	defer h.closeStream(st)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				recvErr <- err
				return
			}
			switch r := req.RequestUnion.(type) {
			case *pb.WatchRequest_CreateRequest:
				if r.CreateRequest == nil {
					continue
				}
				h.add(st, r.CreateRequest)
			case *pb.WatchRequest_CancelRequest:
				if r.CancelRequest != nil {
					h.cancel(st, r.CancelRequest.WatchId)
				}
			case *pb.WatchRequest_ProgressRequest:
				h.progress(st)
			}
		}
	}()
	for {
		select {
		case resp := <-st.out:
			if err := stream.Send(resp); err != nil {
				return err
			}
		case err := <-recvErr:
			return err
		case <-ws.s.stopc:
			return rpctypes.ErrGRPCStopped
		case <-stream.Context().Done():
			return nil
		}
	}
}
