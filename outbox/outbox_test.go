package outbox_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/outbox"
	"github.com/queuekit/queuekit/semantics"
)

func TestNewRefusesBadOptions(t *testing.T) {
	db, _ := sql.Open("pgx", "postgres://nobody@127.0.0.1:1/none") // never connected
	for name, f := range map[string]func() error{
		"nil db":      func() error { _, err := outbox.New(nil, outbox.Postgres, outbox.Options{}); return err },
		"nil dialect": func() error { _, err := outbox.New(db, nil, outbox.Options{}); return err },
		"bad table": func() error {
			_, err := outbox.New(db, outbox.Postgres, outbox.Options{Table: "x; DROP TABLE y"})
			return err
		},
		"negative size": func() error {
			_, err := outbox.New(db, outbox.Postgres, outbox.Options{MaxMessageSize: -1})
			return err
		},
		"nil publisher": func() error {
			ob, _ := outbox.New(db, outbox.Postgres, outbox.Options{})
			_, err := outbox.NewRelay(ob, nil, outbox.RelayOptions{})
			return err
		},
		"huge batch": func() error {
			ob, _ := outbox.New(db, outbox.Postgres, outbox.Options{})
			_, err := outbox.NewRelay(ob, (*broker.Publisher)(nil), outbox.RelayOptions{BatchSize: 5000})
			return err
		},
	} {
		if err := f(); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("%s: %v, want an InvalidArgument error", name, err)
		}
	}
}

func TestAddRefusesBadInputBeforeWriting(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		db, ob := newOutbox(t, d, outbox.Options{MaxMessageSize: 100})
		ctx := context.Background()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		for name, err := range map[string]error{
			"nil tx":       ob.Add(ctx, nil, "t", &broker.Message{}),
			"empty topic":  ob.Add(ctx, tx, "", &broker.Message{}),
			"nil message":  ob.Add(ctx, tx, "t", &broker.Message{}, nil),
			"bad topic":    ob.Add(ctx, tx, "t\xff", &broker.Message{}),
			"bad header":   ob.Add(ctx, tx, "t", &broker.Message{Headers: map[string]string{"h": "\xff"}}),
			"over the max": ob.Add(ctx, tx, "t", &broker.Message{Payload: make([]byte, 101)}),
		} {
			if broker.KindOf(err) != semantics.InvalidArgument {
				t.Errorf("%s: %v, want an InvalidArgument error", name, err)
			}
		}
		if err := ob.Add(ctx, tx, "t", &broker.Message{Payload: make([]byte, 101)}); !errors.Is(err, broker.ErrTooLarge) {
			t.Errorf("oversize: %v, want ErrTooLarge", err)
		}
		// The transaction is still usable: nothing was sent to the database.
		if err := ob.Add(ctx, tx, "t", &broker.Message{Payload: []byte("ok")}); err != nil {
			t.Fatalf("a good message after refused ones: %v", err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if s, err := ob.Stats(ctx); err != nil || s.Depth != 1 {
			t.Fatalf("depth %d (%v), want 1: only the good message was written", s.Depth, err)
		}
	})
}

func TestNotMigrated(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		db := d.open(t)
		ob, err := outbox.New(db, d.dialect, outbox.Options{Table: unique("qktest_missing")})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if err := ob.Add(ctx, tx, "t", &broker.Message{}); !errors.Is(err, outbox.ErrNotMigrated) {
			t.Errorf("Add before Migrate: %v, want ErrNotMigrated", err)
		}
		r := newRelay(t, ob, &faultyPublisher{}, outbox.RelayOptions{})
		if err := r.Run(ctx); !errors.Is(err, outbox.ErrNotMigrated) {
			t.Errorf("Run before Migrate: %v, want ErrNotMigrated", err)
		}
	})
}

// Migrate runs again (another process starting) without error or change.
func TestMigrateTwice(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		_, ob := newOutbox(t, d, outbox.Options{Shards: 4})
		if err := ob.Migrate(context.Background()); err != nil {
			t.Fatal(err)
		}
		s, err := ob.Stats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Shards) != 4 {
			t.Fatalf("%d shards after two migrations, want 4", len(s.Shards))
		}
	})
}

