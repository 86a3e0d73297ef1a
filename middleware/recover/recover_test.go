package recover_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/queuekit/queuekit/broker"
	qkrecover "github.com/queuekit/queuekit/middleware/recover"
)

func panicky(ctx context.Context, m *broker.Message) error {
	var p *broker.Message
	_ = p.ID // nil dereference: a runtime panic
	return nil
}

func TestPanicBecomesErrorWithStack(t *testing.T) {
	var seen *broker.PanicError
	h := qkrecover.New(qkrecover.Options{OnPanic: func(m *broker.Message, p *broker.PanicError) {
		if m.ID != "m1" {
			t.Errorf("OnPanic got message %q", m.ID)
		}
		seen = p
	}})(broker.HandlerFunc(panicky))
	err := h.Handle(context.Background(), &broker.Message{ID: "m1"})
	var pe *broker.PanicError
	if !errors.As(err, &pe) {
		t.Fatalf("Handle = %v, want *broker.PanicError", err)
	}
	if !strings.Contains(string(pe.Stack), "panicky") || !strings.Contains(err.Error(), "nil pointer") {
		t.Fatalf("panic error lacks the stack or the value:\n%v", err)
	}
	if seen != pe {
		t.Fatal("OnPanic did not see the panic")
	}
	if broker.IsPermanent(err) {
		t.Fatal("a panic is retryable unless Options.Permanent")
	}
}

func TestPermanentPanics(t *testing.T) {
	h := qkrecover.New(qkrecover.Options{Permanent: true})(broker.HandlerFunc(func(context.Context, *broker.Message) error {
		panic("poison")
	}))
	err := h.Handle(context.Background(), &broker.Message{})
	var pe *broker.PanicError
	if !broker.IsPermanent(err) || !errors.As(err, &pe) || pe.Value != "poison" {
		t.Fatalf("Handle = %v, want a permanent *PanicError", err)
	}
}

func TestNoPanicPassesThrough(t *testing.T) {
	want := errors.New("plain")
	h := qkrecover.New(qkrecover.Options{})(broker.HandlerFunc(func(context.Context, *broker.Message) error { return want }))
	if err := h.Handle(context.Background(), &broker.Message{}); err != want {
		t.Fatalf("Handle = %v, want the handler's own error", err)
	}
}
