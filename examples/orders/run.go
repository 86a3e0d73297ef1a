package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/dlq"
	"github.com/queuekit/queuekit/middleware/retry"
	"github.com/queuekit/queuekit/semantics"
)

const maxAttempts = 4

// kinds are each order's events, in the order they happen.
var kinds = [...]string{"created", "paid", "shipped"}

// event is one order event, the payload of each message.
type event struct {
	Order  string  `json:"order"`
	Seq    int     `json:"seq"`  // position in the order's life: 0 created, 1 paid, 2 shipped
	Kind   string  `json:"kind"` // created, paid, shipped
	Amount float64 `json:"amount"`
	Poison bool    `json:"poison,omitempty"` // always fails: it must end in the DLQ
}

var errPoison = errors.New("poison event: amount does not parse")

// config is one run of the example.
type config struct {
	url, topic string
	orders     int
	// work is how long handling one event takes (a call to the billing
	// service); default none.
	work time.Duration
	// quiet is how long to wait for copies published twice on purpose once
	// every event is settled: a broker that deduplicates by ID itself
	// (SQS FIFO) never delivers them. Default 3s.
	quiet time.Duration
}

// counts are what the run observed, for the summary.
type counts struct {
	published, republished    int
	suppressed, retried, dead atomic.Int64
	heldBack                  atomic.Int64
	lastDelivery              atomic.Int64 // unix nanoseconds
	failedOnce                sync.Map     // message ID -> struct{}: its injected failure happened
	deadIDs                   sync.Map     // message ID -> struct{}: arrived in the dead-letter topic
	sequenced                 bool         // the broker keeps no per-key order: the handler sequences
	ordering                  string       // why sequenced, for the summary
	native                    bool
	timedOut                  bool
	elapsed                   time.Duration
	publishedIDs              []string // each event once, in publish order
}

