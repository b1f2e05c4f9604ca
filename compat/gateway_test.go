package compat

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ballotdb/ballot/server/servertest"
)

// gw speaks etcd's JSON gateway as curl does: POST with a JSON body.
type gw struct {
	t    *testing.T
	base string // http://host:port or https://host:port
	hc   *http.Client
}

func newGW(t *testing.T, base string, hc *http.Client) gw {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return gw{t: t, base: base, hc: hc}
}

// post sends body to path and returns the HTTP status and the raw reply.
func (g gw) post(path, body string) (int, []byte) {
	g.t.Helper()
	resp, err := g.hc.Post(g.base+path, "application/json", strings.NewReader(body))
	if err != nil {
		g.t.Fatalf("POST %s %s: %v", path, body, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		g.t.Fatalf("POST %s: reading the reply: %v", path, err)
	}
	return resp.StatusCode, out
}

// ok posts and decodes a 200 reply into a JSON object.
func (g gw) ok(path, body string) obj {
	g.t.Helper()
	code, out := g.post(path, body)
	if code != http.StatusOK {
		g.t.Fatalf("POST %s %s: %d %s", path, body, code, out)
	}
	var m obj
	if err := json.Unmarshal(out, &m); err != nil {
		g.t.Fatalf("POST %s: reply is not a JSON object: %v\n%s", path, err, out)
	}
	return m
}

// obj is a decoded JSON object with accessors for etcd's encodings.
type obj map[string]any

func (o obj) get(path string) any {
	var v any = map[string]any(o)
	for _, p := range strings.Split(path, ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[p]
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

// int reads an integer field; the gateway writes 64-bit integers as JSON
// strings, as protojson does, and leaves zero values out. A uint64 (an ID)
// above the int64 range comes back as its bits.
func (o obj) int(path string) int64 {
	switch v := o.get(path).(type) {
	case nil:
		return 0
	case string:
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return n
		}
		u, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			panic(fmt.Sprintf("%s: %q is not an integer", path, v))
		}
		return int64(u)
	case float64:
		return int64(v)
	}
	panic(fmt.Sprintf("%s: %v is not an integer", path, o.get(path)))
}

// bytes reads a bytes field (base64, as etcd's gateway writes keys and
// values).
func (o obj) bytes(path string) string {
	s, _ := o.get(path).(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		panic(fmt.Sprintf("%s: %q is not base64", path, s))
	}
	return string(b)
}

func (o obj) len(path string) int {
	a, _ := o.get(path).([]any)
	return len(a)
}

// b64 encodes a key or value for a request body.
func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestGateway: curl's view of ballot. Every request is an HTTP/1.1 POST of
// JSON to the client port the gRPC clients use, as etcd's gateway takes
// it; replies are checked field by field, with revisions advancing as
// etcd's do and keys and values round-tripping through base64.
func TestGateway(t *testing.T) {
	c := servertest.New(t, 3, nil)
	g := newGW(t, "http://"+c.Endpoints()[0], nil)

	p := g.ok("/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q}`, b64("foo"), b64("bar")))
	rev := p.int("header.revision")
	if rev < 2 || p.int("header.cluster_id") == 0 || p.int("header.member_id") == 0 || p.int("header.raft_term") == 0 {
		t.Fatalf("put reply header: %v", p)
	}
	r := g.ok("/v3/kv/range", fmt.Sprintf(`{"key":%q}`, b64("foo")))
	if r.int("count") != 1 || r.bytes("kvs.0.key") != "foo" || r.bytes("kvs.0.value") != "bar" ||
		r.int("kvs.0.create_revision") != rev || r.int("kvs.0.mod_revision") != rev || r.int("kvs.0.version") != 1 {
		t.Fatalf("range foo: %v", r)
	}

	// A second put advances the revision and the version; prev_kv gives
	// the old value.
	p2 := g.ok("/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q,"prev_kv":true}`, b64("foo"), b64("baz")))
	if p2.int("header.revision") != rev+1 || p2.bytes("prev_kv.value") != "bar" {
		t.Fatalf("second put: %v", p2)
	}
	g.ok("/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q}`, b64("fruit/apple"), b64("red")))
	g.ok("/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q}`, b64("fruit/banana"), b64("yellow")))
	// A prefix: range_end is the prefix with its last byte incremented.
	r = g.ok("/v3/kv/range", fmt.Sprintf(`{"key":%q,"range_end":%q}`, b64("fruit/"), b64("fruit0")))
	if r.int("count") != 2 || r.bytes("kvs.0.key") != "fruit/apple" || r.bytes("kvs.1.value") != "yellow" {
		t.Fatalf("range fruit/: %v", r)
	}
	if r.int("header.revision") != rev+3 {
		t.Fatalf("revision after four puts: %d, want %d", r.int("header.revision"), rev+3)
	}
	// A read at an earlier revision.
	r = g.ok("/v3/kv/range", fmt.Sprintf(`{"key":%q,"revision":%d}`, b64("foo"), rev))
	if r.bytes("kvs.0.value") != "bar" {
		t.Fatalf("range foo at revision %d: %v", rev, r)
	}

	// Transactions: a compare that holds runs success; one that fails
	// runs failure.
	txn := func(want string) string {
		return fmt.Sprintf(`{"compare":[{"key":%q,"target":"VALUE","result":"EQUAL","value":%q}],`+
			`"success":[{"request_put":{"key":%q,"value":%q}}],`+
			`"failure":[{"request_range":{"key":%q}}]}`, b64("foo"), b64(want), b64("foo"), b64("qux"), b64("foo"))
	}
	tx := g.ok("/v3/kv/txn", txn("baz"))
	if tx.get("succeeded") != true || tx.int("header.revision") != rev+4 || tx.get("responses.0.response_put") == nil {
		t.Fatalf("txn that should succeed: %v", tx)
	}
	tx = g.ok("/v3/kv/txn", txn("baz"))
	if tx.get("succeeded") != nil || tx.int("header.revision") != rev+4 || tx.bytes("responses.0.response_range.kvs.0.value") != "qux" {
		t.Fatalf("txn that should fail: %v", tx)
	}

	// Delete a prefix.
	d := g.ok("/v3/kv/deleterange", fmt.Sprintf(`{"key":%q,"range_end":%q,"prev_kv":true}`, b64("fruit/"), b64("fruit0")))
	if d.int("deleted") != 2 || d.len("prev_kvs") != 2 || d.int("header.revision") != rev+5 {
		t.Fatalf("deleterange fruit/: %v", d)
	}
	if r := g.ok("/v3/kv/range", fmt.Sprintf(`{"key":%q,"range_end":%q,"count_only":true}`, b64("fruit/"), b64("fruit0"))); r.int("count") != 0 {
		t.Fatalf("fruit/ after the delete: %v", r)
	}

	// Leases: grant, attach a key, time to live with keys, list, revoke.
	lg := g.ok("/v3/lease/grant", `{"TTL":60}`)
	id := lg.int("ID")
	if id == 0 || lg.int("TTL") != 60 {
		t.Fatalf("lease grant: %v", lg)
	}
	g.ok("/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q,"lease":%d}`, b64("leased"), b64("v"), id))
	ttl := g.ok("/v3/lease/timetolive", fmt.Sprintf(`{"ID":%d,"keys":true}`, id))
	if ttl.int("ID") != id || ttl.int("grantedTTL") != 60 || ttl.int("TTL") <= 0 || ttl.bytes("keys.0") != "leased" {
		t.Fatalf("lease timetolive: %v", ttl)
	}
	if ls := g.ok("/v3/lease/leases", `{}`); ls.len("leases") != 1 || ls.int("leases.0.ID") != id {
		t.Fatalf("lease leases: %v", ls)
	}
	g.ok("/v3/lease/revoke", fmt.Sprintf(`{"ID":%d}`, id))
	if r := g.ok("/v3/kv/range", fmt.Sprintf(`{"key":%q}`, b64("leased"))); r.int("count") != 0 {
		t.Fatalf("key of a revoked lease: %v", r)
	}

	// Cluster and maintenance views.
	ml := g.ok("/v3/cluster/member/list", `{}`)
	if ml.len("members") != 3 {
		t.Fatalf("member list: %v", ml)
	}
	st := g.ok("/v3/maintenance/status", `{}`)
	if st.get("version") == nil || st.int("leader") == 0 || st.int("raftIndex") == 0 || st.int("header.revision") < rev+7 {
		t.Fatalf("status: %v", st)
	}

	// Compaction, then a read behind it fails with etcd's error.
	now := g.ok("/v3/kv/range", fmt.Sprintf(`{"key":%q}`, b64("foo"))).int("header.revision")
	g.ok("/v3/kv/compaction", fmt.Sprintf(`{"revision":%d}`, now))
	code, out := g.post("/v3/kv/range", fmt.Sprintf(`{"key":%q,"revision":%d}`, b64("foo"), rev))
	var e struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(out, &e); err != nil || code != http.StatusBadRequest || e.Code != 11 ||
		e.Message != "etcdserver: mvcc: required revision has been compacted" {
		t.Fatalf("range behind the compaction: %d %s", code, out)
	}
	// A request etcd refuses: no key.
	code, out = g.post("/v3/kv/put", `{"value":"dg=="}`)
	if err := json.Unmarshal(out, &e); err != nil || code != http.StatusBadRequest || e.Code != 3 || e.Message != "etcdserver: key is not provided" {
		t.Fatalf("put without a key: %d %s", code, out)
	}
	// A body that is not JSON.
	if code, out := g.post("/v3/kv/put", `{not json`); code != http.StatusBadRequest || !strings.Contains(string(out), `"code":3`) {
		t.Fatalf("put with a broken body: %d %s", code, out)
	}
	// etcd's old /v3beta/ prefix.
	if r := g.ok("/v3beta/kv/range", fmt.Sprintf(`{"key":%q}`, b64("foo"))); r.bytes("kvs.0.value") != "qux" {
		t.Fatalf("/v3beta/kv/range: %v", r)
	}
	// gRPC on the same port still works.
	if resp, err := c.Client(c.Names()[0]).Get(context.Background(), "foo"); err != nil || string(resp.Kvs[0].Value) != "qux" {
		t.Fatalf("clientv3 beside the gateway: %v %v", resp, err)
	}
}

// TestGatewayWatch: POST /v3/watch streams one JSON object per line: the
// creation, then the events of later writes, as long as the request lasts.
func TestGatewayWatch(t *testing.T) {
	c := servertest.New(t, 1, nil)
	base := "http://" + c.Endpoints()[0]
	g := newGW(t, base, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v3/watch",
		strings.NewReader(fmt.Sprintf(`{"create_request":{"key":%q,"range_end":%q}}`, b64("w/"), b64("w0"))))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: %s", resp.Status)
	}
	lines := make(chan obj, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var m struct {
				Result obj `json:"result"`
			}
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				lines <- m.Result
			}
		}
	}()
	next := func() obj {
		t.Helper()
		select {
		case m, ok := <-lines:
			if !ok {
				t.Fatal("watch stream ended")
			}
			return m
		case <-ctx.Done():
			t.Fatal("no watch response within the deadline")
		}
		return nil
	}
	if m := next(); m.get("created") != true {
		t.Fatalf("first watch response: %v", m)
	}
	rev := g.ok("/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q}`, b64("w/1"), b64("one"))).int("header.revision")
	g.ok("/v3/kv/deleterange", fmt.Sprintf(`{"key":%q}`, b64("w/1")))
	var events []obj
	for len(events) < 2 {
		m := next()
		for i := range m.len("events") {
			events = append(events, obj(m.get("events").([]any)[i].(map[string]any)))
		}
	}
	if events[0].get("type") != nil || events[0].bytes("kv.key") != "w/1" || events[0].bytes("kv.value") != "one" || events[0].int("kv.mod_revision") != rev {
		t.Fatalf("put event: %v", events[0])
	}
	if events[1].get("type") != "DELETE" || events[1].bytes("kv.key") != "w/1" || events[1].int("kv.mod_revision") != rev+1 {
		t.Fatalf("delete event: %v", events[1])
	}
}

// TestGatewayMatchesEtcd sends the same JSON requests to etcd's gateway and
// to ballot's and compares the replies whole: HTTP status and JSON, after
// zeroing only the header's cluster ID, member ID and raft term.
func TestGatewayMatchesEtcd(t *testing.T) {
	etcd := newGW(t, "http://"+diffStartEtcd(t), nil)
	c := servertest.New(t, 1, nil)
	ballot := newGW(t, "http://"+c.Endpoints()[0], nil)
	steps := []struct{ path, body string }{
		{"/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q}`, b64("a"), b64("1"))},
		{"/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q,"prev_kv":true}`, b64("a"), b64("2"))},
		{"/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q}`, b64("b"), b64(""))},
		{"/v3/kv/range", fmt.Sprintf(`{"key":%q,"range_end":%q}`, b64("a"), b64("c"))},
		{"/v3/kv/range", fmt.Sprintf(`{"key":%q,"range_end":%q,"limit":1,"sort_order":"DESCEND"}`, b64("a"), b64("c"))},
		{"/v3/kv/range", fmt.Sprintf(`{"key":%q,"revision":2}`, b64("a"))},
		{"/v3/kv/range", fmt.Sprintf(`{"key":%q,"keys_only":true,"count_only":false}`, b64("a"))},
		{"/v3/kv/range", fmt.Sprintf(`{"key":%q}`, b64("missing"))},
		{"/v3/kv/txn", fmt.Sprintf(`{"compare":[{"key":%q,"target":"MOD","result":"GREATER","mod_revision":"2"}],"success":[{"request_put":{"key":%q,"value":%q}},{"request_range":{"key":%q}}],"failure":[{"request_delete_range":{"key":%q}}]}`,
			b64("a"), b64("c"), b64("3"), b64("c"), b64("a"))},
		{"/v3/kv/txn", fmt.Sprintf(`{"compare":[{"key":%q,"target":"VERSION","result":"EQUAL","version":"7"}],"success":[],"failure":[{"request_delete_range":{"key":%q,"prev_kv":true}}]}`,
			b64("a"), b64("a"))},
		{"/v3/lease/grant", `{"TTL":60,"ID":77}`},
		{"/v3/kv/put", fmt.Sprintf(`{"key":%q,"value":%q,"lease":77}`, b64("l"), b64("x"))},
		{"/v3/lease/leases", `{}`},
		{"/v3/lease/revoke", `{"ID":77}`},
		{"/v3/lease/revoke", `{"ID":77}`},
		{"/v3/kv/deleterange", fmt.Sprintf(`{"key":%q,"range_end":%q}`, b64("a"), b64("z"))},
		{"/v3/kv/compaction", `{"revision":3}`},
		{"/v3/kv/range", fmt.Sprintf(`{"key":%q,"revision":2}`, b64("a"))},
		{"/v3/kv/put", `{"value":"dg=="}`},
		{"/v3/kv/put", `{not json`},
		{"/v3/kv/range", fmt.Sprintf(`{"key":%q,"unknown_field":1}`, b64("a"))},
		{"/v3/nothing/here", `{}`},
	}
	for _, s := range steps {
		ec, eb := etcd.post(s.path, s.body)
		bc, bb := ballot.post(s.path, s.body)
		en, bn := gwNormalize(eb), gwNormalize(bb)
		if ec != bc || !reflect.DeepEqual(en, bn) {
			t.Errorf("POST %s %s:\n etcd   %d %s\n ballot %d %s", s.path, s.body, ec, eb, bc, bb)
		}
	}
}

// gwNormalize decodes a reply and zeroes what differs between any two
// clusters: the header's cluster ID, member ID and raft term.
func gwNormalize(b []byte) any {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return string(b)
	}
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if k == "header" {
					if h, ok := e.(map[string]any); ok {
						delete(h, "cluster_id")
						delete(h, "member_id")
						delete(h, "raft_term")
					}
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(v)
	return v
}
