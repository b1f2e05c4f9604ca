package web_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/web"
)

// appStream opens the dashboard's event stream and returns the
// application events it carries, as they come.
func appStream(t *testing.T, url string) <-chan web.AppEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/api/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan web.AppEvent, 1024)
	go func() {
		defer resp.Body.Close()
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || !strings.Contains(data, `"kind":"app"`) {
				continue
			}
			var ev web.AppEvent
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Errorf("bad application event %q: %v", data, err)
				return
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// nextApp waits, with a deadline, for the next application event.
func nextApp(t *testing.T, c <-chan web.AppEvent, what string) web.AppEvent {
	t.Helper()
	select {
	case ev, ok := <-c:
		if !ok {
			t.Fatalf("the stream ended before %s", what)
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
	}
	return web.AppEvent{}
}

// TestAppEventsInFeed: events an application writes under the reserved
// prefix reach the dashboard's event stream — those already there when the
// stream opens, then new ones as they are written — with their message,
// kind and time; keys outside the prefix never do; values are bounded.
func TestAppEventsInFeed(t *testing.T) {
	c, lead, _, ts := dashCluster(t, web.TapConfig{}, "")
	cli := c.Client(lead)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key, val string) int64 {
		t.Helper()
		r, err := cli.Put(ctx, key, val)
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	first := put(server.AppEventsPrefix+"kitchen/1", fmt.Sprintf(`{"time":%q,"event":"elected","msg":"Alice is head chef.","token":7}`, at.Format(time.RFC3339Nano)))

	feed := appStream(t, ts.URL)
	ev := nextApp(t, feed, "the event written before the stream opened")
	if ev.App != "kitchen" || ev.Event != "elected" || ev.Msg != "Alice is head chef." || ev.Rev != first || ev.At != at.UnixMilli() {
		t.Fatalf("first event %+v", ev)
	}

	put("secret/key", "never shown")
	put(server.AppEventsPrefix+"noapp", "no application named") // no APP/ID
	r, err := cli.Put(ctx, server.AppEventsPrefix+"kitchen/2", "the oven is hot", clientv3.WithLease(lease.ID))
	if err != nil {
		t.Fatal(err)
	}
	ev = nextApp(t, feed, "the event written after the stream opened")
	if ev.App != "kitchen" || ev.Msg != "the oven is hot" || ev.Event != "" || ev.Rev != r.Header.Revision {
		t.Fatalf("plain-text event %+v", ev)
	}
	long := strings.Repeat("é", 5000)
	put(server.AppEventsPrefix+"other-app/x", `{"msg":"`+long+`"}`)
	ev = nextApp(t, feed, "the long event")
	if ev.App != "other-app" || len([]rune(ev.Msg)) > 300 || !strings.HasSuffix(ev.Msg, "…") {
		t.Fatalf("long event not cut: app %q, %d runes", ev.App, len([]rune(ev.Msg)))
	}
	// An event expiring with its lease is not news.
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	last := put(server.AppEventsPrefix+"kitchen/3", `{"msg":"service is over"}`)
	ev = nextApp(t, feed, "the last event")
	if ev.Rev != last || ev.Msg != "service is over" {
		t.Fatalf("after the lease's revocation: %+v, want the last event", ev)
	}
}

// TestAppEventsBounded: a stream opens with the most recent events only,
// in revision order.
func TestAppEventsBounded(t *testing.T) {
	c, lead, _, ts := dashCluster(t, web.TapConfig{}, "")
	cli := c.Client(lead)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 130
	for i := range n {
		if _, err := cli.Put(ctx, fmt.Sprintf("%sflood/%03d", server.AppEventsPrefix, i), fmt.Sprintf(`{"msg":"event %d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	feed := appStream(t, ts.URL)
	var got []web.AppEvent
	for len(got) == 0 || got[len(got)-1].Msg != fmt.Sprintf("event %d", n-1) {
		got = append(got, nextApp(t, feed, fmt.Sprintf("event %d", n-1)))
		if len(got) > n {
			t.Fatalf("over %d events", n)
		}
	}
	if len(got) != 100 {
		t.Fatalf("the stream opened with %d events, want the 100 most recent", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i].Rev <= got[i-1].Rev {
			t.Fatalf("events out of revision order: %d then %d", got[i-1].Rev, got[i].Rev)
		}
	}
	if got[0].Msg != fmt.Sprintf("event %d", n-100) {
		t.Fatalf("first event %q, want event %d", got[0].Msg, n-100)
	}
}
