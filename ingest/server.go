package ingest

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// NewServer returns an http.Server for h with the timeouts and header limit
// of cfg (defaults filled in): what `queuekit serve` runs. Serve it with
// Serve, which also bounds the connections.
func NewServer(h http.Handler, cfg ServerConfig) *http.Server {
	c := Config{Server: cfg}.withDefaults().Server
	return &http.Server{
		Addr:              c.Listen,
		Handler:           h,
		ReadHeaderTimeout: time.Duration(c.ReadHeaderTimeout),
		ReadTimeout:       time.Duration(c.ReadTimeout),
		WriteTimeout:      time.Duration(c.WriteTimeout),
		IdleTimeout:       time.Duration(c.IdleTimeout),
		MaxHeaderBytes:    c.MaxHeaderBytes,
	}
}

// Serve serves srv on ln, at most cfg.MaxConnections connections at once,
// over TLS when cfg names a certificate and key, until ctx ends; then it
// shuts down gracefully: h (when not nil) stops taking messages and
// finishes the publishes in flight while srv closes its listener and waits
// for the open requests, both within cfg.ShutdownTimeout. It returns nil
// after a clean shutdown.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, h *Handler, cfg ServerConfig) error {
	c := Config{Server: cfg}.withDefaults().Server
	ln = LimitListener(ln, c.MaxConnections)
	errc := make(chan error, 1)
	go func() {
		var err error
		if c.TLSCert != "" {
			err = srv.ServeTLS(ln, c.TLSCert, c.TLSKey)
		} else {
			err = srv.Serve(ln)
		}
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(c.ShutdownTimeout))
	defer cancel()
	var herr error
	var wg sync.WaitGroup
	if h != nil {
		wg.Add(1)
		go func() { defer wg.Done(); herr = h.Shutdown(sctx) }()
	}
	serr := srv.Shutdown(sctx)
	wg.Wait()
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return errors.Join(serr, herr)
}

// LimitListener returns a listener that has at most n connections open at
// once; Accept waits while n are open, leaving further clients in the
// kernel's accept queue.
func LimitListener(ln net.Listener, n int) net.Listener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, n), done: make(chan struct{})}
}

type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