// The package documentation shows the SQL that Migrate runs.
func TestDocShowsTheSchema(t *testing.T) {
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	space := regexp.MustCompile(`\s+`)
	norm := func(s string) string { return space.ReplaceAllString(s, " ") }
	doc := norm(strings.ReplaceAll(string(b), "//", ""))
	for _, d := range []outbox.Dialect{outbox.Postgres, outbox.MySQL} {
		ob, err := outbox.New(&sql.DB{}, d, outbox.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ob.Schema() {
			if !strings.Contains(doc, norm(s)+";") {
				t.Errorf("doc.go does not show the %s statement:\n%s", d.Name(), s)
			}
		}
	}
}

// A rolled-back transaction publishes nothing; a committed one publishes
// every message once, with its ID, key, payload and headers.
func TestRollbackPublishesNothing(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		for _, bn := range brokerNames {
			t.Run(bn, func(t *testing.T) {
				e := openBroker(t, bn)
				db, ob := newOutbox(t, d, outbox.Options{})
				topic := unique("qktest_rollback")
				got := consume(t, e, topic)
				ctx := context.Background()
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				for i := range 5 {
					if err := ob.Add(ctx, tx, topic, &broker.Message{ID: fmt.Sprint("rolled-back-", i), Key: "k"}); err != nil {
						t.Fatal(err)
					}
				}
				if err := tx.Rollback(); err != nil {
					t.Fatal(err)
				}
				var want []*broker.Message
				for i := range 20 {
					want = append(want, &broker.Message{Key: "k" + strconv.Itoa(i%3), Payload: []byte{byte(i), 0, 0xff},
						Headers: map[string]string{"n": strconv.Itoa(i), "ü": "€"}})
				}
				want = append(want, &broker.Message{}) // no key, no payload, no headers
				for i := 0; i < len(want); i += 7 {
					addTx(t, db, ob, topic, want[i:min(i+7, len(want))]...)
				}
				for _, m := range want {
					if m.ID == "" {
						t.Fatal("Add left a message without an ID")
					}
				}
				runRelay(t, newRelay(t, ob, e.pub, outbox.RelayOptions{}))
				waitDrained(t, ob, 30*time.Second)
				got.waitFor(t, 30*time.Second, "every committed message", func(ms []*broker.Message) bool { return len(ms) >= len(want) })
				msgs, _ := got.snapshot()
				byID := map[string]*broker.Message{}
				for _, m := range msgs {
					if byID[m.ID] != nil {
						t.Errorf("message %s received twice", m.ID)
					}
					byID[m.ID] = m
				}
				for _, w := range want {
					m := byID[w.ID]
					switch {
					case m == nil:
						t.Errorf("message %s was not published", w.ID)
					case m.Key != w.Key || string(m.Payload) != string(w.Payload) || fmt.Sprint(userHeaders(m)) != fmt.Sprint(userHeaders(w)):
						t.Errorf("message %s arrived as key %q payload %x headers %v, want %q %x %v",
							w.ID, m.Key, m.Payload, userHeaders(m), w.Key, w.Payload, userHeaders(w))
					}
				}
				if len(msgs) != len(want) {
					t.Errorf("%d messages received, want %d (the rolled-back ones must not be)", len(msgs), len(want))
				}
			})
		}
	})
}

func userHeaders(m *broker.Message) map[string]string {
	h := map[string]string{}
	for k, v := range m.Headers {
		if !strings.HasPrefix(k, broker.HeaderPrefix) && k != "x-delivery-count" {
			h[k] = v
		}
	}
	return h
}

