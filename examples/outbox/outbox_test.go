package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/internal/testenv"
)

// TestOutbox runs the example end to end on PostgreSQL (skipped without it,
// failed under CI=true), over the embedded broker and RabbitMQ, and checks
// its summary: every committed order shipped once, no declined one.
func TestOutbox(t *testing.T) {
	dsn := testenv.Postgres(t)
	urls := map[string]func(t *testing.T) string{
		"memory":   func(*testing.T) string { return "mem://outbox-example-test" },
		"rabbitmq": func(t *testing.T) string { return testenv.RabbitMQ(t) },
	}
	for name, url := range urls {
		t.Run(name, func(t *testing.T) {
			u := url(t)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg := config{DSN: dsn, Broker: u, Name: "outbox_example_test_" + strconv.FormatInt(time.Now().UnixNano(), 36), Orders: 40}
			if name == "rabbitmq" {
				t.Cleanup(func() { testenv.DeleteRabbitMQ(t, u, []string{cfg.Name + ".orders.shipping"}, nil) })
			}
			var out bytes.Buffer
			if err := run(ctx, cfg, &out); err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			for _, want := range []string{
				"committed                 32",
				"declined, rolled back      8",
				"order rows                32",
				"shipments                 32",
				"shipped, never ordered     0",
				"reminder held for        >= 300ms: true",
			} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("summary lacks %q:\n%s", want, out.String())
				}
			}
			t.Log("\n" + out.String())
		})
	}
}
