package redisstreams

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/testenv"
)

// xreadReply against the server's own replies, RESP2 and RESP3: entries,
// an entry deleted while pending (no fields), the null reply of a block
// that ran out, and an error reply.
func TestXReadReplyFromServer(t *testing.T) {
	for _, proto := range []int{2, 3} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c := redis.NewClient(&redis.Options{Addr: testenv.Redis(t), Protocol: proto})
		defer c.Close()
		st := "qkt-reply-" + driver.NewID()
		defer c.Del(context.Background(), st)
		c.XGroupCreateMkStream(ctx, st, "g", "0")
		id1 := c.XAdd(ctx, &redis.XAddArgs{Stream: st, Values: []any{"_id", "a", "h:x", "1", "_body", "p\r\n1"}}).Val()
		id2 := c.XAdd(ctx, &redis.XAddArgs{Stream: st, Values: []any{"_body", ""}}).Val()

		raw := func(args ...any) ([]byte, error) {
			var buf bytes.Buffer
			err := c.Process(ctx, redis.NewRawWriteToCmd(ctx, &buf, args...))
			return buf.Bytes(), err
		}
		type entry struct {
			stream, id string
			fields     []string
		}
		walk := func(b []byte) ([]entry, int, error) {
			var got []entry
			n, err := (&xreadReply{b: b}).each(nil, func(stream, id string, fields []string) {
				got = append(got, entry{strings.Clone(stream), strings.Clone(id), append([]string(nil), fields...)})
			})
			return got, n, err
		}

		b, err := raw("xreadgroup", "group", "g", "c", "count", 10, "streams", st, ">")
		if err != nil {
			t.Fatal(err)
		}
		got, n, err := walk(b)
		if err != nil || n != 2 || len(got) != 2 ||
			got[0].stream != st || got[0].id != id1 || strings.Join(got[0].fields, "|") != "_id|a|h:x|1|_body|p\r\n1" ||
			got[1].stream != st || got[1].id != id2 || strings.Join(got[1].fields, "|") != "_body|" {
			t.Errorf("RESP%d entries = %q, %d, %v", proto, got, n, err)
		}

		c.XDel(ctx, st, id1)
		b, err = raw("xreadgroup", "group", "g", "c", "streams", st, "0")
		if err != nil {
			t.Fatal(err)
		}
		if got, n, err = walk(b); err != nil || n != 2 || got[0].id != id1 || len(got[0].fields) != 0 || got[1].id != id2 {
			t.Errorf("RESP%d pending with one deleted = %q, %d, %v", proto, got, n, err)
		}

		b, err = raw("xreadgroup", "group", "g", "c", "block", 1, "streams", st, ">")
		if err != nil {
			t.Fatal(err)
		}
		if _, n, err = walk(b); n != -1 || err != nil {
			t.Errorf("RESP%d block ran out: %d, %v; want -1 (null)", proto, n, err)
		}

		b, err = raw("xreadgroup", "group", "nope", "c", "streams", st, ">")
		if err != nil {
			t.Fatal(err)
		}
		var re replyError
		if _, _, err = walk(b); !errors.As(err, &re) || !isNoGroup(err) {
			t.Errorf("RESP%d unknown group: %v; want a NOGROUP error reply", proto, err)
		}

		if _, _, err := walk(b[:len(b)-1]); err == nil {
			t.Errorf("RESP%d a cut reply parsed", proto)
		}
	}
}
