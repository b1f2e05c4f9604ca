package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/ballotdb/ballot/server"
)

// Application events: what applications built on ballot tell their users
// (the kitchen example's story, say), shown in the dashboard's
// "Application events" panel. An application writes each event under
// server.AppEventsPrefix, at ballot/events/APP/ID, with a lease so that
// events expire; every event stream of the dashboard follows that prefix
// with a watch in the member it runs in (Server.WatchPrefix) and sends the
// events as Kind "app". Only keys under that prefix are ever shown.
//
// Everything is bounded: a stream starts with at most appEventsMax events
// (the most recent); later ones pass a token bucket per stream
// (appEventsPerSecond, burst appEventsBurst) and each says how many were
// skipped before it; a value is read up to appValueBytesMax bytes and its
// message cut to appMsgRunesMax characters.
const (
	appEventsMax       = 100
	appEventsPerSecond = 20
	appEventsBurst     = 100
	appValueBytesMax   = 4096
	appMsgRunesMax     = 300
	appNameRunesMax    = 64
)

// AppEvent is one application event in a member's event stream.
type AppEvent struct {
	Kind string `json:"kind"` // "app"
	// At is the event's own time (its "time" field, RFC 3339) in Unix
	// milliseconds, or when the member applied it if it has none.
	At    int64  `json:"at"`
	App   string `json:"app"`
	Key   string `json:"key"`
	Rev   int64  `json:"rev"`             // the revision that wrote it: events of all members share it
	Event string `json:"event,omitempty"` // the application's kind of event
	Msg   string `json:"msg"`
	// Skipped counts the events the stream's rate limit left out before
	// this one.
	Skipped uint64 `json:"skipped,omitempty"`
}

// appEventOf reads an event from a key under server.AppEventsPrefix: a
// JSON object with "msg" (and optionally "event" and "time"), or any other
// value, shown as text. ok is false for a key that names no application.
func appEventOf(kv *mvccpb.KeyValue, now time.Time) (AppEvent, bool) {
	rest, found := strings.CutPrefix(string(kv.Key), server.AppEventsPrefix)
	if !found {
		return AppEvent{}, false
	}
	app, id, found := strings.Cut(rest, "/")
	if !found || app == "" || id == "" {
		return AppEvent{}, false
	}
	ev := AppEvent{Kind: "app", At: now.UnixMilli(), App: cut(app, appNameRunesMax), Key: cut(string(kv.Key), 2*appNameRunesMax),
		Rev: kv.ModRevision}
	val := kv.Value
	whole := len(val) <= appValueBytesMax
	if !whole {
		val = val[:appValueBytesMax]
	}
	var rec struct {
		Time  string `json:"time"`
		Event string `json:"event"`
		Msg   string `json:"msg"`
	}
	if whole && json.Unmarshal(val, &rec) == nil && rec.Msg != "" {
		ev.Msg, ev.Event = rec.Msg, cut(rec.Event, appNameRunesMax)
		if t, err := time.Parse(time.RFC3339Nano, rec.Time); err == nil {
			ev.At = t.UnixMilli()
		}
	} else {
		ev.Msg = string(val)
	}
	ev.Msg = cut(ev.Msg, appMsgRunesMax)
	return ev, true
}

// cut returns s as valid UTF-8, at most n runes, marked when cut.
func cut(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

// appFeed is one event stream's watch on the application events. A nil
// *appFeed is a feed with no events.
type appFeed struct {
	initial []*mvccpb.KeyValue
	c       <-chan []*mvccpb.Event
	limit   bucket
	skipped uint64
}

// openAppFeed starts following the application events of srv for as long
// as ctx lasts. It returns nil if there is no server or the watch cannot
// start (logged): the stream then carries the member's own events only.
func openAppFeed(ctx context.Context, srv *server.Server, log *slog.Logger) *appFeed {
	if srv == nil {
		return nil
	}
	kvs, c, err := srv.WatchPrefix(ctx, server.AppEventsPrefix, appEventsMax)
	if err != nil {
		log.Warn("application events: cannot watch", "prefix", server.AppEventsPrefix, "err", err)
		return nil
	}
	return &appFeed{initial: kvs, c: c, limit: bucket{rate: appEventsPerSecond, burst: appEventsBurst}}
}

// events is the channel of later events; nil (never ready) for a nil feed
// or once the watch has ended.
func (f *appFeed) events() <-chan []*mvccpb.Event {
	if f == nil {
		return nil
	}
	return f.c
}

// writeInitial writes the events there were when the feed opened.
func (f *appFeed) writeInitial(w io.Writer) error {
	if f == nil {
		return nil
	}
	now := time.Now()
	for _, kv := range f.initial {
		if ev, ok := appEventOf(kv, now); ok {
			if err := writeSSE(w, ev); err != nil {
				return err
			}
		}
	}
	f.initial = nil
	return nil
}

// write writes the puts among evs that the rate limit lets through; ok
// false with a nil evs means the watch ended (the stream goes on without).
func (f *appFeed) write(w io.Writer, evs []*mvccpb.Event, ok bool) error {
	if !ok {
		f.c = nil
		return nil
	}
	now := time.Now()
	for _, e := range evs {
		if e.Type != mvccpb.PUT || e.Kv == nil {
			continue // an event expiring with its lease is not news
		}
		ev, valid := appEventOf(e.Kv, now)
		if !valid {
			continue
		}
		if !f.limit.take(now) {
			f.skipped++
			continue
		}
		ev.Skipped, f.skipped = f.skipped, 0
		if err := writeSSE(w, ev); err != nil {
			return err
		}
	}
	return nil
}

func writeSSE(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("web: encode event: %w", err)
	}
	if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
		return fmt.Errorf("web: write event: %w", err)
	}
	return nil
}
