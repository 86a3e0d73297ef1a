package broker

import (
	"github.com/queuekit/queuekit/broker/driver"
	"github.com/queuekit/queuekit/internal/keytab"
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
		it.hash = keytab.Hash(it.key)
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

// keyTable tracks the keys held under PerKey (keytab's table: each item's
// key hashed once, when the delivery is received — by Consume's receiving
// worker before it takes the lock, when the adapter receives in batches —
// then looked up and taken in one probe and let go in another). A held
// key's state is recycled once the key goes, so a steady stream of keys
// allocates nothing.
type keyTable struct {
	keytab.Table[*keyState] // nil state until one is asked for (see stateAt)
	free                    []*keyState
}

func newKeyTable() *keyTable {
	return &keyTable{Table: keytab.New[*keyState](64)}
}

// get returns the state of key if it is held, or nil.
func (t *keyTable) get(key string, h uint64) *keyState {
	if i, ok := t.Find(key, h); ok {
		return t.At(i).Val
	}
	return nil
}

// takeAt marks key held in slot i, which Find returned for it, and returns
// its state.
func (t *keyTable) takeAt(i int, key string, h uint64) *keyState {
	ks := t.newState()
	t.Put(i, key, h, ks)
	return ks
}

// holdAt marks key held in slot i, which Find returned for it, without a
// state: Consume asks for one with stateAt when a message must wait.
func (t *keyTable) holdAt(i int, key string, h uint64) { t.Put(i, key, h, nil) }

// stateAt returns the state of the key held in slot i, giving it one.
func (t *keyTable) stateAt(i int) *keyState {
	s := t.At(i)
	if s.Val == nil {
		s.Val = t.newState()
	}
	return s.Val
}

func (t *keyTable) newState() *keyState {
	if n := len(t.free); n > 0 {
		ks := t.free[n-1]
		t.free = t.free[:n-1]
		return ks
	}
	return new(keyState)
}

// drop lets key go; nothing must wait behind it.
func (t *keyTable) drop(key string, h uint64) {
	if i, ok := t.Find(key, h); ok {
		t.dropAt(i)
	}
}

// dropAt lets go the key held in slot i, which Find returned for it.
func (t *keyTable) dropAt(i int) {
	if ks := t.At(i).Val; ks != nil {
		ks.owner = nil
		t.free = append(t.free, ks)
	}
	t.Remove(i)
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
