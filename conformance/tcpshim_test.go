package conformance

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"sync"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// The fault properties need an adapter with a TCP connection to cut. The
// shim below gives the memory broker one: a publisher sends each Publish as
// a JSON line to a server in this process, which publishes into the memory
// broker and answers "ok". An honest publisher waits for the answer; the
// broken one (fireAndForget) reports success when the connection broke
// under it, and so loses the message a cut swallows. A subscriber takes
// its deliveries from the memory broker but carries each one, and each
// settle, over its own shim connection (the server echoes them): a
// delivery whose trip fails is nacked and Receive fails, a settle whose
// trip fails fails, as when a real consumer's connection is cut.

type shimFrame struct {
	Topic string            `json:"topic"`
	Msgs  []*broker.Message `json:"msgs"`
	Echo  bool              `json:"echo,omitempty"` // answer with the frame itself
}

// shimServer publishes the frames it reads into a memory broker.
type shimServer struct {
	ln  net.Listener
	mem *memory.Broker
}

func startShim(mem *memory.Broker) (*shimServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &shimServer{ln: ln, mem: mem}
	go s.serve()
	return s, nil
}

func (s *shimServer) addr() string { return s.ln.Addr().String() }
func (s *shimServer) close()       { _ = s.ln.Close() }

func (s *shimServer) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			pub, err := s.mem.NewPublisher(context.Background())
			if err != nil {
				return
			}
			defer pub.Close(context.Background())
			sc := bufio.NewScanner(c)
			sc.Buffer(make([]byte, 1<<20), 16<<20)
			for sc.Scan() {
				var f shimFrame
				reply := "ok\n"
				if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
					reply = "err bad frame\n"
				} else if f.Echo {
					reply = sc.Text() + "\n"
				} else if err := pub.Publish(context.Background(), f.Topic, f.Msgs...); err != nil {
					reply = "err publish\n"
				}
				if _, err := c.Write([]byte(reply)); err != nil {
					return
				}
			}
		}()
	}
}

// shimConn is a connection to the shim server at addr, dialled again after
// it broke.
type shimConn struct {
	addr string

	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
}

// roundTrip sends f and returns the server's answer.
func (c *shimConn) roundTrip(ctx context.Context, f shimFrame) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		conn, err := net.DialTimeout("tcp", c.addr, 2*time.Second)
		if err != nil {
			return "", err
		}
		c.conn, c.rd = conn, bufio.NewReaderSize(conn, 64<<10)
	}
	line, _ := json.Marshal(f)
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetDeadline(dl)
	} else {
		_ = c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	}
	_, err := c.conn.Write(append(line, '\n'))
	var reply string
	if err == nil {
		reply, err = c.rd.ReadString('\n')
	}
	if err != nil {
		_ = c.conn.Close()
		c.conn = nil
	}
	return reply, err
}

func (c *shimConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		_ = c.conn.Close()
		c.conn = nil
	}
}

// shimPublisher publishes through the shim server.
type shimPublisher struct {
	c             shimConn
	fireAndForget bool
}

func (p *shimPublisher) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	reply, err := p.c.roundTrip(ctx, shimFrame{Topic: topic, Msgs: msgs})
	if err != nil {
		if p.fireAndForget {
			return nil // the bug: a broken connection "sends" what it was given
		}
		return driver.WrapError(semantics.Transient, "shim: publish", err)
	}
	if reply != "ok\n" {
		return driver.Errorf(semantics.Transient, "shim: publish", "server: %s", reply)
	}
	return nil
}

func (p *shimPublisher) Close(context.Context) error {
	p.c.close()
	return nil
}

// shimSubscriber carries the deliveries of a memory subscriber, and their
// settles, over a shim connection.
type shimSubscriber struct {
	driver.Subscriber
	c shimConn
}

func (s *shimSubscriber) Receive(ctx context.Context) (driver.Delivery, error) {
	d, err := s.Subscriber.Receive(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.c.roundTrip(ctx, shimFrame{Msgs: []*broker.Message{d.Message()}, Echo: true}); err != nil {
		_ = d.Nack(context.WithoutCancel(ctx), 0) // lost in transit: it comes back
		return nil, driver.WrapError(semantics.Transient, "shim: receive", err)
	}
	return &shimDelivery{Delivery: d, s: s}, nil
}

func (s *shimSubscriber) Close(ctx context.Context) error {
	err := s.Subscriber.Close(ctx)
	s.c.close()
	return err
}

type shimDelivery struct {
	driver.Delivery
	s *shimSubscriber
}

func (d *shimDelivery) Ack(ctx context.Context) error {
	if _, err := d.s.c.roundTrip(ctx, shimFrame{Echo: true}); err != nil {
		return driver.WrapError(semantics.Transient, "shim: ack", err)
	}
	return d.Delivery.Ack(ctx)
}

func (d *shimDelivery) Nack(ctx context.Context, delay time.Duration) error {
	if _, err := d.s.c.roundTrip(ctx, shimFrame{Echo: true}); err != nil {
		return driver.WrapError(semantics.Transient, "shim: nack", err)
	}
	return d.Delivery.Nack(ctx, delay)
}

// shimBroker is a memory broker whose publishers and subscribers go through
// the shim.
type shimBroker struct {
	*brokenBroker
	addr          string
	fireAndForget bool
}

func (b *shimBroker) NewSubscriber(ctx context.Context, o driver.SubscriberOptions) (driver.Subscriber, error) {
	s, err := b.brokenBroker.NewSubscriber(ctx, o)
	if err != nil {
		return nil, err
	}
	return &shimSubscriber{Subscriber: s, c: shimConn{addr: b.addr}}, nil
}

func (b *shimBroker) NewPublisher(ctx context.Context) (driver.Publisher, error) {
	var p driver.Publisher = &shimPublisher{c: shimConn{addr: b.addr}, fireAndForget: b.fireAndForget}
	if b.wrapPub != nil {
		p = b.wrapPub(p)
	}
	return p, nil
}
