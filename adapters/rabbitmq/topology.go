package rabbitmq

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// AMQP 0-9-1 cannot list queues, so the adapter records what it declares
// for a topic in the topic's topology registry: a stream queue named
// "<topic>.qk-topology" (see registryName) with one message per queue —
// group queues, the groups' queues on their dead-letter topic, delay
// queues. Every process appends what it declares (at most once per Broker)
// and anyone can read it back, concurrently, without consuming it: that is
// how DeadLetterQueues and DeleteTopic find what other processes made.
// Recording is best effort: when it fails (a server without streams, a user
// without the permission to declare one) the Broker logs a warning once and
// goes on, and those methods know only what this Broker declared.

// registrySuffix is appended to a topic to name its topology registry.
const registrySuffix = ".qk-topology"

// registryTimeout bounds recording in a registry, which NewSubscriber
// waits for.
const registryTimeout = 5 * time.Second

// Roles of the queues recorded for a topic.
const (
	// RoleGroup is a group's queue on the topic.
	RoleGroup = "group"
	// RoleDeadLetter is a group's queue on its dead-letter topic, where
	// RabbitMQ dead-letters the group's messages natively (MaxAttempts on
	// quorum queues).
	RoleDeadLetter = "dead-letter"
	// RoleDelay is a delay queue of a group's delayed nacks.
	RoleDelay = "delay"
	// RoleSchedule is a schedule queue of the topic, where messages
	// published with DeliverAt wait (see schedule.go); Group is empty.
	RoleSchedule = "schedule"
	roleMarker   = "marker" // a reader's end-of-log marker
)

// Headers of a registry message.
const (
	regRole   = "qk-role"
	regTopic  = "qk-topic"
	regGroup  = "qk-group"
	regQueue  = "qk-queue"
	regMarker = "qk-marker"
)

// entry is one queue recorded for a topic.
type entry struct {
	Role, Topic, Group, Queue string
}

// registry remembers what this Broker declared, and what it recorded.
type registry struct {
	mu       sync.Mutex
	known    map[string]map[entry]bool // topic -> entries declared by this Broker
	recorded map[string]map[entry]bool // topic -> entries written to the registry
	warned   bool
}

// record notes es, queues declared for topic, in memory and in the topic's
// registry. It never fails: see the comment at the top of this file.
func (b *Broker) record(ctx context.Context, topic string, es ...entry) {
	if b.opts.Passive || len(es) == 0 {
		return
	}
	r := &b.registry
	if b.opts.NoRegistry {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.known == nil {
			r.known = make(map[string]map[entry]bool)
		}
		if r.known[topic] == nil {
			r.known[topic] = make(map[entry]bool)
		}
		for _, e := range es {
			r.known[topic][e] = true
		}
		return
	}
	r.mu.Lock()
	if r.known == nil {
		r.known = make(map[string]map[entry]bool)
		r.recorded = make(map[string]map[entry]bool)
	}
	if r.known[topic] == nil {
		r.known[topic] = make(map[entry]bool)
		r.recorded[topic] = make(map[entry]bool)
	}
	var todo []entry
	for _, e := range es {
		r.known[topic][e] = true
		if !r.recorded[topic][e] {
			todo = append(todo, e)
		}
	}
	r.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, registryTimeout)
	defer cancel()
	if err := b.appendEntries(ctx, topic, todo); err != nil {
		r.mu.Lock()
		warn := !r.warned
		r.warned = true
		r.mu.Unlock()
		if warn {
			b.opts.Logger.Warn("queuekit/rabbitmq: cannot record the topology in RabbitMQ (a stream queue per topic); DeleteTopic and DeadLetterQueues will know only what this process declared",
				"registry", registryName(topic), "error", err)
		}
		return
	}
	r.mu.Lock()
	for _, e := range todo {
		r.recorded[topic][e] = true
	}
	r.mu.Unlock()
}

