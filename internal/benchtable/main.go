// Command benchtable reads `go test -bench` output on stdin, passes it
// through, and then prints a table that pairs each Benchmark<Thing>/raw (or
// /watermill, /channel) row with its Benchmark<Thing>/queuekit row from the
// same run, with the ratio of their msgs/s and their allocations per message.
// With -count N, each row is the median of its N runs.
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
}

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
		fmt.Printf("(each figure is the median of up to %d runs)\n", count)
	}
	fmt.Printf("%-44s %-10s %14s %14s %8s %12s\n", "benchmark", "baseline", "baseline msg/s", "queuekit msg/s", "ratio", "allocs/msg")
	for _, t := range things {
		q, ok := rows[t]["queuekit"]
		if !ok {
			continue
		}
		for _, base := range []string{"raw", "channel", "watermill"} {
			b, ok := rows[t][base]
			if !ok || b.msgsPerSec == 0 {
				continue
			}
			allocs := "-"
			if q.hasAllocs {
				allocs = strconv.FormatFloat(q.allocs, 'f', 1, 64)
			}
			fmt.Printf("%-44s %-10s %14.0f %14.0f %8.2f %12s\n", t, base, b.msgsPerSec, q.msgsPerSec, q.msgsPerSec/b.msgsPerSec, allocs)
		}
	}
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
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return row{
		msgsPerSec: by(func(r row) float64 { return r.msgsPerSec }),
		allocs:     by(func(r row) float64 { return r.allocs }),
		hasAllocs:  rs[0].hasAllocs,
	}
}
