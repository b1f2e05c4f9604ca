package twopc_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that the package's tests leave no goroutine behind: every
// session, watch and observer the recipe starts ends with its context.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// clientv3 and grpc keep package-level goroutines.
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}
