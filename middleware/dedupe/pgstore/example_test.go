package pgstore_test

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe/pgstore"
)

// The handler's writes and the inbox record commit in one transaction.
func ExampleInbox_Handler() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@127.0.0.1:5432/app")
	if err != nil {
		return
	}
	inbox, err := pgstore.NewInbox(ctx, pool, pgstore.InboxOptions{})
	if err != nil {
		return
	}
	h := inbox.Handler(func(ctx context.Context, tx pgx.Tx, m *broker.Message) error {
		_, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance - 10 WHERE id = $1", m.Key)
		return err
	})
	_ = h // run it with broker.Consume, at-least-once
}
