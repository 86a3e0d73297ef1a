package broker

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"unicode/utf8"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Broker is a connection to one message broker, opened by Open from a URL or
// made by New from an adapter's driver. It makes publishers and subscribers,
// declares topology, and says what the adapter guarantees. It is safe for
// concurrent use; a nil *Broker returns ErrClosed.
type Broker struct {
	drv  driver.Broker
	caps semantics.Capabilities

	mu     sync.Mutex
	closed bool
	pubs   map[*Publisher]struct{}
	subs   map[*Subscriber]struct{}
}

// New returns a Broker over an adapter's driver, for adapters' typed
// constructors (kafka.New, rabbitmq.New, ...). Close closes d.
func New(d driver.Broker) *Broker {
	return &Broker{
		drv:  d,
		caps: d.Capabilities(),
		pubs: make(map[*Publisher]struct{}),
		subs: make(map[*Subscriber]struct{}),
	}
}

// Capabilities says what the adapter guarantees natively; the conformance
// suite measures each claim.
func (b *Broker) Capabilities() semantics.Capabilities {
	if b == nil {
		return semantics.Capabilities{}
	}
	return b.caps
}

// NewPublisher returns a publisher that can send to any topic.
func (b *Broker) NewPublisher(ctx context.Context) (*Publisher, error) {
	const op = "queuekit: new publisher"
	if err := b.check(ctx, op); err != nil {
		return nil, err
	}
	d, err := b.drv.NewPublisher(ctx)
	if err != nil {
		return nil, opError(ctx, op, err)
	}
	if isNil(d) {
		return nil, Errorf(semantics.Unknown, op, "the adapter returned no publisher and no error")
	}
	p := &Publisher{b: b, drv: d, maxSize: b.caps.MaxMessageSize}
	p.groups, _ = b.drv.(driver.GroupChecker)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		_ = d.Close(ctx)
		return nil, ErrClosed
	}
	b.pubs[p] = struct{}{}
	return p, nil
}

// NewSubscriber subscribes to opts.Topic in group opts.Group, creating what
// the broker needs (queue, subscription, consumer group) and declaring the
// group. The guarantee and ordering asked in opts are configured on the
// broker, or refused with an Unsupported error: never run weaker.
func (b *Broker) NewSubscriber(ctx context.Context, opts SubscriberOptions) (*Subscriber, error) {
	const op = "queuekit: new subscriber"
	if err := b.check(ctx, op); err != nil {
		return nil, err
	}
	full, err := complete(op, opts)
	if err != nil {
		return nil, err
	}
	dopts := full
	if dopts.Guarantee == semantics.EffectivelyOnce {
		dopts.Guarantee = semantics.AtLeastOnce
	}
	d, err := b.drv.NewSubscriber(ctx, dopts)
	if err != nil {
		return nil, opError(ctx, op, err)
	}
	if isNil(d) {
		return nil, Errorf(semantics.Unknown, op, "the adapter returned no subscriber and no error")
	}
	s := &Subscriber{b: b, drv: d, opts: full}
	s.batch, _ = d.(driver.BatchReceiver)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		_ = d.Close(ctx)
		return nil, ErrClosed
	}
	b.subs[s] = struct{}{}
	return s, nil
}

// Declare creates topic and the named groups with the broker's own
// provisioning (topic, exchange and queues, subscriptions, consumer
// groups). It is idempotent. The rule on every broker: a group receives
// every message published after it was declared; Publish to a topic on
// which no group was ever declared fails with ErrNoGroup.
func (b *Broker) Declare(ctx context.Context, topic string, groups ...string) error {
	const op = "queuekit: declare"
	if err := b.check(ctx, op); err != nil {
		return err
	}
	if err := checkName(op, "topic", topic); err != nil {
		return err
	}
	for _, g := range groups {
		if err := checkName(op, "group", g); err != nil {
			return err
		}
	}
	dec, ok := b.drv.(driver.Declarer)
	if !ok {
		return Errorf(semantics.Unsupported, op, "the adapter cannot declare topics and groups")
	}
	return opError(ctx, op, dec.Declare(ctx, topic, groups))
}

// Backlog reports group's backlog on topic: Kafka's lag, the ready and
// unacknowledged messages of a queue. It is an Unsupported error where the
// broker cannot tell, and NotFound when the group does not exist.
func (b *Broker) Backlog(ctx context.Context, topic, group string) (Backlog, error) {
	const op = "queuekit: backlog"
	if err := b.check(ctx, op); err != nil {
		return Backlog{}, err
	}
	r, ok := b.drv.(driver.BacklogReporter)
	if !ok {
		return Backlog{}, Errorf(semantics.Unsupported, op, "the adapter cannot report a backlog")
	}
	bl, err := r.Backlog(ctx, topic, group)
	return bl, opError(ctx, op, err)
}

