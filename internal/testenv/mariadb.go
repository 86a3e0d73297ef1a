package testenv

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// DefaultMariaDBDSN is the MariaDB (or MySQL) database the tests use when
// QUEUEKIT_MYSQL_DSN is unset: database test on the local server, user root
// without a password. It is in github.com/go-sql-driver/mysql's DSN form.
const DefaultMariaDBDSN = "root@tcp(127.0.0.1:3306)/test"

// MariaDB returns the DSN (go-sql-driver/mysql form, user:pass@tcp(host:port)/db)
// of a reachable MariaDB or MySQL database: QUEUEKIT_MYSQL_DSN, or
// DefaultMariaDBDSN. When the server does not answer, t is skipped (failed
// under CI=true) with a message that says how to start it. Tests share the
// database: give every table a name of the test's own.
func MariaDB(t testing.TB) string {
	t.Helper()
	dsn := Env("QUEUEKIT_MYSQL_DSN", DefaultMariaDBDSN)
	addr, err := mariadbAddr(dsn)
	if err == nil {
		err = Reachable(addr, 2*time.Second)
	}
	if err != nil {
		Unavailable(t, "MariaDB", err,
			"start it with `service mariadb start` or run `make test`, "+
				"or point QUEUEKIT_MYSQL_DSN at a database (user:pass@tcp(host:port)/db)")
	}
	return dsn
}

// mariadbAddr returns host:port of a go-sql-driver/mysql DSN without echoing
// its password.
func mariadbAddr(dsn string) (string, error) {
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		return "", errors.New("QUEUEKIT_MYSQL_DSN is not a go-sql-driver/mysql DSN (user:pass@tcp(host:port)/db)")
	}
	if cfg.Net != "tcp" {
		return "", errors.New("QUEUEKIT_MYSQL_DSN must use tcp(host:port)")
	}
	host, port, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return net.JoinHostPort(cfg.Addr, "3306"), nil
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}
