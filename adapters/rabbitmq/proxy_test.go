package rabbitmq

import (
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
)

// proxy is a TCP proxy in front of the broker that a test can cut (close
// every connection through it, as a network failure would) or hold (stop
// passing the broker's bytes to the client, so that confirms never arrive).
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns []net.Conn
	held  chan struct{} // non-nil while holding: closed on release
	cuts  int

	up atomic.Int64 // bytes passed client -> broker
}

func startProxy(t testing.TB, amqpURL string) (*proxy, string) {
	t.Helper()
	u, err := url.Parse(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5672")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.cut() })
	u.Host = ln.Addr().String()
	return p, u.String()
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		go func() {
			n, _ := io.Copy(countWriter{s, &p.up}, c)
			_ = n
			s.Close()
			c.Close()
		}()
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := s.Read(buf)
				if n > 0 {
					p.mu.Lock()
					held := p.held
					p.mu.Unlock()
					if held != nil {
						<-held
					}
					if _, werr := c.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			s.Close()
			c.Close()
		}()
	}
}

type countWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (w countWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.n.Add(int64(n))
	return n, err
}

// cut closes every connection through the proxy and releases a hold.
func (p *proxy) cut() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.cuts++
	held := p.held
	p.held = nil
	p.mu.Unlock()
	// Close first, then release the hold: released first, a held chunk
	// (confirms) could still reach the client through a connection that
	// is about to be cut.
	for _, c := range conns {
		c.Close()
	}
	if held != nil {
		close(held)
	}
}

// hold stops passing the broker's bytes to clients until cut.
func (p *proxy) hold() {
	p.mu.Lock()
	if p.held == nil {
		p.held = make(chan struct{})
	}
	p.mu.Unlock()
}

// release ends a hold: the broker's bytes held back flow to the clients.
func (p *proxy) release() {
	p.mu.Lock()
	held := p.held
	p.held = nil
	p.mu.Unlock()
	if held != nil {
		close(held)
	}
}
