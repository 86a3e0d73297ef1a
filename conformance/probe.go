package conformance

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

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

	b     *broker.Broker
	caps  semantics.Capabilities
	topic string
	led   *tally
	// counts, when set by a property, replace the ledger's in the result.
	counts *counts
	notes  []string
	// timing, when set by a property, goes into the result as is.
	timing timing

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

func (p *probe) open() (b *broker.Broker, err error) {
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

// signal wakes waiters whenever something was recorded.
// wait returns a channel closed at the next poke.
// wait blocks until cond holds, re-checking it whenever something is
// recorded, and gives up when the property's deadline passes or it aborts.
// observe watches for cond during window and reports whether it became
// true. It is for properties that must show that something does NOT happen:
// a bounded window is a trade-off between test time and catching late
// events (see the package doc).
// tally is a Ledger that wakes the probe's waiters and keeps the counts the
// waits need without building a full report each time.
// Published records id as published.
// Delivered records a delivery of id.
// Handled records a successful handling of id.
// complete reports whether every published message was handled.
// handledCount is how many distinct published messages were handled.
// waitAll waits until every published message was handled; the error
// carries the ledger's numbers and ids.
// summary is the ledger report in one line, without reordering where the
// property defines no order.
// id is the id of the i-th message of this run.
// index is the inverse of id, or -1.
// messages returns n messages with ids p.id(from..), keys spread over keys
// distinct values (each message its own key when keys is 0) and a payload
// that names the message.
// publisher returns a new publisher, closed at teardown.
// subscribe makes a subscriber to the property's topic in group (named
// after the topic, so fresh), with the harness's AckTimeout; edit may change
// the options. It is closed at teardown.
// publish records msgs in led (in slice order, which is the publish order)
// and publishes them in batches of batch, one batch after the other. Any
// error fails the property: a test broker must accept what it is sent.
// publishNew publishes msgs to the property's topic with a new publisher,
// recording them in the property's ledger (see publish).
// bg is the context deliveries are settled with: not cancelled when the
// property ends, so that a settle racing the end is not a false failure.
// receive runs fn on each delivery of sub in a goroutine until stop is
// called or the property ends. A Receive error other than a transient one
// aborts the property.
// consumer is a broker.Consume running in the background.
// stop cancels Consume and returns what it returned.
// wait waits (bounded) for Consume to return after cancel.
// consume runs broker.Consume on sub in a goroutine; after, if not nil, runs
// as soon as Consume returns. Errors Consume reports through OnError (other
// than the failures the handler injects) are noted in the detail but do not
// fail the property by themselves: an Ack that fails because a slow consumer
// let the delivery expire is correct at-least-once behaviour, and what it
// leads to (loss, duplicates) is what the ledger judges.
