package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	_ "github.com/queuekit/queuekit/adapters/rabbitmq" // amqp://, for TestRabbitMQ
	"github.com/queuekit/queuekit/internal/testenv"
)

// total returns the value of the first series of metric in the scrape.
func total(t *testing.T, out, metric string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + metric + `\{[^}]*destination_name="metrics-[^".]*"[^}]*\} (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s missing from the scrape:\n%s", metric, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func check(t *testing.T, url string) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, url, 200, "", &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	// 200 published; 4 poison (i%50 == 7) dead-lettered after 3 attempts;
	// 20 flaky (i%10 == 3) fail once.
	for metric, want := range map[string]int{
		"queuekit_messages_published_total":       200,
		"queuekit_messages_acked_total":           200, // the dead-lettered ones are acked too
		"queuekit_messages_dead_lettered_total":   4,
		"queuekit_messages_nacked_total":          20 + 4*2,
		"queuekit_messages_retried_total":         20 + 4*2,
		"queuekit_messages_consumed_total":        200 + 20 + 4*2,
		"queuekit_messages_in_flight":             0,
		"queuekit_handler_duration_seconds_count": 200 + 20 + 4*2,
	} {
		if got := total(t, s, metric); got != want {
			t.Errorf("%s = %d, want %d", metric, got, want)
		}
	}
}

func TestMemory(t *testing.T) { check(t, "mem://") }

func TestRabbitMQ(t *testing.T) { check(t, testenv.RabbitMQ(t)) }
