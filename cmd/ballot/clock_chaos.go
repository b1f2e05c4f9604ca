//go:build chaosclock

package main

import (
	"log/slog"
	"path/filepath"

	"github.com/ballotdb/ballot/node"
)

// serveClock gives the node a clock whose rate the chaos rig skews by
// writing a file in the data directory (the clock nemesis). Only binaries
// built with -tags chaosclock have it.
func serveClock(dataDir string, log *slog.Logger) node.Clock {
	return node.NewRateClock(filepath.Join(dataDir, node.ChaosClockRateFile), log)
}
