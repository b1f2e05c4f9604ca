package kv

import (
	"fmt"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func TestRevisionArithmetic(t *testing.T) {
	s := New()
	if s.Rev() != 1 || s.CompactRev() != -1 {
		t.Fatalf("new store: rev %d compact %d, want 1 -1", s.Rev(), s.CompactRev())
	}
	type kvWant struct{ create, mod, ver int64 }
	steps := []struct {
		name    string
		do      func() int64 // returns the response header revision
		wantRev int64
		key     string
		want    *kvWant // nil: key absent
	}{
		{"first put", func() int64 { return mustPut(t, s, "a", "1").Header.Revision }, 2, "a", &kvWant{2, 2, 1}},
		{"second put", func() int64 { return mustPut(t, s, "a", "2").Header.Revision }, 3, "a", &kvWant{2, 3, 2}},
		{"other key", func() int64 { return mustPut(t, s, "b", "1").Header.Revision }, 4, "a", &kvWant{2, 3, 2}},
		{"delete", func() int64 {
			r := mustDel(t, s, "a", "")
			if r.Deleted != 1 {
				t.Fatalf("deleted %d", r.Deleted)
			}
			return r.Header.Revision
		}, 5, "a", nil},
		{"delete absent is a no-op", func() int64 {
			r := mustDel(t, s, "a", "")
			if r.Deleted != 0 {
				t.Fatalf("deleted %d", r.Deleted)
			}
			return r.Header.Revision
		}, 5, "a", nil},
		{"empty range delete is a no-op", func() int64 { return mustDel(t, s, "x", "z").Header.Revision }, 5, "a", nil},
		{"put after delete resets version", func() int64 { return mustPut(t, s, "a", "3").Header.Revision }, 6, "a", &kvWant{6, 6, 1}},
		{"put again", func() int64 { return mustPut(t, s, "a", "4").Header.Revision }, 7, "a", &kvWant{6, 7, 2}},
		{"range delete of two keys is one revision", func() int64 {
			r := mustDel(t, s, "a", "c")
			if r.Deleted != 2 {
				t.Fatalf("deleted %d", r.Deleted)
			}
			return r.Header.Revision
		}, 8, "b", nil},
	}
	for _, st := range steps {
		hdr := st.do()
		if hdr != st.wantRev || s.Rev() != st.wantRev {
			t.Fatalf("%s: header %d rev %d, want %d", st.name, hdr, s.Rev(), st.wantRev)
		}
		kv := getAt(t, s, st.key, 0)
		switch {
		case st.want == nil && kv != nil:
			t.Fatalf("%s: %q = %v, want absent", st.name, st.key, kv)
		case st.want != nil && kv == nil:
			t.Fatalf("%s: %q absent", st.name, st.key)
		case st.want != nil && (kv.CreateRevision != st.want.create || kv.ModRevision != st.want.mod || kv.Version != st.want.ver):
			t.Fatalf("%s: %q = create %d mod %d ver %d, want %+v", st.name, st.key, kv.CreateRevision, kv.ModRevision, kv.Version, *st.want)
		}
	}
}

func TestRangeAtOldRevision(t *testing.T) {
	s := New()
	mustPut(t, s, "a", "v1") // 2
	mustPut(t, s, "b", "v1") // 3
	mustPut(t, s, "a", "v2") // 4
	mustDel(t, s, "b", "")   // 5
	mustPut(t, s, "c", "v1") // 6
	cases := []struct {
		rev  int64
		keys []string
		vals []string
	}{
		{1, []string{}, nil},
		{2, []string{"a"}, []string{"v1"}},
		{3, []string{"a", "b"}, []string{"v1", "v1"}},
		{4, []string{"a", "b"}, []string{"v2", "v1"}},
		{5, []string{"a"}, []string{"v2"}},
		{6, []string{"a", "c"}, []string{"v2", "v1"}},
		{0, []string{"a", "c"}, []string{"v2", "v1"}},
	}
	for _, c := range cases {
		r := mustRange(t, s, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, Revision: c.rev})
		if got := keysOf(r.Kvs); !slices.Equal(got, c.keys) {
			t.Fatalf("rev %d: keys %v, want %v", c.rev, got, c.keys)
		}
		for i, kv := range r.Kvs {
			if string(kv.Value) != c.vals[i] {
				t.Fatalf("rev %d: %s=%s, want %s", c.rev, kv.Key, kv.Value, c.vals[i])
			}
		}
		if r.Header.Revision != 6 {
			t.Fatalf("rev %d: header revision %d, want current 6", c.rev, r.Header.Revision)
		}
		if r.Count != int64(len(c.keys)) {
			t.Fatalf("rev %d: count %d", c.rev, r.Count)
		}
	}
	_, err := s.Range(&pb.RangeRequest{Key: []byte("a"), Revision: 7})
	wantErr(t, err, rpctypes.ErrGRPCFutureRev)
}

