package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that a run of the story leaves no goroutine behind: the
// chefs' campaigns, clients and the in-process cluster all stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// clientv3 and grpc keep package-level goroutines.
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}
