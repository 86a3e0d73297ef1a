package watermill

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// DefaultCloseTimeout bounds Publisher.Close and Subscriber.Close, which
// take no context in Watermill's interfaces.
const DefaultCloseTimeout = 30 * time.Second

// Publisher is a Watermill message.Publisher that publishes through a
// queuekit publisher, so that a Watermill Router publishes to any queuekit
// adapter. It is safe for concurrent use.
type Publisher struct {
	pub          broker.Sender
	closeTimeout time.Duration
	closed       atomic.Bool
	once         sync.Once
	closeErr     error
}

// NewPublisher returns a Watermill publisher over pub: a *broker.Publisher,
// or a decorator of one (such as the otel middleware's tracing publisher).
// It owns pub: Close closes it when it has a Close(context.Context) error
// method (a Router closes its handlers' publishers when it stops). A
// closeTimeout of 0 means DefaultCloseTimeout.
func NewPublisher(pub broker.Sender, closeTimeout time.Duration) *Publisher {
	if closeTimeout <= 0 {
		closeTimeout = DefaultCloseTimeout
	}
	return &Publisher{pub: pub, closeTimeout: closeTimeout}
}

// Publish publishes msgs to topic through the queuekit publisher and returns
// once it has durably accepted them (the adapter's guarantee). The message
// UUID is the queuekit ID (an empty UUID gets a new one, written back to the
// message), metadata entry MetadataKey is the Key, and every other entry is
// a header but the ones a delivery carries (broker.HeaderPublishedAt,
// broker.HeaderAttempt, broker.HeaderID), so that a consumed message can be
// passed on. Consecutive messages that share a context (Message.Context) go
// in one Publish call, so the adapter can batch them; a failure is a
// *broker.PublishError that names the failed messages. Publishing to a
// topic on which no group was declared fails with broker.ErrNoGroup.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	const op = "watermill: publish"
	switch {
	case p.closed.Load():
		return broker.ErrClosed
	case p.pub == nil:
		return broker.Errorf(semantics.InvalidArgument, op, "the Publisher has no queuekit publisher (NewPublisher(nil))")
	}
	qms := make([]*broker.Message, len(msgs))
	for i, wm := range msgs {
		if wm == nil {
			return broker.Errorf(semantics.InvalidArgument, op, "message %d is nil", i)
		}
		qms[i] = publishable(wm)
	}
	for start := 0; start < len(msgs); {
		ctx := msgs[start].Context()
		end := start + 1
		for end < len(msgs) && msgs[end].Context() == ctx {
			end++
		}
		err := p.pub.Publish(ctx, topic, qms[start:end]...)
		for i := start; i < end; i++ {
			if msgs[i].UUID == "" {
				msgs[i].UUID = qms[i].ID
			}
		}
		if err != nil {
			var pe *broker.PublishError
			if start > 0 && errors.As(err, &pe) {
				for i := range pe.Failed {
					pe.Failed[i].Index += start
				}
			}
			return err
		}
		start = end
	}
	return nil
}

// Close closes the queuekit publisher (when it has a Close method),
// flushing it for up to the close timeout; later Publish calls return
// broker.ErrClosed. A second Close returns the first one's result.
func (p *Publisher) Close() error {
	p.once.Do(func() {
		p.closed.Store(true)
		c, ok := p.pub.(interface{ Close(context.Context) error })
		if !ok {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), p.closeTimeout)
		defer cancel()
		p.closeErr = c.Close(ctx)
	})
	return p.closeErr
}

