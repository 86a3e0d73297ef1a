package nats

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Topology: a topic is a NATS subject. Its messages are kept by the stream
// that captures the subject — one of the account's streams, or else one the
// adapter creates, named StreamName(topic), capturing the topic alone. A
// group is a durable pull consumer of that stream named after the group,
// filtered on the topic's subject.

// Declare creates topic's stream (unless a stream captures the topic
// already) and a durable consumer for each group that does not exist yet.
// A group declared on a topic receives every message published after, and
// also — with Limits retention — the messages the stream still keeps.
func (b *Broker) Declare(ctx context.Context, topic string, groups []string) error {
	const op = "nats: declare"
	if err := checkTopic(op, "topic", topic); err != nil {
		return err
	}
	for _, g := range groups {
		if err := checkGroup(op, g); err != nil {
			return err
		}
	}
	for _, g := range groups {
		if _, _, err := b.group(ctx, op, topic, g, want{}); err != nil {
			return err
		}
	}
	if len(groups) == 0 {
		_, err := b.stream(ctx, op, topic, true, false)
		return err
	}
	return nil
}

// group returns topic's stream and group's consumer on it, creating what
// is missing. A stream name remembered from earlier that was deleted since
// (by another process) is looked up again, once.
func (b *Broker) group(ctx context.Context, op, topic, group string, w want) (string, jetstream.Consumer, error) {
	for try := 0; ; try++ {
		stream, err := b.stream(ctx, op, topic, true, false)
		if err != nil {
			return "", nil, err
		}
		c, err := b.consumer(ctx, op, stream, topic, group, w)
		if err != nil && try == 0 && errors.Is(err, jetstream.ErrStreamNotFound) {
			b.streams.Delete(topic)
			continue
		}
		return stream, c, err
	}
}

// HasGroup reports whether a durable consumer of topic's stream receives
// topic's subject (its filter matches it). A topic no stream captures has
// none.
func (b *Broker) HasGroup(ctx context.Context, topic string) (bool, error) {
	const op = "nats: publish"
	if err := checkTopic(op, "topic", topic); err != nil {
		return false, err
	}
	stream, err := b.stream(ctx, op, topic, false, false)
	if errors.Is(err, errNoStream) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	s, err := b.js.Stream(ctx, stream)
	if err != nil {
		return false, wrap(op, err)
	}
	if s.CachedInfo().State.Consumers == 0 {
		return false, nil
	}
	list := s.ListConsumers(ctx)
	found := false
	for info := range list.Info() {
		if info.Config.Durable != "" && subjectMatches(info.Config.FilterSubject, topic) {
			found = true
		}
	}
	if err := list.Err(); err != nil {
		return false, wrap(op, err)
	}
	return found, nil
}

// Backlog reports group's backlog on topic from its consumer's info:
// Pending is the messages not delivered yet (num_pending), InFlight the
// deliveries not acked yet (num_ack_pending, which includes those nacked
// with a delay that has not passed); Delayed and Consumers are not known
// (-1).
func (b *Broker) Backlog(ctx context.Context, topic, group string) (driver.Backlog, error) {
	const op = "nats: backlog"
	if err := checkTopic(op, "topic", topic); err != nil {
		return driver.Backlog{}, err
	}
	if err := checkGroup(op, group); err != nil {
		return driver.Backlog{}, err
	}
	stream, err := b.stream(ctx, op, topic, false, false)
	if err != nil {
		return driver.Backlog{}, err
	}
	c, err := b.js.Consumer(ctx, stream, group)
	if err != nil {
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			return driver.Backlog{}, driver.Errorf(semantics.NotFound, op, "no group %q on topic %q (stream %s)", group, topic, stream)
		}
		return driver.Backlog{}, wrap(op, err)
	}
	info := c.CachedInfo()
	return driver.Backlog{
		Pending:   int64(info.NumPending),
		InFlight:  int64(info.NumAckPending),
		Delayed:   -1,
		Consumers: -1,
	}, nil
}

// DeleteTopic deletes the stream the adapter created for topic, its
// messages and its groups. A stream that captures other subjects too (not
// the adapter's own) is left alone, with an error.
func (b *Broker) DeleteTopic(ctx context.Context, topic string) error {
	const op = "nats: delete topic"
	if err := checkTopic(op, "topic", topic); err != nil {
		return err
	}
	stream, err := b.stream(ctx, op, topic, false, false)
	if errors.Is(err, errNoStream) {
		return nil
	}
	if err != nil {
		return err
	}
	s, err := b.js.Stream(ctx, stream)
	if err != nil {
		return wrap(op, err)
	}
	if cfg := s.CachedInfo().Config; !slices.Equal(cfg.Subjects, []string{topic}) {
		return driver.Errorf(semantics.InvalidArgument, op, "stream %s captures %v, not topic %q alone: delete it with the nats tool", stream, cfg.Subjects, topic)
	}
	b.streams.Delete(topic)
	if err := b.js.DeleteStream(ctx, stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return wrap(op, err)
	}
	return nil
}

