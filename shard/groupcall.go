package shard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/ballotdb/ballot/server"
)

// Calls between members of one group. Every member of a sharded host
// publishes the host's client URL, so a member that forwards a request to
// its group's leader (or asks the others for their hashes) reaches the
// leader host's router; it says which group the call is for in the
// ballot-group metadata (server.Config.GroupTag), and the router hands
// the call, whatever its method, to its own member of that group.

// callGroup returns the group a call names, or false if it names none.
func callGroup(ctx context.Context) (uint64, bool, error) {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok || len(md.Get(server.GroupHeader)) == 0 {
		return 0, false, nil
	}
	id, err := strconv.ParseUint(md.Get(server.GroupHeader)[0], 10, 64)
	if err != nil {
		return 0, true, status.Errorf(codes.InvalidArgument, "ballot: bad %s metadata", server.GroupHeader)
	}
	return id, true, nil
}

// messageTypes returns new request and response messages of a method
// ("/etcdserverpb.KV/Range"), from the protobuf registry.
func messageTypes(fullMethod string) (in, out proto.Message, err error) {
	svc, method, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if !ok {
		return nil, nil, fmt.Errorf("bad method %q", fullMethod)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
	if err != nil {
		return nil, nil, err
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, nil, fmt.Errorf("%s is not a service", svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	if md == nil {
		return nil, nil, fmt.Errorf("no method %s", fullMethod)
	}
	it, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		return nil, nil, err
	}
	ot, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, nil, err
	}
	return it.New().Interface(), ot.New().Interface(), nil
}

// groupUnary hands a unary call naming a group to this host's member.
func (h *Host) groupUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
	id, named, err := callGroup(ctx)
	if !named || err != nil {
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
	g := h.group(id)
	if g == nil {
		return nil, errNotHere
	}
	_, out, err := messageTypes(info.FullMethod)
	if err != nil {
		return nil, status.Errorf(codes.Unimplemented, "ballot: %v", err)
	}
	if err := g.conn.Invoke(ctx, info.FullMethod, req, out); err != nil {
		return nil, err
	}
	return out, nil
}

// groupStream hands a stream naming a group to this host's member,
// relaying messages both ways until either side ends.
func (h *Host) groupStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, next grpc.StreamHandler) error {
	id, named, err := callGroup(ss.Context())
	if !named || err != nil {
		if err != nil {
			return err
		}
		return next(srv, ss)
	}
	g := h.group(id)
	if g == nil {
		return errNotHere
	}
	if _, _, err := messageTypes(info.FullMethod); err != nil {
		return status.Errorf(codes.Unimplemented, "ballot: %v", err)
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	cs, err := g.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: info.IsServerStream, ClientStreams: info.IsClientStream}, info.FullMethod)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { // client → member
		for {
			in, _, _ := messageTypes(info.FullMethod)
			if err := ss.RecvMsg(in); err != nil {
				if errors.Is(err, io.EOF) {
					errc <- cs.CloseSend()
					return
				}
				errc <- err
				return
			}
			if err := cs.SendMsg(in); err != nil {
				errc <- err
				return
			}
		}
	}()
	for { // member → client
		_, out, _ := messageTypes(info.FullMethod)
		if err := cs.RecvMsg(out); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(out); err != nil {
			return err
		}
		select {
		case err := <-errc:
			if err != nil {
				return err
			}
		default:
		}
	}
}
