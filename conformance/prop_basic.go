package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// publishedAtSkew is how far a delivered PublishedAt may be from the one
// Publish stamped: brokers keep milliseconds or their own receive time.
const publishedAtSkew = 2 * time.Second

func roundtrip(p *probe) error {
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	sent := []*broker.Message{
		{ID: p.id(0), Key: "order-1", Payload: []byte(`{"order":1}`),
			Headers: map[string]string{"content-type": "application/json", "trace": "abc-123"}},
		{ID: p.id(1), Payload: []byte("no key, no headers")},
		{Key: "order-2", Payload: []byte("no ID: Publish assigns one")},
	}
	if err := pub.Publish(p.ctx, p.topic, sent...); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if sent[2].ID == "" {
		return errors.New("Publish did not assign an ID to a message published without one")
	}
	for _, m := range sent {
		if m.PublishedAt.IsZero() {
			return fmt.Errorf("Publish did not stamp PublishedAt on message %s", m.ID)
		}
	}
	return p.expectSame(sub, sent)
}

func headersRoundtrip(p *probe) error {
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	allBytes := make([]byte, 1024)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	headers := map[string]string{
		"Content-Type": "application/octet-stream",
		"x-trace-id":   "4bf92f3577b34da6a3ce929d0e0e4736",
		"unicode":      "héllo wörld ✓ 日本語",
		"multi-line":   "line 1\nline 2\r\n\ttabbed",
		"json":         `{"a":[1,2,3],"b":"c"}`,
		"separators":   "a=b;c=d,e|f:g",
		"empty":        "",
		"spaces":       "  padded  ",
		"app.version":  "1.2.3",
		"long":         strings.Repeat("0123456789", 50),
	}
	for i := 0; len(headers) < 20; i++ {
		headers[fmt.Sprintf("h%02d", i)] = strconv.Itoa(i * i)
	}
	bigSize := 64 << 10
	if limit := p.caps.MaxMessageSize; limit > 0 {
		bigSize = min(bigSize, limit/2)
	}
	big := make([]byte, bigSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	sent := []*broker.Message{
		{ID: p.id(0), Key: "binary", Payload: allBytes, Headers: headers},
		{ID: p.id(1), Key: "empty", Headers: map[string]string{"empty-payload": "yes"}},
		{ID: p.id(2), Key: "big", Payload: big},
		{ID: p.id(3), Key: "zeros", Payload: make([]byte, 100)},
	}
	if err := pub.Publish(p.ctx, p.topic, sent...); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	return p.expectSame(sub, sent)
}

// expectSame receives until every message of sent (already published) was
// delivered, acks each delivery and checks it against what was sent.
func (p *probe) expectSame(sub *broker.Subscriber, sent []*broker.Message) error {
	want := make(map[string]*broker.Message, len(sent))
	for _, m := range sent {
		want[m.ID] = m.Clone()
		p.led.Published(m.ID, m.Key)
	}
	stop := p.receive(sub, func(d *broker.Delivery) {
		got := d.Message()
		p.led.Delivered(got.ID)
		w, ok := want[got.ID]
		if !ok {
			p.failf("delivered a message that was not published: ID %q", got.ID)
			p.ack(d)
			return
		}
		first := p.led.HandledCount(got.ID) == 0
		for _, problem := range compareMessage(w, got, p.topic) {
			p.failf("message %s: %s", got.ID, problem)
		}
		if first {
			if p.caps.AttemptCount && got.Attempt != 1 {
				p.failf("message %s: first delivery has Attempt %d, want 1", got.ID, got.Attempt)
			} else if got.Attempt > 1 {
				p.failf("message %s: first delivery has Attempt %d, want 0 or 1", got.ID, got.Attempt)
			}
		}
		p.ack(d)
		p.led.Handled(got.ID)
	})
	defer stop()
	return p.waitAll(p.led, "every message to be delivered")
}

// compareMessage lists how got differs from want. Headers with the reserved
// prefix may be added by the adapter; any other difference is a problem.
func compareMessage(want, got *broker.Message, topic string) []string {
	var out []string
	if got.Key != want.Key {
		out = append(out, fmt.Sprintf("Key %q, want %q", got.Key, want.Key))
	}
	if !bytes.Equal(got.Payload, want.Payload) {
		out = append(out, "Payload "+payloadDiff(want.Payload, got.Payload))
	}
	var keys []string
	for k := range want.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, ok := got.Headers[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("header %q missing", k))
		case v != want.Headers[k]:
			out = append(out, fmt.Sprintf("header %q = %q, want %q", k, v, want.Headers[k]))
		}
	}
	keys = keys[:0]
	for k := range got.Headers {
		if _, ok := want.Headers[k]; !ok && !strings.HasPrefix(k, broker.HeaderPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, fmt.Sprintf("unexpected header %q = %q", k, got.Headers[k]))
	}
	if got.Topic != topic {
		out = append(out, fmt.Sprintf("Topic %q, want %q", got.Topic, topic))
	}
	switch {
	case got.PublishedAt.IsZero():
		out = append(out, "PublishedAt not set")
	case got.PublishedAt.Sub(want.PublishedAt).Abs() > publishedAtSkew:
		out = append(out, fmt.Sprintf("PublishedAt %v, %v away from the %v Publish stamped",
			got.PublishedAt, got.PublishedAt.Sub(want.PublishedAt), want.PublishedAt))
	}
	return out
}

