package node

import (
	"errors"
	"fmt"

	"github.com/ballotdb/ballot/consensus"
)

// Errors callers branch on with errors.Is.
var (
	// ErrNotLeader: the request needs the leader (membership changes), or
	// no leader is known to forward a proposal or read to. The concrete
	// error is a *consensus.NotLeaderError carrying the leader hint:
	//
	//	var nl *consensus.NotLeaderError
	//	if errors.As(err, &nl) { retryAt(nl.Leader) }
	ErrNotLeader = consensus.ErrNotLeader
	// ErrStopped: the node is stopped, or stopped while the request was
	// under way (a proposal in flight then may still have committed). When
	// the node stopped itself after a storage failure the error also wraps
	// that cause (errors.Is(err, syscall.EIO), say).
	ErrStopped = errors.New("node: stopped")
	// ErrRemoved: the node stopped because it applied its own removal
	// from the group (Err returns it). Its ID is never reused.
	ErrRemoved = errors.New("node: this member was removed from the group")
	// ErrBusy: the bounded queue of pending proposals (or reads) is full.
	// Nothing was submitted; retry later.
	ErrBusy = errors.New("node: too many pending requests")
	// ErrOutcomeUnknown: the request's context ended after the proposal was
	// handed to the engine. It may still commit and apply; it will not
	// apply twice.
	ErrOutcomeUnknown = errors.New("node: proposal outcome unknown")
	// ErrNoSpace: the disk is full. New proposals are refused until a save
	// succeeds again; the node keeps retrying on its own. The error also
	// matches syscall.ENOSPC.
	ErrNoSpace = errors.New("node: disk full, writes refused")
)

// stoppedError is what waiters get when the node stops: it matches
// ErrStopped and unwraps to the cause of a self-inflicted stop.
type stoppedError struct{ cause error }

func (e *stoppedError) Error() string {
	if e.cause == nil {
		return ErrStopped.Error()
	}
	return fmt.Sprintf("%v: %v", ErrStopped, e.cause)
}

func (e *stoppedError) Is(target error) bool { return target == ErrStopped }
func (e *stoppedError) Unwrap() error        { return e.cause }

// ErrConfUnchanged (a consensus.ErrInvalidConfChange): a membership change
// committed but changed nothing, such as adding a voter that already votes.
var ErrConfUnchanged = fmt.Errorf("%w: the change changed nothing", consensus.ErrInvalidConfChange)
