package redisstreams_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/redisstreams"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// nowhere is an address where no Redis listens: URLs that pass their checks
// fail there to connect, with a transient error, while bad ones fail before
// any I/O with an InvalidArgument error.
const nowhere = "127.0.0.1:1"

func TestURLOutOfRange(t *testing.T) {
	ctx := context.Background()
	bad := map[string]string{
		"port 0":                "redis+streams://127.0.0.1:0",
		"port 65536":            "redis+streams://127.0.0.1:65536",
		"db not a number":       "redis+streams://" + nowhere + "/x",
		"db negative":           "redis+streams://" + nowhere + "/-1",
		"unknown parameter":     "redis+streams://" + nowhere + "/?shard=2",
		"shards 0":              "redis+streams://" + nowhere + "/?shards=0",
		"shards 1025":           "redis+streams://" + nowhere + "/?shards=1025",
		"shards not a number":   "redis+streams://" + nowhere + "/?shards=four",
		"maxlen negative":       "redis+streams://" + nowhere + "/?maxlen=-1",
		"ack_timeout negative":  "redis+streams://" + nowhere + "/?ack_timeout=-1s",
		"ack_timeout too short": "redis+streams://" + nowhere + "/?ack_timeout=1ms",
		"ack_timeout garbage":   "redis+streams://" + nowhere + "/?ack_timeout=soon",
		"prefetch 0":            "redis+streams://" + nowhere + "/?prefetch=0",
		"prefetch too large":    "redis+streams://" + nowhere + "/?prefetch=1048577",
		"batch 0":               "redis+streams://" + nowhere + "/?batch=0",
		"batch 10001":           "redis+streams://" + nowhere + "/?batch=10001",
		"block 0":               "redis+streams://" + nowhere + "/?block=0s",
		"block too long":        "redis+streams://" + nowhere + "/?block=2m",
		"block negative":        "redis+streams://" + nowhere + "/?block=-1s",
		"claim_interval short":  "redis+streams://" + nowhere + "/?claim_interval=1us",
		"claim_interval neg":    "redis+streams://" + nowhere + "/?claim_interval=-1s",
		"max_size 0":            "redis+streams://" + nowhere + "/?max_size=0",
		"max_size too large":    "redis+streams://" + nowhere + "/?max_size=536870913",
		"dial_timeout 0":        "redis+streams://" + nowhere + "/?dial_timeout=0s",
		"read_timeout negative": "redis+streams://" + nowhere + "/?read_timeout=-2s",
		"pool_size negative":    "redis+streams://" + nowhere + "/?pool_size=-1",
		"prefix with a space":   "redis+streams://" + nowhere + "/?prefix=a+b",
		"prefix with braces":    "redis+streams://" + nowhere + "/?prefix=%7Bx%7D",
		"password kept out":     "redis+streams://user:s3cret-pw@" + nowhere + "/?shards=0",
	}
	for what, u := range bad {
		t.Run(what, func(t *testing.T) {
			start := time.Now()
			_, err := broker.Open(ctx, u)
			if broker.KindOf(err) != semantics.InvalidArgument {
				t.Fatalf("Open(%s) = %v, want an invalid argument error", u, err)
			}
			if strings.Contains(err.Error(), "s3cret-pw") {
				t.Errorf("the error shows the password: %v", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Open took %v: the URL should be refused before any I/O", d)
			}
		})
	}
}

// A URL that passes its checks reaches for the server: where none listens,
// the error is transient and keeps the password out.
func TestURLUnreachable(t *testing.T) {
	_, err := broker.Open(context.Background(), "redis+streams://user:s3cret-pw@"+nowhere+"/3?shards=8&dial_timeout=500ms")
	if err == nil || broker.KindOf(err) != semantics.Transient {
		t.Fatalf("Open of an address where nothing listens = %v, want a transient error", err)
	}
	if strings.Contains(err.Error(), "s3cret-pw") {
		t.Errorf("the error shows the password: %v", err)
	}
}

func TestURLOptions(t *testing.T) {
	b := openBroker(t, "shards=3", "maxlen=1000", "ack_timeout=5s", "prefetch=64", "batch=32", "block=250ms",
		"claim_interval=100ms", "max_size=1024", "pool_size=4")
	got := driverOf(t, b).Options()
	want := redisstreams.Options{Prefix: prefix(), Shards: 3, MaxLen: 1000, AckTimeout: 5 * time.Second, Prefetch: 64,
		Batch: 32, Block: 250 * time.Millisecond, ClaimInterval: 100 * time.Millisecond, MaxMessageSize: 1024}
	if got != want {
		t.Errorf("Options() = %+v, want %+v", got, want)
	}
	if c := b.Capabilities().MaxMessageSize; c != 1024 {
		t.Errorf("Capabilities().MaxMessageSize = %d, want 1024", c)
	}
	def := driverOf(t, openBroker(t)).Options()
	if def.Shards != 1 || def.AckTimeout != redisstreams.DefaultAckTimeout || def.Prefetch != redisstreams.DefaultPrefetch ||
		def.Block != redisstreams.DefaultBlock || def.MaxLen != 0 || def.MaxMessageSize != redisstreams.DefaultMaxMessageSize {
		t.Errorf("default Options() = %+v", def)
	}
}

func TestNewOptionsOutOfRange(t *testing.T) {
	c := rawClient(t)
	for _, o := range []redisstreams.Options{
		{Shards: -1}, {Shards: 1025}, {MaxLen: -1}, {AckTimeout: -time.Second}, {AckTimeout: time.Millisecond},
		{Prefetch: -1}, {Batch: 10001}, {Block: -time.Second}, {Block: time.Hour}, {ClaimInterval: -1},
		{MaxMessageSize: -1}, {Prefix: "a b"}, {Prefix: "{p}"},
	} {
		if _, err := redisstreams.New(c, o); broker.KindOf(err) != semantics.InvalidArgument {
			t.Errorf("New(%+v) = %v, want an invalid argument error", o, err)
		}
	}
	if _, err := redisstreams.New(nil, redisstreams.Options{}); broker.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("New(nil client) = %v, want an invalid argument error", err)
	}
}
