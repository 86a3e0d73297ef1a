//go:build !unix

package benchmeter

import "time"

// CPUTime is 0 here: without getrusage the benchmarks report no
// cpu-ns/msg.
func CPUTime() time.Duration { return 0 }
