// Package kv is ballot's deterministic MVCC key-value state machine with
// etcd v3 semantics. Its one job: apply etcd write requests (Put,
// DeleteRange, Txn, Compaction, LeaseGrant, LeaseRevoke, LeaseCheckpoint),
// carried through the replicated log as etcdserverpb.InternalRaftRequest,
// to an in-memory multi-version store, answer Range reads from it, and
// save and load its whole state. A Store is a node.StateMachine.
//
// # Determinism
//
// Apply depends only on the state and its arguments: no clock, no
// randomness, and no map iteration order reaches a result, an event or a
// snapshot. Lease IDs are chosen by the proposer; lease expiry is decided
// outside (the leader proposes LeaseRevoke). Limits (Options) must be the
// same on every member.
//
// # Revisions
//
// The store starts at revision 1. Every write request that changes
// something (a Put, a DeleteRange that deletes at least one key, a Txn
// whose taken branch writes, a LeaseRevoke of a lease with keys) advances
// the revision by exactly one; its changes get that main revision and
// sub-revisions 0, 1, 2, ... in the order they were made. A DeleteRange
// that deletes nothing, a Txn that writes nothing, a Compaction and the
// other lease requests leave the revision unchanged. Each key has a
// create_revision (the revision of the put that created it), a
// mod_revision (of its last change), a version (1 at creation, +1 per put,
// reset by a delete: the next put starts again at version 1 with a new
// create_revision) and a lease. Response headers carry the store revision
// after the request (a Range's header carries the current revision, not
// the one read at). Within a Txn, all compares (also of nested txns) are
// evaluated against the state before the txn, and each op sees the writes
// of the earlier ops.
//
// History is kept until compacted: a Range at revision r returns the state
// as of r; r > current fails with ErrGRPCFutureRev, 0 < r < CompactRev()
// with ErrGRPCCompacted. See Store.Compact for what compaction keeps.
//
// Errors are etcd's gRPC errors from go.etcd.io/etcd/api/v3/v3rpc/rpctypes,
// returned unwrapped so that a gRPC server can return them as they are.
// A failed request changes nothing.
//
// Quirks kept from etcd: a Txn delete with range_end "\x00" does not count
// as covering any key for ErrGRPCDuplicateKey (so such a txn may write a
// key twice in one revision); Range's Count is the number of keys in the
// range before the min/max revision filters and the limit. Deliberate
// differences: a Range with a sort target other than KEY, sort order NONE
// (meaning ASCEND) and a limit sorts the whole range before limiting (etcd
// sorts only the first limit+1 keys); sorting is stable (ties stay in key
// order); a Txn whose put with ignore_value/ignore_lease finds its key
// deleted by an earlier "\x00" delete of the same txn is undone and fails
// with ErrGRPCKeyNotFound (etcd panics); Compaction keeps tombstones
// written exactly at the compaction revision (see Store.Compact). As in
// etcd, a fresh store's CompactRev is -1, so a first compaction at revision
// 0 is accepted, and keys-only ranges not sorted by value carry no lease.
//
// # Apply results
//
// Apply returns EncodeResult(resp, err): byte 0 is the result format
// version (1), byte 1 a kind (0 empty, 1 error, 2 Range, 3 Put,
// 4 DeleteRange, 5 Txn, 6 Compaction, 7 LeaseGrant, 8 LeaseRevoke,
// 9 LeaseCheckpoint, 10 Alarm). For an error the rest is the gRPC code as a uvarint
// and then the message; otherwise it is the deterministic proto encoding of
// the response. DecodeResult reverses it.
//
// # Snapshot format (version 2)
//
// A snapshot is one byte stream:
//
//	"BALLOTKV"              8-byte magic
//	version                 uint32 big-endian, 2 (1 is read too: it has no meta)
//	applied index           uvarint
//	revision                varint (zigzag, as encoding/binary)
//	compact revision        varint
//	key count               uvarint
//	per key, ascending:
//	  key                   uvarint length, bytes
//	  entry count           uvarint (>= 1)
//	  per entry, ascending (main, sub):
//	    main, sub           varint, varint
//	    kind                byte: 0 put, 1 tombstone
//	    put only: create_revision, version, lease (varints), value (uvarint length, bytes)
//	lease count             uvarint
//	per lease, ascending ID:
//	  ID, granted TTL, checkpointed remaining TTL   varints
//	meta count              uvarint (version 2 on)
//	per meta entry, ascending key:
//	  key, value            uvarint length, bytes each
//	checksum                uint32 big-endian CRC-32C (Castagnoli) of all bytes before it
//
// Lease attachments are not stored: they follow from each key's current
// value. Restore reads the whole stream, refuses a bad magic, truncation,
// checksum mismatch or inconsistent content (ErrCorruptSnapshot) and an
// unknown version (ErrSnapshotVersion), and only then replaces the state.
//
// # Concurrency
//
// Apply, Snapshot, Restore and the write methods run on one goroutine.
// Range, EventsSince, Rev, CompactRev, Leases and LeaseTimeToLive may run
// concurrently with them (a sync.RWMutex). Byte slices in returned
// responses and events are shared with the store: treat them as read-only.
package kv
