package limitreq

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func zone(t *testing.T, rate string, maxKeys int) *Zone {
	t.Helper()
	r, err := ParseRate(rate)
	if err != nil {
		t.Fatal(err)
	}
	z, err := NewZone("z", r, maxKeys)
	if err != nil {
		t.Fatal(err)
	}
	return z
}

func limiter(t *testing.T, limits ...Limit) *Limiter {
	t.Helper()
	l, err := New(limits...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// step is one request of a hand-computed trace: its millisecond and the
// result nginx's arithmetic gives.
type step struct {
	at     int64
	status Status
	excess int64
	delay  time.Duration
}

func run(t *testing.T, l *Limiter, key string, steps []step) {
	t.Helper()
	for i, s := range steps {
		r := l.CheckAt(s.at, []string{key})
		if r.Status != s.status || r.Excess != s.excess || r.Delay != s.delay {
			t.Errorf("request %d at %d ms: got %v excess %s delay %v, want %v excess %s delay %v",
				i, s.at, r.Status, ExcessString(r.Excess), r.Delay, s.status, ExcessString(s.excess), s.delay)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]Rate{"50r/s": 50000, "1r/s": 1000, "30r/m": 500, "1r/m": 16, "7": 7000, "100r/m": 1666} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0r/s", "-1r/s", "r/s", "5r/h", "1.5r/s", "5 r/s"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) accepted", in)
		}
	}
	if s := Rate(500).String(); s != "0.500r/s" {
		t.Errorf("Rate(500) = %q", s)
	}
	if s := PerSecond(50).String(); s != "50r/s" {
		t.Errorf("PerSecond(50) = %q", s)
	}
}

// TestNoDelayBurst: rate=50r/s burst=20 nodelay — a key's first request
// starts at excess 0 and each one at the same millisecond adds 1000, so 21
// pass and the rest are rejected without being accounted; then every 20 ms
// drains one request's worth.
func TestNoDelayBurst(t *testing.T) {
	l := limiter(t, Limit{Zone: zone(t, "50r/s", 0), Burst: 20, NoDelay: true})
	var steps []step
	for i := 0; i <= 20; i++ {
		steps = append(steps, step{at: 1000, status: Passed, excess: int64(i) * 1000})
	}
	steps = append(steps,
		step{at: 1000, status: Rejected, excess: 21000},
		step{at: 1019, status: Rejected, excess: 20050}, // 20000 - 50*19 + 1000
		step{at: 1020, status: Passed, excess: 20000},   // 20000 - 50*20 + 1000
		step{at: 1030, status: Rejected, excess: 20500},
		step{at: 2020, status: Passed, excess: 0},    // 20000 - 50000 + 1000 < 0: drained, nothing owed
		step{at: 1020, status: Passed, excess: 1000}, // clock 1 s back: counts as 0 ms
		step{at: 90000, status: Passed, excess: 0},   // long idle
		step{at: 20000, status: Passed, excess: 950}, // 70 s back (< -60 s) counts as 1 ms: 0 - 50 + 1000
	)
	run(t, l, "a", steps)
	if r := l.CheckAt(1000, []string{"b"}); r.Status != Passed || r.Excess != 0 {
		t.Errorf("another key shares the bucket: %+v", r)
	}
}

// TestRetryAfter: a rejected request learns when the key would pass again.
func TestRetryAfter(t *testing.T) {
	l := limiter(t, Limit{Zone: zone(t, "10r/s", 0), Burst: 2, NoDelay: true})
	for i := 0; i < 3; i++ {
		l.CheckAt(0, []string{"k"})
	}
	r := l.CheckAt(30, []string{"k"}) // 2000 - 300 + 1000 = 2700: 700 over, 70 ms at 10r/s
	if r.Status != Rejected || r.RetryAfter != 70*time.Millisecond {
		t.Fatalf("got %+v, want rejected with RetryAfter 70ms", r)
	}
	if r := l.CheckAt(99, []string{"k"}); r.Status != Rejected {
		t.Fatalf("at 99 ms: %+v", r)
	}
	if r := l.CheckAt(100, []string{"k"}); r.Status != Passed || r.Excess != 2000 {
		t.Fatalf("at 100 ms (30+70): %+v", r)
	}
}

