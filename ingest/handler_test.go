package ingest

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/middleware/dedupe"
)

func TestPublishSingle(t *testing.T) {
	e := newEnv(t, testConfig(), nil, nil)
	payload := []byte{0, 1, 2, 0xff, '\n', 'x'}
	r := e.post("/v1/topics/orders/messages", testToken, payload,
		"Idempotency-Key", "order-7-created",
		"Queuekit-Key", "order-7",
		"Queuekit-Header-Event-Type", "created",
		"queuekit-header-trace", "abc")
	if r.status != http.StatusOK || r.body["topic"] != "orders" || len(r.ids()) != 1 || r.ids()[0] != "order-7-created" {
		t.Fatalf("got %d %s", r.status, r.raw)
	}
	m := e.receive("orders", 1)[0]
	if m.ID != "order-7-created" || m.Key != "order-7" || !bytes.Equal(m.Payload, payload) ||
		m.Headers["event-type"] != "created" || m.Headers["trace"] != "abc" {
		t.Errorf("published %+v", m)
	}

	// Without an Idempotency-Key the broker assigns a fresh ID.
	r = e.post("/v1/topics/orders/messages", testToken, []byte("x"))
	if r.status != http.StatusOK || len(r.ids()) != 1 || len(r.ids()[0]) != 36 {
		t.Fatalf("got %d %s", r.status, r.raw)
	}
	if m := e.receive("orders", 1)[0]; m.ID != r.ids()[0] {
		t.Errorf("reply id %s, message id %s", r.ids()[0], m.ID)
	}
}

func TestPublishBatch(t *testing.T) {
	e := newEnv(t, testConfig(), nil, nil)
	bin := []byte{0xde, 0xad, 0xbe, 0xef}
	body := fmt.Sprintf("{\"text\":\"first\",\"key\":\"k1\",\"headers\":{\"type\":\"a\"}}\n\r\n"+
		"{\"id\":\"own-id\",\"payload\":%q}\r\n{\"text\":\"\"}", base64.StdEncoding.EncodeToString(bin))
	r := e.post("/v1/topics/orders/batch", testToken, []byte(body), "Idempotency-Key", "batch-1")
	want := []string{"batch-1:0", "own-id", "batch-1:2"}
	if r.status != http.StatusOK || strings.Join(r.ids(), ",") != strings.Join(want, ",") {
		t.Fatalf("got %d %s, want ids %v", r.status, r.raw, want)
	}
	got := e.receive("orders", 3)
	if string(got[0].Payload) != "first" || got[0].Key != "k1" || got[0].Headers["type"] != "a" ||
		!bytes.Equal(got[1].Payload, bin) || got[1].ID != "own-id" || len(got[2].Payload) != 0 {
		t.Errorf("published %+v %+v %+v", got[0], got[1], got[2])
	}
}

