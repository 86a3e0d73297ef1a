package wmbench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	wm "github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	wkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/queuekit/queuekit/adapters/kafka"
	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/benchmeter"
	"github.com/queuekit/queuekit/internal/testenv"
)

// Every benchmark here is end to end and does the same work on both sides:
// a producer goroutine publishes b.N messages of benchPayload bytes in
// Publish calls of benchBatch messages (both APIs take several messages per
// call), while one consumer, subscribed beforehand, receives and acks each
// message; the clock stops when the consumer has acked them all. One b.N
// iteration is one message; msgs/s and allocs/msg (every goroutine of the
// process, from runtime.MemStats) are reported.
//
// Each side runs with its library's recommended settings:
//
//   - queuekit: the adapter's defaults, consumed with broker.Consume and
//     default ConsumeOptions (at-least-once, one handler).
//   - Watermill: the pub/sub's default or documented production config,
//     consumed by ranging over the Subscribe channel and acking (what the
//     Router does, without its per-message goroutine and middleware).
//
// The consumers live for the whole run (one per broker and side, made on
// first use and warmed up with one message), so that group joins are not
// timed.
const (
	benchPayload = 256
	benchBatch   = 64
)

var payload = make([]byte, benchPayload)

// rig is one side of a comparison: a way to publish and a consumer counting
// what it acked.
type rig struct {
	publish func(ctx context.Context, n int) error
	close   func()
	acked   atomic.Int64
	target  atomic.Int64
	wake    chan struct{}
	err     error // setting the rig up failed: the benchmark skips
}

func newRig() *rig { return &rig{wake: make(chan struct{}, 1)} }