func TestRangeOptions(t *testing.T) {
	s := New()
	// keys a..e; values chosen so value order differs from key order.
	mustPut(t, s, "c", "1") // 2
	mustPut(t, s, "a", "4") // 3
	mustPut(t, s, "e", "2") // 4
	mustPut(t, s, "b", "5") // 5
	mustPut(t, s, "d", "3") // 6
	mustPut(t, s, "a", "0") // 7: a version 2, mod 7
	mustPut(t, s, "a", "9") // 8: a version 3, mod 8
	cases := []struct {
		name  string
		req   *pb.RangeRequest
		keys  []string
		count int64
		more  bool
	}{
		{"single key", &pb.RangeRequest{Key: []byte("b")}, []string{"b"}, 1, false},
		{"absent key", &pb.RangeRequest{Key: []byte("bb")}, []string{}, 0, false},
		{"half open", &pb.RangeRequest{Key: []byte("b"), RangeEnd: []byte("d")}, []string{"b", "c"}, 2, false},
		{"from key", &pb.RangeRequest{Key: []byte("c"), RangeEnd: []byte{0}}, []string{"c", "d", "e"}, 3, false},
		{"all", &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}, []string{"a", "b", "c", "d", "e"}, 5, false},
		{"end before key", &pb.RangeRequest{Key: []byte("d"), RangeEnd: []byte("b")}, []string{}, 0, false},
		{"limit", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), Limit: 2}, []string{"a", "b"}, 5, true},
		{"limit exact", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), Limit: 5}, []string{"a", "b", "c", "d", "e"}, 5, false},
		{"negative limit is none", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), Limit: -1}, []string{"a", "b", "c", "d", "e"}, 5, false},
		{"count only", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), CountOnly: true}, []string{}, 5, false},
		{"count only with limit", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), CountOnly: true, Limit: 1}, []string{}, 5, false},
		{"sort key descend", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortOrder: pb.RangeRequest_DESCEND}, []string{"e", "d", "c", "b", "a"}, 5, false},
		{"sort key ascend", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortOrder: pb.RangeRequest_ASCEND}, []string{"a", "b", "c", "d", "e"}, 5, false},
		{"sort value, order none means ascend", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortTarget: pb.RangeRequest_VALUE}, []string{"c", "e", "d", "b", "a"}, 5, false},
		{"sort value descend", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortTarget: pb.RangeRequest_VALUE, SortOrder: pb.RangeRequest_DESCEND}, []string{"a", "b", "d", "e", "c"}, 5, false},
		{"sort create ascend", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortTarget: pb.RangeRequest_CREATE, SortOrder: pb.RangeRequest_ASCEND}, []string{"c", "a", "e", "b", "d"}, 5, false},
		{"sort mod descend", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortTarget: pb.RangeRequest_MOD, SortOrder: pb.RangeRequest_DESCEND}, []string{"a", "d", "b", "e", "c"}, 5, false},
		{"sort version descend, ties in key order", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortTarget: pb.RangeRequest_VERSION, SortOrder: pb.RangeRequest_DESCEND}, []string{"a", "b", "c", "d", "e"}, 5, false},
		{"sort then limit", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortTarget: pb.RangeRequest_VALUE, SortOrder: pb.RangeRequest_DESCEND, Limit: 2}, []string{"a", "b"}, 5, true},
		{"sort create, order none, limit: whole range sorted", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), SortTarget: pb.RangeRequest_CREATE, Limit: 2}, []string{"c", "a"}, 5, true},
		{"min mod (count before filters)", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), MinModRevision: 5}, []string{"a", "b", "d"}, 5, false},
		{"max mod", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), MaxModRevision: 4}, []string{"c", "e"}, 5, false},
		{"min create", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), MinCreateRevision: 4}, []string{"b", "d", "e"}, 5, false},
		{"max create", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), MaxCreateRevision: 3}, []string{"a", "c"}, 5, false},
		{"filter then limit", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), MinCreateRevision: 3, Limit: 2}, []string{"a", "b"}, 5, true},
		{"filter with limit, no more", &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("z"), MinCreateRevision: 5, Limit: 2}, []string{"b", "d"}, 5, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := mustRange(t, s, c.req)
			if got := keysOf(r.Kvs); !slices.Equal(got, c.keys) {
				t.Fatalf("keys %v, want %v", got, c.keys)
			}
			if r.Count != c.count || r.More != c.more {
				t.Fatalf("count %d more %v, want %d %v", r.Count, r.More, c.count, c.more)
			}
			if r.Header.Revision != 8 {
				t.Fatalf("header revision %d", r.Header.Revision)
			}
		})
	}
	r := mustRange(t, s, &pb.RangeRequest{Key: []byte("a"), KeysOnly: true})
	if len(r.Kvs) != 1 || r.Kvs[0].Value != nil || r.Kvs[0].Version != 3 || r.Kvs[0].ModRevision != 8 || r.Kvs[0].CreateRevision != 3 {
		t.Fatalf("keys only: %v", r.Kvs)
	}
	if v := getAt(t, s, "a", 0); string(v.Value) != "9" {
		t.Fatalf("keys only changed the stored value: %v", v)
	}
}

