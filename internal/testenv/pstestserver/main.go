// Command pstestserver runs pstest, the fake Pub/Sub server of
// cloud.google.com/go/pubsub/v2/pstest, in its own process, so that the
// tests of a -race test binary do not run pstest's own data races, and a
// benchmark is not charged the server's CPU. It prints "ADDR host:port" once
// it serves, and runs until its standard input closes or it is signalled.
//
//	pstestserver [-addr 127.0.0.1:0] [-fail-publish-attr NAME]
//
// -fail-publish-attr NAME makes the server refuse (PERMISSION_DENIED) every
// Publish request holding a message with the attribute NAME, so a test can
// make chosen publishes fail.
//
// # Dead letters
//
// pstest (v2.9.0) dead-letters a message by publishing it to the
// dead-letter topic and then "acking" it by message ID, which matches none
// of its ack IDs: the message stays in the subscription and is forwarded
// again on every delivery tick (about 100 copies a second) until the
// subscription is deleted, and on a subscription with message ordering it
// stays at the head of its ordering key, so that no later message of that
// key is ever delivered. The real service forwards a dead letter once and
// moves on to the key's next message.
//
// pstestserver serves pstest's services through its own gRPC server, which
// fixes that for a message nacked on its last delivery attempt (the
// attempt in its ack ID reaches the subscription's MaxDeliveryAttempts):
// instead of passing the nack on, it publishes the message (data,
// attributes, ordering key) to the dead-letter topic and acks it with its
// ack ID, once. A message whose lease runs out on its last attempt (its
// consumer died) still meets pstest's own forwarding.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	failAttr := flag.String("fail-publish-attr", "", "refuse Publish requests holding a message with this attribute")
	flag.Parse()

	var opts []pstest.ServerReactorOption
	if *failAttr != "" {
		opts = append(opts, pstest.ServerReactorOption{FuncName: "Publish", Reactor: failPublish(*failAttr)})
	}
	// pstest listens on a port of its own, which nobody is told about:
	// clients come through srv below.
	ps, err := newServer("127.0.0.1:0", opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pstestserver:", err)
		os.Exit(1)
	}
	defer ps.Close()
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pstestserver:", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	pb.RegisterPublisherServer(srv, &ps.GServer)
	pb.RegisterSubscriberServer(srv, &deadLetters{&ps.GServer, ps})
	pb.RegisterSchemaServiceServer(srv, &ps.GServer)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	fmt.Println("ADDR", lis.Addr())

	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-done:
	case <-sig:
	}
}

// newServer starts pstest, turning its panic on a listen failure into an
// error.
func newServer(addr string, opts []pstest.ServerReactorOption) (srv *pstest.Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	return pstest.NewServerWithAddress(addr, opts...), nil
}

// failPublish refuses Publish requests holding a message with its attribute.
type failPublish string

func (f failPublish) React(req any) (bool, any, error) {
	if r, ok := req.(*pb.PublishRequest); ok {
		for _, m := range r.Messages {
			if _, found := m.Attributes[string(f)]; found {
				return true, nil, status.Errorf(codes.PermissionDenied, "pstestserver: refused: a message carries attribute %s", string(f))
			}
		}
	}
	return false, nil, nil
}

// deadLetters is pstest's Subscriber service with dead letters forwarded
// once (see the package doc): nacks on a message's last attempt, sent by
// ModifyAckDeadline or on the stream, become a publish to the dead-letter
// topic and an ack.
type deadLetters struct {
	*pstest.GServer
	srv *pstest.Server
}

func (d *deadLetters) ModifyAckDeadline(ctx context.Context, req *pb.ModifyAckDeadlineRequest) (*emptypb.Empty, error) {
	if req.AckDeadlineSeconds == 0 {
		var rest []string
		for _, id := range req.AckIds {
			if !d.forward(ctx, req.Subscription, id) {
				rest = append(rest, id)
			}
		}
		if len(rest) == 0 {
			return &emptypb.Empty{}, nil
		}
		req.AckIds = rest
	}
	return d.GServer.ModifyAckDeadline(ctx, req)
}

func (d *deadLetters) StreamingPull(stream pb.Subscriber_StreamingPullServer) error {
	return d.GServer.StreamingPull(&nackStream{Subscriber_StreamingPullServer: stream, d: d})
}

// nackStream forwards the dead letters nacked on a stream.
type nackStream struct {
	pb.Subscriber_StreamingPullServer
	d   *deadLetters
	sub string
}

func (s *nackStream) Recv() (*pb.StreamingPullRequest, error) {
	req, err := s.Subscriber_StreamingPullServer.Recv()
	if err != nil {
		return nil, err
	}
	if req.Subscription != "" {
		s.sub = req.Subscription
	}
	if len(req.ModifyDeadlineAckIds) == len(req.ModifyDeadlineSeconds) {
		ids, secs := req.ModifyDeadlineAckIds[:0:0], req.ModifyDeadlineSeconds[:0:0]
		for i, id := range req.ModifyDeadlineAckIds {
			if req.ModifyDeadlineSeconds[i] == 0 && s.d.forward(s.Context(), s.sub, id) {
				continue
			}
			ids, secs = append(ids, id), append(secs, req.ModifyDeadlineSeconds[i])
		}
		req.ModifyDeadlineAckIds, req.ModifyDeadlineSeconds = ids, secs
	}
	return req, nil
}

// forward dead-letters the message of ackID, nacked on subscription sub,
// when that was its last attempt, and reports whether it did. pstest's ack
// IDs are "MESSAGE_ID:DELIVERIES".
func (d *deadLetters) forward(ctx context.Context, sub, ackID string) bool {
	i := strings.LastIndexByte(ackID, ':')
	if i < 0 {
		return false
	}
	attempt, err := strconv.Atoi(ackID[i+1:])
	if err != nil {
		return false
	}
	s, err := d.GServer.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: sub})
	if err != nil {
		return false
	}
	dlp := s.GetDeadLetterPolicy()
	if dlp == nil || dlp.GetDeadLetterTopic() == "" || attempt < int(dlp.GetMaxDeliveryAttempts()) {
		return false
	}
	m := d.srv.Message(ackID[:i])
	if m == nil {
		return false
	}
	if _, err := d.GServer.Publish(ctx, &pb.PublishRequest{Topic: dlp.GetDeadLetterTopic(), Messages: []*pb.PubsubMessage{{
		Data: m.Data, Attributes: maps.Clone(m.Attributes), OrderingKey: m.OrderingKey,
	}}}); err != nil {
		fmt.Fprintf(os.Stderr, "pstestserver: dead-lettering %s to %s: %v (left to pstest)\n", ackID, dlp.GetDeadLetterTopic(), err)
		return false
	}
	if _, err := d.GServer.Acknowledge(ctx, &pb.AcknowledgeRequest{Subscription: sub, AckIds: []string{ackID}}); err != nil {
		fmt.Fprintf(os.Stderr, "pstestserver: acking dead letter %s: %v\n", ackID, err)
	}
	return true
}
