package rabbitmq

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Headers queuekit writes into the AMQP table besides the user's. The
// message ID travels in the message-id property and PublishedAt, to the
// second, in the timestamp property as well.
const (
	headerKey = "queuekit-key"
	// headerBaseAttempt counts the deliveries a message had before a
	// delayed nack moved it through a delay queue, which resets
	// x-delivery-count.
	headerBaseAttempt = "queuekit-rabbitmq-attempts"
)

// NewPublisher returns a publisher with its own channel in confirm mode.
// The channel is opened (and the exchange declared) now, and again after a
// connection loss.
func (b *Broker) NewPublisher(ctx context.Context) (broker.Publisher, error) {
	if b.isClosed() {
		return nil, broker.ErrClosed
	}
	p := &publisher{b: b, window: make(chan struct{}, b.opts.ConfirmWindow)}
	if _, err := p.channel(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

type publisher struct {
	b      *Broker
	window chan struct{} // a slot per unconfirmed publish

	openMu sync.Mutex // serialises channel opening
	mu     sync.Mutex
	cur    *pubChan
	closed bool
	calls  sync.WaitGroup // Publish calls in progress
}

// pubChan is one confirm-mode channel and the bookkeeping that matches the
// broker's returns (unroutable mandatory messages) to publishes.
//
// RabbitMQ sends basic.return for a message before the basic.ack that
// confirms it, and amqp091 hands both over in that order from one reader
// goroutine, so once a publish's confirmation is done its return, if any,
// is already in the returns channel. Returns carry no delivery tag, so they
// are matched by message ID and routing key; when two unconfirmed publishes
// share both, a return fails them both rather than risk reporting an
// unroutable message as published.
type pubChan struct {
	ch      *amqp.Channel
	returns chan amqp.Return
	closes  chan *amqp.Error

	mu       sync.Mutex
	routes   map[routeKey]*routeState
	closeErr *amqp.Error
}

type routeKey struct{ id, topic string }

type routeState struct{ outstanding, returned int }

// channel returns the publisher's channel, opening a new one on the current
// (or next) connection when there is none or it was closed.
func (p *publisher) channel(ctx context.Context) (*pubChan, error) {
	p.mu.Lock()
	pc := p.cur
	p.mu.Unlock()
	if pc != nil && !pc.ch.IsClosed() {
		return pc, nil
	}
	p.openMu.Lock()
	defer p.openMu.Unlock()
	p.mu.Lock()
	pc = p.cur
	p.mu.Unlock()
	if pc != nil && !pc.ch.IsClosed() {
		return pc, nil
	}
	pc, err := p.b.openPubChan(ctx, cap(p.window))
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.cur = pc
	p.mu.Unlock()
	return pc, nil
}

// openPubChan opens a confirm-mode channel on the publishing connection
// after declaring the exchange. window bounds its unconfirmed publishes.
func (b *Broker) openPubChan(ctx context.Context, window int) (*pubChan, error) {
	const op = "rabbitmq: publisher channel"
	ch, _, err := b.pub.channel(ctx)
	if err != nil {
		return nil, wrap(op, err)
	}
	if err := b.declareExchange(ch); err != nil {
		ch.Close()
		return nil, wrap(op+": exchange "+b.opts.Exchange, err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, wrap(op, err)
	}
	return &pubChan{
		ch:      ch,
		returns: ch.NotifyReturn(make(chan amqp.Return, window+16)),
		closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
		routes:  make(map[routeKey]*routeState),
	}, nil
}

// drop forgets a broken channel so that the next Publish opens another.
func (p *publisher) drop(pc *pubChan) {
	p.mu.Lock()
	if p.cur == pc {
		p.cur = nil
	}
	p.mu.Unlock()
	go pc.ch.Close()
}

// register notes an unconfirmed mandatory publish before it is sent.
func (pc *pubChan) register(k routeKey) {
	pc.mu.Lock()
	st := pc.routes[k]
	if st == nil {
		st = &routeState{}
		pc.routes[k] = st
	}
	st.outstanding++
	pc.mu.Unlock()
}

// settle is called once a publish's confirmation is done (or its send
// failed): it collects the returns received so far and reports whether the
// publish was returned as unroutable.
func (pc *pubChan) settle(k routeKey) (returned bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	for {
		select {
		case r, ok := <-pc.returns:
			if !ok {
				pc.returns = nil
				continue
			}
			if st := pc.routes[routeKey{r.MessageId, r.RoutingKey}]; st != nil {
				st.returned++
			}
			continue
		default:
		}
		break
	}
	st := pc.routes[k]
	if st == nil {
		return false
	}
	returned = st.returned > 0
	if st.outstanding--; st.outstanding == 0 {
		delete(pc.routes, k)
	}
	return returned
}

// cause says why the channel closed, for the errors of unconfirmed
// publishes.
func (pc *pubChan) cause() error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closeErr == nil {
		select {
		case e, ok := <-pc.closes:
			if ok && e != nil {
				pc.closeErr = e
			}
		default:
		}
	}
	if pc.closeErr != nil {
		return pc.closeErr
	}
	return amqp.ErrClosed
}

// pending is one message of a Publish call.
type pending struct {
	dc   *amqp.DeferredConfirmation
	key  routeKey
	done bool
}

// Publish sends msgs to the exchange with topic as routing key, persistent
// and (unless AllowUnroutable) mandatory, keeping up to ConfirmWindow
// publishes unconfirmed at once across all callers, and returns once the
// broker confirmed each. A message the broker returned as unroutable (no
// group subscribes to topic yet) fails with kind NotFound; one it nacked,
// or whose confirmation was lost with the connection, fails with kind
// Transient: it may or may not have been stored, and publishing it again
// with the same ID lets consumers deduplicate. Publish waits for a lost
// connection to come back as long as ctx allows.
func (p *publisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	const op = "rabbitmq: publish"
	if err := broker.Prepare(op, msgs, p.b.opts.MaxMessageSize); err != nil {
		return err
	}
	if topic == "" {
		return broker.Errorf(semantics.InvalidArgument, op, "topic is empty")
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return broker.ErrClosed
	}
	p.calls.Add(1)
	p.mu.Unlock()
	defer p.calls.Done()
	if len(msgs) == 0 {
		return nil
	}
	pc, err := p.channel(ctx)
	if err != nil {
		return err
	}
	mandatory := !p.b.opts.AllowUnroutable
	pend := make([]pending, len(msgs))
	var failed []broker.PublishFailure
	fail := func(i int, err error) {
		failed = append(failed, broker.PublishFailure{Index: i, ID: msgs[i].ID, Err: err})
	}
	oldest := 0 // lowest index sent and not yet finished
	finish := func(i int) {
		pd := &pend[i]
		pd.done = true
		acked := pd.dc.Acked()
		returned := mandatory && pc.settle(pd.key)
		<-p.window
		switch {
		case returned:
			fail(i, broker.Errorf(semantics.NotFound, op, "message %s is unroutable: no queue is bound to topic %q on exchange %q (no subscriber group exists yet)", msgs[i].ID, topic, p.b.opts.Exchange))
		case !acked && pc.ch.IsClosed():
			fail(i, broker.Errorf(semantics.Transient, op, "channel closed before the broker confirmed message %s, which may or may not be stored: %w", msgs[i].ID, pc.cause()))
		case !acked:
			fail(i, broker.Errorf(semantics.Transient, op, "broker nacked message %s: not stored", msgs[i].ID))
		}
	}
	sent := 0
	var stop error // why the rest of msgs is not sent
send:
	for i, m := range msgs {
		for {
			var ownDone <-chan struct{}
			if oldest < sent {
				ownDone = pend[oldest].dc.Done()
			}
			select {
			case p.window <- struct{}{}:
			case <-ownDone:
				finish(oldest)
				oldest++
				continue
			case <-ctx.Done():
				stop = broker.WrapError(semantics.Transient, op, ctx.Err())
				break send
			}
			break
		}
		k := routeKey{m.ID, topic}
		if mandatory {
			pc.register(k)
		}
		dc, err := pc.ch.PublishWithDeferredConfirm(p.b.opts.Exchange, topic, mandatory, false, publishing(m))
		if err != nil {
			if mandatory {
				pc.settle(k)
			}
			<-p.window
			stop = wrap(op, err)
			p.drop(pc)
			break
		}
		pend[i] = pending{dc: dc, key: k}
		sent = i + 1
	}
	for i := sent; i < len(msgs) && stop != nil; i++ {
		fail(i, stop)
	}
	for i := oldest; i < sent; i++ {
		select {
		case <-pend[i].dc.Done():
			finish(i)
			continue
		case <-ctx.Done():
		}
		// The caller stops waiting: report the rest as unconfirmed and let
		// a goroutine return their window slots once the broker answers or
		// the channel closes.
		rest := pend[i:sent]
		for j := i; j < sent; j++ {
			fail(j, broker.Errorf(semantics.Transient, op, "message %s not confirmed before the context ended (%v); it may or may not be stored", msgs[j].ID, ctx.Err()))
		}
		go func() {
			for _, pd := range rest {
				<-pd.dc.Done()
				if mandatory {
					pc.settle(pd.key)
				}
				<-p.window
			}
		}()
		break
	}
	if len(failed) == 0 {
		return nil
	}
	if pc.ch.IsClosed() {
		p.drop(pc)
	}
	slices.SortFunc(failed, func(a, b broker.PublishFailure) int { return a.Index - b.Index })
	return &broker.Error{Kind: broker.KindOf(failed[0].Err), Op: op, Err: &broker.PublishError{Failed: failed}}
}

// publishing turns a message into an AMQP publishing.
func publishing(m *broker.Message) amqp.Publishing {
	h := make(amqp.Table, len(m.Headers)+2)
	for k, v := range m.Headers {
		h[k] = v
	}
	if m.Key != "" {
		h[headerKey] = m.Key
	}
	h[broker.HeaderPublishedAt] = m.PublishedAt.UTC().Format(time.RFC3339Nano)
	return amqp.Publishing{
		Headers:      h,
		DeliveryMode: amqp.Persistent,
		MessageId:    m.ID,
		Timestamp:    m.PublishedAt,
		Body:         m.Payload,
	}
}

// Close waits, as long as ctx allows, for the Publish calls in progress to
// be confirmed, then closes the channel. Publish after Close returns
// ErrClosed.
func (p *publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.calls.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = broker.Errorf(semantics.Transient, "rabbitmq: publisher close", "publishes still unconfirmed when the context ended (they fail): %w", ctx.Err())
	}
	p.mu.Lock()
	pc := p.cur
	p.cur = nil
	p.mu.Unlock()
	if pc != nil {
		if cerr := pc.ch.Close(); cerr != nil && err == nil && !errors.Is(cerr, amqp.ErrClosed) {
			err = wrap("rabbitmq: publisher close", cerr)
		}
	}
	return err
}