// Two relays publish concurrently through publishers that refuse random
// parts of random batches; every key's messages still arrive exactly once
// each, in the order they were added.
func TestPerKeyOrderWithTwoRelaysAndFailures(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		for _, bn := range brokerNames {
			t.Run(bn, func(t *testing.T) {
				e := openBroker(t, bn)
				db, ob := newOutbox(t, d, outbox.Options{Shards: 8})
				topic := unique("qktest_order")
				got := consume(t, e, topic)
				const keys, perKey = 24, 25
				var relays []*faultyPublisher
				for i := range 2 {
					var mu sync.Mutex
					rnd := rand.New(rand.NewPCG(uint64(i), 7))
					f := &faultyPublisher{pub: e.pub, fail: func(n int) []int {
						mu.Lock()
						defer mu.Unlock()
						if rnd.IntN(4) != 0 {
							return nil
						}
						var idx []int
						for j := range n {
							if rnd.IntN(3) == 0 {
								idx = append(idx, j)
							}
						}
						return idx
					}}
					relays = append(relays, f)
					runRelay(t, newRelay(t, ob, f, outbox.RelayOptions{ID: fmt.Sprint("relay-", i), Workers: 3, BatchSize: 16}))
				}
				// Producers add while the relays run: 4 writers, each owning
				// 6 keys, 1 to 3 messages of various keys per transaction.
				var wg sync.WaitGroup
				for w := range 4 {
					wg.Go(func() {
						next := make([]int, keys)
						rnd := rand.New(rand.NewPCG(uint64(w), 1))
						for left := 6 * perKey; left > 0; {
							var batch []*broker.Message
							for range min(1+rnd.IntN(3), left) {
								k := w + 4*rnd.IntN(6)
								for next[k] == perKey {
									k = w + 4*rnd.IntN(6)
								}
								batch = append(batch, &broker.Message{Key: fmt.Sprint("key-", k), Payload: []byte(strconv.Itoa(next[k]))})
								next[k]++
								left--
							}
							addTx(t, db, ob, topic, batch...)
						}
					})
				}
				wg.Wait()
				got.waitFor(t, 60*time.Second, "every message", func(ms []*broker.Message) bool { return len(ms) >= keys*perKey })
				msgs, _ := got.snapshot()
				seen := map[string][]int{}
				for _, m := range msgs {
					n, _ := strconv.Atoi(string(m.Payload))
					seen[m.Key] = append(seen[m.Key], n)
				}
				for k := range keys {
					key := fmt.Sprint("key-", k)
					s := seen[key]
					for i, n := range s {
						if n != i {
							t.Fatalf("%s arrived as %v, want 0..%d in order, each once", key, s, perKey-1)
						}
					}
					if len(s) != perKey {
						t.Fatalf("%s: %d messages, want %d", key, len(s), perKey)
					}
				}
				for i, f := range relays {
					p, refused, calls := f.stats()
					t.Logf("relay %d: %d published, %d refused, %d calls", i, p, refused, calls)
					if p == 0 || refused == 0 {
						t.Errorf("relay %d published %d and had %d refused: both relays must publish and fail for the test to mean anything", i, p, refused)
					}
				}
			})
		}
	})
}

// AddAt holds a message until its time: never published early, and its
// key's later messages do not wait for it.
func TestAddAtIsNeverEarly(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		e := openBroker(t, "memory")
		db, ob := newOutbox(t, d, outbox.Options{})
		topic := unique("qktest_at")
		got := consume(t, e, topic)
		var mu sync.Mutex
		firstPublished := map[string]time.Time{}
		pub := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
			now := time.Now()
			mu.Lock()
			for _, m := range msgs {
				if _, ok := firstPublished[m.ID]; !ok {
					firstPublished[m.ID] = now
				}
			}
			mu.Unlock()
			return e.pub.Publish(ctx, topic, msgs...)
		})
		ctx := context.Background()
		due := map[string]time.Time{}
		start := time.Now()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i, delay := range []time.Duration{time.Second, 1300 * time.Millisecond, 1600 * time.Millisecond} {
			at := start.Add(delay)
			m := &broker.Message{Key: "k", ID: fmt.Sprint("held-", i)}
			if err := ob.AddAt(ctx, tx, at, topic, m); err != nil {
				t.Fatal(err)
			}
			due[m.ID] = at
		}
		if err := ob.Add(ctx, tx, topic, &broker.Message{Key: "k", ID: "now"}); err != nil {
			t.Fatal(err)
		}
		if err := ob.AddAt(ctx, tx, start.Add(-time.Hour), topic, &broker.Message{Key: "k", ID: "past"}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if s, err := ob.Stats(ctx); err != nil || s.Depth != 5 || s.Held != 3 {
			t.Fatalf("stats before the relay runs: %+v (%v), want depth 5, 3 held", s, err)
		}
		runRelay(t, newRelay(t, ob, pub, outbox.RelayOptions{}))
		got.waitFor(t, 30*time.Second, "every message", func(ms []*broker.Message) bool { return len(ms) >= 5 })
		msgs, at := got.snapshot()
		var order []string
		for i, m := range msgs {
			order = append(order, m.ID)
			mu.Lock()
			pubAt := firstPublished[m.ID]
			mu.Unlock()
			if d, ok := due[m.ID]; ok && (pubAt.Before(d) || at[i].Before(d)) {
				t.Errorf("%s published %v and received %v before its time", m.ID, d.Sub(pubAt), d.Sub(at[i]))
			}
		}
		if want := "now past held-0 held-1 held-2"; strings.Join(order, " ") != want {
			t.Errorf("arrival order %v, want %s: due messages first, held ones at their time", order, want)
		}
		mu.Lock()
		defer mu.Unlock()
		if !firstPublished["now"].Before(due["held-0"]) {
			t.Errorf("the due message waited for the held one before it (published %v after start)", firstPublished["now"].Sub(start))
		}
	})
}

