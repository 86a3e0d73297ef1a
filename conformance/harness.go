package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
)

// Harness connects the suite to one adapter. Only Name and Open are
// required.
type Harness struct {
	// Name is the adapter's name in the report: "memory", "kafka", ...
	Name string
	// Open returns the broker under test. It is called once per property;
	// the suite closes what it returns.
	Open func(ctx context.Context) (*broker.Broker, error)
	// NewTopic returns a fresh topic name for property; default
	// "qk-<property>-<random>" with the property's dots turned into dashes
	// (a name every supported broker accepts). Dead letters go to the
	// topic's default dead-letter topic, "<topic>.dlq".
	NewTopic func(property string) string
	// AckTimeout is set on every subscriber the suite makes (the visibility
	// timeout or ack deadline after which an unsettled delivery comes back);
	// default 2s. Properties that must show that something does NOT happen
	// watch for a window derived from it (see the package doc).
	AckTimeout time.Duration
	// Messages is the number of messages of the bulk properties
	// (alo.no-loss, order.per-key); default 1000.
	Messages int
	// Timeout bounds each property; default 60s. A property waiting for a
	// message that never comes fails when it runs out.
	Timeout time.Duration
	// Parallel is how many properties Run and Check run at once, and how
	// many of its sub-properties the defaults property runs at once;
	// default 1, one after the other. Every property has its own broker,
	// topic and groups, and makes the same checks with the same windows
	// either way; what properties running at once share is the broker's
	// server and the machine, so the timings they report (latency,
	// recovery) are those of a busier server. A broker that makes the suite
	// mostly wait (long polls that Close waits for, leases of seconds)
	// passes it in a fraction of the time with a few at once.
	Parallel int

	// SharedAcrossProcesses says that the broker Open reaches can also be
	// reached from another process running the same test (a server, or an
	// emulator whose address the environment passes on): the crash
	// properties then run their consumers in child processes — the test
	// binary re-executed — and kill them with SIGKILL. Otherwise a crash is
	// simulated in process by closing the subscriber under a running
	// Consume.
	SharedAcrossProcesses bool
	// Kills is how many consumers each crash property kills; default 3.
	Kills int

	// Addr is the broker's host:port, for the fault.cut-* properties: the
	// suite starts a TCP proxy to it (package faultproxy) and opens the
	// broker through the proxy with OpenAt, then cuts every connection
	// while messages flow. Both are needed; without them the properties
	// are unsupported.
	Addr string
	// OpenAt opens the broker with addr (the proxy) in place of Addr.
	OpenAt func(ctx context.Context, addr string) (*broker.Broker, error)
	// Restart stops and starts the broker, keeping its state, for
	// fault.broker-restart (RabbitMQ: rabbitmqctl stop_app / start_app on a
	// broker the test owns). Nil: the property is unsupported.
	Restart func(ctx context.Context) error
	// Defaults opens the broker the way a user who changes nothing does
	// (the adapter's default URL with only the address), for the defaults
	// property, which runs the core properties with it. Nil: unsupported.
	Defaults func(ctx context.Context) (*broker.Broker, error)

	// testName is the running test's name, for re-executing it (set by Run;
	// empty under Check).
	testName string
}

const (
	defaultAckTimeout = 2 * time.Second
	defaultMessages   = 1000
	defaultTimeout    = 60 * time.Second
	defaultKills      = 3
	longTimeout       = 10 * time.Minute
	// teardownTimeout bounds closing what a property opened and waiting
	// for its goroutines.
	teardownTimeout = 10 * time.Second
)

func (h Harness) withDefaults() (Harness, error) {
	if h.Open == nil {
		return h, errors.New("conformance: Harness.Open is required")
	}
	if h.Name == "" {
		h.Name = "unnamed"
	}
	if h.NewTopic == nil {
		h.NewTopic = func(property string) string {
			return "qk-" + strings.ReplaceAll(property, ".", "-") + "-" + randomHex(3)
		}
	}
	if h.AckTimeout <= 0 {
		h.AckTimeout = defaultAckTimeout
	}
	if h.Messages <= 0 {
		h.Messages = defaultMessages
	}
	if h.Timeout <= 0 {
		h.Timeout = defaultTimeout
	}
	if h.Kills <= 0 {
		h.Kills = defaultKills
	}
	if h.Parallel <= 0 {
		h.Parallel = 1
	}
	if os.Getenv(LongEnv) == "1" && h.Timeout < longTimeout {
		// 100 cuts, each with its reconnection, outlast a short timeout.
		h.Timeout = longTimeout
	}
	return h, nil
}

// Run runs every property against the adapter, each as t.Run(property, ...),
// one after the other, or Harness.Parallel at a time (subtests started from
// goroutines, not t.Parallel ones: go test's -parallel, the number of CPUs
// by default, would hold back a suite that mostly waits). A property the
// adapter's Capabilities do not claim is skipped with a message starting
// "unsupported:"; a failed one fails its subtest with the Ledger's numbers
// and the offending ids. When ReportEnv is set, Run writes the JSON report
// of the properties it ran, in the order of Properties (see the package
// doc for how several Run calls share one path).
func Run(t *testing.T, h Harness) {
	t.Helper()
	run(t, h, properties)
}

// RunOnly is Run restricted to the named properties (an unknown name fails
// t), for a property that needs a harness of its own — fault.broker-restart
// against a server the test owns, say. When ReportEnv is set, its results
// replace those of the same properties in the report Run wrote (in this
// process, or before it in the file).
func RunOnly(t *testing.T, h Harness, names ...string) {
	t.Helper()
	props, err := selectProperties(names)
	if err != nil || len(names) == 0 {
		t.Fatalf("conformance.RunOnly(%q): %v", names, err)
	}
	run(t, h, props)
}

