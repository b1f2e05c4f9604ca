package compat

import (
	"testing"

	"github.com/ballotdb/ballot/recipes/recipestest"
	"github.com/ballotdb/ballot/server/servertest"
)

// TestRecipes runs the recipes' checks (recipes/recipestest) table-driven
// against a three-member ballot cluster and against a one-member embedded
// etcd: the recipes are clients of the etcd v3 API and must behave the same
// on both. Checks that stop a member run on ballot only (the etcd here has
// one member) and are skipped on etcd with a note.
func TestRecipes(t *testing.T) {
	backends := []struct {
		name  string
		start func(t *testing.T) recipestest.Backend
	}{
		{"ballot", func(t *testing.T) recipestest.Backend { return recipestest.Ballot(servertest.New(t, 3, nil)) }},
		{"etcd", func(t *testing.T) recipestest.Backend { return recipestest.Fixed("etcd", diffStartEtcd(t)) }},
	}
	checks := []struct {
		name string
		run  func(t *testing.T, b recipestest.Backend)
	}{
		{"election", func(t *testing.T, b recipestest.Backend) { recipestest.CheckElection(t, b, 4) }},
		{"lock", func(t *testing.T, b recipestest.Backend) { recipestest.CheckLock(t, b, 3, 4) }},
		{"poll", recipestest.CheckPoll},
		{"twopc", recipestest.CheckTwoPC},
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := be.start(t)
			for _, c := range checks {
				t.Run(c.name, func(t *testing.T) { c.run(t, b) })
			}
		})
	}
}
