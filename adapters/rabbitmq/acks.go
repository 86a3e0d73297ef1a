package rabbitmq

import (
	"cmp"
	"log/slog"
	"slices"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Ack coalescing. An AMQP consumer can acknowledge a delivery and every
// earlier one of its channel with one basic.ack (multiple=true): one frame
// (one write, one command in the quorum queue's log) per run of
// deliveries instead of one per delivery, the biggest single gain for a
// quorum queue's consumer. A subscriber's channel therefore keeps the
// acks of a contiguous run of delivery tags and sends the run as one
// multiple ack:
//
//   - when it holds ackRun acks (a quarter of the prefetch, at most
//     maxAckRun), so that the broker's window never waits on the batch;
//   - ackDelay (1ms) after the first ack it holds, whatever else happens:
//     that is what sends an idle subscriber's last acks;
//   - before the channel is closed: by Close, and when the subscriber
//     drops a broken channel for a new one (delivery tags are the
//     channel's own, so the acks of a dead channel are dropped with it,
//     never sent on the next one).
//
// Receive does not send the acks held when it finds nothing prefetched:
// on a busy 2-core machine the client's delivery buffer is often empty
// for an instant, and flushing then sent runs of a few acks (measured:
// +5 allocs and +1..3µs of CPU per message, no faster); the timer bounds
// what an idle subscriber holds anyway.
//
// A multiple ack covers every unsettled tag up to its own, so a run ends
// before the lowest tag still unsettled; nacks and rejects are sent at
// once, on their own, and a multiple ack is only sent after them: it then
// no longer covers them (RabbitMQ settled them already). Acks held behind
// an unsettled tag (handlers finishing out of order) go out individually
// when the ackDelay timer or Close flushes them, so every ack is written
// within ackDelay of Ack returning.
//
// The channel's mutex also guards its closing: no ack, nack or reject is
// written once closing began (see subChan), and Close cancels the
// consumer before it closes the channel, so that RabbitMQ has applied the
// acks before it requeues what is left (see close).

const (
	// maxAckRun is the most acks sent as one multiple ack.
	maxAckRun = 100
	// defaultAckDelay bounds how long an ack waits to be sent.
	defaultAckDelay = time.Millisecond
)

// ackRunFor returns the acks per multiple ack for a prefetch.
func ackRunFor(prefetch int) int {
	return max(1, min(maxAckRun, prefetch/4))
}

// tagState is what the subscriber did with one delivery tag.
type tagState uint8

const (
	tagOut  tagState = iota // handed out, unsettled
	tagAck                  // acked, not yet sent
	tagSent                 // settled at the broker: nack, reject or ack sent
)

// tagEntry is a delivery tag the channel tracks, and its state.
type tagEntry struct {
	tag uint64
	st  tagState
}

// subChan is one consuming channel. Acks, nacks and rejects go through it
// and the channel is closed through close, so that none is sent once
// closing began: RabbitMQ answers a frame for a channel it has just closed
// by closing the whole connection (504 CHANNEL_ERROR "expected
// 'channel.open'"), under every other subscriber on it.
type subChan struct {
	ch         *amqp.Channel
	deliveries <-chan amqp.Delivery
	queue      string
	log        *slog.Logger
	coalesce   bool // false under at-most-once (acked on receipt)
	run        int  // acks per multiple ack
	delay      time.Duration

	mu      sync.Mutex // held while writing a settlement, and to close
	closing bool
	// tags are the tags received and not known settled at the broker, in
	// increasing order; every tag received that is not among them is
	// settled at the broker. next is the tag the next delivery must have.
	tags []tagEntry
	next uint64
	// tags[:ready] hold no tagOut: a multiple ack of the last tagAck among
	// them (tags[lastAck-1]) acknowledges just the readyAcks acks of the
	// run, every other tag up to it being settled at the broker already.
	ready, readyAcks, lastAck int
	held                      int  // acks not yet sent (tagAck in tags)
	out                       int  // deliveries unsettled (tagOut in tags)
	single                    bool // tags came out of sequence: no coalescing
	timer                     *time.Timer
	armed                     bool
}

func newSubChan(ch *amqp.Channel, deliveries <-chan amqp.Delivery, s *subscriber) *subChan {
	return &subChan{
		ch: ch, deliveries: deliveries, queue: s.queue, log: s.b.opts.Logger,
		coalesce: !s.amo, run: ackRunFor(s.prefetch), delay: s.b.opts.ackDelay,
		next: 1,
	}
}

// received records the tags of deliveries about to be handed out, in the
// order the channel delivered them, before anything can settle them.
func (sc *subChan) received(ds []*delivery) {
	if !sc.coalesce {
		return
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closing || sc.single {
		return
	}
	for _, d := range ds {
		if d.raw.DeliveryTag != sc.next {
			// Not the next tag of the channel: a multiple ack could cover
			// a tag never handed out. It cannot happen with one consumer
			// per channel; should it, ack one delivery at a time.
			sc.flushLocked(true)
			sc.single = true
			return
		}
		sc.next++
		sc.tags = append(sc.tags, tagEntry{tag: d.raw.DeliveryTag})
		sc.out++
	}
}

// settle runs f, a nack or reject of tag on sc's channel, unless the
// channel is closing (amqp.ErrClosed). Once f has written its frame the
// tag counts as settled at the broker: a later multiple ack may pass it.
func (sc *subChan) settle(tag uint64, f func() error) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closing {
		return amqp.ErrClosed
	}
	if err := f(); err != nil {
		return sc.failed(err)
	}
	if i, ok := sc.index(tag); ok {
		sc.tags[i].st = tagSent
		sc.out--
		sc.advance()
	}
	return nil
}

// ack acknowledges tag: it is held for the next multiple ack, or sent at
// once when it completes a run (or when the channel does not coalesce).
// It fails when the channel is closed already, or when the write that
// carried it failed; a later write's failure is logged (see flushLocked).
func (sc *subChan) ack(tag uint64) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closing || sc.ch.IsClosed() {
		return amqp.ErrClosed
	}
	i, ok := sc.index(tag)
	if !ok || sc.single {
		if err := sc.ch.Ack(tag, false); err != nil {
			return sc.failed(err)
		}
		if ok {
			sc.tags[i].st = tagSent
			sc.out--
			sc.advance()
		}
		return nil
	}
	sc.tags[i].st = tagAck
	sc.out--
	sc.held++
	sc.advance()
	if sc.readyAcks >= sc.run {
		if err := sc.sendRun(); err != nil {
			return sc.failed(err)
		}
	}
	if sc.held > 0 && !sc.armed {
		sc.armed = true
		if sc.timer == nil {
			sc.timer = time.AfterFunc(sc.delay, sc.tick)
		} else {
			sc.timer.Reset(sc.delay)
		}
	}
	return nil
}

