package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// scripted is an IdempotencyStore that claims every key with a token of its
// own and fails the calls the test tells it to. The real stores are tested
// in middleware/dedupe; this one lets the test choose when the store fails.
type scripted struct {
	mu         sync.Mutex
	failClaim  bool
	failSettle bool
	n          int
	claimed    []string // tokens returned
	settled    []string // tokens received by Complete and Release
}

var errDown = broker.Errorf(semantics.Transient, "scripted", "store down")

func (s *scripted) Claim(context.Context, string, time.Duration) (broker.ClaimResult, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failClaim {
		return 0, "", errDown
	}
	s.n++
	tok := fmt.Sprint("token-", s.n)
	s.claimed = append(s.claimed, tok)
	return broker.Claimed, tok, nil
}

func (s *scripted) settle(token string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failSettle {
		return errDown
	}
	s.settled = append(s.settled, token)
	return nil
}

func (s *scripted) Complete(_ context.Context, _, token string) error { return s.settle(token) }
func (s *scripted) Release(_ context.Context, _, token string) error  { return s.settle(token) }

func (s *scripted) set(f func(*scripted)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func TestIdempotentPassesTheClaimToken(t *testing.T) {
	s := &scripted{}
	fail := errors.New("handler failed")
	h := broker.Idempotent(s, broker.IdempotencyOptions{})(broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		if m.ID == "b" {
			return fail
		}
		return nil
	}))
	ctx := context.Background()
	if err := h.Handle(ctx, &broker.Message{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := h.Handle(ctx, &broker.Message{ID: "b"}); !errors.Is(err, fail) {
		t.Fatal(err)
	}
	if fmt.Sprint(s.settled) != fmt.Sprint(s.claimed) || len(s.claimed) != 2 {
		t.Fatalf("claims returned tokens %v, Complete and Release got %v", s.claimed, s.settled)
	}
}

func TestIdempotentStoreErrorsBackOff(t *testing.T) {
	s := &scripted{failClaim: true}
	h := broker.Idempotent(s, broker.IdempotencyOptions{StoreErrorDelay: 10 * time.Millisecond, MaxStoreErrorDelay: 70 * time.Millisecond})(
		broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
			if m.ID == "fails" {
				return broker.RetryAfter(errors.New("handler failed"), time.Second)
			}
			return nil
		}))
	ctx := context.Background()
	delay := func(id string) time.Duration {
		t.Helper()
		err := h.Handle(ctx, &broker.Message{ID: id})
		d, ok := broker.RetryDelay(err)
		if err == nil || !ok || broker.KindOf(err) != semantics.Transient {
			t.Fatalf("%s: %v (delay %v, set %v, kind %v), want the store's transient error with a delay", id, err, d, ok, broker.KindOf(err))
		}
		return d
	}
	var got []time.Duration
	for i := range 6 {
		got = append(got, delay(fmt.Sprint("m", i))) // one run of failures across messages
	}
	want := []time.Duration{10, 20, 40, 70, 70, 70}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delays after consecutive claim failures: %v, want %v", got, want)
	}

	s.set(func(s *scripted) { s.failClaim = false })
	if err := h.Handle(ctx, &broker.Message{ID: "ok"}); err != nil {
		t.Fatal(err)
	}
	s.set(func(s *scripted) { s.failSettle = true })
	if d := delay("complete"); d != 10*time.Millisecond {
		t.Fatalf("a failed Complete after a success: delay %v, want 10ms (the run of failures starts again)", d)
	}
	if d := delay("complete"); d != 20*time.Millisecond {
		t.Fatalf("a second failure: delay %v, want 20ms", d)
	}
	if d := delay("fails"); d != time.Second {
		t.Fatalf("a failed Release after a handler asking for 1s: delay %v, want the longer of the two", d)
	}
}

// hangs is a store whose Complete and Release wait for their ctx to end,
// as over a server that never answers.
type hangs struct {
	scripted
	seen chan error // what each Complete or Release saw
}

type ctxKey struct{}

const settleLease = 200 * time.Millisecond

func (h *hangs) wait(ctx context.Context) error {
	dl, ok := ctx.Deadline()
	switch {
	case ctx.Value(ctxKey{}) != "v":
		h.seen <- errors.New("the handler's context values are lost")
	case !ok || time.Until(dl) > settleLease:
		h.seen <- fmt.Errorf("deadline %v (set %v), want one within the lease", dl, ok)
	case ctx.Err() != nil:
		h.seen <- fmt.Errorf("ctx ended before the call: %v", ctx.Err())
	default:
		<-ctx.Done()
		h.seen <- ctx.Err()
	}
	return broker.WrapError(semantics.Transient, "hangs", ctx.Err())
}

func (h *hangs) Complete(ctx context.Context, _, _ string) error { return h.wait(ctx) }
func (h *hangs) Release(ctx context.Context, _, _ string) error  { return h.wait(ctx) }

// Complete and Release outlive the handler's cancellation (a handler that
// finished at shutdown still records its outcome) but not the lease: a
// store that hangs does not hold the consumer for ever.
func TestIdempotentSettlesWithinTheLease(t *testing.T) {
	for _, fails := range []bool{false, true} {
		s := &hangs{seen: make(chan error, 1)}
		h := broker.Idempotent(s, broker.IdempotencyOptions{Lease: settleLease})(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if fails {
				return errors.New("handler failed")
			}
			return nil
		}))
		ctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "v"))
		cancel() // shutdown: the handler's context ends while it finishes
		errc := make(chan error, 1)
		go func() { errc <- h.Handle(ctx, &broker.Message{ID: "m"}) }()
		if err := <-s.seen; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("handler fails %v: the store call saw %v, want it to run until the lease's deadline", fails, err)
		}
		if err := <-errc; broker.KindOf(err) != semantics.Transient {
			t.Fatalf("handler fails %v: %v", fails, err)
		}
	}
}
