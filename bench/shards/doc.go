// Package shards measures ballot's sharded mode (package shard) the way
// issue 9 asks: a 3-host cluster, every host a shard.Host started by
// shard/shardtest with its own data directory on the OS file system (fsync
// on), loopback TCP between hosts, ballot's default 100 ms tick and
// 10-tick election timeout. The three hosts and the load generator share
// this process (and, on the benchmark machine, 2 cores).
//
// BenchmarkShardPuts: puts of 256-byte values through clientv3 by 64 and
// 256 concurrent clients, to keys whose first byte cycles over 0x00..0xff
// so that every initial shard (shard.Initial divides the first byte
// evenly) gets its share, with 1, 2, 4 and 8 shards; it reports ops/s
// (puts/s), p50/p99/p99.9 latency and, within the process, the ratio of
// ops/s to the 1-shard cluster's at the same client count (vs-1shard).
//
// BenchmarkIdleGroups: one 3-host cluster with N shards (each host keeps a
// member of every shard and of the meta group, so the process runs
// 3·(N+1) group members, each a whole server.Server), started and then
// left idle; it reports the Go heap in use (after runtime.GC) and the
// goroutines the cluster added, in all and per group member, and the CPU
// time (user+system, getrusage) the process burns per second of a fixed
// idle window. Run one shard count and quiescence setting per process
// (-bench 'BenchmarkIdleGroups/shards=64/quiesce=on$'), so no cluster
// inherits another's memory. A cluster can start with at most 256 shards
// (shard.Initial); more are made by splitting after the start (each split
// one at a time: the 744 splits to 1000 shards took 15-110 s here).
//
// Both run with quiescence on (the default) and off (shard.Config.NoQuiesce).
//
// Environment knobs (benchall --quick passes small ones):
//
//	BALLOT_BENCH_SHARDS       shard counts of BenchmarkShardPuts (default 1,2,4,8)
//	BALLOT_BENCH_CLIENTS      client counts of BenchmarkShardPuts (default 64,256)
//	BALLOT_BENCH_SHARD_OPS    puts per row and b.N iteration (default 6000)
//	BALLOT_BENCH_IDLE_SHARDS  shard counts of BenchmarkIdleGroups (default 1,64,256; benchall adds 1000)
//	BALLOT_BENCH_IDLE_SECONDS the idle window CPU is measured over (default 10)
//	BALLOT_BENCH_QUIESCE      which of on,off to run (default both)
package shards
