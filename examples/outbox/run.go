package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe/pgstore"
	"github.com/queuekit/queuekit/outbox"
)

type config struct {
	DSN    string // PostgreSQL URL
	Broker string // broker URL
	Name   string // prefix of the example's tables and topic
	Orders int
}

// reminderDelay is how long the outbox holds the payment reminder.
const reminderDelay = 300 * time.Millisecond

var errDeclined = errors.New("card declined")

func run(ctx context.Context, cfg config, out io.Writer) (err error) {
	db, err := sql.Open("pgx", cfg.DSN)
	if err != nil {
		return err
	}
	defer db.Close()
	pool, err := pgxpool.New(ctx, cfg.DSN)
	if err != nil {
		return err
	}
	defer pool.Close()
	ordersT, shipmentsT := cfg.Name+"_orders", cfg.Name+"_shipments"
	ob, err := outbox.New(db, outbox.Postgres, outbox.Options{Table: cfg.Name + "_outbox"})
	if err != nil {
		return err
	}
	inboxT := cfg.Name + "_inbox"
	defer func() { // the example leaves nothing behind
		t := ob.Tables()
		for _, name := range []string{ordersT, shipmentsT, inboxT, t.Messages, t.Shards, t.Relays} {
			_, _ = db.ExecContext(context.WithoutCancel(ctx), "DROP TABLE IF EXISTS "+name)
		}
	}()

	// The schema: the application's tables, then the outbox's (an explicit
	// migration: Add never creates anything).
	for _, q := range []string{
		"CREATE TABLE " + ordersT + " (id text PRIMARY KEY, total_cents bigint NOT NULL)",
		"CREATE TABLE " + shipmentsT + " (order_id text PRIMARY KEY, shipped_at timestamptz NOT NULL DEFAULT now())",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	if err := ob.Migrate(ctx); err != nil {
		return err
	}

	b, err := broker.Open(ctx, cfg.Broker)
	if err != nil {
		return err
	}
	defer b.Close(context.WithoutCancel(ctx))
	topic := cfg.Name + ".orders"
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "shipping"})
	if err != nil {
		return err
	}
	defer sub.Close(context.WithoutCancel(ctx))
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		return err
	}
	defer pub.Close(context.WithoutCancel(ctx))

	// The relay: in this process here; usually one or more processes of its own.
	var published atomic.Int64
	counting := publisherFunc(func(ctx context.Context, topic string, msgs ...*broker.Message) error {
		err := pub.Publish(ctx, topic, msgs...)
		if err == nil {
			published.Add(int64(len(msgs)))
		}
		return err
	})
	relay, err := outbox.NewRelay(ob, counting, outbox.RelayOptions{PollInterval: 20 * time.Millisecond})
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(runCtx) }()

	// The shipping service: one shipment per order, through the inbox.
	var duplicates atomic.Int64
	inbox, err := pgstore.NewInbox(ctx, pool, pgstore.InboxOptions{Table: inboxT,
		OnDuplicate: func(*broker.Message) { duplicates.Add(1) }})
	if err != nil {
		return err
	}
	reminded := make(chan time.Time, 1)
	ship := inbox.Handler(func(ctx context.Context, tx pgx.Tx, m *broker.Message) error {
		if m.Header("type") == "order.payment-reminder" {
			reminded <- time.Now()
			return nil
		}
		_, err := tx.Exec(ctx, "INSERT INTO "+shipmentsT+" (order_id) VALUES ($1)", m.Key)
		return err // a second shipment of one order would fail on the primary key
	})
	consumeDone := make(chan error, 1)
	go func() {
		consumeDone <- broker.Consume(runCtx, sub, ship, broker.ConsumeOptions{Concurrency: 4})
	}()

	// The order service.
	committed, declined := 0, 0
	for i := 1; i <= cfg.Orders; i++ {
		err := placeOrder(ctx, db, ob, ordersT, topic, fmt.Sprint("order-", i), int64(i)*1250, i%5 == 0)
		switch {
		case errors.Is(err, errDeclined):
			declined++
		case err != nil:
			return err
		default:
			committed++
		}
	}
	remindAt := time.Now().Add(reminderDelay)
	if err := remind(ctx, db, ob, topic, "order-1", remindAt); err != nil {
		return err
	}

	// Wait for every shipment and the reminder.
	var shipped int
	var remindedAt time.Time
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for shipped < committed || remindedAt.IsZero() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d orders shipped, reminder received: %v: %w", shipped, committed, !remindedAt.IsZero(), ctx.Err())
		case remindedAt = <-reminded:
		case <-tick.C: // the database sends no signal: poll it
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+shipmentsT).Scan(&shipped); err != nil {
				return err
			}
		}
	}
	stop()
	if err := errors.Join(<-relayDone, <-consumeDone); err != nil {
		return err
	}

	var orderRows, shippedDeclined int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+ordersT).Scan(&orderRows); err != nil {
		return err
	}
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+shipmentsT+" s LEFT JOIN "+ordersT+" o ON o.id = s.order_id WHERE o.id IS NULL").
		Scan(&shippedDeclined); err != nil {
		return err
	}
	fmt.Fprintf(out, "orders placed            %3d\n", cfg.Orders)
	fmt.Fprintf(out, "committed                %3d  (order row and event in one transaction)\n", committed)
	fmt.Fprintf(out, "declined, rolled back    %3d  (neither row nor event)\n", declined)
	fmt.Fprintf(out, "order rows               %3d\n", orderRows)
	fmt.Fprintf(out, "events published         %3d  (%d orders + 1 reminder; at least once)\n", published.Load(), committed)
	fmt.Fprintf(out, "shipments                %3d  (through the inbox)\n", shipped)
	fmt.Fprintf(out, "shipped, never ordered   %3d\n", shippedDeclined)
	fmt.Fprintf(out, "duplicates skipped       %3d\n", duplicates.Load())
	fmt.Fprintf(out, "reminder held for        >= %v: %v\n", reminderDelay, !remindedAt.Before(remindAt))
	switch {
	case orderRows != committed || shipped != committed:
		return fmt.Errorf("%d order rows and %d shipments for %d committed orders", orderRows, shipped, committed)
	case shippedDeclined != 0:
		return fmt.Errorf("%d declined orders were shipped", shippedDeclined)
	case remindedAt.Before(remindAt):
		return fmt.Errorf("the reminder arrived %v early", remindAt.Sub(remindedAt))
	}
	return nil
}

