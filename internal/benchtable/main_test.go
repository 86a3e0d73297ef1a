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
	if got := cpuRatio(b, q); got != "0.50" {
		t.Errorf("cpuRatio = %s, want 0.50 ((600+400)/(1100+900))", got)
	}
	q.srv = 0
	if got := cpuRatio(b, q); got != "0.55" {
		t.Errorf("cpuRatio without the broker's = %s, want 0.55 (600/1100)", got)
	}
	if got := cpuRatio(row{}, q); got != "-" {
		t.Errorf("cpuRatio without figures = %s, want -", got)
	}
}
