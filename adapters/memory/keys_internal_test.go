package memory

import (
	"testing"
	"unsafe"
)

// A message costs one allocation of its entry (with its first delivery):
// keep it within the 256-byte size class.
func TestEntryFitsItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n > 256 {
		t.Fatalf("entry is %d bytes: over the 256-byte size class, every message costs a 288-byte allocation", n)
	}
}
