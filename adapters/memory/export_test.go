package memory

import (
	"testing"
	"time"
)

// SetPaceWait sets how long publishers wait for the subscribers of a paced
// group, until t ends.
func SetPaceWait(t testing.TB, d time.Duration) {
	old := paceWait.Swap(int64(d))
	t.Cleanup(func() { paceWait.Store(old) })
}
