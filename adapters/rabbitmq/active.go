package rabbitmq

import (
	"context"
	"errors"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Single active consumer, emulated. RabbitMQ sets single-active-consumer
// only as a queue argument, fixed when the queue is first declared; a group
// declared without it (by Declare, before any subscriber said it wants
// per-key order) cannot get it later, and quorum queues ignore the
// exclusive flag of basic.consume. So an ordered subscriber of such a queue
// first takes the group's activity lock, and consumes only while it holds
// it: one subscriber of the group receives at a time, in queue order, and
// the others stand by and take over when it goes.
//
// The lock is an exclusive, auto-delete queue "<queue>.qk-active" declared
// on the consuming connection: RabbitMQ refuses it to every other
// connection (405 RESOURCE_LOCKED) and deletes it when the connection
// closes, so a crashed holder releases it with its connection. Subscribers
// sharing one connection (one Broker) take turns through activeLocks.

// activeSuffix is appended to a group's queue to name its activity lock.
const activeSuffix = ".qk-active"

// activeLocks are the activity locks this Broker's subscribers hold.
type activeLocks struct {
	mu     sync.Mutex
	holder map[string]*subscriber // queue -> subscriber holding its lock
}

// take gives queue's lock to s unless another subscriber of this Broker
// holds it.
func (l *activeLocks) take(queue string, s *subscriber) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h := l.holder[queue]; h != nil && h != s {
		return false
	}
	if l.holder == nil {
		l.holder = make(map[string]*subscriber)
	}
	l.holder[queue] = s
	return true
}

// release gives queue's lock up if s holds it, and reports whether it did.
func (l *activeLocks) release(queue string, s *subscriber) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder[queue] != s {
		return false
	}
	delete(l.holder, queue)
	return true
}

// lockActive takes the group's activity lock for s, or returns errStandby
// when another subscriber holds it.
func (s *subscriber) lockActive(ctx context.Context) error {
	const op = "rabbitmq: subscribe"
	if !s.b.active.take(s.queue, s) {
		return errStandby
	}
	ch, _, err := s.b.sub.channel(ctx)
	if err != nil {
		s.b.active.release(s.queue, s)
		return wrap(op, err)
	}
	defer ch.Close()
	_, err = ch.QueueDeclare(s.queue+activeSuffix, false, true, true, false, amqp.Table{"x-queue-type": Classic})
	var ae *amqp.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae) && ae.Code == amqp.ResourceLocked:
		s.b.active.release(s.queue, s)
		return errStandby
	default:
		s.b.active.release(s.queue, s)
		return wrap(op+": activity lock", err)
	}
}

// unlockActive gives the group's activity lock up, if s holds it, so that
// a standby takes over without waiting for the connection to close.
func (s *subscriber) unlockActive() {
	if !s.b.active.release(s.queue, s) {
		return
	}
	conn := s.b.sub.current()
	if conn == nil {
		return // the lock went with the connection
	}
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	_, _ = ch.QueueDelete(s.queue+activeSuffix, false, false, false)
}
