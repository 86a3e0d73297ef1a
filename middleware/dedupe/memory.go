package dedupe

import (
	"context"
	"encoding/binary"
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
// concurrent use and allocates nothing per message in steady state (claim
// tokens are cut from a shared block, one allocation per 64 claims).
type MemoryStore struct {
	ttl    int64
	seed   maphash.Seed
	shards [memShards]memShard
}

const memShards = 32

type memShard struct {
	mu     sync.Mutex
	m      map[string]int32 // key -> index in slots
	slots  []memSlot        // a ring in insertion order: the oldest is reused first
	next   int
	tokens string   // unused claim tokens, tokenLen bytes each
	serial uint64   // the number in the next block of tokens
	_      [56]byte // keep shards on separate cache lines (128 bytes each)
}

type memSlot struct {
	key   string
	token string // the live claim's, "" once done
	until int64  // monotonic ns: lease end while claimed, retention end once done
	used  bool
	done  bool
}

const (
	tokenLen   = 8  // bytes: the shard's index, then a 56-bit serial number
	tokenBlock = 64 // tokens made at once
)

// token returns a claim token that this store never returned before. The
// caller holds sh.mu.
func (sh *memShard) token() string {
	if sh.tokens == "" {
		var b [tokenLen * tokenBlock]byte
		for i := range tokenBlock {
			binary.BigEndian.PutUint64(b[i*tokenLen:], sh.serial)
			sh.serial++
		}
		sh.tokens = string(b[:])
	}
	t := sh.tokens[:tokenLen]
	sh.tokens = sh.tokens[tokenLen:]
	return t
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
		s.shards[i].serial = uint64(i) << 56 // tokens differ across shards too
	}
	return s
}

func (s *MemoryStore) shard(key string) *memShard {
	return &s.shards[maphash.String(s.seed, key)%memShards]
}

// add stores key in the next slot of the ring, forgetting the key that held
// it. The caller holds sh.mu.
func (sh *memShard) add(e memSlot) {
	i := sh.next
	if old := &sh.slots[i]; old.used {
		delete(sh.m, old.key)
	}
	e.used = true
	sh.slots[i] = e
	sh.m[e.key] = int32(i)
	sh.next++
	if sh.next == len(sh.slots) {
		sh.next = 0
	}
}

// Claim takes key for lease unless it is done or claimed by someone else
// whose lease has not expired.
func (s *MemoryStore) Claim(_ context.Context, key string, lease time.Duration) (broker.ClaimResult, string, error) {
	now := mono()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := sh.m[key]
	if !ok {
		t := sh.token()
		sh.add(memSlot{key: key, token: t, until: now + int64(lease)})
		return broker.Claimed, t, nil
	}
	e := &sh.slots[i]
	switch {
	case e.done && now < e.until:
		return broker.AlreadyDone, "", nil
	case !e.done && now < e.until:
		return broker.InFlight, "", nil
	}
	e.done, e.until, e.token = false, now+int64(lease), sh.token() // expired: take it over
	return broker.Claimed, e.token, nil
}

// Complete marks key done for the store's TTL, even when the claim token
// was taken over since (see broker.IdempotencyStore).
func (s *MemoryStore) Complete(_ context.Context, key, _ string) error {
	until := mono() + s.ttl
	sh := s.shard(key)
	sh.mu.Lock()
	if i, ok := sh.m[key]; ok {
		e := &sh.slots[i]
		e.done, e.until, e.token = true, until, ""
	} else {
		sh.add(memSlot{key: key, until: until, done: true})
	}
	sh.mu.Unlock()
	return nil
}

// Release drops the claim token on key so that a redelivery can claim it at
// once. A claim taken over since, and a done key, stay as they are.
func (s *MemoryStore) Release(_ context.Context, key, token string) error {
	sh := s.shard(key)
	sh.mu.Lock()
	if i, ok := sh.m[key]; ok && !sh.slots[i].done && token != "" && sh.slots[i].token == token {
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