// As sets target, a pointer, to the adapter's own value underneath: the
// adapter's driver type (such as *kafka.Broker, for its admin methods) or
// an SDK client the adapter exposes (such as *kgo.Client). It reports
// whether it could.
func (b *Broker) As(target any) bool {
	if b == nil {
		return false
	}
	return as(b.drv, target)
}

// Close closes, in order, the subscribers the broker made (they stop taking
// messages; unsettled deliveries come back), its publishers (they flush,
// waiting no longer than ctx), and the connection. Closing twice returns
// nil; every later operation returns ErrClosed.
func (b *Broker) Close(ctx context.Context) error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs, pubs := b.subs, b.pubs
	b.subs, b.pubs = nil, nil
	b.mu.Unlock()
	var errs []error
	for s := range subs {
		errs = append(errs, s.close(ctx))
	}
	for p := range pubs {
		errs = append(errs, p.close(ctx))
	}
	errs = append(errs, b.drv.Close(ctx))
	return opError(ctx, "queuekit: close", errors.Join(errs...))
}

func (b *Broker) check(ctx context.Context, op string) error {
	if b == nil {
		return ErrClosed
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if ctx == nil {
		return Errorf(semantics.InvalidArgument, op, "nil context")
	}
	if err := ctx.Err(); err != nil {
		return driver.Canceled(op, err)
	}
	return nil
}

func (b *Broker) forgetPublisher(p *Publisher) {
	b.mu.Lock()
	delete(b.pubs, p)
	b.mu.Unlock()
}

func (b *Broker) forgetSubscriber(s *Subscriber) {
	b.mu.Lock()
	delete(b.subs, s)
	b.mu.Unlock()
}

// complete validates o and fills in its defaults.
func complete(op string, o SubscriberOptions) (SubscriberOptions, error) {
	if err := checkName(op, "SubscriberOptions.Topic", o.Topic); err != nil {
		return o, err
	}
	if o.Group == "" {
		o.Group = "default"
	}
	if err := checkName(op, "SubscriberOptions.Group", o.Group); err != nil {
		return o, err
	}
	switch {
	case o.MaxAttempts < 0:
		return o, Errorf(semantics.InvalidArgument, op, "SubscriberOptions.MaxAttempts is %d, must be >= 0", o.MaxAttempts)
	case o.AckTimeout < 0:
		return o, Errorf(semantics.InvalidArgument, op, "SubscriberOptions.AckTimeout is %v, must be >= 0", o.AckTimeout)
	case o.Prefetch < 0:
		return o, Errorf(semantics.InvalidArgument, op, "SubscriberOptions.Prefetch is %d, must be >= 0", o.Prefetch)
	}
	switch o.Guarantee {
	case semantics.AtLeastOnce, semantics.AtMostOnce, semantics.EffectivelyOnce:
	default:
		return o, Errorf(semantics.InvalidArgument, op, "unknown SubscriberOptions.Guarantee %v", o.Guarantee)
	}
	switch o.Ordering {
	case semantics.Unordered, semantics.PerKey:
	default:
		return o, Errorf(semantics.InvalidArgument, op, "unknown SubscriberOptions.Ordering %v", o.Ordering)
	}
	if o.DeadLetterTopic == "" {
		o.DeadLetterTopic = driver.DeadLetterTopic(o.Topic)
	}
	return o, nil
}

// checkName applies the rules every broker shares; adapters check their
// own (length, character set) before any I/O.
func checkName(op, what, name string) error {
	printable := name != "" // printable ASCII: the common case, a byte at a time
	for i := 0; i < len(name) && printable; i++ {
		c := name[i]
		printable = c >= 0x20 && c < 0x7f
	}
	if printable {
		return nil
	}
	switch {
	case name == "":
		return Errorf(semantics.InvalidArgument, op, "%s is required", what)
	case !utf8.ValidString(name):
		return Errorf(semantics.InvalidArgument, op, "%s %q is not valid UTF-8", what, name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return Errorf(semantics.InvalidArgument, op, "%s %q contains a control character", what, name)
		}
	}
	return nil
}

// opError gives err the kind Canceled when ctx ended (whatever the adapter
// made of that), and an Op where it has none.
func opError(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, ErrClosed) {
		if driver.KindOf(err) == semantics.Canceled {
			return err
		}
		return driver.Canceled(op, cerr)
	}
	if _, ok := err.(*Error); ok {
		return err
	}
	return driver.WrapError(semantics.Unknown, op, err)
}

// isNil reports whether v is nil or an interface holding a nil pointer.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

// as implements the As escape hatch over a driver value v: target gets v
// itself when its type fits, or whatever v's own As gives.
func as(v any, target any) bool {
	if target == nil {
		return false
	}
	tv := reflect.ValueOf(target)
	if tv.Kind() != reflect.Pointer || tv.IsNil() {
		return false
	}
	if reflect.TypeOf(v).AssignableTo(tv.Elem().Type()) {
		tv.Elem().Set(reflect.ValueOf(v))
		return true
	}
	if a, ok := v.(driver.As); ok {
		return a.As(target)
	}
	return false
}
