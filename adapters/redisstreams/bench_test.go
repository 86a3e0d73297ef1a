package redisstreams_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/benchmeter"
)

// The benchmarks pair what a careful go-redis user writes (raw) with the
// adapter on its defaults (queuekit: the URL of the test server with no
// parameter but the tests' key prefix), against the test server, in the
// same run. Both put the same entry on the wire: an ID, a publish time, one
// header and a 256-byte payload, in queuekit's field layout.
//
//	go test -run '^$' -bench RedisStreams -benchmem -count 5 ./adapters/redisstreams | go run ./internal/benchtable
//
// Publish: producers goroutines, each with benchBatch messages at a time
// (the application's batch, the same for both). raw: one pipeline of
// benchBatch XADDs per batch (c.Pipelined: one write, one read of all the
// replies), each goroutine on a pooled connection of its own — the fastest
// go-redis way to add entries (MULTI would only add work; a pipeline of 100
// measured no faster than 1000). queuekit: one Publish call per batch (it
// pipelines the XADDs the same way).
//
// Consume: b.N entries added beforehand, read by one consumer of the group
// and acked. raw: one loop, one round trip per batch — a pipeline of the
// XACK of the previous batch (all its IDs in one XACK) and XREADGROUP ...
// COUNT rawCount > — then the handler over the batch: the fewest round
// trips and commands there are for per-entry acks (COUNT 500 measured
// faster than 128, 1000 and 2000 here). queuekit: broker.Consume (defaults,
// one handler) on a subscriber with default options.
//
// Every row reports msgs/s (wall clock: noisy on a shared machine),
// allocs/msg, cpu-us/msg (this process's CPU time per message) and
// srv-cpu-us/msg (redis-server's, found by name in /proc; 0 when there is
// not exactly one; other users of the server count too).

const (
	benchPayload = 256
	benchBatch   = 1000
	producers    = 4
	rawCount     = 500 // XREADGROUP COUNT of the raw consumer
)

// measure runs fn, which handles n messages, and reports its figures
// (internal/benchmeter), redis-server's CPU per message among them.
func measure(b *testing.B, n int, fn func()) {
	m := benchmeter.StartWithServer(b, "redis-server")
	fn()
	m.Stop(n)
}

// rawValues are the fields of one entry as the raw rows write them.
func rawValues(payload []byte) []any {
	return []any{"_id", driver.NewID(), "_at", strconv.FormatInt(time.Now().UnixNano(), 10),
		"h:content-type", "application/octet-stream", "_body", payload}
}

func benchMessage(payload []byte) *broker.Message {
	return &broker.Message{Payload: payload, Headers: map[string]string{"content-type": "application/octet-stream"}}
}

// benchTopic declares a fresh topic with group g, deleted after b.
func benchTopic(b *testing.B, qb *broker.Broker, what string) string {
	b.Helper()
	topic := name(what)
	if err := qb.Declare(context.Background(), topic, "g"); err != nil {
		b.Fatal(err)
	}
	rb := driverOf(b, qb)
	b.Cleanup(func() { _ = rb.DeleteTopic(context.Background(), topic) })
	return topic
}

func BenchmarkRedisStreamsPublish(b *testing.B) {
	ctx := context.Background()
	payload := make([]byte, benchPayload)
	b.Run("raw", func(b *testing.B) {
		qb := openBroker(b)
		c := rawClient(b)
		st := stream(benchTopic(b, qb, "bench-pub-raw"))
		measure(b, b.N, func() {
			benchmeter.Split(b, producers, b.N, func(count int) error {
				for i := 0; i < count; i += benchBatch {
					k := min(benchBatch, count-i)
					cmds, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
						for range k {
							p.XAdd(ctx, &redis.XAddArgs{Stream: st, Values: rawValues(payload)})
						}
						return nil
					})
					if err != nil {
						return err
					}
					for _, cmd := range cmds {
						if cmd.Err() != nil {
							return cmd.Err()
						}
					}
				}
				return nil
			})
		})
	})
	b.Run("queuekit", func(b *testing.B) {
		qb := openBroker(b)
		topic := benchTopic(b, qb, "bench-pub-qk")
		p := newPublisher(b, qb)
		measure(b, b.N, func() {
			benchmeter.Split(b, producers, b.N, func(count int) error {
				msgs := make([]*broker.Message, benchBatch)
				for i := 0; i < count; i += benchBatch {
					k := min(benchBatch, count-i)
					for j := range k {
						msgs[j] = benchMessage(payload)
					}
					if err := p.Publish(ctx, topic, msgs[:k]...); err != nil {
						return err
					}
				}
				return nil
			})
		})
	})
}

// fill publishes n messages to topic (not measured).
func fill(b *testing.B, qb *broker.Broker, topic string, n int) {
	b.Helper()
	p := newPublisher(b, qb)
	payload := make([]byte, benchPayload)
	msgs := make([]*broker.Message, 0, 1000)
	for i := 0; i < n; i += 1000 {
		msgs = msgs[:0]
		for range min(1000, n-i) {
			msgs = append(msgs, benchMessage(payload))
		}
		if err := p.Publish(context.Background(), topic, msgs...); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRedisStreamsConsume(b *testing.B) {
	ctx := context.Background()
	b.Run("raw", func(b *testing.B) {
		qb := openBroker(b)
		c := rawClient(b)
		topic := benchTopic(b, qb, "bench-sub-raw")
		st := stream(topic)
		fill(b, qb, topic, b.N)
		handled := 0
		var bodies int
		measure(b, b.N, func() {
			// One round trip per batch: the XACK of the last batch goes in
			// the pipeline of the next XREADGROUP.
			var acks []string
			for handled < b.N {
				var read *redis.XStreamSliceCmd
				_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
					if len(acks) > 0 {
						p.XAck(ctx, st, "g", acks...)
					}
					read = p.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "raw", Streams: []string{st, ">"},
						Count: rawCount, Block: 2 * time.Second})
					return nil
				})
				if err != nil && err != redis.Nil {
					b.Fatal(err)
				}
				acks = acks[:0]
				for _, s := range read.Val() {
					for _, m := range s.Messages {
						body, _ := m.Values["_body"].(string)
						bodies += len(body) // the handler
						acks = append(acks, m.ID)
						handled++
					}
				}
			}
			if len(acks) > 0 {
				if err := c.XAck(ctx, st, "g", acks...).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("queuekit", func(b *testing.B) {
		qb := openBroker(b)
		topic := benchTopic(b, qb, "bench-sub-qk")
		fill(b, qb, topic, b.N)
		s := newSubscriber(b, qb, broker.SubscriberOptions{Topic: topic, Group: "g"})
		var handled atomic.Int64
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var bodies int
		measure(b, b.N, func() {
			err := broker.Consume(cctx, s, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
				bodies += len(m.Payload) // the handler
				if handled.Add(1) == int64(b.N) {
					cancel()
				}
				return nil
			}), broker.ConsumeOptions{})
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Close(ctx); err != nil { // the last acks are sent
				b.Fatal(err)
			}
		})
	})
}