// run publishes the orders' events to cfg.topic and consumes them, then
// prints the summary. It returns before ctx's deadline, an error when the
// ledger disagrees (something lost, handled twice or out of order) or when
// ctx ended before every event was handled or dead-lettered.
func run(ctx context.Context, cfg config, out io.Writer) (err error) {
	start := time.Now()
	if cfg.quiet <= 0 {
		cfg.quiet = 3 * time.Second
	}
	// Work stops a little before ctx's deadline, so that closing the
	// subscribers (an SQS long poll, a Kafka group leave) fits in it too.
	grace := 10 * time.Second
	work, stopWork := context.WithCancel(ctx)
	defer stopWork()
	if dl, ok := ctx.Deadline(); ok {
		grace = min(max(time.Until(dl)/10, 500*time.Millisecond), grace)
		work, stopWork = context.WithDeadline(ctx, dl.Add(-grace))
		defer stopWork()
	}
	// Closing gets what is left of the grace, a few seconds at most:
	// subscribers that cannot finish closing by then (an SQS long poll
	// waits up to 20s) abandon what they were waiting for, which only
	// delays messages nobody will read.
	closing := func() (context.Context, context.CancelFunc) {
		return closeContext(ctx, min(grace, 3*time.Second))
	}

	b, err := broker.Open(work, cfg.url)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := closing()
		defer cancel()
		if cerr := b.Close(cctx); cerr != nil && err == nil && cctx.Err() == nil {
			err = cerr
		}
	}()

	// Topology first: a group receives what is published after it was
	// declared, and publishing to a topic without a group fails with
	// broker.ErrNoGroup. Subscribing declares the group; the dead-letter
	// topic gets its own group, "ops", which counts dead letters.
	deadSub, err := b.NewSubscriber(work, broker.SubscriberOptions{Topic: dlq.Topic(cfg.topic), Group: "ops"})
	if err != nil {
		return err
	}
	var c counts
	c.native = b.Capabilities().NativeDeadLetter
	subOpts := broker.SubscriberOptions{Topic: cfg.topic, Group: "billing", Ordering: semantics.PerKey}
	if c.native {
		subOpts.MaxAttempts = maxAttempts // the broker dead-letters by itself
	}
	var subs []*broker.Subscriber
	for range 2 { // two competing consumers of one group
		s, err := b.NewSubscriber(work, subOpts)
		if err != nil && subOpts.Ordering == semantics.PerKey && broker.KindOf(err) == semantics.Unsupported {
			// A broker that cannot keep a key's order says so rather than
			// run weaker than asked; this handler then sequences each
			// order's events itself (created before paid before shipped).
			c.sequenced, c.ordering = true, err.Error()
			subOpts.Ordering = semantics.Unordered
			s, err = b.NewSubscriber(work, subOpts)
		}
		if err != nil {
			return err
		}
		subs = append(subs, s)
	}
	pub, err := b.NewPublisher(work)
	if err != nil {
		return err
	}

	ledger := conformance.NewLedger()
	if err := produce(work, pub, cfg.topic, cfg.orders, ledger, &c); err != nil {
		return err
	}

	seq := newSequencer(c.sequenced)
	handler := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		var e event
		if err := json.Unmarshal(m.Payload, &e); err != nil {
			return broker.Permanent(err)
		}
		if err := seq.wait(ctx, e, &c.heldBack); err != nil {
			return err
		}
		ledger.Delivered(m.ID)
		if e.Poison {
			return errPoison
		}
		if _, failed := c.failedOnce.LoadOrStore(m.ID, struct{}{}); !failed && injectFailure(m.ID) {
			return errors.New("payment service timed out (injected)")
		}
		if cfg.work > 0 {
			t := time.NewTimer(cfg.work)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		ledger.Handled(m.ID) // the side effect: bill the order
		seq.settled(e)
		return nil
	})
	stack := middleware.Default(middleware.Options{
		Publisher:        pub,
		Store:            dedupe.NewMemoryStore(dedupe.MemoryOptions{}),
		MaxAttempts:      maxAttempts,
		NativeDeadLetter: c.native,
		Retry: &retry.Options{
			Mode: retry.Redelivery, MaxAttempts: maxAttempts,
			Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond,
			OnRetry: func(*broker.Message, int, error, time.Duration) { c.retried.Add(1) },
		},
		Dedupe: dedupe.Options{
			InFlightDelay: 50 * time.Millisecond,
			OnDuplicate:   func(*broker.Message) { c.suppressed.Add(1) },
		},
	})(handler)
	watched := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		c.lastDelivery.Store(time.Now().UnixNano())
		return stack.Handle(ctx, m)
	})

	consumeCtx, stopConsuming := context.WithCancel(work)
	defer stopConsuming()
	var wg sync.WaitGroup
	errs := make(chan error, len(subs)+1)
	quiet := func(*broker.Message, error) {} // failures are injected on purpose and counted
	shutdown := grace / 4                    // handlers still running when work stops
	c.lastDelivery.Store(time.Now().UnixNano())
	concurrency := 4
	if c.sequenced {
		concurrency = 32 // handlers wait for their order's earlier events: more of them
	}
	for _, s := range subs {
		wg.Go(func() {
			errs <- broker.Consume(consumeCtx, s, watched, broker.ConsumeOptions{
				Concurrency: concurrency, OnError: quiet, ShutdownTimeout: shutdown,
			})
		})
	}
	wg.Go(func() {
		errs <- broker.Consume(consumeCtx, deadSub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if _, seen := c.deadIDs.LoadOrStore(m.ID, struct{}{}); !seen {
				c.dead.Add(1)
				var e event
				if json.Unmarshal(m.Payload, &e) == nil {
					seq.settled(e) // the order's later events need not wait for it
				}
			}
			return nil
		}), broker.ConsumeOptions{OnError: quiet, ShutdownTimeout: shutdown})
	})

	// Wait until every event is billed or dead-lettered, then for the
	// copies published twice on purpose: each comes back as a suppressed
	// duplicate, unless the broker dropped it itself (SQS FIFO drops an
	// ID published again within five minutes).
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !c.timedOut {
		if pending := unsettled(ledger, &c); pending == 0 {
			idle := time.Since(time.Unix(0, c.lastDelivery.Load()))
			if c.suppressed.Load() >= int64(c.republished) || idle >= cfg.quiet {
				break
			}
		}
		select {
		case <-work.Done():
			c.timedOut = true
		case <-tick.C:
		}
	}
	stopConsuming()
	wg.Wait()
	close(errs)
	// Close the subscribers at once, together, within the closing budget
	// (broker.Close would close them one after the other).
	cctx, cancel := closing()
	var closers sync.WaitGroup
	for _, s := range append(subs, deadSub) {
		closers.Go(func() { _ = s.Close(cctx) })
	}
	closers.Wait()
	cancel()
	for err := range errs {
		if err != nil && !c.timedOut {
			return err
		}
	}
	c.elapsed = time.Since(start)
	return summarise(out, cfg, ledger.Report(), &c)
}

