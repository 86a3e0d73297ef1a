package redisstreams

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// trickle is a real connection whose reads return at most 7 bytes, so that
// the replies arrive cut at every place a reader can meet.
type trickle struct{ net.Conn }

func (c trickle) Read(p []byte) (int, error) { return c.Conn.Read(p[:min(len(p), 7)]) }

// readerConn against the server's replies, read a few bytes at a time and
// through a buffer that has to grow (an entry larger than minReadBuf): the
// XACKs and the XREADGROUP of one write, an error reply after which the
// connection goes on, and the null reply of a block that ran out.
func TestReaderConnReplies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	addr := testenv.Redis(t)
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	st := "qkt-conn-" + driver.NewID()
	defer c.Del(context.Background(), st)
	if err := c.XGroupCreateMkStream(ctx, st, "g", "0").Err(); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x\r\n", minReadBuf) // larger than the first buffer, with CRLFs inside
	id1 := c.XAdd(ctx, &redis.XAddArgs{Stream: st, Values: []any{"_id", "a", "h:x", "1", "_body", big}}).Val()
	id2 := c.XAdd(ctx, &redis.XAddArgs{Stream: st, Values: []any{"_body", ""}}).Val()

	tc := redis.NewClient(&redis.Options{Addr: addr,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return trickle{nc}, nil
		}})
	defer tc.Close()
	o, ok := ownConn(tc)
	if !ok {
		t.Fatal("ownConn = false for a *redis.Client with a Dialer")
	}
	rc, err := dialReader(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if rc.id == 0 {
		t.Error("no CLIENT ID")
	}

	type entry struct {
		stream, id string
		fields     []string
	}
	var got []entry
	collect := func(stream, id string, fields []string) {
		got = append(got, entry{stream, id, append([]string(nil), fields...)})
	}
	read := func(group string, args ...string) (int, error) {
		got = nil
		rc.command(4 + len(args)).bulk("xreadgroup").bulk("group").bulk(group).bulk("c")
		for _, a := range args {
			rc.bulk(a)
		}
		if err := rc.send(); err != nil {
			t.Fatal(err)
		}
		return rc.xreadgroup(nil, collect)
	}

	n, err := read("g", "count", "10", "streams", st, ">")
	if err != nil || n != 2 || len(got) != 2 ||
		got[0].stream != st || got[0].id != id1 || strings.Join(got[0].fields, "|") != "_id|a|h:x|1|_body|"+big ||
		got[1].stream != st || got[1].id != id2 || strings.Join(got[1].fields, "|") != "_body|" {
		t.Fatalf("entries = %d, %v (%d entries)", n, err, len(got))
	}
	// The views stay valid until the next send, the buffer grown or not.
	if cap(rc.buf) <= minReadBuf {
		t.Errorf("buffer of %d bytes after a reply of %d", cap(rc.buf), len(big))
	}

	// An XACK, a command Redis refuses and a read in one write.
	rc.command(4).bulk("xack").bulk(st).bulk("g").bulk(id1)
	rc.command(2).bulk("xack").bulk(st)
	rc.command(7).bulk("xreadgroup").bulk("group").bulk("g").bulk("c").bulk("streams").bulk(st).bulk("0")
	if err := rc.send(); err != nil {
		t.Fatal(err)
	}
	if line, err := rc.simple(); err != nil || string(line) != "1" {
		t.Errorf("XACK = %q, %v; want 1", line, err)
	}
	var re replyError
	if _, err := rc.simple(); !errors.As(err, &re) || !strings.HasPrefix(err.Error(), "ERR wrong number of arguments") {
		t.Errorf("XACK without a group: %v; want an error reply", err)
	}
	got = nil
	if n, err := rc.xreadgroup(nil, collect); err != nil || n != 1 || got[0].id != id2 {
		t.Errorf("pending after the ack = %d, %v, %q; want %s alone", n, err, got, id2)
	}

	if _, err := read("nope", "streams", st, ">"); !errors.As(err, &re) || !isNoGroup(err) || kindOf(err) != semantics.NotFound {
		t.Errorf("unknown group: %v; want a NOGROUP error reply", err)
	}
	if n, err := read("g", "block", "1", "streams", st, ">"); n != -1 || err != nil {
		t.Errorf("block ran out: %d, %v; want -1 (null)", n, err)
	}
	if rc.pos != len(rc.buf) {
		t.Errorf("%d bytes left over after the replies", len(rc.buf)-rc.pos)
	}
}

