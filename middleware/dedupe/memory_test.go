package dedupe_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe"
	"github.com/queuekit/queuekit/middleware/dedupe/dedupetest"
)

func TestMemoryStoreContract(t *testing.T) {
	var n atomic.Int64
	dedupetest.Run(t, dedupe.NewMemoryStore(dedupe.MemoryOptions{}), func() string {
		return fmt.Sprintf("key-%d", n.Add(1))
	})
}

func TestMemoryStoreIsBounded(t *testing.T) {
	s := dedupe.NewMemoryStore(dedupe.MemoryOptions{MaxKeys: 64})
	ctx := context.Background()
	for i := range 10000 {
		k := fmt.Sprint(i)
		res, tok, _ := s.Claim(ctx, k, time.Minute)
		if res != broker.Claimed {
			t.Fatalf("fresh key %s: %v", k, res)
		}
		_ = s.Complete(ctx, k, tok)
	}
	if n := s.Len(); n > 64 {
		t.Fatalf("store holds %d keys, bound is 64", n)
	}
	if res, _, _ := s.Claim(ctx, "9999", time.Minute); res != broker.AlreadyDone {
		t.Fatalf("the newest key was forgotten: %v", res)
	}
	if res, _, _ := s.Claim(ctx, "0", time.Minute); res != broker.Claimed {
		t.Fatalf("the oldest key is still remembered past the bound: %v", res)
	}
}

func TestMemoryStoreTTL(t *testing.T) {
	s := dedupe.NewMemoryStore(dedupe.MemoryOptions{TTL: 50 * time.Millisecond})
	ctx := context.Background()
	_, tok, _ := s.Claim(ctx, "k", time.Minute)
	_ = s.Complete(ctx, "k", tok)
	if res, _, _ := s.Claim(ctx, "k", time.Minute); res != broker.AlreadyDone {
		t.Fatalf("done key not remembered: %v", res)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		res, _, _ := s.Claim(ctx, "k", time.Minute)
		if res == broker.Claimed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("done key outlived its TTL")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