// TestStatusCodes covers every refusal that happens before the broker.
func TestStatusCodes(t *testing.T) {
	cfg := testConfig()
	cfg.MaxBodyBytes = 16
	cfg.MaxBatchMessages = 2
	cfg.Zones = []Zone{{Name: "per_client", Key: "header:X-Client", Rate: "1r/m", Burst: 1, NoDelay: true}}
	e := newEnv(t, cfg, nil, nil)
	const msgs = "/v1/topics/orders/messages"
	const batch = "/v1/topics/orders/batch"
	for _, tc := range []struct {
		name    string
		path    string
		token   string
		body    string
		headers []string
		status  int
		reason  string
		message string
	}{
		{"no token", msgs, "", "x", nil, 401, ReasonUnauthorized, "bearer token is required"},
		{"wrong token", msgs, "not-the-token", "x", nil, 401, ReasonUnauthorized, "not valid"},
		{"basic auth", msgs, "", "x", []string{"Authorization", "Basic " + base64.StdEncoding.EncodeToString([]byte("u:"+testToken))}, 401, ReasonUnauthorized, "bearer token is required"},
		{"topic not allowed", "/v1/topics/payments/messages", testToken, "x", nil, 403, ReasonForbidden, `may not publish to topic "payments"`},
		{"prefix grant", "/v1/topics/events.eu/messages", testToken, "x", nil, 200, "", ""},
		{"bad topic", "/v1/topics/a%20b/messages", testToken, "x", nil, 400, ReasonMalformed, "topic"},
		{"reserved header", msgs, testToken, "x", []string{"Queuekit-Header-Queuekit-Id", "x"}, 400, ReasonMalformed, "reserved"},
		{"repeated key", msgs, testToken, "x", []string{"Queuekit-Key", "a", "Queuekit-Key", "b"}, 400, ReasonMalformed, "given 2 times"},
		{"bad idempotency key", msgs, testToken, "x", []string{"Idempotency-Key", "has space"}, 400, ReasonMalformed, "Idempotency-Key"},
		{"oversize", msgs, testToken, strings.Repeat("x", 17), nil, 413, ReasonTooLarge, "over the limit of 16"},
		{"bad json", batch, testToken, "{\"text\":\"a\"}\n{\"text\":", nil, 400, ReasonMalformed, "line 2"},
		{"unknown field", batch, testToken, `{"txt":"a"}`, nil, 400, ReasonMalformed, `unknown field "txt"`},
		{"payload and text", batch, testToken, `{"text":"a","payload":"YQ=="}`, nil, 400, ReasonMalformed, "not both"},
		{"no payload", batch, testToken, `{"key":"a"}`, nil, 400, ReasonMalformed, "payload (base64) or text is required"},
		{"bad base64", batch, testToken, `{"payload":"%%%"}`, nil, 400, ReasonMalformed, "base64"},
		{"empty batch", batch, testToken, "\n\n", nil, 400, ReasonMalformed, "empty"},
		{"two values", batch, testToken, `{"text":"a"} {"text":"b"}`, nil, 400, ReasonMalformed, "more than one JSON value"},
		{"too many", batch, testToken, "{\"text\":\"a\"}\n{\"text\":\"a\"}\n{\"text\":\"a\"}", nil, 413, ReasonTooLarge, "more than 2 messages"},
		{"line oversize", batch, testToken, `{"text":"` + strings.Repeat("y", 17) + `"}`, nil, 413, ReasonTooLarge, "line 1"},
		{"rate limited", msgs, testToken, "x", []string{"X-Client", "c1"}, 200, "", ""},
		{"rate limited", msgs, testToken, "x", []string{"X-Client", "c1"}, 200, "", ""},
		{"rate limited", msgs, testToken, "x", []string{"X-Client", "c1"}, 429, ReasonRateLimited, `zone "per_client"`},
		{"other client", msgs, testToken, "x", []string{"X-Client", "c2"}, 200, "", ""},
		{"no route", "/v1/nothing", testToken, "x", nil, 404, ReasonNotFound, "no such endpoint"},
	} {
		r := e.post(tc.path, tc.token, []byte(tc.body), tc.headers...)
		msg, _ := r.body["message"].(string)
		if r.status != tc.status || (tc.reason != "" && r.body["error"] != tc.reason) || !strings.Contains(msg, tc.message) {
			t.Errorf("%s: got %d %s, want %d %s %q", tc.name, r.status, strings.TrimSpace(r.raw), tc.status, tc.reason, tc.message)
		}
		switch r.status {
		case 401:
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: WWW-Authenticate %q", tc.name, r.header.Get("WWW-Authenticate"))
			}
		case 429:
			// 1r/m is 0.016r/s in nginx's unit: one request's worth drains in 62.5 s.
			if ra, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || ra < 60 || ra > 63 {
				t.Errorf("%s: Retry-After %q, want about 63", tc.name, r.header.Get("Retry-After"))
			}
		}
	}
	if r := e.get(msgs); r.status != http.StatusMethodNotAllowed || r.header.Get("Allow") != "POST" {
		t.Errorf("GET on a publish route: %d %s", r.status, r.raw)
	}

	// A chunked body over the limit (no Content-Length to refuse early).
	req, _ := http.NewRequest(http.MethodPost, e.url+msgs, io.MultiReader(strings.NewReader(strings.Repeat("z", 40))))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.ContentLength = -1
	if r := e.do(req); r.status != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked oversize: %d %s", r.status, r.raw)
	}

	// Refusals never publish: only the 200s above are in the broker.
	if n := e.depth("orders"); n != 3 {
		t.Errorf("orders holds %d messages, want 3", n)
	}
	if got := e.metrics()["queuekit.ingest.accepted"]; got != 4 {
		t.Errorf("accepted = %d, want 4", got)
	}
	if got := e.metrics(attribute.String("messaging.destination.name", "events.eu"))["queuekit.ingest.accepted"]; got != 1 {
		t.Errorf("accepted{events.eu} = %d, want 1", got)
	}
	for reason, want := range map[string]int64{ReasonUnauthorized: 3, ReasonForbidden: 1, ReasonMalformed: 11, ReasonTooLarge: 4, ReasonRateLimited: 1} {
		if got := e.metrics(attribute.String("reason", reason))["queuekit.ingest.rejected"]; got != want {
			t.Errorf("rejected{reason=%s} = %d, want %d", reason, got, want)
		}
	}
	checkLogs(t, e)
}

