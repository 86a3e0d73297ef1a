package redisstreams

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// publisher implements driver.Publisher: one pipelined XADD per message.
type publisher struct {
	b    *Broker
	next atomic.Uint32 // round robin over shards for keyless messages

	mu      sync.Mutex
	closed  bool
	running sync.WaitGroup // Publish calls under way
}

func newPublisher(b *Broker) *publisher { return &publisher{b: b} }

// Publish adds each message to its topic's stream (the shard of its key)
// in one pipeline, and returns nil once Redis answered every XADD. The
// messages that failed are named in a *driver.PublishError.
func (p *publisher) Publish(ctx context.Context, topic string, msgs ...*driver.Message) error {
	const op = "redisstreams: publish"
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return driver.ErrClosed
	}
	p.running.Add(1)
	p.mu.Unlock()
	defer p.running.Done()
	if err := checkName(op, "topic", topic); err != nil {
		return err
	}
	return p.b.add(ctx, op, topic, msgs, &p.next)
}

// add XADDs msgs to topic, pipelined.
//
// The arguments of every XADD are made in a few allocations for the whole
// call: one slice of arguments, one of the strings they box (encode), one
// of the times, one of the commands; per message there is only Redis's
// reply (the entry ID go-redis reads).
func (b *Broker) add(ctx context.Context, op, topic string, msgs []*driver.Message, next *atomic.Uint32) error {
	tk, err := b.publishKeys(ctx, op, topic)
	if err != nil {
		return err
	}
	shards := len(tk.streams)
	head := 3 // XADD stream [MAXLEN ~ n] *
	if b.opts.MaxLen > 0 {
		head += 3
	}
	nargs, nstrs := 0, 0
	for _, m := range msgs {
		nargs += head + fieldCount(m)
		nstrs += strCount(m)
	}
	args := make([]any, 0, nargs)
	strs := make([]string, 0, nstrs) // never grows: the arguments point into it
	at := make([]byte, 0, 20*len(msgs))
	ends := make([]int, len(msgs)) // message i's XADD is args[ends[i-1]:ends[i]]
	var later []int                // messages scheduled for later
	now := time.Now()
	for i, m := range msgs {
		args = append(args, "xadd", box(&tk.streams[b.shard(m, shards, next)]))
		if b.opts.MaxLen > 0 {
			args = append(args, "maxlen", "~", b.maxLen)
		}
		args = append(args, "*")
		args, strs, at = encode(args, strs, at, m)
		ends[i] = len(args)
		if !m.DeliverAt.IsZero() && m.DeliverAt.After(now) {
			later = append(later, i)
		}
	}
	xadd := func(i int) []any {
		start := 0
		if i > 0 {
			start = ends[i-1]
		}
		return args[start:ends[i]:ends[i]]
	}
	if len(msgs) == 1 && later == nil {
		cmd := redis.NewStringCmd(ctx, xadd(0)...)
		_ = b.client.Process(ctx, cmd)
		return wrap(op, cmd.Err())
	}
	xcmds := make([]redis.StringCmd, len(msgs))
	cmds := make([]redis.Cmder, len(msgs))
	_, err = b.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i := range msgs {
			if len(later) == 0 || !slices.Contains(later, i) {
				xcmds[i] = *redis.NewStringCmd(ctx, xadd(i)...)
				cmds[i] = &xcmds[i]
				_ = pipe.Process(ctx, cmds[i])
			}
		}
		if len(later) > 0 {
			sargs := make([]any, 0, 3*len(later))
			for _, i := range later {
				ms := (msgs[i].DeliverAt.Sub(now) + time.Millisecond - 1) / time.Millisecond // never early
				sargs = append(sargs, driver.NewID(), int64(ms), scheduled(xadd(i), head, tk))
			}
			// EVAL, not EVALSHA: a pipeline cannot load a missing script.
			c := scheduleScript.Eval(ctx, pipe, []string{tk.sched(), tk.schedMsg()}, sargs...)
			for _, i := range later {
				cmds[i] = c
			}
		}
		return nil
	})
	if err == nil {
		return nil
	}
	var pe driver.PublishError
	for i, c := range cmds {
		if cerr := c.Err(); cerr != nil {
			pe.Failed = append(pe.Failed, driver.PublishFailure{Index: i, ID: msgs[i].ID, Err: wrap(op, cerr)})
		}
	}
	if len(pe.Failed) == len(msgs) {
		return pe.Failed[0].Err
	}
	if len(pe.Failed) == 0 {
		return wrap(op, err)
	}
	return &pe
}

// scheduled encodes the entry an XADD (args, its first head arguments
// before the fields) would add, for dueScript: the shard, then each field,
// as <length>:<bytes>.
func scheduled(args []any, head int, tk *topicKeys) []byte {
	stream, _ := args[1].(string)
	shard := slices.Index(tk.streams, stream)
	var out []byte
	put := func(s string) {
		out = strconv.AppendInt(out, int64(len(s)), 10)
		out = append(out, ':')
		out = append(out, s...)
	}
	put(strconv.Itoa(shard))
	for _, v := range args[head:] {
		s, _ := v.(string)
		put(s)
	}
	return out
}

// shard is the shard of m's key (round robin when it has none).
func (b *Broker) shard(m *driver.Message, shards int, next *atomic.Uint32) int {
	if shards == 1 {
		return 0
	}
	if m.Key != "" {
		return int(fnv32(m.Key) % uint32(shards))
	}
	return int(next.Add(1) % uint32(shards))
}

// Close refuses later Publish calls and waits (within ctx) for those under
// way, which finish with Redis's answers. Nothing is buffered.
func (p *publisher) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.running.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return driver.Errorf(semantics.Canceled, "redisstreams: close publisher", "publishes still under way: %w", ctx.Err())
	}
}
