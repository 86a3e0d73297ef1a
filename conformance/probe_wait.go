package conformance

// Waiting: the signal that wakes waiters, the tally every property keeps,
// and the waits built on them.

import (
	"fmt"
	"sync"
	"time"
)

func waitGroupDone(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return waitClosed(done, d)
}

type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *signal) poke() {
	s.mu.Lock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
	s.mu.Unlock()
}

func (p *probe) wait(what string, cond func() bool) error {
	start := time.Now()
	for {
		ch := p.sig.wait()
		if cond() {
			return nil
		}
		if err := p.aborted(); err != nil {
			return err
		}
		select {
		case <-ch:
		case <-p.ctx.Done():
			return fmt.Errorf("gave up after %v waiting for %s", time.Since(start).Round(time.Millisecond), what)
		}
	}
}

func (p *probe) observe(window time.Duration, cond func() bool) bool {
	t := time.NewTimer(window)
	defer t.Stop()
	for {
		ch := p.sig.wait()
		if cond() {
			return true
		}
		select {
		case <-ch:
		case <-t.C:
			return cond()
		case <-p.ctx.Done():
			return cond()
		}
	}
}

type tally struct {
	*Ledger
	p    *probe
	mu   sync.Mutex
	pub  map[string]bool
	seen map[string]int
	done int // distinct published ids handled
}

func newTally(p *probe) *tally {
	return &tally{Ledger: NewLedger(), p: p, pub: map[string]bool{}, seen: map[string]int{}}
}

func (t *tally) Published(id, key string) {
	t.Ledger.Published(id, key)
	t.mu.Lock()
	if !t.pub[id] {
		t.pub[id] = true
		if t.seen[id] > 0 {
			t.done++
		}
	}
	t.mu.Unlock()
	t.p.sig.poke()
}

func (t *tally) Delivered(id string) {
	t.Ledger.Delivered(id)
	t.p.sig.poke()
}

func (t *tally) Handled(id string) {
	t.Ledger.Handled(id)
	t.mu.Lock()
	t.seen[id]++
	if t.seen[id] == 1 && t.pub[id] {
		t.done++
	}
	t.mu.Unlock()
	t.p.sig.poke()
}

func (t *tally) complete() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pub) > 0 && t.done == len(t.pub)
}

func (t *tally) handledCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.done
}

func (p *probe) waitAll(led *tally, what string) error {
	if err := p.wait(what, led.complete); err != nil {
		return fmt.Errorf("%s (%v)", p.summary(led.Report()), err)
	}
	return nil
}

func (p *probe) summary(r LedgerReport) string {
	if !p.ordered {
		r.Reordered = nil
	}
	return r.String()
}

func (c *consumer) wait() error {
	c.once.Do(func() {
		if !waitClosed(c.done, teardownTimeout) {
			c.waitErr = fmt.Errorf("Consume did not return within %v of its ctx being cancelled", teardownTimeout)
			return
		}
		c.waitErr = c.result
	})
	return c.waitErr
}

func waitClosed(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}
