package pubsub

import (
	"context"
	"time"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// EnsureTopic creates topic (an ID or a full name) unless it exists. It
// remembers topics it has seen, so calling it again costs nothing. When the
// caller may not create topics (permission denied), the topic is assumed to
// exist and the first publish reports otherwise.
func (b *Broker) EnsureTopic(ctx context.Context, topic string) error {
	const op = "gcppubsub: ensure topic"
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
// create. An existing subscription must belong to cfg.Topic; its dead-letter
// policy is updated to cfg's when they differ (unless DisableCreate), and its
// other settings are left alone.
func (b *Broker) EnsureSubscription(ctx context.Context, cfg SubscriptionConfig) (*pb.Subscription, error) {
	const op = "gcppubsub: ensure subscription"
	if cfg.Name == "" || cfg.Topic == "" {
		return nil, broker.Errorf(semantics.InvalidArgument, op, "SubscriptionConfig needs Name and Topic")
	}
	name, topic := b.subscriptionPath(cfg.Name), b.topicName(cfg.Topic)
	var dlp *pb.DeadLetterPolicy
	if cfg.DeadLetterTopic != "" {
		dlp = &pb.DeadLetterPolicy{DeadLetterTopic: b.topicName(cfg.DeadLetterTopic), MaxDeliveryAttempts: int32(cfg.MaxDeliveryAttempts)}
	}
	subs := b.client.SubscriptionAdminClient
	sub, err := subs.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: name})
	if err == nil {
		return b.reconcile(ctx, op, sub, topic, dlp)
	}
	if !isCode(err, codes.NotFound) {
		return nil, wrap(op, err)
	}
	if b.opts.DisableCreate {
		return nil, broker.Errorf(semantics.NotFound, op, "subscription %s does not exist and creating is disabled (create=false): %w", name, err)
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
			return b.reconcile(ctx, op, sub, topic, dlp)
		}
	}
	if err != nil {
		return nil, wrap(op, err)
	}
	return sub, nil
}

// reconcile checks an existing subscription against what was asked.
func (b *Broker) reconcile(ctx context.Context, op string, sub *pb.Subscription, topic string, dlp *pb.DeadLetterPolicy) (*pb.Subscription, error) {
	if sub.Topic != topic {
		return nil, broker.Errorf(semantics.InvalidArgument, op,
			"subscription %s exists but subscribes to %s, not %s (choose another group or Options.SubscriptionName)", sub.Name, sub.Topic, topic)
	}
	if dlp == nil || b.opts.DisableCreate || sameDeadLetter(sub.DeadLetterPolicy, dlp) {
		return sub, nil
	}
	if err := b.EnsureTopic(ctx, dlp.DeadLetterTopic); err != nil {
		return nil, err
	}
	up, err := b.client.SubscriptionAdminClient.UpdateSubscription(ctx, &pb.UpdateSubscriptionRequest{
		Subscription: &pb.Subscription{Name: sub.Name, DeadLetterPolicy: dlp},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"dead_letter_policy"}},
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