// SubscriberConfig configures a Watermill Subscriber over a queuekit
// broker.
type SubscriberConfig struct {
	// Subscription is the template of the queuekit subscription each
	// Subscribe call makes; Subscribe sets its Topic. Group defaults to
	// "default" (see broker.SubscriberOptions): Subscribe calls of one group
	// compete for its messages, as Watermill's Router expects of a consumer
	// group. Its Guarantee and Ordering are declared to the adapter (which
	// configures itself or refuses) and kept by broker.Consume: under
	// AtMostOnce a message is acked before it is handed out and a Nack
	// does nothing; with Ordering PerKey and InFlight > 1 the messages of
	// one key are handed out one at a time.
	Subscription broker.SubscriberOptions
	// InFlight is how many messages a subscription hands out before the
	// first of them is acked or nacked (broker.ConsumeOptions.Concurrency);
	// default 1, Watermill's contract ("to receive the next message, Ack
	// must be called"). The Router handles each message in its own
	// goroutine, so a larger value makes a Router handler concurrent.
	InFlight int
	// NackDelay is the delay of the queuekit Nack when a Watermill message
	// is nacked (the Router nacks on handler errors); default 0.
	NackDelay time.Duration
	// CloseTimeout bounds Close, and how long a message handed out may
	// stay unsettled once its subscription ends before it is nacked;
	// default DefaultCloseTimeout.
	CloseTimeout time.Duration
	// Idempotency is the store of handled message IDs of an
	// EffectivelyOnce subscription (broker.ConsumeOptions.Idempotency):
	// required for EffectivelyOnce, refused otherwise.
	Idempotency broker.IdempotencyStore
	// IdempotencyOptions tune the EffectivelyOnce step.
	IdempotencyOptions broker.IdempotencyOptions
	// OnError observes receive, ack and nack errors that the Watermill
	// interface has no way to return; default: dropped. A Watermill Nack
	// is not an error.
	OnError func(err error)
}

// Subscriber is a Watermill message.Subscriber over a queuekit broker: each
// Subscribe call is one queuekit subscriber of the configured group,
// consumed with broker.Consume, so a Watermill Router consumes from any
// queuekit adapter. It is safe for concurrent use.
type Subscriber struct {
	b   *broker.Broker
	cfg SubscriberConfig

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	wg      sync.WaitGroup
}

// NewSubscriber returns a Watermill subscriber over b. Close does not close
// b.
func NewSubscriber(b *broker.Broker, cfg SubscriberConfig) *Subscriber {
	if cfg.InFlight <= 0 {
		cfg.InFlight = 1
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	return &Subscriber{b: b, cfg: cfg, closing: make(chan struct{})}
}

// SubscribeInitialize declares the configured group on topic
// (broker.Broker.Declare), so that messages published before the first
// Subscribe are kept for it. Where the adapter cannot declare, it makes the
// group's subscriber and closes it again.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CloseTimeout)
	defer cancel()
	group := s.cfg.Subscription.Group
	if group == "" {
		group = "default"
	}
	err := s.b.Declare(ctx, topic, group)
	if broker.KindOf(err) != semantics.Unsupported {
		return err
	}
	o := s.cfg.Subscription
	o.Topic = topic
	sub, err := s.b.NewSubscriber(ctx, o)
	if err != nil {
		return err
	}
	return sub.Close(ctx)
}

// Subscribe makes a queuekit subscriber of the configured group for topic
// and returns the channel of its messages, which broker.Consume hands out
// one per handler slot (InFlight). Each message's context derives from ctx
// and is cancelled once the message is acked or nacked. Ack acks the
// queuekit delivery, Nack nacks it with NackDelay. The metadata carries the
// key (MetadataKey), broker.HeaderPublishedAt and broker.HeaderAttempt. The
// channel is closed when ctx is done or the Subscriber is closed, once the
// messages handed out are settled (or CloseTimeout passed: they are
// nacked); messages received but not handed out are nacked, so the broker
// redelivers them.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	const op = "watermill: subscribe"
	o := s.cfg.Subscription
	switch eo := o.Guarantee == semantics.EffectivelyOnce; {
	case eo && s.cfg.Idempotency == nil:
		return nil, broker.Errorf(semantics.InvalidArgument, op, "an EffectivelyOnce subscription needs SubscriberConfig.Idempotency (a store from middleware/dedupe)")
	case !eo && s.cfg.Idempotency != nil:
		return nil, broker.Errorf(semantics.InvalidArgument, op, "SubscriberConfig.Idempotency is set but the subscription is %v", o.Guarantee)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, broker.ErrClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	o.Topic = topic
	sub, err := s.b.NewSubscriber(ctx, o)
	if err != nil {
		s.wg.Done()
		return nil, err
	}
	out := make(chan *message.Message)
	go s.run(ctx, sub, out)
	return out, nil
}

