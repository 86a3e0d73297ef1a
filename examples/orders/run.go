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
	"github.com/queuekit/queuekit/middleware"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/dlq"
	"github.com/queuekit/queuekit/middleware/retry"
	"github.com/queuekit/queuekit/semantics"
)

const maxAttempts = 4

// event is one order event, the payload of each message.
type event struct {
	Order  string  `json:"order"`
	Kind   string  `json:"kind"` // created, paid, shipped
	Amount float64 `json:"amount"`
	Poison bool    `json:"poison,omitempty"` // always fails: it must end in the DLQ
}

var errPoison = errors.New("poison event: amount does not parse")

// counts are what the run observed, for the summary.
type counts struct {
	published, republished    int
	suppressed, retried, dead atomic.Int64
	failedOnce                sync.Map // message ID -> struct{}: its injected failure happened
}

func run(ctx context.Context, url, topic string, orders int, out io.Writer) error {
	b, err := broker.Open(ctx, url)
	if err != nil {
		return err
	}
	defer b.Close(context.Background())

	// Subscribe first (the dead-letter topic too), so that brokers which
	// drop messages nobody subscribed to yet keep every one.
	deadSub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: dlq.Topic(topic), Group: "ops"})
	if err != nil {
		return err
	}
	defer deadSub.Close(context.Background())
	native := b.Capabilities().NativeDeadLetter
	subOpts := broker.SubscriberOptions{Topic: topic, Group: "billing", Ordering: semantics.PerKey}
	if native {
		subOpts.MaxAttempts = maxAttempts // the broker dead-letters by itself
	}
	var subs []broker.Subscriber
	for range 2 { // two competing consumers of one group
		s, err := b.NewSubscriber(ctx, subOpts)
		if err != nil {
			return err
		}
		defer s.Close(context.Background())
		subs = append(subs, s)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		return err
	}
	defer pub.Close(context.Background())

	ledger := semantics.NewLedger()
	var c counts
	if err := produce(ctx, pub, topic, orders, ledger, &c); err != nil {
		return err
	}

	handler := broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		ledger.Delivered(m.ID)
		var e event
		if err := json.Unmarshal(m.Payload, &e); err != nil {
			return broker.Permanent(err)
		}
		if e.Poison {
			return errPoison
		}
		if _, failed := c.failedOnce.LoadOrStore(m.ID, struct{}{}); !failed && injectFailure(m.ID) {
			return errors.New("payment service timed out (injected)")
		}
		ledger.Handled(m.ID) // the side effect: bill the order
		return nil
	})
	stack := middleware.Default(middleware.Options{
		Publisher:        pub,
		Store:            dedupe.NewMemoryStore(dedupe.MemoryOptions{}),
		MaxAttempts:      maxAttempts,
		NativeDeadLetter: native,
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

	consumeCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	errs := make(chan error, len(subs)+1)
	quiet := func(*broker.Message, error) {} // failures are injected on purpose and counted
	for _, s := range subs {
		wg.Go(func() {
			errs <- broker.Consume(consumeCtx, s, stack, broker.ConsumeOptions{
				Concurrency: 4, Ordering: semantics.PerKey, OnError: quiet,
			})
		})
	}
	deadIDs := sync.Map{}
	wg.Go(func() {
		errs <- broker.Consume(consumeCtx, deadSub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if _, seen := deadIDs.LoadOrStore(m.ID, struct{}{}); !seen {
				c.dead.Add(1)
			}
			return nil
		}), broker.ConsumeOptions{OnError: quiet})
	})

	// Wait until every event is billed or dead-lettered and every copy
	// published on purpose came back as a suppressed duplicate.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		r := ledger.Report()
		if r.Handled+int(c.dead.Load()) >= r.Published && c.suppressed.Load() >= int64(c.republished) {
			break
		}
		select {
		case <-ctx.Done():
			stop()
			wg.Wait()
			return fmt.Errorf("gave up waiting: %v; dead-lettered %d", r, c.dead.Load())
		case <-tick.C:
		}
	}
	stop()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return summarise(out, url, topic, ledger.Report(), &c, &deadIDs)
}

// produce publishes 3 events per order, keyed by order ID, in batches; every
// 25th event is published a second time with the same ID.
func produce(ctx context.Context, pub broker.Publisher, topic string, orders int, ledger *semantics.Ledger, c *counts) error {
	var batch, again []*broker.Message
	for o := range orders {
		id := fmt.Sprintf("order-%04d", o)
		for i, kind := range []string{"created", "paid", "shipped"} {
			e := event{Order: id, Kind: kind, Amount: float64(10 + o%90), Poison: o%50 == 7 && kind == "paid"}
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

func summarise(out io.Writer, url, topic string, r semantics.Report, c *counts, deadIDs *sync.Map) error {
	// Dead-lettered events were never billed, by design: they are not lost.
	var lost []string
	for _, id := range r.Lost {
		if _, dead := deadIDs.Load(id); !dead {
			lost = append(lost, id)
		}
	}
	fmt.Fprintf(out, "orders example on %s (topic %s)\n", broker.Redact(url), topic)
	fmt.Fprintf(out, "  published              %5d  (%d events, %d published twice on purpose)\n", c.published, r.Published, c.republished)
	fmt.Fprintf(out, "  handled                %5d\n", r.Handled)
	fmt.Fprintf(out, "  duplicates suppressed  %5d\n", c.suppressed.Load())
	fmt.Fprintf(out, "  retried                %5d\n", c.retried.Load())
	fmt.Fprintf(out, "  dead-lettered          %5d  (poison events, after %d attempts)\n", c.dead.Load(), maxAttempts)
	fmt.Fprintf(out, "  handled twice          %5d\n", r.Duplicates)
	fmt.Fprintf(out, "  reordered within a key %5d\n", len(r.Reordered))
	fmt.Fprintf(out, "  lost                   %5d\n", len(lost))
	if len(lost) > 0 || r.Duplicates > 0 || len(r.Unexpected) > 0 {
		return fmt.Errorf("the ledger disagrees: lost %s; %v", semantics.Sample(lost, 5), r)
	}
	return nil
}