func payloadDiff(want, got []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("is %d bytes, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			return fmt.Sprintf("differs at byte %d: %#02x, want %#02x", i, got[i], want[i])
		}
	}
	return "differs"
}

// maxAtLimit bounds the message publish.oversize-refused sends at exactly
// MaxMessageSize; larger limits are only checked for refusal, because test
// servers cap what they take below the real broker's limit (pstest's gRPC
// server takes 4 MiB, Pub/Sub allows 10 MB).
const maxAtLimit = 4 << 20

func publishOversizeRefused(p *probe) error {
	limit := p.caps.MaxMessageSize
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	pub, err := p.publisher()
	if err != nil {
		return err
	}
	small := &broker.Message{ID: p.id(0), Key: "k", Payload: []byte("small, in the refused batch")}
	over := &broker.Message{ID: p.id(1), Key: "k", Payload: make([]byte, limit+1)}
	err = pub.Publish(p.ctx, p.topic, small, over)
	var tooLarge *broker.TooLargeError
	switch {
	case err == nil:
		return fmt.Errorf("Publish accepted a message of %d bytes, over MaxMessageSize %d", over.Size(), limit)
	case !errors.Is(err, broker.ErrTooLarge) || !errors.As(err, &tooLarge):
		return fmt.Errorf("Publish of an oversize message returned %v, want a *broker.TooLargeError (errors.Is ErrTooLarge)", err)
	case broker.KindOf(err) != semantics.InvalidArgument:
		p.failf("oversize error has kind %v, want %v", broker.KindOf(err), semantics.InvalidArgument)
	}
	if tooLarge.ID != over.ID || tooLarge.Max != limit {
		p.failf("TooLargeError names message %q with limit %d, want %q and %d", tooLarge.ID, tooLarge.Max, over.ID, limit)
	}
	var sent []*broker.Message
	if limit <= maxAtLimit {
		atLimit := &broker.Message{ID: p.id(2), Key: "k"}
		atLimit.Payload = make([]byte, limit-len(atLimit.ID)-len(atLimit.Key))
		if err := pub.Publish(p.ctx, p.topic, atLimit); err != nil {
			return fmt.Errorf("a message of exactly MaxMessageSize (%d bytes by Message.Size) was refused: %v", atLimit.Size(), err)
		}
		sent = append(sent, atLimit)
	} else {
		p.notef("MaxMessageSize %d is over %d: a message at the limit was not tried", limit, maxAtLimit)
	}
	marker := &broker.Message{ID: p.id(3), Key: "k", Payload: []byte("published after the refused batch")}
	if err := pub.Publish(p.ctx, p.topic, marker); err != nil {
		return fmt.Errorf("publish after a refused batch: %w", err)
	}
	sent = append(sent, marker)
	for _, m := range sent {
		p.led.Published(m.ID, m.Key)
	}
	// Anything of the refused batch that arrives while we wait for the
	// later messages shows that the batch was partly sent. Where the adapter
	// keeps per-key order this is conclusive (all share key "k").
	stop := p.receive(sub, func(d *broker.Delivery) {
		id := d.Message().ID
		p.led.Delivered(id)
		if id == small.ID || id == over.ID {
			p.failf("message %s of the refused batch was delivered: the batch was partly published", id)
		} else if len(d.Message().Payload) != len(sent[0].Payload) && id == sent[0].ID {
			p.failf("message %s at the limit arrived with %d payload bytes, want %d", id, len(d.Message().Payload), len(sent[0].Payload))
		}
		p.ack(d)
		p.led.Handled(id)
	})
	defer stop()
	return p.waitAll(p.led, "the messages published after the refused batch")
}

