package nats

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/conformance/faultproxy"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// ackOutcome tells an ack from JetStream's errors without decoding the
// ack, and decodes everything else.
func TestAckOutcome(t *testing.T) {
	for _, c := range []struct {
		reply string
		code  jetstream.ErrorCode // of the *APIError wanted; 0: no API error
		err   error               // wanted otherwise
	}{
		{reply: `{"stream":"S","seq":1}`},
		{reply: `{"stream":"S","seq":7,"duplicate":true}`},
		{reply: `{"domain":"hub","stream":"S","seq":2}`},
		{reply: `{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 1"},"stream":"S","seq":0}`, code: 10071},
		{reply: `{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}`, code: 10077},
		{reply: `{"stream":"","seq":1}`, err: jetstream.ErrInvalidJSAck},
		{reply: `{"stream":"`, err: jetstream.ErrInvalidJSAck},
		{reply: `{}`, err: jetstream.ErrInvalidJSAck},
		{reply: `not json`, err: jetstream.ErrInvalidJSAck},
	} {
		err := ackOutcome([]byte(c.reply))
		var apiErr *jetstream.APIError
		switch {
		case c.code != 0:
			if !errors.As(err, &apiErr) || apiErr.ErrorCode != c.code {
				t.Errorf("ackOutcome(%s) = %v, want the API error %d", c.reply, err, c.code)
			}
		case err != c.err:
			t.Errorf("ackOutcome(%s) = %v, want %v", c.reply, err, c.err)
		}
	}
}

// JetStream's refusal of a message (here a failed expected-sequence check
// of a Nats-* header passed through) fails that message alone, with the
// server's error, while the others of the call are stored.
func TestPublishReportsJetStreamErrorsPerMessage(t *testing.T) {
	prefix := uniq("qkpuberr")
	nb := openDriver(t, prefix, "")
	ctx := testCtx(t)
	topic := prefix + ".t"
	p := declaredPublisher(t, nb, topic)
	bad := &driver.Message{ID: "bad", Headers: map[string]string{jetstream.ExpectedLastSeqHeader: "999"}}
	err := p.Publish(ctx, topic, &driver.Message{ID: "a"}, bad, &driver.Message{ID: "b"})
	var pe *driver.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != 1 || pe.Failed[0].Index != 1 || pe.Failed[0].ID != "bad" {
		t.Fatalf("Publish = %v, want the second message alone failed", err)
	}
	var apiErr *jetstream.APIError
	if !errors.As(pe.Failed[0].Err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		t.Errorf("failure = %v, want JetStream's wrong last sequence", pe.Failed[0].Err)
	}
	if k := driver.KindOf(pe.Failed[0].Err); k != semantics.Permanent {
		t.Errorf("kind = %v, want permanent", k)
	}
	if n, err := nb.Backlog(ctx, topic, "g"); err != nil || n.Pending != 2 {
		t.Errorf("Backlog = %+v, %v; want the two good messages pending", n, err)
	}
}

// A subject that no stream captures gets "no responders" from the server;
// the publisher sends again twice, 250 ms apart (a stream may be starting
// or electing its leader), then fails the message with ErrNoGroup.
func TestPublishRetriesNoResponders(t *testing.T) {
	prefix := uniq("qknoresp")
	nb := openDriver(t, prefix, "")
	ctx := testCtx(t)
	p := declaredPublisher(t, nb, "")
	start := time.Now()
	err := p.Publish(ctx, prefix+".none", &driver.Message{ID: "x"})
	if !errors.Is(err, driver.ErrNoGroup) || driver.KindOf(err) != semantics.NotFound {
		t.Fatalf("Publish = %v, want ErrNoGroup (not found)", err)
	}
	if took := time.Since(start); took < noResponderRetries*noResponderWait {
		t.Errorf("Publish failed after %v: the %d sends again %v apart did not happen", took, noResponderRetries, noResponderWait)
	}
}

// When the connection drops, the messages awaiting their ack fail at once
// (Transient: their acks died with the connection) instead of after
// publish_timeout; when it is closed, they and the rest of the call fail
// as Closed. Either way every message reported published is stored.
func TestPublishFailsUnackedWhenConnectionGoes(t *testing.T) {
	for _, c := range []struct {
		name string
		kind semantics.Kind
		end  func(*faultproxy.Proxy, *Broker)
	}{
		{"drops", semantics.Transient, func(proxy *faultproxy.Proxy, nb *Broker) {
			dropped := nb.nc.StatusChanged(natsgo.RECONNECTING)
			defer nb.nc.RemoveStatusListener(dropped)
			proxy.Hold()
			proxy.Cut()
			<-dropped
			proxy.Release()
		}},
		{"closes", semantics.Closed, func(_ *faultproxy.Proxy, nb *Broker) { nb.nc.Close() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw := testenv.NATS(t)
			u, err := url.Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			proxy, err := faultproxy.New(u.Host)
			if err != nil {
				t.Fatal(err)
			}
			defer proxy.Close()
			prefix := uniq("qkpubcut")
			cleanupStreams(t, raw, prefix)
			via := *u
			via.Host = proxy.Addr()
			q := via.Query()
			q.Set("publish_timeout", "5m")
			via.RawQuery = q.Encode()
			ctx := testCtx(t)
			nb, err := Open(ctx, via.String())
			if err != nil {
				t.Fatal(err)
			}
			defer nb.Close(context.Background())
			topic := prefix + ".t"
			p := declaredPublisher(t, nb, topic)

			const n = 100000
			msgs := make([]*driver.Message, n)
			for i := range msgs {
				msgs[i] = &driver.Message{ID: driver.NewID(), Payload: make([]byte, 100)}
			}
			result := make(chan error, 1)
			go func() { result <- p.Publish(ctx, topic, msgs...) }()
			for proxy.Up() < 1<<20 { // a few thousand messages on their way
				select {
				case err := <-result:
					t.Fatalf("Publish of %d messages ended (%v) before a megabyte went out", n, err)
				case <-time.After(time.Millisecond):
				}
			}
			c.end(proxy, nb)

			err = <-result
			var pe *driver.PublishError
			if !errors.As(err, &pe) {
				t.Fatalf("Publish = %v, want the messages in flight failed", err)
			}
			for _, f := range pe.Failed {
				if k := driver.KindOf(f.Err); k != c.kind {
					t.Fatalf("message %d failed with %v (%v), want %v", f.Index, f.Err, k, c.kind)
				}
			}
			t.Logf("%d of %d messages failed", len(pe.Failed), n)
			bl, err := openDriver(t, prefix, "").Backlog(ctx, topic, "g")
			if err != nil {
				t.Fatal(err)
			}
			if ok := int64(n - len(pe.Failed)); bl.Pending < ok {
				t.Errorf("%d messages stored, fewer than the %d reported published", bl.Pending, ok)
			}
		})
	}
}

// declaredPublisher declares topic (when not empty) with group "g" on nb,
// and returns a publisher of nb, closed when t ends.
func declaredPublisher(t *testing.T, nb *Broker, topic string) driver.Publisher {
	t.Helper()
	ctx := testCtx(t)
	if topic != "" {
		if err := nb.Declare(ctx, topic, []string{"g"}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := nb.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}
