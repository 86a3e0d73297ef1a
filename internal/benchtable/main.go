// Command benchtable reads `go test -bench` output on stdin, passes it
// through, and then prints a table that pairs each Benchmark<Thing>/raw (or
// /watermill, /channel, or /single for one-at-a-time handling against
// batches) row with its Benchmark<Thing>/queuekit row from the
// same run, with the ratio of their msgs/s and their allocations per message,
// and, for pairs that report latency percentiles (p50-us, p99-us, p999-us:
// microseconds), a second table with the percentiles side by side. Where
// both rows report CPU per message (cpu-ns/msg, and srv-cpu-ns/msg for the
// broker's process), the cpu ratio column divides the baseline's by
// queuekit's: the figure a loaded machine disturbs least.
//
// With N runs of each (make bench's rounds, or -count N), the msg/s
// columns are medians of the N runs, and the ratios are the medians of the
// N paired ratios: the i-th baseline run with the i-th queuekit run, which
// ran one after the other. A round that a noisy minute slows slows both of
// its runs, so its ratio stays; the ratio of the two medians can instead
// set one side's fast round against the other's slow one (one run of 2026-12-07 had
// Kafka consume at rounds 0.97, 1.11, 0.86, 1.04, 0.72: 0.97 paired, 0.84
// as a ratio of medians). The range column gives the lowest and highest
// round.
//
//	go test -run '^$' -bench . -benchmem ./... | go run ./internal/benchtable
package main

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
)

type row struct {
	msgsPerSec float64
	allocs     float64
	hasAllocs  bool
	lat        [len(latencyUnits)]float64 // microseconds, by latencyUnits
	hasLat     bool
	rate       float64 // rate-msgs/s: the fixed rate a latency run used
	cpu        float64 // cpu-ns/msg (cpu-us/msg × 1000): the process's CPU per message
	srv        float64 // srv-cpu-ns/msg: the broker process's CPU per message
}

// latencyUnits are the latency metrics benchtable reads, in the order of
// row.lat.
var latencyUnits = [...]string{"p50-us", "p99-us", "p999-us"}

func main() {
	runs := map[string]map[string][]row{} // thing -> variant -> one row per run
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Println(line)
		thing, variant, r, ok := parse(line)
		if !ok {
			continue
		}
		if runs[thing] == nil {
			runs[thing] = map[string][]row{}
		}
		runs[thing][variant] = append(runs[thing][variant], r)
	}
	rows := map[string]map[string]row{}
	count := 0
	for thing, variants := range runs {
		rows[thing] = map[string]row{}
		for v, rs := range variants {
			rows[thing][v] = median(rs)
			count = max(count, len(rs))
		}
	}
	things := make([]string, 0, len(rows))
	for t := range rows {
		things = append(things, t)
	}
	sort.Strings(things)
	fmt.Println()
	if count > 1 {
		fmt.Printf("(msg/s, allocs and latencies are medians of up to %d runs; ratios are medians of the runs' paired ratios)\n", count)
	}
	fmt.Printf("%-44s %-10s %14s %14s %8s %11s %12s %10s\n", "benchmark", "baseline", "baseline msg/s", "queuekit msg/s", "ratio", "range", "allocs/msg", "cpu ratio")
	defer printLatency(things, rows)
	for _, t := range things {
		q, ok := rows[t]["queuekit"]
		if !ok {
			continue
		}
		for _, base := range []string{"raw", "channel", "watermill", "single"} {
			b, ok := rows[t][base]
			if !ok || b.msgsPerSec == 0 {
				continue
			}
			allocs := "-"
			if q.hasAllocs {
				allocs = strconv.FormatFloat(q.allocs, 'f', 1, 64)
			}
			ratio, lo, hi := paired(runs[t][base], runs[t]["queuekit"], func(b, q row) float64 {
				if b.msgsPerSec == 0 {
					return 0
				}
				return q.msgsPerSec / b.msgsPerSec
			})
			span := "-"
			if lo != hi {
				span = strconv.FormatFloat(lo, 'f', 2, 64) + "-" + strconv.FormatFloat(hi, 'f', 2, 64)
			}
			cpu := "-"
			if r, _, _ := paired(runs[t][base], runs[t]["queuekit"], cpuRatio); r > 0 {
				cpu = strconv.FormatFloat(r, 'f', 2, 64)
			}
			fmt.Printf("%-44s %-10s %14.0f %14.0f %8.2f %11s %12s %10s\n", t, base, b.msgsPerSec, q.msgsPerSec, ratio, span, allocs, cpu)
		}
	}
}