func ackIdempotent(p *probe) error {
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	role := map[string]int{} // 0: acked first, 1: nacked first
	seen := map[string]int{}
	stop := p.receive(sub, func(d *broker.Delivery) {
		id := d.Message().ID
		p.led.Delivered(id)
		mu.Lock()
		r, ok := role[id]
		if !ok {
			r = len(role)
			role[id] = r
		}
		n := seen[id]
		seen[id]++
		mu.Unlock()
		switch {
		case n > 0 || r > 1:
			p.ack(d)
			p.led.Handled(id)
		case r == 0:
			if err := d.Ack(p.bg()); err != nil {
				p.failf("Ack(%s): %v", id, err)
			}
			if err := d.Ack(p.bg()); err != nil {
				p.failf("second Ack(%s) returned %v, want nil", id, err)
			}
			if err := d.Nack(p.bg(), 0); !errors.Is(err, broker.ErrAlreadySettled) {
				p.failf("Nack(%s) after Ack returned %v, want ErrAlreadySettled", id, err)
			}
			p.led.Handled(id)
		case r == 1:
			if err := d.Nack(p.bg(), 0); err != nil {
				p.failf("Nack(%s): %v", id, err)
			}
			if err := d.Nack(p.bg(), 0); err != nil {
				p.failf("second Nack(%s) returned %v, want nil", id, err)
			}
			if err := d.Ack(p.bg()); !errors.Is(err, broker.ErrAlreadySettled) {
				p.failf("Ack(%s) after Nack returned %v, want ErrAlreadySettled", id, err)
			}
			// Handled when the nacked message comes back.
		}
	})
	defer stop()
	if err := p.publishNew(p.messages(0, 2, 0), 2); err != nil {
		return err
	}
	return p.waitAll(p.led, "the acked message and the redelivery of the nacked one")
}

func attemptCount(p *probe) error {
	sub, err := p.subscribe("g", nil)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var attempts []int
	stop := p.receive(sub, func(d *broker.Delivery) {
		m := d.Message()
		p.led.Delivered(m.ID)
		mu.Lock()
		attempts = append(attempts, m.Attempt)
		n := len(attempts)
		mu.Unlock()
		if n < 3 {
			p.nack(d, 0)
			return
		}
		p.ack(d)
		p.led.Handled(m.ID)
	})
	defer stop()
	if err := p.publishNew(p.messages(0, 1, 0), 1); err != nil {
		return err
	}
	if err := p.waitAll(p.led, "the third delivery"); err != nil {
		return err
	}
	mu.Lock()
	got := slices.Clone(attempts[:3])
	mu.Unlock()
	if !slices.Equal(got, []int{1, 2, 3}) {
		return fmt.Errorf("a message nacked twice was delivered with Attempt %v, want [1 2 3]", got)
	}
	return nil
}