// index returns tag's index in sc.tags, if it is tracked there unsettled.
func (sc *subChan) index(tag uint64) (int, bool) {
	i, ok := slices.BinarySearchFunc(sc.tags, tag, func(e tagEntry, t uint64) int { return cmp.Compare(e.tag, t) })
	return i, ok && sc.tags[i].st == tagOut
}

// advance extends the settled prefix tags[:ready], drops it when it holds
// no ack to send, and compacts tags when most of them are settled at the
// broker (acks sent one by one behind an unsettled delivery): tags stays
// within about twice the deliveries unsettled and acks held.
func (sc *subChan) advance() {
	for sc.ready < len(sc.tags) && sc.tags[sc.ready].st != tagOut {
		if sc.tags[sc.ready].st == tagAck {
			sc.readyAcks++
			sc.lastAck = sc.ready + 1
		}
		sc.ready++
	}
	if sc.readyAcks == 0 && sc.ready > 0 {
		sc.drop()
	}
	if n := len(sc.tags); n > 64 && n > 2*(sc.out+sc.held) {
		sc.tags = slices.DeleteFunc(sc.tags, func(e tagEntry) bool { return e.st == tagSent })
		sc.ready, sc.readyAcks, sc.lastAck = 0, 0, 0
		sc.advance()
	}
}

// drop forgets the settled prefix.
func (sc *subChan) drop() {
	sc.tags = sc.tags[sc.ready:]
	sc.ready, sc.readyAcks, sc.lastAck = 0, 0, 0
}

