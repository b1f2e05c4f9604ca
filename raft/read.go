package raft

import (
	"bytes"
	"fmt"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/quorum"
)

// ReadIndex (thesis §6.4). A read is linearizable if it observes every write
// committed before it arrived. The leader records its commit index when the
// read arrives, then confirms that it is still the leader by a round of
// heartbeats sent after the read arrived: once a quorum acknowledges one, no
// other leader can have committed anything the recorded index misses. The
// read is then served at that index once applied.
//
// Two refusals keep this sound. A new leader does not know the commit index
// of the previous term until it commits an entry of its own (its no-op), so
// reads are refused until then. And an acknowledgement counts only for
// heartbeats carrying the read's context, which are sent after it arrived.

// readRequest is one read waiting for its heartbeat quorum.
type readRequest struct {
	ctx   []byte
	from  consensus.NodeID
	index uint64
	acks  map[consensus.NodeID]bool
}

// readOnly is the leader's queue of reads awaiting confirmation, in arrival
// order, bounded by max.
type readOnly struct {
	max   int
	queue []*readRequest
}

func (ro *readOnly) reset() { ro.queue = nil }

// add queues a read; false when the queue is full. A duplicate context is
// accepted once.
func (ro *readOnly) add(ctx []byte, from consensus.NodeID, index uint64, self consensus.NodeID) bool {
	for _, rq := range ro.queue {
		if bytes.Equal(rq.ctx, ctx) {
			return true
		}
	}
	if len(ro.queue) >= ro.max {
		return false
	}
	ro.queue = append(ro.queue, &readRequest{ctx: append([]byte(nil), ctx...), from: from, index: index,
		acks: map[consensus.NodeID]bool{self: true}})
	return true
}

func (ro *readOnly) ack(from consensus.NodeID, ctx []byte) {
	for _, rq := range ro.queue {
		if bytes.Equal(rq.ctx, ctx) {
			rq.acks[from] = true
			return
		}
	}
}

// advance releases every read up to the newest one confirmed by a quorum:
// a heartbeat sent for a read was also sent after every earlier read arrived.
func (ro *readOnly) advance(voters quorum.JointConfig) []*readRequest {
	for i := len(ro.queue) - 1; i >= 0; i-- {
		if voters.VoteResult(ro.queue[i].acks) == quorum.VoteWon {
			done := ro.queue[:i+1]
			ro.queue = append([]*readRequest(nil), ro.queue[i+1:]...)
			return done
		}
	}
	return nil
}

func (ro *readOnly) lastCtx() []byte {
	if len(ro.queue) == 0 {
		return nil
	}
	return ro.queue[len(ro.queue)-1].ctx
}

// committedEntryInCurrentTerm reports whether the leader has committed an
// entry of its own epoch (its no-op).
func (r *Raft) committedEntryInCurrentTerm() bool {
	t, err := r.log.term(r.log.committed)
	return err == nil && t == r.epoch
}

func (r *Raft) leaderReadIndex(m consensus.Message) error {
	local := m.From == r.id
	ready := r.committedEntryInCurrentTerm() || (r.cfg.Knobs != nil && r.cfg.Knobs.ReadIndexBeforeNoopCommit)
	if !ready {
		if local {
			return ErrReadIndexNotReady
		}
		r.send(consensus.Message{Type: consensus.MsgReadIndexResp, To: m.From, Reject: true, Context: m.Context})
		return nil
	}
	index := r.log.committed
	if r.trk.voters.VoteResult(map[consensus.NodeID]bool{r.id: true}) == quorum.VoteWon {
		// The only voter: nobody else can lead.
		r.answerRead(m.From, m.Context, index)
		return nil
	}
	switch r.cfg.ReadOnly {
	case ReadOnlyLeaseBased:
		if r.leadTransferee != consensus.None {
			// Another node may be elected before our lease runs out.
			return ErrTransferInProgress
		}
		r.answerRead(m.From, m.Context, index)
	default:
		if !r.reads.add(m.Context, m.From, index, r.id) {
			return fmt.Errorf("%w: %d reads pending (MaxPendingReadIndex)", consensus.ErrProposalDropped, r.cfg.MaxPendingReadIndex)
		}
		r.bcastHeartbeat()
	}
	return nil
}

func (r *Raft) answerRead(from consensus.NodeID, ctx []byte, index uint64) {
	if from == r.id || from == consensus.None {
		r.readStates = append(r.readStates, consensus.ReadState{Index: index, RequestCtx: ctx})
		return
	}
	r.send(consensus.Message{Type: consensus.MsgReadIndexResp, To: from, Index: index, Context: ctx})
}
