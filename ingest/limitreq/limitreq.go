// Package limitreq is nginx's request rate limiter (ngx_http_limit_req_module,
// as of nginx 1.22) in Go, with the same arithmetic, so that a limit moved
// from an nginx configuration decides every request the same way:
//
//	limit_req_zone $key zone=ingest:10m rate=50r/s;      NewZone("ingest", rate, maxKeys)
//	limit_req zone=ingest burst=100 nodelay;             Limit{Zone: z, Burst: 100, NoDelay: true}
//
// # The algorithm
//
// Each key of a zone has an excess, in thousandths of a request, and the
// millisecond of its last accounted request. A request at millisecond now
// computes
//
//	excess = max(0, prev_excess - rate*(now-last)/1000 + 1000)
//
// with rate in thousandths of a request per second (50r/s is 50000, 30r/m
// is 500) and integer division, as nginx does. The request is rejected when
// excess > burst*1000 and then changes nothing. Otherwise the excess is
// stored, and last is set to now unless no millisecond passed since the last
// request (nginx keeps last then, so sub-millisecond drain is never lost to
// truncation). A key seen for the first time starts at excess 0. Elapsed
// times below zero count as 0, and below -60 s as 1 (nginx's guard against
// clock steps).
//
// An accepted request passes at once (Passed) when its excess is at most
// the limit's delay threshold — all of the burst with NoDelay, none of it by
// default, Delay requests with nginx's delay=N — and otherwise waits
// (Delayed) (excess - delay*1000)*1000/rate milliseconds, which is when the
// leaky bucket has drained back to the threshold: the delaying mode spaces
// the excess out to the rate instead of letting it through at once. The
// wait is the caller's to do; the excess is accounted at arrival, as nginx
// does, so later requests see it.
//
// Several limits are checked in order, like several limit_req directives in
// one location: a request passes only if every limit's key is within its
// burst; only then is it accounted in every zone, and it waits for the
// longest of their delays. A limit whose key is empty does not apply to
// the request (nginx skips empty keys).
//
// # Memory
//
// A zone holds at most maxKeys keys, like the fixed size of an nginx zone.
// As in nginx, adding a key first drops up to two least recently used keys
// that have been idle for a minute and have drained to zero, and when the
// zone is full the least recently used key is dropped even if it has not
// drained (its client then starts afresh, at excess 0).
//
// # Time
//
// nginx counts milliseconds of a monotonic clock (ngx_current_msec); so
// does Now, whose milliseconds start on the wall clock's millisecond
// boundaries (so Time(ms).UnixMilli() steps with ms). Check reads Now while
// it holds the zone's lock, so that decisions are made in the order of the
// times they use, as in nginx's single-threaded event loop, and reports the
// reading in Result.At; CheckAt takes the reading from the caller, for
// replays and tests.
package limitreq

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Rate is a request rate in nginx's unit: thousandths of a request per
// second, so 50r/s is Rate(50000) and 30r/m is Rate(500).
type Rate int64

// PerSecond returns n requests per second.
func PerSecond(n int64) Rate { return Rate(n * 1000) }

// PerMinute returns n requests per minute, truncated to nginx's unit as
// nginx does (n*1000/60).
func PerMinute(n int64) Rate { return Rate(n * 1000 / 60) }

