package redisstreams

import (
	"context"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

// leaser gives a PerKey subscriber its shards. Each shard of a topic is
// leased (a key with a TTL of the ack timeout, renewed every third of it)
// to one consumer of the group at a time, and each live consumer holds at
// most its fair share, ceil(shards / live consumers); one that holds more
// stops reading the extra shards and gives them up once the deliveries it
// took from them are settled. A consumer that takes a shard first claims
// everything pending on it, whoever held it (a dead owner's deliveries,
// nacked entries, what a closing subscriber gave back), in stream order,
// then reads new entries: so the entries of one key are handed out in
// order, by one consumer at a time.
type leaser struct {
	s      *subscriber
	ttl    time.Duration
	keys   []string // members, then the lease of each shard
	stopCh chan struct{}
	once   sync.Once

	mu      sync.Mutex
	shards  []shardLease
	renewed time.Time // when the leases were last renewed
}

type shardLease struct {
	owned    bool
	takeover bool // owned, but its pending entries are not claimed yet
	draining bool // owned, not read any more, given up once settled
}

func newLeaser(s *subscriber) *leaser {
	n := len(s.tk.streams)
	l := &leaser{s: s, ttl: s.ackTimeout, stopCh: make(chan struct{}), shards: make([]shardLease, n)}
	l.keys = make([]string, 1+n)
	l.keys[0] = s.tk.members(s.group)
	for i := range n {
		l.keys[1+i] = s.tk.lease(i, s.group)
	}
	return l
}

func (l *leaser) loop() {
	defer l.s.loops.Done()
	every := max(l.ttl/3, time.Millisecond)
	for {
		if err := l.tick(); err != nil {
			l.s.report(err)
		}
		select {
		case <-l.stopCh:
			return
		case <-time.After(every):
		}
	}
}

func (l *leaser) stop() { l.once.Do(func() { close(l.stopCh) }) }

// tick renews, takes and gives up leases (leaseScript, releaseScript).
func (l *leaser) tick() error {
	const op = "redisstreams: shard lease"
	s := l.s
	start := time.Now()
	res, err := leaseScript.Run(s.bg, s.c, l.keys, s.consumer, l.ttl.Milliseconds()).Slice()
	if err == nil && len(res) != 2 {
		err = driver.Errorf(semantics.Unknown, op, "unexpected reply %v", res)
	}
	l.mu.Lock()
	if err != nil {
		if !l.renewed.IsZero() && time.Since(l.renewed) >= l.ttl {
			l.loseAllLocked() // they have expired by now
		}
		l.mu.Unlock()
		return wrap(op, err)
	}
	l.renewed = start
	share, _ := res[0].(int64)
	held := make([]bool, len(l.shards))
	list, _ := res[1].([]any)
	for _, v := range list {
		if i, ok := v.(int64); ok && int(i) < len(held) {
			held[i] = true
		}
	}
	changed := false
	owned := 0
	for i := range l.shards {
		sl := &l.shards[i]
		switch {
		case sl.owned && !held[i]: // lost: expired, or taken
			*sl = shardLease{}
			s.epochs[i].Add(1)
			changed = true
		case !sl.owned && held[i]:
			*sl = shardLease{owned: true, takeover: true}
			s.epochs[i].Add(1)
			changed = true
		}
		if sl.owned && !sl.draining {
			owned++
		}
	}
	for i := len(l.shards) - 1; i >= 0 && int64(owned) > share; i-- {
		if sl := &l.shards[i]; sl.owned && !sl.draining {
			sl.draining = true
			owned--
			changed = true
		}
	}
	var give []string
	for i := range l.shards {
		if sl := &l.shards[i]; sl.draining && s.shardOut[i].Load() == 0 {
			*sl = shardLease{}
			s.epochs[i].Add(1)
			give = append(give, l.keys[1+i])
		}
	}
	l.mu.Unlock()
	if changed {
		signal(s.wake)
		s.unblock()
	}
	if len(give) > 0 {
		// The acks of the shard's last deliveries go first, or its next
		// owner would find them pending and deliver them again.
		if err := s.acks.flush(s.bg); err != nil {
			return err // the leases are given up at the next tick
		}
		keys := append([]string{l.keys[0]}, give...)
		if err := releaseScript.Run(s.bg, s.c, keys, s.consumer, 0).Err(); err != nil {
			return wrap(op, err) // they expire after the ttl anyway
		}
	}
	return nil
}

func (l *leaser) loseAllLocked() {
	for i := range l.shards {
		if l.shards[i].owned {
			l.shards[i] = shardLease{}
			l.s.epochs[i].Add(1)
		}
	}
}

// readable returns the shards the subscriber may read and claim from.
func (l *leaser) readable() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for i, sl := range l.shards {
		if sl.owned && !sl.takeover && !sl.draining {
			out = append(out, i)
		}
	}
	return out
}

// takeovers claims everything pending on the shards just leased, into the
// reader's queue, before the reader reads them.
func (l *leaser) takeovers() error {
	s := l.s
	for {
		l.mu.Lock()
		sh := -1
		for i, sl := range l.shards {
			if sl.owned && sl.takeover {
				sh = i
				break
			}
		}
		l.mu.Unlock()
		if sh < 0 {
			return nil
		}
		epoch := s.epochs[sh].Load()
		cursor := "-"
		for {
			if s.isClosing() {
				return nil
			}
			got := s.reserve(s.batch)
			if got == 0 {
				if !s.waitRoom() {
					return nil
				}
				continue
			}
			n, more, _, err := s.claim(sh, modeTakeover, 0, got, &cursor, nil)
			s.unreserve(got - n)
			if err != nil {
				return err
			}
			if !more {
				break
			}
		}
		l.mu.Lock()
		if s.epochs[sh].Load() == epoch {
			l.shards[sh].takeover = false
		}
		l.mu.Unlock()
	}
}

// leave gives up every lease and the group's members list, when the
// subscriber closes.
func (l *leaser) leave(ctx context.Context) error {
	s := l.s
	l.mu.Lock()
	for i := range l.shards {
		l.shards[i] = shardLease{}
		s.epochs[i].Add(1)
	}
	l.mu.Unlock()
	err := releaseScript.Run(ctx, s.c, l.keys, s.consumer, 1).Err()
	return wrap("redisstreams: close subscriber", err)
}
