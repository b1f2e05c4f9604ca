package kv

import (
	"bytes"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func TestTxnSubRevisions(t *testing.T) {
	s := New()
	mustPut(t, s, "a", "0") // 2
	var got []*mvccpb.Event
	var gotRev int64
	s.SetObserver(func(rev int64, evs []*mvccpb.Event) { gotRev, got = rev, evs })
	r, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{
		opGet("a", ""),
		opPut("b", "1"),
		opGet("b", ""),
		opPut("a", "1"),
		opGet("a", "c"),
		opDel("z", ""),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Succeeded || r.Header.Revision != 3 || s.Rev() != 3 {
		t.Fatalf("succeeded %v rev %d store %d", r.Succeeded, r.Header.Revision, s.Rev())
	}
	rs := r.Responses
	if len(rs) != 6 {
		t.Fatalf("%d responses", len(rs))
	}
	// Reads see the state before, then the txn's own writes; headers follow
	// etcd: a read before any write is at the old revision.
	if g := rs[0].GetResponseRange(); g.Header.Revision != 2 || string(g.Kvs[0].Value) != "0" {
		t.Fatalf("first read %v", g)
	}
	if p := rs[1].GetResponsePut(); p.Header.Revision != 3 {
		t.Fatalf("put header %v", p)
	}
	if g := rs[2].GetResponseRange(); g.Header.Revision != 3 || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "1" || g.Kvs[0].ModRevision != 3 {
		t.Fatalf("read own write %v", g)
	}
	if g := rs[4].GetResponseRange(); !slices.Equal(keysOf(g.Kvs), []string{"a", "b"}) || g.Kvs[0].Version != 2 || string(g.Kvs[0].Value) != "1" {
		t.Fatalf("range after writes %v", g)
	}
	if d := rs[5].GetResponseDeleteRange(); d.Deleted != 0 || d.Header.Revision != 3 {
		t.Fatalf("no-op delete inside a writing txn %v", d)
	}
	// Both writes share main revision 3, in op order.
	if gotRev != 3 || len(got) != 2 || string(got[0].Kv.Key) != "b" || string(got[1].Kv.Key) != "a" {
		t.Fatalf("events rev %d %v", gotRev, got)
	}
	for _, e := range got {
		if e.Kv.ModRevision != 3 {
			t.Fatalf("event %v", e)
		}
	}
	s.mu.RLock()
	var subs []int64
	s.revs.Ascend(revEntry{main: 3}, func(e revEntry) bool { subs = append(subs, e.sub); return true })
	s.mu.RUnlock()
	if !slices.Equal(subs, []int64{0, 1}) {
		t.Fatalf("sub revisions %v", subs)
	}
}

func TestTxnNoWriteDoesNotAdvance(t *testing.T) {
	s := New()
	mustPut(t, s, "a", "1") // 2
	cases := []*pb.TxnRequest{
		{},
		{Success: []*pb.RequestOp{opGet("a", "")}},
		{Success: []*pb.RequestOp{opDel("nope", "")}},
		{Compare: []*pb.Compare{cmpValue("a", pb.Compare_EQUAL, "2")}, Success: []*pb.RequestOp{opPut("a", "3")}},
		{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{Compare: []*pb.Compare{cmpValue("a", pb.Compare_EQUAL, "x")}, Success: []*pb.RequestOp{opPut("b", "1")}})}},
	}
	for i, c := range cases {
		r, err := s.Txn(c)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if r.Header.Revision != 2 || s.Rev() != 2 {
			t.Fatalf("case %d: header %d rev %d", i, r.Header.Revision, s.Rev())
		}
	}
}

