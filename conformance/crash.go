package conformance

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// The crash properties run their consumer in a child process — the test
// binary re-executed with childEnv set, which makes Run consume instead of
// running the suite — and kill it with SIGKILL at random points. The child
// prints one line per handled message on its standard output; the parent
// keeps the ledger.

// childEnv carries a childSpec (JSON) to a re-executed test binary.
const childEnv = "QUEUEKIT_CONFORMANCE_CONSUMER"

// Lines the child prints, and their prefix.
const (
	childPrefix  = "QKCHILD "
	childReady   = childPrefix + "READY"
	childHandled = childPrefix + "H "
	childRefused = childPrefix + "REFUSED "
	childFailed  = childPrefix + "ERR "
)

// childWork is how long the child's handler works on each message, so that
// kills land in the middle of the stream.
const childWork = time.Millisecond

type childSpec struct {
	Harness     string              `json:"harness"`
	Topic       string              `json:"topic"`
	Group       string              `json:"group"`
	Guarantee   semantics.Guarantee `json:"guarantee"`
	Ordering    semantics.Ordering  `json:"ordering"`
	AckTimeout  time.Duration       `json:"ack_timeout"`
	Concurrency int                 `json:"concurrency"`
}

// childSpecFromEnv returns the spec this process was started with, if any.
func childSpecFromEnv() (childSpec, bool) {
	raw := os.Getenv(childEnv)
	if raw == "" {
		return childSpec{}, false
	}
	var s childSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		fmt.Printf("%sbad %s: %v\n", childFailed, childEnv, err)
		os.Exit(3)
	}
	return s, true
}

// runChild is Run in a child process: it consumes spec's subscription with
// h until its standard input closes, printing each handled message.
func runChild(t *testing.T, h Harness, spec childSpec) {
	if spec.Harness != h.Name {
		t.Skipf("conformance child for harness %q, not %q", spec.Harness, h.Name)
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		fmt.Fprintf(os.Stdout, format+"\n", args...)
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b, err := h.Open(ctx)
	if err != nil {
		say("%sopen: %v", childFailed, oneLine(err))
		return
	}
	defer b.Close(context.Background())
	sub, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: spec.Topic, Group: spec.Group,
		Guarantee: spec.Guarantee, Ordering: spec.Ordering, AckTimeout: spec.AckTimeout})
	if err != nil {
		if broker.KindOf(err) == semantics.Unsupported {
			say("%s%s", childRefused, oneLine(err))
		} else {
			say("%ssubscribe: %v", childFailed, oneLine(err))
		}
		return
	}
	go func() { // the parent closes our stdin to stop us gracefully
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	say("%s", childReady)
	err = broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
		say("%s%s %d", childHandled, m.ID, m.Attempt)
		time.Sleep(childWork) // the handler's work: a kill can land in it
		return nil
	}), broker.ConsumeOptions{Concurrency: spec.Concurrency, OnError: func(*broker.Message, error) {}})
	if err != nil {
		say("%sconsume: %v", childFailed, oneLine(err))
	}
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// child is a consumer process started by a crash property.
type child struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	ready   chan struct{} // closed at READY
	exited  chan struct{} // closed when the output ends
	led     *tally
	killAt  int // see proc.atKillPoint
	mu      sync.Mutex
	problem string // REFUSED or ERR text
	refused bool
}

// testPattern turns a test name ("TestConformance/quorum") into a -test.run
// pattern matching exactly it.
func testPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// startChild runs the test binary again as a consumer of spec, feeding what
// it handles into led.
func (p *probe) startChild(spec childSpec, led *tally, killAt int) (*child, error) {
	raw, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run="+testPattern(p.h.testName), "-test.count=1", "-test.timeout=30m")
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the consumer process: %w", err)
	}
	c := &child{cmd: cmd, stdin: stdin, ready: make(chan struct{}), exited: make(chan struct{}), led: led, killAt: killAt}
	go func() {
		defer close(c.exited)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		readyOnce := sync.OnceFunc(func() { close(c.ready) })
		defer readyOnce()
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, childHandled):
				id, _, _ := strings.Cut(strings.TrimPrefix(line, childHandled), " ")
				led.Delivered(id)
				led.Handled(id)
			case line == childReady:
				readyOnce()
			case strings.HasPrefix(line, childRefused), strings.HasPrefix(line, childFailed):
				c.mu.Lock()
				c.refused = strings.HasPrefix(line, childRefused)
				c.problem = strings.TrimPrefix(line, childPrefix)
				c.mu.Unlock()
				p.sig.poke()
			}
		}
		_ = cmd.Wait()
		p.sig.poke()
	}()
	return c, nil
}

// waitReady waits until the child subscribed, or reports why it did not.
func (c *child) waitReady(ctx context.Context) error {
	select {
	case <-c.ready:
	case <-ctx.Done():
		c.kill()
		return errors.New("the consumer process did not subscribe in time")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.refused:
		return refused{errors.New(c.problem)}
	case c.problem != "":
		return fmt.Errorf("consumer process: %s", c.problem)
	}
	select {
	case <-c.exited:
		return errors.New("the consumer process exited before it subscribed")
	default:
	}
	return nil
}