func TestPutOptions(t *testing.T) {
	s := New()
	if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 7, TTL: 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 8, TTL: 10}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("v1"), PrevKv: true, Lease: 7})
	if err != nil || r.PrevKv != nil || r.Header.Revision != 2 {
		t.Fatalf("first put: %v %v", r, err)
	}
	r, err = s.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("v2"), PrevKv: true, IgnoreLease: true})
	if err != nil {
		t.Fatal(err)
	}
	protoEqual(t, r.PrevKv, &mvccpb.KeyValue{Key: []byte("k"), Value: []byte("v1"), CreateRevision: 2, ModRevision: 2, Version: 1, Lease: 7})
	if kv := getAt(t, s, "k", 0); kv.Lease != 7 || string(kv.Value) != "v2" {
		t.Fatalf("ignore_lease: %v", kv)
	}
	// ignore_value keeps the value, and a new lease moves the key.
	if _, err := s.Put(&pb.PutRequest{Key: []byte("k"), IgnoreValue: true, Lease: 8}); err != nil {
		t.Fatal(err)
	}
	if kv := getAt(t, s, "k", 0); kv.Lease != 8 || string(kv.Value) != "v2" || kv.Version != 3 {
		t.Fatalf("ignore_value: %v", kv)
	}
	if _, keys, _ := s.LeaseTimeToLive(7, true); len(keys) != 0 {
		t.Fatalf("lease 7 keys %q", keys)
	}
	if _, keys, _ := s.LeaseTimeToLive(8, true); len(keys) != 1 || string(keys[0]) != "k" {
		t.Fatalf("lease 8 keys %q", keys)
	}
	// A put without lease detaches.
	mustPut(t, s, "k", "v3")
	if _, keys, _ := s.LeaseTimeToLive(8, true); len(keys) != 0 {
		t.Fatalf("lease 8 keys after detach %q", keys)
	}
	// Empty value is allowed.
	mustPut(t, s, "empty", "")
	if kv := getAt(t, s, "empty", 0); kv == nil || len(kv.Value) != 0 {
		t.Fatalf("empty value: %v", kv)
	}
}

