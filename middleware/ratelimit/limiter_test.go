package ratelimit

import (
	"context"
	"testing"
	"time"
)

// fakeClock drives a Limiter's arithmetic exactly.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func frozen(l *Limiter) *fakeClock       { c := &fakeClock{t: time.Unix(1000, 0)}; l.now = c.now; return c }
func approx(a, b time.Duration) bool {
	d := a - b
	return d > -time.Microsecond && d < time.Microsecond
}

// Like nginx "limit_req rate=10r/s burst=100 nodelay": a burst of 100 passes
// at once, then requests are spaced 100ms apart; a quiet spell refills.
func TestBurstThenRate(t *testing.T) {
	l := NewLimiter(10, 100)
	c := frozen(l)
	for i := range 100 {
		if w, _ := l.reserve(0); w != 0 {
			t.Fatalf("request %d of the burst waits %v", i+1, w)
		}
	}
	for i, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 300 * time.Millisecond} {
		if w, _ := l.reserve(0); !approx(w, want) {
			t.Fatalf("request %d past the burst waits %v, want %v", 101+i, w, want)
		}
	}
	c.add(time.Second) // 10 tokens: 3 repay the waiters, 7 are free
	for i := range 7 {
		if w, _ := l.reserve(0); w != 0 {
			t.Fatalf("after a second, request %d waits %v", i+1, w)
		}
	}
	if w, _ := l.reserve(0); !approx(w, 100*time.Millisecond) {
		t.Fatalf("then a wait of %v, want 100ms", w)
	}
	c.add(time.Hour)
	l.mu.Lock()
	l.advance()
	full := l.tokens
	l.mu.Unlock()
	if full != 100 {
		t.Fatalf("an hour later the bucket holds %v, want the burst of 100", full)
	}
}

func TestMaxWaitTakesNothing(t *testing.T) {
	l := NewLimiter(1, 1)
	frozen(l)
	l.reserve(0)
	if w, ok := l.reserve(500 * time.Millisecond); ok || !approx(w, time.Second) {
		t.Fatalf("reserve over MaxWait = %v, %v; want refused with the 1s wait", w, ok)
	}
	if w, ok := l.reserve(0); !ok || !approx(w, time.Second) {
		t.Fatalf("the refused reservation took a token: next waits %v", w)
	}
}

func TestWaitGivesBackOnCancel(t *testing.T) {
	l := NewLimiter(1, 1)
	c := frozen(l)
	l.reserve(0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Wait(ctx); err != context.Canceled {
		t.Fatalf("Wait = %v", err)
	}
	c.add(time.Second)
	if w, _ := l.reserve(0); w != 0 {
		t.Fatalf("the cancelled waiter's token was not given back: next waits %v", w)
	}
}
