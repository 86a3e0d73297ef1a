package kafka

import (
	"context"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
)

// TestConformance runs the shared property suite against the kfake broker
// (or QUEUEKIT_KAFKA_BROKERS). The adapter claims every capability but
// NativeDeadLetter.
func TestConformance(t *testing.T) {
	seeds := testenv.Kafka(t)
	conformance.Run(t, conformance.Harness{
		Name: "kafka",
		Open: func(ctx context.Context) (broker.Broker, error) {
			return New(ctx, Options{Brokers: seeds, CommitInterval: 100 * time.Millisecond, DrainTimeout: 2 * time.Second})
		},
		AckTimeout: time.Second,
	})
}

// TestConformanceRetryTopic runs the suite again with the retry-topic Nack
// strategy and commit-on-ack, the settings for at-most-once.
func TestConformanceRetryTopic(t *testing.T) {
	seeds := testenv.Kafka(t)
	conformance.Run(t, conformance.Harness{
		Name: "kafka-retry-topic",
		Open: func(ctx context.Context) (broker.Broker, error) {
			return New(ctx, Options{Brokers: seeds, Nack: NackRetryTopic, CommitOnAck: true, DrainTimeout: 2 * time.Second})
		},
		AckTimeout: time.Second,
	})
}
