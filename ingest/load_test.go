package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/queuekit/queuekit/adapters/memory"
	_ "github.com/queuekit/queuekit/adapters/rabbitmq"
	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/conformance"
	"github.com/queuekit/queuekit/internal/testenv"
)

// load is an open-loop load generator: requests leave at a fixed rate,
// each on its own goroutine, at most maxOpen unanswered at once (beyond
// that the sender waits, and the achieved rate is reported).
type load struct {
	url     string // the publish endpoint
	token   string
	rps     int
	dur     time.Duration
	maxOpen int
	client  *http.Client

	mu        sync.Mutex
	statuses  map[int]int
	sums      map[string][32]byte // id -> SHA-256 of the body, for every 200
	statusOf  map[string]int      // id -> status
	latencies []time.Duration     // of the 200s
	sentAt    map[string]time.Duration
	acceptAt  []time.Duration // send times of the 200s
	errs      []string
	sent      int
	elapsed   time.Duration
}

func newLoad(url, token string, rps int, dur time.Duration) *load {
	return &load{url: url, token: token, rps: rps, dur: dur, maxOpen: 256,
		client:   &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 256}},
		statuses: map[int]int{}, sums: map[string][32]byte{}, statusOf: map[string]int{}, sentAt: map[string]time.Duration{}}
}

// run sends the load; tick, when not nil, is called by the sender with the
// time elapsed since the start before each request.
func (l *load) run(t *testing.T, tick func(time.Duration)) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	open := make(chan struct{}, l.maxOpen)
	var wg sync.WaitGroup
	interval := time.Second / time.Duration(l.rps)
	start := time.Now()
	for i := 0; ; i++ {
		at := time.Duration(i) * interval
		if at >= l.dur {
			break
		}
		if d := time.Until(start.Add(at)); d > 0 {
			time.Sleep(d) // pacing: the load's own schedule
		}
		if tick != nil {
			tick(time.Since(start))
		}
		body := make([]byte, 64+rng.IntN(2048))
		for j := range body {
			body[j] = byte(rng.Uint32())
		}
		id := "load-" + strconv.Itoa(i)
		open <- struct{}{}
		wg.Add(1)
		l.sent++
		sent := time.Since(start)
		go func() {
			defer wg.Done()
			defer func() { <-open }()
			req, _ := http.NewRequest(http.MethodPost, l.url, bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+l.token)
			req.Header.Set("Idempotency-Key", id)
			req.Header.Set("Queuekit-Key", strconv.Itoa(len(body)%7))
			began := time.Now()
			resp, err := l.client.Do(req)
			took := time.Since(began)
			l.mu.Lock()
			defer l.mu.Unlock()
			if err != nil {
				l.errs = append(l.errs, err.Error())
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			l.statuses[resp.StatusCode]++
			l.statusOf[id] = resp.StatusCode
			l.sentAt[id] = sent
			if resp.StatusCode == http.StatusOK {
				l.sums[id] = sha256.Sum256(body)
				l.latencies = append(l.latencies, took)
				l.acceptAt = append(l.acceptAt, sent)
			}
		}()
	}
	wg.Wait()
	l.elapsed = time.Since(start)
}

// check: every request got 200, 429 or 503 (or only the given statuses).
func (l *load) check(t *testing.T, allowed ...int) {
	t.Helper()
	if len(l.errs) > 0 {
		t.Errorf("%d requests failed: %v", len(l.errs), l.errs[:min(3, len(l.errs))])
	}
	ok := map[int]bool{200: true}
	for _, s := range allowed {
		ok[s] = true
	}
	for s, n := range l.statuses {
		if !ok[s] {
			t.Errorf("%d requests got status %d", n, s)
		}
	}
}

func (l *load) report(t *testing.T) {
	t.Helper()
	lat := append([]time.Duration(nil), l.latencies...)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	t.Logf("sent %d requests in %v (%.0f r/s offered): statuses %v; accepted latency p50 %v, p99 %v, max %v",
		l.sent, l.elapsed.Round(time.Millisecond), float64(l.sent)/l.elapsed.Seconds(), l.statuses,
		pct(0.50).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), pct(1).Round(10*time.Microsecond))
}

