package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/outbox"
	"github.com/queuekit/queuekit/semantics"
)

// runOutbox runs `queuekit outbox status`: the state of a transactional
// outbox (package outbox), read from its tables.
func runOutbox(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] != "status" {
		fmt.Fprintln(e.stderr, "usage: queuekit outbox status -db URL [-table T] [-shards] [-json]")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "help" || args[0] == "--help") {
			return nil
		}
		return fmt.Errorf("%w: queuekit outbox needs the subcommand status", errUsage)
	}
	fs := flag.NewFlagSet("queuekit outbox status", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	dbURL := fs.String("db", e.getenv("QUEUEKIT_OUTBOX_DB"),
		"the outbox's database: postgres://user:pass@host:port/db or mysql://user:pass@host:port/db (default $QUEUEKIT_OUTBOX_DB)")
	table := fs.String("table", outbox.DefaultTable, "the outbox's messages table (Options.Table)")
	allShards := fs.Bool("shards", false, "list every shard, not only those in backoff")
	asJSON := fs.Bool("json", false, "print the stats as JSON")
	if err := parse(fs, args[1:], "db"); err != nil {
		return err
	}
	db, dialect, err := openOutboxDB(*dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	ob, err := outbox.New(db, dialect, outbox.Options{Table: *table})
	if err != nil {
		return err
	}
	s, err := ob.Stats(ctx)
	if err != nil {
		return redactDBError(err, *dbURL)
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	printOutboxStats(e, *table, dialect.Name(), s, *allShards)
	return nil
}

func printOutboxStats(e *env, table, dialect string, s outbox.Stats, allShards bool) {
	backoff := 0
	for _, sh := range s.Shards {
		if sh.Failures > 0 {
			backoff++
		}
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "outbox\t%s (%s)\n", table, dialect)
	fmt.Fprintf(tw, "depth\t%d\t(%d held for later)\n", s.Depth, s.Held)
	fmt.Fprintf(tw, "oldest due\t%s\n", round(s.OldestAge))
	fmt.Fprintf(tw, "sent, kept\t%d\n", s.Sent)
	fmt.Fprintf(tw, "shards\t%d\t(%d in backoff after a failed publish)\n", len(s.Shards), backoff)
	fmt.Fprintf(tw, "relays seen\t%d\n", len(s.Relays))
	_ = tw.Flush()
	if len(s.Relays) > 0 {
		tw = tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "\nrelay\tup\tlast seen\n")
		for _, r := range s.Relays {
			fmt.Fprintf(tw, "%s\t%s\t%s ago\n", r.ID, round(r.Up), round(r.SeenAgo))
		}
		_ = tw.Flush()
	}
	if backoff > 0 || allShards {
		tw = tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "\nshard\tlast relay\tserved\tfailures\tretry in\tlast error\n")
		for _, sh := range s.Shards {
			if sh.Failures == 0 && !allShards {
				continue
			}
			relay := sh.Relay
			if relay == "" {
				relay = "(none)"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s ago\t%d\t%s\t%s\n", sh.Shard, relay, round(sh.ServedAgo), sh.Failures, round(sh.RetryIn), oneLine(sh.LastError))
		}
		_ = tw.Flush()
	}
}

func round(d time.Duration) time.Duration {
	if d > time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

// openOutboxDB opens a postgres:// or mysql:// URL with its database/sql
// driver and returns the matching dialect.
func openOutboxDB(raw string) (*sql.DB, outbox.Dialect, error) {
	const op = "queuekit: outbox"
	u, err := url.Parse(raw)
	if err != nil {
		return nil, nil, broker.Errorf(semantics.InvalidArgument, op, "-db is not a URL (postgres://… or mysql://…)")
	}
	switch u.Scheme {
	case "postgres", "postgresql":
		db, err := sql.Open("pgx", raw)
		if err != nil {
			return nil, nil, redactDBError(err, raw)
		}
		return db, outbox.Postgres, nil
	case "mysql", "mariadb":
		cfg := mysql.NewConfig()
		cfg.Net, cfg.Addr = "tcp", u.Host
		if u.Port() == "" {
			cfg.Addr = u.Hostname() + ":3306"
		}
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
		cfg.DBName = strings.TrimPrefix(u.Path, "/")
		if len(u.Query()) > 0 {
			// Parameters such as tls=true: let the driver parse them.
			parsed, err := mysql.ParseDSN("/?" + u.RawQuery)
			if err != nil {
				return nil, nil, broker.Errorf(semantics.InvalidArgument, op, "-db parameters: %v", err)
			}
			parsed.Net, parsed.Addr, parsed.User, parsed.Passwd, parsed.DBName = cfg.Net, cfg.Addr, cfg.User, cfg.Passwd, cfg.DBName
			cfg = parsed
		}
		conn, err := mysql.NewConnector(cfg)
		if err != nil {
			return nil, nil, redactDBError(err, raw)
		}
		return sql.OpenDB(conn), outbox.MySQL, nil
	default:
		return nil, nil, broker.Errorf(semantics.InvalidArgument, op, "-db scheme %q: want postgres:// or mysql://", u.Scheme)
	}
}

// redactDBError returns err with the URL's password, if any, replaced.
func redactDBError(err error, raw string) error {
	u, perr := url.Parse(raw)
	if perr != nil || u.User == nil {
		return err
	}
	pass, ok := u.User.Password()
	if !ok || pass == "" || !strings.Contains(err.Error(), pass) {
		return err
	}
	return &broker.Error{Kind: broker.KindOf(err), Op: "queuekit: outbox",
		Err: errors.New(strings.ReplaceAll(err.Error(), pass, "xxxxx"))}
}
