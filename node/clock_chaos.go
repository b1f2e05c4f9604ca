//go:build chaosclock

package node

import (
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ChaosClockRateFile is the file, in the data directory, from which a
// RateClock reads its rate.
const ChaosClockRateFile = "chaos-clock-rate"

// rateRefresh is how often a RateClock looks at its rate file.
const rateRefresh = 100 * time.Millisecond

// RateClock is a Clock whose rate can be changed while it runs, for the
// chaos rig's clock nemesis: at rate 3 its tickers fire three times as
// often as asked and Now runs three times as fast; at rate 0.25 four times
// as slowly. The rate is a decimal number read from a file (absent or
// unreadable: 1), looked at every 100 ms of real time.
//
// It exists only in binaries built with the chaosclock build tag; a
// production binary has no way to skew its node's clock.
type RateClock struct {
	path string
	log  *slog.Logger

	mu       sync.Mutex
	rate     float64
	checked  time.Time // real time the file was last read
	realBase time.Time // real time of the last rate change
	virtBase time.Time // Now at realBase
}

// NewRateClock returns a RateClock reading its rate from path.
func NewRateClock(path string, log *slog.Logger) *RateClock {
	now := time.Now()
	c := &RateClock{path: path, log: log, rate: 1, realBase: now, virtBase: now}
	log.Warn("chaos clock: this test build reads its tick rate from a file", "path", path)
	return c
}

// refreshLocked rereads the rate file if it was not read lately.
// REQUIRES: c.mu is held.
func (c *RateClock) refreshLocked(now time.Time) {
	if now.Sub(c.checked) < rateRefresh {
		return
	}
	c.checked = now
	rate := 1.0
	if b, err := os.ReadFile(c.path); err == nil {
		s := strings.TrimSpace(string(b))
		if r, err := strconv.ParseFloat(s, 64); err == nil && r >= 0.01 && r <= 100 {
			rate = r
		}
	}
	if rate == c.rate {
		return
	}
	c.virtBase = c.nowLocked(now)
	c.realBase = now
	c.log.Warn("chaos clock: tick rate changed", "from", c.rate, "to", rate)
	c.rate = rate
}

// REQUIRES: c.mu is held.
func (c *RateClock) nowLocked(real time.Time) time.Time {
	return c.virtBase.Add(time.Duration(float64(real.Sub(c.realBase)) * c.rate))
}

// Now returns the skewed monotonic time.
func (c *RateClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	c.refreshLocked(now)
	return c.nowLocked(now)
}

// period returns d at the current rate, in real time.
func (c *RateClock) period(d time.Duration) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refreshLocked(time.Now())
	return max(time.Duration(float64(d)/c.rate), time.Millisecond)
}

// NewTicker returns a ticker firing every d of this clock's time.
func (c *RateClock) NewTicker(d time.Duration) Ticker {
	t := &rateTicker{c: make(chan time.Time, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go t.run(c, d)
	return t
}

// rateTicker fires at its clock's current rate; its goroutine ends on Stop.
type rateTicker struct {
	c    chan time.Time
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func (t *rateTicker) run(c *RateClock, d time.Duration) {
	defer close(t.done)
	timer := time.NewTimer(c.period(d))
	defer timer.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-timer.C:
			select {
			case t.c <- c.Now():
			default: // a slow reader misses ticks, as with time.Ticker
			}
			timer.Reset(c.period(d))
		}
	}
}

func (t *rateTicker) C() <-chan time.Time { return t.c }

// Stop stops the ticker and waits for its goroutine to end.
func (t *rateTicker) Stop() {
	t.once.Do(func() { close(t.stop) })
	<-t.done
}