// handled counts one acked message.
func (r *rig) handled() {
	if r.acked.Add(1) >= r.target.Load() {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// run publishes n messages and waits until the consumer acked as many
// more.
func (r *rig) run(ctx context.Context, n int) error {
	want := r.acked.Load() + int64(n)
	r.target.Store(want)
	published := make(chan error, 1)
	go func() {
		for sent := 0; sent < n; sent += benchBatch {
			if err := r.publish(ctx, min(benchBatch, n-sent)); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	for r.acked.Load() < want {
		select {
		case err := <-published:
			if err != nil {
				return err
			}
			published = nil
		case <-r.wake:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d messages acked: %w", r.acked.Load()-(want-int64(n)), n, ctx.Err())
		}
	}
	if published != nil {
		return <-published
	}
	return nil
}

// rigs are made once per process and closed by TestMain.
var (
	rigsMu sync.Mutex
	rigs   = map[string]*rig{}
)

func getRig(b *testing.B, name string, setup func(r *rig) error) *rig {
	b.Helper()
	rigsMu.Lock()
	defer rigsMu.Unlock()
	r, ok := rigs[name]
	if !ok {
		r = newRig()
		if err := setup(r); err != nil {
			r.err = err
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			r.err = r.run(ctx, 1) // warm up: groups joined, topics and queues made
			cancel()
		}
		rigs[name] = r
	}
	if r.err != nil {
		b.Skipf("%s: %v", name, r.err)
	}
	return r
}

// pair runs the queuekit and watermill sides of a comparison with how.
func pair(b *testing.B, how func(*testing.B, *rig), queuekit, watermill func(*testing.B) *rig) {
	b.Run("queuekit", func(b *testing.B) { how(b, queuekit(b)) })
	b.Run("watermill", func(b *testing.B) { how(b, watermill(b)) })
}

// measure times r.run(b.N): publishing and consuming b.N messages.
func measure(b *testing.B, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	report(b, func() error { return r.run(ctx, b.N) })
}

// measurePublish times only the Publish calls of b.N messages, one call
// after the other; the consumer drains them meanwhile, and afterwards
// (untimed), so that the next benchmark starts from an empty queue.
func measurePublish(b *testing.B, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	want := r.acked.Load() + int64(b.N)
	r.target.Store(want)
	report(b, func() error {
		for sent := 0; sent < b.N; sent += benchBatch {
			if err := r.publish(ctx, min(benchBatch, b.N-sent)); err != nil {
				return err
			}
		}
		return nil
	})
	for r.acked.Load() < want {
		select {
		case <-r.wake:
		case <-ctx.Done():
			b.Fatalf("the consumer did not drain what was published: %v", ctx.Err())
		}
	}
}

// report times fn and reports msgs/s and allocs/msg for b.N messages.
func report(b *testing.B, fn func() error) {
	m := benchmeter.Start(b)
	if err := fn(); err != nil {
		b.Fatal(err)
	}
	m.Stop(b.N)
}

// queuekitRig consumes topic with broker.Consume and publishes through one
// publisher; closing it closes bk.
func queuekitRig(r *rig, bk *broker.Broker, topic string) error {
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := bk.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "bench"})
	if err != nil {
		cancel()
		return err
	}
	pub, err := bk.NewPublisher(ctx)
	if err != nil {
		cancel()
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = broker.Consume(ctx, sub, broker.HandlerFunc(func(context.Context, *broker.Message) error {
			r.handled()
			return nil
		}), broker.ConsumeOptions{})
	}()
	r.publish = func(ctx context.Context, n int) error {
		msgs := make([]*broker.Message, n)
		for i := range msgs {
			msgs[i] = &broker.Message{Payload: payload}
		}
		return pub.Publish(ctx, topic, msgs...)
	}
	r.close = func() {
		cancel()
		<-done
		c, stop := context.WithTimeout(context.Background(), 10*time.Second)
		defer stop()
		_ = sub.Close(c)
		_ = pub.Close(c)
		_ = bk.Close(c)
	}
	return nil
}

// watermillRig consumes topic by ranging over a Subscribe channel and
// acking, and publishes with pub; closing it closes both.
func watermillRig(r *rig, pub message.Publisher, sub message.Subscriber, topic string) error {
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		cancel()
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ch {
			m.Ack()
			r.handled()
		}
	}()
	r.publish = func(_ context.Context, n int) error {
		msgs := make([]*message.Message, n)
		for i := range msgs {
			msgs[i] = message.NewMessage(wm.NewUUID(), payload)
		}
		return pub.Publish(topic, msgs...)
	}
	r.close = func() {
		cancel()
		_ = sub.Close()
		<-done
		_ = pub.Close()
	}
	return nil
}

// BenchmarkMemoryVsGoChannel: queuekit's mem:// broker (memory.Options{})
// against Watermill's GoChannel (gochannel.Config{}, the default: not
// persistent, unbuffered).
func BenchmarkMemoryVsGoChannel(b *testing.B) { pair(b, measure, memoryRig, goChannelRig) }

// BenchmarkMemoryPublishVsGoChannel times the Publish calls alone.
func BenchmarkMemoryPublishVsGoChannel(b *testing.B) {
	pair(b, measurePublish, memoryRig, goChannelRig)
}

func memoryRig(b *testing.B) *rig {
	return getRig(b, "memory", func(r *rig) error {
		return queuekitRig(r, broker.New(memory.New(memory.Options{})), "bench")
	})
}

func goChannelRig(b *testing.B) *rig {
	return getRig(b, "gochannel", func(r *rig) error {
		gc := gochannel.NewGoChannel(gochannel.Config{}, wm.NopLogger{})
		return watermillRig(r, gc, gc, "bench")
	})
}

// BenchmarkKafkaVsWatermill: queuekit's Kafka adapter with its defaults
// (acks=all, idempotent producer, batches pipelined; one consumer group
// member, offsets committed every second) against watermill-kafka v3
// (Sarama) with DefaultSaramaSyncPublisherConfig (a sync producer: acks=1,
// WaitForLocal, one request per message) and DefaultSaramaSubscriberConfig
// with Consumer.Offsets.Initial = OffsetOldest as its docs show (a consumer
// group, one message in flight per partition, offsets auto-committed every
// second). Both on the same kfake cluster, 3 partitions, in a child process.
func BenchmarkKafkaVsWatermill(b *testing.B) { pair(b, measure, kafkaRig, watermillKafkaRig) }

// BenchmarkKafkaPublishVsWatermill times the Publish calls alone (64
// messages per call, the consumer draining meanwhile).
func BenchmarkKafkaPublishVsWatermill(b *testing.B) {
	pair(b, measurePublish, kafkaRig, watermillKafkaRig)
}

func kafkaRig(b *testing.B) *rig {
	return getRig(b, "kafka", func(r *rig) error {
		seeds, err := kfakeSeeds()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		k, err := kafka.New(ctx, kafka.Options{Brokers: seeds})
		if err != nil {
			return err
		}
		return queuekitRig(r, broker.New(k), "bench-queuekit")
	})
}

func watermillKafkaRig(b *testing.B) *rig {
	return getRig(b, "watermill-kafka", func(r *rig) error {
		seeds, err := kfakeSeeds()
		if err != nil {
			return err
		}
		pub, err := wkafka.NewPublisher(wkafka.PublisherConfig{
			Brokers:               seeds,
			Marshaler:             wkafka.DefaultMarshaler{},
			OverwriteSaramaConfig: wkafka.DefaultSaramaSyncPublisherConfig(),
		}, wm.NopLogger{})
		if err != nil {
			return err
		}
		cfg := wkafka.DefaultSaramaSubscriberConfig()
		cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
		sub, err := wkafka.NewSubscriber(wkafka.SubscriberConfig{
			Brokers:               seeds,
			Unmarshaler:           wkafka.DefaultMarshaler{},
			OverwriteSaramaConfig: cfg,
			ConsumerGroup:         "bench-watermill",
		}, wm.NopLogger{})
		if err != nil {
			_ = pub.Close()
			return err
		}
		return watermillRig(r, pub, sub, "bench-watermill")
	})
}

// BenchmarkRabbitMQVsWatermill: queuekit's RabbitMQ adapter with its
// defaults (quorum queue, publisher confirms pipelined up to 512 in flight,
// prefetch 128) against watermill-amqp v3 with NewDurableQueueConfig (a
// durable classic queue, persistent messages, prefetch 1) plus
// Publish.ConfirmDelivery (each message waits for its confirm before the
// next is sent). Both on the local RabbitMQ.
func BenchmarkRabbitMQVsWatermill(b *testing.B) { pair(b, measure, rabbitMQRig, watermillAMQPRig) }

// BenchmarkRabbitMQPublishVsWatermill times the Publish calls alone (64
// messages per call, the consumer draining meanwhile).
func BenchmarkRabbitMQPublishVsWatermill(b *testing.B) {
	pair(b, measurePublish, rabbitMQRig, watermillAMQPRig)
}

// suffix makes this run's queue names unique.
var suffix = randomHex()

func rabbitMQRig(b *testing.B) *rig {
	url := testenv.RabbitMQ(b)
	return getRig(b, "rabbitmq", func(r *rig) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		rb, err := rabbitmq.Dial(ctx, url, rabbitmq.Options{})
		if err != nil {
			return err
		}
		topic := "qk-wmbench-" + suffix
		addCleanup(url, topic+".bench")
		return queuekitRig(r, broker.New(rb), topic)
	})
}

