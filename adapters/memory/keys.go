package memory

import "hash/maphash"

// keyTable holds the keys of a group that have a message delivered (or
// about to be redelivered): owner is the only message of the key that may be
// delivered; head..tail wait behind it in publish order. It is an
// open-addressing hash table (linear probing, deletion by backward shift)
// keyed by the key and its hash, which Publish computes once per message,
// before it takes a group's lock: a key costs one probe when its message is
// taken from the ready queue and one when it is acked, where a map hashed it
// four times; a message that owns its key already (entry.owns: the next one
// let go by an ack, or a redelivery) is delivered without a probe.
type keyTable struct {
	slots []keySlot // len is a power of two, at most half full
	n     int
}

// keySeed hashes the keys of every group, so that a message's hash serves
// each group it is published to.
var keySeed = maphash.MakeSeed()

type keySlot struct {
	hash       uint64
	key        string
	owner      *entry // nil: the slot is empty
	head, tail *entry
}

func newKeyTable() keyTable {
	return keyTable{slots: make([]keySlot, 16)}
}

// keyHash is key's hash in every keyTable. The top bit is set so that an
// entry's khash 0 means not computed.
func keyHash(key string) uint64 { return maphash.String(keySeed, key) | 1<<63 }

// hashOf returns e's key's hash, computing it unless Publish did.
func hashOf(e *entry) uint64 {
	if e.khash == 0 {
		e.khash = keyHash(e.key)
	}
	return e.khash
}

// find returns key's slot, and whether key is held (else the slot is the
// empty one where it would go).
func (t *keyTable) find(key string, h uint64) (int, bool) {
	mask := len(t.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.owner == nil {
			return i, false
		}
		if s.hash == h && s.key == key {
			return i, true
		}
	}
}

// add makes e the owner of its key in slot i, which find returned for it.
func (t *keyTable) add(i int, e *entry) {
	t.slots[i] = keySlot{hash: e.khash, key: e.key, owner: e}
	e.owns = true
	if t.n++; 2*t.n > len(t.slots) {
		old := t.slots
		t.slots = make([]keySlot, 2*len(old))
		for _, s := range old {
			if s.owner != nil {
				j, _ := t.find(s.key, s.hash)
				t.slots[j] = s
			}
		}
	}
}

// remove empties slot i.
func (t *keyTable) remove(i int) {
	t.n--
	// Backward shift: move up each later slot of the run that may live at
	// i, so that no probe stops early at the hole.
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j].owner != nil; j = (j + 1) & mask {
		home := int(t.slots[j].hash) & mask
		if (j-home)&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = keySlot{}
}