// Errors the handler of run returns to broker.Consume, which nacks the
// delivery: the Watermill message was nacked, never handed out, or left
// unsettled past CloseTimeout after its subscription ended.
var (
	errNacked    = errors.New("watermill: nacked")
	errNotHanded = errors.New("watermill: the subscription ended before the message was handed out")
	errUnsettled = errors.New("watermill: the message handed out was not acked or nacked within CloseTimeout after its subscription ended")
)

// run consumes sub with broker.Consume until ctx is done or the Subscriber
// closes, handing each message out on out and settling its delivery as the
// Watermill message is acked or nacked; then it closes sub and out.
func (s *Subscriber) run(ctx context.Context, sub *broker.Subscriber, out chan<- *message.Message) {
	defer s.wg.Done()
	defer close(out) // after Consume returned: no handler sends any more
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-s.closing:
			stop()
		case <-ctx.Done():
		}
	}()
	h := broker.HandlerFunc(func(hctx context.Context, m *broker.Message) error {
		wm := ToWatermill(m)
		if m.Attempt > 0 {
			wm.Metadata[broker.HeaderAttempt] = strconv.Itoa(m.Attempt)
		}
		mctx, mcancel := context.WithCancel(ctx)
		defer mcancel()
		wm.SetContext(mctx)
		select {
		case out <- wm:
		case <-ctx.Done():
			return broker.RetryAfter(errNotHanded, 0)
		}
		select {
		case <-wm.Acked():
			return nil
		case <-wm.Nacked():
			return errNacked
		case <-hctx.Done():
			// The subscription ended CloseTimeout ago (a Router lets its
			// handlers finish when it closes) and the message is still
			// unsettled.
			return errUnsettled
		}
	})
	err := broker.Consume(ctx, sub, h, broker.ConsumeOptions{
		Concurrency:        s.cfg.InFlight,
		NackDelay:          s.cfg.NackDelay,
		ShutdownTimeout:    s.cfg.CloseTimeout,
		Idempotency:        s.cfg.Idempotency,
		IdempotencyOptions: s.cfg.IdempotencyOptions,
		OnError: func(_ *broker.Message, err error) {
			if !errors.Is(err, errNacked) && !errors.Is(err, errNotHanded) {
				s.report(err)
			}
		},
	})
	if err != nil {
		s.report(err)
	}
	cctx, cancel := context.WithTimeout(context.Background(), s.cfg.CloseTimeout)
	defer cancel()
	if err := sub.Close(cctx); err != nil {
		s.report(err)
	}
}

func (s *Subscriber) report(err error) {
	if s.cfg.OnError != nil {
		s.cfg.OnError(err)
	}
}

// Close ends every subscription: their channels are closed once the
// messages handed out are settled (each waits up to the close timeout,
// then is nacked) and their queuekit subscribers are closed.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.closing)
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Handler returns h as a Watermill handler function, for
// Router.AddConsumerHandler: the Watermill message is converted with the
// metadata Subscriber writes (key, attempt, published-at), the topic comes
// from the Router's context, and h's error nacks the message.
func Handler(h broker.Handler) message.NoPublishHandlerFunc {
	return func(wm *message.Message) error {
		return h.Handle(wm.Context(), delivered(wm, message.SubscribeTopicFromCtx(wm.Context())))
	}
}

// Middleware returns queuekit middleware (retry, dedupe, timeout, recover,
// ...) as Watermill handler middleware, for Router.AddMiddleware. The
// middleware sees the message converted as in Handler; when it calls the
// next handler, the Watermill handler runs on the original message with the
// middleware's context (changes the middleware makes to the queuekit
// message's fields are not carried back). Messages the handler produced on
// its last call are returned.
func Middleware(mw broker.Middleware) message.HandlerMiddleware {
	return func(next message.HandlerFunc) message.HandlerFunc {
		return func(wm *message.Message) ([]*message.Message, error) {
			orig := wm.Context()
			defer wm.SetContext(orig)
			var produced []*message.Message
			h := mw(broker.HandlerFunc(func(ctx context.Context, _ *broker.Message) error {
				wm.SetContext(ctx)
				var err error
				produced, err = next(wm)
				return err
			}))
			err := h.Handle(orig, delivered(wm, message.SubscribeTopicFromCtx(orig)))
			if err != nil {
				return nil, err
			}
			return produced, nil
		}
	}
}
