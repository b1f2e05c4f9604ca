#!/bin/bash
O=/tmp/allocs/out-ab; mkdir -p $O
for round in 1 2 3 4 5; do
  if [ $((round%2)) = 1 ]; then order="base s6"; else order="s6 base"; fi
  for v in $order; do
    echo "round $round variant $v $(date -u +%T) $(cat /proc/loadavg)" >> $O/log.txt
    (cd /tmp/allocs/tree/bench/nodes && /tmp/allocs/$v/nodes.test -test.run '^$' -test.bench 'BenchmarkNode/proposers=(16|256)/system=ballot$' -test.benchmem -test.benchtime 5s -test.count 1) >> $O/$v-nodes.txt 2>&1
  done
done
# profiles, 256 proposers, 10s
for v in base s6; do
  (cd /tmp/allocs/tree/bench/nodes && /tmp/allocs/$v/nodes.test -test.run '^$' -test.bench 'BenchmarkNode/proposers=256/system=ballot$' -test.benchmem -test.benchtime 10s -test.cpuprofile $O/$v-node.cpu.pprof -test.memprofile $O/$v-node.alloc.pprof -test.memprofilerate 65536) > $O/$v-node.profile-run.txt 2>&1
done
echo finished $(date -u +%T) >> $O/log.txt
