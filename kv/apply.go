package kv

import (
	"encoding/binary"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Apply decodes cmd (an etcdserverpb.InternalRaftRequest, see
// EncodeRequest), applies it and returns its result encoded by
// EncodeResult. It handles Put, DeleteRange, Txn, Compaction, LeaseGrant,
// LeaseRevoke, LeaseCheckpoint and Range; any other request gets a
// codes.Unimplemented error result. A command larger than MaxRequestBytes
// gets ErrGRPCRequestTooLarge. Apply implements node.StateMachine.
func (s *Store) Apply(index uint64, cmd []byte) []byte {
	s.mu.Lock()
	s.applied = index
	s.mu.Unlock()
	resp, err := s.apply(cmd)
	return EncodeResult(resp, err)
}

func (s *Store) apply(cmd []byte) (proto.Message, error) {
	if len(cmd) > s.opts.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	var r pb.InternalRaftRequest
	if err := proto.Unmarshal(cmd, &r); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "kv: cannot decode request: %v", err)
	}
	if s.hook != nil {
		if resp, err, handled := s.hook(&r); handled {
			return resp, err
		}
	}
	switch {
	case r.Put != nil:
		return s.Put(r.Put)
	case r.DeleteRange != nil:
		return s.DeleteRange(r.DeleteRange)
	case r.Txn != nil:
		return s.Txn(r.Txn)
	case r.Compaction != nil:
		return s.Compact(r.Compaction)
	case r.LeaseGrant != nil:
		return s.LeaseGrant(r.LeaseGrant)
	case r.LeaseRevoke != nil:
		return s.LeaseRevoke(r.LeaseRevoke)
	case r.LeaseCheckpoint != nil:
		return s.LeaseCheckpoint(r.LeaseCheckpoint)
	case r.Range != nil:
		return s.Range(r.Range)
	}
	return nil, status.Error(codes.Unimplemented, "kv: unsupported request")
}

// EncodeRequest encodes a request for Apply (deterministic proto
// encoding).
func EncodeRequest(r *pb.InternalRaftRequest) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("kv: encode request: %w", err)
	}
	return b, nil
}

// Result is a decoded Apply result: exactly one of Resp and Err is set
// (both nil for an empty result).
type Result struct {
	Resp proto.Message // *pb.PutResponse, *pb.TxnResponse, ...
	Err  error
}

// Result encoding: byte 0 is the format version (1), byte 1 the kind, the
// rest the payload. For kindError the payload is the gRPC code (uvarint)
// followed by the message; otherwise it is the proto encoding of the
// response.
const resultVersion = 1

const (
	kindEmpty byte = iota
	kindError
	kindRange
	kindPut
	kindDeleteRange
	kindTxn
	kindCompaction
	kindLeaseGrant
	kindLeaseRevoke
	kindLeaseCheckpoint
	kindAlarm // from an ApplyHook (package server's alarms)
)

func kindOf(m proto.Message) (byte, bool) {
	switch m.(type) {
	case *pb.RangeResponse:
		return kindRange, true
	case *pb.PutResponse:
		return kindPut, true
	case *pb.DeleteRangeResponse:
		return kindDeleteRange, true
	case *pb.TxnResponse:
		return kindTxn, true
	case *pb.CompactionResponse:
		return kindCompaction, true
	case *pb.LeaseGrantResponse:
		return kindLeaseGrant, true
	case *pb.LeaseRevokeResponse:
		return kindLeaseRevoke, true
	case *pb.LeaseCheckpointResponse:
		return kindLeaseCheckpoint, true
	case *pb.AlarmResponse:
		return kindAlarm, true
	}
	return 0, false
}

func newOfKind(k byte) proto.Message {
	switch k {
	case kindRange:
		return &pb.RangeResponse{}
	case kindPut:
		return &pb.PutResponse{}
	case kindDeleteRange:
		return &pb.DeleteRangeResponse{}
	case kindTxn:
		return &pb.TxnResponse{}
	case kindCompaction:
		return &pb.CompactionResponse{}
	case kindLeaseGrant:
		return &pb.LeaseGrantResponse{}
	case kindLeaseRevoke:
		return &pb.LeaseRevokeResponse{}
	case kindLeaseCheckpoint:
		return &pb.LeaseCheckpointResponse{}
	case kindAlarm:
		return &pb.AlarmResponse{}
	}
	return nil
}

