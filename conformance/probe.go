package conformance

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// errInjected is the handler failure properties inject on purpose; Consume
// reports it through OnError, which must not count it as a problem.
var errInjected = errors.New("conformance: injected handler failure")

// probe is one property's run: its broker, topic, ledger, the things to
// close afterwards, and the problems found along the way (checks made in
// background goroutines report here rather than returning).
type probe struct {
	ctx     context.Context // cancelled at Timeout or when the property ends
	cancel  context.CancelFunc
	h       Harness
	prop    string
	ordered bool   // see property.ordered
	run     string // random prefix of this run's message ids
	logf    func(string, ...any)

	b     broker.Broker
	caps  semantics.Capabilities
	topic string
	led   *tally
	// counts, when set by a property, replace the ledger's in the result.
	counts *counts
	notes  []string

	sig signal
	wg  sync.WaitGroup

	mu         sync.Mutex
	consumeErr []string // first errors Consume reported through OnError
	consumeN   int      // how many it reported
	fails      []string
	extra      int   // failures beyond the ones kept in fails
	fatal      error // a failure that makes waiting pointless
	closers    []func(context.Context) error
}

type counts struct{ published, handled, lost, duplicates, reordered int }

const maxFails = 10

// failf records a failed check and carries on.
func (p *probe) failf(format string, args ...any) {
	p.mu.Lock()
	if len(p.fails) < maxFails {
		p.fails = append(p.fails, fmt.Sprintf(format, args...))
	} else {
		p.extra++
	}
	p.mu.Unlock()
	p.sig.poke()
}

// abort records a failure after which waiting is pointless (the receive
// loop died); waits return it at once.
func (p *probe) abort(err error) {
	p.mu.Lock()
	if p.fatal == nil {
		p.fatal = err
	}
	p.mu.Unlock()
	p.sig.poke()
}

func (p *probe) aborted() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fatal
}

func (p *probe) problems() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	if p.fatal != nil {
		out = append(out, p.fatal.Error())
	}
	out = append(out, p.fails...)
	if p.extra > 0 {
		out = append(out, fmt.Sprintf("and %d more problems", p.extra))
	}
	return out
}

func (p *probe) consumeError(m *broker.Message, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.consumeN++
	if len(p.consumeErr) < 2 {
		p.consumeErr = append(p.consumeErr, fmt.Sprintf("%s: %v", m.ID, err))
	}
}

// consumeNote summarises the errors Consume reported, or "".
func (p *probe) consumeNote() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.consumeN == 0 {
		return ""
	}
	return fmt.Sprintf("Consume reported %d settle or handler errors, such as %s", p.consumeN, strings.Join(p.consumeErr, "; "))
}

// notef adds an observation to the detail of a passing property.
func (p *probe) notef(format string, args ...any) {
	p.notes = append(p.notes, fmt.Sprintf(format, args...))
}

func (p *probe) log(format string, args ...any) {
	if p.logf != nil {
		p.logf(format, args...)
	}
}

// protect runs fn, turning a panic into an error.
func (p *probe) protect(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return fn()
}

// goSafe runs fn in a goroutine that teardown waits for; a panic aborts the
// property instead of crashing the test binary.
func (p *probe) goSafe(fn func()) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() {
			if r := recover(); r != nil {
				p.abort(fmt.Errorf("panic: %v", r))
			}
		}()
		fn()
	}()
}

// onClose registers fn to run at teardown, last registered first.
func (p *probe) onClose(fn func(context.Context) error) {
	p.mu.Lock()
	p.closers = append(p.closers, fn)
	p.mu.Unlock()
}

func (p *probe) open() (b broker.Broker, err error) {
	err = p.protect(func() error {
		var oerr error
		b, oerr = p.h.Open(p.ctx)
		return oerr
	})
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, errors.New("Harness.Open returned a nil broker and no error")
	}
	p.onClose(b.Close)
	return b, nil
}

// teardown stops the property's goroutines, closes what it opened (newest
// first) and reports a Close that fails or goroutines that do not stop.
func (p *probe) teardown() {
	p.cancel()
	stopped := waitGroupDone(&p.wg, teardownTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	p.mu.Lock()
	closers := p.closers
	p.closers = nil
	p.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		err := p.protect(func() error { return closers[i](ctx) })
		if err != nil && broker.KindOf(err) != semantics.Closed {
			p.failf("close: %v", err)
		}
	}
	if !stopped && !waitGroupDone(&p.wg, teardownTimeout) {
		p.failf("goroutines still blocked %v after the property ended and everything was closed: Receive (or Consume) ignores ctx and Close", 2*teardownTimeout)
	}
}

func waitGroupDone(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return waitClosed(done, d)
}

// signal wakes waiters whenever something was recorded.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// wait returns a channel closed at the next poke.
func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) poke() {
	s.mu.Lock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
	s.mu.Unlock()
}

