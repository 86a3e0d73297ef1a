// Package redisstore is a broker.IdempotencyStore on Redis
// (github.com/redis/go-redis/v9), for the dedupe middleware and for
// semantics.EffectivelyOnce across many consumer processes.
//
// A key is stored as Prefix+key (Prefix "evt:" by default). Claim is one
// atomic SET NX PX with GET: it takes the key with a random claim token that
// expires after the lease — so a consumer that dies holding the claim does not
// lose the message, unlike the naive SETNX — or reports the old value: "done"
// (AlreadyDone) or another claim's token (InFlight). Complete overwrites the
// key with "done" for DoneTTL. Release deletes the key only while it still
// holds this process's token (a Lua compare-and-delete), so a consumer whose
// lease expired cannot release the claim another consumer took over since.
//
// Requires Redis 7 (SET with both NX and GET). Done markers live for DoneTTL
// (7 days by default); a redelivery later than that is handled again.
package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// Options tune a Store.
type Options struct {
	// Prefix is put before every key; default "evt:".
	Prefix string
	// DoneTTL is how long a done marker lives; default 7 days.
	DoneTTL time.Duration
}

// Store is a broker.IdempotencyStore on Redis. It is safe for concurrent use.
type Store struct {
	c      redis.UniversalClient
	prefix string
	ttl    time.Duration
	tokens sync.Map // key -> this process's claim token, until completed or released
}

const done = "done"

var release = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// New returns a Store over c (a *redis.Client, *redis.ClusterClient or any
// redis.UniversalClient). It panics when c is nil or DoneTTL is negative.
func New(c redis.UniversalClient, opts Options) *Store {
	if c == nil {
		panic("redisstore: client is nil")
	}
	if opts.DoneTTL < 0 {
		panic(fmt.Sprintf("redisstore: DoneTTL is %v, must be >= 0", opts.DoneTTL))
	}
	if opts.Prefix == "" {
		opts.Prefix = "evt:"
	}
	if opts.DoneTTL == 0 {
		opts.DoneTTL = 7 * 24 * time.Hour
	}
	return &Store{c: c, prefix: opts.Prefix, ttl: opts.DoneTTL}
}

// Claim takes key for lease with SET NX PX GET.
func (s *Store) Claim(ctx context.Context, key string, lease time.Duration) (broker.ClaimResult, error) {
	if lease < time.Millisecond {
		return 0, broker.Errorf(semantics.InvalidArgument, "redisstore: claim", "lease %v is under Redis's 1ms resolution", lease)
	}
	token := newToken()
	old, err := s.c.SetArgs(ctx, s.prefix+key, token, redis.SetArgs{Mode: "NX", Get: true, TTL: lease}).Result()
	switch {
	case errors.Is(err, redis.Nil): // no old value: the key is ours
		s.tokens.Store(key, token)
		return broker.Claimed, nil
	case err != nil:
		return 0, broker.WrapError(semantics.Transient, "redisstore: claim", err)
	case old == done:
		return broker.AlreadyDone, nil
	default:
		return broker.InFlight, nil
	}
}

// Complete marks key done for DoneTTL.
func (s *Store) Complete(ctx context.Context, key string) error {
	s.tokens.Delete(key)
	if err := s.c.Set(ctx, s.prefix+key, done, s.ttl).Err(); err != nil {
		return broker.WrapError(semantics.Transient, "redisstore: complete", err)
	}
	return nil
}

// Release deletes this process's claim on key, if it still holds it.
func (s *Store) Release(ctx context.Context, key string) error {
	token, ok := s.tokens.LoadAndDelete(key)
	if !ok {
		return nil // not claimed here: nothing of ours to release
	}
	if err := release.Run(ctx, s.c, []string{s.prefix + key}, token).Err(); err != nil {
		return broker.WrapError(semantics.Transient, "redisstore: release", err)
	}
	return nil
}

func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "claim:" + hex.EncodeToString(b[:])
}