// TestDelayMode: without nodelay every request beyond the rate waits until
// the bucket has drained back (excess*1000/rate ms); beyond the burst it is
// rejected.
func TestDelayMode(t *testing.T) {
	l := limiter(t, Limit{Zone: zone(t, "10r/s", 0), Burst: 5})
	steps := []step{{at: 0, status: Passed, excess: 0}}
	for i := 1; i <= 5; i++ {
		steps = append(steps, step{at: 0, status: Delayed, excess: int64(i) * 1000, delay: time.Duration(i) * 100 * time.Millisecond})
	}
	steps = append(steps,
		step{at: 0, status: Rejected, excess: 6000},
		step{at: 250, status: Delayed, excess: 3500, delay: 350 * time.Millisecond}, // 5000 - 2500 + 1000
	)
	run(t, l, "k", steps)
}

// TestTwoStageDelay: nginx's delay=N passes the first N of a burst at once
// and delays the rest by the excess beyond N.
func TestTwoStageDelay(t *testing.T) {
	l := limiter(t, Limit{Zone: zone(t, "10r/s", 0), Burst: 5, Delay: 2})
	run(t, l, "k", []step{
		{at: 0, status: Passed, excess: 0},
		{at: 0, status: Passed, excess: 1000},
		{at: 0, status: Passed, excess: 2000},
		{at: 0, status: Delayed, excess: 3000, delay: 100 * time.Millisecond},
		{at: 0, status: Delayed, excess: 4000, delay: 200 * time.Millisecond},
		{at: 0, status: Delayed, excess: 5000, delay: 300 * time.Millisecond},
		{at: 0, status: Rejected, excess: 6000},
	})
}

// TestPerMinuteTruncation: 30r/m is 500 thousandths per second, and the
// drain rate*ms/1000 is truncated as in nginx.
func TestPerMinuteTruncation(t *testing.T) {
	l := limiter(t, Limit{Zone: zone(t, "30r/m", 0), Burst: 1, NoDelay: true})
	run(t, l, "k", []step{
		{at: 0, status: Passed, excess: 0},
		{at: 1, status: Passed, excess: 1000},      // 0 - 500*1/1000 (= 0) + 1000
		{at: 3, status: Rejected, excess: 1999},    // 1000 - 500*2/1000 (= 1) + 1000
		{at: 2000, status: Rejected, excess: 1001}, // 1000 - 500*1999/1000 (= 999) + 1000
		{at: 2001, status: Passed, excess: 1000},   // 1000 - 1000 + 1000
	})
}

// TestSeveralLimits: a request passes only when every applied limit has
// room; a rejection by a later limit accounts nothing in an earlier one; an
// empty key exempts the request from a limit; the longest delay wins.
func TestSeveralLimits(t *testing.T) {
	perClient := zone(t, "10r/s", 0)
	global, _ := NewZone("global", PerSecond(100), 0)
	l := limiter(t, Limit{Zone: perClient, Burst: 10, NoDelay: true}, Limit{Zone: global, Burst: 2})
	for i := 0; i < 3; i++ {
		if r := l.CheckAt(0, []string{"a", "all"}); r.Status == Rejected {
			t.Fatalf("request %d: %+v", i, r)
		}
	}
	r := l.CheckAt(0, []string{"a", "all"})
	if r.Status != Rejected || r.Zone != "global" {
		t.Fatalf("4th request: %+v, want rejected by global", r)
	}
	// perClient "a" holds 2000 (three accounted), not 3000.
	if r := l.CheckAt(0, []string{"a", ""}); r.Status != Passed || r.Excess != 3000 || r.Zone != "z" {
		t.Fatalf("exempt from global: %+v, want passed at excess 3.000 in z", r)
	}
	// Delay: global (20 ms per request over) against z (nodelay).
	// global: 2000 - 100000*10/1000 + 1000 = 2000, waiting 2000*1000/100000 ms.
	if r := l.CheckAt(10, []string{"b", "all"}); r.Status != Delayed || r.Zone != "global" || r.Delay != 20*time.Millisecond || r.Excess != 2000 {
		t.Fatalf("delayed by global: %+v", r)
	}
	if r := l.CheckAt(0, []string{"", ""}); r.Status != Passed || r.Zone != "" {
		t.Fatalf("no key: %+v", r)
	}
}

