package node

import "time"

// Clock is the node's only source of time: the engine goroutine ticks the
// engine from one Ticker, and every timeout inside the node (proposal
// retries, disk-full retries, the fsync stall bound) is counted in those
// ticks. Tests substitute a Clock whose ticks they deliver by hand.
type Clock interface {
	// NewTicker returns a ticker firing every d.
	NewTicker(d time.Duration) Ticker
	// Now returns the current monotonic time (used to notice pauses).
	Now() time.Time
}

// Ticker delivers ticks; a slow reader misses ticks rather than queueing
// them, as a time.Ticker does.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

type realClock struct{}

func (realClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }
func (realClock) Now() time.Time                   { return time.Now() }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }
