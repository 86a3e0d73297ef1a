package nats

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
)

// TestConformance runs the shared property suite against the NATS server.
// The server is shared, so the crash properties run their consumers in
// child processes (this test binary again) and kill them with SIGKILL; the
// fault.cut-* properties reach it through the suite's TCP proxy. Every
// topic of the run starts with one prefix; its streams are deleted at the
// end.
func TestConformance(t *testing.T) {
	raw := testenv.NATS(t)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	prefix := uniq("qkconf")
	cleanupStreams(t, raw, prefix)
	at := func(addr string) string {
		v := *u
		v.Host = addr
		return v.String()
	}
	conformance.Run(t, conformance.Harness{
		Name: "nats",
		Open: func(ctx context.Context) (*broker.Broker, error) {
			nb, err := Open(ctx, raw)
			if err != nil {
				return nil, err
			}
			return broker.New(nb), nil
		},
		NewTopic: func(property string) string {
			return prefix + "-" + strings.ReplaceAll(property, ".", "-") + "-" + uniq("t")[2:]
		},
		AckTimeout:            time.Second,
		Timeout:               30 * time.Second,
		SharedAcrossProcesses: true,
		Addr:                  u.Host,
		OpenAt: func(ctx context.Context, addr string) (*broker.Broker, error) {
			nb, err := Open(ctx, at(addr))
			if err != nil {
				return nil, err
			}
			return broker.New(nb), nil
		},
		Defaults: func(ctx context.Context) (*broker.Broker, error) {
			return broker.Open(ctx, "nats://"+u.Host)
		},
	})
}

// TestConformanceRestart runs fault.broker-restart, which the shared
// server cannot take part in, against a nats-server of the test's own
// (file storage): it is stopped and started again mid-stream and every
// confirmed message must still be handled. With
// QUEUEKIT_CONFORMANCE_REPORT set, the verdict replaces the "unsupported"
// one TestConformance recorded in the report (RunOnly).
func TestConformanceRestart(t *testing.T) {
	srv := testenv.NATSServer(t)
	h := conformance.Harness{
		Name: "nats",
		Open: func(ctx context.Context) (*broker.Broker, error) {
			nb, err := Open(ctx, srv.URL)
			if err != nil {
				return nil, err
			}
			return broker.New(nb), nil
		},
		AckTimeout: time.Second,
		Timeout:    30 * time.Second,
		Restart:    srv.Restart,
	}
	conformance.RunOnly(t, h, "fault.broker-restart")
}
