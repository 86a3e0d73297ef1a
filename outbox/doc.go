// Package outbox is the transactional outbox on database/sql, for
// PostgreSQL and MariaDB/MySQL: the application writes its own rows and its
// outgoing messages in one transaction it owns, and a relay publishes the
// messages to any queuekit broker afterwards.
//
//	ob, err := outbox.New(db, outbox.Postgres, outbox.Options{})
//	err = ob.Migrate(ctx) // once, or the statements of ob.Schema() in your migrations
//
//	tx, err := db.BeginTx(ctx, nil)
//	_, err = tx.ExecContext(ctx, "INSERT INTO orders (id, total) VALUES ($1, $2)", id, total)
//	err = ob.Add(ctx, tx, "orders", &broker.Message{Key: id, Payload: event})
//	err = tx.Commit() // the order and its event, or neither
//
//	relay, err := outbox.NewRelay(ob, pub, outbox.RelayOptions{}) // pub: a broker publisher
//	err = relay.Run(ctx)                                          // in one process or several
//
// # Guarantees
//
//   - Atomic: a message is published if and only if the transaction that
//     added it commits. A rolled-back transaction publishes nothing.
//   - At least once: a message is recorded as sent only after Publish
//     returned nil for it, that is after the broker durably accepted it,
//     in the transaction that holds its shard. A relay that dies (or loses
//     its database connection, or times out) between the two leaves the
//     message unsent, and it is published again with the same ID:
//     consumers deduplicate by ID (the inbox of middleware/dedupe/pgstore,
//     or the dedupe middleware). Nothing is ever dropped: a message that
//     fails to publish — broker down, topic not found, too large — is
//     retried until it is published, and holds its shard meanwhile.
//   - Per-key order: the messages of one key are published in the order
//     they were added (sequence order), even with several relays running.
//     Each message has a shard (FNV-1a of its key, or of its ID when it
//     has no key, modulo the number of shards); a relay publishes a shard's
//     due messages in sequence order inside a transaction that holds the
//     shard's row with SELECT ... FOR UPDATE SKIP LOCKED, so one shard is
//     published by one relay at a time, and a crashed relay's lock goes
//     with its connection. One Publish call never carries two messages of
//     one key, so that a partial failure (a *broker.PublishError) cannot
//     have a later message of a key accepted after an earlier one failed;
//     at the first failure the shard stops, records what was accepted, and
//     backs off, so its remaining messages go out, in order, on a later
//     batch. The order the broker then delivers in is the broker's (see the
//     adapters' per-key ordering).
//   - Scheduled delivery: AddAt, or Add of a message with
//     broker.Message.DeliverAt set, holds a message until its time (the
//     later of the two), on any broker, whether or not its adapter claims
//     ScheduledDelivery: the relay publishes it when it is due, without
//     DeliverAt, and the broker delivers it at once. It is never published
//     early; it may be late by up to RelayOptions.PollInterval, plus any
//     backlog. A held message does not hold back its key's later messages.
//     (Publishing with DeliverAt directly uses the broker's own scheduling
//     where the adapter claims it, without a database, within its
//     MaxDelay.)
//
// # Relays, batches and backoff
//
// A relay runs 2 × RelayOptions.Workers workers. Each repeatedly takes the
// least recently served shard that has due messages, is not in backoff and
// is not locked by another relay, and publishes up to BatchSize of its
// messages; at most Workers × BatchSize messages are being published at
// once, so that while some workers publish, the others read their next
// batch or record their last one. A worker keeps its database connection
// while it finds work, and gives it back to the pool after PollInterval
// without any. An idle relay runs one query per PollInterval (default 50 ms):
// one worker polls while the others wait for it to find work. A failed
// publish puts the shard in backoff in the database (MinBackoff doubling to
// MaxBackoff, shared by every relay), so a broker that is down is retried
// at a falling rate, while shards whose publishes succeed keep flowing. The
// relay's transactions run at READ COMMITTED and lock only shard rows:
// Add never waits for a relay.
//
// # Cleanup
//
// Sent messages are kept for RelayOptions.Retention (default 1 h; or
// deleted in the publishing transaction with DeleteWhenSent). Every
// CleanupInterval (default 1 min) each relay deletes the messages sent
// longer ago, 10,000 rows per statement until none is left, and forgets
// relays not seen for ForgetRelaysAfter (default 1 h).
//
// # Metrics
//
// Outbox.Stats returns the depth (unsent messages), how many are held for
// later, the age of the oldest due message, the sent messages kept, each
// shard's last relay and backoff, and the relays seen (`queuekit outbox
// status` prints them). The Stats example exports depth and oldest age as
// OpenTelemetry gauges.
//
// # Schema
//
// Migrate creates three tables (names from Options.Table) and inserts one
// row per shard into the shards table. On PostgreSQL:
//
//	CREATE TABLE IF NOT EXISTS queuekit_outbox (
//		seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
//		shard      integer     NOT NULL,
//		topic      text        NOT NULL,
//		msg_id     text        NOT NULL,
//		msg_key    bytea       NOT NULL,
//		payload    bytea       NOT NULL,
//		headers    text,
//		created_at timestamptz NOT NULL,
//		deliver_at timestamptz NOT NULL,
//		sent_at    timestamptz
//	);
//	CREATE INDEX IF NOT EXISTS queuekit_outbox_unsent ON queuekit_outbox (shard, seq) WHERE sent_at IS NULL;
//	CREATE INDEX IF NOT EXISTS queuekit_outbox_sent ON queuekit_outbox (sent_at) WHERE sent_at IS NOT NULL;
//	CREATE TABLE IF NOT EXISTS queuekit_outbox_shards (
//		shard      integer     PRIMARY KEY,
//		relay      text        NOT NULL DEFAULT '',
//		served_at  timestamptz NOT NULL,
//		failures   integer     NOT NULL DEFAULT 0,
//		retry_at   timestamptz,
//		last_error text        NOT NULL DEFAULT ''
//	);
//	CREATE TABLE IF NOT EXISTS queuekit_outbox_relays (
//		relay      text        PRIMARY KEY,
//		started_at timestamptz NOT NULL,
//		seen_at    timestamptz NOT NULL
//	);
//	INSERT INTO queuekit_outbox_shards (shard, served_at, last_error)
//	    SELECT n, clock_timestamp(), '' FROM generate_series(0, 15) n ON CONFLICT (shard) DO NOTHING;
//
// On MariaDB (10.6+) and MySQL (8.0+):
//
//	CREATE TABLE IF NOT EXISTS queuekit_outbox (
//		seq        BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
//		shard      INT         NOT NULL,
//		topic      TEXT        NOT NULL,
//		msg_id     TEXT        NOT NULL,
//		msg_key    MEDIUMBLOB  NOT NULL,
//		payload    LONGBLOB    NOT NULL,
//		headers    LONGTEXT,
//		created_at DATETIME(6) NOT NULL,
//		deliver_at DATETIME(6) NOT NULL,
//		sent_at    DATETIME(6),
//		KEY queuekit_outbox_unsent (shard, sent_at, seq),
//		KEY queuekit_outbox_sent (sent_at)
//	) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
//	CREATE TABLE IF NOT EXISTS queuekit_outbox_shards (
//		shard      INT          NOT NULL PRIMARY KEY,
//		relay      VARCHAR(255) NOT NULL DEFAULT '',
//		served_at  DATETIME(6)  NOT NULL,
//		failures   INT          NOT NULL DEFAULT 0,
//		retry_at   DATETIME(6),
//		last_error TEXT         NOT NULL
//	) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
//	CREATE TABLE IF NOT EXISTS queuekit_outbox_relays (
//		relay      VARCHAR(255) NOT NULL PRIMARY KEY,
//		started_at DATETIME(6)  NOT NULL,
//		seen_at    DATETIME(6)  NOT NULL
//	) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
//	INSERT INTO queuekit_outbox_shards (shard, served_at, last_error)
//	    VALUES (0, UTC_TIMESTAMP(6), ''), (1, UTC_TIMESTAMP(6), ''), ... (15, UTC_TIMESTAMP(6), '');
//
// Times are computed in SQL (in UTC on MySQL), never passed through the
// driver, so no DSN option (parseTime, loc) matters. Headers are stored as a
// JSON object; the key and payload as bytes.
package outbox
