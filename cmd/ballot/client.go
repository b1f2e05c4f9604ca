package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// clientFlags are shared by the client commands.
type clientFlags struct {
	endpoints   []string
	dialTimeout time.Duration
	timeout     time.Duration
	output      string
	// TLS, as etcdctl's flags of the same names.
	cacert, cert, key     string
	insecureSkipTLSVerify bool
}

func addClientFlags(cmd *cobra.Command, f *clientFlags) {
	fl := cmd.PersistentFlags()
	fl.StringSliceVar(&f.endpoints, "endpoints", []string{"127.0.0.1:2379", "127.0.0.1:22379", "127.0.0.1:32379"}, "client endpoints")
	fl.DurationVar(&f.dialTimeout, "dial-timeout", 3*time.Second, "dial timeout")
	fl.DurationVar(&f.timeout, "command-timeout", 10*time.Second, "timeout of one request")
	fl.StringVarP(&f.output, "output", "o", "table", "table or json")
	fl.StringVar(&f.cacert, "cacert", "", "verify the server with this CA bundle (PEM); turns TLS on")
	fl.StringVar(&f.cert, "cert", "", "client certificate (PEM) for client-cert-auth; turns TLS on")
	fl.StringVar(&f.key, "key", "", "private key (PEM) of --cert")
	fl.BoolVar(&f.insecureSkipTLSVerify, "insecure-skip-tls-verify", false, "TLS without verifying the server's certificate (testing only)")
}

// tlsConfig is the TLS to dial with, or nil for plain text: TLS is on when
// a TLS flag is given or an endpoint is https://.
func (f *clientFlags) tlsConfig() (*tls.Config, error) {
	on := f.cacert != "" || f.cert != "" || f.key != "" || f.insecureSkipTLSVerify
	for _, e := range f.endpoints {
		on = on || strings.HasPrefix(e, "https://")
	}
	if !on {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: f.insecureSkipTLSVerify}
	if f.cacert != "" {
		pem, err := os.ReadFile(f.cacert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate in it", f.cacert)
		}
	}
	if (f.cert == "") != (f.key == "") {
		return nil, errors.New("--cert and --key go together")
	}
	if f.cert != "" {
		c, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

func (f *clientFlags) client() (*clientv3.Client, error) {
	eps := make([]string, len(f.endpoints))
	for i, e := range f.endpoints {
		eps[i] = stripScheme(e)
	}
	tlsCfg, err := f.tlsConfig()
	if err != nil {
		return nil, err
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: f.dialTimeout, TLS: tlsCfg, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", strings.Join(eps, ","), err)
	}
	return c, nil
}

func (f *clientFlags) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), f.timeout)
}

