package dedupe

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// MemoryOptions size a MemoryStore.
type MemoryOptions struct {
	// MaxKeys bounds the keys remembered; beyond it the oldest are
	// forgotten first (so a duplicate older than MaxKeys messages is no
	// longer recognised). Default 100000.
	MaxKeys int
	// TTL is how long a done key is remembered; default 24h.
	TTL time.Duration
}

// MemoryStore is a broker.IdempotencyStore in process memory, bounded in keys
// and time. It deduplicates within one process only (use redisstore or
// pgstore across processes) and forgets everything on restart. It is safe for
// concurrent use and allocates nothing per message in steady state.
type MemoryStore struct {
	ttl    int64
	seed   maphash.Seed
	shards [memShards]memShard
}

const memShards = 32

type memShard struct {
	mu    sync.Mutex
	m     map[string]int32 // key -> index in slots
	slots []memSlot        // a ring in insertion order: the oldest is reused first
	next  int
	_     [24]byte // keep shards on separate cache lines
}

type memSlot struct {
	key   string
	until int64 // monotonic ns: lease end while claimed, retention end once done
	used  bool
	done  bool
}

var base = time.Now()

func mono() int64 { return int64(time.Since(base)) }

// NewMemoryStore returns an empty store. It panics on negative options.
func NewMemoryStore(opts MemoryOptions) *MemoryStore {
	if opts.MaxKeys < 0 || opts.TTL < 0 {
		panic(fmt.Sprintf("dedupe: invalid MemoryOptions %+v: must be >= 0", opts))
	}
	if opts.MaxKeys == 0 {
		opts.MaxKeys = 100000
	}
	if opts.TTL == 0 {
		opts.TTL = 24 * time.Hour
	}
	per := (opts.MaxKeys + memShards - 1) / memShards
	s := &MemoryStore{ttl: int64(opts.TTL), seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].m = make(map[string]int32, min(per, 1024))
		s.shards[i].slots = make([]memSlot, per)
	}
	return s
}

func (s *MemoryStore) shard(key string) *memShard {
	return &s.shards[maphash.String(s.seed, key)%memShards]
}

// add stores key in the next slot of the ring, forgetting the key that held
// it. The caller holds sh.mu.
func (sh *memShard) add(key string, until int64, done bool) {
	i := sh.next
	if old := &sh.slots[i]; old.used {
		delete(sh.m, old.key)
	}
	sh.slots[i] = memSlot{key: key, until: until, used: true, done: done}
	sh.m[key] = int32(i)
	sh.next++
	if sh.next == len(sh.slots) {
		sh.next = 0
	}
}

// Claim takes key for lease unless it is done or claimed by someone else
// whose lease has not expired.
func (s *MemoryStore) Claim(_ context.Context, key string, lease time.Duration) (broker.ClaimResult, error) {
	now := mono()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := sh.m[key]
	if !ok {
		sh.add(key, now+int64(lease), false)
		return broker.Claimed, nil
	}
	e := &sh.slots[i]
	switch {
	case e.done && now < e.until:
		return broker.AlreadyDone, nil
	case !e.done && now < e.until:
		return broker.InFlight, nil
	}
	e.done, e.until = false, now+int64(lease) // expired: take it over
	return broker.Claimed, nil
}

// Complete marks key done for the store's TTL.
func (s *MemoryStore) Complete(_ context.Context, key string) error {
	until := mono() + s.ttl
	sh := s.shard(key)
	sh.mu.Lock()
	if i, ok := sh.m[key]; ok {
		sh.slots[i].done, sh.slots[i].until = true, until
	} else {
		sh.add(key, until, true)
	}
	sh.mu.Unlock()
	return nil
}

// Release drops a claim on key so that a redelivery can claim it at once. A
// done key stays done.
func (s *MemoryStore) Release(_ context.Context, key string) error {
	sh := s.shard(key)
	sh.mu.Lock()
	if i, ok := sh.m[key]; ok && !sh.slots[i].done {
		delete(sh.m, key)
		sh.slots[i] = memSlot{}
	}
	sh.mu.Unlock()
	return nil
}

// Len returns how many keys (claimed or done, expired or not) the store holds.
func (s *MemoryStore) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}
