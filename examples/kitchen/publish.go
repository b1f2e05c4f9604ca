package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/server"
)

// The kitchen's events on the dashboard: each event is also written into
// the cluster, at ballot/events/kitchen/LEASE/SEQ (server.AppEventsPrefix),
// where every member's dashboard follows it with a watch. The keys share
// one lease that is never renewed, so a run's events are gone from the
// cluster eventsTTLSeconds after it started, however it ended.
const (
	appName          = "kitchen"
	eventsTTLSeconds = 600
	eventsMax        = 1000 // per run: a story has a few dozen
	eventBytesMax    = 4096 // per event: a longer message is cut
	publishTimeout   = 2 * time.Second
)

// publisher writes events under the reserved prefix, in the order they
// happen. Not safe for concurrent use: the narrator calls it under its
// lock.
type publisher struct {
	cli    *clientv3.Client
	lease  clientv3.LeaseID
	prefix string
	seq    int
	broken error // the first failure: publishing stops there
}

// newPublisher connects to the cluster and grants the run's lease.
func newPublisher(ctx context.Context, eps []string) (*publisher, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Context: ctx})
	if err != nil {
		return nil, fmt.Errorf("events on the dashboard: %w", err)
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := cli.Grant(gctx, eventsTTLSeconds)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("events on the dashboard: grant lease: %w", err)
	}
	return &publisher{cli: cli, lease: l.ID, prefix: fmt.Sprintf("%s%s/%x/", server.AppEventsPrefix, appName, int64(l.ID))}, nil
}

// publish writes one event record. After a failure, or past eventsMax, it
// does nothing and returns the reason once.
func (p *publisher) publish(rec map[string]any) error {
	if p.broken != nil {
		return nil
	}
	if p.seq >= eventsMax {
		p.broken = fmt.Errorf("over %d events: the rest are not on the dashboard", eventsMax)
		return p.broken
	}
	b, err := json.Marshal(rec)
	if err == nil && len(b) > eventBytesMax {
		cutRec := map[string]any{"time": rec["time"], "event": rec["event"], "msg": rec["msg"]}
		if m, ok := rec["msg"].(string); ok && len(m) > eventBytesMax/2 {
			cutRec["msg"] = strings.ToValidUTF8(m[:eventBytesMax/2], "") + "…"
		}
		b, err = json.Marshal(cutRec)
	}
	if err != nil {
		p.broken = fmt.Errorf("encode event: %w", err)
		return p.broken
	}
	ctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
	defer cancel()
	key := fmt.Sprintf("%s%06d", p.prefix, p.seq)
	if _, err := p.cli.Put(ctx, key, string(b), clientv3.WithLease(p.lease)); err != nil {
		p.broken = fmt.Errorf("put %s: %w", key, err)
		return p.broken
	}
	p.seq++
	return nil
}

// close disconnects; the events stay until their lease expires, so the
// dashboard still shows the story after the kitchen has closed.
func (p *publisher) close() { p.cli.Close() }
