package retry

import (
	"sync"
	"sync/atomic"
	"time"
)

// failures remembers, for a bounded number of recent message IDs, how often
// each failed here and when it first did. It serves where the broker keeps no
// attempt count, and to date a message's first failure. The oldest IDs are
// forgotten first. Make one with newFailures.
type failures struct {
	size atomic.Int64 // entries in m, read without the lock on the hot path
	mu   sync.Mutex
	m    map[string]failure
	ring []string // insertion order, for eviction
	next int
}

type failure struct {
	count int
	slot  int // index in ring, so that a stale slot never evicts a newer entry
	first time.Time
}

// newFailures returns a record of at most max IDs.
func newFailures(max int) *failures {
	if max <= 0 {
		max = 10000
	}
	return &failures{m: make(map[string]failure), ring: make([]string, max)}
}

// fail records a failure of id at now and returns the failures of id so far,
// this one included, and the time of the first.
func (f *failures) fail(id string, now time.Time) (count int, first time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.m[id]
	if !ok {
		if old := f.ring[f.next]; old != "" {
			if oe, ok := f.m[old]; ok && oe.slot == f.next {
				delete(f.m, old)
			}
		}
		f.ring[f.next] = id
		e.slot = f.next
		f.next = (f.next + 1) % len(f.ring)
		e.first = now
	}
	e.count++
	f.m[id] = e
	f.size.Store(int64(len(f.m)))
	return e.count, e.first
}

// forget drops id; it costs one atomic load when nothing is recorded.
func (f *failures) forget(id string) {
	if f.size.Load() == 0 {
		return
	}
	f.mu.Lock()
	if _, ok := f.m[id]; ok {
		delete(f.m, id)
		f.size.Store(int64(len(f.m)))
	}
	f.mu.Unlock()
}
