package nats

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// puller is an at-least-once subscriber's continuous pull: what
// jetstream's Consume does, without the race that stalled it. Consume
// sends its pull requests from a goroutine of its own and skips the
// refill check of a message handled while that goroutine is still busy
// sending the previous request; when the last messages of the requests
// in flight are all handled within that window (a handler that only
// passes them on takes well under a microsecond each), nothing asks for
// more and the subscriber waits for the missed-heartbeat check — two idle
// heartbeat intervals, 15s with the default ack wait. Measured: about one
// run in two of a million messages stalled once, with Consume's own count
// of messages asked for at 0, no request in flight and none at the server.
// Here the refill is sent where the count changes, under one lock.
//
// The rest is Consume's scheme: ask for prefetch messages, and for the
// difference again once fewer than half are still to come or not yet
// handed out; requests expire after expiry (the server then reports how
// many it did not deliver) and ask for idle heartbeats every expiry/2;
// with no sign of life for two heartbeat intervals, or after a
// reconnection, the requests are taken as lost and made again.
//
// Unlike Consume, deliveries reach Receive through the inbox's channel
// (a channel subscription), not through a handler on a goroutine of
// nats.go's that would pass them on through a second channel: one
// goroutine handoff per message less. And a message counts until Receive
// hands it out: the subscriber holds at most prefetch messages, where
// Consume's handler feeding a channel of prefetch could hold up to twice
// that — with the default prefetch (1000), as much as the group's default
// max ack pending (2000) once handlers fall behind. One exception, as in
// Consume: once requests are taken as lost and made again (restart), a
// request that was in fact alive may still deliver until it expires, so
// for up to one expiry the inbox may hold up to twice prefetch (mch has
// room for that; the group's max ack pending still bounds what the server
// sends). (Not what
// BenchmarkNATSConsume measures: there the handler keeps up and the
// group's ack pending averaged about 330 either way, at most 771.)
type puller struct {
	s        *subscriber
	nc       *nats.Conn
	subject  string // the consumer's MSG.NEXT subject
	sub      *nats.Subscription
	mch      chan *nats.Msg // the inbox
	prefetch int
	expiry   time.Duration
	hb       time.Duration
	status   chan nats.Status
	stopOnce sync.Once

	mu  sync.Mutex // held to send a request
	req []byte     // the pull request being written

	pending atomic.Int64  // asked for and not handed out: to come, or in mch
	seen    atomic.Uint64 // messages and statuses taken out of mch: signs of life for the watchdog
}

// pullSubject is the JetStream API subject of a pull request for consumer
// cons of stream: $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>, with the
// domain's prefix when there is one (as jetstream.NewWithDomain).
func pullSubject(domain, stream, cons string) string {
	prefix := "$JS.API."
	if domain != "" {
		prefix = "$JS." + domain + ".API."
	}
	return prefix + "CONSUMER.MSG.NEXT." + stream + "." + cons
}

// startPulling subscribes the subscriber's inbox and sends its first pull
// request. s.stopped is closed once the inbox is unsubscribed (by Close,
// a terminal status, or the connection closing).
func (s *subscriber) startPulling(expiry time.Duration) error {
	info := s.cons.CachedInfo()
	if len(info.Config.PriorityGroups) != 0 {
		return fmt.Errorf("%w: priority group is required for priority consumer", jetstream.ErrInvalidOption)
	}
	nc := s.b.nc
	p := &puller{
		s:        s,
		nc:       nc,
		subject:  pullSubject(s.b.opts.Domain, s.stream, info.Name),
		prefetch: s.prefetch,
		expiry:   expiry,
		hb:       min(expiry/2, 30*time.Second),
		// nats.go drops what does not fit (as a slow consumer's): room
		// for prefetch, for as many again after requests made again
		// (a request taken as lost may still deliver), and statuses.
		mch: make(chan *nats.Msg, 2*s.prefetch+64),
	}
	sub, err := nc.ChanSubscribe(nc.NewInbox(), p.mch)
	if err != nil {
		return err
	}
	p.sub = sub
	// nats.go calls it with its locks held: close a channel, nothing more.
	sub.SetClosedHandler(func(string) { p.stop() })
	if !sub.IsValid() {
		p.stop()
	}
	p.status = nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING)
	s.pull = p
	p.refill()
	go p.watch()
	return nil
}

func (p *puller) stop() { p.stopOnce.Do(func() { close(p.s.stopped) }) }

// poll returns the next delivery waiting in the inbox, handling the
// server's status messages before it; false when none is waiting.
func (p *puller) poll() (*nats.Msg, bool) {
	for {
		select {
		case msg := <-p.mch:
			if p.got(msg) {
				return msg, true
			}
		default:
			return nil, false
		}
	}
}

