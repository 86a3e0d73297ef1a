// Package benchmeter measures the timed part of a throughput benchmark the
// same way in every package, so that internal/benchtable can pair rows
// from different packages:
//
//   - msgs/s: messages over the benchmark's elapsed (timed) time;
//   - allocs/msg: heap allocations of every goroutine of the process per
//     message (the client library's goroutines too), from runtime.MemStats;
//   - cpu-ns/msg: this process's CPU time (user + system, every thread,
//     the garbage collector's too) per message, which other processes on a
//     loaded machine disturb far less than msgs/s;
//   - srv-cpu-ns/msg, where a benchmark names its broker's process
//     (Meter.Server): that process's CPU time per message.
//
// QUEUEKIT_BENCH_TRACE=<dir> writes an execution trace of each timed part
// to <dir>/<benchmark>.trace, for go tool trace.
package benchmeter

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Meter measures one timed part. Start it where the timed part starts;
// Stop it with the number of messages handled.
type Meter struct {
	b      *testing.B
	before runtime.MemStats
	cpu    time.Duration
	server func() time.Duration // the servers' CPU time so far, or nil
	srv    time.Duration
	trace  *os.File
}

// Start collects garbage, takes the counters and resets b's timer.
func Start(b *testing.B) *Meter { return start(b, nil) }

// StartWithServer is Start that also reports srv-cpu-ns/msg, the CPU time
// of the one process on this machine whose command name is server (e.g.
// "nats-server"); nothing is reported when there is not exactly one.
func StartWithServer(b *testing.B, server string) *Meter {
	return start(b, func() time.Duration { return ProcessCPU(server) })
}

// StartWithServers is Start that also reports srv-cpu-ns/msg, the CPU time
// of every process on this machine whose command name is one of servers
// (a server of many processes, such as PostgreSQL, or several servers that
// all work for the benchmark). Processes that exit during the timed part
// are missed.
func StartWithServers(b *testing.B, servers ...string) *Meter {
	return start(b, func() time.Duration { return ProcessesCPU(servers...) })
}

func start(b *testing.B, server func() time.Duration) *Meter {
	b.Helper()
	m := &Meter{b: b, server: server}
	runtime.GC()
	runtime.ReadMemStats(&m.before)
	if dir := os.Getenv("QUEUEKIT_BENCH_TRACE"); dir != "" {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(b.Name())
		f, err := os.Create(filepath.Join(dir, name+".trace"))
		if err != nil {
			b.Fatal(err)
		}
		if err := trace.Start(f); err != nil {
			b.Fatal(err)
		}
		m.trace = f
	}
	m.cpu = CPUTime()
	if server != nil {
		m.srv = server()
	}
	b.ResetTimer()
	return m
}

// Stop stops b's timer and reports n messages' figures.
func (m *Meter) Stop(n int) {
	m.b.StopTimer()
	cpu := CPUTime() - m.cpu
	var srv time.Duration
	if m.server != nil && m.srv > 0 {
		srv = m.server() - m.srv
	}
	if m.trace != nil {
		trace.Stop()
		_ = m.trace.Close()
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if n <= 0 {
		return
	}
	f := float64(n)
	m.b.ReportMetric(f/m.b.Elapsed().Seconds(), "msgs/s")
	m.b.ReportMetric(float64(after.Mallocs-m.before.Mallocs)/f, "allocs/msg")
	if cpu > 0 {
		m.b.ReportMetric(float64(cpu)/f, "cpu-ns/msg")
	}
	if srv > 0 {
		m.b.ReportMetric(float64(srv)/f, "srv-cpu-ns/msg")
	}
}

// ProcessCPU is the CPU time (user + system) of the one process on this
// machine whose command name is comm, read from /proc; 0 when there is no
// /proc or not exactly one such process.
func ProcessCPU(comm string) time.Duration {
	var total time.Duration
	n := 0
	eachProcess([]string{comm}, func(cpu time.Duration) { total += cpu; n++ })
	if n != 1 {
		return 0
	}
	return total
}

// ProcessesCPU is the CPU time (user + system) of every process on this
// machine whose command name is one of comms, read from /proc; 0 without
// /proc.
func ProcessesCPU(comms ...string) time.Duration {
	var total time.Duration
	eachProcess(comms, func(cpu time.Duration) { total += cpu })
	return total
}

// eachProcess calls fn with the CPU time of each process whose command
// name is one of comms.
func eachProcess(comms []string, fn func(time.Duration)) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		c, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || !slices.Contains(comms, strings.TrimSpace(string(c))) {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			fn(statCPU(stat))
		}
	}
}

// statCPU reads utime + stime from a /proc/<pid>/stat line.
func statCPU(stat []byte) time.Duration {
	// The fields after the command name (which may hold spaces, in
	// parentheses): utime and stime are the 12th and 13th of them, in
	// clock ticks (100 a second on Linux).
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}