// sendRun sends the acks of the settled prefix as one multiple ack.
func (sc *subChan) sendRun() error {
	if sc.readyAcks == 0 {
		return nil
	}
	if err := sc.ch.Ack(sc.tags[sc.lastAck-1].tag, true); err != nil {
		return err
	}
	sc.held -= sc.readyAcks
	sc.drop()
	return nil
}

// flushLocked sends every ack held: the run of the settled prefix as one
// multiple ack, and when all is true those behind an unsettled tag one by
// one. A failed write is logged: the acks it carried did not reach the
// broker, which redelivers their messages.
func (sc *subChan) flushLocked(all bool) {
	if sc.held == 0 || sc.closing {
		return
	}
	err := sc.sendRun()
	if err == nil && all && sc.held > 0 {
		for i, e := range sc.tags {
			if e.st != tagAck {
				continue
			}
			if err = sc.ch.Ack(e.tag, false); err != nil {
				break
			}
			sc.tags[i].st = tagSent
			sc.held--
		}
		if err == nil {
			sc.advance()
		}
	}
	if err != nil {
		sc.log.Warn("queuekit/rabbitmq: acknowledgements not sent: their channel closed; RabbitMQ redelivers the messages", "queue", sc.queue, "messages", sc.held, "error", err)
		_ = sc.failed(err)
	}
}

// tick is the ackDelay timer.
func (sc *subChan) tick() {
	sc.mu.Lock()
	sc.armed = false
	sc.flushLocked(true)
	sc.mu.Unlock()
}

// failed handles a failed write: the channel (or its connection) is gone,
// and so are the acks held for it. It returns err.
func (sc *subChan) failed(err error) error {
	sc.closing = true
	sc.tags, sc.held, sc.out = nil, 0, 0
	sc.ready, sc.readyAcks, sc.lastAck = 0, 0, 0
	return err
}

// ackOnReceipt acknowledges ds, the deliveries just received on an
// at-most-once channel, then makes a synchronous call on the channel:
// RabbitMQ handles a channel's methods in order, so once it answers, it
// has processed the acknowledgement and a crash of this process can no
// longer bring the messages back. Every earlier delivery of the channel
// was acknowledged the same way, so one multiple ack of the last one
// acknowledges exactly ds.
func (sc *subChan) ackOnReceipt(ds []*delivery, prefetch int) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closing {
		return amqp.ErrClosed
	}
	if err := sc.ch.Ack(ds[len(ds)-1].raw.DeliveryTag, true); err != nil {
		return sc.failed(err)
	}
	return sc.ch.Qos(prefetch, 0, false)
}

// consumerTag is the tag of the one consumer of each subscriber channel
// (consumer tags are the channel's own).
const consumerTag = "queuekit"

// close sends the acks held, cancels the consumer and closes the channel
// once the settlements under way were sent. The acks of a channel that is
// gone already are dropped (logged): RabbitMQ redelivers their messages.
//
// The cancel is there for the acks: a quorum queue applies them after the
// channel has passed them on, and RabbitMQ 3.10 was seen to requeue
// messages acked just before their channel closed (7 runs of 90 that
// acked and closed at once, with per-message acks as well as multiple
// ones, and with a synchronous basic.qos between). basic.cancel is a
// command of the queue's own log that is answered once applied, after
// the acks sent before it: with it, 0 of 90.
func (sc *subChan) close() error {
	sc.mu.Lock()
	if sc.closing {
		sc.mu.Unlock()
		return nil
	}
	if sc.ch.IsClosed() {
		if sc.held > 0 {
			sc.log.Warn("queuekit/rabbitmq: acknowledgements not sent: their channel closed; RabbitMQ redelivers the messages", "queue", sc.queue, "messages", sc.held)
		}
	} else {
		sc.flushLocked(true)
		if !sc.closing {
			_ = sc.ch.Cancel(consumerTag, false)
		}
	}
	sc.closing = true
	if sc.timer != nil {
		sc.timer.Stop()
	}
	sc.tags = nil
	sc.mu.Unlock()
	return sc.ch.Close()
}