func watermillAMQPRig(b *testing.B) *rig {
	url := testenv.RabbitMQ(b)
	return getRig(b, "watermill-amqp", func(r *rig) error {
		cfg := wamqp.NewDurableQueueConfig(url)
		cfg.Publish.ConfirmDelivery = true
		pub, err := wamqp.NewPublisher(cfg, wm.NopLogger{})
		if err != nil {
			return err
		}
		sub, err := wamqp.NewSubscriber(cfg, wm.NopLogger{})
		if err != nil {
			_ = pub.Close()
			return err
		}
		topic := "qk-wmbench-wm-" + suffix
		addCleanup(url, topic)
		return watermillRig(r, pub, sub, topic)
	})
}

func randomHex() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// queues to delete when the run ends, per server URL.
var (
	cleanupMu sync.Mutex
	queues    = map[string][]string{}
)

func addCleanup(url, queue string) {
	cleanupMu.Lock()
	queues[url] = append(queues[url], queue)
	cleanupMu.Unlock()
}

func deleteQueues() {
	cleanupMu.Lock()
	defer cleanupMu.Unlock()
	for url, qs := range queues {
		conn, err := amqp.Dial(url)
		if err != nil {
			continue
		}
		for _, q := range qs {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(q, false, false, false)
				_ = ch.Close()
			}
		}
		_ = conn.Close()
	}
}

// The Kafka benchmarks run kfake in a child process (this test binary again,
// with kfakeEnv set), so that the broker's own work and allocations are not
// counted as either client's.
const kfakeEnv = "QUEUEKIT_WMBENCH_KFAKE"

var kfakeChild struct {
	once  sync.Once
	cmd   *exec.Cmd
	stdin io.WriteCloser
	seeds []string
	err   error
}

// kfakeSeeds starts the child on first use and returns its address.
func kfakeSeeds() ([]string, error) {
	c := &kfakeChild
	c.once.Do(func() {
		cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
		cmd.Env = append(os.Environ(), kfakeEnv+"=1")
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			c.err = err
			return
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			c.err = err
			return
		}
		if err := cmd.Start(); err != nil {
			c.err = err
			return
		}
		c.cmd, c.stdin = cmd, stdin
		line := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(out)
			if sc.Scan() {
				line <- sc.Text()
			}
			close(line)
			_, _ = io.Copy(io.Discard, out)
		}()
		select {
		case l, ok := <-line:
			if !ok || !strings.HasPrefix(l, "kfake ") {
				c.err = fmt.Errorf("kfake child did not report its address (got %q)", l)
				return
			}
			c.seeds = strings.Split(strings.TrimPrefix(l, "kfake "), ",")
		case <-time.After(30 * time.Second):
			c.err = errors.New("kfake child did not start within 30s")
		}
	})
	return c.seeds, c.err
}

func stopKfake() {
	c := &kfakeChild
	if c.cmd == nil {
		return
	}
	_ = c.stdin.Close() // the child exits when its stdin closes
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// runKfake is the child's main: a kfake cluster until stdin closes.
func runKfake() int {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(3))
	if err != nil {
		fmt.Fprintln(os.Stderr, "kfake:", err)
		return 2
	}
	defer c.Close()
	fmt.Println("kfake " + strings.Join(c.ListenAddrs(), ","))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

func TestMain(m *testing.M) {
	if os.Getenv(kfakeEnv) != "" {
		os.Exit(runKfake())
	}
	code := m.Run()
	rigsMu.Lock()
	for _, r := range rigs {
		if r.close != nil {
			r.close()
		}
	}
	rigsMu.Unlock()
	stopKfake()
	deleteQueues()
	os.Exit(code)
}