// wait blocks until cond holds, re-checking it whenever something is
// recorded, and gives up when the property's deadline passes or it aborts.
func (p *probe) wait(what string, cond func() bool) error {
	start := time.Now()
	for {
		ch := p.sig.wait()
		if cond() {
			return nil
		}
		if err := p.aborted(); err != nil {
			return err
		}
		select {
		case <-ch:
		case <-p.ctx.Done():
			return fmt.Errorf("gave up after %v waiting for %s", time.Since(start).Round(time.Millisecond), what)
		}
	}
}

// observe watches for cond during window and reports whether it became
// true. It is for properties that must show that something does NOT happen:
// a bounded window is a trade-off between test time and catching late
// events (see the package doc).
func (p *probe) observe(window time.Duration, cond func() bool) bool {
	t := time.NewTimer(window)
	defer t.Stop()
	for {
		ch := p.sig.wait()
		if cond() {
			return true
		}
		select {
		case <-ch:
		case <-t.C:
			return cond()
		case <-p.ctx.Done():
			return cond()
		}
	}
}

// tally is a Ledger that wakes the probe's waiters and keeps the counts the
// waits need without building a full report each time.
type tally struct {
	*semantics.Ledger
	p    *probe
	mu   sync.Mutex
	pub  map[string]bool
	seen map[string]int
	done int // distinct published ids handled
}

func newTally(p *probe) *tally {
	return &tally{Ledger: semantics.NewLedger(), p: p, pub: map[string]bool{}, seen: map[string]int{}}
}

// Published records id as published.
func (t *tally) Published(id, key string) {
	t.Ledger.Published(id, key)
	t.mu.Lock()
	if !t.pub[id] {
		t.pub[id] = true
		if t.seen[id] > 0 {
			t.done++
		}
	}
	t.mu.Unlock()
	t.p.sig.poke()
}

// Delivered records a delivery of id.
func (t *tally) Delivered(id string) {
	t.Ledger.Delivered(id)
	t.p.sig.poke()
}

// Handled records a successful handling of id.
func (t *tally) Handled(id string) {
	t.Ledger.Handled(id)
	t.mu.Lock()
	t.seen[id]++
	if t.seen[id] == 1 && t.pub[id] {
		t.done++
	}
	t.mu.Unlock()
	t.p.sig.poke()
}

// complete reports whether every published message was handled.
func (t *tally) complete() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pub) > 0 && t.done == len(t.pub)
}

// handledCount is how many distinct published messages were handled.
func (t *tally) handledCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done
}

// waitAll waits until every published message was handled; the error
// carries the ledger's numbers and ids.
func (p *probe) waitAll(led *tally, what string) error {
	if err := p.wait(what, led.complete); err != nil {
		return fmt.Errorf("%s (%v)", p.summary(led.Report()), err)
	}
	return nil
}

// summary is the ledger report in one line, without reordering where the
// property defines no order.
func (p *probe) summary(r semantics.Report) string {
	if !p.ordered {
		r.Reordered = nil
	}
	return r.String()
}

// id is the id of the i-th message of this run.
func (p *probe) id(i int) string { return fmt.Sprintf("%s-%04d", p.run, i) }

// index is the inverse of id, or -1.
func index(id string) int {
	i := strings.LastIndexByte(id, '-')
	if i < 0 {
		return -1
	}
	n, err := strconv.Atoi(id[i+1:])
	if err != nil {
		return -1
	}
	return n
}

// messages returns n messages with ids p.id(from..), keys spread over keys
// distinct values (each message its own key when keys is 0) and a payload
// that names the message.
func (p *probe) messages(from, n, keys int) []*broker.Message {
	msgs := make([]*broker.Message, n)
	for j := range msgs {
		i := from + j
		k := i
		if keys > 0 {
			k = i % keys
		}
		msgs[j] = &broker.Message{
			ID:      p.id(i),
			Key:     "k" + strconv.Itoa(k),
			Payload: []byte("message " + strconv.Itoa(i)),
		}
	}
	return msgs
}

func (p *probe) group(name string) string { return p.topic + "-" + name }

// publisher returns a new publisher, closed at teardown.
func (p *probe) publisher() (broker.Publisher, error) {
	pub, err := p.b.NewPublisher(p.ctx)
	if err != nil {
		return nil, fmt.Errorf("NewPublisher: %w", err)
	}
	if pub == nil {
		return nil, errors.New("NewPublisher returned nil and no error")
	}
	p.onClose(pub.Close)
	return pub, nil
}

