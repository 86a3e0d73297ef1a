package redisstore_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/middleware/dedupe/dedupetest"
	"github.com/queuekit/queuekit/middleware/dedupe/internal/faultnet"
	"github.com/queuekit/queuekit/middleware/dedupe/redisstore"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
	"github.com/queuekit/queuekit/semantics"
)

// client connects to the test server and returns a key prefix of this
// test's own, whose keys are deleted at the end.
func client(t *testing.T) (*redis.Client, string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: testenv.Redis(t), DialTimeout: 2 * time.Second})
	prefix := "qktest:" + mwtest.Unique() + ":evt:"
	t.Cleanup(func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			c.Del(ctx, iter.Val())
		}
		_ = c.Close()
	})
	return c, prefix
}

func TestContract(t *testing.T) {
	c, prefix := client(t)
	var n atomic.Int64
	dedupetest.Run(t, redisstore.New(c, redisstore.Options{Prefix: prefix}), func() string { return fmt.Sprint("k", n.Add(1)) })
}

func TestDefaultPrefixAndDoneTTL(t *testing.T) {
	c, _ := client(t)
	s := redisstore.New(c, redisstore.Options{DoneTTL: time.Hour})
	ctx := context.Background()
	key := "qktest-" + mwtest.Unique()
	t.Cleanup(func() { c.Del(ctx, "evt:"+key) })
	_, tok, err := s.Claim(ctx, key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if ttl := c.PTTL(ctx, "evt:"+key).Val(); ttl <= 0 || ttl > time.Minute {
		t.Fatalf("claim TTL %v, want the lease", ttl)
	}
	if err := s.Complete(ctx, key, tok); err != nil {
		t.Fatal(err)
	}
	if v, ttl := c.Get(ctx, "evt:"+key).Val(), c.PTTL(ctx, "evt:"+key).Val(); v != "done" || ttl <= time.Minute || ttl > time.Hour {
		t.Fatalf("after Complete: %q with TTL %v, want a done marker living DoneTTL", v, ttl)
	}
}

// A consumer whose lease expired must not release the claim that another
// consumer (another process: another Store) took over.
func TestStaleReleaseKeepsTheNewClaim(t *testing.T) {
	c, prefix := client(t)
	dedupetest.StaleRelease(t, redisstore.New(c, redisstore.Options{Prefix: prefix}), redisstore.New(c, redisstore.Options{Prefix: prefix}), "k")
}

// naive is the source material's "SETNX evt:<id>, then handle", on Redis.
type naive struct {
	c      *redis.Client
	prefix string
}

func (n naive) Claim(ctx context.Context, key string, _ time.Duration) (broker.ClaimResult, string, error) {
	ok, err := n.c.SetNX(ctx, n.prefix+key, 1, 0).Result()
	if err != nil {
		return 0, "", err
	}
	if ok {
		return broker.Claimed, "naive", nil
	}
	return broker.AlreadyDone, "", nil
}
func (naive) Complete(context.Context, string, string) error { return nil }
func (naive) Release(context.Context, string, string) error  { return nil }

// The two cases the naive SETNX gets wrong, over real brokers: ours handles
// the message once, the naive store loses it.
func TestNaiveSETNXCases(t *testing.T) {
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		c, prefix := client(t)
		store := redisstore.New(c, redisstore.Options{Prefix: prefix})
		bad := naive{c, prefix + "naive:"}
		if got := mwtest.CrashAfterClaim(t, e, store, 400*time.Millisecond); got.Handled != 1 || got.Deferred == 0 {
			t.Errorf("crash after claim: %+v; want deferred under the lease, then handled once", got)
		}
		if got := mwtest.CrashAfterClaim(t, e, bad, 400*time.Millisecond); got.Handled != 0 {
			t.Errorf("naive SETNX, crash after claim: %+v; expected the message lost", got)
		}
		for _, firstFails := range []bool{false, true} {
			if got := mwtest.DuplicateInFlight(t, e, store, firstFails); got.Handled != 1 || got.Deferred == 0 {
				t.Errorf("duplicate in flight (first fails %v): %+v; want deferred, handled once", firstFails, got)
			}
		}
		if got := mwtest.DuplicateInFlight(t, e, bad, true); got.Handled != 0 {
			t.Errorf("naive SETNX, duplicate in flight whose first copy fails: %+v; expected the message lost", got)
		}
	})
}

func TestRedisDown(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := redisstore.New(c, redisstore.Options{}).Claim(ctx, "k", time.Second)
	if err == nil || broker.KindOf(err) != semantics.Transient {
		t.Fatalf("claim against a closed port: %v (kind %v), want a transient error", err, broker.KindOf(err))
	}
}

// While Redis is down, the consumer backs off instead of nacking at once.
func TestUnavailable(t *testing.T) {
	// A refused dial fails at once (not after go-redis's own retries), so
	// only the consumer's backoff spaces the attempts out.
	c := redis.NewClient(&redis.Options{Addr: faultnet.Refused(t), DialerRetries: 1, MaxRetries: -1})
	defer c.Close()
	dedupetest.Unavailable(t, redisstore.New(c, redisstore.Options{}))
}

// A Redis that accepts connections and never answers: every call returns
// when its ctx ends, whatever the client's own timeouts (the defaults here:
// 3s reads, retried).
func TestUnresponsive(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: faultnet.Silent(t)})
	defer c.Close()
	dedupetest.Unresponsive(t, redisstore.New(c, redisstore.Options{}))
}