// checkLogs: one access-log record per publish request, never a secret.
func checkLogs(t *testing.T, e *testEnv) {
	t.Helper()
	logs := e.logs.String()
	for _, secret := range []string{testToken, "not-the-token", base64.StdEncoding.EncodeToString([]byte("u:" + testToken))} {
		if strings.Contains(logs, secret) {
			t.Errorf("the access log contains %q", secret)
		}
	}
	var sawLimit, sawToken bool
	for _, rec := range e.logs.records(t) {
		if rec["msg"] != "ingest" || rec["status"] == nil || rec["start"] == nil || rec["path"] == nil {
			t.Errorf("access log record %v", rec)
		}
		if rec["limit"] == "rejected" && rec["zone"] == "per_client" && rec["excess"] != nil && rec["status"] == float64(429) {
			sawLimit = true
		}
		if rec["token"] == "app" {
			sawToken = true
		}
	}
	if !sawLimit || !sawToken {
		t.Errorf("no rate-limit decision (%v) or token name (%v) in the access log:\n%s", sawLimit, sawToken, logs)
	}
}

// TestAnonymousTopics: topics listed in anonymous_topics take no token;
// every other still needs one.
func TestAnonymousTopics(t *testing.T) {
	cfg := testConfig()
	cfg.AnonymousTopics = []string{"orders"}
	e := newEnv(t, cfg, nil, nil)
	if r := e.post("/v1/topics/orders/messages", "", []byte("x")); r.status != 200 {
		t.Errorf("anonymous publish to orders: %d %s", r.status, r.raw)
	}
	if r := e.post("/v1/topics/events.x/messages", "", []byte("x")); r.status != 403 {
		t.Errorf("anonymous publish to events.x: %d %s", r.status, r.raw)
	}
	if r := e.post("/v1/topics/orders/messages", "wrong", []byte("x")); r.status != 401 {
		t.Errorf("a wrong token is refused even on an anonymous topic: %d", r.status)
	}
}

// TestBrokerErrors: the broker's refusals map to 413, and a broker that is
// closed (down) or does not confirm in time to 503 with Retry-After.
func TestBrokerErrors(t *testing.T) {
	t.Run("too large for the broker", func(t *testing.T) {
		b := broker.New(memory.New(memory.Options{MaxMessageSize: 10}))
		defer b.Close(context.Background())
		e := newEnv(t, testConfig(), b, nil)
		r := e.post("/v1/topics/orders/messages", testToken, []byte(strings.Repeat("x", 11)))
		if r.status != 413 || r.body["error"] != ReasonTooLarge {
			t.Errorf("got %d %s", r.status, r.raw)
		}
	})
	t.Run("broker closed", func(t *testing.T) {
		b := broker.New(memory.New(memory.Options{}))
		e := newEnv(t, testConfig(), b, nil)
		_ = b.Close(context.Background())
		r := e.post("/v1/topics/orders/messages", testToken, []byte("x"), "Idempotency-Key", "k1")
		if r.status != 503 || r.body["error"] != ReasonUnavailable || r.header.Get("Retry-After") != "1" {
			t.Errorf("got %d %s (Retry-After %q)", r.status, r.raw, r.header.Get("Retry-After"))
		}
		if r := e.get("/readyz"); r.status != 503 {
			t.Errorf("/readyz after a failed publish: %d %s", r.status, r.raw)
		}
		if r := e.get("/healthz"); r.status != 200 {
			t.Errorf("/healthz: %d", r.status)
		}
		if !strings.Contains(e.logs.String(), `"level":"WARN"`) || !strings.Contains(e.logs.String(), "closed") {
			t.Errorf("the 503 is not logged at WARN with the broker's error:\n%s", e.logs.String())
		}
	})
	t.Run("broker too slow", func(t *testing.T) {
		b := broker.New(memory.New(memory.Options{Buffer: 1})) // publish waits for room
		defer b.Close(context.Background())
		cfg := testConfig()
		cfg.PublishTimeout = Duration(200 * time.Millisecond)
		e := newEnv(t, cfg, b, nil)
		if r := e.post("/v1/topics/orders/messages", testToken, []byte("fills the buffer")); r.status != 200 {
			t.Fatalf("first: %d %s", r.status, r.raw)
		}
		r := e.post("/v1/topics/orders/messages", testToken, []byte("no room"))
		if r.status != 503 || r.body["error"] != ReasonTimeout || r.header.Get("Retry-After") == "" {
			t.Errorf("got %d %s", r.status, r.raw)
		}
		if n := e.depth("orders"); n != 1 {
			t.Errorf("orders holds %d messages, want 1", n)
		}
	})
}

