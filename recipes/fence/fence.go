// Package fence is the resource's half of fencing: a Register that accepts a
// write only if its fencing token is at least as large as every token it
// has accepted before.
//
// Leases end leadership and locks in the store, but a process that was
// paused past its lease does not know that, and may still write. Fencing
// tokens from recipes/election and recipes/lock only grow, so the resource
// the writes go to can tell a stale holder from the current one by its
// token alone: it remembers the largest token it has seen and refuses a
// smaller one. Register is that rule, in memory; a real resource keeps the
// largest token in the same durable place as the data it guards, and
// checks and updates both in one atomic step (as Register does under its
// mutex).
//
// Guarantee: once a write with token T was accepted, no write with a token
// below T is ever accepted. It assumes nothing about time or leases.
package fence

import (
	"errors"
	"fmt"
	"sync"
)

// ErrStale is returned for a write whose token is lower than one the
// register has already accepted.
var ErrStale = errors.New("fence: stale fencing token")

// Write is one accepted write.
type Write struct {
	Token int64
	Value string
}

// Register holds one value guarded by fencing tokens. The zero value is
// ready to use and safe for concurrent use.
type Register struct {
	mu      sync.Mutex
	highest int64
	value   string
	history []Write
}

// Write stores value if token is at least the highest token accepted so
// far (a holder may write many times under one token), and otherwise
// returns ErrStale, naming both tokens.
func (r *Register) Write(token int64, value string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if token < r.highest {
		return fmt.Errorf("token %d after %d: %w", token, r.highest, ErrStale)
	}
	r.highest, r.value = token, value
	r.history = append(r.history, Write{Token: token, Value: value})
	return nil
}

// Read returns the current value and the token it was written with.
func (r *Register) Read() (value string, token int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.value, r.highest
}

// History returns every accepted write in order.
func (r *Register) History() []Write {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Write(nil), r.history...)
}