func TestErrors(t *testing.T) {
	newStore := func() *Store {
		s := New()
		mustPut(t, s, "k", "v") // 2
		mustPut(t, s, "k", "w") // 3
		mustPut(t, s, "k", "x") // 4
		if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 1, TTL: 5}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Compact(&pb.CompactionRequest{Revision: 3}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	many := func(n int) []*pb.RequestOp {
		ops := make([]*pb.RequestOp, n)
		for i := range ops {
			ops[i] = opGet(fmt.Sprint("k", i), "")
		}
		return ops
	}
	cases := []struct {
		name string
		do   func(s *Store) error
		want error
	}{
		{"range empty key", func(s *Store) error { _, err := s.Range(&pb.RangeRequest{}); return err }, rpctypes.ErrGRPCEmptyKey},
		{"range future", func(s *Store) error {
			_, err := s.Range(&pb.RangeRequest{Key: []byte("k"), Revision: 5})
			return err
		}, rpctypes.ErrGRPCFutureRev},
		{"range compacted", func(s *Store) error {
			_, err := s.Range(&pb.RangeRequest{Key: []byte("k"), Revision: 2})
			return err
		}, rpctypes.ErrGRPCCompacted},
		{"range bad sort order", func(s *Store) error {
			_, err := s.Range(&pb.RangeRequest{Key: []byte("k"), SortOrder: 9})
			return err
		}, rpctypes.ErrGRPCInvalidSortOption},
		{"range bad sort target", func(s *Store) error {
			_, err := s.Range(&pb.RangeRequest{Key: []byte("k"), SortTarget: 9})
			return err
		}, rpctypes.ErrGRPCInvalidSortOption},
		{"put empty key", func(s *Store) error { _, err := s.Put(&pb.PutRequest{Value: []byte("v")}); return err }, rpctypes.ErrGRPCEmptyKey},
		{"put ignore_value with value", func(s *Store) error {
			_, err := s.Put(&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), IgnoreValue: true})
			return err
		}, rpctypes.ErrGRPCValueProvided},
		{"put ignore_lease with lease", func(s *Store) error {
			_, err := s.Put(&pb.PutRequest{Key: []byte("k"), Lease: 1, IgnoreLease: true})
			return err
		}, rpctypes.ErrGRPCLeaseProvided},
		{"put ignore_value absent key", func(s *Store) error {
			_, err := s.Put(&pb.PutRequest{Key: []byte("nope"), IgnoreValue: true})
			return err
		}, rpctypes.ErrGRPCKeyNotFound},
		{"put ignore_lease absent key", func(s *Store) error {
			_, err := s.Put(&pb.PutRequest{Key: []byte("nope"), IgnoreLease: true})
			return err
		}, rpctypes.ErrGRPCKeyNotFound},
		{"put missing lease", func(s *Store) error {
			_, err := s.Put(&pb.PutRequest{Key: []byte("k"), Lease: 99})
			return err
		}, rpctypes.ErrGRPCLeaseNotFound},
		{"delete empty key", func(s *Store) error { _, err := s.DeleteRange(&pb.DeleteRangeRequest{}); return err }, rpctypes.ErrGRPCEmptyKey},
		{"compact again", func(s *Store) error { _, err := s.Compact(&pb.CompactionRequest{Revision: 3}); return err }, rpctypes.ErrGRPCCompacted},
		{"compact older", func(s *Store) error { _, err := s.Compact(&pb.CompactionRequest{Revision: 2}); return err }, rpctypes.ErrGRPCCompacted},
		{"compact future", func(s *Store) error { _, err := s.Compact(&pb.CompactionRequest{Revision: 5}); return err }, rpctypes.ErrGRPCFutureRev},
		{"lease grant id 0", func(s *Store) error { _, err := s.LeaseGrant(&pb.LeaseGrantRequest{TTL: 5}); return err }, rpctypes.ErrGRPCLeaseNotFound},
		{"lease grant exists", func(s *Store) error { _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 1, TTL: 5}); return err }, rpctypes.ErrGRPCLeaseExist},
		{"lease grant ttl too large", func(s *Store) error {
			_, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 2, TTL: MaxLeaseTTL + 1})
			return err
		}, rpctypes.ErrGRPCLeaseTTLTooLarge},
		{"lease revoke missing", func(s *Store) error { _, err := s.LeaseRevoke(&pb.LeaseRevokeRequest{ID: 2}); return err }, rpctypes.ErrGRPCLeaseNotFound},
		{"lease ttl missing", func(s *Store) error { _, _, err := s.LeaseTimeToLive(2, true); return err }, rpctypes.ErrGRPCLeaseNotFound},
		{"txn too many compares", func(s *Store) error {
			cs := make([]*pb.Compare, DefaultMaxTxnOps+1)
			for i := range cs {
				cs[i] = cmpVersion("k", pb.Compare_EQUAL, 0)
			}
			_, err := s.Txn(&pb.TxnRequest{Compare: cs})
			return err
		}, rpctypes.ErrGRPCTooManyOps},
		{"txn too many success ops", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: many(DefaultMaxTxnOps + 1)})
			return err
		}, rpctypes.ErrGRPCTooManyOps},
		{"txn too many failure ops", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Failure: many(DefaultMaxTxnOps + 1)})
			return err
		}, rpctypes.ErrGRPCTooManyOps},
		{"txn nested over budget", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: append(many(100), opTxn(&pb.TxnRequest{Success: many(29)}))})
			return err
		}, rpctypes.ErrGRPCTooManyOps},
		{"txn compare empty key", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Compare: []*pb.Compare{{Target: pb.Compare_VERSION}}})
			return err
		}, rpctypes.ErrGRPCEmptyKey},
		{"txn empty op", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{{}}})
			return err
		}, rpctypes.ErrGRPCKeyNotFound},
		{"txn put twice", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"), opPut("a", "2")}})
			return err
		}, rpctypes.ErrGRPCDuplicateKey},
		{"txn put twice in failure", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Failure: []*pb.RequestOp{opPut("a", "1"), opPut("a", "2")}})
			return err
		}, rpctypes.ErrGRPCDuplicateKey},
		{"txn put and delete", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("b", "1"), opDel("a", "c")}})
			return err
		}, rpctypes.ErrGRPCDuplicateKey},
		{"txn nested put vs outer put", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"), opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opPut("a", "2")}})}})
			return err
		}, rpctypes.ErrGRPCDuplicateKey},
		{"txn nested put vs outer delete", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", ""), opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "2")}})}})
			return err
		}, rpctypes.ErrGRPCDuplicateKey},
		{"txn range future", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k"), Revision: 5}}}}})
			return err
		}, rpctypes.ErrGRPCFutureRev},
		{"txn range compacted", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k"), Revision: 2}}}}})
			return err
		}, rpctypes.ErrGRPCCompacted},
		{"txn put missing lease", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("k"), Lease: 42}}}}})
			return err
		}, rpctypes.ErrGRPCLeaseNotFound},
		{"txn ignore_value absent", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("zz"), IgnoreValue: true}}}}})
			return err
		}, rpctypes.ErrGRPCKeyNotFound},
		{"txn nested range future on taken path", func(s *Store) error {
			_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{
				Compare: []*pb.Compare{cmpValue("k", pb.Compare_EQUAL, "nope")},
				Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("k"), Revision: 99}}}},
			})}})
			return err
		}, rpctypes.ErrGRPCFutureRev},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newStore()
			before := snapshotBytes(t, s)
			err := c.do(s)
			wantErr(t, err, c.want)
			if after := snapshotBytes(t, s); string(before) != string(after) {
				t.Fatalf("a failed request changed the state")
			}
		})
	}
}

