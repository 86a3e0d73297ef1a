package timeout_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/timeout"
	"github.com/queuekit/queuekit/semantics"
)

func waitForCtx(ctx context.Context, m *broker.Message) error {
	<-ctx.Done()
	return ctx.Err()
}

func TestDeadlineExpires(t *testing.T) {
	err := timeout.New(10*time.Millisecond)(broker.HandlerFunc(waitForCtx)).Handle(context.Background(), &broker.Message{})
	if !errors.Is(err, timeout.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || broker.KindOf(err) != semantics.Transient {
		t.Fatalf("Handle = %v (kind %v), want a transient ErrTimeout wrapping DeadlineExceeded", err, broker.KindOf(err))
	}
}

func TestInTimeIsUntouched(t *testing.T) {
	want := errors.New("plain")
	h := timeout.New(time.Minute)(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("handler context has no deadline")
		}
		return want
	}))
	if err := h.Handle(context.Background(), &broker.Message{}); err != want {
		t.Fatalf("Handle = %v, want the handler's error untouched", err)
	}
}

func TestParentCancelIsNotATimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := timeout.New(time.Minute)(broker.HandlerFunc(waitForCtx)).Handle(ctx, &broker.Message{})
	if errors.Is(err, timeout.ErrTimeout) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Handle = %v, want the cancellation, not a timeout", err)
	}
}

func TestPermanentStaysPermanent(t *testing.T) {
	h := timeout.New(time.Millisecond)(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		<-ctx.Done()
		return broker.Permanent(errors.New("bad input"))
	}))
	if err := h.Handle(context.Background(), &broker.Message{}); !broker.IsPermanent(err) || !errors.Is(err, timeout.ErrTimeout) {
		t.Fatalf("Handle = %v, want permanent and ErrTimeout", err)
	}
}

func TestLateSuccessIsAcked(t *testing.T) {
	h := timeout.New(time.Millisecond)(broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		<-ctx.Done()
		return nil // finished the work regardless
	}))
	if err := h.Handle(context.Background(), &broker.Message{}); err != nil {
		t.Fatalf("Handle = %v, want nil: the work was done", err)
	}
}
