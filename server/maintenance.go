package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/kv"
	"github.com/ballotdb/ballot/snap"
	"github.com/ballotdb/ballot/vfs"
	"github.com/ballotdb/ballot/wal"
)

// Version is the etcd API version ballot answers to in Status: clients
// and etcdctl check it to decide which features they may use.
const Version = "3.6.0"

// maintenanceServer is etcd's Maintenance service. MoveLeader is in
// members.go; quota and alarms in quota.go; the consistency check in
// corrupt.go.
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

// Status reports this member's view, as etcd's: DbSize is the data size
// the quota is compared with and DbSizeInUse the bytes the store holds now
// (see quota.go), Errors the active alarms (and "no leader").
func (m *maintenanceServer) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	s := m.s
	st := s.node.Status()
	isLearner := slices.Contains(st.ConfState.Learners, consensus.NodeID(s.id))
	inUse, size := s.updateSize()
	quota := s.quotaBytes()
	if quota < 0 {
		quota = 0
	}
	resp := &pb.StatusResponse{
		Header: s.header(0), Version: Version, StorageVersion: Version,
		DbSize: max(size, 1), DbSizeInUse: inUse, DbSizeQuota: quota,
		Leader: uint64(st.Leader), RaftIndex: st.Commit, RaftTerm: st.Epoch,
		RaftAppliedIndex: st.Applied, IsLearner: isLearner,
	}
	if st.Leader == consensus.None {
		resp.Errors = append(resp.Errors, rpctypes.ErrGRPCNoLeader.Error())
	}
	for _, a := range s.alarms() {
		resp.Errors = append(resp.Errors, a.String())
	}
	return resp, nil
}

// Hash hashes this member's whole replicated state (kv.Store.Hash).
func (m *maintenanceServer) Hash(ctx context.Context, _ *pb.HashRequest) (*pb.HashResponse, error) {
	h, rev := m.s.store.Hash()
	return &pb.HashResponse{Header: m.s.header(rev), Hash: h}, nil
}

// HashKV hashes this member's key history up to a revision (0: the
// current one), as etcd's: the hash, the compact revision, the revision
// hashed.
func (m *maintenanceServer) HashKV(ctx context.Context, r *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	h, crev, hrev, err := m.s.store.HashKV(r.Revision)
	if err != nil {
		return nil, err
	}
	return &pb.HashKVResponse{Header: m.s.header(0), Hash: h, CompactRevision: crev, HashRevision: hrev}, nil
}

// Defragment: ballot's store lives in memory and has no file to rewrite.
// Defragment lowers the reported data size to the bytes in use (what
// compaction freed stops counting against the quota) and returns freed
// memory to the operating system. It always succeeds.
func (m *maintenanceServer) Defragment(ctx context.Context, _ *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	m.s.defragment()
	return &pb.DefragmentResponse{Header: m.s.header(0)}, nil
}

// Alarm lists, raises or disarms alarms, each through the log (as etcd's),
// so the answer reflects every alarm request before it.
func (m *maintenanceServer) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	switch r.Action {
	case pb.AlarmRequest_GET, pb.AlarmRequest_ACTIVATE, pb.AlarmRequest_DEACTIVATE:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "etcdserver: unknown alarm action %d", r.Action)
	}
	resp, err := m.s.propose(ctx, &pb.InternalRaftRequest{Alarm: r})
	if err != nil {
		return nil, err
	}
	out, _ := resp.(*pb.AlarmResponse)
	if out == nil {
		out = &pb.AlarmResponse{}
	}
	out.Header = m.s.header(0)
	return out, nil
}

// snapshotBarrierTimeout bounds Snapshot's wait for a read barrier.
const snapshotBarrierTimeout = 3 * time.Second

// snapshotChunkBytes is the size of one Snapshot message's blob (etcd's
// snapshotSendBufferSize).
const snapshotChunkBytes = 32 * 1024

