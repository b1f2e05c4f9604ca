package wal

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/vfs"
)

// BenchmarkWALAppend measures group commit on the OS file system with fsync
// on: each op is one Save of one entry by one of `writers` concurrent
// goroutines, which split b.N between them. fsyncs/append below 1 is the
// group commit at work: concurrent Saves share one write and one fsync.
func BenchmarkWALAppend(b *testing.B) {
	for _, bc := range []struct{ writers, size int }{
		{1, 256}, {8, 256}, {8, 4096}, {64, 256},
	} {
		b.Run(fmt.Sprintf("writers=%d/size=%d", bc.writers, bc.size), func(b *testing.B) {
			benchAppend(b, bc.writers, bc.size)
		})
	}
}

func benchAppend(b *testing.B, writers, size int) {
	w, _, err := Open(vfs.Default, filepath.Join(b.TempDir(), "wal"), Options{Meta: Metadata{ClusterID: 1, NodeID: 1}})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	payload := make([]byte, size)
	for i := range payload {
		payload[i] = byte(i)
	}
	var index atomic.Uint64
	before := w.Stats()
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	b.ResetTimer()
	start := time.Now()
	for g := range writers {
		n := b.N / writers
		if g < b.N%writers {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				e := consensus.Entry{Index: index.Add(1), Epoch: 1, Data: payload}
				if err := w.Save(ctx, Batch{Entries: []consensus.Entry{e}}); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if e := failed.Load(); e != nil {
		b.Fatal(*e)
	}
	after := w.Stats()
	if got := after.Batches - before.Batches; got != uint64(b.N) {
		b.Fatalf("%d batches saved, want %d", got, b.N)
	}
	secs := elapsed.Seconds()
	b.ReportMetric(float64(b.N)/secs, "appends/s")
	b.ReportMetric(float64(b.N)*float64(size)/secs/1e6, "MB/s")
	b.ReportMetric(float64(after.Fsyncs-before.Fsyncs)/float64(b.N), "fsyncs/append")
}

// BenchmarkFsync is the disk's raw rate of one 4 KiB write followed by one
// fsync, sequential, on the same file system as BenchmarkWALAppend: the
// ceiling for a log that fsyncs every append, and the unit group commit
// multiplies. prealloc=sparse extends the file with Truncate first, as the
// WAL preallocates its segments; prealloc=zeroed writes and syncs zeros
// first, so the fsyncs only overwrite allocated blocks; prealloc=none
// appends to a growing file.
func BenchmarkFsync(b *testing.B) {
	const block = 4096
	const fileBytes = 64 << 20
	for _, mode := range []string{"sparse", "zeroed", "none"} {
		b.Run("prealloc="+mode, func(b *testing.B) {
			dir := b.TempDir()
			var f vfs.File
			open := func(i int) {
				if f != nil {
					f.Close()
				}
				var err error
				f, err = vfs.Default.Create(filepath.Join(dir, fmt.Sprintf("f%d", i)))
				if err != nil {
					b.Fatal(err)
				}
				switch mode {
				case "sparse":
					err = f.Truncate(fileBytes)
				case "zeroed":
					zeros := make([]byte, 1<<20)
					for off := int64(0); off < fileBytes && err == nil; off += int64(len(zeros)) {
						_, err = f.WriteAt(zeros, off)
					}
					if err == nil {
						err = f.Sync()
					}
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			open(0)
			defer func() { f.Close() }()
			buf := make([]byte, block)
			b.SetBytes(block)
			b.ResetTimer()
			start := time.Now()
			var off int64
			for i := range b.N {
				if off+block > fileBytes {
					b.StopTimer()
					open(i)
					off = 0
					b.StartTimer()
				}
				if _, err := f.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				off += block
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "fsyncs/s")
		})
	}
}

// BenchmarkEncodeBatch measures turning one Ready's worth of entries (64
// commands of 256 bytes and a HardState, about what the leader writes per
// fsync at 256 proposers) into records appended to a flush group's buffer,
// without the disk: the CPU and allocations of Save that are not I/O.
func BenchmarkEncodeBatch(b *testing.B) {
	payload := make([]byte, 256)
	ents := make([]consensus.Entry, 64)
	for i := range ents {
		ents[i] = consensus.Entry{Index: uint64(1000 + i), Epoch: 3, Data: payload}
	}
	batch := Batch{Entries: ents, HardState: consensus.HardState{Epoch: 3, Vote: 1, Commit: 999}}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = encodeBatch(buf[:0], &batch)
	}
	b.SetBytes(int64(len(buf)))
}
