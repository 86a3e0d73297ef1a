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
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	failAttr := flag.String("fail-publish-attr", "", "refuse Publish requests holding a message with this attribute")
	flag.Parse()

	var opts []pstest.ServerReactorOption
	if *failAttr != "" {
		opts = append(opts, pstest.ServerReactorOption{FuncName: "Publish", Reactor: failPublish(*failAttr)})
	}
	srv, err := newServer(*addr, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pstestserver:", err)
		os.Exit(1)
	}
	defer srv.Close()
	fmt.Println("ADDR", srv.Addr)

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