func TestCompaction(t *testing.T) {
	s := New()
	mustPut(t, s, "a", "a1") // 2
	mustPut(t, s, "b", "b1") // 3
	mustPut(t, s, "a", "a2") // 4
	mustDel(t, s, "b", "")   // 5
	mustPut(t, s, "c", "c1") // 6
	mustPut(t, s, "a", "a3") // 7
	mustDel(t, s, "c", "")   // 8
	mustPut(t, s, "d", "d1") // 9
	// state as of each revision, before compaction
	states := map[int64][]string{}
	for rev := int64(1); rev <= 9; rev++ {
		r := mustRange(t, s, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev})
		var kv []string
		for _, x := range r.Kvs {
			kv = append(kv, fmt.Sprintf("%s=%s@%d/%d/%d", x.Key, x.Value, x.CreateRevision, x.ModRevision, x.Version))
		}
		states[rev] = kv
	}
	if _, err := s.Compact(&pb.CompactionRequest{Revision: 6}); err != nil {
		t.Fatal(err)
	}
	if s.CompactRev() != 6 || s.Rev() != 9 {
		t.Fatalf("compact %d rev %d", s.CompactRev(), s.Rev())
	}
	for rev := int64(1); rev <= 9; rev++ {
		r, err := s.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev})
		if rev < 6 {
			wantErr(t, err, rpctypes.ErrGRPCCompacted)
			continue
		}
		if err != nil {
			t.Fatalf("rev %d: %v", rev, err)
		}
		var kv []string
		for _, x := range r.Kvs {
			kv = append(kv, fmt.Sprintf("%s=%s@%d/%d/%d", x.Key, x.Value, x.CreateRevision, x.ModRevision, x.Version))
		}
		if !slices.Equal(kv, states[rev]) {
			t.Fatalf("rev %d after compaction: %v, want %v", rev, kv, states[rev])
		}
	}
	// What is kept: a's latest at or below 6 (a2@4) and a3@7; b is gone
	// (its latest at or below 6 is a tombstone); c1@6 and its tombstone.
	var kept []string
	s.mu.RLock()
	s.keys.Scan(func(h *keyHist) bool {
		for _, v := range h.vers {
			kept = append(kept, fmt.Sprintf("%s@%d/%v", h.key, v.main, v.tomb))
		}
		return true
	})
	revs := s.revs.Len()
	s.mu.RUnlock()
	want := []string{"a@4/false", "a@7/false", "c@6/false", "c@8/true", "d@9/false"}
	if !slices.Equal(kept, want) {
		t.Fatalf("kept %v, want %v", kept, want)
	}
	if revs != len(want) {
		t.Fatalf("revision index has %d entries, want %d", revs, len(want))
	}
	// Compacting at a tombstone's revision: c's tombstone at 8 is kept
	// (no Range can see it) until a later compaction drops it.
	if _, err := s.Compact(&pb.CompactionRequest{Revision: 8}); err != nil {
		t.Fatal(err)
	}
	if kv := getAt(t, s, "c", 8); kv != nil {
		t.Fatalf("c at 8: %v", kv)
	}
	if _, err := s.Compact(&pb.CompactionRequest{Revision: 9}); err != nil {
		t.Fatal(err)
	}
	s.mu.RLock()
	_, hasC := s.keys.Get(&keyHist{key: []byte("c")})
	s.mu.RUnlock()
	if hasC {
		t.Fatal("c still in history after compaction past its tombstone")
	}
	if r := mustRange(t, s, &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}); !slices.Equal(keysOf(r.Kvs), []string{"a", "d"}) {
		t.Fatalf("current keys %v", keysOf(r.Kvs))
	}
	// Compaction leaves the revision alone and later writes go on.
	if r := mustPut(t, s, "a", "a4"); r.Header.Revision != 10 {
		t.Fatalf("put after compaction: rev %d", r.Header.Revision)
	}
	if kv := getAt(t, s, "a", 0); kv.Version != 4 || kv.CreateRevision != 2 {
		t.Fatalf("a after compaction: %v", kv)
	}
}

func TestCompactResponse(t *testing.T) {
	s := New()
	mustPut(t, s, "a", "1")
	r, err := s.Compact(&pb.CompactionRequest{Revision: 1})
	if err != nil || r.Header.Revision != 2 {
		t.Fatalf("%v %v", r, err)
	}
	_, err = s.Compact(&pb.CompactionRequest{Revision: 0})
	wantErr(t, err, rpctypes.ErrGRPCCompacted)
}