// placeOrder saves an order and its event atomically; a declined card rolls
// both back.
func placeOrder(ctx context.Context, db *sql.DB, ob *outbox.Outbox, ordersT, topic, id string, cents int64, decline bool) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // a no-op after Commit
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+ordersT+" (id, total_cents) VALUES ($1, $2)", id, cents); err != nil {
		return err
	}
	event := &broker.Message{Key: id, Payload: fmt.Appendf(nil, `{"order":%q,"total_cents":%d}`, id, cents),
		Headers: map[string]string{"type": "order.created"}}
	if err := ob.Add(ctx, tx, topic, event); err != nil {
		return err
	}
	if decline { // the payment step fails after the event was added
		return errDeclined
	}
	return tx.Commit()
}

// remind schedules a payment reminder through the outbox.
func remind(ctx context.Context, db *sql.DB, ob *outbox.Outbox, topic, id string, at time.Time) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	m := &broker.Message{Key: id, Headers: map[string]string{"type": "order.payment-reminder"}}
	if err := ob.AddAt(ctx, tx, at, topic, m); err != nil {
		return err
	}
	return tx.Commit()
}

type publisherFunc func(ctx context.Context, topic string, msgs ...*broker.Message) error

func (f publisherFunc) Publish(ctx context.Context, topic string, msgs ...*broker.Message) error {
	return f(ctx, topic, msgs...)
}
