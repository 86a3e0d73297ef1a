package redisstreams_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/adapters/redisstreams"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance/faultproxy"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// The reader decodes XREADGROUP replies itself on a *redis.Client (RESP2
// arrays or RESP3 maps); and its reads wait for the whole block even
// when the client's read timeout is shorter, as go-redis's XReadGroup
// would.
func TestReaderProtocolsAndBlock(t *testing.T) {
	for _, proto := range []int{2, 3} {
		t.Run("RESP"+string(rune('0'+proto)), func(t *testing.T) {
			ctx := testCtx(t)
			c := redis.NewClient(&redis.Options{Addr: testenv.Redis(t), Protocol: proto, ReadTimeout: 50 * time.Millisecond})
			t.Cleanup(func() { _ = c.Close() })
			const block = 300 * time.Millisecond
			rb, err := redisstreams.New(c, redisstreams.Options{Prefix: prefix(), Block: block})
			if err != nil {
				t.Fatal(err)
			}
			b := broker.New(rb)
			t.Cleanup(func() { _ = b.Close(context.Background()) })
			topic := name("reader")
			s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "g"})

			// Nothing to read for several blocks: Receive sees no error
			// of the reader (an XREADGROUP cut by the 50ms read timeout
			// would be one), only its own deadline.
			wctx, cancel := context.WithTimeout(ctx, 3*block)
			_, err = s.Receive(wctx)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Receive on an empty topic = %v; want its deadline", err)
			}

			p := newPublisher(t, b)
			payload := []byte("payload\x00\xff")
			sent := &broker.Message{Key: "k", Payload: payload, Headers: map[string]string{"a": "1", "b": ""}}
			if err := p.Publish(ctx, topic, sent); err != nil {
				t.Fatal(err)
			}
			d := receive(t, ctx, s)
			m := d.Message()
			if m.ID != sent.ID || m.Key != "k" || !bytes.Equal(m.Payload, payload) || len(m.Headers) != 2 ||
				m.Header("a") != "1" || m.Header("b") != "" || m.Attempt != 1 || m.Topic != topic ||
				!m.PublishedAt.Equal(sent.PublishedAt) {
				t.Errorf("received %+v; want %+v", m, sent)
			}
			if err := d.Ack(ctx); err != nil {
				t.Fatal(err)
			}

			// The next read reuses the reader's buffer: the message
			// received before keeps its own copies.
			other := &broker.Message{Key: "k2", Payload: []byte("another"), Headers: map[string]string{"a": "2"}}
			if err := p.Publish(ctx, topic, other); err != nil {
				t.Fatal(err)
			}
			d2 := receive(t, ctx, s)
			_ = d2.Ack(ctx)
			if m.ID != sent.ID || m.Key != "k" || !bytes.Equal(m.Payload, payload) || m.Header("a") != "1" {
				t.Errorf("after the next read, the first message is %+v; want %+v", m, sent)
			}
			if m2 := d2.Message(); m2.ID != other.ID || m2.Key != "k2" || string(m2.Payload) != "another" || m2.Header("a") != "2" {
				t.Errorf("second message %+v; want %+v", m2, other)
			}
		})
	}
}