// unsettled counts the events neither handled nor dead-lettered yet.
func unsettled(ledger *conformance.Ledger, c *counts) int {
	n := 0
	for _, id := range c.publishedIDs {
		if ledger.HandledCount(id) > 0 {
			continue
		}
		if _, dead := c.deadIDs.Load(id); !dead {
			n++
		}
	}
	return n
}

// produce publishes 3 events per order, keyed by order ID, in batches; every
// 25th event is published a second time with the same ID.
func produce(ctx context.Context, pub *broker.Publisher, topic string, orders int, ledger *conformance.Ledger, c *counts) error {
	var batch, again []*broker.Message
	for o := range orders {
		id := fmt.Sprintf("order-%04d", o)
		for i, kind := range kinds {
			e := event{Order: id, Seq: i, Kind: kind, Amount: float64(10 + o%90), Poison: o%50 == 7 && kind == "paid"}
			payload, _ := json.Marshal(e)
			m := &broker.Message{Key: id, Payload: payload, Headers: map[string]string{"event": kind}}
			batch = append(batch, m)
			if (3*o+i)%25 == 24 {
				again = append(again, m)
			}
		}
	}
	for start := 0; start < len(batch); start += 100 {
		part := batch[start:min(start+100, len(batch))]
		if err := pub.Publish(ctx, topic, part...); err != nil {
			return err
		}
		for _, m := range part {
			ledger.Published(m.ID, m.Key)
			c.publishedIDs = append(c.publishedIDs, m.ID)
		}
	}
	// The same messages again, IDs unchanged: what a producer that retries
	// after a lost acknowledgement sends.
	for _, m := range again {
		dup := &broker.Message{ID: m.ID, Key: m.Key, Payload: m.Payload, Headers: m.Headers}
		if err := pub.Publish(ctx, topic, dup); err != nil {
			return err
		}
	}
	c.published = len(batch) + len(again)
	c.republished = len(again)
	return nil
}

// injectFailure decides, from the message ID, whether its first attempt
// fails: about one event in eight.
func injectFailure(id string) bool {
	var h uint32
	for i := 0; i < len(id); i++ {
		h = h*31 + uint32(id[i])
	}
	return h%8 == 0
}

