//go:build !chaosclock

package main

import (
	"log/slog"

	"github.com/ballotdb/ballot/node"
)

// serveClock returns nil: the node runs on the real monotonic clock. (A
// binary built with -tags chaosclock has a clock the chaos rig can skew.)
func serveClock(string, *slog.Logger) node.Clock { return nil }