// kill ends the child with SIGKILL and waits for it.
func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// stop asks the child to finish (it stops consuming and settles what it
// holds), killing it if it takes longer than d.
func (c *child) stop(d time.Duration) {
	_ = c.stdin.Close()
	if !waitClosed(c.exited, d) {
		c.kill()
	}
}

// proc is a consumer a crash property can kill: a child process, or — when
// the broker cannot be reached from another process — a Consume in this
// process whose subscriber is closed under it.
type proc interface {
	waitReady(ctx context.Context) error
	// atKillPoint reports whether the consumer has come to where crashRun
	// kills it: the ledger counts the killAt messages handled that it was
	// started with (see probe.start).
	atKillPoint() bool
	kill()
	stop(d time.Duration)
	done() <-chan struct{}
}

func (c *child) done() <-chan struct{} { return c.exited }

// atKillPoint: the ledger counts killAt messages handled. The child runs
// on: the kill lands wherever it has come to by then.
func (c *child) atKillPoint() bool { return c.led.handledCount() >= c.killAt }

// inProcess is the crash of a consumer simulated in this process: kill
// closes the subscriber while Consume runs — unsettled deliveries go back
// to the broker, handlers in flight cannot ack — then stops Consume.
//
// A consumer started to be killed (killAt not runToEnd) stops handling once
// the ledger counts killAt messages handled: every handler that starts after
// that holds its delivery, unhandled and unsettled, until the kill, and the
// first to do so tells crashRun to kill. The kill thus always lands with
// deliveries outstanding, as a SIGKILL of a busy process does; without the
// hold, a consumer in this process could handle the whole stream before
// the kill came.
type inProcess struct {
	sub     *broker.Subscriber
	cancel  context.CancelFunc
	exited  chan struct{}
	led     *tally
	holdAt  int           // killAt: handlers hold their delivery from there
	holding chan struct{} // closed when a handler first holds its delivery
	hold    func()        // closes holding, once
	killed  chan struct{} // closed by kill after the subscriber's Close: held handlers return
	release func()        // closes killed, once
}

// errCrashed is what a held handler returns once its consumer was killed:
// its delivery was given back by the crash, not handled.
var errCrashed = errors.New("conformance: the consumer crashed before handling this delivery")

func (p *probe) startInProcess(spec childSpec, led *tally, killAt int) (*inProcess, error) {
	sub, err := p.b.NewSubscriber(p.ctx, broker.SubscriberOptions{Topic: spec.Topic, Group: spec.Group,
		Guarantee: spec.Guarantee, Ordering: spec.Ordering, AckTimeout: spec.AckTimeout})
	if err != nil {
		if broker.KindOf(err) == semantics.Unsupported {
			return nil, refused{err}
		}
		return nil, fmt.Errorf("NewSubscriber: %w", err)
	}
	ctx, cancel := context.WithCancel(p.ctx)
	c := &inProcess{sub: sub, cancel: cancel, exited: make(chan struct{}), led: led, holdAt: killAt,
		holding: make(chan struct{}), killed: make(chan struct{})}
	c.hold = sync.OnceFunc(func() { close(c.holding); p.sig.poke() })
	c.release = sync.OnceFunc(func() { close(c.killed) })
	p.goSafe(func() {
		defer close(c.exited)
		_ = broker.Consume(ctx, sub, broker.HandlerFunc(func(ctx context.Context, m *broker.Message) error {
			if c.holdAt != runToEnd && led.handledCount() >= c.holdAt {
				c.hold()
				select {
				case <-c.killed:
				case <-ctx.Done():
				}
				return errCrashed
			}
			led.Delivered(m.ID)
			led.Handled(m.ID)
			time.Sleep(childWork) // the handler's work
			return nil
		}), broker.ConsumeOptions{Concurrency: spec.Concurrency, ShutdownTimeout: teardownTimeout, OnError: func(*broker.Message, error) {}})
	})
	return c, nil
}

func (c *inProcess) waitReady(context.Context) error { return nil }
func (c *inProcess) done() <-chan struct{}           { return c.exited }

// atKillPoint: a handler holds its delivery, or there is nothing left to
// hold (the ledger counts every message handled: what a concurrent handler
// started just before the hold may have finished the stream).
func (c *inProcess) atKillPoint() bool {
	select {
	case <-c.holding:
		return true
	default:
		return c.led.complete()
	}
}

func (c *inProcess) kill() {
	_ = c.sub.Close(context.Background())
	c.cancel()
	c.release() // after the Close: a held delivery was given back, not settled
	<-c.exited
}
func (c *inProcess) stop(d time.Duration) {
	c.cancel()
	if !waitClosed(c.exited, d) {
		c.kill()
	}
	_ = c.sub.Close(context.Background())
}

// runToEnd is the killAt of a consumer that is not to be killed.
const runToEnd = -1

