package server

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.etcd.io/etcd/api/v3/etcdserverpb/gw"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
)

// gateway is etcd's JSON gateway: etcd's own generated grpc-gateway
// handlers (go.etcd.io/etcd/api/v3/etcdserverpb/gw) with etcd's marshaler
// settings, so POST /v3/kv/put, /v3/kv/range, /v3/watch, /v3/lease/grant,
// /v3/maintenance/status, /v3/cluster/member/list and the rest take and
// give the JSON etcd's do: proto field names, bytes as base64, 64-bit
// integers as strings, errors as {"code": <gRPC code>, "message": ...}
// with the HTTP status grpc-gateway maps the code to.
//
// Each request is a gRPC call to this member's grpc.Server over an
// in-memory connection (see front), so it passes through the same
// validation, limits and error mapping as a gRPC client's.
type gateway struct {
	conn         *grpc.ClientConn
	mux          *runtime.ServeMux
	maxBodyBytes int64
}

// newGateway registers the handlers on a connection made with dial.
// maxMsgBytes is the largest gRPC request the server takes; a request
// body may be up to twice that, for base64 and JSON.
func newGateway(dial func(context.Context, string) (net.Conn, error), maxMsgBytes int) (*gateway, error) {
	conn, err := grpc.NewClient("passthrough:///ballot-local",
		grpc.WithContextDialer(dial),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(math.MaxInt32), grpc.MaxCallSendMsgSize(maxMsgBytes)),
	)
	if err != nil {
		return nil, fmt.Errorf("server: gateway connection: %w", err)
	}
	// As etcd's server/embed/serve.go registerGateway.
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.HTTPBodyMarshaler{
			Marshaler: &runtime.JSONPb{
				MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: false},
				UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
			},
		}),
	)
	for _, register := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		gw.RegisterKVHandler, gw.RegisterWatchHandler, gw.RegisterLeaseHandler,
		gw.RegisterClusterHandler, gw.RegisterMaintenanceHandler, gw.RegisterAuthHandler,
	} {
		if err := register(context.Background(), mux, conn); err != nil {
			conn.Close()
			return nil, fmt.Errorf("server: gateway: %w", err)
		}
	}
	return &gateway{conn: conn, mux: mux, maxBodyBytes: 2 * int64(maxMsgBytes)}, nil
}

// ServeHTTP serves one JSON request.
func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// As etcd: /v3beta/ is an old name of /v3/.
	if rest, ok := strings.CutPrefix(r.URL.Path, "/v3beta/"); ok {
		r.URL.Path = "/v3/" + rest
	}
	body := io.ReadCloser(http.MaxBytesReader(w, r.Body, g.maxBodyBytes))
	if r.URL.Path == "/v3/watch" {
		// A watch lives as long as its HTTP request, as etcd's: the
		// gateway half-closes the gRPC stream when the body ends, and
		// ballot's Watch ends a stream its client half-closed.
		body = &heldOpenBody{ReadCloser: body, done: r.Context().Done()}
	}
	r.Body = body
	g.mux.ServeHTTP(w, r)
}

func (g *gateway) close() { g.conn.Close() }

// heldOpenBody reads a request body and then, instead of io.EOF, waits
// until done is closed.
type heldOpenBody struct {
	io.ReadCloser
	done <-chan struct{}
}

func (b *heldOpenBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		if n > 0 {
			return n, nil
		}
		<-b.done
	}
	return n, err
}
