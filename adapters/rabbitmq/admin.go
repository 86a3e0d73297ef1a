package rabbitmq

import (
	"context"
	"errors"
	"slices"
	"sort"
	"strconv"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// QueueInfo is what RabbitMQ says about one of a topic's queues.
type QueueInfo struct {
	// Queue is the queue's name.
	Queue string
	// Role is RoleGroup, RoleDeadLetter, RoleDelay or RoleSchedule.
	Role string
	// Topic the queue is bound to: the topic itself for a group's queue,
	// the dead-letter topic for RoleDeadLetter.
	Topic string
	// Group the queue belongs to.
	Group string
	// Messages ready for delivery: the group's backlog (lag). Messages
	// delivered but not yet acknowledged are not counted.
	Messages int
	// Consumers attached to the queue.
	Consumers int
}

// Inspect returns the depth and consumer count of group's queue for topic,
// for metrics and lag. A queue that does not exist is a NotFound error.
func (b *Broker) Inspect(ctx context.Context, topic, group string) (QueueInfo, error) {
	if group == "" {
		group = "default"
	}
	return b.inspect(ctx, "rabbitmq: inspect", entry{Role: RoleGroup, Topic: topic, Group: group, Queue: b.QueueName(topic, group)})
}

// inspect passively declares e's queue on a channel of its own (a missing
// queue closes it).
func (b *Broker) inspect(ctx context.Context, op string, e entry) (QueueInfo, error) {
	if err := checkName(op, "queue", e.Queue, maxNameLen); err != nil {
		return QueueInfo{}, err
	}
	ch, _, err := b.sub.channel(ctx)
	if err != nil {
		return QueueInfo{}, wrap(op, err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(e.Queue, true, false, false, false, nil)
	if err != nil {
		return QueueInfo{}, wrap(op+" "+strconv.Quote(e.Queue), err)
	}
	return QueueInfo{Queue: e.Queue, Role: e.Role, Topic: e.Topic, Group: e.Group, Messages: q.Messages, Consumers: q.Consumers}, nil
}

// Backlog implements driver.BacklogReporter: Pending is the group queue's
// ready messages and Consumers its consumers. AMQP does not report
// unacknowledged messages, nor the ones waiting in delay queues, so
// InFlight and Delayed are -1.
func (b *Broker) Backlog(ctx context.Context, topic, group string) (driver.Backlog, error) {
	info, err := b.Inspect(ctx, topic, group)
	if err != nil {
		return driver.Backlog{}, err
	}
	return driver.Backlog{Pending: int64(info.Messages), InFlight: -1, Delayed: -1, Consumers: info.Consumers}, nil
}

// Queues returns the queues that exist for topic, as recorded in its
// topology registry by every process that declared some (and as declared by
// this Broker): its groups' queues, their queues on the dead-letter topic,
// their delay queues, the topic's schedule queues. Recorded queues that no
// longer exist are left out.
func (b *Broker) Queues(ctx context.Context, topic string) ([]QueueInfo, error) {
	const op = "rabbitmq: queues"
	if err := checkName(op, "topic", topic, maxNameLen); err != nil {
		return nil, err
	}
	es, err := b.entries(ctx, topic)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(es))
	var infos []QueueInfo
	for _, e := range es {
		if seen[e.Queue] {
			continue
		}
		seen[e.Queue] = true
		info, err := b.inspect(ctx, op, e)
		switch {
		case driver.KindOf(err) == semantics.NotFound:
			continue
		case err != nil:
			return nil, err
		}
		infos = append(infos, info)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Queue < infos[j].Queue })
	return infos, nil
}

// DeadLetterQueues returns the queues where RabbitMQ dead-letters topic's
// messages natively (the groups subscribed with MaxAttempts on quorum
// queues): one per such group, named QueueName(dead-letter topic, group),
// with its depth. Each is the group's queue on the dead-letter topic, so
// redriving means consuming it as that group:
//
//	for _, q := range qs {
//		sub, _ := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: q.Topic, Group: q.Group})
//		// dlq.Redrive(ctx, sub, pub, ...)
//	}
//
// Every queue bound to the dead-letter topic receives every dead letter of
// the topic from the time it was declared, so with several such groups
// each queue holds its own copy: redrive one of them and delete or purge
// the others, or dead letters go back more than once.
func (b *Broker) DeadLetterQueues(ctx context.Context, topic string) ([]QueueInfo, error) {
	qs, err := b.Queues(ctx, topic)
	if err != nil {
		return nil, err
	}
	var dead []QueueInfo
	for _, q := range qs {
		if q.Role == RoleDeadLetter {
			dead = append(dead, q)
		}
	}
	return dead, nil
}

// DeleteSubscription deletes group's queue for topic with the messages in
// it, and the delay queues of its delayed nacks. The queue is declared
// again by the next subscriber of the group. When it was the topic's last
// group (as the registry knows), the topic is no longer schedulable either
// (a Publish with DeliverAt fails with ErrNoGroup, as one without does);
// when no queue recorded for topic is left, the topic's topology registry
// goes too.
func (b *Broker) DeleteSubscription(ctx context.Context, topic, group string) error {
	const op = "rabbitmq: delete subscription"
	if group == "" {
		group = "default"
	}
	name := b.QueueName(topic, group)
	if err := checkName(op, "queue", name, maxNameLen); err != nil {
		return err
	}
	es, err := b.entries(ctx, topic)
	if err != nil {
		return err
	}
	names := append([]string{name}, b.delayQueues.forget(name)...)
	for _, e := range es {
		if e.Role == RoleDelay && e.Group == group && e.Topic == topic {
			names = append(names, e.Queue)
		}
	}
	if err := b.deleteQueues(ctx, op, names); err != nil {
		return err
	}
	if b.opts.Passive || b.opts.NoRegistry || len(es) == 0 {
		return nil
	}
	groupLeft, queueLeft := false, false
	for _, e := range es {
		if slices.Contains(names, e.Queue) || groupLeft {
			continue
		}
		_, err := b.inspect(ctx, op, e)
		switch {
		case err == nil:
			queueLeft = true // the topic has queues left: keep its registry
			groupLeft = e.Role == RoleGroup && e.Topic == topic
		case driver.KindOf(err) != semantics.NotFound:
			return err
		}
	}
	if !groupLeft {
		if err := b.unbindSchedule(ctx, op, topic); err != nil {
			return err
		}
	}
	if queueLeft {
		return nil
	}
	b.forget(topic)
	return b.deleteQueues(ctx, op, []string{registryName(topic)})
}

// DeleteTopic deletes, with the messages in them, every queue recorded for
// topic (see Queues) — its groups' queues, their queues on the dead-letter
// topic, their delay queues, its schedule queues with the scheduled
// messages not yet due — and the topic's topology registry, and unbinds
// the topic from scheduled delivery. Close the topic's subscribers first: a
// subscriber whose queue is deleted declares it again. The exchanges,
// shared by every topic, stay; the dead-letter topic's own groups go with
// DeleteTopic of the dead-letter topic. Tests use it to leave nothing
// behind.
func (b *Broker) DeleteTopic(ctx context.Context, topic string) error {
	const op = "rabbitmq: delete topic"
	if err := checkName(op, "topic", topic, maxNameLen); err != nil {
		return err
	}
	es, err := b.entries(ctx, topic)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	var names []string
	add := func(q string) {
		if !seen[q] {
			seen[q] = true
			names = append(names, q)
		}
	}
	for _, e := range es {
		add(e.Queue)
		switch e.Role {
		case RoleDelay, RoleSchedule:
		default:
			for _, q := range b.delayQueues.forget(e.Queue) {
				add(q)
			}
		}
	}
	for _, q := range b.delayQueues.forgetPrefix(scheduleBase(topic)+schedMarker, "") {
		add(q) // also those this Broker declared but could not record
	}
	if err := b.unbindSchedule(ctx, op, topic); err != nil {
		return err
	}
	if err := b.deleteQueues(ctx, op, names); err != nil {
		return err
	}
	if !b.opts.Passive && !b.opts.NoRegistry {
		if err := b.deleteQueues(ctx, op, []string{registryName(topic)}); err != nil {
			return err
		}
	}
	b.forget(topic)
	return nil
}

// deleteQueues deletes the named queues; one that does not exist is no
// error.
func (b *Broker) deleteQueues(ctx context.Context, op string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	var ch *amqp.Channel
	defer func() {
		if ch != nil {
			ch.Close()
		}
	}()
	var errs []error
	for _, q := range names {
		if ch == nil || ch.IsClosed() { // a failed delete closes its channel
			var err error
			if ch, _, err = b.sub.channel(ctx); err != nil {
				return wrap(op, err)
			}
		}
		if _, err := ch.QueueDelete(q, false, false, false); err != nil && kindOf(err) != semantics.NotFound {
			errs = append(errs, wrap(op+" "+strconv.Quote(q), err))
		}
	}
	return errors.Join(errs...)
}
