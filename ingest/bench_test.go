package ingest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/internal/testenv"
)

// BenchmarkIngest measures messages per second through the HTTP handler
// (queuekit: an HTTP client over loopback, one 256-byte message per
// request, a token-keyed rate-limit zone too generous to reject, the JSON
// access log written to io.Discard) against publishing the same messages
// directly with the broker's publisher (raw), with the same 32 concurrent
// callers, one message per call. allocs/msg counts the whole process, the
// HTTP client's allocations included.
//
//	go test -run '^$' -bench Ingest -benchmem ./ingest | go run ./internal/benchtable
//
// BenchmarkIngestHTTP/raw is the floor of HTTP itself: a bare handler that
// reads the body and publishes it (no token, no limit, no log, no metrics),
// against the same HTTP client, to mem://.
func BenchmarkIngest(b *testing.B) {
	b.Run("mem", func(b *testing.B) {
		open := func(b *testing.B) (*broker.Broker, string) {
			br := broker.New(memory.New(memory.Options{}))
			b.Cleanup(func() { _ = br.Close(context.Background()) })
			return br, "bench"
		}
		b.Run("raw", func(b *testing.B) { benchIngest(b, open, viaPublisher) })
		b.Run("queuekit", func(b *testing.B) { benchIngest(b, open, viaHandler) })
	})
	b.Run("rabbitmq", func(b *testing.B) {
		open := func(b *testing.B) (*broker.Broker, string) {
			url := testenv.RabbitMQ(b)
			br, err := broker.Open(context.Background(), url)
			if err != nil {
				b.Fatal(err)
			}
			topic := fmt.Sprintf("ingest-bench-%d", time.Now().UnixNano())
			b.Cleanup(func() {
				_ = br.Close(context.Background())
				testenv.DeleteRabbitMQ(b, url, []string{topic + ".bench"}, nil)
			})
			return br, topic
		}
		b.Run("raw", func(b *testing.B) { benchIngest(b, open, viaPublisher) })
		b.Run("queuekit", func(b *testing.B) { benchIngest(b, open, viaHandler) })
	})
}

func BenchmarkIngestHTTP(b *testing.B) {
	open := func(b *testing.B) (*broker.Broker, string) {
		br := broker.New(memory.New(memory.Options{}))
		b.Cleanup(func() { _ = br.Close(context.Background()) })
		return br, "bench"
	}
	b.Run("raw", func(b *testing.B) { benchIngest(b, open, viaBareHandler) })
	b.Run("queuekit", func(b *testing.B) { benchIngest(b, open, viaHandler) })
}

const benchCallers = 32

// How a benchmark publishes.
const (
	viaPublisher   = iota // pub.Publish directly
	viaHandler            // HTTP to the ingest Handler
	viaBareHandler        // HTTP to a handler that only publishes the body
)

func benchIngest(b *testing.B, open func(*testing.B) (*broker.Broker, string), via int) {
	br, topic := open(b)
	ctx := context.Background()
	sub, err := br.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Close(context.Background()) })
	// Drain the group so that a bounded broker never makes publishers wait.
	dctx, stopDrain := context.WithCancel(ctx)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			d, err := sub.Receive(dctx)
			if err != nil {
				return
			}
			_ = d.Ack(dctx)
		}
	}()
	defer func() { stopDrain(); <-drained }()
	pub, err := br.NewPublisher(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = pub.Close(context.Background()) })

	payload := bytes.Repeat([]byte("x"), 256)
	var send func() error
	if via != viaPublisher {
		var h http.Handler
		if via == viaHandler {
			cfg := Config{
				Tokens: []Token{{Name: "bench", SHA256: HashToken(testToken), Topics: []string{topic}}},
				Zones:  []Zone{{Name: "per_token", Key: "token", Rate: "10000000r/s", Burst: 1000000, NoDelay: true}},
			}
			if h, err = New(Options{Publisher: pub, Config: cfg, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))}); err != nil {
				b.Fatal(err)
			}
		} else {
			h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, err := io.ReadAll(r.Body)
				if err == nil {
					err = pub.Publish(r.Context(), topic, &broker.Message{Payload: body})
				}
				if err != nil {
					http.Error(w, err.Error(), http.StatusServiceUnavailable)
					return
				}
				w.WriteHeader(http.StatusOK)
			})
		}
		srv := httptest.NewServer(h)
		b.Cleanup(srv.Close)
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchCallers}}
		target := srv.URL + "/v1/topics/" + topic + "/messages"
		send = func() error {
			req, _ := http.NewRequest(http.MethodPost, target, bytes.NewReader(payload))
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return nil
		}
	} else {
		send = func() error { return pub.Publish(ctx, topic, &broker.Message{Payload: payload}) }
	}
	// Warm up: connections, channels, topology.
	for i := 0; i < benchCallers; i++ {
		if err := send(); err != nil {
			b.Fatal(err)
		}
	}

	m := benchmeter.Start(b)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for c := 0; c < benchCallers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := send(); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	m.Stop(b.N)
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}