// ParseRate reads a rate the way nginx's limit_req_zone reads rate=: a
// positive integer followed by "r/s" or "r/m" (a bare number is per
// second), such as "50r/s" or "30r/m".
func ParseRate(s string) (Rate, error) {
	num, scale := s, int64(1)
	switch {
	case strings.HasSuffix(s, "r/s"):
		num = strings.TrimSuffix(s, "r/s")
	case strings.HasSuffix(s, "r/m"):
		num, scale = strings.TrimSuffix(s, "r/m"), 60
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > 1<<40 {
		return 0, fmt.Errorf("limitreq: invalid rate %q: want a positive number of requests and r/s or r/m, such as 50r/s", s)
	}
	r := Rate(n * 1000 / scale)
	if r <= 0 {
		return 0, fmt.Errorf("limitreq: rate %q is below nginx's resolution of 0.001r/s", s)
	}
	return r, nil
}

// String returns the rate as nginx would write it, such as "50r/s", or with
// three decimals when it is not a whole number per second ("0.500r/s").
func (r Rate) String() string {
	if r%1000 == 0 {
		return fmt.Sprintf("%dr/s", int64(r)/1000)
	}
	return fmt.Sprintf("%d.%03dr/s", int64(r)/1000, int64(r)%1000)
}

// DefaultMaxKeys is the number of keys a zone holds when NewZone is given 0:
// about what a 10 MB nginx zone holds for IPv4 addresses (160000), rounded.
const DefaultMaxKeys = 100000

// Zone is the shared state of one rate: the excess of each key. Several
// Limiters may share a zone, as several nginx locations share a
// limit_req_zone. It is safe for concurrent use.
type Zone struct {
	name    string
	rate    int64
	maxKeys int

	mu    sync.Mutex
	nodes map[string]*node
	lru   node // sentinel of a circular list: lru.next is the most recently used
}

type node struct {
	key        string
	excess     int64 // thousandths of a request
	last       int64 // ms of the last accounted request
	fresh      bool  // created by a check that was not accounted yet (nginx's last = 0)
	count      int   // checks in progress that will account this node (nginx's count)
	prev, next *node
}

// NewZone returns a zone of the given rate holding at most maxKeys keys
// (DefaultMaxKeys when 0).
func NewZone(name string, rate Rate, maxKeys int) (*Zone, error) {
	if rate <= 0 {
		return nil, fmt.Errorf("limitreq: zone %q: rate must be positive", name)
	}
	if maxKeys < 0 {
		return nil, fmt.Errorf("limitreq: zone %q: maxKeys %d must be >= 0", name, maxKeys)
	}
	if maxKeys == 0 {
		maxKeys = DefaultMaxKeys
	}
	z := &Zone{name: name, rate: int64(rate), maxKeys: maxKeys, nodes: make(map[string]*node)}
	z.lru.next, z.lru.prev = &z.lru, &z.lru
	return z, nil
}

// Name returns the zone's name.
func (z *Zone) Name() string { return z.name }

// Rate returns the zone's rate.
func (z *Zone) Rate() Rate { return Rate(z.rate) }

// Len returns the number of keys the zone holds now.
func (z *Zone) Len() int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return len(z.nodes)
}

// Limit applies a zone with a burst, like one limit_req directive.
type Limit struct {
	// Zone is the shared state and rate. Required.
	Zone *Zone
	// Burst is how many requests beyond the rate a key may have
	// outstanding (nginx's burst=; default 0).
	Burst int
	// NoDelay lets every request within the burst pass at once (nginx's
	// nodelay).
	NoDelay bool
	// Delay lets the first Delay requests of a burst pass at once and
	// delays the rest (nginx's delay=N). 0 with NoDelay false delays
	// every request beyond the rate, nginx's default.
	Delay int
}

// limit is a Limit in nginx's units.
type limit struct {
	zone  *Zone
	burst int64 // thousandths
	delay int64 // thousandths; noDelay is effectively infinite
}

// noDelay is nginx's NGX_MAX_INT_T_VALUE/1000*1000 on 64-bit systems.
const noDelay = (1<<63 - 1) / 1000 * 1000

// Limiter applies limits in order, like the limit_req directives of one
// nginx location. It is safe for concurrent use.
type Limiter struct {
	limits []limit
}

// New returns a Limiter applying limits in order. Two limits may not
// share a zone (nginx: "is duplicate").
func New(limits ...Limit) (*Limiter, error) {
	l := &Limiter{limits: make([]limit, len(limits))}
	seen := map[*Zone]bool{}
	for i, lim := range limits {
		switch {
		case lim.Zone == nil:
			return nil, fmt.Errorf("limitreq: limit %d has no zone", i)
		case seen[lim.Zone]:
			return nil, fmt.Errorf("limitreq: zone %q is applied twice", lim.Zone.name)
		case lim.Burst < 0 || lim.Burst > 1<<40:
			return nil, fmt.Errorf("limitreq: zone %q: burst %d out of range", lim.Zone.name, lim.Burst)
		case lim.Delay < 0 || lim.Delay > 1<<40:
			return nil, fmt.Errorf("limitreq: zone %q: delay %d out of range", lim.Zone.name, lim.Delay)
		case lim.NoDelay && lim.Delay > 0:
			return nil, fmt.Errorf("limitreq: zone %q: NoDelay and Delay both set", lim.Zone.name)
		}
		seen[lim.Zone] = true
		d := int64(lim.Delay) * 1000
		if lim.NoDelay {
			d = noDelay
		}
		l.limits[i] = limit{zone: lim.Zone, burst: int64(lim.Burst) * 1000, delay: d}
	}
	return l, nil
}