// Snapshot streams a backup of this member's state (see WriteBackup) as
// etcd streams its database: chunks with RemainingBytes and Version, the
// header on the first, then one message holding the SHA-256 of everything
// before it. The state is taken under the store's read lock into a
// temporary file, so the stream is consistent however slowly the client
// reads. A read barrier comes first, so the backup holds every write
// acknowledged before the request; without a leader (a majority lost: the
// case backups are for) the member's local state is sent after
// snapshotBarrierTimeout, as etcd sends its local database.
func (m *maintenanceServer) Snapshot(_ *pb.SnapshotRequest, srv pb.Maintenance_SnapshotServer) error {
	s := m.s
	bctx, cancel := context.WithTimeout(srv.Context(), snapshotBarrierTimeout)
	err := s.readBarrier(bctx)
	cancel()
	if srv.Context().Err() != nil {
		return s.toGRPC(srv.Context(), srv.Context().Err())
	}
	if err != nil {
		s.log.Warn("snapshot: no read barrier; sending this member's local state", "err", err)
	}
	dir := s.snapshotTempDir()
	if stale, _ := filepath.Glob(filepath.Join(dir, "backup-*.tmp")); len(stale) > 0 {
		for _, name := range stale { // left by a crash (a running Snapshot keeps reading its removed file)
			os.Remove(name)
		}
	}
	f, err := os.CreateTemp(dir, "backup-*.tmp")
	if err != nil {
		s.log.Warn("snapshot: temporary file", "err", err)
		return status.Errorf(codes.Internal, "etcdserver: snapshot: %v", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	total, err := WriteBackup(f, s.store)
	if err != nil {
		s.log.Warn("snapshot: write", "err", err)
		return status.Errorf(codes.Internal, "etcdserver: snapshot: %v", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return status.Errorf(codes.Internal, "etcdserver: snapshot: %v", err)
	}
	s.log.Info("sending snapshot to a client", "bytes", total, "revision", s.store.Rev())
	h := sha256.New()
	var sent int64
	first := true
	for sent < total {
		buf := make([]byte, min(snapshotChunkBytes, total-sent)) // Send may keep it: never reused
		if _, err := io.ReadFull(f, buf); err != nil {
			return status.Errorf(codes.Internal, "etcdserver: snapshot: read back: %v", err)
		}
		sent += int64(len(buf))
		h.Write(buf)
		resp := &pb.SnapshotResponse{RemainingBytes: uint64(total - sent), Blob: buf, Version: Version}
		if first {
			resp.Header, first = s.header(0), false
		}
		if err := srv.Send(resp); err != nil {
			return err
		}
	}
	return srv.Send(&pb.SnapshotResponse{RemainingBytes: 0, Blob: h.Sum(nil), Version: Version})
}

// snapshotTempDir is where Snapshot stages its file: the data directory
// when it is on the OS file system, else the system's temporary directory.
func (s *Server) snapshotTempDir() string {
	if s.cfg.FS == nil || s.cfg.FS == vfs.Default {
		return s.cfg.DataDir
	}
	return os.TempDir()
}

// Backup files.
//
// A backup is what Snapshot streams and etcdctl or ballot snapshot save
// write to a file:
//
//	kv snapshot             the store's snapshot (kv package doc), N bytes
//	zero padding            so that the body is a multiple of 512 bytes
//	trailer                 "BALLOTBK", N as uint64 big-endian (16 bytes)
//	sha256                  of all the bytes before it (32 bytes)
//
// The file's length is therefore 512k+32 bytes, which is how etcd's
// client recognises a snapshot that carries its checksum. ReadBackup checks
// the SHA-256, the trailer and the kv snapshot's own CRC.
const (
	backupMagic   = "BALLOTBK"
	backupTrailer = len(backupMagic) + 8
	backupAlign   = 512
)

// Errors of ReadBackup.
var (
	ErrBackupChecksum = errors.New("server: backup fails its sha256 checksum")
	ErrBackupFormat   = errors.New("server: not a ballot backup")
)

// WriteBackup writes a backup of the store's current state to w and
// returns the bytes written (the SHA-256 not included: Snapshot and
// SaveBackup append it).
func WriteBackup(w io.Writer, store *kv.Store) (int64, error) {
	cw := &countingWriter{w: w}
	if err := store.Snapshot(cw); err != nil {
		return cw.n, fmt.Errorf("server: backup: %w", err)
	}
	n := cw.n
	pad := (backupAlign - (n+int64(backupTrailer))%backupAlign) % backupAlign
	tail := make([]byte, pad, pad+int64(backupTrailer))
	tail = append(tail, backupMagic...)
	tail = binary.BigEndian.AppendUint64(tail, uint64(n))
	if _, err := cw.Write(tail); err != nil {
		return cw.n, fmt.Errorf("server: backup: %w", err)
	}
	return cw.n, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// BackupInfo describes a verified backup.
type BackupInfo struct {
	kv.Stats
	Hash      uint32 // kv.Store.HashKV at the backup's revision
	SizeBytes int64  // of the whole file
	SHA256    [sha256.Size]byte
	// AppliedIndex is the log index the state was taken at.
	AppliedIndex uint64
}

// ReadBackup verifies a backup (its SHA-256, trailer and the kv
// snapshot's CRC) and loads it into a fresh store.
func ReadBackup(b []byte) (*kv.Store, *BackupInfo, error) {
	if len(b) < sha256.Size+backupTrailer {
		return nil, nil, fmt.Errorf("%w: %d bytes is too short", ErrBackupFormat, len(b))
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	got := sha256.Sum256(body)
	if !bytes.Equal(got[:], sum) {
		return nil, nil, fmt.Errorf("%w: stored %x, computed %x", ErrBackupChecksum, sum, got)
	}
	tr := body[len(body)-backupTrailer:]
	if string(tr[:len(backupMagic)]) != backupMagic {
		return nil, nil, fmt.Errorf("%w: no %q trailer", ErrBackupFormat, backupMagic)
	}
	n := binary.BigEndian.Uint64(tr[len(backupMagic):])
	if n > uint64(len(body)-backupTrailer) {
		return nil, nil, fmt.Errorf("%w: snapshot length %d beyond the file", ErrBackupFormat, n)
	}
	for _, c := range body[n : len(body)-backupTrailer] {
		if c != 0 {
			return nil, nil, fmt.Errorf("%w: padding is not zero", ErrBackupFormat)
		}
	}
	st := kv.New()
	if err := st.Restore(bytes.NewReader(body[:n])); err != nil {
		return nil, nil, fmt.Errorf("server: backup: %w", err)
	}
	h, _, _, err := st.HashKV(0)
	if err != nil {
		return nil, nil, fmt.Errorf("server: backup: %w", err)
	}
	return st, &BackupInfo{Stats: st.Stats(), Hash: h, SizeBytes: int64(len(b)), SHA256: got, AppliedIndex: st.AppliedIndex()}, nil
}

// RestoreConfig says how to build a new member's data directory from a
// backup; the cluster flags are the ones the member will be served with.
type RestoreConfig struct {
	Backup         []byte            // the backup file's bytes
	DataDir        string            // must not exist, or be empty
	Name           string            // this member, in InitialCluster
	InitialCluster map[string]string // name → peer address (host:port), every member of the new cluster
	ClusterToken   string            // the new cluster's token: use a fresh one
}

// RestoreDataDir builds the data directory of one member of a new cluster
// holding a backup's keyspace, as etcdutl snapshot restore does for etcd.
// Run it for every member with the same backup, InitialCluster and token,
// then start each with ballot serve and the same flags: they come up with
// every key, revision and lease of the backup.
//
// The directory holds what the node would have written itself: a snapshot
// file (snap/) at index I, the backup's applied index, whose data is the
// node's snapshot header (an empty session table and the members' peer
// addresses) followed by the kv snapshot, and a WAL (wal/) for this member
// and cluster that records the snapshot, with the membership (every
// InitialCluster member a voter) and HardState {epoch 1, commit I}. The
// backup's member attributes and alarms belong to the old cluster and are
// dropped.
func RestoreDataDir(ctx context.Context, cfg RestoreConfig) (*BackupInfo, error) {
	st, info, err := ReadBackup(cfg.Backup)
	if err != nil {
		return nil, err
	}
	if cfg.ClusterToken == "" {
		cfg.ClusterToken = "ballot-cluster"
	}
	self, ok := cfg.InitialCluster[cfg.Name]
	if !ok {
		return nil, fmt.Errorf("server: restore: --initial-cluster must include this member (%q)", cfg.Name)
	}
	if names, err := os.ReadDir(cfg.DataDir); err == nil && len(names) > 0 {
		return nil, fmt.Errorf("server: restore: data dir %s exists and is not empty", cfg.DataDir)
	}
	for _, prefix := range []string{memberPrefix, alarmPrefix} {
		for _, k := range st.MetaKeys(prefix) {
			st.SetMeta(k, nil)
		}
	}
	book := map[consensus.NodeID]string{}
	for _, addr := range cfg.InitialCluster {
		id := consensus.NodeID(MemberIDFor(cfg.ClusterToken, addr))
		if _, dup := book[id]; dup {
			return nil, fmt.Errorf("server: restore: peer address %s is named twice in --initial-cluster", addr)
		}
		book[id] = addr
	}
	if err := seedDataDir(ctx, st, cfg.DataDir, ClusterIDFor(cfg.ClusterToken), MemberIDFor(cfg.ClusterToken, self),
		book, max(info.AppliedIndex, 1)); err != nil {
		return nil, fmt.Errorf("server: restore: %w", err)
	}
	return info, nil
}

// seedDataDir writes a member's data directory holding st as a snapshot
// at index, with every member of book a voter (see RestoreDataDir).
func seedDataDir(ctx context.Context, st *kv.Store, dir string, clusterID, memberID uint64,
	book map[consensus.NodeID]string, index uint64) error {
	if names, err := os.ReadDir(dir); err == nil && len(names) > 0 {
		return fmt.Errorf("data dir %s exists and is not empty", dir)
	}
	var kvSnap bytes.Buffer
	if err := st.Snapshot(&kvSnap); err != nil {
		return err
	}
	data := nodeSnapshotHeader(book)
	data = append(data, kvSnap.Bytes()...)
	meta := consensus.SnapshotMeta{Index: index, Epoch: 1, ConfState: consensus.ConfState{Voters: sortedIDs(book)}}
	fsys := vfs.Default
	if err := fsys.MkdirAll(dir); err != nil {
		return err
	}
	snaps, err := snap.Open(fsys, filepath.Join(dir, "snap"))
	if err != nil {
		return err
	}
	if err := snaps.Save(meta, data); err != nil {
		return err
	}
	w, _, err := wal.Open(fsys, filepath.Join(dir, "wal"), wal.Options{SegmentBytes: restoreSegmentBytes,
		Meta: wal.Metadata{ClusterID: clusterID, NodeID: memberID}})
	if err != nil {
		return err
	}
	err = w.Save(ctx, wal.Batch{Snapshot: &meta, HardState: consensus.HardState{Epoch: 1, Commit: index}})
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

// restoreSegmentBytes is the size of the restored WAL's one segment, which
// holds a single record: small, so the member's first start reads little;
// the node appends to it and rolls to segments of its own size as usual.
const restoreSegmentBytes = 64 << 10

// nodeSnapshotHeader is the node runtime's header of its snapshot data
// (node/envelope.go, encodeSnapshotHeader): magic "BNS1", the session
// table (empty here: a new cluster has seen no proposals) and the address
// book, as uvarints. The restore test starts servers on the result, so a
// change of that format fails it.
func nodeSnapshotHeader(book map[consensus.NodeID]string) []byte {
	b := []byte("BNS1")
	b = binary.AppendUvarint(b, 0)
	ids := slices.Sorted(maps.Keys(book))
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = binary.AppendUvarint(b, uint64(id))
		b = binary.AppendUvarint(b, uint64(len(book[id])))
		b = append(b, book[id]...)
	}
	return b
}