// subscribe makes a subscriber to the property's topic in group (named
// after the topic, so fresh), with the harness's AckTimeout; edit may change
// the options. It is closed at teardown.
func (p *probe) subscribe(group string, edit func(*broker.SubscriberOptions)) (broker.Subscriber, error) {
	o := broker.SubscriberOptions{Topic: p.topic, Group: p.group(group), AckTimeout: p.h.AckTimeout}
	if edit != nil {
		edit(&o)
	}
	sub, err := p.b.NewSubscriber(p.ctx, o)
	if err != nil {
		return nil, fmt.Errorf("NewSubscriber(topic %s, group %s): %w", o.Topic, o.Group, err)
	}
	if sub == nil {
		return nil, errors.New("NewSubscriber returned nil and no error")
	}
	p.onClose(sub.Close)
	return sub, nil
}

// publish records msgs in led (in slice order, which is the publish order)
// and publishes them in batches of batch, one batch after the other. Any
// error fails the property: a test broker must accept what it is sent.
func (p *probe) publish(pub broker.Publisher, led *tally, msgs []*broker.Message, batch int) error {
	for _, m := range msgs {
		led.Published(m.ID, m.Key)
	}
	for len(msgs) > 0 {
		n := min(batch, len(msgs))
		if err := pub.Publish(p.ctx, p.topic, msgs[:n]...); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		msgs = msgs[n:]
	}
	return nil
}

// publishNew publishes msgs to the property's topic with a new publisher,
// recording them in the property's ledger (see publish).
func (p *probe) publishNew(msgs []*broker.Message, batch int) error {
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	return p.publish(pub, p.led, msgs, batch)
}

// bg is the context deliveries are settled with: not cancelled when the
// property ends, so that a settle racing the end is not a false failure.
func (p *probe) bg() context.Context { return context.WithoutCancel(p.ctx) }

func (p *probe) ack(d broker.Delivery) {
	if err := d.Ack(p.bg()); err != nil {
		p.failf("Ack(%s): %v", d.Message().ID, err)
	}
}

func (p *probe) nack(d broker.Delivery, delay time.Duration) {
	if err := d.Nack(p.bg(), delay); err != nil {
		p.failf("Nack(%s, %v): %v", d.Message().ID, delay, err)
	}
}

// receive runs fn on each delivery of sub in a goroutine until stop is
// called or the property ends. A Receive error other than a transient one
// aborts the property.
func (p *probe) receive(sub broker.Subscriber, fn func(broker.Delivery)) (stop func()) {
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan struct{})
	p.goSafe(func() {
		defer close(done)
		backoff := 10 * time.Millisecond
		for {
			d, err := sub.Receive(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if broker.KindOf(err) == semantics.Transient {
					select {
					case <-ctx.Done():
						return
					case <-time.After(backoff):
					}
					backoff = min(2*backoff, time.Second)
					continue
				}
				p.abort(fmt.Errorf("Receive: %w", err))
				return
			}
			if d == nil || d.Message() == nil {
				p.abort(errors.New("Receive returned a nil delivery (or message) and no error"))
				return
			}
			backoff = 10 * time.Millisecond
			fn(d)
		}
	})
	return func() {
		cancel()
		if !waitClosed(done, teardownTimeout) {
			p.abort(fmt.Errorf("Receive did not return within %v of its ctx being cancelled", teardownTimeout))
		}
	}
}

// consumer is a broker.Consume running in the background.
type consumer struct {
	cancel  context.CancelFunc
	done    chan struct{}
	result  error
	once    sync.Once
	waitErr error
}

// stop cancels Consume and returns what it returned.
func (c *consumer) stop() error {
	c.cancel()
	return c.wait()
}

// wait waits (bounded) for Consume to return after cancel.
func (c *consumer) wait() error {
	c.once.Do(func() {
		if !waitClosed(c.done, teardownTimeout) {
			c.waitErr = fmt.Errorf("Consume did not return within %v of its ctx being cancelled", teardownTimeout)
			return
		}
		c.waitErr = c.result
	})
	return c.waitErr
}

// consume runs broker.Consume on sub in a goroutine; after, if not nil, runs
// as soon as Consume returns. Errors Consume reports through OnError (other
// than the failures the handler injects) are noted in the detail but do not
// fail the property by themselves: an Ack that fails because a slow consumer
// let the delivery expire is correct at-least-once behaviour, and what it
// leads to (loss, duplicates) is what the ledger judges.
func (p *probe) consume(sub broker.Subscriber, opts broker.ConsumeOptions, h broker.HandlerFunc, after func()) *consumer {
	ctx, cancel := context.WithCancel(p.ctx)
	opts.OnError = func(m *broker.Message, err error) {
		if !errors.Is(err, errInjected) {
			p.consumeError(m, err)
		}
	}
	c := &consumer{cancel: cancel, done: make(chan struct{})}
	p.goSafe(func() {
		defer close(c.done)
		c.result = broker.Consume(ctx, sub, h, opts)
		if after != nil {
			after()
		}
		if ctx.Err() == nil {
			p.abort(fmt.Errorf("Consume returned before it was stopped: %v", c.result))
		}
	})
	return c
}

func waitClosed(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}