// EncodeResult encodes a response or an error for the log's result
// channel. An error carrying a gRPC status (such as the rpctypes errors,
// also when wrapped) keeps that status's code and message, so that
// DecodeResult gives an error equal (errors.Is) to the original; any other
// error becomes codes.Unknown with its text. When err is set resp is
// ignored.
func EncodeResult(resp proto.Message, err error) []byte {
	if err != nil {
		return encodeError(err)
	}
	if resp == nil {
		return []byte{resultVersion, kindEmpty}
	}
	k, ok := kindOf(resp)
	if !ok {
		return encodeError(status.Errorf(codes.Internal, "kv: cannot encode a result of type %T", resp))
	}
	b, merr := proto.MarshalOptions{Deterministic: true}.Marshal(resp)
	if merr != nil {
		return encodeError(status.Errorf(codes.Internal, "kv: cannot encode result: %v", merr))
	}
	return append([]byte{resultVersion, k}, b...)
}

type grpcStatus interface{ GRPCStatus() *status.Status }

func encodeError(err error) []byte {
	code, msg := codes.Unknown, err.Error()
	var gs grpcStatus
	if errors.As(err, &gs) {
		if st := gs.GRPCStatus(); st != nil {
			code, msg = st.Code(), st.Message()
		}
	}
	if code == codes.OK { // an error must not decode as success
		code = codes.Unknown
	}
	out := []byte{resultVersion, kindError}
	out = binary.AppendUvarint(out, uint64(code))
	return append(out, msg...)
}

// knownErrors are returned by DecodeResult as the identical rpctypes value.
var knownErrors = []error{
	rpctypes.ErrGRPCEmptyKey,
	rpctypes.ErrGRPCKeyNotFound,
	rpctypes.ErrGRPCValueProvided,
	rpctypes.ErrGRPCLeaseProvided,
	rpctypes.ErrGRPCTooManyOps,
	rpctypes.ErrGRPCDuplicateKey,
	rpctypes.ErrGRPCInvalidSortOption,
	rpctypes.ErrGRPCCompacted,
	rpctypes.ErrGRPCFutureRev,
	rpctypes.ErrGRPCNoSpace,
	rpctypes.ErrGRPCLeaseNotFound,
	rpctypes.ErrGRPCLeaseExist,
	rpctypes.ErrGRPCLeaseTTLTooLarge,
	rpctypes.ErrGRPCRequestTooLarge,
}

// DecodeResult decodes what Apply returned. An error result is re-created
// with the same gRPC code and message, so errors.Is against the rpctypes
// value holds (for the rpctypes errors kv returns it is that very value)
// and status.Code/Convert give the original code and message. A malformed
// result gives a non-nil second return value.
func DecodeResult(b []byte) (Result, error) {
	if len(b) < 2 {
		return Result{}, errors.New("kv: result too short")
	}
	if b[0] != resultVersion {
		return Result{}, fmt.Errorf("kv: unknown result format version %d", b[0])
	}
	switch k := b[1]; k {
	case kindEmpty:
		return Result{}, nil
	case kindError:
		code, n := binary.Uvarint(b[2:])
		if n <= 0 {
			return Result{}, errors.New("kv: malformed error result")
		}
		msg := string(b[2+n:])
		for _, e := range knownErrors {
			st := status.Convert(e)
			if uint64(st.Code()) == code && st.Message() == msg {
				return Result{Err: e}, nil
			}
		}
		return Result{Err: status.Error(codes.Code(code), msg)}, nil
	default:
		m := newOfKind(k)
		if m == nil {
			return Result{}, fmt.Errorf("kv: unknown result kind %d", k)
		}
		if err := proto.Unmarshal(b[2:], m); err != nil {
			return Result{}, fmt.Errorf("kv: decode result: %w", err)
		}
		return Result{Resp: m}, nil
	}
}
