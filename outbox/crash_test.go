package outbox_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/middleware/dedupe/pgstore"
	"github.com/queuekit/queuekit/outbox"
)

// crashChildEnv makes the test binary run crashChild instead of the tests.
const crashChildEnv = "QUEUEKIT_OUTBOX_CRASH_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		if err := crashChild(); err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashChild runs a relay over RabbitMQ that, after each Publish the broker
// confirmed and before the relay records it, prints "published N" and
// waits for a line on stdin: the parent kills it there, or lets it go on.
func crashChild() error {
	ctx := context.Background()
	d := databases[0]
	if os.Getenv("QK_DIALECT") == "mysql" {
		d = databases[1]
	}
	db, err := sql.Open(d.driver, os.Getenv("QK_DSN"))
	if err != nil {
		return err
	}
	ob, err := outbox.New(db, d.dialect, outbox.Options{Table: os.Getenv("QK_TABLE")})
	if err != nil {
		return err
	}
	b, err := rabbitmq.Dial(ctx, os.Getenv("QK_AMQP"), rabbitmq.Options{})
	if err != nil {
		return err
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	in := bufio.NewReader(os.Stdin)
	gate := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
		if err := pub.Publish(ctx, topic, msgs...); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf("published %d\n", len(msgs))
		if _, err := in.ReadString('\n'); err != nil {
			os.Exit(3) // the parent is gone
		}
		return nil
	})
	r, err := outbox.NewRelay(ob, gate, outbox.RelayOptions{Workers: 1, BatchSize: 10, PollInterval: 10 * time.Millisecond,
		OnError: func(err error) { fmt.Fprintln(os.Stderr, err) }})
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// The relay runs in a child process that is killed with SIGKILL between a
// confirmed publish and its record in the outbox, again and again; then a
// relay drains the rest. Nothing is lost; the killed batches are published
// again (duplicates), and a consumer behind the transactional inbox handles
// every message exactly once.
func TestCrashBetweenPublishAndMark(t *testing.T) {
	forEachDB(t, func(t *testing.T, d database) {
		ctx := context.Background()
		amqpURL := testenv.RabbitMQ(t)
		e := openBroker(t, "rabbitmq")
		db, ob := newOutbox(t, d, outbox.Options{Shards: 8})
		topic := unique("qktest_crash")
		sub, err := e.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "inbox"}) // the queue, before publishing
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close(ctx)

		const n = 500
		for i := 0; i < n; i += 10 {
			var batch []*broker.Message
			for j := i; j < i+10; j++ {
				batch = append(batch, &broker.Message{ID: fmt.Sprint("m-", j), Key: fmt.Sprint("key-", j%200)}) // a batch is mostly one Publish call
			}
			addTx(t, db, ob, topic, batch...)
		}

		const rounds = 6
		confirmed := 0
		for round := range rounds {
			killAfter := 2 + rand.IntN(3) // the first ones are recorded: the next batch is read after
			confirmed += runAndKill(t, d, ob, amqpURL, topic, killAfter)
			t.Logf("round %d: killed after publish %d", round, killAfter)
		}
		if s, err := ob.Stats(ctx); err != nil || s.Depth == 0 || s.Depth == n {
			t.Fatalf("after the crashes: depth %d (%v); want some published, some not", s.Depth, err)
		}
		var drained atomic.Int64
		counting := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
			err := e.pub.Publish(ctx, topic, msgs...)
			if err == nil {
				drained.Add(int64(len(msgs)))
			}
			return err
		})
		r := newRelay(t, ob, counting, outbox.RelayOptions{})
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		waitDrained(t, ob, 60*time.Second)
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// A sentinel after everything: the queue is FIFO and the consumer
		// runs one handler at a time, so when it arrives every copy has.
		if err := e.pub.Publish(ctx, topic, &broker.Message{ID: "sentinel"}); err != nil {
			t.Fatal(err)
		}

		pool, err := pgxpool.New(ctx, testenv.Postgres(t))
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		handled, inboxTable := unique("qktest_handled"), unique("qktest_inbox")
		defer pool.Exec(ctx, "DROP TABLE IF EXISTS "+handled+", "+inboxTable)
		if _, err := pool.Exec(ctx, "CREATE TABLE "+handled+" (id text NOT NULL)"); err != nil {
			t.Fatal(err)
		}
		var dups atomic.Int64
		in, err := pgstore.NewInbox(ctx, pool, pgstore.InboxOptions{Table: inboxTable, OnDuplicate: func(*broker.Message) { dups.Add(1) }})
		if err != nil {
			t.Fatal(err)
		}
		sentinel := make(chan struct{})
		h := in.Handler(func(ctx context.Context, tx pgx.Tx, m *broker.Message) error {
			if m.ID == "sentinel" {
				close(sentinel)
				return nil
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+handled+" (id) VALUES ($1)", m.ID)
			return err
		})
		cctx, cancel := context.WithCancel(ctx)
		consumed := make(chan error, 1)
		go func() { consumed <- broker.Consume(cctx, sub, h, broker.ConsumeOptions{}) }()
		select {
		case <-sentinel:
		case <-time.After(60 * time.Second):
			t.Fatal("the sentinel did not arrive within 60s")
		}
		cancel()
		if err := <-consumed; err != nil {
			t.Fatal(err)
		}
		var rows, distinct, ours int
		if err := pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE id LIKE 'm-%') FROM "+handled).
			Scan(&rows, &distinct, &ours); err != nil {
			t.Fatal(err)
		}
		t.Logf("%d rounds killed; %d copies confirmed before the kills, %d by the final relay; %d duplicates skipped by the inbox; %d handled",
			rounds, confirmed, drained.Load(), dups.Load(), rows)
		if rows != n || distinct != n || ours != n {
			t.Fatalf("%d rows for %d distinct messages, want %d and %d: lost or handled twice", rows, distinct, n, n)
		}
		if dups.Load() < rounds {
			t.Fatalf("%d duplicates for %d kills between publish and record: every kill must cause at least one", dups.Load(), rounds)
		}
		if got := int64(confirmed) + drained.Load(); got < n+rounds {
			t.Fatalf("%d copies published, want at least %d (every message plus one per kill)", got, n+rounds)
		}
	})
}

