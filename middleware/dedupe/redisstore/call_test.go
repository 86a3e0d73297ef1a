package redisstore

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A command that outlives its caller's ctx: the caller gets ctx's error at
// once, and the command's outcome goes to abandoned when it comes.
func TestCallReturnsWhenCtxEnds(t *testing.T) {
	started, release, got := make(chan struct{}), make(chan struct{}), make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() {
		_, err := call(ctx, func(context.Context) (string, error) {
			close(started)
			<-release
			return "late", nil
		}, func(v string, err error) { got <- v })
		res <- err
	}()
	<-started
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("call after cancel: %v", err)
	}
	close(release)
	select {
	case v := <-got:
		if v != "late" {
			t.Fatalf("abandoned got %q", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the abandoned command's outcome never reached abandoned")
	}
}

func TestCallReturnsTheOutcome(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := call(ctx, func(context.Context) (string, error) { return "ok", nil }, func(string, error) {
		t.Error("abandoned called for a command whose caller waited")
	})
	if v != "ok" || err != nil {
		t.Fatalf("call = %q, %v", v, err)
	}
	if _, err := call(context.Background(), func(context.Context) (int, error) { return 0, errors.New("boom") }, nil); err == nil {
		t.Fatal("a failing command without ctx returned nil")
	}
}
