// Command kitchen tells the seeds' story — chefs who must agree — with
// ballot's coordination recipes, against a real ballot cluster:
//
//	go run ./examples/kitchen                       # starts its own 3-member cluster
//	go run ./examples/kitchen --endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
//	go run ./examples/kitchen --events kitchen.jsonl
//
// Five chefs, each with its own client (and so its own connection to the
// cluster), act out the three consensus models of the story:
//
//  1. Leader election (recipes/election): the chefs elect a head chef, who
//     posts the menu on the order board with the term's fencing token. The
//     head chef collapses without resigning; once the lease runs out another
//     chef takes over with a larger token, and when the old head chef comes
//     to and posts again, the board refuses the stale token (recipes/fence).
//  2. Majority voting (recipes/poll): the chefs vote on the main course; a
//     chef who votes twice at once has one vote counted, and the poll closes
//     as soon as one dish has a majority.
//  3. Two-phase commit (recipes/twopc): the head chef asks every station
//     "ready for pasta?" — once all say yes and all cook; once a station is
//     out of basil and all stand down; once a station crashes mid-way and,
//     restarted, learns the outcome from ballot; once the head chef
//     collapses after hearing every yes, and the stations, rather than wait
//     for ever, settle it among themselves through the decision key.
//
// Chefs are goroutines with their own clients here, so a "crash" is a chef
// that stops renewing its lease or a station object abandoned mid-protocol;
// nothing depends on them sharing a process. The example narrates in plain
// language and writes the same events as JSON lines with --events (one
// object per line: time, event, msg and the event's fields).
//
// The same events go on the dashboard: each is also written into the
// cluster at ballot/events/kitchen/LEASE/SEQ (server.AppEventsPrefix, the
// prefix the dashboard reserves for applications' events), the same JSON
// object as a value, all on one lease of ten minutes that is never renewed,
// so they go away on their own; a run writes at most 1000 events of at
// most 4 KiB. Run it against `ballot dev` and the story shows in the
// dashboard's "Application events" panel as it happens:
//
//	go run ./cmd/ballot dev &     # dashboard: http://127.0.0.1:2390/
//	go run ./examples/kitchen --endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
//
// --publish-events=false keeps them out of the cluster.
//
// Started without --endpoints, it runs three ballot members in this
// process (package server), on loopback ports the OS chooses, with their
// data in a temporary directory that is removed at exit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type config struct {
	endpoints  []string
	eventsPath string
	ttlSeconds int
	out        io.Writer
	// noPublish keeps the events out of the cluster (and off the
	// dashboard).
	noPublish bool
	// inspect, if set, is called with the cluster's endpoints once the
	// story is over, before a cluster this run started stops (tests).
	inspect func(ctx context.Context, endpoints []string) error
}

func main() {
	var eps, events string
	cfg := config{out: os.Stdout}
	flag.StringVar(&eps, "endpoints", "", "client endpoints of a ballot (or etcd) cluster, comma-separated (default: start a 3-member cluster in this process)")
	flag.StringVar(&events, "events", "", "also write every event as a JSON line to this file")
	flag.IntVar(&cfg.ttlSeconds, "ttl", 2, "lease TTL of the chefs, in seconds: how long a collapsed head chef keeps the title")
	publish := flag.Bool("publish-events", true, "also write every event into the cluster under ballot/events/kitchen/, where the dashboard shows it")
	flag.Parse()
	cfg.noPublish = !*publish
	if eps != "" {
		cfg.endpoints = strings.Split(eps, ",")
	}
	cfg.eventsPath = events
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "kitchen:", err)
		os.Exit(1)
	}
}

// run tells the whole story once.
func run(ctx context.Context, cfg config) error {
	nar, err := newNarrator(cfg.out, cfg.eventsPath)
	if err != nil {
		return err
	}
	defer nar.close()
	eps := cfg.endpoints
	if len(eps) == 0 {
		cl, err := startCluster(ctx, 3)
		if err != nil {
			return err
		}
		defer cl.stop()
		eps = cl.endpoints
	}
	if !cfg.noPublish {
		pub, err := newPublisher(ctx, eps)
		if err != nil {
			return err
		}
		defer pub.close()
		nar.attach(pub)
	}
	if len(cfg.endpoints) == 0 {
		nar.say("cluster", map[string]any{"endpoints": eps}, "The kitchen opens: a 3-member ballot cluster is up (%s).", strings.ReplaceAll(strings.Join(eps, ", "), "http://", ""))
	} else {
		nar.say("cluster", map[string]any{"endpoints": eps}, "The kitchen opens on the ballot cluster at %s.", strings.Join(eps, ", "))
	}
	k, err := newKitchen(ctx, eps, cfg.ttlSeconds, nar)
	if err != nil {
		return err
	}
	defer k.close()
	for _, act := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"election", k.electHeadChef},
		{"poll", k.voteMainCourse},
		{"two-phase commit", k.readyForPasta},
	} {
		if err := act.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", act.name, err)
		}
	}
	nar.say("done", nil, "Service is over. Every chef agreed on who led, what to cook, and whether to cook it.")
	if cfg.inspect != nil {
		return cfg.inspect(ctx, eps)
	}
	return nil
}

// errStory is a story step that did not turn out as consensus promises.
var errStory = errors.New("the story went wrong")

func waitFor[T any](ctx context.Context, ch <-chan T, d time.Duration, what string) (T, error) {
	var zero T
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case v := <-ch:
		return v, nil
	case <-t.C:
		return zero, fmt.Errorf("%s: not within %v: %w", what, d, errStory)
	case <-ctx.Done():
		return zero, fmt.Errorf("%s: %w", what, ctx.Err())
	}
}
