package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

func runCmd(t *testing.T, cmd interface {
	SetArgs([]string)
	Execute() error
}, args ...string) {
	t.Helper()
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		t.Fatalf("ballot %s: %v", strings.Join(args, " "), err)
	}
}

// TestSnapshotSaveStatusRestore: ballot snapshot save writes a verified
// backup (no .part left), status reads it, and restore per member builds a
// new cluster that serves every key at its revisions.
func TestSnapshotSaveStatusRestore(t *testing.T) {
	src := servertest.New(t, 3, nil)
	cli := src.Client()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 40 {
		if _, err := cli.Put(ctx, fmt.Sprintf("k%02d", i%15), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "b.snap")
	runCmd(t, snapshotCommand(), "save", "--endpoints", src.Endpoints()[0], file)
	if _, err := os.Stat(file + ".part"); !os.IsNotExist(err) {
		t.Fatalf(".part left behind: %v", err)
	}
	runCmd(t, snapshotCommand(), "status", file, "-o", "json")
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, info, err := server.ReadBackup(b)
	if err != nil {
		t.Fatal(err)
	}
	want, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if info.Revision != want.Header.Revision {
		t.Fatalf("backup at revision %d, cluster at %d", info.Revision, want.Header.Revision)
	}
	// A damaged file is refused by status and restore.
	bad := filepath.Join(dir, "bad.snap")
	damaged := slices.Clone(b)
	damaged[10] ^= 0xff
	if err := os.WriteFile(bad, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := snapshotCommand()
	cmd.SetArgs([]string{"status", bad})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Fatalf("status of a damaged backup: %v", err)
	}

	dst := servertest.New(t, 3, func(cfg *server.Config) {
		var parts []string
		for n, a := range cfg.InitialCluster {
			parts = append(parts, n+"="+a)
		}
		runCmd(t, snapshotCommand(), "restore", file, "--name", cfg.Name, "--data-dir", cfg.DataDir,
			"--initial-cluster", strings.Join(parts, ","), "--initial-cluster-token", cfg.ClusterToken)
	})
	got, err := dst.Client().Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if got.Header.Revision != info.Revision || len(got.Kvs) != len(want.Kvs) {
		t.Fatalf("restored: revision %d, %d keys; want %d, %d", got.Header.Revision, len(got.Kvs), info.Revision, len(want.Kvs))
	}
	for i, w := range want.Kvs {
		g := got.Kvs[i]
		if string(g.Key) != string(w.Key) || string(g.Value) != string(w.Value) || g.ModRevision != w.ModRevision ||
			g.CreateRevision != w.CreateRevision || g.Version != w.Version {
			t.Fatalf("key %d: restored %v, want %v", i, g, w)
		}
	}
	runCmd(t, alarmCommand(), "list", "--endpoints", strings.Join(dst.Endpoints(), ","))
}
