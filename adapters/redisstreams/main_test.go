package redisstreams_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/adapters/redisstreams"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// Every key the tests make contains runID: the key prefix of the URLs they
// open is "qkt-<runID>:", and the topics of URLs opened without a prefix are
// named after it too. Child processes (the conformance crash properties)
// inherit it through runEnv. TestMain deletes the run's keys at the end.
const runEnv = "QUEUEKIT_REDISSTREAMS_TEST_RUN"

var runID string

func TestMain(m *testing.M) {
	runID = os.Getenv(runEnv)
	child := runID != ""
	if !child {
		var b [4]byte
		_, _ = rand.Read(b[:])
		runID = hex.EncodeToString(b[:])
		os.Setenv(runEnv, runID)
	}
	code := m.Run()
	if !child && os.Getenv("QUEUEKIT_CONFORMANCE_CONSUMER") == "" {
		cleanup()
	}
	os.Exit(code)
}

// cleanup deletes every key of the run.
func cleanup() {
	addr := testenv.Env("QUEUEKIT_REDIS_ADDR", testenv.DefaultRedisAddr)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	iter := c.Scan(ctx, 0, "*"+runID+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
		if len(keys) == 500 {
			c.Unlink(ctx, keys...)
			keys = keys[:0]
		}
	}
	if len(keys) > 0 {
		c.Unlink(ctx, keys...)
	}
}

// prefix is the key prefix of the run.
func prefix() string { return "qkt-" + runID + ":" }

// redisURL returns the URL of the test server with the run's prefix and
// params ("name=value").
func redisURL(t testing.TB, params ...string) string {
	t.Helper()
	addr := testenv.Redis(t)
	q := url.Values{}
	q.Set("prefix", prefix())
	for _, p := range params {
		k, v, _ := strings.Cut(p, "=")
		q.Set(k, v)
	}
	return "redis+streams://" + addr + "/?" + q.Encode()
}

// openBroker opens the test server, closed at the end of the test.
func openBroker(t testing.TB, params ...string) *broker.Broker {
	t.Helper()
	b, err := broker.Open(testCtx(t), redisURL(t, params...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b
}

// rawClient returns a go-redis client of the test server.
func rawClient(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: testenv.Redis(t)})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var topicSeq atomic.Int64

// name returns a fresh topic name containing the run id.
func name(what string) string {
	return fmt.Sprintf("%s-%s-%d", what, runID, topicSeq.Add(1))
}

// stream is the stream key of topic (shard 0) under the run's prefix.
func stream(topic string) string { return prefix() + topic }

func driverOf(t testing.TB, b *broker.Broker) *redisstreams.Broker {
	t.Helper()
	var rb *redisstreams.Broker
	if !b.As(&rb) {
		t.Fatal("As(*redisstreams.Broker) = false")
	}
	return rb
}

func newPublisher(t testing.TB, b *broker.Broker) *broker.Publisher {
	t.Helper()
	p, err := b.NewPublisher(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

func newSubscriber(t testing.TB, b *broker.Broker, o broker.SubscriberOptions) *broker.Subscriber {
	t.Helper()
	s, err := b.NewSubscriber(testCtx(t), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func receive(t testing.TB, ctx context.Context, s *broker.Subscriber) *broker.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return d
}