func TestTxnCompares(t *testing.T) {
	s := New()
	if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 5, TTL: 60}); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "a", "m")         // 2
	mustPut(t, s, "a", "n")         // 3: a create 2 mod 3 ver 2
	mustPutLease(t, s, "b", "x", 5) // 4
	mustPut(t, s, "c", "y")         // 5
	type cmpCase struct {
		name string
		c    *pb.Compare
		want bool
	}
	C := func(k, end string, target pb.Compare_CompareTarget, res pb.Compare_CompareResult) *pb.Compare {
		return &pb.Compare{Key: []byte(k), RangeEnd: bs(end), Target: target, Result: res}
	}
	with := func(c *pb.Compare, u any) *pb.Compare {
		switch v := u.(type) {
		case string:
			c.TargetUnion = &pb.Compare_Value{Value: []byte(v)}
		case int64:
			switch c.Target {
			case pb.Compare_VERSION:
				c.TargetUnion = &pb.Compare_Version{Version: v}
			case pb.Compare_CREATE:
				c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: v}
			case pb.Compare_MOD:
				c.TargetUnion = &pb.Compare_ModRevision{ModRevision: v}
			case pb.Compare_LEASE:
				c.TargetUnion = &pb.Compare_Lease{Lease: v}
			}
		}
		return c
	}
	cases := []cmpCase{
		{"value equal", with(C("a", "", pb.Compare_VALUE, pb.Compare_EQUAL), "n"), true},
		{"value equal false", with(C("a", "", pb.Compare_VALUE, pb.Compare_EQUAL), "m"), false},
		{"value greater", with(C("a", "", pb.Compare_VALUE, pb.Compare_GREATER), "m"), true},
		{"value less", with(C("a", "", pb.Compare_VALUE, pb.Compare_LESS), "m"), false},
		{"value not equal", with(C("a", "", pb.Compare_VALUE, pb.Compare_NOT_EQUAL), "m"), true},
		{"value of missing key always fails", with(C("zz", "", pb.Compare_VALUE, pb.Compare_NOT_EQUAL), "m"), false},
		{"version", with(C("a", "", pb.Compare_VERSION, pb.Compare_EQUAL), int64(2)), true},
		{"version of missing key is 0", with(C("zz", "", pb.Compare_VERSION, pb.Compare_EQUAL), int64(0)), true},
		{"create", with(C("a", "", pb.Compare_CREATE, pb.Compare_EQUAL), int64(2)), true},
		{"create of missing key is 0", with(C("zz", "", pb.Compare_CREATE, pb.Compare_LESS), int64(1)), true},
		{"mod", with(C("a", "", pb.Compare_MOD, pb.Compare_GREATER), int64(2)), true},
		{"mod less", with(C("a", "", pb.Compare_MOD, pb.Compare_LESS), int64(3)), false},
		{"lease", with(C("b", "", pb.Compare_LEASE, pb.Compare_EQUAL), int64(5)), true},
		{"lease none", with(C("a", "", pb.Compare_LEASE, pb.Compare_EQUAL), int64(0)), true},
		{"range all must hold", with(C("a", "d", pb.Compare_MOD, pb.Compare_GREATER), int64(2)), true},
		{"range one fails", with(C("a", "d", pb.Compare_MOD, pb.Compare_GREATER), int64(3)), false},
		{"range from key", with(C("b", "\x00", pb.Compare_VERSION, pb.Compare_EQUAL), int64(1)), true},
		{"empty range compares against zero kv", with(C("x", "y", pb.Compare_VERSION, pb.Compare_EQUAL), int64(0)), true},
		{"target without value compares with zero", C("a", "", pb.Compare_VERSION, pb.Compare_GREATER), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := s.Txn(&pb.TxnRequest{Compare: []*pb.Compare{c.c}})
			if err != nil {
				t.Fatal(err)
			}
			if r.Succeeded != c.want {
				t.Fatalf("succeeded %v, want %v", r.Succeeded, c.want)
			}
		})
	}
	// All compares must hold.
	r, _ := s.Txn(&pb.TxnRequest{Compare: []*pb.Compare{cmpValue("a", pb.Compare_EQUAL, "n"), cmpValue("c", pb.Compare_EQUAL, "nope")}})
	if r.Succeeded {
		t.Fatal("conjunction")
	}
}

func TestTxnBranchesAndNesting(t *testing.T) {
	s := New()
	mustPut(t, s, "k", "1") // 2
	req := &pb.TxnRequest{
		Compare: []*pb.Compare{cmpValue("k", pb.Compare_EQUAL, "1")},
		Success: []*pb.RequestOp{
			opPut("k", "2"),
			// Nested compares see the state before the whole txn (k=1),
			// as etcd evaluates them up front.
			opTxn(&pb.TxnRequest{
				Compare: []*pb.Compare{cmpValue("k", pb.Compare_EQUAL, "1")},
				Success: []*pb.RequestOp{opPut("inner", "then"), opGet("k", "")},
				Failure: []*pb.RequestOp{opPut("inner", "else")},
			}),
			opTxn(&pb.TxnRequest{
				Compare: []*pb.Compare{cmpValue("k", pb.Compare_EQUAL, "2")},
				Success: []*pb.RequestOp{opPut("second", "then")},
				Failure: []*pb.RequestOp{opPut("second", "else")},
			}),
		},
		Failure: []*pb.RequestOp{opPut("failed", "1")},
	}
	r, err := s.Txn(req)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Succeeded || r.Header.Revision != 3 || len(r.Responses) != 3 {
		t.Fatalf("resp %v", r)
	}
	n1 := r.Responses[1].GetResponseTxn()
	if !n1.Succeeded || len(n1.Responses) != 2 {
		t.Fatalf("nested 1 %v", n1)
	}
	if n1.Header == nil || n1.Header.Revision != 0 {
		t.Fatalf("nested header %v, want empty as etcd", n1.Header)
	}
	if g := n1.Responses[1].GetResponseRange(); string(g.Kvs[0].Value) != "2" {
		t.Fatalf("nested read %v", g)
	}
	if n2 := r.Responses[2].GetResponseTxn(); n2.Succeeded {
		t.Fatalf("nested 2 %v", n2)
	}
	for k, v := range map[string]string{"k": "2", "inner": "then", "second": "else"} {
		if kv := getAt(t, s, k, 0); kv == nil || string(kv.Value) != v || kv.ModRevision != 3 {
			t.Fatalf("%s = %v, want %s", k, kv, v)
		}
	}
	if getAt(t, s, "failed", 0) != nil {
		t.Fatal("failure branch ran")
	}
	// Failure branch.
	r, err = s.Txn(req)
	if err != nil || r.Succeeded || len(r.Responses) != 1 || r.Header.Revision != 4 {
		t.Fatalf("failure: %v %v", r, err)
	}
	// Then/else of one nested txn may put the same key; only one runs.
	_, err = s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opTxn(&pb.TxnRequest{
		Success: []*pb.RequestOp{opPut("x", "1")},
		Failure: []*pb.RequestOp{opPut("x", "2")},
	})}})
	if err != nil {
		t.Fatal(err)
	}
}