// blockedEnv is a handler whose broker has room for one message: after
// fill, a publish waits until a message is consumed.
func blockedEnv(t *testing.T, cfg Config) *testEnv {
	b := broker.New(memory.New(memory.Options{Buffer: 1}))
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	e := newEnv(t, cfg, b, nil)
	if r := e.post("/v1/topics/orders/messages", testToken, []byte("fill")); r.status != 200 {
		t.Fatalf("fill: %d %s", r.status, r.raw)
	}
	return e
}

// goPost sends a request in the background.
func (e *testEnv) goPost(body string, headers ...string) <-chan response {
	ch := make(chan response, 1)
	go func() { ch <- e.post("/v1/topics/orders/messages", testToken, []byte(body), headers...) }()
	return ch
}

// TestInFlightBound: with max_in_flight publishes waiting on the broker,
// one more request is shed at once with 503 instead of piling up.
func TestInFlightBound(t *testing.T) {
	cfg := testConfig()
	cfg.MaxInFlight = 2
	e := blockedEnv(t, cfg)
	a, b := e.goPost("a"), e.goPost("b")
	eventually(t, "two publishes in flight", func() bool { return len(e.h.sem) == 2 })
	r := e.post("/v1/topics/orders/messages", testToken, []byte("c"))
	if r.status != 503 || r.body["error"] != ReasonOverloaded || r.header.Get("Retry-After") == "" {
		t.Errorf("third request: %d %s", r.status, r.raw)
	}
	if got := e.metrics()["queuekit.ingest.in_flight"]; got != 2 {
		t.Errorf("in_flight gauge = %d, want 2", got)
	}
	e.receive("orders", 3) // makes room: both waiting publishes complete
	for _, ch := range []<-chan response{a, b} {
		if r := <-ch; r.status != 200 {
			t.Errorf("waiting request: %d %s", r.status, r.raw)
		}
	}
}

// TestGracefulShutdown: Shutdown turns /readyz unready, refuses new
// publishes with 503, and returns only once the publish in flight has
// been answered — with its message in the broker.
func TestGracefulShutdown(t *testing.T) {
	e := blockedEnv(t, testConfig())
	inflight := e.goPost("in flight", "Idempotency-Key", "last-one")
	eventually(t, "a publish in flight", func() bool { return len(e.h.sem) == 1 })
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- e.h.Shutdown(ctx)
	}()
	eventually(t, "draining", e.h.isDraining)
	if r := e.post("/v1/topics/orders/messages", testToken, []byte("late")); r.status != 503 || r.body["error"] != ReasonShuttingDown {
		t.Errorf("new request while draining: %d %s", r.status, r.raw)
	}
	if r := e.get("/readyz"); r.status != 503 {
		t.Errorf("/readyz while draining: %d", r.status)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a publish in flight", err)
	default:
	}
	got := e.receive("orders", 2) // room: the publish in flight completes
	if r := <-inflight; r.status != 200 || r.ids()[0] != "last-one" {
		t.Errorf("in-flight request: %d %s", r.status, r.raw)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if got[1].ID != "last-one" {
		t.Errorf("second message %q, want last-one", got[1].ID)
	}
}

