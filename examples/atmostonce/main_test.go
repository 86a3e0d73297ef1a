package main

import "testing"

// TestAtMostOnce runs the example on the embedded broker: the failed samples
// are lost (acknowledged before their handler ran) and none is handled twice;
// run returns an error otherwise.
func TestAtMostOnce(t *testing.T) {
	if err := run("mem://atmostonce-test", 500); err != nil {
		t.Fatal(err)
	}
}