func TestTxnDeleteThenRead(t *testing.T) {
	s := New()
	mustPut(t, s, "a", "1") // 2
	mustPut(t, s, "b", "1") // 3
	r, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{
		{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte("c"), PrevKv: true}}},
		opGet("a", "c"),
		opDel("a", "b"), // already deleted in this txn: deletes nothing
		opPut("c", "1"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	d := r.Responses[0].GetResponseDeleteRange()
	if d.Deleted != 2 || len(d.PrevKvs) != 2 || d.Header.Revision != 4 {
		t.Fatalf("delete %v", d)
	}
	if g := r.Responses[1].GetResponseRange(); len(g.Kvs) != 0 || g.Count != 0 {
		t.Fatalf("read after delete %v", g)
	}
	if d2 := r.Responses[2].GetResponseDeleteRange(); d2.Deleted != 0 || d2.Header.Revision != 4 {
		t.Fatalf("second delete %v", d2)
	}
	if r.Header.Revision != 4 {
		t.Fatalf("rev %d", r.Header.Revision)
	}
	// The "\x00" range_end quirk kept from etcd: not a duplicate, and the
	// key is written twice (put then delete) in one revision.
	r, err = s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "2"), opDel("c", "\x00")}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Header.Revision != 5 || getAt(t, s, "c", 5) != nil || string(getAt(t, s, "c", 4).Value) != "1" {
		t.Fatalf("put+delete in one revision: %v", r)
	}
	evs, _, err := s.EventsSince([]byte("c"), nil, 5, 0)
	if err != nil || len(evs) != 2 || evs[0].Type != mvccpb.PUT || evs[1].Type != mvccpb.DELETE {
		t.Fatalf("events %v %v", evs, err)
	}
	// Both events' PrevKv is the value before the revision, as etcd's
	// watch reads it at mod_revision-1.
	if string(evs[0].PrevKv.Value) != "1" || string(evs[1].PrevKv.Value) != "1" {
		t.Fatalf("prev kvs %v", evs)
	}
	mustPut(t, s, "c", "3")
	if kv := getAt(t, s, "c", 0); kv.Version != 1 || kv.CreateRevision != 6 {
		t.Fatalf("c after put+delete: %v", kv)
	}
}

// etcd misses this conflict in its pre-checks and panics while applying
// it; kv undoes the txn's writes and fails it with ErrGRPCKeyNotFound.
func TestTxnFailsMidwayIsUndone(t *testing.T) {
	s := New()
	if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 1, TTL: 9}); err != nil {
		t.Fatal(err)
	}
	mustPutLease(t, s, "a", "1", 1) // 2
	mustPut(t, s, "b", "1")         // 3
	before := snapshotBytes(t, s)
	calls := 0
	s.SetObserver(func(int64, []*mvccpb.Event) { calls++ })
	_, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("new"), Value: []byte("x"), Lease: 1}}},
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a"), Value: []byte("2")}}}, // detaches a from lease 1
		opDel("b", "\x00"),
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("c"), IgnoreValue: true}}},
	}})
	wantErr(t, err, rpctypes.ErrGRPCKeyNotFound)
	if !bytes.Equal(before, snapshotBytes(t, s)) || calls != 0 {
		t.Fatal("a txn refused by its pre-check changed the state")
	}
	// c did not exist before: the pre-check catches that. Now a key that
	// existed before but is deleted by the "\x00" delete.
	mustPut(t, s, "c", "1") // 4
	before = snapshotBytes(t, s)
	calls = 0
	_, err = s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("new"), Value: []byte("x"), Lease: 1}}},
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("a"), Value: []byte("2")}}},
		opDel("b", "\x00"),
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("c"), IgnoreValue: true}}},
	}})
	wantErr(t, err, rpctypes.ErrGRPCKeyNotFound)
	if !bytes.Equal(before, snapshotBytes(t, s)) {
		t.Fatal("failed txn left changes behind")
	}
	if calls != 0 || s.Rev() != 4 {
		t.Fatalf("observer calls %d rev %d", calls, s.Rev())
	}
	if _, keys, _ := s.LeaseTimeToLive(1, true); len(keys) != 1 || string(keys[0]) != "a" {
		t.Fatalf("lease keys %q", keys)
	}
	// The store goes on normally.
	if r := mustPut(t, s, "new", "y"); r.Header.Revision != 5 {
		t.Fatalf("rev %d", r.Header.Revision)
	}
	if kv := getAt(t, s, "new", 0); kv.Version != 1 || kv.CreateRevision != 5 {
		t.Fatalf("new %v", kv)
	}
}
