package pubsub_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
)

// TestConformance runs the shared property suite against the server
// testenv.PubSub finds or starts: pstest, served by
// internal/testenv/pstestserver, which forwards a message nacked on its
// last attempt to the dead-letter topic once, as the real service does
// (pstest itself forwards it again and again).
//
// The server runs in a process of its own, so the crash properties run
// their consumers in child processes (this test again) and SIGKILL them:
// PUBSUB_EMULATOR_HOST tells the children where the server is. The
// fault.cut-* properties reach it through a TCP proxy (emulator=PROXY).
// pstest keeps its state in memory only, so there is no broker restart.
//
// Eight properties run at once (Harness.Parallel): most of the time goes
// to waiting for leases and for at-most-once acks that pstest confirms,
// and each property has its own topic and subscriptions.
func TestConformance(t *testing.T) {
	project, emulator := testenv.PubSub(t)
	if emulator != "" && os.Getenv("PUBSUB_EMULATOR_HOST") == "" {
		t.Setenv("PUBSUB_EMULATOR_HOST", emulator)
	}
	url := brokerURL(t)
	h := conformance.Harness{
		Name:     "pubsub",
		Open:     func(ctx context.Context) (*broker.Broker, error) { return broker.Open(ctx, url) },
		Parallel: 8,
		Defaults: func(ctx context.Context) (*broker.Broker, error) {
			if emulator == "" {
				return broker.Open(ctx, "gcppubsub://"+project)
			}
			return broker.Open(ctx, "gcppubsub://"+project+"?emulator="+emulator)
		},
	}
	if emulator != "" {
		h.SharedAcrossProcesses = true
		h.Addr = emulator
		h.OpenAt = func(ctx context.Context, addr string) (*broker.Broker, error) {
			return broker.Open(ctx, fmt.Sprintf("gcppubsub://%s?streams=4&max_message_size=%d&emulator=%s", project, pstestMaxMessage, addr))
		}
	}
	conformance.Run(t, h)
}