// ledgerConsumer receives every message of topic's group and checks it
// against the load's record.
type ledgerConsumer struct {
	mu     sync.Mutex
	got    []string // IDs in the order received
	sums   map[string][32]byte
	count  atomic.Int64
	done   chan struct{}
	cancel context.CancelFunc
}

func consume(t *testing.T, sub *broker.Subscriber) *ledgerConsumer {
	ctx, cancel := context.WithCancel(context.Background())
	c := &ledgerConsumer{sums: map[string][32]byte{}, done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(c.done)
		for {
			d, err := sub.Receive(ctx)
			if err != nil {
				return
			}
			m := d.Message()
			c.mu.Lock()
			c.got = append(c.got, m.ID)
			c.sums[m.ID] = sha256.Sum256(m.Payload)
			c.mu.Unlock()
			c.count.Add(1)
			if err := d.Ack(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("ack %s: %v", m.ID, err)
			}
		}
	}()
	return c
}

func (c *ledgerConsumer) stop() {
	c.cancel()
	<-c.done
}

// verify: every request that got a 200 is in the broker exactly once with
// its body intact; a message whose request got no 200 may be there only if
// the request got 503 (the broker may have taken it before the answer was
// lost: the client retries it with the same key).
func (c *ledgerConsumer) verify(t *testing.T, l *load) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	ledger := conformance.NewLedger()
	for id := range l.sums {
		ledger.Published(id, "")
	}
	maybe := 0
	for id := range c.sums {
		if _, ok := l.sums[id]; !ok {
			if l.statusOf[id] != http.StatusServiceUnavailable {
				t.Errorf("message %s is in the broker, but its request got %d", id, l.statusOf[id])
			}
			ledger.Published(id, "") // a 503 that reached the broker: allowed, but once
			maybe++
		}
	}
	for _, id := range c.got {
		ledger.Delivered(id)
		ledger.Handled(id)
	}
	if maybe > 0 {
		t.Logf("%d requests answered 503 reached the broker all the same (a retry with the same key dedupes them)", maybe)
	}
	rep := ledger.Report()
	if len(rep.Lost) > 0 || len(rep.DuplicateIDs) > 0 || len(rep.Unexpected) > 0 {
		t.Errorf("ledger: %d lost %v, %d duplicated %v, %d unexpected", len(rep.Lost), conformance.Sample(rep.Lost, 5),
			len(rep.DuplicateIDs), conformance.Sample(rep.DuplicateIDs, 5), len(rep.Unexpected))
	}
	bad := 0
	for id, want := range l.sums {
		if got, ok := c.sums[id]; ok && got != want {
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d messages arrived with a body other than the one sent", bad)
	}
}

// heapWatch samples the heap in use while a load runs.
type heapWatch struct {
	stop    chan struct{}
	done    chan struct{}
	base    uint64
	samples []uint64
	gor     int
}

func watchHeap() *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w := &heapWatch{stop: make(chan struct{}), done: make(chan struct{}), base: ms.HeapInuse}
	go func() {
		defer close(w.done)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tk.C:
				runtime.ReadMemStats(&ms)
				w.samples = append(w.samples, ms.HeapInuse)
				w.gor = max(w.gor, runtime.NumGoroutine())
			}
		}
	}()
	return w
}

// end stops sampling and checks that the heap stayed under base+bound and
// did not grow from the first half of the run to the second beyond slack.
func (w *heapWatch) end(t *testing.T, bound, slack uint64) {
	t.Helper()
	close(w.stop)
	<-w.done
	if len(w.samples) < 4 {
		t.Fatalf("only %d heap samples", len(w.samples))
	}
	half := len(w.samples) / 2
	peak := func(s []uint64) uint64 {
		var m uint64
		for _, v := range s {
			m = max(m, v)
		}
		return m
	}
	p1, p2 := peak(w.samples[:half]), peak(w.samples[half:])
	t.Logf("heap in use: %d MiB before, peak %d MiB in the first half, %d MiB in the second; at most %d goroutines",
		w.base>>20, p1>>20, p2>>20, w.gor)
	if max(p1, p2) > w.base+bound {
		t.Errorf("heap peaked at %d MiB, over %d MiB + %d MiB", max(p1, p2)>>20, w.base>>20, bound>>20)
	}
	if p2 > p1+slack {
		t.Errorf("heap grew from %d MiB to %d MiB during the run", p1>>20, p2>>20)
	}
}

