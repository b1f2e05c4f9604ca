package main

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
)

// The shards suite's rows are named
//
//	BenchmarkShardPuts/quiesce=<on|off>/shards=<N>/clients=<C>
//	BenchmarkIdleGroups/shards=<N>/quiesce=<on|off>
//
// and its shard and client counts differ between full and quick runs, so
// the report lays out whatever rows the run has.
var (
	shardPutsName = regexp.MustCompile(`^BenchmarkShardPuts/quiesce=(\w+)/shards=(\d+)/clients=(\d+)$`)
	idleName      = regexp.MustCompile(`^BenchmarkIdleGroups/shards=(\d+)/quiesce=(\w+)$`)
)

type shardRow struct {
	quiesce         string
	shards, clients int
}

// shardRows returns the distinct rows of rs whose names match re, sorted.
func shardRows(rs runs, re *regexp.Regexp, row func(m []string) shardRow) []shardRow {
	set := map[shardRow]bool{}
	for _, round := range rs {
		for name := range round {
			if m := re.FindStringSubmatch(name); m != nil {
				set[row(m)] = true
			}
		}
	}
	out := slices.Collect(maps.Keys(set))
	slices.SortFunc(out, func(a, b shardRow) int {
		if a.quiesce != b.quiesce {
			if a.quiesce == "on" {
				return -1
			}
			return 1
		}
		if a.shards != b.shards {
			return a.shards - b.shards
		}
		return a.clients - b.clients
	})
	return out
}

// roundsWith counts the rounds of rs that have a row matching re.
func roundsWith(rs runs, re *regexp.Regexp) int {
	n := 0
	for _, round := range rs {
		for name := range round {
			if re.MatchString(name) {
				n++
				break
			}
		}
	}
	return n
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// whole formats the median of a count.
func whole(v []float64) string {
	m, ok := median(v)
	if !ok {
		return "—"
	}
	return fmt.Sprintf("%.0f", m)
}

func shardPutsRow(r shardRow) string {
	return fmt.Sprintf("BenchmarkShardPuts/quiesce=%s/shards=%d/clients=%d", r.quiesce, r.shards, r.clients)
}

func idleRow(r shardRow) string {
	return fmt.Sprintf("BenchmarkIdleGroups/shards=%d/quiesce=%s", r.shards, r.quiesce)
}

func renderShards(p printer, rs runs) {
	if len(rs) == 0 {
		return
	}
	puts := shardRows(rs, shardPutsName, func(m []string) shardRow { return shardRow{m[1], atoi(m[2]), atoi(m[3])} })
	idle := shardRows(rs, idleName, func(m []string) shardRow { return shardRow{m[2], atoi(m[1]), 0} })
	if len(puts) > 0 {
		p("## Sharded mode: writes as shards grow (3 hosts, fsync on, loopback TCP)\n\n")
		p("ballot's sharded mode (package `shard`): three `shard.Host`s in one process, each with its own data directory, 100 ms ticks; every host keeps a member of every shard. ")
		p("Single-key puts of 256-byte values through clientv3 (at most 64 clients, each on every host, shared round-robin by the row's client goroutines) to keys whose first byte cycles over 0x00–0xff, so every shard gets its share. ")
		p("The hosts and the load generator share the machine's cores: adding shards adds groups to run, not CPUs. *vs 1 shard* is the row's puts/s over the 1-shard cluster's at the same client count, in the same process. %d round(s).\n\n", roundsWith(rs, shardPutsName))
		p("| quiescence | shards | clients | puts/s | p50 ms | p99 ms | p99.9 ms | vs 1 shard |\n|---|---|---|---|---|---|---|---|\n")
		for _, r := range puts {
			n := shardPutsRow(r)
			one := shardPutsRow(shardRow{r.quiesce, 1, r.clients})
			p("| %s | %d | %d | %s | %s | %s | %s | %s |\n", r.quiesce, r.shards, r.clients,
				num(rs.values(n, "ops/s")), num(rs.values(n, "p50-ms")), num(rs.values(n, "p99-ms")), num(rs.values(n, "p999-ms")),
				ratio(rs.ratios(n, one, "ops/s")))
		}
		p("\n")
	}
	if len(idle) > 0 {
		p("## Sharded mode: idle groups (3 hosts in one process)\n\n")
		p("A 3-host cluster with N shards — 3·(N+1) group members in the process, the meta group included, each a whole `server.Server` — started, left to settle (and, with quiescence on, to go quiet) and then left idle with no client. ")
		p("CPU is the whole process's user+system time (getrusage) per second of the idle window; heap is the Go heap of live objects after a GC, and goroutines, beyond the process before the cluster started. One process per shard count and quiescence setting; %d round(s).\n\n", roundsWith(rs, idleName))
		p("| shards | quiescence | group members | start s | heap MB | heap KB / member | RSS MB | goroutines / member | CPU ms/s | CPU µs/s / member | quiet at end | ticks/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, r := range idle {
			n := idleRow(r)
			quiet := "—"
			if q, ok := median(rs.values(n, "quiet-frac")); ok {
				quiet = fmt.Sprintf("%.1f%%", 100*q)
			}
			p("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.shards, r.quiesce,
				whole(rs.values(n, "members")), num(rs.values(n, "start-s")), num(rs.values(n, "heap-MB")), num(rs.values(n, "heap-KB/member")),
				num(rs.values(n, "rss-MB")), num(rs.values(n, "goroutines/member")), num(rs.values(n, "cpu-ms/s")), num(rs.values(n, "cpu-us/s/member")),
				quiet, num(rs.values(n, "ticks/s")))
		}
		// The marginal cost of a group member: between the smallest and the
		// largest shard count of each quiescence setting.
		p("\nMarginal cost of one more idle group member (between the smallest and largest shard counts measured), which excludes what the hosts cost without shards:\n\n")
		p("| quiescence | between | heap KB / member | goroutines / member | CPU µs/s / member |\n|---|---|---|---|---|\n")
		for _, q := range []string{"on", "off"} {
			var counts []int
			for _, r := range idle {
				if r.quiesce == q {
					counts = append(counts, r.shards)
				}
			}
			if len(counts) < 2 {
				continue
			}
			lo, hi := idleRow(shardRow{q, counts[0], 0}), idleRow(shardRow{q, counts[len(counts)-1], 0})
			diff := func(unit string, scale float64) string {
				a, okA := median(rs.values(lo, unit))
				b, okB := median(rs.values(hi, unit))
				ma, _ := median(rs.values(lo, "members"))
				mb, _ := median(rs.values(hi, "members"))
				if !okA || !okB || mb == ma {
					return "—"
				}
				return num([]float64{(b - a) * scale / (mb - ma)})
			}
			p("| %s | %d and %d shards | %s | %s | %s |\n", q, counts[0], counts[len(counts)-1],
				diff("heap-MB", 1024), diff("goroutines", 1), diff("cpu-ms/s", 1000))
		}
		p("\n")
	}
}