func summarise(out io.Writer, cfg config, r conformance.LedgerReport, c *counts) error {
	// Dead-lettered events were never billed, by design: they are not
	// lost. Before the end of the run, the others are not lost either,
	// only not handled yet.
	var missing []string
	for _, id := range r.Lost {
		if _, dead := c.deadIDs.Load(id); !dead {
			missing = append(missing, id)
		}
	}
	lost := len(missing)
	if c.timedOut {
		lost = 0
	}
	notDelivered := max(int64(c.republished)-c.suppressed.Load(), 0)
	fmt.Fprintf(out, "orders example on %s (topic %s)\n", broker.Redact(cfg.url), cfg.topic)
	fmt.Fprintf(out, "  published              %5d  (%d events, %d published twice on purpose)\n", c.published, r.Published, c.republished)
	fmt.Fprintf(out, "  handled                %5d\n", r.Handled)
	fmt.Fprintf(out, "  duplicates suppressed  %5d  (by the dedupe middleware)\n", c.suppressed.Load())
	fmt.Fprintf(out, "  duplicates not sent    %5d  (dropped by the broker, which deduplicates IDs itself)\n", notDelivered)
	fmt.Fprintf(out, "  retried                %5d\n", c.retried.Load())
	fmt.Fprintf(out, "  dead-lettered          %5d  (poison events, after %d attempts; not lost)\n", c.dead.Load(), maxAttempts)
	if c.sequenced {
		fmt.Fprintf(out, "  held back for order    %5d  (the broker keeps no per-key order; the handler sequences each order)\n", c.heldBack.Load())
	}
	fmt.Fprintf(out, "  handled twice          %5d\n", r.Duplicates)
	fmt.Fprintf(out, "  reordered within a key %5d\n", len(r.Reordered))
	fmt.Fprintf(out, "  lost                   %5d\n", lost)
	fmt.Fprintf(out, "  took                   %5.1fs\n", c.elapsed.Seconds())
	if c.timedOut {
		fmt.Fprintf(out, "  not settled yet        %5d  (neither handled nor dead-lettered when -timeout ran out)\n", len(missing))
		return fmt.Errorf("timed out after %v with %d of %d events neither handled nor dead-lettered (ids %s): raise -timeout",
			c.elapsed.Round(100*time.Millisecond), len(missing), r.Published, conformance.Sample(missing, 3))
	}
	if lost > 0 || r.Duplicates > 0 || len(r.Reordered) > 0 || len(r.Unexpected) > 0 {
		return fmt.Errorf("the ledger disagrees: lost %d (ids %s); %v", lost, conformance.Sample(missing, 5), r)
	}
	return nil
}

// closeContext returns a context for closing: not cancelled with ctx (the
// caller's interrupt), ending after budget and no later than ctx's
// deadline.
func closeContext(ctx context.Context, budget time.Duration) (context.Context, context.CancelFunc) {
	end := time.Now().Add(budget)
	if dl, ok := ctx.Deadline(); ok && dl.Before(end) {
		end = dl
	}
	return context.WithDeadline(context.WithoutCancel(ctx), end)
}

// sequencer makes each order's events run in sequence (created, paid,
// shipped) where the broker cannot keep a key's order: an event whose
// predecessors are not settled (handled or dead-lettered) waits for them a
// little, then goes back to the broker for later. Off, it does nothing.
type sequencer struct {
	on      bool
	mu      sync.Mutex
	done    map[string]uint8 // order -> bit i set: event i settled
	changed chan struct{}    // closed and replaced whenever done changes
}

// Holding an event back: how long it waits in its handler for its
// predecessors, then how long before the broker delivers it again.
const (
	holdWait  = 3 * time.Second
	holdRetry = time.Second
)

var errEarlierPending = errors.New("an earlier event of this order is not settled yet")

func newSequencer(on bool) *sequencer {
	return &sequencer{on: on, done: map[string]uint8{}, changed: make(chan struct{})}
}

// wait returns nil once every event of e's order before e is settled, or
// an error asking for redelivery later.
func (s *sequencer) wait(ctx context.Context, e event, heldBack *atomic.Int64) error {
	if !s.on {
		return nil
	}
	var timer *time.Timer
	for {
		s.mu.Lock()
		want := uint8(1)<<e.Seq - 1
		ready, changed := s.done[e.Order]&want == want, s.changed
		s.mu.Unlock()
		if ready {
			return nil
		}
		if timer == nil {
			heldBack.Add(1)
			timer = time.NewTimer(holdWait)
			defer timer.Stop()
		}
		select {
		case <-changed:
		case <-timer.C:
			return broker.RetryAfter(errEarlierPending, holdRetry)
		case <-ctx.Done():
			return broker.RetryAfter(errEarlierPending, holdRetry)
		}
	}
}

// settled records that e was handled or dead-lettered.
func (s *sequencer) settled(e event) {
	if !s.on || e.Seq < 0 || e.Seq >= len(kinds) {
		return
	}
	s.mu.Lock()
	s.done[e.Order] |= 1 << e.Seq
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}
