package dedupe

import (
	"context"
	"fmt"
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
	shards [memShards]memShard
}

const memShards = 32

type memShard struct {
	mu   sync.Mutex
	m    map[string]memEntry
	ring []string // insertion order, for eviction
	next int
	_    [24]byte // keep shards on separate cache lines
}

type memEntry struct {
	until int64 // monotonic ns: lease end while claimed, retention end once done
	slot  int32 // index in ring, so that a stale slot never evicts a newer entry
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
	s := &MemoryStore{ttl: int64(opts.TTL)}
	for i := range s.shards {
		s.shards[i].m = make(map[string]memEntry, min(per, 1024))
		s.shards[i].ring = make([]string, per)
	}
	return s
}

func (s *MemoryStore) shard(key string) *memShard {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return &s.shards[h%memShards]
}

// add records key in the ring, forgetting the oldest key when full, and
// returns its slot. The caller holds sh.mu.
func (sh *memShard) add(key string) int32 {
	slot := sh.next
	if old := sh.ring[slot]; old != "" {
		if e, ok := sh.m[old]; ok && e.slot == int32(slot) {
			delete(sh.m, old)
		}
	}
	sh.ring[slot] = key
	sh.next++
	if sh.next == len(sh.ring) {
		sh.next = 0
	}
	return int32(slot)
}

// Claim takes key for lease unless it is done or claimed by someone else
// whose lease has not expired.
func (s *MemoryStore) Claim(_ context.Context, key string, lease time.Duration) (broker.ClaimResult, error) {
	now := mono()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[key]
	switch {
	case !ok:
		e.slot = sh.add(key)
	case e.done && now < e.until:
		return broker.AlreadyDone, nil
	case !e.done && now < e.until:
		return broker.InFlight, nil
	}
	e.done = false
	e.until = now + int64(lease)
	sh.m[key] = e
	return broker.Claimed, nil
}

// Complete marks key done for the store's TTL.
func (s *MemoryStore) Complete(_ context.Context, key string) error {
	now := mono()
	sh := s.shard(key)
	sh.mu.Lock()
	e, ok := sh.m[key]
	if !ok {
		e.slot = sh.add(key)
	}
	e.done = true
	e.until = now + s.ttl
	sh.m[key] = e
	sh.mu.Unlock()
	return nil
}

// Release drops a claim on key so that a redelivery can claim it at once. A
// done key stays done.
func (s *MemoryStore) Release(_ context.Context, key string) error {
	sh := s.shard(key)
	sh.mu.Lock()
	if e, ok := sh.m[key]; ok && !e.done {
		delete(sh.m, key)
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