// Len returns the number of limits.
func (l *Limiter) Len() int { return len(l.limits) }

// Status is what a Limiter decided for a request.
type Status int

const (
	// Passed: the request goes ahead now (also when no limit applied).
	Passed Status = iota
	// Delayed: the request goes ahead after Result.Delay.
	Delayed
	// Rejected: the request is over a burst; nothing was accounted.
	Rejected
)

var statusNames = [...]string{Passed: "passed", Delayed: "delayed", Rejected: "rejected"}

// String returns "passed", "delayed" or "rejected" (nginx's
// $limit_req_status, in lower case).
func (s Status) String() string {
	if s >= 0 && int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "Status(" + strconv.Itoa(int(s)) + ")"
}

// Result is the decision for one request.
type Result struct {
	Status Status
	// Delay is how long a Delayed request waits before it goes ahead.
	Delay time.Duration
	// Excess is the excess, in thousandths of a request, of the zone that
	// decided: the rejecting zone, the zone imposing the longest delay, or
	// the last applied zone (what nginx logs as "excess: 20.000").
	Excess int64
	// Zone names the zone that decided ("" when no limit applied).
	Zone string
	// RetryAfter is, for a Rejected request, how long until the rejecting
	// zone would accept a request of this key if nothing else came in.
	RetryAfter time.Duration
	// At is the millisecond (of Now's clock) at which the deciding zone
	// decided; Time(At) is its wall-clock time.
	At int64
}

// ExcessString formats an excess as nginx logs it, "12.500".
func ExcessString(excess int64) string {
	return fmt.Sprintf("%d.%03d", excess/1000, excess%1000)
}

// epoch is the origin of Now: a monotonic reading placed on a wall-clock
// millisecond boundary, so that Now's milliseconds tick with the wall
// clock's (as long as the wall clock is not stepped).
var epoch = func() time.Time {
	t := time.Now()
	return t.Add(-time.Duration(t.UnixNano() % int64(time.Millisecond)))
}()

// Now returns the current reading of the millisecond monotonic clock that
// Check uses.
func Now() int64 { return time.Since(epoch).Milliseconds() }

// Millis converts t to a reading of Now's clock (t must carry a monotonic
// reading, as time.Now's does, for the result to be monotonic).
func Millis(t time.Time) int64 { return t.Sub(epoch).Milliseconds() }

// Time returns the time at which Now's clock read ms.
func Time(ms int64) time.Time { return epoch.Add(time.Duration(ms) * time.Millisecond) }

// clockNow asks lookup and account to read Now under the zone's lock.
const clockNow = -1 << 63

// Check decides a request now. keys[i] is the request's key in limit i
// (nginx's evaluated $key); an empty key exempts the request from that
// limit. It panics if len(keys) != l.Len().
func (l *Limiter) Check(keys []string) Result { return l.check(clockNow, keys) }

// CheckAt is Check at millisecond now of a monotonic clock. Calls on one
// zone should come with non-decreasing readings, as they do from a clock.
func (l *Limiter) CheckAt(now int64, keys []string) Result {
	if now == clockNow {
		now++
	}
	return l.check(now, keys)
}

func (l *Limiter) check(now int64, keys []string) Result {
	if len(keys) != len(l.limits) {
		panic(fmt.Sprintf("limitreq: %d keys for %d limits", len(keys), len(l.limits)))
	}
	// Find the last applied limit: it is looked up and accounted at once
	// (nginx's "account" argument); the ones before it are only looked up
	// and pinned, then accounted after every lookup passed.
	lastApplied := -1
	for i := range keys {
		if keys[i] != "" {
			lastApplied = i
		}
	}
	if lastApplied < 0 {
		return Result{Status: Passed}
	}
	var pinned [8]*node
	pins := pinned[:0]
	var res Result
	for i := 0; i <= lastApplied; i++ {
		if keys[i] == "" {
			pins = append(pins, nil)
			continue
		}
		lim := &l.limits[i]
		n, excess, at, busy := lim.zone.lookup(lim, keys[i], now, i == lastApplied)
		res.Excess, res.Zone, res.At = excess, lim.zone.name, at
		if busy {
			for j, p := range pins {
				if p != nil {
					l.limits[j].zone.unpin(p)
				}
			}
			res.Status = Rejected
			res.RetryAfter = time.Duration(ceilDiv((excess-lim.burst)*1000, lim.zone.rate)) * time.Millisecond
			return res
		}
		pins = append(pins, n)
	}
	// nginx's ngx_http_limit_req_account: the delay of the last limit,
	// then the earlier limits accounted and their delays compared.
	var maxDelay int64
	if last := &l.limits[lastApplied]; res.Excess > last.delay {
		maxDelay = (res.Excess - last.delay) * 1000 / last.zone.rate
	}
	for j := len(pins) - 1; j >= 0; j-- {
		if j == lastApplied || pins[j] == nil {
			continue
		}
		lim := &l.limits[j]
		excess, at := lim.zone.account(pins[j], now)
		if excess <= lim.delay {
			continue
		}
		if d := (excess - lim.delay) * 1000 / lim.zone.rate; d > maxDelay {
			maxDelay, res.Excess, res.Zone, res.At = d, excess, lim.zone.name, at
		}
	}
	if maxDelay > 0 {
		res.Status, res.Delay = Delayed, time.Duration(maxDelay)*time.Millisecond
	}
	return res
}