// TestReadiness: /readyz follows the probe; /healthz does not.
func TestReadiness(t *testing.T) {
	var down atomic.Bool
	var probes atomic.Int64
	e := newEnv(t, testConfig(), nil, func(o *Options) {
		o.ProbeInterval = time.Millisecond
		o.Probe = func(ctx context.Context) error {
			probes.Add(1)
			if down.Load() {
				return fmt.Errorf("dial 10.1.2.3:5672: connection refused")
			}
			return nil
		}
	})
	if r := e.get("/readyz"); r.status != 200 {
		t.Errorf("up: %d %s", r.status, r.raw)
	}
	down.Store(true)
	time.Sleep(2 * time.Millisecond) // past ProbeInterval, so the cached result is stale
	r := e.get("/readyz")
	if r.status != 503 || strings.Contains(r.raw, "10.1.2.3") {
		t.Errorf("down: %d %s (the probe's error belongs in the log only)", r.status, r.raw)
	}
	if r := e.get("/healthz"); r.status != 200 {
		t.Errorf("healthz: %d", r.status)
	}
	down.Store(false)
	time.Sleep(2 * time.Millisecond)
	if r := e.get("/readyz"); r.status != 200 {
		t.Errorf("up again: %d %s", r.status, r.raw)
	}
	if probes.Load() < 3 {
		t.Errorf("%d probes", probes.Load())
	}
}

// TestOpenProbe: the probe OpenProbe makes answers for a broker URL that
// opens, and fails for one that cannot.
func TestOpenProbe(t *testing.T) {
	ctx := context.Background()
	if err := OpenProbe("mem://probe")(ctx); err != nil {
		t.Errorf("mem://: %v", err)
	}
	if err := OpenProbe("nosuch://x")(ctx); err == nil {
		t.Error("unknown scheme: no error")
	}
}