func run(t *testing.T, h Harness, props []property) {
	t.Helper()
	h, err := h.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if spec, ok := childSpecFromEnv(); ok {
		runChild(t, h, spec)
		return
	}
	h.testName = t.Name()
	rep := Report{Adapter: h.Name}
	results := make([]*Result, len(props)) // nil: not run (-test.run)
	one := func(i int, prop property) {
		t.Run(prop.name, func(t *testing.T) {
			res := runProperty(t.Context(), h, prop, t.Logf)
			results[i] = &res
			switch res.Verdict {
			case Unsupported:
				t.Skip("unsupported: " + res.Detail)
			case Fail:
				if res.Published == 0 {
					t.Errorf("%s: %s", prop.name, res.Detail)
				} else {
					t.Errorf("%s: %s (published %d, handled %d, lost %d, duplicates %d, reordered %d)",
						prop.name, res.Detail, res.Published, res.Handled, res.Lost, res.Duplicates, res.Reordered)
				}
			default:
				if res.Detail != "" {
					t.Log(res.Detail)
				}
			}
		})
	}
	// With Parallel > 1, each goroutine calls t.Run for one property (the
	// testing package allows concurrent calls) and writes its own element
	// of results.
	atMost(h.Parallel, len(props), func(i int) { one(i, props[i]) })
	for _, res := range results {
		if res != nil {
			rep.Results = append(rep.Results, *res)
		}
	}
	if path := os.Getenv(ReportEnv); path != "" && len(rep.Results) > 0 {
		where, err := recordReport(path, rep)
		if err != nil {
			t.Errorf("conformance: %s=%s: %v", ReportEnv, path, err)
		} else {
			t.Logf("conformance report for %s written to %s", h.Name, where)
		}
	}
}

// Check runs the suite without a *testing.T and returns the report, for
// tools such as the queuekit command. only restricts the run to the named
// properties (all when empty); an unknown name is an error. Properties run
// Harness.Parallel at a time (by default one after the other), each bounded
// by Harness.Timeout.
func Check(ctx context.Context, h Harness, only ...string) (Report, error) {
	h, err := h.withDefaults()
	if err != nil {
		return Report{}, err
	}
	props, err := selectProperties(only)
	if err != nil {
		return Report{}, err
	}
	rep := Report{Adapter: h.Name, Results: make([]Result, len(props))}
	atMost(h.Parallel, len(props), func(i int) { rep.Results[i] = runProperty(ctx, h, props[i], nil) })
	return rep, nil
}

// atMost calls f(i) for every i in [0, n), at most parallel calls at once,
// and returns when all have returned. With parallel 1 (or less) it calls
// them one after the other on this goroutine.
func atMost(parallel, n int, f func(i int)) {
	if parallel <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			f(i)
		}()
	}
	wg.Wait()
}

func selectProperties(only []string) ([]property, error) {
	if len(only) == 0 {
		return properties, nil
	}
	var out []property
	for _, name := range only {
		p, ok := propertyByName(name)
		if !ok {
			return nil, fmt.Errorf("conformance: unknown property %q (known: %s)", name, strings.Join(PropertyNames(), ", "))
		}
		out = append(out, p)
	}
	return out, nil
}

// runProperty opens a broker, decides from its Capabilities whether prop
// applies, runs it and tears everything down. It never panics: a panic in
// the adapter is a failed property.
func runProperty(ctx context.Context, h Harness, prop property, logf func(string, ...any)) (res Result) {
	start := time.Now()
	res = Result{Property: prop.name}
	defer func() { res.Elapsed = time.Since(start) }()

	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	p := &probe{h: h, prop: prop.name, ordered: prop.ordered, logf: logf, run: randomHex(3)}
	p.ctx, p.cancel = context.WithCancel(ctx)
	defer p.cancel()

	b, err := p.open()
	if err != nil {
		res.Verdict, res.Detail = Fail, fmt.Sprintf("open: %v", err)
		return res
	}
	p.b, p.caps = b, b.Capabilities()
	if missing := prop.needs(p.caps); missing != "" {
		p.teardown()
		res.Verdict, res.Detail = Unsupported, "the adapter does not claim "+missing
		return res
	}
	p.topic = h.NewTopic(prop.name)
	p.led = newTally(p)

	runErr := p.protect(func() error { return prop.run(p) })
	p.teardown()

	c := p.counts
	if c == nil {
		r := p.led.Report()
		c = &counts{published: r.Published, handled: r.Handled, lost: len(r.Lost), duplicates: r.Duplicates, reordered: len(r.Reordered)}
	}
	if !prop.ordered {
		c.reordered = 0
	}
	res.Published, res.Handled, res.Lost, res.Duplicates, res.Reordered = c.published, c.handled, c.lost, c.duplicates, c.reordered
	res.timing = p.timing
	var problems []string
	if runErr != nil {
		problems = append(problems, runErr.Error())
	}
	for _, pr := range p.problems() {
		if runErr == nil || !strings.Contains(runErr.Error(), pr) { // a wait returns the abort error too
			problems = append(problems, pr)
		}
	}
	if note := p.consumeNote(); note != "" {
		p.notes = append(p.notes, note)
	}
	var ref refused
	if errors.As(runErr, &ref) && len(problems) == 1 {
		res.Verdict, res.Detail = Unsupported, ref.Error()
		return res
	}
	if len(problems) > 0 {
		res.Verdict = Fail
		res.Detail = joinDetail(append(problems, p.notes...))
	} else {
		res.Verdict = Pass
		res.Detail = joinDetail(p.notes)
	}
	return res
}

func joinDetail(parts []string) string { return strings.Join(parts, "; ") }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}