// clientCommands returns put, get, del, txn, watch and lease.
func clientCommands() []*cobra.Command {
	var f clientFlags
	withClient := func(run func(c *clientv3.Client, args []string) error) func(*cobra.Command, []string) error {
		return func(_ *cobra.Command, args []string) error {
			if f.output != "table" && f.output != "json" {
				return fmt.Errorf("-o %q: want table or json", f.output)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			defer c.Close()
			return run(c, args)
		}
	}

	var putLease string
	var putPrev bool
	put := &cobra.Command{
		Use: "put KEY VALUE", Short: "Write a key", Args: cobra.ExactArgs(2),
		RunE: withClient(func(c *clientv3.Client, a []string) error {
			var opts []clientv3.OpOption
			if putLease != "" {
				id, err := strconv.ParseInt(putLease, 16, 64)
				if err != nil {
					return fmt.Errorf("--lease %q: want a hexadecimal lease ID", putLease)
				}
				opts = append(opts, clientv3.WithLease(clientv3.LeaseID(id)))
			}
			if putPrev {
				opts = append(opts, clientv3.WithPrevKV())
			}
			ctx, cancel := f.ctx()
			defer cancel()
			resp, err := c.Put(ctx, a[0], a[1], opts...)
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(map[string]any{"revision": resp.Header.Revision, "prev_kv": kvJSON(resp.PrevKv)})
			}
			fmt.Printf("OK (revision %d)\n", resp.Header.Revision)
			if resp.PrevKv != nil {
				printKVs([]*mvccpb.KeyValue{resp.PrevKv})
			}
			return nil
		}),
	}
	put.Flags().StringVar(&putLease, "lease", "", "attach to this lease (hex ID)")
	put.Flags().BoolVar(&putPrev, "prev-kv", false, "print the previous value")

	var getPrefix, getKeysOnly, getCount, getSerial bool
	var getRev, getLimit int64
	get := &cobra.Command{
		Use: "get KEY [RANGE_END]", Short: "Read a key, a range or a prefix", Args: cobra.RangeArgs(1, 2),
		RunE: withClient(func(c *clientv3.Client, a []string) error {
			var opts []clientv3.OpOption
			switch {
			case getPrefix:
				opts = append(opts, clientv3.WithPrefix())
			case len(a) == 2:
				opts = append(opts, clientv3.WithRange(a[1]))
			}
			if getRev > 0 {
				opts = append(opts, clientv3.WithRev(getRev))
			}
			if getLimit > 0 {
				opts = append(opts, clientv3.WithLimit(getLimit))
			}
			if getKeysOnly {
				opts = append(opts, clientv3.WithKeysOnly())
			}
			if getCount {
				opts = append(opts, clientv3.WithCountOnly())
			}
			if getSerial {
				opts = append(opts, clientv3.WithSerializable())
			}
			ctx, cancel := f.ctx()
			defer cancel()
			resp, err := c.Get(ctx, a[0], opts...)
			if err != nil {
				return err
			}
			if f.output == "json" {
				var kvs []any
				for _, kv := range resp.Kvs {
					kvs = append(kvs, kvJSON(kv))
				}
				return printJSON(map[string]any{"revision": resp.Header.Revision, "count": resp.Count, "more": resp.More, "kvs": kvs})
			}
			if getCount {
				fmt.Println(resp.Count)
				return nil
			}
			printKVs(resp.Kvs)
			return nil
		}),
	}
	get.Flags().BoolVar(&getPrefix, "prefix", false, "every key with KEY as prefix")
	get.Flags().Int64Var(&getRev, "rev", 0, "read at this revision")
	get.Flags().Int64Var(&getLimit, "limit", 0, "at most this many keys")
	get.Flags().BoolVar(&getKeysOnly, "keys-only", false, "keys without values")
	get.Flags().BoolVar(&getCount, "count-only", false, "only the count")
	get.Flags().BoolVar(&getSerial, "consistency-serializable", false, "serve from the member's local state")

	var delPrefix, delPrev bool
	del := &cobra.Command{
		Use: "del KEY [RANGE_END]", Short: "Delete a key, a range or a prefix", Args: cobra.RangeArgs(1, 2),
		RunE: withClient(func(c *clientv3.Client, a []string) error {
			var opts []clientv3.OpOption
			switch {
			case delPrefix:
				opts = append(opts, clientv3.WithPrefix())
			case len(a) == 2:
				opts = append(opts, clientv3.WithRange(a[1]))
			}
			if delPrev {
				opts = append(opts, clientv3.WithPrevKV())
			}
			ctx, cancel := f.ctx()
			defer cancel()
			resp, err := c.Delete(ctx, a[0], opts...)
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(map[string]any{"revision": resp.Header.Revision, "deleted": resp.Deleted})
			}
			fmt.Println(resp.Deleted)
			if delPrev {
				printKVs(resp.PrevKvs)
			}
			return nil
		}),
	}
	del.Flags().BoolVar(&delPrefix, "prefix", false, "every key with KEY as prefix")
	del.Flags().BoolVar(&delPrev, "prev-kv", false, "print the deleted keys")

	var txnFile string
	txn := &cobra.Command{
		Use:   "txn",
		Short: "Run a transaction read from stdin (or --file), in etcdctl's format",
		Long: `Run a transaction in etcdctl's format: compares, a blank line, the
operations if they hold, a blank line, the operations otherwise.

  value("k") = "v"
  mod("k") > 3

  put k v2
  del other

  get k`,
		RunE: withClient(func(c *clientv3.Client, _ []string) error {
			in := io.Reader(os.Stdin)
			if txnFile != "" {
				fh, err := os.Open(txnFile)
				if err != nil {
					return err
				}
				defer fh.Close()
				in = fh
			}
			t, err := parseTxn(in)
			if err != nil {
				return err
			}
			ctx, cancel := f.ctx()
			defer cancel()
			resp, err := c.Txn(ctx).If(t.cmps...).Then(t.thenOps...).Else(t.elseOps...).Commit()
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(map[string]any{"revision": resp.Header.Revision, "succeeded": resp.Succeeded})
			}
			if resp.Succeeded {
				fmt.Println("SUCCESS")
			} else {
				fmt.Println("FAILURE")
			}
			for _, r := range resp.Responses {
				switch {
				case r.GetResponseRange() != nil:
					printKVs(r.GetResponseRange().Kvs)
				case r.GetResponsePut() != nil:
					fmt.Println("OK")
				case r.GetResponseDeleteRange() != nil:
					fmt.Println(r.GetResponseDeleteRange().Deleted)
				}
			}
			return nil
		}),
	}
	txn.Flags().StringVar(&txnFile, "file", "", "read the transaction from this file")

	var watchPrefix, watchPrev bool
	var watchRev int64
	watch := &cobra.Command{
		Use: "watch KEY [RANGE_END]", Short: "Print every change to a key, range or prefix until Ctrl-C", Args: cobra.RangeArgs(1, 2),
		RunE: withClient(func(c *clientv3.Client, a []string) error {
			var opts []clientv3.OpOption
			switch {
			case watchPrefix:
				opts = append(opts, clientv3.WithPrefix())
			case len(a) == 2:
				opts = append(opts, clientv3.WithRange(a[1]))
			}
			if watchRev > 0 {
				opts = append(opts, clientv3.WithRev(watchRev))
			}
			if watchPrev {
				opts = append(opts, clientv3.WithPrevKV())
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			for wr := range c.Watch(clientv3.WithRequireLeader(ctx), a[0], opts...) {
				if err := wr.Err(); err != nil {
					return err
				}
				for _, ev := range wr.Events {
					if f.output == "json" {
						printJSON(map[string]any{"type": ev.Type.String(), "kv": kvJSON(ev.Kv), "prev_kv": kvJSON(ev.PrevKv)})
						continue
					}
					fmt.Printf("%s %s (revision %d)\n", ev.Type, ev.Kv.Key, ev.Kv.ModRevision)
					if ev.Type == mvccpb.PUT {
						fmt.Println(string(ev.Kv.Value))
					}
				}
			}
			return nil
		}),
	}
	watch.Flags().BoolVar(&watchPrefix, "prefix", false, "every key with KEY as prefix")
	watch.Flags().Int64Var(&watchRev, "rev", 0, "start at this revision")
	watch.Flags().BoolVar(&watchPrev, "prev-kv", false, "include the previous value")

	lease := &cobra.Command{Use: "lease", Short: "Grant, revoke, keep alive and list leases"}
	lease.AddCommand(
		&cobra.Command{Use: "grant TTL", Short: "Grant a lease of TTL seconds", Args: cobra.ExactArgs(1),
			RunE: withClient(func(c *clientv3.Client, a []string) error {
				ttl, err := strconv.ParseInt(a[0], 10, 64)
				if err != nil {
					return fmt.Errorf("TTL %q: %w", a[0], err)
				}
				ctx, cancel := f.ctx()
				defer cancel()
				resp, err := c.Grant(ctx, ttl)
				if err != nil {
					return err
				}
				if f.output == "json" {
					return printJSON(map[string]any{"id": fmt.Sprintf("%x", int64(resp.ID)), "ttl": resp.TTL})
				}
				fmt.Printf("lease %x granted with TTL(%ds)\n", int64(resp.ID), resp.TTL)
				return nil
			})},
		&cobra.Command{Use: "revoke ID", Short: "Revoke a lease (hex ID), deleting its keys", Args: cobra.ExactArgs(1),
			RunE: withClient(func(c *clientv3.Client, a []string) error {
				id, err := strconv.ParseInt(a[0], 16, 64)
				if err != nil {
					return fmt.Errorf("lease ID %q: want hexadecimal", a[0])
				}
				ctx, cancel := f.ctx()
				defer cancel()
				if _, err := c.Revoke(ctx, clientv3.LeaseID(id)); err != nil {
					return err
				}
				fmt.Printf("lease %x revoked\n", id)
				return nil
			})},
		&cobra.Command{Use: "keep-alive ID", Short: "Keep a lease (hex ID) alive until Ctrl-C", Args: cobra.ExactArgs(1),
			RunE: withClient(func(c *clientv3.Client, a []string) error {
				id, err := strconv.ParseInt(a[0], 16, 64)
				if err != nil {
					return fmt.Errorf("lease ID %q: want hexadecimal", a[0])
				}
				ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
				defer stop()
				ch, err := c.KeepAlive(ctx, clientv3.LeaseID(id))
				if err != nil {
					return err
				}
				for r := range ch {
					fmt.Printf("lease %x keepalived with TTL(%d)\n", int64(r.ID), r.TTL)
				}
				if ctx.Err() == nil {
					return fmt.Errorf("lease %x expired or was revoked", id)
				}
				return nil
			})},
		&cobra.Command{Use: "list", Short: "List the leases", Args: cobra.NoArgs,
			RunE: withClient(func(c *clientv3.Client, _ []string) error {
				ctx, cancel := f.ctx()
				defer cancel()
				resp, err := c.Leases(ctx)
				if err != nil {
					return err
				}
				var ids []string
				for _, l := range resp.Leases {
					ids = append(ids, fmt.Sprintf("%x", int64(l.ID)))
				}
				if f.output == "json" {
					return printJSON(map[string]any{"leases": ids})
				}
				fmt.Printf("found %d leases\n", len(ids))
				for _, id := range ids {
					fmt.Println(id)
				}
				return nil
			})},
	)
	cmds := []*cobra.Command{put, get, del, txn, watch, lease}
	for _, c := range cmds {
		addClientFlags(c, &f)
	}
	return cmds
}

