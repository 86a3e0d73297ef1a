package pubsub

import (
	"context"
	"time"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"google.golang.org/api/iterator"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// Declare creates topic and, for each group, the subscription a subscriber
// of that group with default SubscriberOptions would create (see
// subscriptionConfig): ack deadline, message ordering (unless ordering is
// off) and exactly-once delivery (with Options.ExactlyOnce). It is
// idempotent. Every message published after it returns reaches each
// group. With create=false nothing is created: a missing topic or
// subscription is a NotFound error.
func (b *Broker) Declare(ctx context.Context, topic string, groups []string) error {
	const op = "gcppubsub: declare"
	cfgs := make([]SubscriptionConfig, len(groups))
	if err := checkID(op, "topic", topic, "topics"); err != nil {
		return err
	}
	for i, g := range groups {
		cfg, err := b.subscriptionConfig(op, driver.SubscriberOptions{Topic: topic, Group: g})
		if err != nil {
			return err
		}
		cfgs[i] = cfg
	}
	if b.opts.DisableCreate {
		if _, err := b.client.TopicAdminClient.GetTopic(ctx, &pb.GetTopicRequest{Topic: b.topicName(topic)}); err != nil {
			return wrap(op, err)
		}
	} else if err := b.EnsureTopic(ctx, topic); err != nil {
		return err
	}
	for _, cfg := range cfgs {
		if _, err := b.EnsureSubscription(ctx, cfg); err != nil {
			return err
		}
	}
	return nil
}

// HasGroup reports whether topic has at least one subscription: Pub/Sub
// accepts a publish to a topic without one and drops the message, so
// package broker refuses such a Publish with ErrNoGroup. A topic that does
// not exist has no subscription either (false, nil): Publish is refused
// with ErrNoGroup (kind NotFound) rather than failing at the server.
// Checking needs the pubsub.topics.listSubscriptions permission on the
// topic; without it the check fails with a Permanent error that says so.
func (b *Broker) HasGroup(ctx context.Context, topic string) (bool, error) {
	const op = "gcppubsub: publish"
	if err := checkID(op, "topic", topic, "topics"); err != nil {
		return false, err
	}
	it := b.client.TopicAdminClient.ListTopicSubscriptions(ctx, &pb.ListTopicSubscriptionsRequest{Topic: b.topicName(topic), PageSize: 1})
	_, err := it.Next()
	switch {
	case err == nil:
		return true, nil
	case err == iterator.Done, isCode(err, codes.NotFound):
		return false, nil
	case isCode(err, codes.PermissionDenied):
		return false, driver.Errorf(semantics.Permanent, op,
			"cannot tell whether topic %s has a subscription (queuekit refuses to publish where no group would receive): grant pubsub.topics.listSubscriptions on it: %w", topic, err)
	}
	return false, wrap(op, err)
}

// subscriptionConfig is the subscription a subscriber with opts uses:
// Options.Subscription or Options.SubscriptionName(topic, group), ack
// deadline AckTimeout (default Options.AckDeadline), message ordering
// unless ordering is off, exactly-once delivery under AtMostOnce or with
// Options.ExactlyOnce, a DeadLetterPolicy when MaxAttempts > 0, and the
// RetryPolicy of Options. Every name is checked before any request.
func (b *Broker) subscriptionConfig(op string, opts driver.SubscriberOptions) (SubscriptionConfig, error) {
	if err := checkID(op, "topic", opts.Topic, "topics"); err != nil {
		return SubscriptionConfig{}, err
	}
	if err := checkGroup(op, opts.Group); err != nil {
		return SubscriptionConfig{}, err
	}
	name := b.opts.Subscription
	if name == "" {
		name = b.opts.SubscriptionName(opts.Topic, opts.Group)
		if err := checkID(op, "subscription (Options.SubscriptionName)", name, "subscriptions"); err != nil {
			return SubscriptionConfig{}, err
		}
	}
	cfg := SubscriptionConfig{
		Name:            name,
		Topic:           opts.Topic,
		AckDeadline:     opts.AckTimeout,
		Ordering:        !b.opts.DisableOrdering,
		ExactlyOnce:     b.opts.ExactlyOnce || opts.Guarantee == semantics.AtMostOnce,
		RetryMinBackoff: b.opts.RetryMinBackoff,
		RetryMaxBackoff: b.opts.RetryMaxBackoff,
	}
	if opts.MaxAttempts > 0 {
		if err := checkID(op, "dead-letter topic", opts.DeadLetterTopic, "topics"); err != nil {
			return SubscriptionConfig{}, err
		}
		cfg.DeadLetterTopic = opts.DeadLetterTopic
		cfg.MaxDeliveryAttempts = opts.MaxAttempts
	}
	return cfg, nil
}

// EnsureTopic creates topic (an ID or a full name) unless it exists. It
// remembers topics it has seen, so calling it again costs nothing. When the
// caller may not create topics (permission denied), the topic is assumed to
// exist and the first publish reports otherwise.
func (b *Broker) EnsureTopic(ctx context.Context, topic string) error {
	const op = "gcppubsub: ensure topic"
	if err := checkID(op, "topic", topic, "topics"); err != nil {
		return err
	}
	name := b.topicName(topic)
	b.mu.Lock()
	known := b.topics[name]
	b.mu.Unlock()
	if known {
		return nil
	}
	_, err := b.client.TopicAdminClient.CreateTopic(ctx, &pb.Topic{Name: name})
	if err != nil && !isCode(err, codes.AlreadyExists) && !isCode(err, codes.PermissionDenied) {
		return wrap(op, err)
	}
	b.mu.Lock()
	b.topics[name] = true
	b.mu.Unlock()
	return nil
}

// SubscriptionConfig describes a subscription for EnsureSubscription.
type SubscriptionConfig struct {
	// Name is the subscription ID (or full name). Required.
	Name string
	// Topic it subscribes to (ID or full name). Required.
	Topic string
	// AckDeadline; rounded up to whole seconds and kept within Pub/Sub's
	// 10s..600s. Zero: the broker's Options.AckDeadline.
	AckDeadline time.Duration
	// Ordering enables message ordering (by ordering key). It cannot be
	// changed once the subscription exists.
	Ordering bool
	// ExactlyOnce enables exactly-once delivery.
	ExactlyOnce bool
	// DeadLetterTopic, when set, receives the messages delivered
	// MaxDeliveryAttempts times without an ack (a DeadLetterPolicy). The
	// topic is created too. Pub/Sub accepts 5..100 attempts; the pstest
	// emulator accepts any.
	DeadLetterTopic     string
	MaxDeliveryAttempts int
	// RetryMinBackoff and RetryMaxBackoff set a RetryPolicy when non-zero.
	RetryMinBackoff, RetryMaxBackoff time.Duration
}

// EnsureSubscription returns the subscription cfg names, creating it (and
// its topic and dead-letter topic) when it does not exist and the broker may
// create. An existing subscription must belong to cfg.Topic; unless
// DisableCreate, its dead-letter policy is updated to cfg's when they
// differ, and exactly-once delivery is enabled when cfg asks for it. Its
// other settings are left alone (message ordering cannot be changed).
func (b *Broker) EnsureSubscription(ctx context.Context, cfg SubscriptionConfig) (*pb.Subscription, error) {
	const op = "gcppubsub: ensure subscription"
	if cfg.Name == "" || cfg.Topic == "" {
		return nil, driver.Errorf(semantics.InvalidArgument, op, "SubscriptionConfig needs Name and Topic")
	}
	if err := checkID(op, "subscription", cfg.Name, "subscriptions"); err != nil {
		return nil, err
	}
	if err := checkID(op, "topic", cfg.Topic, "topics"); err != nil {
		return nil, err
	}
	if cfg.DeadLetterTopic != "" {
		if err := checkID(op, "dead-letter topic", cfg.DeadLetterTopic, "topics"); err != nil {
			return nil, err
		}
	}
	name, topic := b.subscriptionPath(cfg.Name), b.topicName(cfg.Topic)
	var dlp *pb.DeadLetterPolicy
	if cfg.DeadLetterTopic != "" {
		dlp = &pb.DeadLetterPolicy{DeadLetterTopic: b.topicName(cfg.DeadLetterTopic), MaxDeliveryAttempts: int32(cfg.MaxDeliveryAttempts)}
	}
	subs := b.client.SubscriptionAdminClient
	sub, err := subs.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: name})
	if err == nil {
		return b.reconcile(ctx, op, sub, topic, dlp, cfg.ExactlyOnce)
	}
	if !isCode(err, codes.NotFound) {
		return nil, wrap(op, err)
	}
	if b.opts.DisableCreate {
		return nil, driver.Errorf(semantics.NotFound, op, "subscription %s does not exist and creating is disabled (create=false): %w", name, err)
	}
	if err := b.EnsureTopic(ctx, topic); err != nil {
		return nil, err
	}
	if dlp != nil {
		if err := b.EnsureTopic(ctx, dlp.DeadLetterTopic); err != nil {
			return nil, err
		}
	}
	ack := cfg.AckDeadline
	if ack == 0 {
		ack = b.opts.AckDeadline
	}
	want := &pb.Subscription{
		Name:                      name,
		Topic:                     topic,
		AckDeadlineSeconds:        ackDeadlineSeconds(ack),
		EnableMessageOrdering:     cfg.Ordering,
		EnableExactlyOnceDelivery: cfg.ExactlyOnce,
		DeadLetterPolicy:          dlp,
	}
	if cfg.RetryMinBackoff > 0 || cfg.RetryMaxBackoff > 0 {
		want.RetryPolicy = &pb.RetryPolicy{}
		if cfg.RetryMinBackoff > 0 {
			want.RetryPolicy.MinimumBackoff = durationpb.New(cfg.RetryMinBackoff)
		}
		if cfg.RetryMaxBackoff > 0 {
			want.RetryPolicy.MaximumBackoff = durationpb.New(cfg.RetryMaxBackoff)
		}
	}
	sub, err = subs.CreateSubscription(ctx, want)
	if isCode(err, codes.AlreadyExists) { // created concurrently by another subscriber of the group
		sub, err = subs.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: name})
		if err == nil {
			return b.reconcile(ctx, op, sub, topic, dlp, cfg.ExactlyOnce)
		}
	}
	if err != nil {
		return nil, wrap(op, err)
	}
	return sub, nil
}