// TestLoadAtThreeTimesTheRate: 600 r/s offered against a 200 r/s zone, for a
// bounded time over loopback. Every 200 is in the broker exactly once, body
// intact; every other answer is 429 or 503; the heap stays bounded and
// flat; the accepted count never exceeds what the zone allows.
func TestLoadAtThreeTimesTheRate(t *testing.T) {
	const rate, burst, offered = 200, 50, 600
	cfg := testConfig()
	cfg.Zones = []Zone{{Name: "all", Key: "global", Rate: strconv.Itoa(rate) + "r/s", Burst: burst, NoDelay: true}}
	cfg.MaxInFlight = 64
	b := broker.New(memory.New(memory.Options{}))
	defer b.Close(context.Background())
	ctx := context.Background()
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "ledger"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	e := newEnv(t, cfg, b, func(o *Options) { o.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil)) })
	c := consume(t, sub)

	l := newLoad(e.url+"/v1/topics/orders/messages", testToken, offered, 2500*time.Millisecond)
	w := watchHeap()
	l.run(t, nil)
	w.end(t, 64<<20, 16<<20)
	l.report(t)
	l.check(t, 429, 503)

	eventually(t, "the consumer has every accepted message", func() bool { return int(c.count.Load()) >= len(l.sums) })
	st, _ := memDepth(b, "orders", "ledger")
	eventually(t, "the group is drained", func() bool { st, _ = memDepth(b, "orders", "ledger"); return st.Depth() == 0 })
	c.stop()
	c.verify(t, l)

	// The zone lets through at most burst+1 plus rate per second of the run.
	limit := burst + 1 + int(float64(rate)*l.elapsed.Seconds()) + 1
	if n := len(l.sums); n > limit || n < limit/2 {
		t.Errorf("%d accepted in %v; the zone allows at most %d", n, l.elapsed, limit)
	}
	if l.statuses[429] == 0 {
		t.Error("no request was rate limited")
	}
}

// proxy is a TCP proxy in front of RabbitMQ that a test takes down
// (refusing and cutting every connection) and brings back up on the same
// port.
type proxy struct {
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
}

func startProxy(t *testing.T, target string) *proxy {
	p := &proxy{target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.down)
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.ln != ln {
				p.mu.Unlock()
				c.Close()
				s.Close()
				return
			}
			p.conns[c], p.conns[s] = true, true
			p.mu.Unlock()
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				dst.Close()
				src.Close()
			}
			go pipe(s, c)
			go pipe(c, s)
		}
	}()
}

// down closes the listener and every connection: the broker is gone.
func (p *proxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

// up listens again on the same address.
func (p *proxy) up(t *testing.T) {
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			p.serve(ln)
			return
		}
		time.Sleep(20 * time.Millisecond) // the port is in TIME_WAIT or similar
	}
	t.Fatalf("proxy: listening again on %s: %v", p.addr, err)
}

