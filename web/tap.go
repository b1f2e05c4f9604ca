package web

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/node"
)

// Event is one item of a member's event stream: a message it sent
// (Kind "msg"), or a timeline event (Kind "timeline": elections, leader
// changes, membership changes, snapshots, slow fsyncs, dropped messages).
type Event struct {
	Kind string `json:"kind"`
	At   int64  `json:"at"` // Unix milliseconds
	// Messages.
	From    string `json:"from,omitempty"` // member IDs in hex
	To      string `json:"to,omitempty"`
	Type    string `json:"type,omitempty"` // MsgApp, MsgVote, ...
	Entries int    `json:"entries,omitempty"`
	Reject  bool   `json:"reject,omitempty"`
	// Skipped counts the messages this member sent since the previous
	// message event that the rate limit left out: the stream is a sample.
	Skipped uint64 `json:"skipped,omitempty"`
	// Timeline events.
	What   string `json:"what,omitempty"` // election, leader, stepdown, membership, snapshot, slow_fsync, dropped
	Term   uint64 `json:"term,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// TapConfig bounds a Tap. Zero values take the defaults named.
type TapConfig struct {
	// MessagesPerSecond and MessageBurst are the token bucket that every
	// message event must pass: at most MessageBurst + MessagesPerSecond·t
	// message events leave the tap in any span t, however busy the
	// member. Defaults 40 and 40.
	MessagesPerSecond float64
	MessageBurst      int
	// TimelinePerSecond and TimelineBurst bound timeline events the same
	// way. Defaults 10 and 20.
	TimelinePerSecond float64
	TimelineBurst     int
	// SlowFsync is the WAL write time past which a timeline event is
	// sent. Default 500 ms.
	SlowFsync time.Duration
	// SubscriberQueue bounds each subscriber's queue: an event that does
	// not fit is dropped for that subscriber (and counted). Default 256.
	SubscriberQueue int
	// MaxSubscribers bounds the event streams open at once. Default 16.
	MaxSubscribers int
	// Now is the clock; default time.Now (tests replace it).
	Now func() time.Time
}

func (c TapConfig) withDefaults() TapConfig {
	if c.MessagesPerSecond <= 0 {
		c.MessagesPerSecond = 40
	}
	if c.MessageBurst <= 0 {
		c.MessageBurst = 40
	}
	if c.TimelinePerSecond <= 0 {
		c.TimelinePerSecond = 10
	}
	if c.TimelineBurst <= 0 {
		c.TimelineBurst = 20
	}
	if c.SlowFsync <= 0 {
		c.SlowFsync = 500 * time.Millisecond
	}
	if c.SubscriberQueue <= 0 {
		c.SubscriberQueue = 256
	}
	if c.MaxSubscribers <= 0 {
		c.MaxSubscribers = 16
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// historyLen is how many timeline events a new subscriber is sent first.
const historyLen = 64

// maxRuns bounds the log strip's memory: term runs kept.
const maxRuns = 64

// TapStats counts what a Tap did with the events it saw.
type TapStats struct {
	Sent        uint64 `json:"sent"`         // events put in subscribers' queues
	Sampled     uint64 `json:"sampled"`      // message events left out by the rate limit
	RateDropped uint64 `json:"rate_dropped"` // timeline events left out by the rate limit
	QueueFull   uint64 `json:"queue_full"`   // events a slow subscriber had no room for
}

// Tap is a node.Observer that turns what the node does into a rate-limited
// event stream for dashboards, and remembers what a dashboard shows about
// the member: its log's terms (the strip), when it last heard from each
// peer, recent timeline events. It never blocks the node: with no
// subscriber a message costs an atomic load; with some, a token bucket
// decides under a short lock, and a full subscriber queue drops the event.
type Tap struct {
	node.NopObserver
	cfg TapConfig

	nsubs atomic.Int32
	stats struct{ sent, sampled, rateDropped, queueFull atomic.Uint64 }

	mu       sync.Mutex
	subs     map[*subscriber]struct{}
	msg      bucket
	timeline bucket
	skipped  uint64
	history  []Event // ring, at most historyLen
	drops    uint64  // dropped messages not yet reported
	dropsAt  time.Time

	logMu sync.Mutex
	runs  []termRun // ascending, contiguous
	last  uint64    // last index written to the WAL

	contactMu sync.Mutex
	contact   map[consensus.NodeID]time.Time // last message received from each peer
}

type termRun struct {
	First uint64 `json:"first"`
	Last  uint64 `json:"last"`
	Term  uint64 `json:"term"`
}

type subscriber struct {
	ch chan Event
}

// bucket is a token bucket: rate tokens a second, at most burst.
type bucket struct {
	rate   float64
	burst  float64
	tokens float64
	at     time.Time
}

func (b *bucket) take(now time.Time) bool {
	if b.at.IsZero() {
		b.tokens = b.burst
	} else if d := now.Sub(b.at).Seconds(); d > 0 {
		b.tokens = min(b.burst, b.tokens+d*b.rate)
	}
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// NewTap returns a Tap.
func NewTap(cfg TapConfig) *Tap {
	cfg = cfg.withDefaults()
	return &Tap{cfg: cfg, subs: map[*subscriber]struct{}{},
		msg:      bucket{rate: cfg.MessagesPerSecond, burst: float64(cfg.MessageBurst)},
		timeline: bucket{rate: cfg.TimelinePerSecond, burst: float64(cfg.TimelineBurst)},
		contact:  map[consensus.NodeID]time.Time{}}
}

// Stats returns the tap's counters.
func (t *Tap) Stats() TapStats {
	return TapStats{Sent: t.stats.sent.Load(), Sampled: t.stats.sampled.Load(),
		RateDropped: t.stats.rateDropped.Load(), QueueFull: t.stats.queueFull.Load()}
}

// subscribe opens an event stream: recent timeline events first. It fails
// when MaxSubscribers are open.
func (t *Tap) subscribe() (*subscriber, []Event, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.subs) >= t.cfg.MaxSubscribers {
		return nil, nil, fmt.Errorf("web: %d event streams are open already", len(t.subs))
	}
	s := &subscriber{ch: make(chan Event, t.cfg.SubscriberQueue)}
	t.subs[s] = struct{}{}
	t.nsubs.Store(int32(len(t.subs)))
	return s, slices.Clone(t.history), nil
}

func (t *Tap) unsubscribe(s *subscriber) {
	t.mu.Lock()
	delete(t.subs, s)
	t.nsubs.Store(int32(len(t.subs)))
	t.mu.Unlock()
}

// publishLocked hands ev to every subscriber that has room.
// REQUIRES: t.mu is held.
func (t *Tap) publishLocked(ev Event) {
	for s := range t.subs {
		select {
		case s.ch <- ev:
			t.stats.sent.Add(1)
		default:
			t.stats.queueFull.Add(1)
		}
	}
}

// timelineEvent records ev in the history and sends it if the timeline
// bucket allows.
func (t *Tap) timelineEvent(ev Event) {
	now := t.cfg.Now()
	ev.Kind, ev.At = "timeline", now.UnixMilli()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.history) == historyLen {
		copy(t.history, t.history[1:])
		t.history = t.history[:historyLen-1]
	}
	t.history = append(t.history, ev)
	if len(t.subs) == 0 {
		return
	}
	if !t.timeline.take(now) {
		t.stats.rateDropped.Add(1)
		return
	}
	t.publishLocked(ev)
}

func hexID(id consensus.NodeID) string { return strconv.FormatUint(uint64(id), 16) }

// MessageSent samples the message into the event stream.
func (t *Tap) MessageSent(m consensus.Message) {
	if t.nsubs.Load() == 0 {
		return
	}
	now := t.cfg.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.subs) == 0 {
		return
	}
	if !t.msg.take(now) {
		t.skipped++
		t.stats.sampled.Add(1)
		return
	}
	ev := Event{Kind: "msg", At: now.UnixMilli(), From: hexID(m.From), To: hexID(m.To), Type: m.Type.String(),
		Entries: len(m.Entries), Reject: m.Reject, Skipped: t.skipped}
	t.skipped = 0
	t.publishLocked(ev)
}

// MessageReceived notes when this member last heard from the sender.
func (t *Tap) MessageReceived(m consensus.Message) {
	now := t.cfg.Now()
	t.contactMu.Lock()
	t.contact[m.From] = now
	t.contactMu.Unlock()
}

// LastContact returns when this member last heard from peer, or the zero
// time.
func (t *Tap) LastContact(peer consensus.NodeID) time.Time {
	t.contactMu.Lock()
	defer t.contactMu.Unlock()
	return t.contact[peer]
}

// MessageDropped reports dropped messages on the timeline, at most once a
// second (with how many).
func (t *Tap) MessageDropped(m consensus.Message, reason string) {
	now := t.cfg.Now()
	t.mu.Lock()
	t.drops++
	if now.Sub(t.dropsAt) < time.Second {
		t.mu.Unlock()
		return
	}
	n := t.drops
	t.drops, t.dropsAt = 0, now
	t.mu.Unlock()
	t.timelineEvent(Event{What: "dropped", Detail: fmt.Sprintf("dropped %d message(s) (%s, last a %s from %s)",
		n, reason, m.Type, hexID(m.From))})
}

// StatusChanged puts elections, new leaders and step-downs on the
// timeline, each told once, by the member it happened to.
func (t *Tap) StatusChanged(c node.StatusChange) {
	switch {
	case c.Role == consensus.Leader && c.PrevRole != consensus.Leader:
		t.timelineEvent(Event{What: "leader", Term: c.Term, Detail: fmt.Sprintf("became leader in term %d", c.Term)})
	case c.PrevRole == consensus.Leader && c.Role != consensus.Leader:
		t.timelineEvent(Event{What: "stepdown", Term: c.Term, Detail: fmt.Sprintf("stepped down in term %d (now %s)", c.Term, c.Role)})
	case c.Role == consensus.Candidate && (c.PrevRole != consensus.Candidate || c.Term != c.PrevTerm):
		t.timelineEvent(Event{What: "election", Term: c.Term, Detail: fmt.Sprintf("started an election for term %d", c.Term)})
	case c.Role == consensus.PreCandidate && c.PrevRole != consensus.PreCandidate:
		t.timelineEvent(Event{What: "election", Term: c.Term, Detail: "lost the leader: asking for pre-votes"})
	}
}

// WALWritten records the entries' terms for the log strip and reports a
// slow fsync on the timeline.
func (t *Tap) WALWritten(w node.WALWrite) {
	if w.Err != nil {
		t.timelineEvent(Event{What: "slow_fsync", Detail: fmt.Sprintf("WAL write failed: %v", w.Err)})
		return
	}
	t.logMu.Lock()
	if w.Truncate {
		t.cutAfterLocked(w.TruncateAfter)
	}
	for i := range w.Entries {
		e := &w.Entries[i]
		t.cutAfterLocked(e.Index - 1)
		if k := len(t.runs); k > 0 && t.runs[k-1].Term == e.Epoch && t.runs[k-1].Last+1 == e.Index {
			t.runs[k-1].Last = e.Index
		} else {
			t.runs = append(t.runs, termRun{First: e.Index, Last: e.Index, Term: e.Epoch})
			if len(t.runs) > maxRuns {
				t.runs = slices.Delete(t.runs, 0, len(t.runs)-maxRuns)
			}
		}
		t.last = e.Index
	}
	t.logMu.Unlock()
	if w.Duration >= t.cfg.SlowFsync {
		t.timelineEvent(Event{What: "slow_fsync", Detail: fmt.Sprintf("slow WAL fsync: %v for %d entries (%d bytes)",
			w.Duration.Round(time.Millisecond), len(w.Entries), w.Bytes)})
	}
}

// cutAfterLocked forgets entries after index i (a leader overwrote them).
// REQUIRES: t.logMu is held.
func (t *Tap) cutAfterLocked(i uint64) {
	for k := len(t.runs) - 1; k >= 0; k-- {
		r := &t.runs[k]
		switch {
		case r.First > i:
			t.runs = t.runs[:k]
			continue
		case r.Last > i:
			r.Last = i
		}
		break
	}
}

// LogRuns returns the terms of the entries this member wrote since it
// started (the newest maxRuns runs), for the log strip.
func (t *Tap) LogRuns() []termRun {
	t.logMu.Lock()
	defer t.logMu.Unlock()
	return slices.Clone(t.runs)
}

// SnapshotSaved puts the snapshot on the timeline; one from the leader
// replaces the log the strip shows.
func (t *Tap) SnapshotSaved(s node.SnapshotSave) {
	if s.FromLeader {
		t.logMu.Lock()
		t.runs = t.runs[:0]
		t.logMu.Unlock()
		t.timelineEvent(Event{What: "snapshot", Term: s.Term, Detail: fmt.Sprintf("installed the leader's snapshot at index %d (%d bytes)", s.Index, s.Bytes)})
		return
	}
	t.timelineEvent(Event{What: "snapshot", Term: s.Term, Detail: fmt.Sprintf("snapshot at index %d (%d bytes, %v)",
		s.Index, s.Bytes, s.Duration.Round(time.Millisecond))})
}

// MembershipChanged puts the new membership on the timeline.
func (t *Tap) MembershipChanged(index uint64, cs consensus.ConfState) {
	t.timelineEvent(Event{What: "membership", Detail: fmt.Sprintf("membership at index %d: %s", index, cs.String())})
}
