package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/outbox"
)

// mysqlURL turns a go-sql-driver DSN into the mysql:// URL the command takes.
func mysqlURL(t *testing.T, dsn string) string {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		t.Fatal(err)
	}
	user := cfg.User
	if cfg.Passwd != "" {
		user += ":" + cfg.Passwd
	}
	return "mysql://" + user + "@" + cfg.Addr + "/" + cfg.DBName
}

func TestOutboxStatus(t *testing.T) {
	for _, tc := range []struct {
		name, driver string
		dsn          func(t *testing.T) (driverDSN, url string)
		dialect      outbox.Dialect
	}{
		{"postgres", "pgx", func(t *testing.T) (string, string) { d := testenv.Postgres(t); return d, d }, outbox.Postgres},
		{"mariadb", "mysql", func(t *testing.T) (string, string) { d := testenv.MariaDB(t); return d, mysqlURL(t, d) }, outbox.MySQL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dsn, dbURL := tc.dsn(t)
			db, err := sql.Open(tc.driver, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			table := fmt.Sprintf("qktest_cli_%d", time.Now().UnixNano())
			ob, err := outbox.New(db, tc.dialect, outbox.Options{Table: table, Shards: 4})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				for _, n := range []string{table, table + "_shards", table + "_relays"} {
					_, _ = db.Exec("DROP TABLE IF EXISTS " + n)
				}
			}()
			if err := ob.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := ob.Add(ctx, tx, "orders", &broker.Message{Key: "a"}, &broker.Message{Key: "a"}); err != nil {
				t.Fatal(err)
			}
			if err := ob.AddAt(ctx, tx, time.Now().Add(time.Hour), "orders", &broker.Message{Key: "b"}); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			// A relay whose broker refuses everything: its shard backs off.
			failed := make(chan struct{}, 1)
			r, err := outbox.NewRelay(ob, refuse{}, outbox.RelayOptions{ID: "relay-under-test", PollInterval: 10 * time.Millisecond,
				OnError: func(error) {
					select {
					case failed <- struct{}{}:
					default:
					}
				}})
			if err != nil {
				t.Fatal(err)
			}
			rctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- r.Run(rctx) }()
			defer func() { stop(); <-done }()
			<-failed

			c := newCLI(t)
			out, _, err := c.run("", "outbox", "status", "-db", dbURL, "-table", table)
			if err != nil {
				t.Fatalf("outbox status: %v", err)
			}
			for _, want := range []string{
				"outbox       " + table + " (" + tc.dialect.Name() + ")",
				"depth        3",
				"(1 held for later)",
				"shards       4",
				"(1 in backoff after a failed publish)",
				"relays seen  1",
				"relay-under-test",
				"broker says no",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("status lacks %q:\n%s", want, out)
				}
			}
			out, _, err = c.run("", "outbox", "status", "-db", dbURL, "-table", table, "-json")
			var s outbox.Stats
			if err != nil || json.Unmarshal([]byte(out), &s) != nil || s.Depth != 3 || len(s.Relays) != 1 {
				t.Fatalf("status -json: %v\n%s", err, out)
			}
		})
	}
}

type refuse struct{}

func (refuse) Publish(context.Context, string, ...*broker.Message) error {
	return errors.New("broker says no")
}

func TestOutboxStatusUsage(t *testing.T) {
	c := newCLI(t)
	for _, args := range [][]string{
		{"outbox"},
		{"outbox", "stat"},
		{"outbox", "status"}, // no -db
	} {
		if _, _, err := c.run("", args...); !errors.Is(err, errUsage) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	if _, _, err := c.run("", "outbox", "status", "-db", "redis://127.0.0.1"); err == nil || !strings.Contains(err.Error(), "postgres://") {
		t.Errorf("an unknown scheme: %v", err)
	}
	// Nothing listens on port 1: the error must not show the password.
	for _, u := range []string{"postgres://u:sekrit@127.0.0.1:1/x?connect_timeout=2", "mysql://u:sekrit@127.0.0.1:1/x?timeout=2s"} {
		_, _, err := c.run("", "outbox", "status", "-db", u)
		if err == nil || strings.Contains(err.Error(), "sekrit") {
			t.Errorf("%s: %v; want an error without the password", u, err)
		}
	}
}