// known returns the entries this Broker declared for topic.
func (b *Broker) known(topic string) []entry {
	r := &b.registry
	r.mu.Lock()
	defer r.mu.Unlock()
	var es []entry
	for e := range r.known[topic] {
		es = append(es, e)
	}
	return es
}

// forget drops what this Broker knows of topic.
func (b *Broker) forget(topic string) {
	r := &b.registry
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.known, topic)
	delete(r.recorded, topic)
}

// appendEntries declares topic's registry and appends es to it, with
// publisher confirms.
func (b *Broker) appendEntries(ctx context.Context, topic string, es []entry) error {
	name := registryName(topic)
	ch, _, err := b.sub.channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{"x-queue-type": "stream"}); err != nil {
		return err
	}
	b.declared(name)
	if err := ch.Confirm(false); err != nil {
		return err
	}
	dcs := make([]*amqp.DeferredConfirmation, 0, len(es))
	for _, e := range es {
		dc, err := ch.PublishWithDeferredConfirm("", name, false, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			Headers:      amqp.Table{regRole: e.Role, regTopic: e.Topic, regGroup: e.Group, regQueue: e.Queue},
		})
		if err != nil {
			return err
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("the broker nacked a registry entry")
		}
	}
	return nil
}

// entries returns what topic's registry and this Broker know of topic,
// without duplicates, in the order first recorded. A topic without a
// registry has only what this Broker declared.
func (b *Broker) entries(ctx context.Context, topic string) ([]entry, error) {
	const op = "rabbitmq: read topology"
	var recorded []entry
	if !b.opts.NoRegistry {
		var err error
		if recorded, err = b.readRegistry(ctx, topic); err != nil {
			return nil, wrap(op+" "+strconv.Quote(registryName(topic)), err)
		}
	}
	seen := make(map[entry]bool, len(recorded))
	var es []entry
	for _, e := range append(recorded, b.known(topic)...) {
		if !seen[e] {
			seen[e] = true
			es = append(es, e)
		}
	}
	return es, nil
}

// readRegistry reads topic's registry from its first message to a marker
// it appends first, so it sees every entry recorded before it was called.
func (b *Broker) readRegistry(ctx context.Context, topic string) ([]entry, error) {
	name := registryName(topic)
	ch, _, err := b.sub.channel(ctx)
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	if _, err := ch.QueueDeclarePassive(name, true, false, false, false, nil); err != nil {
		if kindOf(err) == semantics.NotFound {
			return nil, nil
		}
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		return nil, err
	}
	marker := driver.NewID()
	dc, err := ch.PublishWithDeferredConfirm("", name, false, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		Headers:      amqp.Table{regRole: roleMarker, regMarker: marker},
	})
	if err != nil {
		return nil, err
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		return nil, fmt.Errorf("registry marker not confirmed (%v)", err)
	}
	if err := ch.Qos(512, 0, false); err != nil {
		return nil, err
	}
	ds, err := ch.Consume(name, "", false, false, false, false, amqp.Table{"x-stream-offset": "first"})
	if err != nil {
		return nil, err
	}
	var es []entry
	for {
		select {
		case d, ok := <-ds:
			if !ok {
				return nil, fmt.Errorf("registry %q: the channel closed while reading", name)
			}
			_ = d.Ack(false) // stream consumers ack for credit
			role, _ := d.Headers[regRole].(string)
			if role == roleMarker {
				if id, _ := d.Headers[regMarker].(string); id == marker {
					return es, nil
				}
				continue
			}
			e := entry{Role: role}
			e.Topic, _ = d.Headers[regTopic].(string)
			e.Group, _ = d.Headers[regGroup].(string)
			e.Queue, _ = d.Headers[regQueue].(string)
			if e.Queue != "" {
				es = append(es, e)
			}
		case <-ctx.Done():
			return nil, driver.Canceled("rabbitmq: read topology", ctx.Err())
		}
	}
}
