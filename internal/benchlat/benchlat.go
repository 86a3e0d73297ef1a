// Package benchlat measures publish → handle latency at a fixed open-loop
// rate, for every adapter against its raw client, the same way.
//
// Bench first measures each variant's maximum: the end-to-end rate at
// which it publishes Options.Probe messages as fast as it can while it
// consumes them. Then each variant runs as a sub-benchmark at half the
// lower of the maxima for Options.Duration, and reports how long each
// message took from the moment it was due to be published to the moment
// its handler ran: p50-us, p99-us and p999-us (microseconds), and the
// rate used (rate-msgs/s). Open loop: message i is due at start + i/rate
// whether or not earlier ones were handled, and its latency counts from
// then, so a stall shows in every message it delays. The generator wakes
// every Tick and publishes what fell due; how late the operating system
// wakes it (timer slack, a busy core) is in every figure, the baseline's
// and queuekit's alike, so on a loaded machine compare the two within one
// run rather than with another day's.
//
// A variant is a Run. Raw variants are written per adapter with the raw
// client at its best for latency; Queuekit gives the queuekit variant for
// any *broker.Broker: Publish of what fell due in one call (up to
// InFlight calls at once, none waiting for the others), broker.Consume
// with its defaults. Both have their consumer running and a first
// (warm-up) message handled before the clock starts.
//
//	go test -run '^$' -bench Latency -count 3 ./adapters/... | go run ./internal/benchtable
package benchlat

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Tick is how often the open-loop generator publishes what fell due.
const Tick = 250 * time.Microsecond

// InFlight bounds the Publish calls the queuekit variant has in flight.
const InFlight = 256

// Run publishes n messages to topic, message i due at start + i*interval
// (interval 0: as fast as it can), and consumes them, calling handled
// with each one's due time (see Tracker); it returns once all n were
// handled, with the time from the start to then.
type Run func(topic string, n int, interval time.Duration, handled func(due time.Duration)) (time.Duration, error)

// Variant is a named Run: "raw" and "queuekit", as internal/benchtable
// pairs them.
type Variant struct {
	Name string
	Run  Run
}

// Options tune Bench for a broker's speed.
type Options struct {
	// Probe is how many messages measure a variant's maximum rate;
	// default 100,000. A slow broker takes fewer.
	Probe int
	// Duration is how long each variant runs at the fixed rate; default 2s.
	Duration time.Duration
	// MaxRate, when positive, caps the rate used (after halving), for a
	// broker whose maximum is far beyond what a probe of this size can
	// measure.
	MaxRate float64
}

// Bench measures each variant's maximum rate and then its latency at half
// the lower maximum, one sub-benchmark per variant. newTopic returns a
// fresh topic (with its group declared) for every run.
func Bench(b *testing.B, newTopic func() string, opts Options, variants ...Variant) {
	if opts.Probe <= 0 {
		opts.Probe = 100000
	}
	if opts.Duration <= 0 {
		opts.Duration = 2 * time.Second
	}
	rate := 0.0
	for _, v := range variants {
		d, err := v.Run(newTopic(), opts.Probe, 0, func(time.Duration) {})
		if err != nil {
			b.Fatalf("%s: maximum rate: %v", v.Name, err)
		}
		if r := float64(opts.Probe) / d.Seconds(); rate == 0 || r < rate {
			rate = r
		}
	}
	rate /= 2
	if opts.MaxRate > 0 && rate > opts.MaxRate {
		rate = opts.MaxRate
	}
	interval := time.Duration(float64(time.Second) / rate)

	for _, v := range variants {
		b.Run(v.Name, func(b *testing.B) {
			n := max(b.N, int(rate*opts.Duration.Seconds()))
			lat := make([]time.Duration, 0, n)
			var mu sync.Mutex
			b.ResetTimer()
			_, err := v.Run(newTopic(), n, interval, func(due time.Duration) {
				at := time.Since(origin)
				mu.Lock()
				lat = append(lat, at-due)
				mu.Unlock()
			})
			b.StopTimer()
			if err != nil {
				b.Fatal(err)
			}
			slices.Sort(lat)
			q := func(f float64) float64 {
				return float64(lat[min(int(f*float64(len(lat))), len(lat)-1)]) / float64(time.Microsecond)
			}
			b.ReportMetric(q(0.50), "p50-us")
			b.ReportMetric(q(0.99), "p99-us")
			b.ReportMetric(q(0.999), "p999-us")
			b.ReportMetric(rate, "rate-msgs/s")
		})
	}
}

// origin is the origin of the due times stamped into payloads.
var origin = time.Now()

// Warmup is the payload of the message a run sends, and waits to be
// handled, before its clock starts.
var Warmup = bytes.Repeat([]byte{0xff}, 8)

