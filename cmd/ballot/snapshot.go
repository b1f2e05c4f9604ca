package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/server"
)

// snapshotCommand is ballot snapshot save, status and restore: backups as
// etcdctl snapshot save and etcdutl snapshot status/restore make them.
func snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Save a backup of a running cluster, inspect one, restore one into a new cluster"}
	cmd.AddCommand(snapshotSaveCommand(), snapshotStatusCommand(), snapshotRestoreCommand())
	return cmd
}

func snapshotSaveCommand() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{
		Use:   "save FILE",
		Short: "Stream a backup from one member (the first of --endpoints) into FILE",
		Long: `Stream a backup of one member's state (the first of --endpoints) into FILE.

The backup is written to FILE.part, its SHA-256 and contents are verified,
and only then is it renamed to FILE. A progress bar goes to stderr. The file
is the one etcdctl snapshot save writes from ballot too.`,
		Example: `  ballot snapshot save --endpoints 127.0.0.1:2379 /backup/ballot-$(date +%Y%m%d-%H%M%S).snap`,
		Args:    cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if f.output != "table" && f.output != "json" {
				return fmt.Errorf("-o %q: want table or json", f.output)
			}
			f.endpoints = f.endpoints[:min(len(f.endpoints), 1)]
			c, err := f.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			info, err := saveSnapshot(ctx, c, args[0], os.Stderr)
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(backupJSON(args[0], info))
			}
			fmt.Printf("Snapshot saved at %s (revision %d, %d keys, %s, sha256 %x)\n",
				args[0], info.Revision, info.Keys, sizeString(info.SizeBytes), info.SHA256)
			return nil
		},
	}
	addClientFlags(cmd, &f)
	return cmd
}

// saveSnapshot streams a backup into path (through path.part), verifies
// it and returns what it holds. Progress goes to progress.
func saveSnapshot(ctx context.Context, c *clientv3.Client, path string, progress io.Writer) (*server.BackupInfo, error) {
	stream, err := pb.NewMaintenanceClient(c.ActiveConnection()).Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	part := path + ".part"
	fh, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	done := false
	defer func() {
		if !done {
			fh.Close()
			os.Remove(part)
		}
	}()
	bar := newProgressBar(progress)
	var received, total int64
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot: after %d bytes: %w", received, err)
		}
		if total == 0 {
			total = int64(len(m.Blob)) + int64(m.RemainingBytes) + sha256.Size
		}
		if _, err := fh.Write(m.Blob); err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		received += int64(len(m.Blob))
		bar.update(received, total)
	}
	bar.finish(received)
	if err := fh.Sync(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if err := fh.Close(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	b, err := os.ReadFile(part)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	_, info, err := server.ReadBackup(b) // checks the sha256, the trailer and the store's CRC
	if err != nil {
		return nil, fmt.Errorf("snapshot: %s is not a good backup: %w", part, err)
	}
	if err := os.Rename(part, path); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	done = true
	return info, nil
}

func snapshotStatusCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status FILE",
		Short: "Verify a backup file and show its revision, keys, size and hash",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			_, info, err := server.ReadBackup(b)
			if err != nil {
				return err
			}
			switch output {
			case "json":
				return printJSON(backupJSON(args[0], info))
			case "table":
			default:
				return fmt.Errorf("-o %q: want table or json", output)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HASH\tREVISION\tCOMPACT REVISION\tKEYS\tENTRIES\tLEASES\tDATA SIZE\tFILE SIZE")
			fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", info.Hash, info.Revision, info.CompactRevision, info.Keys,
				info.Entries, info.Leases, sizeString(info.Bytes), sizeString(info.SizeBytes))
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func backupJSON(path string, info *server.BackupInfo) map[string]any {
	return map[string]any{"file": path, "hash": info.Hash, "revision": info.Revision, "compact_revision": info.CompactRevision,
		"keys": info.Keys, "entries": info.Entries, "leases": info.Leases, "data_bytes": info.Bytes, "file_bytes": info.SizeBytes,
		"sha256": fmt.Sprintf("%x", info.SHA256)}
}

func snapshotRestoreCommand() *cobra.Command {
	var dataDir, name, initialCluster, token string
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Build a new member's data directory from a backup (run once per member)",
		Long: `Build the data directory of one member of a new cluster from a backup, as
etcdutl snapshot restore does for etcd. The backup's checksum is verified
first. Run it for every member with the same FILE, --initial-cluster and
--initial-cluster-token, then start each member with ballot serve and the same
--name, --data-dir, --initial-cluster and --initial-cluster-token: the new
cluster holds every key, revision and lease of the backup. Give the new
cluster a token of its own, so it cannot be mistaken for the old one.`,
		Example: `  ballot snapshot restore backup.snap --name n1 --data-dir /var/lib/ballot/n1 \
    --initial-cluster n1=10.0.0.1:2380,n2=10.0.0.2:2380,n3=10.0.0.3:2380 \
    --initial-cluster-token restored-1`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if name == "" || dataDir == "" || initialCluster == "" {
				return errors.New("snapshot restore: --name, --data-dir and --initial-cluster are required")
			}
			initial, err := parseCluster(initialCluster)
			if err != nil {
				return err
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			info, err := server.RestoreDataDir(context.Background(), server.RestoreConfig{Backup: b, DataDir: dataDir,
				Name: name, InitialCluster: initial, ClusterToken: token})
			if err != nil {
				return err
			}
			abs, _ := filepath.Abs(dataDir)
			fmt.Printf("Restored member %s (%x) of cluster %x into %s: revision %d, %d keys\n", name,
				server.MemberIDFor(token, initial[name]), server.ClusterIDFor(token), abs, info.Revision, info.Keys)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dataDir, "data-dir", "", "the new member's data directory; must not exist or be empty (required)")
	fl.StringVar(&name, "name", "", "the new member's name, as in --initial-cluster (required)")
	fl.StringVar(&initialCluster, "initial-cluster", "", "every member of the new cluster: name=host:port,... (peer addresses; required)")
	fl.StringVar(&token, "initial-cluster-token", "ballot-cluster", "the new cluster's token; member and cluster IDs derive from it")
	return cmd
}

// progressBar draws a transfer's progress on a terminal, and only a final
// line elsewhere.
type progressBar struct {
	w     io.Writer
	tty   bool
	start time.Time
	last  time.Time
}

func newProgressBar(w io.Writer) *progressBar {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progressBar{w: w, tty: tty, start: time.Now()}
}

const progressWidth = 30

func (p *progressBar) update(done, total int64) {
	if p.w == nil || !p.tty || time.Since(p.last) < 100*time.Millisecond {
		return
	}
	p.last = time.Now()
	frac := 1.0
	if total > 0 {
		frac = min(float64(done)/float64(total), 1)
	}
	n := int(frac * progressWidth)
	fmt.Fprintf(p.w, "\r[%s%s] %3.0f%% %s / %s", strings.Repeat("=", n), strings.Repeat(" ", progressWidth-n),
		100*frac, sizeString(done), sizeString(total))
}

func (p *progressBar) finish(done int64) {
	if p.w == nil {
		return
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r[%s] 100%% %s / %s\n", strings.Repeat("=", progressWidth), sizeString(done), sizeString(done))
	}
	fmt.Fprintf(p.w, "received %s in %v\n", sizeString(done), time.Since(p.start).Round(time.Millisecond))
}

// sizeString formats a byte count with a binary unit.
func sizeString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
