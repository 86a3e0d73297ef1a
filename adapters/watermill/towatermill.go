package watermill

import (
	"context"
	"errors"
	"strconv"
	"sync"
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
	pub          broker.Publisher
	closeTimeout time.Duration
	once         sync.Once
	closeErr     error
}

// NewPublisher returns a Watermill publisher over pub, which it owns: Close
// closes pub (a Router closes its handlers' publishers when it stops). A
// closeTimeout of 0 means DefaultCloseTimeout.
func NewPublisher(pub broker.Publisher, closeTimeout time.Duration) *Publisher {
	if closeTimeout <= 0 {
		closeTimeout = DefaultCloseTimeout
	}
	return &Publisher{pub: pub, closeTimeout: closeTimeout}
}

// Publish publishes msgs to topic through the queuekit publisher and returns
// once it has durably accepted them (the adapter's guarantee). The message
// UUID is the queuekit ID (an empty UUID gets a new one, written back to the
// message), metadata entry MetadataKey is the Key, and every other entry is
// a header. Consecutive messages that share a context (Message.Context) go
// in one Publish call, so the adapter can batch them; a failure is a
// *broker.PublishError that names the failed messages.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	qms := make([]*broker.Message, len(msgs))
	for i, wm := range msgs {
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

// Close closes the queuekit publisher, flushing it for up to the close
// timeout. A second Close returns the first one's result.
func (p *Publisher) Close() error {
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), p.closeTimeout)
		defer cancel()
		p.closeErr = p.pub.Close(ctx)
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
	// group.
	Subscription broker.SubscriberOptions
	// InFlight is how many messages a subscription hands out before the
	// first of them is acked or nacked; default 1, Watermill's contract
	// ("to receive the next message, Ack must be called"). The Router
	// handles each message in its own goroutine, so a larger value makes a
	// Router handler concurrent.
	InFlight int
	// NackDelay is the delay of the queuekit Nack when a Watermill message
	// is nacked (the Router nacks on handler errors); default 0.
	NackDelay time.Duration
	// CloseTimeout bounds Close; default DefaultCloseTimeout.
	CloseTimeout time.Duration
	// OnError observes receive, ack and nack errors that the Watermill
	// interface has no way to return; default: dropped.
	OnError func(err error)
}

// Subscriber is a Watermill message.Subscriber over a queuekit broker: each
// Subscribe call is one queuekit subscriber of the configured group, so a
// Watermill Router consumes from any queuekit adapter. It is safe for
// concurrent use.
type Subscriber struct {
	b   broker.Broker
	cfg SubscriberConfig

	mu      sync.Mutex
	closed  bool
	closing chan struct{}
	wg      sync.WaitGroup
}

// NewSubscriber returns a Watermill subscriber over b. Close does not close
// b.
func NewSubscriber(b broker.Broker, cfg SubscriberConfig) *Subscriber {
	if cfg.InFlight <= 0 {
		cfg.InFlight = 1
	}
	if cfg.CloseTimeout <= 0 {
		cfg.CloseTimeout = DefaultCloseTimeout
	}
	return &Subscriber{b: b, cfg: cfg, closing: make(chan struct{})}
}

// SubscribeInitialize creates the group's subscription to topic and closes
// it again, so that messages published before the first Subscribe are kept
// where the adapter keeps a group's messages while it has no subscriber.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CloseTimeout)
	defer cancel()
	o := s.cfg.Subscription
	o.Topic = topic
	sub, err := s.b.NewSubscriber(ctx, o)
	if err != nil {
		return err
	}
	return sub.Close(ctx)
}

// Subscribe makes a queuekit subscriber of the configured group for topic
// and returns the channel of its messages. Each message's context derives
// from ctx and is cancelled once the message is acked or nacked. Ack acks
// the queuekit delivery, Nack nacks it with NackDelay. The metadata carries
// the key (MetadataKey), broker.HeaderPublishedAt and broker.HeaderAttempt.
// The channel is closed when ctx is done or the Subscriber is closed;
// messages not settled by then are nacked, so the broker redelivers them.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, broker.ErrClosed
	}
	s.wg.Add(1)
	s.mu.Unlock()
	o := s.cfg.Subscription
	o.Topic = topic
	sub, err := s.b.NewSubscriber(ctx, o)
	if err != nil {
		s.wg.Done()
		return nil, err
	}
	out := make(chan *message.Message)
	go s.run(ctx, sub, topic, out)
	return out, nil
}

// run hands out the deliveries of sub on out until ctx is done or the
// Subscriber closes, then nacks what is unsettled, closes sub and out.
func (s *Subscriber) run(ctx context.Context, sub broker.Subscriber, topic string, out chan<- *message.Message) {
	defer s.wg.Done()
	defer close(out)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		select {
		case <-s.closing:
			stop()
		case <-ctx.Done():
		}
	}()
	slots := make(chan struct{}, s.cfg.InFlight)
	var settling sync.WaitGroup
	backoff := 10 * time.Millisecond
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		d, err := sub.Receive(ctx)
		if err != nil {
			<-slots
			if ctx.Err() != nil {
				break
			}
			s.report(err)
			if broker.KindOf(err) != semantics.Transient {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		m := d.Message()
		wm := ToWatermill(m)
		if m.Attempt > 0 {
			wm.Metadata[broker.HeaderAttempt] = strconv.Itoa(m.Attempt)
		}
		mctx, mcancel := context.WithCancel(ctx)
		wm.SetContext(mctx)
		select {
		case out <- wm:
		case <-ctx.Done():
			mcancel()
			s.settle(d, false)
			<-slots
			continue // the loop ends at the top
		}
		settling.Add(1)
		go func() {
			defer settling.Done()
			defer func() { <-slots }()
			defer mcancel()
			select {
			case <-wm.Acked():
				s.settle(d, true)
			case <-wm.Nacked():
				s.settle(d, false)
			case <-ctx.Done():
				// The consumer may still settle it: a Router lets its
				// handlers finish when it closes.
				select {
				case <-wm.Acked():
					s.settle(d, true)
				case <-wm.Nacked():
					s.settle(d, false)
				case <-time.After(s.cfg.CloseTimeout):
					s.settle(d, false)
				}
			}
		}()
	}
	settling.Wait()
	cctx, cancel := context.WithTimeout(context.Background(), s.cfg.CloseTimeout)
	defer cancel()
	if err := sub.Close(cctx); err != nil {
		s.report(err)
	}
}

func (s *Subscriber) settle(d broker.Delivery, ack bool) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CloseTimeout)
	defer cancel()
	var err error
	if ack {
		err = d.Ack(ctx)
	} else {
		err = d.Nack(ctx, s.cfg.NackDelay)
	}
	if err != nil {
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
// Router.AddNoPublisherHandler: the Watermill message is converted with the
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