// TestIdempotentRetry: a retry with the same Idempotency-Key publishes the
// same message ID, so a consumer deduplicating by ID handles it once.
func TestIdempotentRetry(t *testing.T) {
	e := newEnv(t, testConfig(), nil, nil)
	for i := 0; i < 2; i++ {
		r := e.post("/v1/topics/orders/messages", testToken, []byte("pay 10"), "Idempotency-Key", "payment-42")
		if r.status != 200 || r.ids()[0] != "payment-42" {
			t.Fatalf("attempt %d: %d %s", i, r.status, r.raw)
		}
	}
	batch := []byte("{\"text\":\"a\"}\n{\"text\":\"b\"}\n")
	for i := 0; i < 2; i++ {
		if r := e.post("/v1/topics/orders/batch", testToken, batch, "Idempotency-Key", "b-7"); r.status != 200 {
			t.Fatalf("batch attempt %d: %d %s", i, r.status, r.raw)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := e.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(context.Background())
	var mu sync.Mutex
	handled := map[string]int{}
	h := dedupe.New(dedupe.NewMemoryStore(dedupe.MemoryOptions{}), dedupe.Options{})(broker.HandlerFunc(func(_ context.Context, m *broker.Message) error {
		mu.Lock()
		handled[m.ID]++
		mu.Unlock()
		return nil
	}))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = broker.Consume(ctx, sub, h, broker.ConsumeOptions{})
	}()
	eventually(t, "all six deliveries settled", func() bool {
		st, _ := memDepth(e.b, "orders", "test")
		return st.Acked == 6
	})
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 3 || handled["payment-42"] != 1 || handled["b-7:0"] != 1 || handled["b-7:1"] != 1 {
		t.Errorf("handled %v, want payment-42, b-7:0 and b-7:1 once each", handled)
	}
}

// TestDelayingMode: without nodelay, requests over the rate wait until
// the bucket has drained (nginx's default), and beyond the burst are
// rejected.
func TestDelayingMode(t *testing.T) {
	cfg := testConfig()
	cfg.Zones = []Zone{{Name: "slow", Key: "token", Rate: "10r/s", Burst: 2}}
	e := newEnv(t, cfg, nil, nil)
	type result struct {
		status int
		took   time.Duration
	}
	results := make(chan result, 4)
	for i := 0; i < 4; i++ {
		go func() {
			start := time.Now()
			r := e.post("/v1/topics/orders/messages", testToken, []byte("x"))
			results <- result{r.status, time.Since(start)}
		}()
	}
	var ok, limited int
	var slowest time.Duration
	for i := 0; i < 4; i++ {
		r := <-results
		switch r.status {
		case 200:
			ok++
			slowest = max(slowest, r.took)
		case 429:
			limited++
		}
	}
	// The four arrive within a few ms: excess 0, 1, 2 (delayed 100 and
	// 200 ms, less what drained meanwhile) and 3 > burst.
	if ok != 3 || limited != 1 {
		t.Fatalf("%d passed, %d limited; want 3 and 1", ok, limited)
	}
	if slowest < 150*time.Millisecond {
		t.Errorf("the last passed request took %v, want about 200 ms of delay", slowest)
	}
	var delays []float64
	for _, rec := range e.logs.records(t) {
		if d, ok := rec["delay_ms"].(float64); ok {
			delays = append(delays, d)
		}
	}
	if len(delays) != 2 {
		t.Errorf("delays logged: %v, want two", delays)
	}
	if got := e.metrics()["queuekit.ingest.delayed"]; got != 2 {
		t.Errorf("delayed counter = %d, want 2", got)
	}
}

// TestDelayedRequestsAbortOnShutdown: a request waiting in a delaying zone
// does not hold up Shutdown.
func TestDelayedRequestsAbortOnShutdown(t *testing.T) {
	cfg := testConfig()
	cfg.Zones = []Zone{{Name: "slow", Key: "global", Rate: "1r/m", Burst: 5}}
	e := newEnv(t, cfg, nil, nil)
	if r := e.post("/v1/topics/orders/messages", testToken, []byte("x")); r.status != 200 {
		t.Fatalf("first: %d", r.status)
	}
	waiting := e.goPost("waits a minute")
	eventually(t, "a delayed request", func() bool { return e.h.delayed.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.h.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if r := <-waiting; r.status != 503 || r.body["error"] != ReasonShuttingDown {
		t.Errorf("delayed request: %d %s", r.status, r.raw)
	}
}

func TestConfig(t *testing.T) {
	good := `{"tokens":[{"name":"a","sha256":"` + HashToken("t") + `","topics":["orders","x.*","*"]}],
		"zones":[{"name":"z","key":"header:X-Api","rate":"30r/m","burst":5,"delay":2}],
		"publish_timeout":"2s","server":{"listen":"127.0.0.1:0","read_timeout":"1m"}}`
	c, err := ParseConfig(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.PublishTimeout) != 2*time.Second || time.Duration(c.Server.ReadTimeout) != time.Minute {
		t.Errorf("durations: %+v", c)
	}
	for _, bad := range []string{
		`{"tokens":[{"name":"a","sha256":"abc","topics":["o"]}]}`,
		`{"tokens":[{"name":"a","sha256":"` + HashToken("t") + `","topics":[]}]}`,
		`{"tokens":[{"name":"a","sha256":"` + HashToken("t") + `","topics":["o*x"]}]}`,
		`{"tokens":[{"name":"a","sha256":"` + HashToken("t") + `","topics":["o"]},{"name":"b","sha256":"` + HashToken("t") + `","topics":["o"]}]}`,
		`{"zones":[{"name":"z","key":"token","rate":"fast"}]}`,
		`{"zones":[{"name":"z","key":"cookie","rate":"1r/s"}]}`,
		`{"zones":[{"name":"z","key":"header:Authorization","rate":"1r/s"}]}`,
		`{"zones":[{"name":"z","key":"token","rate":"1r/s","nodelay":true,"delay":1}]}`,
		`{"zones":[{"name":"z","key":"token","rate":"1r/s"},{"name":"z","key":"addr","rate":"1r/s"}]}`,
		`{"publish_timeout":5}`,
		`{"server":{"tls_cert":"c.pem"}}`,
		`{"tokenz":[]}`,
		`{} {}`,
	} {
		if _, err := ParseConfig(strings.NewReader(bad)); err == nil || broker.KindOf(err).String() != "invalid argument" {
			t.Errorf("accepted or wrong kind (%v): %s", err, bad)
		}
	}
	tok, hash := NewToken()
	if HashToken(tok) != hash || !strings.HasPrefix(tok, "qk_") || len(tok) < 40 {
		t.Errorf("NewToken: %q %q", tok, hash)
	}
	if _, err := New(Options{Config: c}); err == nil {
		t.Error("New without a publisher")
	}
}