// runAndKill starts the child relay, lets killAfter-1 confirmed publishes
// be recorded, and kills it with SIGKILL right after the killAfter-th
// confirmation, before the relay records it. It returns how many messages
// the child reported confirmed.
func runAndKill(t *testing.T, d database, ob *outbox.Outbox, amqpURL, topic string, killAfter int) int {
	t.Helper()
	dialect := "postgres"
	if d.dialect == outbox.MySQL {
		dialect = "mysql"
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1", "QK_DIALECT="+dialect, "QK_DSN="+d.dsn(t),
		"QK_TABLE="+ob.Tables().Messages, "QK_AMQP="+amqpURL)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	kill := func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		for range lines { // drain, so the reader ends
		}
		_ = cmd.Wait()
	}
	confirmed := 0
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	for i := 1; ; i++ {
		select {
		case line, ok := <-lines:
			if !ok {
				_ = cmd.Wait()
				t.Fatalf("the child relay exited before publish %d: %s", i, stderr.String())
			}
			k, err := strconv.Atoi(strings.TrimPrefix(line, "published "))
			if err != nil {
				kill()
				t.Fatalf("child said %q", line)
			}
			confirmed += k
			if i == killAfter {
				kill()
				return confirmed
			}
			if _, err := io.WriteString(stdin, "\n"); err != nil {
				kill()
				t.Fatal(err)
			}
		case <-timeout.C:
			kill()
			t.Fatalf("the child relay published nothing for 60s: %s", stderr.String())
		}
	}
}