// reconcile checks an existing subscription against what was asked, and
// updates its dead-letter policy and exactly-once delivery (unless
// DisableCreate).
func (b *Broker) reconcile(ctx context.Context, op string, sub *pb.Subscription, topic string, dlp *pb.DeadLetterPolicy, exactlyOnce bool) (*pb.Subscription, error) {
	if sub.Topic != topic {
		return nil, driver.Errorf(semantics.InvalidArgument, op,
			"subscription %s exists but subscribes to %s, not %s (choose another group or Options.SubscriptionName)", sub.Name, sub.Topic, topic)
	}
	if b.opts.DisableCreate {
		return sub, nil
	}
	want := &pb.Subscription{Name: sub.Name}
	var paths []string
	if dlp != nil && !sameDeadLetter(sub.DeadLetterPolicy, dlp) {
		if err := b.EnsureTopic(ctx, dlp.DeadLetterTopic); err != nil {
			return nil, err
		}
		want.DeadLetterPolicy = dlp
		paths = append(paths, "dead_letter_policy")
	}
	if exactlyOnce && !sub.EnableExactlyOnceDelivery {
		want.EnableExactlyOnceDelivery = true
		paths = append(paths, "enable_exactly_once_delivery")
	}
	if len(paths) == 0 {
		return sub, nil
	}
	up, err := b.client.SubscriptionAdminClient.UpdateSubscription(ctx, &pb.UpdateSubscriptionRequest{
		Subscription: want,
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: paths},
	})
	if err != nil {
		return nil, wrap(op, err)
	}
	return up, nil
}