// got counts msg, taken out of the inbox, and reports whether it is a
// delivery; a status message is handled.
func (p *puller) got(msg *nats.Msg) bool {
	p.seen.Add(1)
	if len(msg.Data) == 0 {
		if code := msg.Header.Get("Status"); code != "" {
			p.onStatus(msg, code)
			return false
		}
	}
	p.handedOut(1)
	return true
}

// handedOut counts n messages that are no longer to come and asks for
// more when fewer than half of prefetch are left.
func (p *puller) handedOut(n int) {
	if p.pending.Add(int64(-n)) < p.threshold() {
		p.refill()
	}
}

func (p *puller) threshold() int64 { return int64(p.prefetch+1) / 2 }

// refill sends a pull request for what is missing to prefetch once fewer
// than half of it are left. A request that cannot be sent is noted; the
// next message handed out, the watchdog or a reconnection tries again.
func (p *puller) refill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	left := p.pending.Load()
	if left >= p.threshold() {
		return
	}
	select {
	case <-p.s.closing:
		return
	default:
	}
	n := int64(p.prefetch) - max(left, 0)
	b := append(p.req[:0], `{"batch":`...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, `,"expires":`...)
	b = strconv.AppendInt(b, p.expiry.Nanoseconds(), 10)
	b = append(b, `,"idle_heartbeat":`...)
	b = strconv.AppendInt(b, p.hb.Nanoseconds(), 10)
	b = append(b, '}')
	p.req = b
	if err := p.nc.PublishRequest(p.subject, p.sub.Subject, b); err != nil {
		p.s.noteError(err)
		return
	}
	p.pending.Add(n)
}

// restart takes the requests in flight as lost and asks again for what is
// missing to prefetch besides what the inbox holds.
func (p *puller) restart() {
	p.pending.Store(int64(len(p.mch)))
	p.refill()
}

// onStatus handles a status message of the server (as jetstream's Consume
// does): a heartbeat is a sign of life; an expired or completed request
// gives back what it did not deliver; a deleted consumer or a refused
// request ends pulling; other conflicts are noted.
func (p *puller) onStatus(msg *nats.Msg, code string) {
	descr := strings.ToLower(msg.Header.Get("Description"))
	switch code {
	case "100": // idle heartbeat
		return
	case "404", "408":
	case "409":
		switch {
		case strings.Contains(descr, "message size exceeds maxbytes"), strings.Contains(descr, "batch completed"):
		case strings.Contains(descr, "consumer deleted"):
			p.fail(jetstream.ErrConsumerDeleted)
			return
		case strings.Contains(descr, "leadership change"):
			p.s.noteError(jetstream.ErrConsumerLeadershipChanged)
			p.restart()
			return
		default:
			p.s.noteError(fmt.Errorf("nats: %s", msg.Header.Get("Description")))
			return
		}
	case "400":
		p.fail(jetstream.ErrBadRequest)
		return
	case "503":
		p.s.noteError(nats.ErrNoResponders)
		return
	default:
		p.s.noteError(fmt.Errorf("nats: %s", msg.Header.Get("Description")))
		return
	}
	left, err := strconv.Atoi(msg.Header.Get("Nats-Pending-Messages"))
	if err != nil {
		left = 0
	}
	p.handedOut(left) // never to come
}

// fail notes err and ends pulling.
func (p *puller) fail(err error) {
	p.s.noteError(err)
	_ = p.sub.Unsubscribe()
}

// watch makes the requests again after a reconnection (the server dropped
// them with the old connection) and when, with messages still to come and
// the inbox empty, nothing came for two heartbeat intervals.
func (p *puller) watch() {
	defer p.nc.RemoveStatusListener(p.status)
	tick := time.NewTicker(p.hb / 2)
	defer tick.Stop()
	last, idle, down := p.seen.Load(), 0, false
	for {
		select {
		case <-p.s.stopped:
			return
		case st, ok := <-p.status:
			if !ok {
				return
			}
			switch st {
			case nats.RECONNECTING:
				down = true
			case nats.CONNECTED:
				if down {
					down = false
					p.restart()
				}
			}
		case <-tick.C:
			// A request that could not be sent (refill noted the error)
			// is tried again here, also when no reconnection follows.
			p.refill()
			n := p.seen.Load()
			if n != last || down || len(p.mch) > 0 || p.pending.Load() <= 0 {
				last, idle = n, 0
				continue
			}
			if idle++; idle >= 4 {
				idle = 0
				p.s.noteError(jetstream.ErrNoHeartbeat)
				p.restart()
			}
		}
	}
}
