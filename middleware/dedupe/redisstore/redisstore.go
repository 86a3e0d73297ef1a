// Package redisstore is a broker.IdempotencyStore on Redis
// (github.com/redis/go-redis/v9), for the dedupe middleware and for
// semantics.EffectivelyOnce across many consumer processes.
//
// A key is stored as Prefix+key (Prefix "evt:" by default). Claim is one
// atomic SET NX PX with GET: it takes the key with a new random claim token
// that expires after the lease — so a consumer that dies holding the claim
// does not lose the message, unlike the naive SETNX — and returns the token,
// or reports the old value: "done" (AlreadyDone) or another claim's token
// (InFlight). Complete overwrites the key with "done" for DoneTTL. Release
// deletes the key only while it still holds the caller's token (a Lua
// compare-and-delete), so a handler whose lease expired cannot release the
// claim another handler took over since — in another process or in this
// one.
//
// Every call returns when its ctx ends, even over a client made without
// ContextTimeoutEnabled and a Redis that accepts connections but never
// answers; the command then finishes in the background within the client's
// own timeouts, and a claim that it took for a caller that gave up is
// released. Failures are Transient errors.
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

// Claim takes key for lease with SET NX PX GET, storing a new random token
// that it returns.
func (s *Store) Claim(ctx context.Context, key string, lease time.Duration) (broker.ClaimResult, string, error) {
	const op = "redisstore: claim"
	if lease < time.Millisecond {
		return 0, "", broker.Errorf(semantics.InvalidArgument, op, "lease %v is under Redis's 1ms resolution", lease)
	}
	k, token := s.prefix+key, newToken()
	old, err := call(ctx, func(ctx context.Context) (string, error) {
		return s.c.SetArgs(ctx, k, token, redis.SetArgs{Mode: "NX", Get: true, TTL: lease}).Result()
	}, func(_ string, err error) {
		if errors.Is(err, redis.Nil) { // claimed for a caller that has gone: give it back
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lease)
			defer cancel()
			_ = release.Run(ctx, s.c, []string{k}, token).Err()
		}
	})
	switch {
	case errors.Is(err, redis.Nil): // no old value: the key is ours
		return broker.Claimed, token, nil
	case err != nil:
		return 0, "", broker.WrapError(semantics.Transient, op, err)
	case old == done:
		return broker.AlreadyDone, "", nil
	default:
		return broker.InFlight, "", nil
	}
}

// Complete marks key done for DoneTTL, even when the claim token was taken
// over since (see broker.IdempotencyStore).
func (s *Store) Complete(ctx context.Context, key, _ string) error {
	_, err := call(ctx, func(ctx context.Context) (string, error) {
		return s.c.Set(ctx, s.prefix+key, done, s.ttl).Result()
	}, nil)
	if err != nil {
		return broker.WrapError(semantics.Transient, "redisstore: complete", err)
	}
	return nil
}

// Release deletes the claim token on key, if key still holds it.
func (s *Store) Release(ctx context.Context, key, token string) error {
	if token == "" {
		return nil // no claim: nothing to release
	}
	_, err := call(ctx, func(ctx context.Context) (any, error) {
		return release.Run(ctx, s.c, []string{s.prefix + key}, token).Result()
	}, nil)
	if err != nil {
		return broker.WrapError(semantics.Transient, "redisstore: release", err)
	}
	return nil
}

// call runs cmd, one command, and returns its outcome or, if ctx ends first,
// ctx's error. go-redis bounds a command by ctx only when the client was made
// with ContextTimeoutEnabled; otherwise by its ReadTimeout (3s by default,
// and retried), so a Redis that accepts connections and never answers would
// hold the caller for many seconds past its deadline. A cmd that ctx
// abandoned finishes in the background within the client's own timeouts,
// then abandoned (if not nil) gets its outcome, to undo what it did.
func call[T any](ctx context.Context, cmd func(context.Context) (T, error), abandoned func(T, error)) (T, error) {
	var zero T
	if ctx.Done() == nil { // no deadline, no cancellation: nothing to watch
		return cmd(ctx)
	}
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	var mu sync.Mutex
	gone := false
	ch := make(chan result, 1)
	go func() {
		v, err := cmd(ctx)
		mu.Lock()
		g := gone
		ch <- result{v, err}
		mu.Unlock()
		if g && abandoned != nil {
			abandoned(v, err)
		}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	select {
	case r := <-ch: // it finished meanwhile: its outcome stands
		return r.v, r.err
	default:
		gone = true
		return zero, ctx.Err()
	}
}

func newToken() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "claim:" + hex.EncodeToString(b[:])
}
