package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/server"
)

// cluster is ballot members running in this process.
type cluster struct {
	dir       string
	members   []*server.Server
	endpoints []string
}

// startCluster starts size members on loopback ports the OS chooses, with
// data in a new temporary directory, and waits until they agree on a
// leader.
func startCluster(ctx context.Context, size int) (*cluster, error) {
	dir, err := os.MkdirTemp("", "ballot-kitchen-")
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	c := &cluster{dir: dir}
	initial := map[string]string{}
	peers := map[string]net.Listener{}
	clients := map[string]net.Listener{}
	fail := func(err error) (*cluster, error) {
		for _, l := range peers {
			l.Close()
		}
		for _, l := range clients {
			l.Close()
		}
		c.stop()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	var names []string
	for i := 1; i <= size; i++ {
		name := fmt.Sprintf("kitchen-%d", i)
		names = append(names, name)
		pl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fail(err)
		}
		peers[name] = pl
		initial[name] = pl.Addr().String()
		cl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fail(err)
		}
		clients[name] = cl
	}
	for _, name := range names {
		s, err := server.Start(ctx, server.Config{
			Name: name, ClusterToken: "kitchen", InitialCluster: initial,
			DataDir: filepath.Join(dir, name), ClientListener: clients[name], PeerListener: peers[name],
			TickInterval: 20 * time.Millisecond, ElectionTicks: 10,
			Logger: slog.New(slog.DiscardHandler),
		})
		delete(peers, name) // the server owns its listeners now
		delete(clients, name)
		if err != nil {
			return fail(err)
		}
		c.members = append(c.members, s)
		c.endpoints = append(c.endpoints, s.ClientURL())
	}
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !c.agreed() {
		select {
		case <-tick.C:
		case <-deadline.C:
			return fail(fmt.Errorf("no leader within 30s"))
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	return c, nil
}

// agreed reports whether every member knows the same leader.
func (c *cluster) agreed() bool {
	var lead consensus.NodeID
	for _, s := range c.members {
		l := s.Node().Leader()
		if l == consensus.None || (lead != consensus.None && l != lead) {
			return false
		}
		lead = l
	}
	return true
}

func (c *cluster) stop() {
	for _, s := range c.members {
		s.Stop()
	}
	os.RemoveAll(c.dir)
}
