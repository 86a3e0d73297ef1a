package ingest

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
)

// TestServeShutsDownGracefully: when Serve's ctx ends with a publish in
// flight, the publish completes and is answered 200 before Serve returns
// nil; the listener is closed.
func TestServeShutsDownGracefully(t *testing.T) {
	b := broker.New(memory.New(memory.Options{Buffer: 1}))
	defer b.Close(context.Background())
	e := newEnv(t, testConfig(), b, nil) // for its broker, publisher setup and helpers
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ServerConfig{ShutdownTimeout: Duration(20 * time.Second)}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, NewServer(e.h, cfg), ln, e.h, cfg) }()
	e.url = "http://" + ln.Addr().String()

	if r := e.post("/v1/topics/orders/messages", testToken, []byte("fill")); r.status != 200 {
		t.Fatalf("fill: %d %s", r.status, r.raw)
	}
	inflight := e.goPost("in flight")
	eventually(t, "a publish in flight", func() bool { return len(e.h.sem) == 1 })
	cancel()
	eventually(t, "draining", e.h.isDraining)
	select {
	case err := <-served:
		t.Fatalf("Serve returned (%v) with a publish in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	e.receive("orders", 2)
	if r := <-inflight; r.status != 200 {
		t.Errorf("in-flight request: %d %s", r.status, r.raw)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("the listener is still open")
	}
}

// TestLimitListener: with MaxConnections open, the next connection waits
// until one closes.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := LimitListener(inner, 1)
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	c1, _ := net.Dial("tcp", inner.Addr().String())
	defer c1.Close()
	c2, _ := net.Dial("tcp", inner.Addr().String())
	defer c2.Close()
	first := <-accepted
	select {
	case <-accepted:
		t.Fatal("a second connection was accepted while one was open")
	case <-time.After(100 * time.Millisecond):
	}
	first.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the second connection was not accepted after the first closed")
	}
}

// TestNewServerDefaults: the server gets the timeouts that bound slow
// clients.
func TestNewServerDefaults(t *testing.T) {
	srv := NewServer(http.NotFoundHandler(), ServerConfig{ReadTimeout: Duration(time.Second)})
	if srv.ReadHeaderTimeout != DefaultReadHeaderTimeout || srv.ReadTimeout != time.Second ||
		srv.WriteTimeout != DefaultWriteTimeout || srv.IdleTimeout != DefaultIdleTimeout ||
		srv.MaxHeaderBytes != DefaultMaxHeaderBytes || srv.Addr != DefaultListen {
		t.Errorf("server %+v", srv)
	}
	// A client that never finishes its headers is cut off.
	srv = NewServer(http.NotFoundHandler(), ServerConfig{ReadHeaderTimeout: Duration(100 * time.Millisecond)})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, "POST /v1/topics/orders/messages HTTP/1.1\r\nHost: x\r\n")
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(c)
	if strings.Contains(string(got), "200") {
		t.Errorf("slow headers answered %q", got)
	}
}
