package conformance

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance/faultproxy"
)

// LongEnv, set to 1, makes the fault properties cut connections
// longCuts times instead of shortCuts (make test-long).
const LongEnv = "QUEUEKIT_CONFORMANCE_LONG"

const (
	shortCuts = 5
	longCuts  = 100
	// retryPause spaces a producer's retries of a publish that failed.
	retryPause = 20 * time.Millisecond
)

func cutCount() int {
	if os.Getenv(LongEnv) == "1" {
		return longCuts
	}
	return shortCuts
}

// recoveries measures, for each cut, the time to the next message through.
type recoveries struct {
	mu      sync.Mutex
	pending []time.Time // cuts not yet recovered from
	took    []time.Duration
}

func (r *recoveries) cut() {
	r.mu.Lock()
	r.pending = append(r.pending, time.Now())
	r.mu.Unlock()
}

// through records that a message went through now.
func (r *recoveries) through() {
	r.mu.Lock()
	now := time.Now()
	for _, at := range r.pending {
		r.took = append(r.took, now.Sub(at))
	}
	r.pending = r.pending[:0]
	r.mu.Unlock()
}

func (r *recoveries) into(t *timing, cuts int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t.Cuts = cuts
	if len(r.took) == 0 {
		return
	}
	d := slices.Clone(r.took)
	slices.Sort(d)
	t.RecoveryP50Ms = ms(d[len(d)/2])
	t.RecoveryMaxMs = ms(d[len(d)-1])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// faultPayload is the size of the fault properties' payloads: random bytes,
// so that what went through the proxy can be told from what bypassed it.
const faultPayload = 256

// faultMessages is p.messages with faultPayload random bytes each.
func (p *probe) faultMessages(n int) []*broker.Message {
	msgs := p.messages(0, n, 8)
	for _, m := range msgs {
		m.Payload = make([]byte, faultPayload)
		_, _ = rand.Read(m.Payload)
	}
	return msgs
}

// throughProxy fails when fewer bytes passed the proxy, in the direction
// that matters, than the payloads of the n messages that did: the adapter's
// traffic went around it (a Kafka client, for one, follows the address a
// broker advertises), and the cuts measured nothing.
func throughProxy(what string, carried int64, n int) error {
	if want := int64(n) * faultPayload; carried < want {
		return fmt.Errorf("only %d bytes of the %s's traffic passed the proxy, less than the %d bytes of payload of the %d messages: the adapter does not reach the broker through Harness.OpenAt's address alone, so the cuts did not reach it (route every connection through addr)", carried, what, want, n)
	}
	return nil
}

// proxied opens the broker through a fault proxy, or refuses when the
// harness gives no address.
func (p *probe) proxied() (*faultproxy.Proxy, *broker.Broker, error) {
	if p.h.Addr == "" || p.h.OpenAt == nil {
		return nil, nil, refused{errors.New("the harness gives no broker address to route through a proxy (Harness.Addr and Harness.OpenAt)")}
	}
	px, err := faultproxy.New(p.h.Addr)
	if err != nil {
		return nil, nil, err
	}
	p.onClose(func(context.Context) error { return px.Close() })
	var b *broker.Broker
	err = p.protect(func() error {
		var oerr error
		b, oerr = p.h.OpenAt(p.ctx, px.Addr())
		return oerr
	})
	if err != nil {
		return nil, nil, fmt.Errorf("OpenAt(proxy): %w", err)
	}
	p.onClose(b.Close)
	return px, b, nil
}

// publishThrough publishes n messages one by one through pub, retrying each
// until it is confirmed (the same ID: a retried publish may duplicate, never
// lose). Only confirmed messages enter the ledger.
func (p *probe) publishThrough(pub *broker.Publisher, n int, rec *recoveries, after func(i int)) error {
	for i, m := range p.faultMessages(n) {
		for {
			err := pub.Publish(p.ctx, p.topic, m)
			if err == nil {
				p.led.Published(m.ID, m.Key)
				if rec != nil {
					rec.through()
				}
				break
			}
			if p.ctx.Err() != nil {
				return fmt.Errorf("publishing %s: %w", m.ID, err)
			}
			select {
			case <-time.After(retryPause):
			case <-p.ctx.Done():
			}
		}
		if after != nil {
			after(i)
		}
	}
	return nil
}

// handleAll consumes sub at-least-once into the ledger.
func (p *probe) handleAll(sub *broker.Subscriber, rec *recoveries) *consumer {
	return p.consume(sub, broker.ConsumeOptions{Concurrency: 4}, func(_ context.Context, m *broker.Message) error {
		p.led.Delivered(m.ID)
		p.led.Handled(m.ID)
		if rec != nil {
			rec.through()
		}
		return nil
	}, nil)
}

// fault.cut-publish: every connection of a publisher is reset again and
// again while it publishes; no confirmed message is lost and publishing
// resumes by itself.
func faultCutPublish(p *probe) error {
	px, pb, err := p.proxied()
	if err != nil {
		return err
	}
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	c := p.handleAll(sub, nil)
	defer c.stop()
	pub, err := pb.NewPublisher(p.ctx)
	if err != nil {
		return fmt.Errorf("NewPublisher through the proxy: %w", err)
	}
	cuts := cutCount()
	n := max(200, 20*cuts)
	every := n / (cuts + 1)
	var rec recoveries
	err = p.publishThrough(pub, n, &rec, func(i int) {
		if i > 0 && i%every == 0 && px.Cuts() < cuts {
			px.Cut()
			rec.cut()
		}
	})
	if err != nil {
		return err
	}
	if err := p.waitAll(p.led, fmt.Sprintf("every confirmed message to be handled after %d cuts of the publisher's connections", px.Cuts())); err != nil {
		return err
	}
	if err := throughProxy("publisher", px.Up(), n); err != nil {
		return err
	}
	rec.into(&p.timing, px.Cuts())
	p.notef("%d cuts of the publisher's connections; recovery p50 %.0fms, max %.0fms", px.Cuts(), p.timing.RecoveryP50Ms, p.timing.RecoveryMaxMs)
	return nil
}

// fault.cut-consume: every connection of a consumer is reset again and
// again while it consumes; every message is handled and consumption
// resumes by itself.
func faultCutConsume(p *probe) error {
	px, cb, err := p.proxied()
	if err != nil {
		return err
	}
	o := broker.SubscriberOptions{Topic: p.topic, Group: p.group("g"), AckTimeout: p.h.AckTimeout}
	sub, err := cb.NewSubscriber(p.ctx, o)
	if err != nil {
		return fmt.Errorf("NewSubscriber through the proxy: %w", err)
	}
	cuts := cutCount()
	n := max(200, 20*cuts)
	if err := p.publishNew(p.faultMessages(n), 50); err != nil {
		return err
	}
	var rec recoveries
	c := p.consume(sub, broker.ConsumeOptions{Concurrency: 4}, func(_ context.Context, m *broker.Message) error {
		p.led.Delivered(m.ID)
		p.led.Handled(m.ID)
		rec.through()
		time.Sleep(time.Millisecond) // the handler's work: cuts land mid-stream
		return nil
	}, nil)
	defer c.stop()
	every := n / (cuts + 1)
	for px.Cuts() < cuts && !p.led.complete() {
		next := (px.Cuts() + 1) * every
		if err := p.wait(fmt.Sprintf("%d messages handled before cut %d", next, px.Cuts()+1), func() bool {
			return p.led.handledCount() >= next || p.led.complete()
		}); err != nil {
			return err
		}
		px.Cut()
		rec.cut()
	}
	if err := p.waitAll(p.led, fmt.Sprintf("every message to be handled after %d cuts of the consumer's connections", px.Cuts())); err != nil {
		return err
	}
	if err := throughProxy("consumer", px.Down(), n); err != nil {
		return err
	}
	rec.into(&p.timing, px.Cuts())
	p.notef("%d cuts of the consumer's connections; recovery p50 %.0fms, max %.0fms", px.Cuts(), p.timing.RecoveryP50Ms, p.timing.RecoveryMaxMs)
	return nil
}

// fault.broker-restart: the broker is stopped and started while messages
// flow; nothing confirmed is lost.
func faultBrokerRestart(p *probe) error {
	if p.h.Restart == nil {
		return refused{errors.New("the harness cannot restart the broker (Harness.Restart)")}
	}
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	var rec recoveries
	c := p.handleAll(sub, &rec)
	defer c.stop()
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	const n = 200
	restarted := false
	var restartErr error
	err = p.publishThrough(pub, n, &rec, func(i int) {
		if i == n/2 && !restarted {
			restarted = true
			rec.cut()
			restartErr = p.h.Restart(p.ctx)
		}
	})
	if restartErr != nil {
		return fmt.Errorf("Harness.Restart: %w", restartErr)
	}
	if err != nil {
		return err
	}
	if err := p.waitAll(p.led, "every confirmed message to be handled after the broker restarted"); err != nil {
		return err
	}
	rec.into(&p.timing, 1)
	p.notef("broker restarted mid-stream; back after %.0fms", p.timing.RecoveryMaxMs)
	return nil
}

// latency: publish -> handle at a fixed, modest rate (open loop), p50 and
// p99 in the report.
const (
	latencyRate     = 200 // messages per second
	latencyDuration = 2 * time.Second
)

func latency(p *probe) error {
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var took []time.Duration
	sent := map[string]time.Time{}
	c := p.consume(sub, broker.ConsumeOptions{Concurrency: 4}, func(_ context.Context, m *broker.Message) error {
		now := time.Now()
		mu.Lock()
		if at, ok := sent[m.ID]; ok && p.led.HandledCount(m.ID) == 0 {
			took = append(took, now.Sub(at))
		}
		mu.Unlock()
		p.led.Delivered(m.ID)
		p.led.Handled(m.ID)
		return nil
	}, nil)
	defer c.stop()
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	n := int(latencyRate * latencyDuration / time.Second)
	tick := time.NewTicker(time.Second / latencyRate)
	defer tick.Stop()
	for _, m := range p.messages(0, n, 8) {
		select {
		case <-tick.C:
		case <-p.ctx.Done():
			return p.ctx.Err()
		}
		p.led.Published(m.ID, m.Key)
		mu.Lock()
		sent[m.ID] = time.Now()
		mu.Unlock()
		if err := pub.Publish(p.ctx, p.topic, m); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
	}
	if err := p.waitAll(p.led, "every message to be handled"); err != nil {
		return err
	}
	mu.Lock()
	d := slices.Clone(took)
	mu.Unlock()
	slices.Sort(d)
	if len(d) > 0 {
		p.timing.LatencyP50Ms = ms(d[len(d)/2])
		p.timing.LatencyP99Ms = ms(d[len(d)*99/100])
	}
	p.notef("publish -> handle at %d msg/s: p50 %.1fms, p99 %.1fms", latencyRate, p.timing.LatencyP50Ms, p.timing.LatencyP99Ms)
	return nil
}

// lookupProperty is propertyByName, set in init: defaults is itself in
// the properties table, which a direct call would make an initialization
// cycle.
var lookupProperty func(string) (property, bool)

func init() { lookupProperty = propertyByName }

// defaultsProps are the properties defaults runs with Harness.Defaults.
var defaultsProps = []string{"roundtrip", "alo.nack-redelivers", "alo.crash-redelivers", "alo.no-loss",
	"amo.no-redelivery", "close.publisher-flush", "close.graceful-consume"}

// defaults: the core properties run again on a broker opened with the
// adapter's defaults; one that passes only with the harness's tuned
// settings fails this property.
func defaults(p *probe) error {
	if p.h.Defaults == nil {
		return refused{errors.New("the harness gives no way to open the broker with its defaults (Harness.Defaults)")}
	}
	h := p.h
	h.Open, h.Defaults = p.h.Defaults, nil
	// Harness.Parallel of them at once, each with a fresh Timeout of its
	// own, as in the suite.
	results := make([]*Result, len(defaultsProps)) // nil: not applicable
	atMost(h.Parallel, len(defaultsProps), func(i int) {
		prop, _ := lookupProperty(defaultsProps[i])
		if prop.needs(p.caps) != "" {
			return
		}
		res := runProperty(context.WithoutCancel(p.ctx), h, prop, p.logf)
		results[i] = &res
	})
	var failed []string
	for i, name := range defaultsProps {
		res := results[i]
		if res == nil {
			continue
		}
		switch res.Verdict {
		case Fail:
			failed = append(failed, fmt.Sprintf("%s (%s)", name, res.Detail))
		case Unsupported:
			p.notef("%s unsupported with the defaults: %s", name, res.Detail)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("with the adapter's defaults these fail (they pass only with the harness's settings): %s", strings.Join(failed, "; "))
	}
	p.notef("%s pass with the adapter's defaults", strings.Join(defaultsProps, ", "))
	return nil
}
