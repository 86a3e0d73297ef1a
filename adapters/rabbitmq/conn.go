package rabbitmq

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// connector keeps one AMQP connection alive: it dials on first use, watches
// the connection, and when the connection drops it dials again with
// exponential backoff until it succeeds or the connector is closed. Callers
// wait in get for a usable connection, as long as their ctx allows.
type connector struct {
	name    string // "publish" or "consume", for logs
	dial    func(ctx context.Context) (*amqp.Connection, error)
	log     *slog.Logger
	maxWait time.Duration // cap of the reconnect backoff

	mu       sync.Mutex
	conn     *amqp.Connection
	frameMax int           // negotiated frame_max of the last connection (0: unlimited)
	gen      uint64        // bumped on every new connection
	ready    chan struct{} // closed while conn is usable
	dialing  bool
	lastErr  error
	closed   bool
	done     chan struct{} // closed by close
}

func newConnector(name string, dial func(context.Context) (*amqp.Connection, error), log *slog.Logger, maxWait time.Duration) *connector {
	return &connector{name: name, dial: dial, log: log, maxWait: maxWait, ready: make(chan struct{}), done: make(chan struct{})}
}

// adopt installs a connection made by someone else.
func (c *connector) adopt(conn *amqp.Connection) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.install(conn)
}

// connect dials once, synchronously, and installs the connection: Open
// uses it so that a broker that is down at start is a clear error.
func (c *connector) connect(ctx context.Context) error {
	conn, err := c.dial(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = conn.Close()
		return driver.ErrClosed
	}
	c.install(conn)
	return nil
}

// install makes conn current and watches it. c.mu is held.
func (c *connector) install(conn *amqp.Connection) {
	c.conn = conn
	c.frameMax = conn.Config.FrameSize
	c.gen++
	c.lastErr = nil
	select {
	case <-c.ready:
	default:
		close(c.ready)
	}
	closes := conn.NotifyClose(make(chan *amqp.Error, 1))
	go c.watch(conn, closes)
}

func (c *connector) watch(conn *amqp.Connection, closes <-chan *amqp.Error) {
	var cause *amqp.Error
	select {
	case cause = <-closes:
	case <-c.done:
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var err error = fmt.Errorf("connection closed")
	if cause != nil {
		err = cause
	}
	c.lostLocked(conn, err)
}

// lostLocked forgets conn, once, and starts reconnecting. c.mu is held.
func (c *connector) lostLocked(conn *amqp.Connection, cause error) {
	if c.closed || c.conn != conn {
		return
	}
	c.conn = nil
	c.ready = make(chan struct{})
	c.lastErr = cause
	if c.dial == nil {
		c.log.Warn("queuekit/rabbitmq: connection lost and Options.Redial is nil: not reconnecting", "role", c.name, "error", c.lastErr)
		return
	}
	c.log.Warn("queuekit/rabbitmq: connection lost, reconnecting", "role", c.name, "error", c.lastErr)
	c.startDialing()
}

// startDialing runs the reconnect loop unless it runs already. c.mu is held.
func (c *connector) startDialing() {
	if c.dialing || c.dial == nil {
		return
	}
	c.dialing = true
	go c.redial()
}

func (c *connector) redial() {
	wait := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-c.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		conn, err := c.dial(ctx)
		cancel()
		c.mu.Lock()
		if c.closed {
			c.dialing = false
			c.mu.Unlock()
			if conn != nil {
				_ = conn.Close()
			}
			return
		}
		if err == nil {
			c.dialing = false
			c.install(conn)
			c.mu.Unlock()
			if attempt > 1 {
				c.log.Info("queuekit/rabbitmq: reconnected", "role", c.name, "attempts", attempt)
			}
			return
		}
		c.lastErr = err
		c.mu.Unlock()
		// Full jitter keeps many clients from reconnecting in step.
		sleep := wait/2 + rand.N(wait/2+1)
		select {
		case <-c.done:
		case <-time.After(sleep):
		}
		wait = min(wait*2, c.maxWait)
	}
}

// get returns a usable connection and its generation, waiting for a
// reconnection as long as ctx allows.
func (c *connector) get(ctx context.Context) (*amqp.Connection, uint64, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, 0, driver.ErrClosed
		}
		if c.conn != nil {
			if !c.conn.IsClosed() {
				conn, gen := c.conn, c.gen
				c.mu.Unlock()
				return conn, gen, nil
			}
			// Closed, and watch has not noticed yet.
			c.lostLocked(c.conn, fmt.Errorf("connection closed"))
			c.mu.Unlock()
			continue
		}
		if c.conn == nil && c.dial == nil {
			err := c.lastErr
			c.mu.Unlock()
			return nil, 0, driver.Errorf(semantics.Closed, "rabbitmq", "connection lost (%v) and Options.Redial is nil", err)
		}
		c.startDialing()
		ready := c.ready
		c.mu.Unlock()
		select {
		case <-ready:
		case <-c.done:
		case <-ctx.Done():
			c.mu.Lock()
			last := c.lastErr
			c.mu.Unlock()
			if last != nil {
				return nil, 0, &driver.Error{Kind: semantics.Transient, Op: "rabbitmq", Err: fmt.Errorf("%w (last error: %v): %w", errNotConnected, last, ctx.Err())}
			}
			return nil, 0, &driver.Error{Kind: semantics.Transient, Op: "rabbitmq", Err: fmt.Errorf("%w: %w", errNotConnected, ctx.Err())}
		}
	}
}

// current returns the connection in use, or nil.
func (c *connector) current() *amqp.Connection {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil || c.conn.IsClosed() {
		return nil
	}
	return c.conn
}

// maxFrame returns the frame_max negotiated by the last connection, which
// the next one is expected to share (0: no limit).
func (c *connector) maxFrame() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frameMax
}

// channel opens a channel on the current connection.
func (c *connector) channel(ctx context.Context) (*amqp.Channel, uint64, error) {
	conn, gen, err := c.get(ctx)
	if err != nil {
		return nil, 0, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, 0, wrap("rabbitmq: open channel", err)
	}
	return ch, gen, nil
}

// close stops reconnecting and closes the connection when closeConn.
func (c *connector) close(closeConn bool) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	conn := c.conn
	c.conn = nil
	c.mu.Unlock()
	if conn != nil && closeConn && !conn.IsClosed() {
		return conn.Close()
	}
	return nil
}
