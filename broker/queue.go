package broker

import (
	"hash/maphash"

	"github.com/queuekit/queuekit/broker/driver"
)

// The pieces Consume and ConsumeBatch share: the deliveries a consumer has
// received and not started yet, the keys being handled under PerKey, and a
// list of idle workers to wake.

// item is a received delivery that no handler has started yet.
type item struct {
	d driver.Delivery
	m *Message
	// key is the message's key when it was received: a handler may change
	// m.Key, never the key the consumer dispatches by.
	key  string
	hash uint64 // key's in the consumer's keyTable
}

// newItem makes d an item; keys, when not nil, hashes its key.
func newItem(d driver.Delivery, keys *keyTable) item {
	m := d.Message()
	it := item{d: d, m: m, key: m.Key}
	if keys != nil && it.key != "" {
		it.hash = keys.hash(it.key)
	}
	return it
}

// itemRing is a growable deque of items.
type itemRing struct {
	buf  []item
	head int
	n    int
}

func (r *itemRing) grow() {
	nb := make([]item, max(8, 2*len(r.buf)))
	for i := 0; i < r.n; i++ {
		nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
	}
	r.buf, r.head = nb, 0
}

func (r *itemRing) pushBack(it item) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = it
	r.n++
}

func (r *itemRing) pushFront(it item) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.head = (r.head - 1) & (len(r.buf) - 1)
	r.buf[r.head] = it
	r.n++
}

func (r *itemRing) popFront() item {
	it := r.buf[r.head]
	r.buf[r.head] = item{}
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
	return it
}

// keyState is a key that a handler (or a batch) holds under PerKey: the
// key's messages received since wait in order behind it. Consume gives a
// held key a state only once a message waits behind it (most never have
// one); ConsumeBatch's keys always have one, naming their batch.
type keyState struct {
	waiting itemRing
	owner   *batch // ConsumeBatch: the batch holding the key
}

// keyTable tracks the keys held under PerKey: an open-addressing hash table
// (linear probing, deletion by backward shift) keyed by each item's key and
// its hash, computed once when the delivery is received (by Consume's
// receiving worker before it takes the lock, when the adapter receives in
// batches). A key is looked up and taken in one probe, and let go in
// another, where a map would hash it four times; the states are recycled,
// so a steady stream of keys allocates nothing.
type keyTable struct {
	seed  maphash.Seed
	slots []keySlot // len is a power of two, at most half full
	n     int
	free  []*keyState
}

type keySlot struct {
	hash uint64 // 0: the slot is empty (hash sets the top bit)
	key  string
	ks   *keyState // nil until a state is asked for (see stateAt)
}

func newKeyTable() *keyTable {
	return &keyTable{seed: maphash.MakeSeed(), slots: make([]keySlot, 64)}
}

// hash returns key's hash, never 0.
func (t *keyTable) hash(key string) uint64 { return maphash.String(t.seed, key) | 1<<63 }

// find returns key's slot, and whether key is held (else the slot is the
// empty one where it would go).
func (t *keyTable) find(key string, h uint64) (int, bool) {
	mask := len(t.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.hash == 0 {
			return i, false
		}
		if s.hash == h && s.key == key {
			return i, true
		}
	}
}

// get returns the state of key if it is held, or nil.
func (t *keyTable) get(key string, h uint64) *keyState {
	if i, ok := t.find(key, h); ok {
		return t.slots[i].ks
	}
	return nil
}

// takeAt marks key held in slot i, which find returned for it, and returns
// its state.
func (t *keyTable) takeAt(i int, key string, h uint64) *keyState {
	ks := t.newState()
	t.slots[i] = keySlot{hash: h, key: key, ks: ks}
	t.added()
	return ks
}

// holdAt marks key held in slot i, which find returned for it, without a
// state: Consume asks for one with stateAt when a message must wait.
func (t *keyTable) holdAt(i int, key string, h uint64) {
	s := &t.slots[i] // empty: ks is nil already
	s.hash, s.key = h, key
	t.added()
}

// stateAt returns the state of the key held in slot i, giving it one.
func (t *keyTable) stateAt(i int) *keyState {
	s := &t.slots[i]
	if s.ks == nil {
		s.ks = t.newState()
	}
	return s.ks
}

func (t *keyTable) newState() *keyState {
	if n := len(t.free); n > 0 {
		ks := t.free[n-1]
		t.free = t.free[:n-1]
		return ks
	}
	return new(keyState)
}

// added grows the table once it is half full.
func (t *keyTable) added() {
	if t.n++; 2*t.n > len(t.slots) {
		t.grow()
	}
}

func (t *keyTable) grow() {
	old := t.slots
	t.slots = make([]keySlot, 2*len(old))
	for _, s := range old {
		if s.hash != 0 {
			i, _ := t.find(s.key, s.hash)
			t.slots[i] = s
		}
	}
}

// drop lets key go; nothing must wait behind it.
func (t *keyTable) drop(key string, h uint64) {
	if i, ok := t.find(key, h); ok {
		t.dropAt(i)
	}
}

// dropAt lets go the key held in slot i, which find returned for it.
func (t *keyTable) dropAt(i int) {
	if ks := t.slots[i].ks; ks != nil {
		ks.owner = nil
		t.free = append(t.free, ks)
	}
	t.n--
	// Backward shift: move up each later slot of the run that may live at
	// i, so that no probe stops early at the hole.
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j].hash != 0; j = (j + 1) & mask {
		home := int(t.slots[j].hash) & mask
		if (j-home)&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = keySlot{}
}

// waitList holds idle workers, each waiting on a channel of its own (with
// room for one signal) that a waker signals after taking it off the list.
// Its user guards it with a mutex.
type waitList struct {
	ws []chan struct{}
}

func (l *waitList) add(w chan struct{}) { l.ws = append(l.ws, w) }

func (l *waitList) len() int { return len(l.ws) }

// wakeOne signals the most recent waiter (its cache is the warmest).
func (l *waitList) wakeOne() {
	n := len(l.ws)
	if n == 0 {
		return
	}
	w := l.ws[n-1]
	l.ws[n-1] = nil
	l.ws = l.ws[:n-1]
	w <- struct{}{}
}

func (l *waitList) wakeAll() {
	for l.len() > 0 {
		l.wakeOne()
	}
}
