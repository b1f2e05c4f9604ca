package election_test

import (
	"testing"

	"github.com/ballotdb/ballot/recipes/recipestest"
	"github.com/ballotdb/ballot/server/servertest"
)

// TestElection: five candidates on a three-member ballot cluster, terms
// ended by resignation, crash and member stop; see recipestest.CheckElection.
func TestElection(t *testing.T) {
	recipestest.CheckElection(t, recipestest.Ballot(servertest.New(t, 3, nil)), 5)
}
