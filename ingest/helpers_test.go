package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/queuekit/queuekit/adapters/memory"
	"github.com/queuekit/queuekit/broker"
)

const testToken = "qk_test-token-that-must-never-be-logged"

func testConfig() Config {
	return Config{Tokens: []Token{
		{Name: "app", SHA256: HashToken(testToken), Topics: []string{"orders", "events.*"}},
	}}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// records returns the access-log records, decoded.
func (s *syncBuffer) records(t testing.TB) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// testEnv is a Handler over an in-process broker, served on loopback.
type testEnv struct {
	t      testing.TB
	url    string
	b      *broker.Broker
	h      *Handler
	logs   *syncBuffer
	reader *sdkmetric.ManualReader
	client *http.Client
}

// newEnv serves a Handler configured by cfg over broker b (a fresh
// memory broker when nil). The topic "orders" has a subscriber group
// "test" before anything is published.
func newEnv(t testing.TB, cfg Config, b *broker.Broker, tweak func(*Options)) *testEnv {
	t.Helper()
	if b == nil {
		b = broker.New(memory.New(memory.Options{}))
		t.Cleanup(func() { _ = b.Close(context.Background()) })
	}
	ctx := context.Background()
	// The topics the tests publish to have a group (publishing to a topic
	// without one is refused on every broker).
	for _, topic := range []string{"orders", "events.eu"} {
		if err := b.Declare(ctx, topic, "test"); err != nil {
			t.Fatal(err)
		}
	}
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close(context.Background()) })
	e := &testEnv{t: t, b: b, logs: &syncBuffer{}, reader: sdkmetric.NewManualReader()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	opts := Options{
		Publisher:     pub,
		Config:        cfg,
		Logger:        slog.New(slog.NewJSONHandler(e.logs, nil)),
		MeterProvider: mp,
	}
	if tweak != nil {
		tweak(&opts)
	}
	if e.h, err = New(opts); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(e.h)
	t.Cleanup(srv.Close)
	e.url = srv.URL
	e.client = &http.Client{Timeout: 30 * time.Second}
	return e
}

// response is a decoded answer.
type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (r response) ids() []string {
	var out []string
	list, _ := r.body["ids"].([]any)
	for _, v := range list {
		s, _ := v.(string)
		out = append(out, s)
	}
	return out
}

// post sends a POST with the test token (token "" sends none) and the
// given headers.
func (e *testEnv) post(path, token string, body []byte, headers ...string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.url+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	return e.do(req)
}

func (e *testEnv) get(path string) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodGet, e.url+path, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.do(req)
}

func (e *testEnv) do(req *http.Request) response {
	e.t.Helper()
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	r := response{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

// receive takes n messages from topic's group "test", acking them.
func (e *testEnv) receive(topic string, n int) []*broker.Message {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := e.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	defer sub.Close(context.Background())
	var out []*broker.Message
	for len(out) < n {
		d, err := sub.Receive(ctx)
		if err != nil {
			e.t.Fatalf("received %d of %d messages: %v", len(out), n, err)
		}
		out = append(out, d.Message())
		_ = d.Ack(ctx)
	}
	return out
}

// depth is how many messages wait in topic's group "test".
func (e *testEnv) depth(topic string) int {
	st, _ := memDepth(e.b, topic, "test")
	return st.Depth()
}

// metrics returns each metric's total: counters and up-down counters
// summed over the data points whose attributes include attr (all when attr
// is empty), histograms as their count.
func (e *testEnv) metrics(attr ...attribute.KeyValue) map[string]int64 {
	e.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := e.reader.Collect(context.Background(), &rm); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int64{}
	match := func(s attribute.Set) bool {
		for _, a := range attr {
			if v, ok := s.Value(a.Key); !ok || v != a.Value {
				return false
			}
		}
		return true
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					if match(p.Attributes) {
						out[m.Name] += p.Value
					}
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					if match(p.Attributes) {
						out[m.Name] += int64(p.Count)
					}
				}
			}
		}
	}
	return out
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// memDepth is the memory broker's Depth under b.
func memDepth(b *broker.Broker, topic, group string) (memory.GroupStats, bool) {
	var m *memory.Broker
	if !b.As(&m) {
		return memory.GroupStats{}, false
	}
	return m.Depth(topic, group)
}
