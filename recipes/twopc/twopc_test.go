package twopc_test

import (
	"testing"

	"github.com/ballotdb/ballot/recipes/recipestest"
	"github.com/ballotdb/ballot/server/servertest"
)

// TestTwoPC: commits, aborts, and crashes of the coordinator and of a
// participant at every step, on a three-member ballot cluster; see
// recipestest.CheckTwoPC.
func TestTwoPC(t *testing.T) {
	recipestest.CheckTwoPC(t, recipestest.Ballot(servertest.New(t, 3, nil)))
}
