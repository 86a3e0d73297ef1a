// Command metrics exports queuekit's OpenTelemetry metrics in the Prometheus
// format: a producer and a consumer run through the default middleware stack
// instrumented by middleware/otel, whose meter provider feeds the OpenTelemetry
// Prometheus exporter, served on /metrics by prometheus/client_golang.
//
// Some messages fail their first attempt (retried), some always fail
// (dead-lettered); the consumer lag gauge reads the group's backlog
// (broker.Broker.Backlog) where the adapter can tell it.
//
//	go run ./examples/metrics                  # run, then print the scrape of /metrics
//	go run ./examples/metrics -listen :9464    # and keep serving it for Prometheus
//	go run -tags allbrokers ./examples/metrics -broker amqp://guest:guest@127.0.0.1:5672/
//
// It links only mem:// unless built with -tags allbrokers.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	_ "github.com/queuekit/queuekit/adapters/memory" // mem://; the others with -tags allbrokers (brokers.go)
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/examples/internal/linked"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/dlq"
	qkotel "github.com/queuekit/queuekit/middleware/otel"
	"github.com/queuekit/queuekit/middleware/retry"
	"github.com/queuekit/queuekit/semantics"
)

func main() {
	url := flag.String("broker", envOr("QUEUEKIT_BROKER", "mem://"), "broker URL (or QUEUEKIT_BROKER)")
	n := flag.Int("messages", 500, "messages to publish")
	listen := flag.String("listen", "", "keep serving /metrics on this address (such as :9464) until interrupted")
	flag.Parse()
	if err := linked.Check(*url, "./examples/metrics"); err != nil {
		fmt.Fprintln(os.Stderr, "metrics:", err)
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	if err := run(ctx, *url, *n, *listen, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "metrics:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, url string, n int, listen string, out io.Writer) error {
	// OpenTelemetry metrics -> Prometheus registry -> /metrics.
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		return err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	defer mp.Shutdown(context.Background())
	tel, err := qkotel.New(qkotel.Options{MeterProvider: mp})
	if err != nil {
		return err
	}
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	b, err := broker.Open(ctx, url)
	if err != nil {
		return err
	}
	defer b.Close(context.Background())
	topic := "metrics-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	defer forget(b, dlq.Topic(topic), "ops")
	defer forget(b, topic, "billing")
	// Subscribe first: the groups must exist before the first publish
	// (which fails with broker.ErrNoGroup otherwise).
	dead, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: dlq.Topic(topic), Group: "ops"})
	if err != nil {
		return err
	}
	defer dead.Close(context.Background())
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "billing"})
	if err != nil {
		return err
	}
	defer sub.Close(context.Background())
	raw, err := b.NewPublisher(ctx)
	if err != nil {
		return err
	}
	defer raw.Close(context.Background())
	pub := tel.Publisher(raw) // counts and injects trace context

	if lag := lagOf(ctx, b, topic, "billing"); lag != nil {
		stop, err := tel.ObserveLag(topic, "billing", lag)
		if err != nil {
			return err
		}
		defer stop()
	}

	// The default stack, instrumented: otel -> dlq -> retry -> dedupe -> recover.
	var settled, deadLettered atomic.Int64
	opts := middleware.Options{
		Publisher:   pub,
		Store:       dedupe.NewMemoryStore(dedupe.MemoryOptions{}),
		MaxAttempts: 3,
		Retry:       &retry.Options{Mode: retry.Redelivery, MaxAttempts: 3, Initial: 20 * time.Millisecond},
		DLQ:         dlq.Options{OnDeadLetter: func(*broker.Message, error) { deadLettered.Add(1) }},
	}
	tel.Instrument(&opts)
	poison := func(i int) bool { return i%50 == 7 }
	h := middleware.Default(opts)(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		i, _ := strconv.Atoi(m.ID[len("msg-"):])
		if poison(i) {
			return errors.New("poison")
		}
		if i%10 == 3 && m.Attempt <= 1 {
			return errors.New("flaky downstream")
		}
		time.Sleep(time.Duration(i%5) * 100 * time.Microsecond) // some work, for the latency histogram
		settled.Add(1)
		return nil
	}))

	var msgs []*broker.Message
	var want, wantDead int64
	for i := range n {
		msgs = append(msgs, &broker.Message{ID: fmt.Sprintf("msg-%d", i), Key: fmt.Sprint("k", i%16), Payload: []byte("hello")})
		if poison(i) {
			wantDead++
		} else {
			want++
		}
	}
	if err := pub.Publish(ctx, topic, msgs...); err != nil {
		return err
	}
	cctx, stopConsume := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- broker.Consume(cctx, sub, h, broker.ConsumeOptions{Concurrency: 4, OnError: func(*broker.Message, error) {}})
	}()
	deadline := time.Now().Add(time.Minute)
	for (settled.Load() < want || deadLettered.Load() < wantDead) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	stopConsume()
	if err := <-done; err != nil {
		return err
	}
	if settled.Load() < want || deadLettered.Load() < wantDead {
		return fmt.Errorf("in a minute, handled %d of %d messages and dead-lettered %d of %d", settled.Load(), want, deadLettered.Load(), wantDead)
	}

	// Scrape ourselves, as Prometheus would, and print queuekit's series.
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "queuekit_") && !strings.Contains(line, "_bucket{") {
			fmt.Fprintln(out, line)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if listen != "127.0.0.1:0" {
		fmt.Fprintf(out, "serving http://%s/metrics until interrupted\n", ln.Addr())
		<-ctx.Done()
	}
	return nil
}

// forget deletes a subscription where it outlives its subscribers
// (RabbitMQ queues), so that runs leave nothing behind.
func forget(b *broker.Broker, topic, group string) {
	var d interface {
		DeleteSubscription(ctx context.Context, topic, group string) error
	}
	if !b.As(&d) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.DeleteSubscription(ctx, topic, group); err != nil {
		fmt.Fprintln(os.Stderr, "metrics: cleanup:", err)
	}
}

// lagOf returns the group's backlog, or nil where the adapter cannot tell
// it (Backlog returns an Unsupported error).
func lagOf(ctx context.Context, b *broker.Broker, topic, group string) func(context.Context) (int64, error) {
	if _, err := b.Backlog(ctx, topic, group); broker.KindOf(err) == semantics.Unsupported {
		return nil
	}
	return func(ctx context.Context) (int64, error) {
		bl, err := b.Backlog(ctx, topic, group)
		return bl.Pending, err
	}
}
