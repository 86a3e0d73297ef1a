package broker

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// keyTable against a map, through growth and many deletions (the backward
// shift must never hide a key behind a hole).
func TestKeyTableMatchesAMap(t *testing.T) {
	kt := newKeyTable()
	want := map[string]*keyState{}
	r := rand.New(rand.NewPCG(1, 2))
	for op := range 200000 {
		k := r.IntN(300)
		key := fmt.Sprintf("k%d", k)
		h := kt.hash(key)
		if k%3 == 0 { // colliding homes: long runs of probes
			h &^= 0xfff
		}
		i, held := kt.find(key, h)
		if held != (want[key] != nil) {
			t.Fatalf("op %d: %s held %v, want %v", op, key, held, !held)
		}
		if held {
			if kt.slots[i].ks != want[key] {
				t.Fatalf("op %d: %s has another state", op, key)
			}
			kt.drop(key, h)
			delete(want, key)
			continue
		}
		want[key] = kt.takeAt(i, key, h)
		if kt.n != len(want) {
			t.Fatalf("op %d: %d keys, want %d", op, kt.n, len(want))
		}
	}
}

// Consume's keys are held without a state until a message waits behind
// one; the state then given is recycled once the key goes, and a held key
// never loses its place through the other keys' comings and goings.
func TestKeyTableStatesOnDemand(t *testing.T) {
	kt := newKeyTable()
	held := map[string]bool{}
	r := rand.New(rand.NewPCG(3, 4))
	for op := range 100000 {
		key := fmt.Sprintf("k%d", r.IntN(100))
		h := kt.hash(key)
		i, ok := kt.find(key, h)
		if ok != held[key] {
			t.Fatalf("op %d: %s held %v, want %v", op, key, ok, !ok)
		}
		switch {
		case !ok:
			kt.holdAt(i, key, h)
			if kt.slots[i].ks != nil {
				t.Fatalf("op %d: %s got a state it did not ask for", op, key)
			}
			held[key] = true
		case r.IntN(2) == 0:
			ks := kt.stateAt(i)
			if ks.waiting.n != 0 || ks.owner != nil || kt.stateAt(i) != ks {
				t.Fatalf("op %d: %s: state %+v, not a fresh one kept", op, key, ks)
			}
		default:
			kt.dropAt(i)
			delete(held, key)
		}
		if kt.n != len(held) {
			t.Fatalf("op %d: %d keys, want %d", op, kt.n, len(held))
		}
	}
	if len(kt.free) == 0 || len(kt.free) > 100 {
		t.Fatalf("%d states recycled; want some, at most one per key", len(kt.free))
	}
}