// Stamp returns a copy of payload (at least 8 bytes) whose first 8 bytes
// are due.
func Stamp(payload []byte, due time.Duration) []byte {
	p := slices.Clone(payload)
	binary.LittleEndian.PutUint64(p, uint64(due))
	return p
}

// OpenLoop calls publish(from, to, due) with the messages [from, to) that
// fell due, every Tick, until n were published; due(i) is message i's due
// time. With interval 0 every message is due at the start, and they go
// batch at a time, at once. It returns the start.
func OpenLoop(n int, interval time.Duration, batch int, publish func(from, to int, due func(int) time.Duration)) time.Time {
	start := time.Now()
	base := start.Sub(origin)
	due := func(i int) time.Duration { return base + time.Duration(i)*interval }
	if interval == 0 {
		for from := 0; from < n; from += batch {
			publish(from, min(from+batch, n), due)
		}
		return start
	}
	for sent := 0; sent < n; time.Sleep(Tick) {
		if to := min(n, int(time.Since(start)/interval)+1); to > sent {
			publish(sent, to, due)
			sent = to
		}
	}
	return start
}

// Tracker counts what a run's consumer handled: the warm-up message, then
// n stamped ones, each passed to the run's handled.
type Tracker struct {
	n        int64
	handled  func(time.Duration)
	warm     chan struct{}
	all      chan struct{}
	warmOnce sync.Once
	got      atomic.Int64
}

// NewTracker returns a Tracker for n messages.
func NewTracker(n int, handled func(time.Duration)) *Tracker {
	return &Tracker{n: int64(n), handled: handled, warm: make(chan struct{}), all: make(chan struct{})}
}

// Handle takes a consumed payload. Redeliveries count again (a raw
// client at least once may redeliver too); the run ends at n.
func (t *Tracker) Handle(p []byte) {
	if bytes.Equal(p, Warmup) {
		t.warmOnce.Do(func() { close(t.warm) })
		return
	}
	t.handled(time.Duration(binary.LittleEndian.Uint64(p)))
	if t.got.Add(1) == t.n {
		close(t.all)
	}
}

// Warm is closed once the warm-up message was handled.
func (t *Tracker) Warm() <-chan struct{} { return t.warm }

// WaitWarm waits for the warm-up message, or a minute.
func (t *Tracker) WaitWarm() error {
	select {
	case <-t.warm:
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("the warm-up message was not handled within a minute")
	}
}

// Wait waits until all n were handled, or a minute.
func (t *Tracker) Wait() error {
	select {
	case <-t.all:
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("%d of %d messages handled within a minute", t.got.Load(), t.n)
	}
}

// Queuekit is the queuekit variant over qb: a Publisher publishing what
// fell due in one Publish call (up to InFlight calls at once; batch at a
// time when probing), templates cycled for keys and payloads (payloads of
// at least 8 bytes), and a Subscriber of group consumed by broker.Consume
// with its defaults.
func Queuekit(qb *broker.Broker, group string, batch int, templates []*broker.Message) Run {
	return func(topic string, n int, interval time.Duration, handled func(time.Duration)) (time.Duration, error) {
		ctx := context.Background()
		pub, err := qb.NewPublisher(ctx)
		if err != nil {
			return 0, err
		}
		defer pub.Close(ctx)
		sub, err := qb.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: group})
		if err != nil {
			return 0, err
		}
		defer sub.Close(ctx)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		tr := NewTracker(n, handled)
		consumed := make(chan error, 1)
		go func() {
			consumed <- broker.Consume(cctx, sub, broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
				tr.Handle(m.Payload)
				return nil
			}), broker.ConsumeOptions{})
		}()
		if err := pub.Publish(ctx, topic, &broker.Message{Payload: Warmup}); err != nil {
			return 0, err
		}
		if err := tr.WaitWarm(); err != nil {
			return 0, err
		}
		var failed atomic.Int64
		var firstErr atomic.Pointer[error]
		var calls sync.WaitGroup
		inFlight := make(chan struct{}, InFlight)
		start := OpenLoop(n, interval, batch, func(from, to int, due func(int) time.Duration) {
			msgs := make([]*broker.Message, 0, to-from)
			for i := from; i < to; i++ {
				m := templates[i%len(templates)]
				msgs = append(msgs, &broker.Message{Key: m.Key, Payload: Stamp(m.Payload, due(i))})
			}
			inFlight <- struct{}{}
			calls.Add(1)
			go func() {
				defer calls.Done()
				if err := pub.Publish(ctx, topic, msgs...); err != nil && failed.Add(1) == 1 {
					firstErr.Store(&err)
				}
				<-inFlight
			}()
		})
		calls.Wait()
		if failed.Load() > 0 {
			return 0, fmt.Errorf("%d Publish calls failed, the first with %w", failed.Load(), *firstErr.Load())
		}
		if err := tr.Wait(); err != nil {
			return 0, err
		}
		d := time.Since(start)
		cancel()
		return d, <-consumed
	}
}