// DeleteGroup deletes group's durable consumer on topic.
func (b *Broker) DeleteGroup(ctx context.Context, topic, group string) error {
	const op = "nats: delete group"
	if err := checkTopic(op, "topic", topic); err != nil {
		return err
	}
	if err := checkGroup(op, group); err != nil {
		return err
	}
	stream, err := b.stream(ctx, op, topic, false, false)
	if err != nil {
		return err
	}
	if err := b.js.DeleteConsumer(ctx, stream, group); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return wrap(op, err)
	}
	return nil
}

// errNoStream is the cause when no stream captures a topic.
var errNoStream = errors.New("no JetStream stream captures the topic")

// stream returns the name of the stream that captures topic's subject,
// creating one (named StreamName(topic)) when there is none and create is
// set. Dead-letter streams keep their messages under Limits retention
// whatever Options.Retention says.
func (b *Broker) stream(ctx context.Context, op, topic string, create, deadLetter bool) (string, error) {
	if s, ok := b.streams.Load(topic); ok {
		return s.(string), nil
	}
	name, err := b.js.StreamNameBySubject(ctx, topic)
	if err == nil {
		b.streams.Store(topic, name)
		return name, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return "", wrap(op, err)
	}
	if !create {
		return "", &driver.Error{Kind: semantics.NotFound, Op: op, Err: fmt.Errorf("topic %q: %w", topic, errNoStream)}
	}
	cfg := jetstream.StreamConfig{
		Name:        StreamName(topic),
		Description: "queuekit topic " + topic,
		Subjects:    []string{topic},
		Storage:     b.opts.Storage,
		Replicas:    b.opts.Replicas,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      b.opts.MaxAge,
		Discard:     jetstream.DiscardOld,
	}
	if b.opts.Retention == Interest && !deadLetter {
		cfg.Retention = jetstream.InterestPolicy
	}
	_, err = b.js.CreateStream(ctx, cfg)
	if err != nil {
		// Another process may have created it (with other settings), or
		// a stream of that name may serve another topic.
		name, lerr := b.js.StreamNameBySubject(ctx, topic)
		if lerr == nil {
			b.streams.Store(topic, name)
			return name, nil
		}
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return "", driver.Errorf(semantics.InvalidArgument, op,
				"topic %q would be kept by a stream named %s, which exists for other subjects (topics that differ only by '.' and '_' share a stream name): %v", topic, cfg.Name, err)
		}
		return "", wrap(op, err)
	}
	b.streams.Store(topic, cfg.Name)
	return cfg.Name, nil
}

// want is what a subscriber needs of its group's consumer.
type want struct {
	ackWait time.Duration // 0: whatever the group has (a new one: Options.AckWait)
	perKey  bool          // MaxAckPending 1
}

// consumer returns group's durable consumer on stream, creating it when
// it does not exist and updating its ack wait and max ack pending to what
// w asks. A consumer made outside queuekit that cannot serve (no explicit
// acks, a push consumer, a filter that misses the topic) is refused.
func (b *Broker) consumer(ctx context.Context, op, stream, topic, group string, w want) (jetstream.Consumer, error) {
	c, err := b.js.Consumer(ctx, stream, group)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		cfg := jetstream.ConsumerConfig{
			Durable:       group,
			Description:   "queuekit group " + group + " of topic " + topic,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       b.opts.AckWait,
			MaxDeliver:    -1,
			MaxAckPending: b.opts.MaxAckPending,
			FilterSubject: topic,
			ReplayPolicy:  jetstream.ReplayInstantPolicy,
		}
		if w.ackWait > 0 {
			cfg.AckWait = w.ackWait
		}
		if w.perKey {
			cfg.MaxAckPending = 1
		}
		c, err = b.js.CreateConsumer(ctx, stream, cfg)
		if err != nil {
			// Another subscriber may have created it first.
			c, err = b.js.Consumer(ctx, stream, group)
		}
	}
	if err != nil {
		return nil, wrap(op, err)
	}
	cfg := c.CachedInfo().Config
	switch {
	case cfg.AckPolicy != jetstream.AckExplicitPolicy:
		return nil, driver.Errorf(semantics.Unsupported, op,
			"group %q is a consumer of stream %s with ack policy %v, made outside queuekit: queuekit needs explicit acks (delete the consumer, or use another group)", group, stream, cfg.AckPolicy)
	case cfg.DeliverSubject != "":
		return nil, driver.Errorf(semantics.Unsupported, op,
			"group %q is a push consumer of stream %s, made outside queuekit: queuekit needs a pull consumer (delete it, or use another group)", group, stream)
	case !subjectMatches(cfg.FilterSubject, topic):
		return nil, driver.Errorf(semantics.InvalidArgument, op,
			"group %q of stream %s receives subject %q, not topic %q: use another group name", group, stream, cfg.FilterSubject, topic)
	}
	update := false
	if w.ackWait > 0 && cfg.AckWait != w.ackWait {
		cfg.AckWait, update = w.ackWait, true
	}
	if w.perKey && cfg.MaxAckPending != 1 {
		cfg.MaxAckPending, update = 1, true
	}
	if update {
		if c, err = b.js.UpdateConsumer(ctx, stream, cfg); err != nil {
			return nil, wrap(op, err)
		}
	}
	return c, nil
}
