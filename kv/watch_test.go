package kv

import (
	"fmt"
	"sync"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"
)

func evString(e *mvccpb.Event) string {
	s := fmt.Sprintf("%s %s=%s@%d/%d/%d", e.Type, e.Kv.Key, e.Kv.Value, e.Kv.CreateRevision, e.Kv.ModRevision, e.Kv.Version)
	if e.PrevKv != nil {
		s += fmt.Sprintf(" prev=%s@%d", e.PrevKv.Value, e.PrevKv.ModRevision)
	}
	return s
}

func TestObserverMatchesEventsSince(t *testing.T) {
	s := New()
	type batch struct {
		rev int64
		evs []*mvccpb.Event
	}
	var seen []batch
	s.SetObserver(func(rev int64, evs []*mvccpb.Event) {
		// The observer may read the store.
		if s.Rev() != rev {
			t.Errorf("observer at %d sees rev %d", rev, s.Rev())
		}
		seen = append(seen, batch{rev, evs})
	})
	mustPut(t, s, "a", "1")                                                                                      // 2
	mustPut(t, s, "b", "1")                                                                                      // 3
	mustPut(t, s, "a", "2")                                                                                      // 4
	mustDel(t, s, "x", "")                                                                                       // no-op
	mustDel(t, s, "a", "c")                                                                                      // 5
	if _, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("c", "1"), opPut("a", "3")}}); err != nil { // 6
		t.Fatal(err)
	}
	if _, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opGet("a", "")}}); err != nil { // no-op
		t.Fatal(err)
	}
	want := map[int64][]string{
		2: {"PUT a=1@2/2/1"},
		3: {"PUT b=1@3/3/1"},
		4: {"PUT a=2@2/4/2 prev=1@2"},
		5: {"DELETE a=@0/5/0 prev=2@4", "DELETE b=@0/5/0 prev=1@3"},
		6: {"PUT c=1@6/6/1", "PUT a=3@6/6/1"},
	}
	if len(seen) != len(want) {
		t.Fatalf("%d observer calls, want %d", len(seen), len(want))
	}
	for _, b := range seen {
		if len(b.evs) != len(want[b.rev]) {
			t.Fatalf("rev %d: %d events", b.rev, len(b.evs))
		}
		for i, e := range b.evs {
			if got := evString(e); got != want[b.rev][i] {
				t.Fatalf("rev %d event %d: %q, want %q", b.rev, i, got, want[b.rev][i])
			}
		}
	}
	// EventsSince gives the same events for all keys.
	all, next, err := s.EventsSince([]byte{0}, []byte{0}, 1, 0)
	if err != nil || next != 7 {
		t.Fatalf("next %d err %v", next, err)
	}
	var flat []*mvccpb.Event
	for _, b := range seen {
		flat = append(flat, b.evs...)
	}
	if len(all) != len(flat) {
		t.Fatalf("%d events, want %d", len(all), len(flat))
	}
	for i := range all {
		if !proto.Equal(all[i], flat[i]) {
			t.Fatalf("event %d: %v, want %v", i, all[i], flat[i])
		}
	}
	// Key filter and fromRev.
	evs, next, _ := s.EventsSince([]byte("a"), nil, 4, 0)
	if len(evs) != 3 || next != 7 || evString(evs[0]) != "PUT a=2@2/4/2 prev=1@2" || evs[2].Kv.ModRevision != 6 {
		t.Fatalf("a since 4: %v next %d", evs, next)
	}
	evs, _, _ = s.EventsSince([]byte("b"), []byte("d"), 1, 0)
	if len(evs) != 3 {
		t.Fatalf("[b,d): %v", evs)
	}
	// Limit never splits a revision.
	evs, next, _ = s.EventsSince([]byte{0}, []byte{0}, 1, 4)
	if len(evs) != 5 || next != 6 {
		t.Fatalf("limit 4: %d events next %d", len(evs), next)
	}
	evs, next, _ = s.EventsSince([]byte{0}, []byte{0}, next, 4)
	if len(evs) != 2 || next != 7 {
		t.Fatalf("rest: %d events next %d", len(evs), next)
	}
	// Beyond the current revision.
	evs, next, _ = s.EventsSince([]byte{0}, []byte{0}, 10, 0)
	if len(evs) != 0 || next != 10 {
		t.Fatalf("future: %v %d", evs, next)
	}
}

func TestEventsSinceCompacted(t *testing.T) {
	s := New()
	mustPut(t, s, "a", "1") // 2
	mustPut(t, s, "b", "1") // 3
	mustDel(t, s, "a", "")  // 4
	mustPut(t, s, "b", "2") // 5
	if _, err := s.Compact(&pb.CompactionRequest{Revision: 4}); err != nil {
		t.Fatal(err)
	}
	_, next, err := s.EventsSince([]byte{0}, []byte{0}, 3, 0)
	wantErr(t, err, rpctypes.ErrGRPCCompacted)
	if next != 4 {
		t.Fatalf("compacted next %d", next)
	}
	// Restarting at the compact revision gets every event of it, including
	// the deletion at exactly that revision.
	evs, next, err := s.EventsSince([]byte{0}, []byte{0}, 4, 0)
	if err != nil || next != 6 || len(evs) != 2 || evs[0].Type != mvccpb.DELETE || string(evs[0].Kv.Key) != "a" {
		t.Fatalf("from compact rev: %v next %d err %v", evs, next, err)
	}
	if evs[0].PrevKv != nil {
		t.Fatalf("prev of an event at the compact revision is compacted: %v", evs[0].PrevKv)
	}
	if evs[1].PrevKv == nil || string(evs[1].PrevKv.Value) != "1" {
		t.Fatalf("prev kv kept below the compact revision: %v", evs[1])
	}
}

func TestConcurrentReads(t *testing.T) {
	s := New()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := s.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
				if err != nil {
					t.Error(err)
					return
				}
				// A read never sees half a txn: both keys move together.
				var x, y string
				for _, kv := range r.Kvs {
					switch string(kv.Key) {
					case "x":
						x = string(kv.Value)
					case "y":
						y = string(kv.Value)
					}
				}
				if x != y {
					t.Errorf("torn read x=%q y=%q at %d", x, y, r.Header.Revision)
					return
				}
				if _, _, err := s.EventsSince([]byte("x"), nil, s.CompactRev(), 10); err != nil && err != rpctypes.ErrGRPCCompacted {
					t.Error(err)
					return
				}
				s.Leases()
			}
		}()
	}
	for i := 0; i < 2000; i++ {
		v := fmt.Sprint(i)
		if _, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("x", v), opPut("y", v)}}); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			if _, err := s.Compact(&pb.CompactionRequest{Revision: s.Rev() - 10}); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
}