// start starts a consumer of spec: a child process where the harness allows,
// else one in this process. A consumer that is to be killed is given killAt,
// the number of messages handled (by the ledger's count) at which crashRun
// kills it (see proc.atKillPoint); runToEnd for one that is not.
func (p *probe) start(spec childSpec, killAt int) (proc, error) {
	if p.h.SharedAcrossProcesses && p.h.testName != "" {
		c, err := p.startChild(spec, p.led, killAt)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
	c, err := p.startInProcess(spec, p.led, killAt)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// crashRun is the common shape of the crash properties: declare the group,
// publish Harness.Messages over 16 keys, then run consumer processes and
// kill each after it handled a random share of the stream, Harness.Kills
// times; a last one is left to finish (until every message was handled when
// finishAll, else until nothing new is handled for a quiet window).
func (p *probe) crashRun(spec childSpec, finishAll bool) error {
	n := p.h.Messages
	spec.Harness, spec.Topic, spec.Group = p.h.Name, p.topic, p.group("g")
	spec.AckTimeout, spec.Concurrency = p.h.AckTimeout, 4
	// The group is made by a subscriber with the consumers' own options
	// (some brokers fix ordering or guarantee settings when a queue is
	// created), so that what is published next waits for them.
	first, err := p.subscribeOrRefused("g", func(o *broker.SubscriberOptions) {
		o.Guarantee, o.Ordering = spec.Guarantee, spec.Ordering
	})
	if err != nil {
		return err
	}
	if err := first.Close(p.ctx); err != nil {
		return fmt.Errorf("closing the first subscriber: %w", err)
	}
	if err := p.publishNew(p.messages(0, n, 16), 100); err != nil {
		return err
	}
	kills := 0
	for kills < p.h.Kills {
		// Nothing is handled between the last kill (which waits for the
		// consumer's end) and the next start.
		from := p.led.handledCount()
		if from == n {
			break
		}
		target := min(n, from+n/20+rand.IntN(n/8+1))
		c, err := p.start(spec, target)
		if err != nil {
			return err
		}
		p.onClose(func(context.Context) error { c.kill(); return nil })
		if err := c.waitReady(p.ctx); err != nil {
			return err
		}
		err = p.wait(fmt.Sprintf("the consumer process to handle %d messages before it is killed", target-from), func() bool {
			select {
			case <-c.done():
				return true
			default:
			}
			return c.atKillPoint()
		})
		c.kill()
		if err != nil {
			return err
		}
		kills++
	}
	c, err := p.start(spec, runToEnd)
	if err != nil {
		return err
	}
	p.onClose(func(context.Context) error { c.stop(teardownTimeout); return nil })
	if err := c.waitReady(p.ctx); err != nil {
		return err
	}
	if finishAll {
		err = p.waitAll(p.led, fmt.Sprintf("every message to be handled after %d kills", kills))
	} else {
		// Losing messages is allowed here: the run is over once nothing new
		// has been handled for a quiet window.
		quiet := max(3*p.h.AckTimeout, 2*time.Second)
		for last := -1; last != p.led.handledCount(); {
			last = p.led.handledCount()
			p.observe(quiet, func() bool { return p.led.handledCount() != last })
		}
	}
	c.stop(teardownTimeout)
	if _, ok := c.(*child); ok {
		p.notef("%d consumer processes killed with SIGKILL mid-stream", kills)
	} else {
		p.notef("%d consumers crashed in process mid-stream (their subscriber closed under a running Consume; set Harness.SharedAcrossProcesses to kill real processes)", kills)
	}
	return err
}

// alo.no-loss-after-crash: nothing is lost across consumer processes
// killed mid-stream.
func aloNoLossAfterCrash(p *probe) error {
	if err := p.crashRun(childSpec{}, true); err != nil {
		return err
	}
	if r := p.led.Report(); len(r.Lost) > 0 {
		return fmt.Errorf("%s", p.summary(r))
	}
	return nil
}

// order.per-key-after-crash: per-key order holds across killed consumer
// processes (each message first handled after its key's earlier ones).
func orderPerKeyAfterCrash(p *probe) error {
	if err := p.crashRun(childSpec{Ordering: semantics.PerKey}, true); err != nil {
		return err
	}
	r := p.led.Report()
	if len(r.Lost) > 0 || len(r.Reordered) > 0 {
		return fmt.Errorf("%s", p.summary(r))
	}
	return nil
}

// amo.no-redelivery-after-crash: under at-most-once no message is handled
// twice across killed consumer processes (losing some is allowed).
func amoNoRedeliveryAfterCrash(p *probe) error {
	if err := p.crashRun(childSpec{Guarantee: semantics.AtMostOnce}, false); err != nil {
		return err
	}
	r := p.led.Report()
	if r.Duplicates > 0 {
		var twice []string
		for _, m := range p.messages(0, p.h.Messages, 16) {
			if p.led.HandledCount(m.ID) > 1 {
				twice = append(twice, m.ID)
			}
		}
		return fmt.Errorf("%d handlings beyond the first under at-most-once: ids %s", r.Duplicates, Sample(twice, 5))
	}
	p.notef("lost %d of %d (allowed under at-most-once), none handled twice", len(r.Lost), r.Published)
	return nil
}
