package server_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ballotdb/ballot/server/servertest"
)

// TestClientPortSharing: on the plain-text client port, a silent
// connection does not hold up others, HTTP/1.1 gets the JSON gateway and
// gRPC keeps working beside it; a member stops promptly with a gateway
// watch open, and the watch's response ends (goleak, in TestMain, checks
// that nothing is left running).
func TestClientPortSharing(t *testing.T) {
	c := servertest.New(t, 1, nil)
	addr := c.Endpoints("m1")[0]
	ctx := ctxT(t)

	// A client that connects and says nothing.
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	if u := c.Member("m1").ClientURL(); u != "http://"+addr {
		t.Fatalf("client URL %q, want http://%s", u, addr)
	}
	cli := c.Client("m1")
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("gRPC beside a silent connection: %v", err)
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	resp, err := hc.Post("http://"+addr+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"aw=="}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"value":"dg=="`) {
		t.Fatalf("gateway range: %s %s", resp.Status, body)
	}

	// A watch through the gateway, open while the member stops.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(wctx, http.MethodPost, "http://"+addr+"/v3/watch",
		strings.NewReader(`{"create_request":{"key":"aw=="}}`))
	if err != nil {
		t.Fatal(err)
	}
	wresp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer wresp.Body.Close()
	lines := bufio.NewScanner(wresp.Body)
	if !lines.Scan() || !strings.Contains(lines.Text(), `"created":true`) {
		t.Fatalf("watch: first line %q, err %v", lines.Text(), lines.Err())
	}
	stopped := make(chan struct{})
	go func() { c.Stop("m1"); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(15 * time.Second):
		t.Fatal("member did not stop with a gateway watch open")
	}
	for lines.Scan() {
	}
	// The silent connection was closed by the member.
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("silent connection still open after Stop")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("silent connection still open after Stop")
	}
}
