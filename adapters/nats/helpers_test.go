package nats

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
)

// uniq returns a fresh topic name: prefix, then random hex.
func uniq(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// cleanupStreams deletes, when t ends, every stream whose name starts with
// prefix, so that the shared server does not fill up with test streams.
func cleanupStreams(t testing.TB, url, prefix string) {
	t.Cleanup(func() {
		nc, err := natsgo.Connect(url)
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		names := js.StreamNames(ctx)
		var del []string
		for n := range names.Name() {
			if strings.HasPrefix(n, prefix) {
				del = append(del, n)
			}
		}
		for _, n := range del {
			if err := js.DeleteStream(ctx, n); err != nil {
				t.Logf("cleanup: delete stream %s: %v", n, err)
			}
		}
	})
}

// openDriver opens the test server with params appended to its URL and
// deletes the streams named prefix* when t ends.
func openDriver(t testing.TB, prefix, params string) *Broker {
	t.Helper()
	url := testenv.NATS(t)
	cleanupStreams(t, url, prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	if params == "" {
		sep = ""
	}
	nb, err := Open(ctx, url+sep+params)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nb.Close(context.Background()) })
	return nb
}

// openBroker is openDriver wrapped in a *broker.Broker (closed when t ends).
func openBroker(t testing.TB, prefix, params string) (*broker.Broker, *Broker) {
	t.Helper()
	nb := openDriver(t, prefix, params)
	b := broker.New(nb)
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	return b, nb
}

// rawConn is a plain nats.go connection to the test server, closed when t
// ends: the "other client" of the tests.
func rawConn(t testing.TB) (*natsgo.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := natsgo.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}
