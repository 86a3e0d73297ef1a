package redisstreams

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// On a *redis.Client the reader has a connection of its own (readerConn),
// on which it speaks RESP itself: it writes its XACKs and XREADGROUP into
// one buffer, sends them in one write, and reads the replies into a buffer
// it reuses, where xreadReply walks them (reply.go) — no allocation per
// entry or field. go-redis's own reads of the same reply, even raw
// (RawWriteToCmd), parse every reply twice and allocate a reader per bulk
// string: that was most of the subscriber's CPU beyond a hand-written
// go-redis loop. Everything else (publishing, scripts, claims, acks the
// acker sends, admin) stays on the go-redis client.
//
// The connection is made as go-redis makes its own: the client's Dialer
// (TLS when the client has a TLSConfig: the default dialer of go-redis
// negotiates it), its credentials (AUTH), database (SELECT) and client
// name; it speaks RESP2, which every server does. A connection that fails
// is closed and made again by the next read. The client's hooks do not see
// its commands.

// readerConn is the reader's own connection to Redis.
type readerConn struct {
	nc  net.Conn
	id  int64  // CLIENT ID, 0 when not known
	w   []byte // commands not sent yet
	buf []byte // what was read; the replies not consumed yet start at pos
	pos int
}

// minReadBuf is the size the read buffer starts at; maxKeptReadBuf is the
// largest kept from one round trip to the next.
const (
	minReadBuf     = 32 << 10
	maxKeptReadBuf = 4 << 20
)

// ownConn reports whether the reader of a subscriber on c may use a
// connection of its own: c is a *redis.Client (or a failover client) that
// sets up its connections with nothing the reader cannot do the same way.
func ownConn(c redis.UniversalClient) (*redis.Options, bool) {
	rc, ok := c.(*redis.Client)
	if !ok {
		return nil, false
	}
	o := rc.Options()
	if o.Dialer == nil || o.OnConnect != nil || o.StreamingCredentialsProvider != nil {
		return nil, false
	}
	return o, true
}

// dialReader connects to the server of o and prepares the connection as
// go-redis would (AUTH, SELECT, CLIENT SETNAME), then asks its CLIENT ID
// (so that Close can unblock a read).
func dialReader(ctx context.Context, o *redis.Options) (*readerConn, error) {
	if o.DialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.DialTimeout)
		defer cancel()
	}
	user, password := o.Username, o.Password
	switch {
	case o.CredentialsProviderContext != nil:
		var err error
		if user, password, err = o.CredentialsProviderContext(ctx); err != nil {
			return nil, fmt.Errorf("failed to resolve credentials: %w", err)
		}
	case o.CredentialsProvider != nil:
		user, password = o.CredentialsProvider()
	}
	nc, err := o.Dialer(ctx, o.Network, o.Addr)
	if err != nil {
		return nil, err
	}
	c := &readerConn{nc: nc}
	if d, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(d)
	}
	var steps []string // what each reply answers, for errors
	if password != "" {
		if user != "" {
			c.command(3).bulk("auth").bulk(user).bulk(password)
		} else {
			c.command(2).bulk("auth").bulk(password)
		}
		steps = append(steps, "authenticate")
	}
	if o.DB > 0 {
		c.command(2).bulk("select").num(int64(o.DB))
		steps = append(steps, "select database "+strconv.Itoa(o.DB))
	}
	if o.ClientName != "" {
		c.command(3).bulk("client").bulk("setname").bulk(o.ClientName)
		steps = append(steps, "set the client name")
	}
	c.command(2).bulk("client").bulk("id")
	if err := c.send(); err != nil {
		_ = nc.Close()
		return nil, err
	}
	for _, step := range steps {
		if _, err := c.simple(); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("failed to %s: %w", step, err)
		}
	}
	line, err := c.simple()
	var re replyError
	switch {
	case errors.As(err, &re): // CLIENT ID not allowed: Close waits for the block
	case err != nil:
		_ = nc.Close()
		return nil, err
	default:
		c.id, _ = strconv.ParseInt(view(line), 10, 64)
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

// Close closes the connection.
func (c *readerConn) Close() error { return c.nc.Close() }

// command starts a command of n arguments (its name the first).
func (c *readerConn) command(n int) *readerConn {
	c.w = append(c.w, '*')
	c.w = strconv.AppendInt(c.w, int64(n), 10)
	c.w = append(c.w, '\r', '\n')
	return c
}

// bulk adds an argument.
func (c *readerConn) bulk(s string) *readerConn {
	c.w = append(c.w, '$')
	c.w = strconv.AppendInt(c.w, int64(len(s)), 10)
	c.w = append(c.w, '\r', '\n')
	c.w = append(c.w, s...)
	c.w = append(c.w, '\r', '\n')
	return c
}

// num adds an argument in decimal.
func (c *readerConn) num(n int64) *readerConn {
	var b [20]byte
	return c.bulk(view(strconv.AppendInt(b[:0], n, 10)))
}

// send writes the commands added, and readies the buffer for their
// replies.
func (c *readerConn) send() error {
	_, err := c.nc.Write(c.w)
	c.w = c.w[:0]
	if c.pos == len(c.buf) { // nothing left over (RESP2 sends nothing unasked)
		if cap(c.buf) > maxKeptReadBuf {
			c.buf = nil
		}
		c.buf, c.pos = c.buf[:0], 0
	}
	return err
}

// fill reads more of the replies into the buffer (which may move).
func (c *readerConn) fill() error {
	if len(c.buf) == cap(c.buf) {
		nb := make([]byte, len(c.buf), max(2*cap(c.buf), minReadBuf))
		copy(nb, c.buf)
		c.buf = nb
	}
	n, err := c.nc.Read(c.buf[len(c.buf):cap(c.buf)])
	c.buf = c.buf[:len(c.buf)+n]
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// simple reads a status or integer reply: its text (a view of the buffer,
// valid until the next send); an error reply is returned as a replyError.
func (c *readerConn) simple() ([]byte, error) {
	r := xreadReply{b: c.buf, i: c.pos, src: c}
	typ, _, text, err := r.header()
	c.pos = r.i
	switch {
	case err != nil:
		return nil, err
	case typ == '-':
		return nil, replyError(text)
	case typ == '+', typ == ':':
		return text, nil
	}
	return nil, fmt.Errorf("%w: type %q", errReply, typ)
}

// xreadgroup reads the reply of an XREADGROUP whole into the buffer,
// calling fn for each entry as xreadReply.each does (with views of the
// buffer valid until the next send: when the buffer grows, the views of
// the old one stay valid), and returns its number of entries: -1 for a
// null reply. An error reply is a replyError.
func (c *readerConn) xreadgroup(fields []string, fn func(stream, id string, fields []string)) (int, error) {
	r := xreadReply{b: c.buf, i: c.pos, src: c}
	n, err := r.each(fields, fn)
	var re replyError
	if err != nil && !errors.As(err, &re) {
		return 0, err
	}
	c.pos = r.i
	return n, err
}

// deadline bounds the next round trip.
func (c *readerConn) deadline(d time.Duration) error {
	return c.nc.SetDeadline(time.Now().Add(d))
}