func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

// elapsed is nginx's clamped elapsed time since n.last.
func elapsed(n *node, now int64) int64 {
	ms := now - n.last
	switch {
	case ms < -60000:
		return 1
	case ms < 0:
		return 0
	}
	return ms
}

// lookup is ngx_http_limit_req_lookup: it returns the key's node and the
// excess the request would bring it to, and whether that is over the
// burst. When account is true the excess is stored at once; otherwise the
// node is pinned for account or unpin.
func (z *Zone) lookup(lim *limit, key string, now int64, account bool) (n *node, excess, at int64, busy bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if now == clockNow {
		now = Now()
	}
	if n = z.nodes[key]; n != nil {
		z.touch(n)
		var ms int64
		if n.fresh {
			excess = 0 // created by a check never accounted: nginx's last = 0 drains it all
		} else {
			ms = elapsed(n, now)
			excess = max(n.excess-z.rate*ms/1000+1000, 0)
		}
		if excess > lim.burst {
			return n, excess, now, true
		}
		if account {
			n.excess = excess
			if ms != 0 || n.fresh {
				n.last = now
			}
			n.fresh = false
			return n, excess, now, false
		}
		n.count++
		return n, excess, now, false
	}
	z.expire(now, false)
	if len(z.nodes) >= z.maxKeys {
		z.expire(now, true)
	}
	n = &node{key: key}
	z.nodes[key] = n
	z.touch(n)
	if account {
		n.last = now
		return n, 0, now, false
	}
	n.fresh, n.count = true, 1
	return n, 0, now, false
}

// account is the second half of ngx_http_limit_req_account for a pinned
// node: it stores the request's excess and returns it.
func (z *Zone) account(n *node, now int64) (excess, at int64) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if now == clockNow {
		now = Now()
	}
	n.count--
	if n.fresh { // nginx's last = 0: everything has drained
		n.fresh, n.excess, n.last = false, 0, now
		return 0, now
	}
	ms := elapsed(n, now)
	excess = max(n.excess-z.rate*ms/1000+1000, 0)
	if ms != 0 {
		n.last = now
	}
	n.excess = excess
	return excess, now
}

// unpin releases a node pinned by a lookup whose request was rejected by a
// later limit (nginx's ngx_http_limit_req_unlock).
func (z *Zone) unpin(n *node) {
	z.mu.Lock()
	n.count--
	z.mu.Unlock()
}

// touch moves n to the front of the LRU list (inserting it if new).
func (z *Zone) touch(n *node) {
	if n.prev != nil {
		n.prev.next, n.next.prev = n.next, n.prev
	}
	n.prev, n.next = &z.lru, z.lru.next
	z.lru.next.prev = n
	z.lru.next = n
}

// expire is ngx_http_limit_req_expire: with force it drops the least
// recently used key first, then (either way) up to two least recently used
// keys idle for 60 s whose excess has drained. It stops at a pinned key.
func (z *Zone) expire(now int64, force bool) {
	n := 1
	if force {
		n = 0
	}
	for ; n < 3; n++ {
		tail := z.lru.prev
		if tail == &z.lru || tail.count > 0 {
			return
		}
		if n != 0 && !tail.fresh {
			ms := now - tail.last
			if ms < 0 {
				ms = -ms
			}
			if ms < 60000 || tail.excess-z.rate*ms/1000 > 0 {
				return
			}
		}
		tail.prev.next, tail.next.prev = tail.next, tail.prev
		delete(z.nodes, tail.key)
	}
}
