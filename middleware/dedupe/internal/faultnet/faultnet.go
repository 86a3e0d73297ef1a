// Package faultnet makes a store's server unreachable or unresponsive for the
// store tests: a listener that accepts connections and never answers, and a
// TCP proxy in front of a real server that can be cut or hung. It is
// imported by tests only.
package faultnet

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Silent listens on a loopback port, accepts every connection and never
// writes a byte: a server that hangs. It returns the host:port and closes
// everything at the end of the test.
func Silent(t testing.TB) string {
	t.Helper()
	p := listen(t, "")
	p.hung.Store(true)
	return p.ln.Addr().String()
}

// Refused returns a loopback host:port on which nothing listens.
func Refused(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// Proxy forwards a loopback port to a server until it is cut or hung.
type Proxy struct {
	ln     net.Listener
	target string
	hung   atomic.Bool

	mu    sync.Mutex
	conns []net.Conn
	cut   bool
}

// NewProxy starts a proxy to target (host:port) and returns it with the
// host:port clients should dial. It stops at the end of the test.
func NewProxy(t testing.TB, target string) (*Proxy, string) {
	t.Helper()
	p := listen(t, target)
	return p, p.ln.Addr().String()
}

func listen(t testing.TB, target string) *Proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(p.Cut)
	return p
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.keep(c) {
			return
		}
		if p.hung.Load() {
			go func() { _, _ = io.Copy(io.Discard, c) }() // read what the client sends, answer nothing
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.keep(s) {
			return
		}
		go p.pipe(s, c)
		go p.pipe(c, s)
	}
}

// keep records c to close on Cut, or closes it when the proxy was cut.
func (p *Proxy) keep(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		_ = c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

// pipe copies src to dst, dropping the bytes while the proxy is hung.
func (p *Proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.hung.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
}

// Hang makes the server unresponsive, as a stalled server or a network that
// drops packets would: connections stay open and new ones are accepted, but
// nothing is passed either way any more.
func (p *Proxy) Hang() { p.hung.Store(true) }

// Cut takes the server away, as an outage would: it closes the listener, so
// new connections are refused, and every connection through the proxy.
func (p *Proxy) Cut() {
	_ = p.ln.Close()
	p.mu.Lock()
	conns := p.conns
	p.conns, p.cut = nil, true
	p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}
