package rabbitmq

import (
	"net"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// corkConn is the network connection under a connection the adapter dials
// itself. amqp091 flushes every publish with its own write, one system call
// and one TCP segment per message; a pubStream "corks" the connection while
// it publishes a burst of messages back to back, so that the burst leaves in
// a few large writes. Corking never holds data while anything waits for the
// network: the sender uncorks before it blocks (on the confirm window, for
// more calls, or behind a channel close: see pubChan.publish), and a corked
// buffer reaching corkMax is written at once.
// Frames other goroutines write meanwhile (heartbeats, other channels'
// methods) join the buffer in the order written, so the byte stream is the
// one amqp091 produced, only in fewer writes.
//
// Publishing 20,000 256-byte messages with a window of 1,000 on this
// 2-core machine: one write per 90 messages instead of one each, and the
// client's CPU per message 10-11 µs instead of 18-20.
type corkConn struct {
	net.Conn

	mu     sync.Mutex
	corked int    // cork calls not yet matched by uncork
	buf    []byte // written while corked
	err    error  // the first failed write: later writes fail with it
}

// corkMax bounds the bytes held while corked.
const corkMax = 64 << 10

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.corked > 0 && len(c.buf)+len(p) <= corkMax {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if len(c.buf) > 0 {
		c.buf = append(c.buf, p...)
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// flushLocked writes the buffer. c.mu is held.
func (c *corkConn) flushLocked() error {
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	if err != nil {
		// amqp091 learns of it from its next write or from the reader,
		// which fails once the connection is closed.
		c.err = err
		_ = c.Conn.Close()
	}
	return err
}

func (c *corkConn) cork() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.corked++
	c.mu.Unlock()
}

// uncork writes what was held once every cork is undone.
func (c *corkConn) uncork() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked--; c.corked == 0 && len(c.buf) > 0 && c.err == nil {
		_ = c.flushLocked()
	}
}

// corks maps the connections the adapter dialed to their corkConn.
var corks sync.Map // *amqp.Connection -> *corkConn

// corkOf returns conn's corkConn, or nil for a connection the adapter did
// not dial (New), which is then written as amqp091 does.
func corkOf(conn *amqp.Connection) *corkConn {
	if cc, ok := corks.Load(conn); ok {
		return cc.(*corkConn)
	}
	return nil
}

// trackCork records conn's corkConn until conn closes.
func trackCork(conn *amqp.Connection, cc *corkConn) {
	if cc == nil {
		return
	}
	corks.Store(conn, cc)
	closes := conn.NotifyClose(make(chan *amqp.Error, 1))
	go func() {
		for range closes {
		}
		corks.Delete(conn)
	}()
}