// The reader's connection authenticates and selects the database as the
// client does; a wrong password fails the dial with a Permanent error
// that says what failed, without the password.
func TestReaderConnAuthAndDB(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := testenv.RedisServer(t)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer admin.Close()
	if err := admin.Do(ctx, "acl", "setuser", "qk", "on", ">user-secret", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigSet(ctx, "requirepass", "default-secret").Err(); err != nil {
		t.Fatal(err)
	}
	for _, o := range []*redis.Options{
		{Addr: srv.Addr, Username: "qk", Password: "user-secret", DB: 3, ClientName: "qk-reader"},
		{Addr: srv.Addr, Password: "default-secret", DB: 3},
		{Addr: srv.Addr, CredentialsProvider: func() (string, string) { return "qk", "user-secret" }, DB: 3},
	} {
		c := redis.NewClient(o)
		defer c.Close()
		st, id := streamWithOneMessage(t, c, "qkt-auth-")
		ro, ok := ownConn(c)
		if !ok {
			t.Fatal("ownConn = false for a *redis.Client")
		}
		rc, err := dialReader(ctx, ro)
		if err != nil {
			t.Fatalf("user %q: %v", o.Username, err)
		}
		// The stream is in database 3 only: NOGROUP had SELECT not run.
		n, ids, err := readGroupG(t, rc, st)
		if err != nil || n != 1 || ids[0] != id {
			t.Errorf("user %q: read %d, %v, %q; want %s", o.Username, n, err, ids, id)
		}
		if o.ClientName != "" {
			name, err := admin.Do(ctx, "client", "list", "id", rc.id).Text()
			if err != nil || !strings.Contains(name, "name="+o.ClientName+" ") {
				t.Errorf("CLIENT LIST of the reader = %q, %v; want name=%s", name, err, o.ClientName)
			}
		}
		_ = rc.Close()
	}

	wrong := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "qk", Password: "wrong-secret"})
	defer wrong.Close()
	_, err := dialReader(ctx, wrong.Options())
	if err == nil || !strings.Contains(err.Error(), "authenticate") || !strings.Contains(err.Error(), "WRONGPASS") ||
		strings.Contains(err.Error(), "wrong-secret") || kindOf(err) != semantics.Permanent {
		t.Errorf("wrong password: %v (%v); want a Permanent WRONGPASS error naming the step, without the password", err, kindOf(err))
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr}})
	defer cc.Close()
	if _, ok := ownConn(cc); ok {
		t.Error("ownConn = true for a cluster client")
	}
	hooked := redis.NewClient(&redis.Options{Addr: srv.Addr, OnConnect: func(context.Context, *redis.Conn) error { return nil }})
	defer hooked.Close()
	if _, ok := ownConn(hooked); ok {
		t.Error("ownConn = true for a client with an OnConnect hook (which the reader could not run)")
	}
}

// A dial that fails reports the dialer's error, as go-redis's would.
func TestReaderConnDialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	_, err = dialReader(context.Background(), c.Options())
	if err == nil || !strings.Contains(err.Error(), addr) || kindOf(err) != semantics.Transient {
		t.Errorf("dial to a closed port: %v (%v); want a Transient error naming %s", err, kindOf(err), addr)
	}
}

// streamWithOneMessage makes a stream named prefix+ID with group "g" and
// adds one message to it through c, returning the stream and its ID.
func streamWithOneMessage(t *testing.T, c *redis.Client, prefix string) (stream, id string) {
	t.Helper()
	stream = prefix + driver.NewID()
	if err := c.XGroupCreateMkStream(t.Context(), stream, "g", "0").Err(); err != nil {
		t.Fatal(err)
	}
	return stream, c.XAdd(t.Context(), &redis.XAddArgs{Stream: stream, Values: []any{"_body", "p"}}).Val()
}

// readGroupG reads stream as consumer "c" of group "g" over rc, returning
// how many messages the reply held and their IDs.
func readGroupG(t *testing.T, rc *readerConn, stream string) (int, []string, error) {
	t.Helper()
	rc.command(7).bulk("xreadgroup").bulk("group").bulk("g").bulk("c").bulk("streams").bulk(stream).bulk(">")
	if err := rc.send(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	n, err := rc.xreadgroup(nil, func(_, id string, _ []string) { ids = append(ids, strings.Clone(id)) })
	return n, ids, err
}