// TestBrokerDownMidLoad: RabbitMQ becomes unreachable for a second in the
// middle of a load and comes back. Requests in the outage get 503 with
// Retry-After (the in-flight bound sheds the rest at once); /readyz turns
// unready and ready again; every 200 is in RabbitMQ exactly once, body
// intact; publishing resumes after the outage.
func TestBrokerDownMidLoad(t *testing.T) {
	direct := testenv.RabbitMQ(t)
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5672")
	}
	p := startProxy(t, target)
	viaProxy := *u
	viaProxy.Host = p.addr
	q := viaProxy.Query()
	q.Set("reconnect_max_wait", "200ms")
	q.Set("connect_timeout", "1s")
	q.Set("heartbeat", "1s")
	viaProxy.RawQuery = q.Encode()

	topic := fmt.Sprintf("ingest-outage-%d", time.Now().UnixNano())
	t.Cleanup(func() { testenv.DeleteRabbitMQ(t, direct, []string{topic + ".ledger"}, nil) })
	ctx := context.Background()
	consumerSide, err := broker.Open(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer consumerSide.Close(ctx)
	sub, err := consumerSide.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "ledger"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	c := consume(t, sub)

	pubSide, err := broker.Open(ctx, viaProxy.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pubSide.Close(ctx)
	pub, err := pubSide.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)

	cfg := Config{
		Tokens:         []Token{{Name: "app", SHA256: HashToken(testToken), Topics: []string{topic}}},
		MaxInFlight:    32,
		PublishTimeout: Duration(500 * time.Millisecond),
	}
	h, err := New(Options{Publisher: pub, Config: cfg, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)),
		Probe: OpenProbe(viaProxy.String()), ProbeInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	// Watch /readyz throughout.
	var sawUnready, sawReadyAfter atomic.Bool
	var outageOver atomic.Bool
	stopWatch := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(50 * time.Millisecond):
			}
			resp, err := http.Get(srv.URL + "/readyz")
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode == 503 {
				sawUnready.Store(true)
			} else if outageOver.Load() && sawUnready.Load() {
				sawReadyAfter.Store(true)
			}
		}
	}()

	const downAt, upAt = time.Second, 2 * time.Second
	l := newLoad(srv.URL+"/v1/topics/"+topic+"/messages", testToken, 150, 3500*time.Millisecond)
	var wentDown, cameUp bool
	l.run(t, func(el time.Duration) {
		if !wentDown && el >= downAt {
			wentDown = true
			p.down()
		}
		if !cameUp && el >= upAt {
			cameUp = true
			p.up(t)
			outageOver.Store(true)
		}
	})
	l.report(t)
	l.check(t, 503)
	eventually(t, "/readyz ready again after the outage", sawReadyAfter.Load)
	close(stopWatch)
	<-watchDone
	if !sawUnready.Load() {
		t.Error("/readyz never reported the outage")
	}
	if l.statuses[503] == 0 {
		t.Error("no request got 503 during the outage")
	}
	var after int
	for _, at := range l.acceptAt {
		if at > upAt+500*time.Millisecond {
			after++
		}
	}
	if after == 0 {
		t.Error("no request was accepted after the broker came back")
	}
	eventually(t, "the consumer has every accepted message", func() bool { return int(c.count.Load()) >= len(l.sums) })
	// Wait a moment more for any message whose 503 was sent after RabbitMQ
	// took it; then nothing more can come.
	time.Sleep(300 * time.Millisecond)
	c.stop()
	c.verify(t, l)
	t.Logf("accepted %d, of which %d after the outage; 503: %d", len(l.sums), after, l.statuses[503])
}

// TestRabbitMQTopicWithoutQueue: RabbitMQ refuses a message no queue is
// bound for (mandatory publishing: kind NotFound), which is a 404 that
// names the topic, not a 503 to retry.
func TestRabbitMQTopicWithoutQueue(t *testing.T) {
	amqpURL := testenv.RabbitMQ(t)
	ctx := context.Background()
	b, err := broker.Open(ctx, amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	pub, err := b.NewPublisher(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close(ctx)
	topic := fmt.Sprintf("ingest-nobody-%d", time.Now().UnixNano())
	h, err := New(Options{Publisher: pub, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil)), Config: Config{
		Tokens: []Token{{Name: "app", SHA256: HashToken(testToken), Topics: []string{"ingest-nobody-*"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	e := &testEnv{t: t, url: srv.URL, client: &http.Client{Timeout: 30 * time.Second}}
	r := e.post("/v1/topics/"+topic+"/messages", testToken, []byte("x"))
	if r.status != http.StatusNotFound || r.body["error"] != ReasonNotFound {
		t.Errorf("got %d %s", r.status, r.raw)
	}
}
