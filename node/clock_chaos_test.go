//go:build chaosclock

package node

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ticksTake returns how long n ticks of a ticker with period d take.
func ticksTake(c Clock, d time.Duration, n int) time.Duration {
	tk := c.NewTicker(d)
	defer tk.Stop()
	start := time.Now()
	for range n {
		<-tk.C()
	}
	return time.Since(start)
}

// TestRateClockFollowsItsFile: at rate 4 twenty ticks come faster than a
// real ticker could deliver them; at rate 1/4 five come slower than it
// would. (Timers never fire early, so the bounds hold on a loaded machine.)
func TestRateClockFollowsItsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), ChaosClockRateFile)
	c := NewRateClock(path, slog.New(slog.DiscardHandler))
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		c.checked = time.Time{} // reread now
		c.mu.Unlock()
	}
	write("4")
	if took := ticksTake(c, 20*time.Millisecond, 20); took >= 19*20*time.Millisecond {
		t.Fatalf("rate 4: 20 ticks of 20ms took %v, no faster than real time", took)
	}
	write("0.25")
	if took := ticksTake(c, 10*time.Millisecond, 5); took < 5*40*time.Millisecond {
		t.Fatalf("rate 1/4: 5 ticks of 10ms took %v, less than 5×40ms", took)
	}
	write("2")
	t0, r0 := c.Now(), time.Now()
	<-time.After(50 * time.Millisecond)
	if virt, real := c.Now().Sub(t0), time.Since(r0); virt < real*3/2 {
		t.Fatalf("rate 2: Now advanced %v in %v of real time", virt, real)
	}
	write("garbage")
	c.Now()
	c.mu.Lock()
	rate := c.rate
	c.mu.Unlock()
	if rate != 1 {
		t.Fatalf("an unreadable rate file gave rate %v, want 1", rate)
	}
}