// TestZoneBounded: a zone never holds more than maxKeys idle keys; the
// least recently used one goes first, and keys idle for a minute with
// nothing left to drain are dropped as new keys come.
func TestZoneBounded(t *testing.T) {
	z := zone(t, "1r/s", 3)
	l := limiter(t, Limit{Zone: z, Burst: 5, NoDelay: true})
	for _, k := range []string{"a", "b", "c", "a", "a"} {
		l.CheckAt(0, []string{k})
	}
	l.CheckAt(0, []string{"d"}) // full: drops b, the least recently used
	if z.Len() != 3 {
		t.Fatalf("len %d, want 3", z.Len())
	}
	if r := l.CheckAt(0, []string{"a"}); r.Excess != 3000 {
		t.Errorf("a kept its state: excess %s, want 3.000", ExcessString(r.Excess))
	}
	if r := l.CheckAt(0, []string{"b"}); r.Excess != 0 {
		t.Errorf("b was dropped and starts afresh: excess %s", ExcessString(r.Excess))
	}
	// A minute later, new keys sweep up to two drained idle keys each.
	l.CheckAt(70000, []string{"e"})
	if z.Len() > 3 {
		t.Errorf("len %d after expiry, want <= 3", z.Len())
	}
	for i := 0; i < 10000; i++ {
		l.CheckAt(70000+int64(i), []string{string(rune('A' + i%50))})
	}
	if z.Len() != 3 {
		t.Errorf("len %d, want 3", z.Len())
	}
}

// TestConcurrentExact: concurrent checks at one millisecond pass exactly
// burst+1 requests.
func TestConcurrentExact(t *testing.T) {
	l := limiter(t, Limit{Zone: zone(t, "1r/s", 0), Burst: 50, NoDelay: true})
	var passed atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100; i++ {
				if l.CheckAt(5, []string{"k"}).Status == Passed {
					passed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if passed.Load() != 51 {
		t.Fatalf("%d passed, want 51", passed.Load())
	}
}

func TestNewRejectsBadLimits(t *testing.T) {
	z := zone(t, "1r/s", 0)
	for name, lims := range map[string][]Limit{
		"no zone":   {{}},
		"duplicate": {{Zone: z}, {Zone: z}},
		"burst":     {{Zone: z, Burst: -1}},
		"both":      {{Zone: z, NoDelay: true, Delay: 2}},
	} {
		if _, err := New(lims...); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewZone("x", 0, 0); err == nil {
		t.Error("zero rate accepted")
	}
}

// TestCheckReadsTheClock: Check decides at Now's reading, reports it in
// At, and Time maps it to the wall clock's millisecond.
func TestCheckReadsTheClock(t *testing.T) {
	l := limiter(t, Limit{Zone: zone(t, "1r/s", 0), Burst: 1, NoDelay: true})
	before := Now()
	wall := time.Now()
	r := l.Check([]string{"k"})
	after := Now()
	if r.Status != Passed || r.At < before || r.At > after {
		t.Fatalf("got %+v, want passed at a reading in [%d, %d]", r, before, after)
	}
	if d := Time(r.At).Sub(wall); d < -time.Millisecond || d > time.Second {
		t.Errorf("Time(At) is %v from the wall clock", d)
	}
	if Time(r.At).UnixMilli()-Time(0).UnixMilli() != r.At || Millis(Time(r.At)) != r.At {
		t.Errorf("Time and Millis disagree at %d", r.At)
	}
	if r := l.Check([]string{"k"}); r.Status != Passed || r.Excess != 1000 {
		t.Errorf("second: %+v", r)
	}
	if r := l.Check([]string{"k"}); r.Status != Rejected || r.RetryAfter <= 0 {
		t.Errorf("third: %+v", r)
	}
}