func sameDeadLetter(a, b *pb.DeadLetterPolicy) bool {
	return a != nil && b != nil && a.DeadLetterTopic == b.DeadLetterTopic && a.MaxDeliveryAttempts == b.MaxDeliveryAttempts
}

// DeleteSubscription deletes a subscription (ID or full name); a missing one
// is not an error.
func (b *Broker) DeleteSubscription(ctx context.Context, sub string) error {
	err := b.client.SubscriptionAdminClient.DeleteSubscription(ctx, &pb.DeleteSubscriptionRequest{Subscription: b.subscriptionPath(sub)})
	if err != nil && !isCode(err, codes.NotFound) {
		return wrap("gcppubsub: delete subscription", err)
	}
	return nil
}

// DeleteTopic deletes a topic (ID or full name); a missing one is not an
// error. Its subscriptions stay, detached.
func (b *Broker) DeleteTopic(ctx context.Context, topic string) error {
	name := b.topicName(topic)
	err := b.client.TopicAdminClient.DeleteTopic(ctx, &pb.DeleteTopicRequest{Topic: name})
	if err != nil && !isCode(err, codes.NotFound) {
		return wrap("gcppubsub: delete topic", err)
	}
	b.mu.Lock()
	delete(b.topics, name)
	b.mu.Unlock()
	return nil
}

// ackDeadlineSeconds rounds d up to seconds within Pub/Sub's 10..600.
func ackDeadlineSeconds(d time.Duration) int32 {
	s := int32((d + time.Second - 1) / time.Second)
	return min(max(s, 10), 600)
}
