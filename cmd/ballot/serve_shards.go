package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/shard"
)

// runShardHost is `ballot serve --shards N`: one host of a sharded cluster
// (see docs/sharding.md). Its HTTP port reports on the host's member of
// the meta group.
func runShardHost(ctx context.Context, f serveFlags, log *slog.Logger, initial map[string]string, join bool,
	cl, pl net.Listener, mon *monitor) error {
	closeAll := func() { cl.Close(); pl.Close() }
	switch {
	case join:
		closeAll()
		return errors.New("serve --shards: joining an existing sharded cluster is not supported yet")
	case f.forceNewCluster:
		closeAll()
		return errors.New("serve --shards: --force-new-cluster is not supported in sharded mode yet")
	case f.clientTLS.CertFile != "":
		closeAll()
		return errors.New("serve --shards: client TLS is not supported in sharded mode yet")
	case f.unsafeStale || f.unsafeEarlyAck || f.unsafeLease || f.peerRoutes != "":
		closeAll()
		return errors.New("serve --shards: the --unsafe-* testing flags but --unsafe-corrupt-puts are for single-group mode")
	case f.shards > 256:
		closeAll()
		return fmt.Errorf("serve --shards %d: at most 256 at start", f.shards)
	}
	h, err := shard.Start(ctx, shard.Config{
		Name: f.name, ClusterToken: f.clusterToken, InitialCluster: initial, Shards: f.shards,
		Engine: node.EngineKind(f.engine), DataDir: f.dataDir, ClientListener: cl, PeerListener: pl,
		AdvertiseClientURLs: splitList(f.advertiseClient),
		TickInterval:        f.tick, ElectionTicks: f.electionTicks, SnapshotEntries: f.snapshotCount,
		SplitBytes: f.splitBytes, SplitLoad: f.splitLoad,
		Logger: log, MetaObserve: mon.observe(), Unsafe: server.UnsafeKnobs{CorruptPuts: f.unsafeCorrupt},
	})
	if err != nil {
		return err
	}
	var httpSrv *http.Server
	if f.listenHTTP != "" {
		hl, err := net.Listen("tcp", stripScheme(f.listenHTTP))
		if err != nil {
			h.Stop()
			return fmt.Errorf("serve: --listen-http: %w", err)
		}
		hd, err := httpHandler(h.Server(shard.MetaGroup), mon)
		if err != nil {
			hl.Close()
			h.Stop()
			return err
		}
		httpSrv = &http.Server{Handler: hd, ReadHeaderTimeout: 5 * time.Second}
		go httpSrv.Serve(hl)
	}
	fmt.Fprintf(os.Stderr, "ballot: host %s (%x) serving %d shards to clients on %s\n",
		f.name, h.MemberID(), len(h.Map().Shards), h.ClientURL())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case s := <-sig:
		log.Info("stopping", "signal", s.String())
	case <-h.Done():
	}
	if httpSrv != nil {
		httpSrv.Close()
	}
	h.Stop()
	if err := h.Err(); err != nil {
		return fmt.Errorf("serve: stopped after a failure: %w", err)
	}
	return nil
}
