package benchmeter

import (
	"testing"
	"time"
)

func TestStatCPU(t *testing.T) {
	// pid (comm with spaces) state ppid ... utime=250 stime=50 ticks.
	line := []byte("42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0")
	if got := statCPU(line); got != 3*time.Second {
		t.Errorf("statCPU = %v, want 3s", got)
	}
	if got := statCPU([]byte("garbage")); got != 0 {
		t.Errorf("statCPU(garbage) = %v, want 0", got)
	}
}

func TestCPUTimeAdvances(t *testing.T) {
	before := CPUTime()
	deadline := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	if CPUTime() <= before {
		t.Errorf("CPUTime did not advance over 50ms of spinning")
	}
}

func TestProcessCPUOfNoProcess(t *testing.T) {
	if got := ProcessCPU("no-such-process-name"); got != 0 {
		t.Errorf("ProcessCPU(missing) = %v, want 0", got)
	}
}
