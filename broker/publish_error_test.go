package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// TestPublishEndedByCtxNamesWhatFailed: a Publish whose ctx ends part way
// (here: waiting for room in a full mem:// group) fails as Canceled,
// matching ctx.Err(), and still names the messages that were not published,
// so that the caller retries only those.
func TestPublishEndedByCtxNamesWhatFailed(t *testing.T) {
	ctx := context.Background()
	b := broker.New(memory.New(memory.Options{Buffer: 1}))
	defer b.Close(ctx)
	if err := b.Declare(ctx, "full", "g"); err != nil {
		t.Fatal(err)
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msgs := []*broker.Message{{ID: "a"}, {ID: "b"}, {ID: "c"}}
	// Nobody consumes: "a" fills the group, "b" waits for room until the
	// deadline, whenever it comes.
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	err = pub.Publish(tctx, "full", msgs...)
	if broker.KindOf(err) != semantics.Canceled || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish = %v (kind %v); want kind Canceled matching context.DeadlineExceeded", err, broker.KindOf(err))
	}
	var pe *broker.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("Publish = %v; want it to name the messages not published (a *PublishError)", err)
	}
	var failed []string
	for _, f := range pe.Failed {
		failed = append(failed, f.ID)
	}
	if len(failed) != 2 || failed[0] != "b" || failed[1] != "c" {
		t.Fatalf("failed %v, want [b c] (a was published)", failed)
	}
	if st, err := b.Backlog(ctx, "full", "g"); err != nil || st.Pending != 1 {
		t.Fatalf("backlog %+v (%v), want the one message published", st, err)
	}
}
