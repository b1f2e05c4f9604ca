package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"sync"
	"time"
)

// narrator tells what happens in plain language and, with --events, writes
// each event as one JSON object per line; once attached to a publisher, it
// also writes each event into the cluster for the dashboard.
type narrator struct {
	mu     sync.Mutex
	out    io.Writer
	events *os.File
	enc    *json.Encoder
	pub    *publisher
	start  time.Time
}

func newNarrator(out io.Writer, eventsPath string) (*narrator, error) {
	n := &narrator{out: out, start: time.Now()}
	if eventsPath != "" {
		f, err := os.Create(eventsPath)
		if err != nil {
			return nil, fmt.Errorf("--events: %w", err)
		}
		n.events, n.enc = f, json.NewEncoder(f)
	}
	return n, nil
}

// attach makes every later event also go to p (the dashboard).
func (n *narrator) attach(p *publisher) {
	n.mu.Lock()
	n.pub = p
	n.mu.Unlock()
}

// say narrates one event: msg (formatted with args) on the terminal, and
// {"time", "event", "msg", fields...} in the event log and on the
// dashboard. Events reach both in the order they are said.
func (n *narrator) say(event string, fields map[string]any, msg string, args ...any) {
	text := fmt.Sprintf(msg, args...)
	n.mu.Lock()
	defer n.mu.Unlock()
	fmt.Fprintf(n.out, "[%5.1fs] %s\n", time.Since(n.start).Seconds(), text)
	if n.enc == nil && n.pub == nil {
		return
	}
	rec := map[string]any{"time": time.Now().UTC().Format(time.RFC3339Nano), "event": event, "msg": text}
	maps.Copy(rec, fields)
	if n.enc != nil {
		if err := n.enc.Encode(rec); err != nil {
			fmt.Fprintf(n.out, "(event log: %v)\n", err)
		}
	}
	if n.pub != nil {
		if err := n.pub.publish(rec); err != nil {
			fmt.Fprintf(n.out, "(events on the dashboard stop: %v)\n", err)
		}
	}
}

func (n *narrator) close() {
	if n.events != nil {
		n.events.Close()
	}
}
