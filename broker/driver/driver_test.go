package driver_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/semantics"
)

func TestRegisterTwicePanics(t *testing.T) {
	d := driver.OpenerFunc(func(context.Context, *url.URL) (driver.Broker, error) { return nil, nil })
	driver.Register("test-twice", d)
	defer func() {
		if recover() == nil {
			t.Error("second Register did not panic")
		}
	}()
	driver.Register("test-twice", d)
}

func TestParams(t *testing.T) {
	u, _ := url.Parse("x://h/?prefetch=10&wait=2s&fifo=true&bogus=1&other=2&n=abc")
	p := driver.NewParams("x", u, "prefetch", "wait", "fifo", "n", "absent")
	if got := p.Int("prefetch", 1); got != 10 {
		t.Errorf("prefetch = %d", got)
	}
	if got := p.Duration("wait", 0); got != 2*time.Second {
		t.Errorf("wait = %v", got)
	}
	if got := p.Bool("fifo", false); !got {
		t.Error("fifo = false")
	}
	if got := p.String("absent", "def"); got != "def" {
		t.Errorf("absent = %q", got)
	}
	if got := p.Int("n", 7); got != 7 {
		t.Errorf("bad int should give the default, got %d", got)
	}
	err := p.Err()
	if err == nil {
		t.Fatal("Err() = nil with unknown parameters")
	}
	for _, want := range []string{"x: open", "unknown URL parameter(s) bogus, other", "valid: absent, fifo, n, prefetch, wait", `n="abc" is not an integer`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Err() = %q, missing %q", err, want)
		}
	}
	if driver.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("kind = %v", driver.KindOf(err))
	}
	ok, _ := url.Parse("x://h/?prefetch=3")
	if err := driver.NewParams("x", ok, "prefetch").Err(); err != nil {
		t.Errorf("known params only: %v", err)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"amqp://guest:pw@h:5672/":          "amqp://guest:xxxxx@h:5672/",
		"amqp://guest:pw@h:bad/":           "amqp://xxxxx@h:bad/",
		"amqp://u:S3cr3t/PW@127.0.0.1:1/":  "amqp://xxxxx@127.0.0.1:1/",
		"amqp:/u:s3cret@127.0.0.1:5999/":   "amqp:/xxxxx@127.0.0.1:5999/",
		"amqp//u:s3cret@127.0.0.1:5999/":   "xxxxx@127.0.0.1:5999/",
		"sqs://h/?secret_key=abc&region=x": "sqs://h/?region=x&secret_key=xxxxx",
		"kafka://h:9092/?topic=a":          "kafka://h:9092/?topic=a",
		"mem://":                           "mem://",
		"redis://:onlypw@h:6379/0":         "redis://:xxxxx@h:6379/0",
		"amqp://us%zzer:pw@h/":             "amqp://xxxxx@h/",
		"postgres://u:p@w@h/db?x=1":        "postgres://u:xxxxx@h/db?x=1",
		"postgres://u:p%40w@h/db?x=1":      "postgres://u:xxxxx@h/db?x=1",
	} {
		if got := driver.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSettlementIsIdempotent(t *testing.T) {
	var s driver.Settlement
	if first, err := s.Ack(); !first || err != nil {
		t.Fatalf("first Ack = %v, %v", first, err)
	}
	if first, err := s.Ack(); first || err != nil {
		t.Errorf("second Ack = %v, %v; want false, nil", first, err)
	}
	if first, err := s.Nack(); first || !errors.Is(err, driver.ErrAlreadySettled) {
		t.Errorf("Nack after Ack = %v, %v; want ErrAlreadySettled", first, err)
	}
	if !s.Settled() {
		t.Error("Settled() = false")
	}
}

func TestPrepare(t *testing.T) {
	ms := []*driver.Message{{Payload: []byte("x")}, {ID: "given", Payload: []byte("y")}}
	if err := driver.Prepare("op", ms, 0); err != nil {
		t.Fatal(err)
	}
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	if !uuid.MatchString(ms[0].ID) || ms[1].ID != "given" {
		t.Errorf("ids = %q, %q", ms[0].ID, ms[1].ID)
	}
	if ms[0].PublishedAt.IsZero() {
		t.Error("PublishedAt not stamped")
	}
	err := driver.Prepare("op", []*driver.Message{{Payload: make([]byte, 10)}}, 5)
	var tl *driver.TooLargeError
	if !errors.As(err, &tl) || tl.Max != 5 || driver.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("oversize: %v", err)
	}
	if err := driver.Prepare("op", []*driver.Message{nil}, 0); driver.KindOf(err) != semantics.InvalidArgument {
		t.Errorf("nil message: %v", err)
	}
}

func TestNewIDIsUniqueAcrossGoroutines(t *testing.T) {
	const perG, gs = 5000, 8
	ids := make(chan string, perG*gs)
	done := make(chan struct{})
	for range gs {
		go func() {
			for range perG {
				ids <- driver.NewID()
			}
			done <- struct{}{}
		}()
	}
	for range gs {
		<-done
	}
	close(ids)
	seen := make(map[string]bool, perG*gs)
	for id := range ids {
		if seen[id] {
			t.Fatalf("NewID returned %s twice", id)
		}
		seen[id] = true
	}
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = driver.NewID()
	}
}

type stubDelivery struct{ m driver.Message }

func (d *stubDelivery) Message() *driver.Message                  { return &d.m }
func (d *stubDelivery) Ack(context.Context) error                 { return nil }
func (d *stubDelivery) Nack(context.Context, time.Duration) error { return nil }

func TestFillBatch(t *testing.T) {
	ch := make(chan *stubDelivery, 10)
	for i := range 5 {
		ch <- &stubDelivery{driver.Message{ID: fmt.Sprint(i)}}
	}
	receive := func(ctx context.Context) (driver.Delivery, error) {
		select {
		case d := <-ch:
			return d, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	buf := make([]driver.Delivery, 3)
	n, err := driver.FillBatch(context.Background(), buf, receive, driver.Ready(ch))
	if err != nil || n != 3 || buf[2].Message().ID != "2" {
		t.Fatalf("first batch: n=%d err=%v", n, err)
	}
	n, err = driver.FillBatch(context.Background(), buf, receive, driver.Ready(ch))
	if err != nil || n != 2 || buf[1].Message().ID != "4" {
		t.Fatalf("second batch (2 left, must not block): n=%d err=%v", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := driver.FillBatch(ctx, buf, receive, driver.Ready(ch)); n != 0 || err == nil {
		t.Fatalf("empty with a cancelled ctx: n=%d err=%v", n, err)
	}
}