type publisherFunc func(ctx context.Context, topic string, msgs ...*broker.Message) error

func (f publisherFunc) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	return f(ctx, topic, msgs...)
}

// A topic nobody subscribed to fails with NotFound on RabbitMQ: the relay
// keeps the messages, backs the shard off, and publishes them once the
// topic has a queue. Other topics keep flowing meanwhile.
func TestFailedPublishHoldsTheShard(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		e := openBroker(t, "rabbitmq")
		db, ob := newOutbox(t, d, outbox.Options{Shards: 4})
		missing, fine := unique("qktest_nf"), unique("qktest_ok")
		okGot := consume(t, e, fine)
		errs := make(chan error, 100)
		r := newRelay(t, ob, e.pub, outbox.RelayOptions{MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
			OnError: func(err error) {
				select {
				case errs <- err:
				default:
				}
			}})
		var msgs []*broker.Message
		for i := range 10 {
			msgs = append(msgs, &broker.Message{Key: "same", Payload: []byte(strconv.Itoa(i))})
		}
		addTx(t, db, ob, missing, msgs...)
		runRelay(t, r)
		var err error
		for range 3 { // three failed rounds: retried with backoff, never dropped
			err = <-errs
		}
		if broker.KindOf(err) != semantics.NotFound {
			t.Fatalf("publish to a topic without a queue: %v, want NotFound", err)
		}
		addTx(t, db, ob, fine, &broker.Message{Key: "other"})
		okGot.waitFor(t, 30*time.Second, "a message of another topic while the first is failing", func(ms []*broker.Message) bool { return len(ms) == 1 })
		var s outbox.Stats
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) { // polling the database
			var err error
			if s, err = ob.Stats(context.Background()); err != nil {
				t.Fatal(err)
			}
			if s.Depth <= 10 || time.Now().After(deadline) {
				break
			}
		}
		failing := 0
		for _, sh := range s.Shards {
			if sh.Failures > 0 {
				failing++
				if !strings.Contains(sh.LastError, "not") || sh.Relay != r.ID() {
					t.Errorf("failing shard %+v: want the relay's ID and the error", sh)
				}
			}
		}
		if s.Depth != 10 || failing != 1 {
			t.Fatalf("stats while failing: depth %d, %d failing shards; want 10 and 1", s.Depth, failing)
		}
		got := consume(t, e, missing) // declares the queue
		got.waitFor(t, 30*time.Second, "the held messages once the topic has a queue", func(ms []*broker.Message) bool { return len(ms) >= 10 })
		ms, _ := got.snapshot()
		for i, m := range ms {
			if string(m.Payload) != strconv.Itoa(i) {
				t.Fatalf("message %d has payload %q: order broken after the failures", i, m.Payload)
			}
		}
		waitDrained(t, ob, 10*time.Second)
	})
}

// The relay holds a shard's lock while it publishes; the application's
// inserts into that shard never wait for it.
func TestAddDoesNotWaitForTheRelay(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		db, ob := newOutbox(t, d, outbox.Options{Shards: 1})
		entered, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		pub := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
			once.Do(func() { close(entered) })
			<-release
			return nil
		})
		addTx(t, db, ob, "t", &broker.Message{Key: "a"})
		r := newRelay(t, ob, pub, outbox.RelayOptions{Workers: 1})
		runRelay(t, r)
		defer close(release)
		<-entered
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := ob.Add(ctx, tx, "t", &broker.Message{Key: "a"}); err != nil {
			t.Fatalf("Add while the relay holds the shard: %v", err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatalf("commit while the relay holds the shard: %v", err)
		}
	})
}

