package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/internal/testenv"
)

// TestOrders runs the example end to end on the embedded broker and on
// RabbitMQ, and checks the summary it prints: nothing lost, nothing handled
// twice, every poison event dead-lettered, every duplicate suppressed.
func TestOrders(t *testing.T) {
	urls := map[string]func(t *testing.T) string{
		"memory":   func(*testing.T) string { return "mem://orders-test" },
		"rabbitmq": func(t *testing.T) string { return testenv.RabbitMQ(t) },
	}
	for name, url := range urls {
		t.Run(name, func(t *testing.T) {
			u := url(t)
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			var out bytes.Buffer
			topic := "orders-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
			if name == "rabbitmq" {
				t.Cleanup(func() { deleteRabbitQueues(t, u, topic) })
			}
			if err := run(ctx, u, topic, 100, &out); err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			for _, want := range []string{
				"published                312  (300 events, 12 published twice on purpose)",
				"duplicates suppressed     12",
				"dead-lettered              2",
				"handled twice              0",
				"lost                       0",
			} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("summary lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

// deleteRabbitQueues removes the queues the example declared on the shared
// server: the groups' queues and their delay queues.
func deleteRabbitQueues(t *testing.T, url, topic string) {
	ctx := context.Background()
	b, err := rabbitmq.Dial(ctx, url, rabbitmq.Options{})
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer b.Close(ctx)
	for _, s := range [][2]string{{topic, "billing"}, {topic + ".dlq", "ops"}, {topic + ".dlq", "billing"}} {
		if err := b.DeleteSubscription(ctx, s[0], s[1]); err != nil {
			t.Logf("cleanup %s/%s: %v", s[0], s[1], err)
		}
	}
}