func kvJSON(kv *mvccpb.KeyValue) any {
	if kv == nil {
		return nil
	}
	return map[string]any{"key": string(kv.Key), "value": string(kv.Value), "create_revision": kv.CreateRevision,
		"mod_revision": kv.ModRevision, "version": kv.Version, "lease": fmt.Sprintf("%x", kv.Lease)}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(v)
}

func printKVs(kvs []*mvccpb.KeyValue) {
	if len(kvs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVALUE\tVERSION\tMOD REV\tCREATE REV\tLEASE")
	for _, kv := range kvs {
		lease := "-"
		if kv.Lease != 0 {
			lease = fmt.Sprintf("%x", kv.Lease)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", kv.Key, kv.Value, kv.Version, kv.ModRevision, kv.CreateRevision, lease)
	}
	tw.Flush()
}

// txnSpec is a parsed transaction.
type txnSpec struct {
	cmps    []clientv3.Cmp
	thenOps []clientv3.Op
	elseOps []clientv3.Op
}

// parseTxn reads etcdctl's transaction format: compares, blank line,
// success ops, blank line, failure ops.
func parseTxn(r io.Reader) (*txnSpec, error) {
	sc := bufio.NewScanner(r)
	t := &txnSpec{}
	section := 0
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			section++
			if section > 2 {
				break
			}
			continue
		}
		var err error
		switch section {
		case 0:
			var c clientv3.Cmp
			c, err = parseCompare(s)
			t.cmps = append(t.cmps, c)
		case 1, 2:
			var op clientv3.Op
			op, err = parseOp(s)
			if section == 1 {
				t.thenOps = append(t.thenOps, op)
			} else {
				t.elseOps = append(t.elseOps, op)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("txn line %d: %w", line, err)
		}
	}
	return t, sc.Err()
}

// parseCompare parses target("key") op value, e.g. value("k") = "v".
func parseCompare(s string) (clientv3.Cmp, error) {
	open, close := strings.Index(s, "("), strings.Index(s, ")")
	if open < 0 || close < open {
		return clientv3.Cmp{}, fmt.Errorf("compare %q: want target(\"key\") op value", s)
	}
	target := strings.TrimSpace(s[:open])
	key, err := unquote(strings.TrimSpace(s[open+1 : close]))
	if err != nil {
		return clientv3.Cmp{}, err
	}
	rest := strings.Fields(strings.TrimSpace(s[close+1:]))
	if len(rest) < 2 {
		return clientv3.Cmp{}, fmt.Errorf("compare %q: missing operator or value", s)
	}
	op := rest[0]
	if op != "=" && op != "!=" && op != "<" && op != ">" {
		return clientv3.Cmp{}, fmt.Errorf("compare %q: operator %q is not one of = != < >", s, op)
	}
	val := strings.Join(rest[1:], " ")
	var cmp clientv3.Cmp
	switch target {
	case "value", "val":
		v, err := unquote(val)
		if err != nil {
			return clientv3.Cmp{}, err
		}
		return clientv3.Compare(clientv3.Value(key), op, v), nil
	case "ver", "version":
		cmp = clientv3.Version(key)
	case "c", "create":
		cmp = clientv3.CreateRevision(key)
	case "m", "mod":
		cmp = clientv3.ModRevision(key)
	case "lease":
		id, err := strconv.ParseInt(val, 16, 64)
		if err != nil {
			return clientv3.Cmp{}, fmt.Errorf("compare %q: lease %q: want hexadecimal", s, val)
		}
		return clientv3.Compare(clientv3.LeaseValue(key), op, id), nil
	default:
		return clientv3.Cmp{}, fmt.Errorf("compare %q: target %q is not value, version, create, mod or lease", s, target)
	}
	n, err := strconv.ParseInt(val, 10, 64)
	if err != nil {
		return clientv3.Cmp{}, fmt.Errorf("compare %q: %q is not a number", s, val)
	}
	return clientv3.Compare(cmp, op, n), nil
}

func parseOp(s string) (clientv3.Op, error) {
	f := strings.Fields(s)
	switch {
	case len(f) >= 3 && f[0] == "put":
		return clientv3.OpPut(f[1], strings.Join(f[2:], " ")), nil
	case len(f) == 2 && f[0] == "get":
		return clientv3.OpGet(f[1]), nil
	case len(f) == 3 && f[0] == "get" && f[2] == "--prefix":
		return clientv3.OpGet(f[1], clientv3.WithPrefix()), nil
	case len(f) == 2 && f[0] == "del":
		return clientv3.OpDelete(f[1]), nil
	case len(f) == 3 && f[0] == "del" && f[2] == "--prefix":
		return clientv3.OpDelete(f[1], clientv3.WithPrefix()), nil
	}
	return clientv3.Op{}, fmt.Errorf("operation %q: want put KEY VALUE, get KEY [--prefix] or del KEY [--prefix]", s)
}

func unquote(s string) (string, error) {
	if strings.HasPrefix(s, `"`) {
		return strconv.Unquote(s)
	}
	return s, nil
}