// paired returns the median, lowest and highest of ratio over the runs
// of bs and qs paired in order (the i-th with the i-th), leaving out the
// pairs whose ratio is 0 (not measured); all 0 when none is left.
func paired(bs, qs []row, ratio func(b, q row) float64) (med, lo, hi float64) {
	var rs []float64
	for i := range min(len(bs), len(qs)) {
		if r := ratio(bs[i], qs[i]); r > 0 {
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return 0, 0, 0
	}
	sort.Float64s(rs)
	return medianOf(rs), rs[0], rs[len(rs)-1]
}

// cpuRatio is the baseline's CPU per message over queuekit's — this
// process's plus the broker's where both rows report it — or 0 when a row
// does not report it. On a loaded machine it is steadier than the msgs/s
// ratio: above 1, queuekit spends less CPU per message than the baseline.
func cpuRatio(b, q row) float64 {
	if b.cpu == 0 || q.cpu == 0 {
		return 0
	}
	bc, qc := b.cpu, q.cpu
	if b.srv > 0 && q.srv > 0 {
		bc, qc = bc+b.srv, qc+q.srv
	}
	return bc / qc
}

// parse reads "BenchmarkThing/variant-2  N  ... 123 msgs/s ... 2.0 allocs/msg".
func parse(line string) (thing, variant string, r row, ok bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
		return
	}
	name := f[0]
	if i := strings.LastIndex(name, "-"); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			name = name[:i]
		}
	}
	slash := strings.LastIndex(name, "/")
	if slash < 0 {
		return
	}
	thing, variant = name[:slash], name[slash+1:]
	for i := 1; i+1 < len(f); i++ {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			continue
		}
		switch f[i+1] {
		case "msgs/s":
			r.msgsPerSec = v
			ok = true
		case "allocs/msg":
			r.allocs, r.hasAllocs = v, true
		case "rate-msgs/s":
			r.rate = v
		case "cpu-ns/msg":
			r.cpu = v
		case "cpu-us/msg":
			r.cpu = v * 1000
		case "srv-cpu-ns/msg":
			r.srv = v
		case "srv-cpu-us/msg":
			r.srv = v * 1000
		default:
			for k, u := range latencyUnits {
				if f[i+1] == u {
					r.lat[k], r.hasLat, ok = v, true, true
				}
			}
		}
	}
	return
}

// median returns the row with the median msgs/s, and the median allocs.
func median(rs []row) row {
	by := func(key func(row) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = key(r)
		}
		sort.Float64s(v)
		return medianOf(v)
	}
	m := row{
		msgsPerSec: by(func(r row) float64 { return r.msgsPerSec }),
		allocs:     by(func(r row) float64 { return r.allocs }),
		hasAllocs:  rs[0].hasAllocs,
		hasLat:     rs[0].hasLat,
		rate:       by(func(r row) float64 { return r.rate }),
		cpu:        by(func(r row) float64 { return r.cpu }),
		srv:        by(func(r row) float64 { return r.srv }),
	}
	for k := range m.lat {
		m.lat[k] = by(func(r row) float64 { return r.lat[k] })
	}
	return m
}

// medianOf returns the median of sorted v (not empty).
func medianOf(v []float64) float64 {
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// printLatency prints the latency percentiles of each baseline and
// queuekit pair that reports them.
func printLatency(things []string, rows map[string]map[string]row) {
	header := false
	for _, t := range things {
		q, ok := rows[t]["queuekit"]
		if !ok || !q.hasLat {
			continue
		}
		for _, base := range []string{"raw", "channel", "watermill", "single"} {
			b, ok := rows[t][base]
			if !ok || !b.hasLat {
				continue
			}
			if !header {
				fmt.Println()
				fmt.Printf("%-44s %-10s %11s %21s %21s %21s\n", "latency, microseconds", "baseline", "rate msg/s", "p50 baseline/queuekit", "p99 baseline/queuekit", "p999 baseline/queuekit")
				header = true
			}
			fmt.Printf("%-44s %-10s %11.0f", t, base, q.rate)
			for k := range latencyUnits {
				fmt.Printf(" %10.0f/%-10.0f", b.lat[k], q.lat[k])
			}
			fmt.Println()
		}
	}
}
