package server

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// AppEventsPrefix is the key prefix reserved for applications' events, the
// ones the dashboard shows: an application writes each event at
// AppEventsPrefix + APP + "/" + ID (a JSON object with "msg", and
// optionally "event" and "time", or plain text), attached to a lease so
// that events do not pile up. Keys anywhere else are never shown.
const AppEventsPrefix = "ballot/events/"

// appEventsQueue bounds the batches between the watch and the caller of
// WatchPrefix.
const appEventsQueue = 64

// ErrBadPrefix is returned by WatchPrefix for an empty prefix.
var ErrBadPrefix = errors.New("server: watch prefix must not be empty")

// WatchPrefix follows the keys under prefix in this member's store, in
// process: it returns the current ones (at most limit, the most recently
// modified, in revision order) and a channel that then carries every later
// put and delete under prefix, a revision's events at a time, in revision
// order, with no gap. It reads this member's applied state, as a
// serializable read does, which is what a dashboard needs; it is not a
// linearizable read.
//
// The channel is closed when ctx ends, when the server stops, or when the
// watch can no longer be continued (it fell behind a compaction); the
// caller may then call again. A caller that does not keep up holds the
// watch back, never the member: the watch is fed from the store's history
// until it catches up.
func (s *Server) WatchPrefix(ctx context.Context, prefix string, limit int) ([]*mvccpb.KeyValue, <-chan []*mvccpb.Event, error) {
	if prefix == "" {
		return nil, nil, ErrBadPrefix
	}
	key := []byte(prefix)
	end := prefixEnd(key)
	r, err := s.store.Range(&pb.RangeRequest{Key: key, RangeEnd: end, Limit: int64(limit),
		SortTarget: pb.RangeRequest_MOD, SortOrder: pb.RangeRequest_DESCEND})
	if err != nil {
		return nil, nil, fmt.Errorf("server: read %s: %w", prefix, err)
	}
	kvs := r.Kvs
	for i, j := 0, len(kvs)-1; i < j; i, j = i+1, j-1 {
		kvs[i], kvs[j] = kvs[j], kvs[i]
	}
	wctx, cancel := context.WithCancel(ctx)
	st := &watchStream{out: make(chan *pb.WatchResponse, streamBuffer), ids: map[int64]*watcher{}, ctx: wctx}
	s.hub.add(st, &pb.WatchCreateRequest{Key: key, RangeEnd: end, StartRevision: r.Header.Revision + 1})
	out := make(chan []*mvccpb.Event, appEventsQueue)
	go func() {
		defer close(out)
		defer cancel()
		defer s.hub.closeStream(st)
		for {
			select {
			case <-wctx.Done():
				return
			case <-s.stopc:
				return
			case wr := <-st.out:
				if wr.Canceled {
					return
				}
				if len(wr.Events) == 0 {
					continue // the creation answer, a progress notification
				}
				select {
				case out <- wr.Events:
				case <-wctx.Done():
					return
				case <-s.stopc:
					return
				}
			}
		}
	}()
	return kvs, out, nil
}

// prefixEnd is the end of the range of keys that start with prefix (a
// non-empty prefix of 0xff bytes only has no end: "\x00", to the last key).
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}
