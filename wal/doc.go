// Package wal is ballot's write-ahead log: the durable home of an engine's
// entries and HardState, written before any message that depends on them
// leaves the node.
//
// # Usage
//
//	w, st, err := wal.Open(fs, dir, wal.Options{Meta: wal.Metadata{ClusterID: c, NodeID: n}})
//	// st holds what recovery found: HardState, snapshot metadata, entries.
//	err = w.Save(ctx, wal.Batch{Entries: rd.Entries, HardState: rd.HardState, ...})
//	// Save returns once the batch is durable; concurrent Saves share fsyncs.
//	err = w.ReleaseTo(snapIndex) // delete segments wholly before a snapshot
//
// # On-disk format (version 1)
//
// The log is a directory of segments named by a sequence number,
// 0000000000000001.wal, 0000000000000002.wal, … Each segment is preallocated
// to Options.SegmentBytes (zero-filled) and holds a sequence of frames, each
// aligned to 8 bytes:
//
//	+------------------+-------------------+---------------------+---------+
//	| length (4B, LE)  | CRC32C (4B, LE)   | payload (length B)  | padding |
//	+------------------+-------------------+---------------------+---------+
//
// The CRC (Castagnoli) covers the length and the payload. A frame is what one
// group commit writes with one write and one fsync; its payload is a
// sequence of records:
//
//	+-----------+------------------+-----------------+
//	| type (1B) | length (uvarint) | data (length B) |
//	+-----------+------------------+-----------------+
//
// Record types:
//
//	1 header     version, segment sequence, cluster ID, node ID; the first
//	             record of every segment
//	2 entry      a consensus.Entry; a later entry record for the same index
//	             replaces the earlier one on replay
//	3 hardstate  a consensus.HardState; the last one wins
//	4 truncate   drop every entry after an index; never implied by a write,
//	             because a Paxos acceptor overwrites one slot and must keep
//	             the slots after it
//	5 snapshot   a consensus.SnapshotMeta: entries at or below its index are
//	             in a snapshot file and dropped from the log
//
// The first frame of every segment restates the latest HardState and snapshot
// metadata after its header, so segments wholly before a snapshot can be
// deleted without losing them.
//
// # Recovery
//
// Only the last frame can be incomplete after a crash: a frame is written
// only after the previous one was fsynced. So recovery reads frames in
// order; at the first frame that is zero, short, or fails its CRC it scans
// the rest of the segment for any valid frame. None found, and this is the
// last segment: the tail is torn, the file is cut there (and re-zeroed) and
// the node starts. A valid frame found after it, or a bad frame in an
// earlier segment, is corruption: Open refuses with an error naming the file
// and offset (errors.Is(err, ErrCorrupt)).
//
// # Durability contract
//
// Save returns nil only after the batch's bytes and every earlier batch's
// are on stable storage (fsync of the segment; new segments are also made
// durable in their directory before use). If an fsync fails, the WAL is
// broken for good: every later Save fails with ErrBroken, and the node must
// restart and recover from disk rather than retry the fsync (after a failed
// fsync the kernel may have dropped the dirty pages, so a retry could report
// success for data that is gone).
//
// A full disk is different: if creating a segment or writing a frame fails
// with ENOSPC, the Saves of that flush fail with an error matching
// syscall.ENOSPC (not ErrBroken), nothing of theirs is durable, and the log
// stays usable: the write offset does not move, and whatever a partial
// write left is zeroed by the next write (or before the segment is closed
// by a roll), so only the last segment can ever end in a torn frame. The
// caller saves the batch again once space returns.
//
// # Concurrency
//
// Save may be called from many goroutines; callers form a group commit with
// no goroutine of the WAL's own: the first caller to find no flush in
// progress flushes every pending batch with one write and one fsync, and
// wakes the others. Other methods are safe for concurrent use.
package wal
