package lock_test

import (
	"testing"

	"github.com/ballotdb/ballot/recipes/recipestest"
	"github.com/ballotdb/ballot/server/servertest"
)

// TestLock: contention, a paused holder, a revoked holder and TryLock on a
// three-member ballot cluster; see recipestest.CheckLock.
func TestLock(t *testing.T) {
	recipestest.CheckLock(t, recipestest.Ballot(servertest.New(t, 3, nil)), 4, 5)
}
