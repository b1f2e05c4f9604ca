package raft

import (
	"encoding/binary"
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
// Two rules keep this sound. A new leader does not know the commit index
// of the previous term until it commits an entry of its own (its no-op), so
// reads are refused until then. And an acknowledgement counts for a read
// only if it answers a heartbeat sent after the read arrived. Heartbeats
// carry a round number the leader alone assigns (never the reads' own
// contexts: a follower retrying a forwarded read reuses its context, and
// contexts of different members can be equal), each read records the first
// round sent after it arrived, and a read is confirmed once a quorum has
// acknowledged that round or a later one. (An earlier design matched
// acknowledgements to reads by context; the chaos rig caught it serving a
// stale read when a delayed acknowledgement for one copy of a retried read
// confirmed the leader's own later read.)

// readRequest is one read waiting for its heartbeat quorum.
type readRequest struct {
	ctx   []byte
	from  consensus.NodeID
	index uint64
	round uint64 // the first heartbeat round sent after it arrived
}

// readOnly is the leader's queue of reads awaiting confirmation, in arrival
// order (so with non-decreasing rounds), bounded by max.
type readOnly struct {
	max   int
	queue []*readRequest
	// acked is the newest heartbeat round each peer has acknowledged in
	// this leadership.
	acked map[consensus.NodeID]uint64
}

func (ro *readOnly) reset() {
	ro.queue = nil
	ro.acked = nil
}

// add queues a read that the next heartbeat round, round, will confirm;
// false when the queue is full.
func (ro *readOnly) add(ctx []byte, from consensus.NodeID, index, round uint64) bool {
	if len(ro.queue) >= ro.max {
		return false
	}
	ro.queue = append(ro.queue, &readRequest{ctx: append([]byte(nil), ctx...), from: from, index: index, round: round})
	return true
}

// ack records that from acknowledged heartbeat round.
func (ro *readOnly) ack(from consensus.NodeID, round uint64) {
	if ro.acked == nil {
		ro.acked = map[consensus.NodeID]uint64{}
	}
	if round > ro.acked[from] {
		ro.acked[from] = round
	}
}

// advance releases every read up to the newest one confirmed by a quorum:
// rounds grow along the queue, so confirming one confirms those before it.
func (ro *readOnly) advance(voters quorum.JointConfig, self consensus.NodeID) []*readRequest {
	for i := len(ro.queue) - 1; i >= 0; i-- {
		votes := map[consensus.NodeID]bool{self: true}
		for id, r := range ro.acked {
			if r >= ro.queue[i].round {
				votes[id] = true
			}
		}
		if voters.VoteResult(votes) == quorum.VoteWon {
			done := ro.queue[:i+1]
			ro.queue = append([]*readRequest(nil), ro.queue[i+1:]...)
			return done
		}
	}
	return nil
}

// encodeRound and decodeRound put a heartbeat round in a message context.
func encodeRound(round uint64) []byte { return binary.BigEndian.AppendUint64(nil, round) }

func decodeRound(ctx []byte) (uint64, bool) {
	if len(ctx) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(ctx), true
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
		if !r.reads.add(m.Context, m.From, index, r.hbRound+1) {
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
