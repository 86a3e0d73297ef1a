package conformance

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Ledger records the life of every message in a run — published, delivered,
// handled — and reports what went wrong: messages lost, handled more than
// once, or handled out of publish order within their key. It is safe for
// concurrent use.
//
// Reordering is judged per key on first handling: a message is reordered
// when it is handled for the first time after a message of the same key that
// was published later.
type Ledger struct {
	mu        sync.Mutex
	pubSeq    map[string]int // id -> publish sequence number
	pubKey    map[string]string
	pubOrder  []string
	delivered map[string]int
	handled   map[string]int
	// per key: highest publish sequence handled so far, and offenders.
	highest   map[string]int
	reordered []string
	unknown   []string
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger {
	return &Ledger{
		pubSeq:    make(map[string]int),
		pubKey:    make(map[string]string),
		delivered: make(map[string]int),
		handled:   make(map[string]int),
		highest:   make(map[string]int),
	}
}

// Published records that the message id with key was durably published.
// Publishing the same id twice counts once (it is one logical message).
func (l *Ledger) Published(id, key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.pubSeq[id]; ok {
		return
	}
	l.pubSeq[id] = len(l.pubOrder)
	l.pubKey[id] = key
	l.pubOrder = append(l.pubOrder, id)
}

// Delivered records that the broker handed id to a consumer (whether or not
// the handler then succeeded).
func (l *Ledger) Delivered(id string) {
	l.mu.Lock()
	l.delivered[id]++
	l.mu.Unlock()
}

// Handled records that a handler finished id successfully.
func (l *Ledger) Handled(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.handled[id]++
	if l.handled[id] > 1 {
		return
	}
	seq, ok := l.pubSeq[id]
	if !ok {
		l.unknown = append(l.unknown, id)
		return
	}
	key := l.pubKey[id]
	if hi, seen := l.highest[key]; seen && seq < hi {
		l.reordered = append(l.reordered, id)
		return
	}
	l.highest[key] = seq
}

// HandledCount returns how many times id was handled.
func (l *Ledger) HandledCount(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.handled[id]
}

// DeliveredCount returns how many times id was delivered.
func (l *Ledger) DeliveredCount(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.delivered[id]
}

// Report summarises the ledger.
func (l *Ledger) Report() LedgerReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := LedgerReport{Published: len(l.pubOrder)}
	for _, n := range l.delivered {
		r.Delivered += n
	}
	for _, id := range l.pubOrder {
		n := l.handled[id]
		if n == 0 {
			r.Lost = append(r.Lost, id)
			continue
		}
		r.Handled++
		if n > 1 {
			r.Duplicates += n - 1
			r.DuplicateIDs = append(r.DuplicateIDs, id)
		}
	}
	r.Reordered = append([]string(nil), l.reordered...)
	r.Unexpected = append([]string(nil), l.unknown...)
	sort.Strings(r.Unexpected)
	return r
}

// LedgerReport is what a Ledger found. Handled counts distinct published messages
// handled at least once; Duplicates counts the extra handlings.
type LedgerReport struct {
	Published    int
	Delivered    int
	Handled      int
	Lost         []string // published, never handled, in publish order
	Duplicates   int
	DuplicateIDs []string // handled more than once, in publish order
	Reordered    []string // handled after a later message of the same key
	Unexpected   []string // handled but never recorded as published
}

// OK reports whether nothing was lost, duplicated, reordered or unexpected.
func (r LedgerReport) OK() bool {
	return len(r.Lost) == 0 && r.Duplicates == 0 && len(r.Reordered) == 0 && len(r.Unexpected) == 0
}

// String summarises the report in one line with up to five offending ids
// per problem, for test failures and logs.
func (r LedgerReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "published %d, delivered %d, handled %d", r.Published, r.Delivered, r.Handled)
	if len(r.Lost) > 0 {
		fmt.Fprintf(&b, "; lost %d of %d: ids %s", len(r.Lost), r.Published, Sample(r.Lost, 5))
	}
	if r.Duplicates > 0 {
		fmt.Fprintf(&b, "; %d duplicates of %d ids: %s", r.Duplicates, len(r.DuplicateIDs), Sample(r.DuplicateIDs, 5))
	}
	if len(r.Reordered) > 0 {
		fmt.Fprintf(&b, "; reordered %d: ids %s", len(r.Reordered), Sample(r.Reordered, 5))
	}
	if len(r.Unexpected) > 0 {
		fmt.Fprintf(&b, "; %d never published: ids %s", len(r.Unexpected), Sample(r.Unexpected, 5))
	}
	return b.String()
}

// Sample formats up to n ids, saying how many more there were.
func Sample(ids []string, n int) string {
	if len(ids) <= n {
		return strings.Join(ids, ", ")
	}
	return fmt.Sprintf("%s (and %d more)", strings.Join(ids[:n], ", "), len(ids)-n)
}
