package node

import "io"

// StateMachine is the application replicated by a Node. The node calls it
// from one goroutine only (the apply goroutine), never concurrently.
//
// # Determinism contract
//
// Every member applies the same commands in the same order and must arrive
// at the same state and the same results. So Apply must depend only on the
// state built by earlier Applies (or a Restore) and on its arguments: no
// clock, no randomness, no map iteration order, no environment, no I/O whose
// outcome can differ between members. A value that needs time or randomness
// (a lease expiry, a generated ID) is chosen by the proposer and carried in
// the command.
//
// Snapshot must write exactly the state that Restore reads back: after
// Restore(Snapshot()), applying the same commands gives the same results as
// on the member that took the snapshot.
type StateMachine interface {
	// Apply applies one committed command at log index index and returns
	// its result, which Propose hands back to the proposer. The node
	// applies each proposal at most once, even when a forward was retried.
	// Apply must not keep cmd after it returns.
	Apply(index uint64, cmd []byte) []byte
	// Snapshot writes the whole state to w. It runs on the apply
	// goroutine, so no Apply runs concurrently.
	Snapshot(w io.Writer) error
	// Restore replaces the whole state with the one read from r (written
	// by Snapshot, possibly on another member).
	Restore(r io.Reader) error
}
