package broker

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/queuekit/queuekit/internal/keytab"
)

// Consume's keys are held without a state until a message waits behind
// one; the state then given is recycled once the key goes, and a held key
// never loses its place through the other keys' comings and goings.
func TestKeyTableStatesOnDemand(t *testing.T) {
	kt := newKeyTable()
	held := map[string]bool{}
	r := rand.New(rand.NewPCG(3, 4))
	for op := range 100000 {
		key := fmt.Sprintf("k%d", r.IntN(100))
		h := keytab.Hash(key)
		i, ok := kt.Find(key, h)
		if ok != held[key] {
			t.Fatalf("op %d: %s held %v, want %v", op, key, ok, !ok)
		}
		switch {
		case !ok:
			kt.holdAt(i, key, h)
			if j, _ := kt.Find(key, h); kt.At(j).Val != nil { // the table may have grown
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
		if kt.Len() != len(held) {
			t.Fatalf("op %d: %d keys, want %d", op, kt.Len(), len(held))
		}
	}
	if len(kt.free) == 0 || len(kt.free) > 100 {
		t.Fatalf("%d states recycled; want some, at most one per key", len(kt.free))
	}
}