// Stats report depth, oldest age, kept sent messages and the relays; the
// cleanup deletes sent messages after Retention; a stopped relay leaves the
// relays table.
func TestStatsAndCleanup(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		db, ob := newOutbox(t, d, outbox.Options{Shards: 2})
		ctx := context.Background()
		addTx(t, db, ob, "t", &broker.Message{Key: "a"}, &broker.Message{Key: "b"})
		time.Sleep(50 * time.Millisecond) // let the messages age
		s, err := ob.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Depth != 2 || s.Held != 0 || s.OldestAge < 50*time.Millisecond || s.OldestAge > time.Minute || s.Sent != 0 || len(s.Relays) != 0 {
			t.Fatalf("before any relay: %+v", s)
		}
		var published sync.WaitGroup
		published.Add(2)
		pub := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
			for range msgs {
				published.Done()
			}
			return nil
		})
		// Kept: sent messages stay until cleanup.
		rctx, stop := context.WithCancel(ctx)
		r := newRelay(t, ob, pub, outbox.RelayOptions{ID: "keeper", Retention: time.Hour})
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		published.Wait()
		waitDrained(t, ob, 10*time.Second)
		s, err = ob.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.Depth != 0 || s.OldestAge != 0 || s.Sent != 2 || len(s.Relays) != 1 || s.Relays[0].ID != "keeper" || s.Relays[0].SeenAgo > time.Minute {
			t.Fatalf("after publishing with retention: %+v", s)
		}
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if s, _ := ob.Stats(ctx); len(s.Relays) != 0 {
			t.Fatalf("a stopped relay is still listed: %+v", s.Relays)
		}
		// Cleaned: a relay with a short retention deletes them.
		r = newRelay(t, ob, pub, outbox.RelayOptions{ID: "cleaner", Retention: time.Millisecond, CleanupInterval: 20 * time.Millisecond})
		runRelay(t, r)
		deadline := time.Now().Add(10 * time.Second)
		for {
			s, err := ob.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if s.Sent == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sent messages not cleaned up: %+v", s)
			}
			time.Sleep(20 * time.Millisecond) // polling the database
		}
	})
}

// With DeleteWhenSent nothing is kept.
func TestDeleteWhenSent(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		e := openBroker(t, "memory")
		db, ob := newOutbox(t, d, outbox.Options{})
		got := consume(t, e, "t")
		addTx(t, db, ob, "t", &broker.Message{Key: "a"}, &broker.Message{Key: "a"})
		runRelay(t, newRelay(t, ob, e.pub, outbox.RelayOptions{Retention: outbox.DeleteWhenSent}))
		got.waitFor(t, 10*time.Second, "both messages", func(ms []*broker.Message) bool { return len(ms) == 2 })
		waitDrained(t, ob, 10*time.Second)
		var n int
		if err := db.QueryRow("SELECT COUNT(*) FROM " + ob.Tables().Messages).Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d rows left (%v), want 0", n, err)
		}
	})
}

// A publish that hangs is cut at Timeout; the shard records the failure
// and backs off, and the batch is published later.
func TestPublishTimeout(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		db, ob := newOutbox(t, d, outbox.Options{Shards: 1})
		var calls atomic.Int32
		published := make(chan []*broker.Message, 1)
		pub := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
			if calls.Add(1) == 1 {
				<-ctx.Done() // a broker that never answers
				return ctx.Err()
			}
			published <- msgs
			return nil
		})
		errs := make(chan error, 10)
		r := newRelay(t, ob, pub, outbox.RelayOptions{Timeout: 200 * time.Millisecond, OnError: func(err error) {
			select {
			case errs <- err:
			default:
			}
		}})
		addTx(t, db, ob, "t", &broker.Message{Key: "a"}, &broker.Message{Key: "b"})
		runRelay(t, r)
		if err := <-errs; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("first batch: %v, want a deadline error recorded on the shard", err)
		}
		select {
		case msgs := <-published:
			if len(msgs) != 2 {
				t.Fatalf("republished %d messages, want 2", len(msgs))
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the batch was not published after the timeout")
		}
		waitDrained(t, ob, 10*time.Second)
	})
}

