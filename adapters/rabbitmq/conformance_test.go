package rabbitmq

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
)

// TestConformance runs the shared property suite against the RabbitMQ
// server, with quorum queues (every capability claimed) and a 4 MiB
// message limit so that a message at the limit is tried too. Every queue
// the suite declares is deleted at the end.
func TestConformance(t *testing.T) { conform(t, "rabbitmq", "") }

// TestConformanceClassic runs it with classic queues, which claim no
// attempt count and no dead-lettering (reported unsupported).
func TestConformanceClassic(t *testing.T) { conform(t, "rabbitmq-classic", "&queue_type=classic") }

func conform(t *testing.T, name, params string) {
	url := testenv.RabbitMQ(t)
	c := &cleanup{}
	t.Cleanup(func() { c.run(t, url) })
	conformance.Run(t, conformance.Harness{
		Name: name,
		Open: func(ctx context.Context) (broker.Broker, error) {
			return Dial(ctx, url+"?max_message_size=4194304"+params, Options{OnDeclare: c.add})
		},
		AckTimeout: time.Second,
		Timeout:    30 * time.Second,
	})
}
