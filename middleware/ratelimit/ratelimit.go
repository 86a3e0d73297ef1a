// Package ratelimit bounds how fast and how many messages are handled.
//
// New is a token bucket with a rate and a burst, like nginx's
// "limit_req rate=... burst=100 nodelay": up to Burst messages pass at once,
// and beyond that each waits its turn at Rate per second — sustained
// overload is slowed down, never dropped. With MaxWait, a message that
// would wait longer is instead returned with broker.RetryAfter(ErrLimited,
// wait), so Consume nacks it for later and the consumer slot is free.
//
// Concurrency bounds the handlers running at once, across every consumer
// that shares the middleware (Consume's Concurrency bounds one consumer).
//
// Place ratelimit inside retry, so that each attempt takes a token (see
// package middleware). Tokens and slots are per process.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// ErrLimited is returned (with a RetryAfter delay) for a message that would
// wait longer than Options.MaxWait.
var ErrLimited = errors.New("rate limited")

// Limiter is a token bucket: it holds up to burst tokens and gains rate
// tokens per second. It is safe for concurrent use.
type Limiter struct {
	mu     sync.Mutex
	rate   float64 // tokens per nanosecond
	burst  float64
	tokens float64 // below 0: owed to waiters already promised a token
	last   time.Time
	now    func() time.Time
}

// NewLimiter returns a full bucket. It panics unless rate > 0 and burst >= 1.
func NewLimiter(rate float64, burst int) *Limiter {
	if !(rate > 0) || burst < 1 {
		panic(fmt.Sprintf("ratelimit: rate %v must be > 0 and burst %d >= 1", rate, burst))
	}
	return &Limiter{rate: rate / float64(time.Second), burst: float64(burst), tokens: float64(burst), now: time.Now}
}

// advance refills the bucket up to now. The caller holds l.mu.
func (l *Limiter) advance() {
	now := l.now()
	if !l.last.IsZero() {
		l.tokens = min(l.burst, l.tokens+float64(now.Sub(l.last))*l.rate)
	}
	l.last = now
}

// reserve takes a token and returns the wait before it may be used, unless
// that wait exceeds max (> 0): then it takes nothing and returns the wait
// with ok false.
func (l *Limiter) reserve(max time.Duration) (wait time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.advance()
	if l.tokens >= 1 {
		l.tokens--
		return 0, true
	}
	wait = time.Duration((1 - l.tokens) / l.rate)
	if max > 0 && wait > max {
		return wait, false
	}
	l.tokens--
	return wait, true
}

// giveBack returns a token that a waiter did not use.
func (l *Limiter) giveBack() {
	l.mu.Lock()
	l.advance()
	l.tokens = min(l.burst, l.tokens+1)
	l.mu.Unlock()
}

// Wait takes a token, waiting until it is due or ctx is done (then it gives
// the token back and returns ctx's error).
func (l *Limiter) Wait(ctx context.Context) error {
	wait, _ := l.reserve(0)
	return l.sleep(ctx, wait)
}

func (l *Limiter) sleep(ctx context.Context, wait time.Duration) error {
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		l.giveBack()
		return ctx.Err()
	}
}

// Options configure New.
type Options struct {
	// Rate is the sustained number of messages per second; required.
	Rate float64
	// Burst is how many messages may pass at once after a quiet spell;
	// default 1.
	Burst int
	// MaxWait, when > 0, bounds the wait: a message that would wait longer
	// is returned with broker.RetryAfter(ErrLimited, wait) instead.
	MaxWait time.Duration
}

// New returns the rate-limiting middleware; every handler it wraps shares
// one bucket. It panics unless Rate > 0, Burst >= 0 and MaxWait >= 0.
func New(opts Options) broker.Middleware {
	if opts.Burst == 0 {
		opts.Burst = 1
	}
	if opts.MaxWait < 0 {
		panic(fmt.Sprintf("ratelimit: MaxWait %v must be >= 0", opts.MaxWait))
	}
	l := NewLimiter(opts.Rate, opts.Burst)
	return func(next broker.Handler) broker.Handler {
		return &handler{next: next, l: l, maxWait: opts.MaxWait}
	}
}

type handler struct {
	next    broker.Handler
	l       *Limiter
	maxWait time.Duration
}

// Stage names this middleware for middleware.Check.
func (h *handler) Stage() string { return "ratelimit" }

// Unwrap returns the handler it wraps.
func (h *handler) Unwrap() broker.Handler { return h.next }

func (h *handler) Handle(ctx context.Context, m *broker.Message) error {
	wait, ok := h.l.reserve(h.maxWait)
	if !ok {
		return broker.RetryAfter(ErrLimited, wait)
	}
	if err := h.l.sleep(ctx, wait); err != nil {
		return err
	}
	return h.next.Handle(ctx, m)
}

// Concurrency returns a middleware that lets at most n handler calls run at
// once; the others wait for a slot (or for their ctx). It panics when n < 1.
func Concurrency(n int) broker.Middleware {
	if n < 1 {
		panic(fmt.Sprintf("ratelimit: concurrency %d must be >= 1", n))
	}
	slots := make(chan struct{}, n)
	return func(next broker.Handler) broker.Handler {
		return &limitHandler{next: next, slots: slots}
	}
}

type limitHandler struct {
	next  broker.Handler
	slots chan struct{}
}

// Stage names this middleware for middleware.Check.
func (h *limitHandler) Stage() string { return "ratelimit" }

// Unwrap returns the handler it wraps.
func (h *limitHandler) Unwrap() broker.Handler { return h.next }

func (h *limitHandler) Handle(ctx context.Context, m *broker.Message) error {
	select {
	case h.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-h.slots }()
	return h.next.Handle(ctx, m)
}
