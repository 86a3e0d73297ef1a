package driver

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"testing"
)

func TestHex16MatchesEncodingHex(t *testing.T) {
	vals := []uint64{0, ^uint64(0), 0x0123456789abcdef, 0xfedcba9876543210, 0x0909090909090909, 0x0a0a0a0a0a0a0a0a}
	for range 10000 {
		vals = append(vals, rand.Uint64())
	}
	for _, v := range vals {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], v)
		var got [16]byte
		hex16(got[:], v)
		if want := hex.EncodeToString(b[:]); string(got[:]) != want {
			t.Fatalf("hex16(%#x) = %s, want %s", v, got, want)
		}
	}
}

func TestNewIDIsAVersion4UUID(t *testing.T) {
	for range 1000 {
		id := NewID()
		if len(id) != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' {
			t.Fatalf("%q is not in the 8-4-4-4-12 form", id)
		}
		b, err := hex.DecodeString(id[0:8] + id[9:13] + id[14:18] + id[19:23] + id[24:])
		if err != nil || len(b) != 16 {
			t.Fatalf("%q: %v", id, err)
		}
		if b[6]>>4 != 4 || b[8]>>6 != 2 {
			t.Fatalf("%q: version %d, variant bits %b; want 4 and 10", id, b[6]>>4, b[8]>>6)
		}
		if id != string([]byte(id)) || id != lowerHex(id) {
			t.Fatalf("%q is not lower-case", id)
		}
	}
}

func lowerHex(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'F' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func TestSizeCountsPayloadKeyIDAndHeaders(t *testing.T) {
	m := &Message{ID: "id", Key: "key", Payload: []byte("12345")}
	if n := m.Size(); n != 10 {
		t.Errorf("Size without headers = %d, want 10", n)
	}
	m.Headers = map[string]string{}
	if n := m.Size(); n != 10 {
		t.Errorf("Size with empty headers = %d, want 10", n)
	}
	m.Headers = map[string]string{"ab": "cde", "f": ""}
	if n := m.Size(); n != 16 {
		t.Errorf("Size with headers = %d, want 16", n)
	}
}
