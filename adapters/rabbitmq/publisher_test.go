package rabbitmq

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// TestPublishCanceledWithTheWindowFull: a call whose context ends while
// its messages wait for the confirm window reports the sent ones as
// unconfirmed (Transient) and the others as Canceled, and the window slots
// of the sent ones come back once the broker confirms them, so that a call
// queued behind it and later calls complete. Through package broker, the
// call as a whole is Canceled and still names every message (it had
// dropped the names).
func TestPublishCanceledWithTheWindowFull(t *testing.T) {
	px, purl := startProxy(t, testenv.RabbitMQ(t))
	b := dialVia(t, purl, Options{ConfirmWindow: 4})
	topic := uniq("window")
	newSub(t, b, broker.SubscriberOptions{Topic: topic})
	pub, err := b.NewPublisher(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(context.Background())
	// The first Publish checks that the topic has a group: done before the
	// hold, whose answer would be held too.
	if err := pub.Publish(ctxT(t, 10*time.Second), topic, &broker.Message{ID: "first"}); err != nil {
		t.Fatal(err)
	}
	prepared := func(ms ...*broker.Message) []*broker.Message {
		if err := driver.Prepare("test", ms, 0); err != nil {
			t.Fatal(err)
		}
		return ms
	}
	msgs := make([]*broker.Message, 10)
	for i := range msgs {
		msgs[i] = &broker.Message{Payload: make([]byte, 1024)}
	}
	prepared(msgs...)
	before := px.up.Load()
	px.hold()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- pub.Publish(ctx, topic, msgs...) }()
	deadline := time.Now().Add(10 * time.Second)
	for px.up.Load()-before < 4*1024 { // the window's four were sent
		if time.Now().After(deadline) {
			t.Fatal("the publishes never reached the proxy")
		}
		time.Sleep(time.Millisecond)
	}
	behind := make(chan error, 1)
	behindMsgs := prepared(&broker.Message{ID: "behind"})
	behindCtx := ctxT(t, 20*time.Second)
	go func() { behind <- pub.Publish(behindCtx, topic, behindMsgs...) }()
	cancel()
	err = <-errc
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failed) != len(msgs) {
		t.Fatalf("Publish canceled with the window full = %v, want a PublishError failing all %d", err, len(msgs))
	}
	if broker.KindOf(err) != semantics.Canceled || !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish canceled = %v (kind %v), want kind Canceled matching context.Canceled", err, broker.KindOf(err))
	}
	kinds := map[semantics.Kind]int{}
	for i, f := range pe.Failed {
		if f.Index != i {
			t.Fatalf("failure %d has index %d", i, f.Index)
		}
		kinds[broker.KindOf(f.Err)]++
	}
	if kinds[semantics.Transient] != 4 || kinds[semantics.Canceled] != 6 {
		t.Fatalf("failure kinds %v, want 4 transient (sent, unconfirmed) and 6 canceled (never sent)", kinds)
	}
	select {
	case err := <-behind:
		t.Fatalf("the call behind returned %v while the window was full", err)
	default:
	}
	px.release()
	if err := <-behind; err != nil {
		t.Fatalf("the call queued behind the canceled one: %v", err)
	}
	if err := pub.Publish(ctxT(t, 10*time.Second), topic, prepared(&broker.Message{ID: "after"})...); err != nil {
		t.Fatalf("Publish after the window emptied: %v", err)
	}
}

// countingConn counts the writes that reach the network.
type countingConn struct {
	net.Conn
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes++
	return c.Conn.Write(p)
}

// TestCorkConnCoalescesWritesInOrder: writes while corked reach the network
// as one write, in order, when the last cork is undone or the buffer is
// full; uncorked writes go straight through; a failed write fails the
// later ones.
func TestCorkConnCoalescesWritesInOrder(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	defer peer.Close()
	under := &countingConn{Conn: raw}
	cc := &corkConn{Conn: under}

	var want bytes.Buffer
	write := func(s string) {
		t.Helper()
		if n, err := cc.Write([]byte(s)); err != nil || n != len(s) {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
		want.WriteString(s)
	}
	cc.cork()
	cc.cork()
	write("one ")
	write("two ")
	cc.uncork()
	write("three ")
	if under.writes != 0 {
		t.Fatalf("%d writes reached the network while corked", under.writes)
	}
	cc.uncork()
	if under.writes != 1 {
		t.Fatalf("uncork made %d writes, want 1", under.writes)
	}
	write("four ")
	if under.writes != 2 {
		t.Fatalf("an uncorked write made %d writes in all, want 2", under.writes)
	}
	cc.cork()
	big := strings.Repeat("x", corkMax-10)
	write(big)
	write("0123456789A") // over corkMax: written at once, with what was held
	if under.writes != 3 {
		t.Fatalf("a full cork buffer made %d writes in all, want 3", under.writes)
	}
	write("tail")
	cc.uncork()
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("the peer read %d bytes that differ from the %d written", len(got), want.Len())
	}

	raw.Close()
	cc.cork()
	write("held")
	cc.uncork() // fails: the connection is closed
	if _, err := cc.Write([]byte("later")); err == nil {
		t.Fatal("a write after a failed flush succeeded")
	}
}