// Under AtLeastOnce an ack reaches Redis soon (within ackLinger or a round
// trip) whatever the reader does: it sends the acks queued with its reads,
// and the acker sends them while the reader waits, for room (prefetch
// reached) or for entries (a blocking XREADGROUP, 10s here), without
// waiting for Close.
func TestAcksSentWhileReaderWaits(t *testing.T) {
	ctx := testCtx(t)
	b := openBroker(t, "block=10s")
	c := rawClient(t)
	topic := name("ack-wait")
	s := newSubscriber(t, b, broker.SubscriberOptions{Topic: topic, Group: "g", Prefetch: 2})
	p := newPublisher(t, b)
	for range 3 {
		if err := p.Publish(ctx, topic, &broker.Message{Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	// pendingBecomes waits (up to 2s, far less than the block) until the
	// group's pending list holds want entries.
	pendingBecomes := func(what string, want int64) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			n := pending(t, c, topic, "g")
			if n == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d pending after 2s, want %d", what, n, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	d1, d2 := receive(t, ctx, s), receive(t, ctx, s)
	pendingBecomes("two read, prefetch reached", 2)
	if err := d1.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	// The ack makes room: the reader reads the third entry and waits for
	// room again, with the ack queued unless it took it along.
	pendingBecomes("the first acked, the third read", 2)
	if err := d2.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	d3 := receive(t, ctx, s)
	pendingBecomes("the second acked", 1)
	if err := d3.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	// Nothing left to read: the reader is blocked in Redis.
	pendingBecomes("all acked, the reader blocked", 0)
}

// A cut connection (through a proxy that resets it) costs the reader an
// error, which Receive reports as Transient, and a new connection: the
// messages published after the cut are read on it (or, when Redis served
// the blocked read before it saw the cut, claimed after the 1s ack
// timeout: the reply was lost). Closing the subscriber interrupts a
// blocking read (10s here) on the new connection too.
func TestReaderReconnectsAfterCut(t *testing.T) {
	ctx := testCtx(t)
	addr := testenv.Redis(t)
	proxy, err := faultproxy.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	b, err := broker.Open(ctx, strings.Replace(redisURL(t, "block=10s", "ack_timeout=1s"), addr, proxy.Addr(), 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	direct := openBroker(t) // publishes past the proxy
	p := newPublisher(t, direct)
	topic := name("cut")
	s, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })

	// next receives the message published as id, through the errors the
	// cut causes (Transient ones only).
	next := func(id string) {
		t.Helper()
		for {
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			d, err := s.Receive(rctx)
			cancel()
			switch {
			case err == nil:
				if got := d.Message().ID; got != id {
					t.Fatalf("received %s; want %s", got, id)
				}
				if err := d.Ack(ctx); err != nil {
					t.Fatal(err)
				}
				return
			case broker.KindOf(err) == semantics.Transient:
				continue
			default:
				t.Fatalf("Receive: %v; want the message or Transient errors", err)
			}
		}
	}
	for i := range 3 {
		m := &broker.Message{Payload: []byte("x")}
		if err := p.Publish(ctx, topic, m); err != nil {
			t.Fatal(err)
		}
		next(m.ID)
		if i < 2 {
			if proxy.Cut() == 0 {
				t.Fatal("nothing to cut: the subscriber has no connection through the proxy")
			}
		}
	}
	// The reader is now blocked in a 10s XREADGROUP on its third
	// connection: Close must not wait for it.
	start := time.Now()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v with the reader blocked; want it interrupted", d)
	}
}

// After a failover the server the reader's connection goes to refuses its
// XREADGROUP (READONLY: it is a replica now). The reader drops that
// connection and makes a new one through the client's Dialer, which goes
// to the new master as go-redis's own connections do, and reads on there.
func TestReaderFollowsDialerAfterReadOnly(t *testing.T) {
	ctx := testCtx(t)
	a, bsrv := testenv.RedisServer(t), testenv.RedisServer(t)
	var target atomic.Value
	target.Store(a.Addr)
	c := redis.NewClient(&redis.Options{Addr: a.Addr, Dialer: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, target.Load().(string))
	}})
	t.Cleanup(func() { _ = c.Close() })
	rb, err := redisstreams.New(c, redisstreams.Options{Block: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	qb := broker.New(rb)
	topic := name("failover")
	s := newSubscriber(t, qb, broker.SubscriberOptions{Topic: topic, Group: "g"})
	p := newPublisher(t, qb)
	first := &broker.Message{Payload: []byte("1")}
	if err := p.Publish(ctx, topic, first); err != nil {
		t.Fatal(err)
	}
	d := receive(t, ctx, s)
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}

	// B takes A's data and becomes the master; A becomes its replica.
	ca, cb := redis.NewClient(&redis.Options{Addr: a.Addr}), redis.NewClient(&redis.Options{Addr: bsrv.Addr})
	t.Cleanup(func() { _ = ca.Close(); _ = cb.Close() })
	host, port, _ := net.SplitHostPort(a.Addr)
	if err := ca.ConfigSet(ctx, "repl-diskless-sync-delay", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := cb.ReplicaOf(ctx, host, port).Err(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		info, _ := cb.Info(ctx, "replication").Result()
		if strings.Contains(info, "master_link_status:up") && cb.Exists(ctx, topic).Val() == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B did not sync from A: %s", info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cb.ReplicaOf(ctx, "no", "one").Err(); err != nil {
		t.Fatal(err)
	}
	target.Store(bsrv.Addr)
	host, port, _ = net.SplitHostPort(bsrv.Addr)
	if err := ca.ReplicaOf(ctx, host, port).Err(); err != nil {
		t.Fatal(err)
	}
	second := cb.XAdd(ctx, &redis.XAddArgs{Stream: topic, Values: []any{"_id", "second", "_body", "2"}}).Val()
	if second == "" {
		t.Fatal("XADD on the new master failed")
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		d, err := s.Receive(rctx)
		cancel()
		if err != nil {
			if broker.KindOf(err) == semantics.Transient || strings.Contains(err.Error(), "READONLY") {
				continue // the reader's READONLY, go-redis's connections to A
			}
			t.Fatalf("Receive: %v; want the message added on the new master", err)
		}
		if got := d.Message().ID; got != "second" {
			t.Fatalf("received %s; want the message added on the new master", got)
		}
		return
	}
}

// A client with an OnConnect hook, which the reader's own connection could
// not run, reads with go-redis's XReadGroup on the client's connections
// (the hook runs for them), acks included.
func TestReaderWithOnConnectHook(t *testing.T) {
	ctx := testCtx(t)
	var hooked atomic.Int64
	c := redis.NewClient(&redis.Options{Addr: testenv.Redis(t), OnConnect: func(context.Context, *redis.Conn) error {
		hooked.Add(1)
		return nil
	}})
	t.Cleanup(func() { _ = c.Close() })
	rb, err := redisstreams.New(c, redisstreams.Options{Prefix: prefix(), Block: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	qb := broker.New(rb)
	topic := name("onconnect")
	s := newSubscriber(t, qb, broker.SubscriberOptions{Topic: topic, Group: "g"})
	p := newPublisher(t, qb)
	sent := &broker.Message{Key: "k", Payload: []byte("p"), Headers: map[string]string{"a": "1"}}
	if err := p.Publish(ctx, topic, sent); err != nil {
		t.Fatal(err)
	}
	d := receive(t, ctx, s)
	if m := d.Message(); m.ID != sent.ID || m.Key != "k" || string(m.Payload) != "p" || m.Header("a") != "1" {
		t.Errorf("received %+v; want %+v", m, sent)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := pending(t, rawClient(t), topic, "g"); n != 0 {
		t.Errorf("%d pending after the ack and Close; want 0", n)
	}
	if hooked.Load() == 0 {
		t.Error("the OnConnect hook never ran")
	}
}
