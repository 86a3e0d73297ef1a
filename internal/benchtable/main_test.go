package main

import "testing"

func TestParseAndMedian(t *testing.T) {
	thing, variant, r, ok := parse("BenchmarkKafkaConsume/queuekit-2   495777  2053 ns/op  3.042 allocs/msg  487152 msgs/s  824 B/op  3 allocs/op")
	if !ok || thing != "BenchmarkKafkaConsume" || variant != "queuekit" || r.msgsPerSec != 487152 || r.allocs != 3.042 {
		t.Fatalf("parse = %q %q %+v %v", thing, variant, r, ok)
	}
	if _, _, _, ok := parse("ok  github.com/queuekit/queuekit/adapters/kafka 12.9s"); ok {
		t.Error("parsed a non-benchmark line")
	}
	if _, _, _, ok := parse("BenchmarkNewID-2 5144931 221.8 ns/op 48 B/op 1 allocs/op"); ok {
		t.Error("parsed a benchmark without a variant or msgs/s")
	}
	m := median([]row{{msgsPerSec: 300}, {msgsPerSec: 100}, {msgsPerSec: 200}, {msgsPerSec: 1000}})
	if m.msgsPerSec != 250 {
		t.Errorf("median of 100,200,300,1000 = %v, want 250", m.msgsPerSec)
	}
}

func TestParseLatency(t *testing.T) {
	_, variant, r, ok := parse("BenchmarkKafkaLatency/raw-2  1  2047042254 ns/op  1645 p50-us  66124 p99-us  84067 p999-us  123249 rate-msgs/s")
	if !ok || variant != "raw" || !r.hasLat || r.lat != [3]float64{1645, 66124, 84067} || r.rate != 123249 || r.msgsPerSec != 0 {
		t.Fatalf("parse = %q %+v %v", variant, r, ok)
	}
	m := median([]row{{lat: [3]float64{1, 10, 100}, hasLat: true}, {lat: [3]float64{3, 30, 300}, hasLat: true}, {lat: [3]float64{2, 20, 200}, hasLat: true}})
	if !m.hasLat || m.lat != [3]float64{2, 20, 200} {
		t.Errorf("median = %+v, want 2, 20, 200", m)
	}
}

func TestCPURatio(t *testing.T) {
	_, _, b, _ := parse("BenchmarkX/raw-2  100  5 ns/op  100 msgs/s  600 cpu-ns/msg  400 srv-cpu-ns/msg")
	_, _, q, _ := parse("BenchmarkX/queuekit-2  100  5 ns/op  90 msgs/s  1.1 cpu-us/msg  900 srv-cpu-ns/msg")
	if got := cpuRatio(b, q); got != 0.5 {
		t.Errorf("cpuRatio = %v, want 0.5 ((600+400)/(1100+900))", got)
	}
	q.srv = 0
	if got := cpuRatio(b, q); got < 0.5454 || got > 0.5455 {
		t.Errorf("cpuRatio without the broker's = %v, want 0.545 (600/1100)", got)
	}
	if got := cpuRatio(row{}, q); got != 0 {
		t.Errorf("cpuRatio without figures = %v, want 0", got)
	}
}

// The ratio pairs the i-th baseline run with the i-th queuekit run: a
// round that ran slow on both sides keeps its ratio, where the ratio of
// the medians would set one side's fast round against the other's slow
// one.
func TestPairedRatio(t *testing.T) {
	var bs, qs []row
	for _, p := range [][2]float64{{700, 680}, {698, 772}, {681, 585}, {555, 576}, {784, 562}} {
		bs = append(bs, row{msgsPerSec: p[0]})
		qs = append(qs, row{msgsPerSec: p[1]})
	}
	ratio := func(b, q row) float64 { return q.msgsPerSec / b.msgsPerSec }
	med, lo, hi := paired(bs, qs, ratio)
	if med < 0.971 || med > 0.972 || lo < 0.716 || lo > 0.717 || hi < 1.106 || hi > 1.107 {
		t.Errorf("paired = %.3f (%.3f-%.3f), want 0.971 (0.717-1.106)", med, lo, hi)
	}
	if byMedians := median(qs).msgsPerSec / median(bs).msgsPerSec; byMedians > 0.86 {
		t.Errorf("ratio of medians = %.3f: the example no longer shows the difference", byMedians)
	}
	if med, _, _ := paired(bs, qs, func(row, row) float64 { return 0 }); med != 0 {
		t.Errorf("paired without figures = %v, want 0", med)
	}
}
