package testenv

import (
	"errors"
	"net"
	"net/url"
	"testing"
	"time"
)

// DefaultPostgresDSN is the PostgreSQL database the tests use when
// QUEUEKIT_POSTGRES_DSN is unset: database test on the local server, trust
// authentication.
const DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// Postgres returns the DSN (a postgres:// URL) of a reachable PostgreSQL
// database: QUEUEKIT_POSTGRES_DSN, or DefaultPostgresDSN. When the server does
// not answer, t is skipped (failed under CI=true) with a message that says
// how to start it. Tests share the database: give every table a name of the
// test's own.
func Postgres(t testing.TB) string {
	t.Helper()
	dsn := Env("QUEUEKIT_POSTGRES_DSN", DefaultPostgresDSN)
	addr, err := postgresAddr(dsn)
	if err == nil {
		err = Reachable(addr, 2*time.Second)
	}
	if err != nil {
		Unavailable(t, "PostgreSQL", err,
			"start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or run `make test`, "+
				"or point QUEUEKIT_POSTGRES_DSN at a database (postgres://user@host:port/db)")
	}
	return dsn
}

// postgresAddr returns host:port of a postgres:// URL without echoing its
// password.
func postgresAddr(dsn string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", errors.New("QUEUEKIT_POSTGRES_DSN is not a postgres:// URL")
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "5432"
	}
	return net.JoinHostPort(host, port), nil
}