// While a relay's Workers batches are being published, it reads the next
// ones (each in its own transaction, holding its shard), so the broker does
// not wait for the database; and it never has more than Workers ×
// BatchSize messages being published at once.
func TestRelayReadsAheadWhilePublishing(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		db, ob := newOutbox(t, d, outbox.Options{Shards: 4})
		ctx := context.Background()
		// One message in each shard.
		byShard := map[int]string{}
		for i := 0; len(byShard) < 4; i++ {
			k := fmt.Sprint("key-", i)
			if _, ok := byShard[outbox.Shard(k, "", 4)]; !ok {
				byShard[outbox.Shard(k, "", 4)] = k
			}
		}
		for _, k := range byShard {
			addTx(t, db, ob, "t", &broker.Message{Key: k})
		}
		var inFlight, maxInFlight, published atomic.Int32
		first, release := make(chan string, 1), make(chan struct{})
		allDone := make(chan struct{})
		pub := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
			n := inFlight.Add(int32(len(msgs)))
			defer inFlight.Add(-int32(len(msgs)))
			for {
				m := maxInFlight.Load()
				if n <= m || maxInFlight.CompareAndSwap(m, n) {
					break
				}
			}
			select {
			case first <- msgs[0].Key: // the first call waits
				<-release
			default:
			}
			if published.Add(int32(len(msgs))) == 4 {
				close(allDone)
			}
			return nil
		})
		runRelay(t, newRelay(t, ob, pub, outbox.RelayOptions{Workers: 1, BatchSize: 1, PollInterval: 10 * time.Millisecond}))
		var releaseOnce sync.Once
		unblock := func() { releaseOnce.Do(func() { close(release) }) }
		t.Cleanup(unblock) // before the relay's, which waits for the batch
		blocked := <-first
		// While the one publishing worker waits, the relay locks a
		// second shard: another transaction cannot take it.
		lockedOther := func() bool {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			free := 0
			for s, k := range byShard {
				if k == blocked {
					continue
				}
				var one int
				err := tx.QueryRowContext(ctx, d.dialect.Rebind("SELECT 1 FROM "+ob.Tables().Shards+" WHERE shard = ? FOR UPDATE SKIP LOCKED"), s).Scan(&one)
				if err == nil {
					free++
				} else if !errors.Is(err, sql.ErrNoRows) {
					t.Fatal(err)
				}
			}
			return free < len(byShard)-1
		}
		deadline := time.Now().Add(10 * time.Second)
		for !lockedOther() {
			if time.Now().After(deadline) {
				t.Fatal("no other shard was locked while the first batch was being published")
			}
			time.Sleep(5 * time.Millisecond) // polling the database, not waiting for a goroutine
		}
		unblock()
		select {
		case <-allDone:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of 4 messages published", published.Load())
		}
		if m := maxInFlight.Load(); m != 1 {
			t.Fatalf("%d messages were being published at once, want at most Workers × BatchSize = 1", m)
		}
	})
}

// connector counts the connections database/sql opens.
type connector struct {
	driver.Connector
	opened atomic.Int32
}

func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	c.opened.Add(1)
	return c.Connector.Connect(ctx)
}

// A busy relay keeps its workers' connections: with database/sql's
// default of two idle connections, taking one from the pool per batch
// would close and reopen most of them.
func TestRelayKeepsItsConnections(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		db, ob := newOutbox(t, d, outbox.Options{})
		msgs := make([]*broker.Message, 4000)
		for i := range msgs {
			msgs[i] = &broker.Message{Key: fmt.Sprint("key-", i%200)}
		}
		for i := 0; i < len(msgs); i += 500 {
			addTx(t, db, ob, "t", msgs[i:i+500]...)
		}
		dc, ok := db.Driver().(driver.DriverContext)
		if !ok {
			t.Skipf("%s's driver has no connector", d.name)
		}
		inner, err := dc.OpenConnector(d.dsn(t))
		if err != nil {
			t.Fatal(err)
		}
		c := &connector{Connector: inner}
		cdb := sql.OpenDB(c) // the default pool: at most two idle connections
		defer cdb.Close()
		cob, err := outbox.New(cdb, d.dialect, outbox.Options{Table: ob.Tables().Messages})
		if err != nil {
			t.Fatal(err)
		}
		const workers = 4
		pub := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
			time.Sleep(time.Millisecond) // a broker's confirmation: workers overlap
			return nil
		})
		runRelay(t, newRelay(t, cob, pub, outbox.RelayOptions{Workers: workers, BatchSize: 20,
			PollInterval: time.Second})) // no worker is idle for that long while there is work
		waitDrained(t, ob, 30*time.Second)
		// 2 × Workers workers, and the heartbeat, cleanup and Stats
		// between them; 200 batches.
		if n := c.opened.Load(); n > 2*workers+3 {
			t.Fatalf("the relay opened %d connections for 200 batches, want at most %d", n, 2*workers+3)
		}
	})
}
