#!/bin/bash
# usage: safety.sh OUTFILE
O=$1
cd ${2:-/work/main}
{
echo "== $(date -u) HEAD $(git rev-parse --short HEAD)"
echo "== go test ./raft/... ./wal/... ./node/... ./consensus/... -count=1 -p 1"
go test ./raft/... ./wal/... ./node/... ./consensus/... -count=1 -p 1; echo "rc=$?"
echo "== go test -race ./raft ./wal -count=1 -short"
go test -race ./raft ./wal -count=1 -short; echo "rc=$?"
echo "== go run ./cmd/ballot sim --seeds 500"
go run ./cmd/ballot sim --seeds 500 2>&1 | tail -n 5; echo "rc=${PIPESTATUS[0]}"
echo "== $(date -u)"
} > $O 2>&1
