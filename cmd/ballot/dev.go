package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

type devFlags struct {
	dataDir     string
	host        string
	clientPorts []int
	peerPorts   []int
	httpPorts   []int
	tick        time.Duration
}

func devCommand() *cobra.Command {
	var f devFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local three-member cluster (three processes on loopback)",
		Long: `Run a local three-member ballot cluster: three child processes of this
binary on loopback, data in a temporary directory unless --data-dir is given
(then a restart on the same directory comes back with its data). Ctrl-C
stops all three cleanly.`,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDev(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the members' data here (default: a temporary directory, removed on exit)")
	fl.StringVar(&f.host, "host", "127.0.0.1", "address to listen on")
	fl.IntSliceVar(&f.clientPorts, "client-ports", []int{2379, 22379, 32379}, "client ports of the three members")
	fl.IntSliceVar(&f.peerPorts, "peer-ports", []int{2380, 22380, 32380}, "peer ports of the three members")
	fl.IntSliceVar(&f.httpPorts, "http-ports", []int{2381, 22381, 32381}, "HTTP ports (health, status) of the three members")
	fl.DurationVar(&f.tick, "tick", 100*time.Millisecond, "engine tick")
	return cmd
}

func runDev(ctx context.Context, f devFlags) error {
	if len(f.clientPorts) != 3 || len(f.peerPorts) != 3 || len(f.httpPorts) != 3 {
		return errors.New("dev: --client-ports, --peer-ports and --http-ports take three ports each")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("dev: find own binary: %w", err)
	}
	dir := f.dataDir
	if dir == "" {
		dir, err = os.MkdirTemp("", "ballot-dev-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	names := []string{"n1", "n2", "n3"}
	addr := func(p int) string { return net.JoinHostPort(f.host, fmt.Sprint(p)) }
	var initial []string
	for i, n := range names {
		initial = append(initial, n+"="+addr(f.peerPorts[i]))
	}
	// Fail early and clearly if a port is taken.
	for _, ports := range [][]int{f.clientPorts, f.peerPorts, f.httpPorts} {
		for _, p := range ports {
			ln, err := net.Listen("tcp", addr(p))
			if err != nil {
				return fmt.Errorf("dev: port %d is in use (move it with --client-ports/--peer-ports/--http-ports): %w", p, err)
			}
			ln.Close()
		}
	}

	type child struct {
		name string
		cmd  *exec.Cmd
		done chan error
		log  string
	}
	var kids []*child
	stopAll := func() {
		for _, k := range kids {
			if k.cmd.Process != nil {
				k.cmd.Process.Signal(syscall.SIGTERM)
			}
		}
		deadline := time.After(15 * time.Second)
		for _, k := range kids {
			select {
			case <-k.done:
			case <-deadline:
				k.cmd.Process.Kill()
				<-k.done
			}
		}
	}
	for i, n := range names {
		logPath := filepath.Join(dir, n+".log")
		lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			stopAll()
			return err
		}
		c := exec.Command(self, "serve", "--name", n, "--data-dir", filepath.Join(dir, n),
			"--listen-client", addr(f.clientPorts[i]), "--listen-peer", addr(f.peerPorts[i]),
			"--listen-http", addr(f.httpPorts[i]), "--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", "ballot-dev", "--tick", f.tick.String())
		c.Stdout, c.Stderr = lf, lf
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches us, we stop them
		if err := c.Start(); err != nil {
			lf.Close()
			stopAll()
			return fmt.Errorf("dev: start %s: %w", n, err)
		}
		k := &child{name: n, cmd: c, done: make(chan error, 1), log: logPath}
		go func() { k.done <- c.Wait(); lf.Close() }()
		kids = append(kids, k)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)

	// Wait until every member reports a leader.
	ready := make(chan struct{})
	go func() {
		client := &http.Client{Timeout: time.Second}
		for {
			ok := 0
			for i := range names {
				resp, err := client.Get("http://" + addr(f.httpPorts[i]) + "/health")
				if err == nil {
					if resp.StatusCode == http.StatusOK {
						ok++
					}
					resp.Body.Close()
				}
			}
			if ok == len(names) {
				close(ready)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	var endpoints []string
	for _, p := range f.clientPorts {
		endpoints = append(endpoints, addr(p))
	}
	select {
	case <-ready:
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "ballot dev: %s before the cluster was ready; stopping\n", s)
		stopAll()
		return nil
	case <-time.After(30 * time.Second):
		stopAll()
		return fmt.Errorf("dev: the cluster did not elect a leader within 30s; see the logs in %s", dir)
	}
	fmt.Printf("ballot dev: a three-member cluster is up (data in %s)\n\n", dir)
	for i, n := range names {
		fmt.Printf("  %s  client %-16s peer %-16s http http://%s  log %s\n", n, addr(f.clientPorts[i]), addr(f.peerPorts[i]), addr(f.httpPorts[i]), kids[i].log)
	}
	fmt.Printf("\nTry it:\n  etcdctl --endpoints=%s put greeting hello\n  etcdctl --endpoints=%s get greeting\n",
		strings.Join(endpoints, ","), strings.Join(endpoints, ","))
	fmt.Printf("  go run ./cmd/ballot get greeting --endpoints=%s\n\nCtrl-C stops the cluster.\n", strings.Join(endpoints, ","))

	for {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "\nballot dev: %s: stopping the three members\n", s)
			stopAll()
			return nil
		case <-ctx.Done():
			stopAll()
			return nil
		default:
		}
		for _, k := range kids {
			select {
			case err := <-k.done:
				k.done <- err
				stopAll()
				return fmt.Errorf("dev: member %s exited (%v); its log is %s", k.name, err, k.log)
			default:
			}
		}
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "\nballot dev: %s: stopping the three members\n", s)
			stopAll()
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
