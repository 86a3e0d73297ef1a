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
