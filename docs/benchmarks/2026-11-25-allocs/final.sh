#!/bin/bash
# Interleaved A/B: every variant once per round, three rounds, order alternating.
O=/tmp/allocs/out-final
mkdir -p $O
V="base s1 s2 s3 s4 s5 s6"
R="s6 s5 s4 s3 s2 s1 base"
for round in 1 2 3; do
  if [ $round = 2 ]; then order=$R; else order=$V; fi
  for v in $order; do
    B=/tmp/allocs/$v; mkdir -p $O/$v
    echo "round $round variant $v $(date -u +%T) $(cat /proc/loadavg)" >> $O/log.txt
    (cd /tmp/allocs/tree/bench/core && $B/core.test -test.run '^$' -test.bench 'BenchmarkCore/.*/.*/engine=(ballot-raft|etcd-raft)$' -test.benchmem -test.count 1) >> $O/$v/core.txt 2>&1
    (cd /tmp/allocs/tree/bench/nodes && $B/nodes.test -test.run '^$' -test.bench 'BenchmarkNode/proposers=(16|256)/system=ballot$' -test.benchmem -test.benchtime 5s -test.count 1) >> $O/$v/nodes.txt 2>&1
    case $v in base|s1|s6)
    (cd /tmp/allocs/tree/wal && $B/wal.test -test.run '^$' -test.bench 'BenchmarkWALAppend|BenchmarkEncodeBatch' -test.benchmem -test.count 1) >> $O/$v/wal.txt 2>&1 ;;
    esac
  done
done
echo finished $(date -u +%T) >> $O/log.txt
