package pgstore_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	_ "github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/middleware/dedupe/dedupetest"
	"github.com/queuekit/queuekit/middleware/dedupe/internal/faultnet"
	"github.com/queuekit/queuekit/middleware/dedupe/pgstore"
	"github.com/queuekit/queuekit/middleware/internal/mwtest"
)

// db connects to the test database.
func db(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, testenv.Postgres(t))
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		testenv.Unavailable(t, "PostgreSQL", err, "see testenv.Postgres")
	}
	t.Cleanup(pool.Close)
	return pool
}

// table returns a table name of this test's own, dropped at the end.
func table(t *testing.T, pool *pgxpool.Pool, what string) string {
	name := "qktest_" + what + "_" + mwtest.Unique()
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgx.Identifier{name}.Sanitize())
	})
	return name
}

func store(t *testing.T, pool *pgxpool.Pool) *pgstore.Store {
	t.Helper()
	s, err := pgstore.New(context.Background(), pool, pgstore.Options{Table: table(t, pool, "dedupe")})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestContract(t *testing.T) {
	var n atomic.Int64
	dedupetest.Run(t, store(t, db(t)), func() string { return fmt.Sprint("k", n.Add(1)) })
}

func TestStaleReleaseKeepsTheNewClaim(t *testing.T) {
	pool := db(t)
	name := table(t, pool, "stale")
	a, err := pgstore.New(context.Background(), pool, pgstore.Options{Table: name})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pgstore.New(context.Background(), pool, pgstore.Options{Table: name})
	dedupetest.StaleRelease(t, a, b, "k")
}

func TestPurge(t *testing.T) {
	s := store(t, db(t))
	ctx := context.Background()
	for _, k := range []string{"a", "b"} {
		_, tok, _ := s.Claim(ctx, k, time.Minute)
		_ = s.Complete(ctx, k, tok)
	}
	_, _, _ = s.Claim(ctx, "in-flight", time.Minute)
	if n, err := s.Purge(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("Purge(1h) = %d, %v; nothing is that old", n, err)
	}
	if n, err := s.Purge(ctx, 0); err != nil || n != 2 {
		t.Fatalf("Purge(0) = %d, %v; want the 2 done keys, not the claim", n, err)
	}
}

func TestBadTableName(t *testing.T) {
	if _, err := pgstore.New(context.Background(), db(t), pgstore.Options{Table: "a.b.c"}); err == nil {
		t.Fatal("a three-part table name was accepted")
	}
}

// The two cases the naive SETNX gets wrong, over real brokers.
func TestNaiveSETNXCases(t *testing.T) {
	pool := db(t)
	mwtest.ForEachBroker(t, func(t *testing.T, e *mwtest.Env) {
		s := store(t, pool)
		if got := mwtest.CrashAfterClaim(t, e, s, 400*time.Millisecond); got.Handled != 1 || got.Deferred == 0 {
			t.Errorf("crash after claim: %+v; want deferred under the lease, then handled once", got)
		}
		for _, firstFails := range []bool{false, true} {
			if got := mwtest.DuplicateInFlight(t, e, s, firstFails); got.Handled != 1 || got.Deferred == 0 {
				t.Errorf("duplicate in flight (first fails %v): %+v; want deferred, handled once", firstFails, got)
			}
		}
	})
}

// proxied returns a pool whose connections to the test database go through
// a proxy the test can cut or hang.
func proxied(t *testing.T) (*pgxpool.Pool, *faultnet.Proxy) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	p, addr := faultnet.NewProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, fmt.Sprint(cfg.ConnConfig.Port)))
	host, port, _ := net.SplitHostPort(addr)
	p16, _ := strconv.ParseUint(port, 10, 16)
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = host, uint16(p16)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	t.Cleanup(p.Cut) // first: pgx gives a hung connection 15s to close
	return pool, p
}

// proxiedStore returns a store over a proxied pool.
func proxiedStore(t *testing.T) (*pgstore.Store, *faultnet.Proxy) {
	t.Helper()
	pool, p := proxied(t)
	s, err := pgstore.New(context.Background(), pool, pgstore.Options{Table: table(t, db(t), "down")})
	if err != nil {
		t.Fatal(err)
	}
	return s, p
}

// While PostgreSQL is down, the consumer backs off instead of nacking at
// once.
func TestUnavailable(t *testing.T) {
	s, p := proxiedStore(t)
	p.Cut()
	dedupetest.Unavailable(t, s)
}

// A PostgreSQL that stops answering: every call returns when its ctx ends.
func TestUnresponsive(t *testing.T) {
	s, p := proxiedStore(t)
	p.Hang()
	dedupetest.Unresponsive(t, s)
}
