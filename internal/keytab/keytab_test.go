package keytab

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// The table against a map, through growth and many removals, with a third
// of the keys sharing their home slot (long runs of probes): the backward
// shift must never hide a key behind a hole, and a value must stay with
// its key while other keys come and go.
func TestTableMatchesAMap(t *testing.T) {
	kt := New[int](16)
	want := map[string]int{}
	r := rand.New(rand.NewPCG(1, 2))
	for op := range 200000 {
		k := r.IntN(300)
		key := fmt.Sprintf("k%d", k)
		h := Hash(key)
		if k%3 == 0 {
			h &^= 0xfff
		}
		i, held := kt.Find(key, h)
		v, ok := want[key]
		if held != ok {
			t.Fatalf("op %d: %s held %v, want %v", op, key, held, ok)
		}
		if held {
			if s := kt.At(i); s.Val != v || s.Key != key || s.Hash != h {
				t.Fatalf("op %d: slot %+v, want %s=%d", op, *s, key, v)
			}
			kt.Remove(i)
			delete(want, key)
		} else {
			kt.Put(i, key, h, op)
			want[key] = op
		}
		if kt.Len() != len(want) {
			t.Fatalf("op %d: %d keys, want %d", op, kt.Len(), len(want))
		}
	}
}

func TestHashIsNeverZero(t *testing.T) {
	for i := range 1000 {
		if Hash(fmt.Sprint(i)) == 0 {
			t.Fatalf("Hash(%d) is 0, the empty slot's mark", i)
		}
	}
}
