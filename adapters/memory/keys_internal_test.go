package memory

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// keyTable against a map, through growth and many removals (the backward
// shift must never hide a key behind a hole).
func TestKeyTableMatchesAMap(t *testing.T) {
	kt := newKeyTable()
	want := map[string]*entry{}
	r := rand.New(rand.NewPCG(1, 2))
	ents := make([]entry, 300)
	for op := range 200000 {
		k := r.IntN(len(ents))
		e := &ents[k]
		e.key = fmt.Sprintf("k%d", k)
		h := hashOf(e)
		if k%3 == 0 { // colliding homes: long runs of probes
			e.khash = h &^ 0xfff
			h = e.khash
		}
		i, held := kt.find(e.key, h)
		if held != (want[e.key] != nil) {
			t.Fatalf("op %d: %s held %v, want %v", op, e.key, held, !held)
		}
		if held {
			if kt.slots[i].owner != e {
				t.Fatalf("op %d: %s has another owner", op, e.key)
			}
			kt.remove(i)
			delete(want, e.key)
			continue
		}
		kt.add(i, e)
		want[e.key] = e
		if kt.n != len(want) {
			t.Fatalf("op %d: %d keys, want %d", op, kt.n, len(want))
		}
	}
}

// A message costs one allocation of its entry (with its first delivery):
// keep it within the 256-byte size class.
func TestEntryFitsItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n > 256 {
		t.Fatalf("entry is %d bytes: over the 256-byte size class, every message costs a 288-byte allocation", n)
	}
}
