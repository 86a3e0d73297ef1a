// Package keytab is the hash table that per-key ordering uses twice — in
// broker.Consume and ConsumeBatch (the keys being handled) and in the
// memory adapter (the keys with a message delivered): string keys whose
// hash the caller computes once per message, outside its lock, and passes
// in.
//
// It is an open-addressing table (linear probing, deletion by backward
// shift): a key is looked up and taken in one probe and let go in
// another, where a map would hash it each time, and the slots hold their
// values in place, so a steady stream of keys allocates nothing once the
// table has grown. A hash must not be 0 (Hash sets the top bit); 0 marks
// an empty slot.
package keytab

import "hash/maphash"

// seed hashes keys for every Table: one hash of a message's key serves
// each table it is looked up in (the memory adapter's groups of a topic).
var seed = maphash.MakeSeed()

// Hash returns key's hash, never 0.
func Hash(key string) uint64 { return maphash.String(seed, key) | 1<<63 }

// Table maps keys to values of type V. The zero Table is not usable: make
// one with New.
type Table[V any] struct {
	slots []Slot[V] // len is a power of two, at most half full
	n     int
}

// Slot is a key and its value; Hash 0 marks it empty.
type Slot[V any] struct {
	Hash uint64
	Key  string
	Val  V
}

// New returns a table with room for size/2 keys before it grows; size
// must be a power of two.
func New[V any](size int) Table[V] {
	return Table[V]{slots: make([]Slot[V], size)}
}

// Len is the number of keys held.
func (t *Table[V]) Len() int { return t.n }

// Find returns key's slot, and whether key is held (else the slot is the
// empty one where it would go, for Put).
func (t *Table[V]) Find(key string, h uint64) (int, bool) {
	mask := len(t.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.Hash == 0 {
			return i, false
		}
		if s.Hash == h && s.Key == key {
			return i, true
		}
	}
}

// At returns slot i, which Find returned; valid until the next Put or
// Remove.
func (t *Table[V]) At(i int) *Slot[V] { return &t.slots[i] }

// Put holds key with value v in the empty slot i, which Find returned for
// it. The table may grow: slot numbers found before are then stale.
func (t *Table[V]) Put(i int, key string, h uint64, v V) {
	t.slots[i] = Slot[V]{Hash: h, Key: key, Val: v}
	if t.n++; 2*t.n > len(t.slots) {
		t.grow()
	}
}

// grow doubles the table, moving each key to its place in the new one.
func (t *Table[V]) grow() {
	old := t.slots
	t.slots = make([]Slot[V], 2*len(old))
	for _, s := range old {
		if s.Hash != 0 {
			j, _ := t.Find(s.Key, s.Hash)
			t.slots[j] = s
		}
	}
}

// Remove empties slot i, which holds a key.
func (t *Table[V]) Remove(i int) {
	t.n--
	// Backward shift: move up each later slot of the run that may live at
	// i, so that no probe stops early at the hole.
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j].Hash != 0; j = (j + 1) & mask {
		home := int(t.slots[j].Hash) & mask
		if (j-home)&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = Slot[V]{}
}
