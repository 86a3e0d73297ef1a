package kafka_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/semantics"
)

// A refused connection fails at once, and the error says how long it
// really tried, not the whole dial_timeout (issue 17 item 13: it said
// "within 10s" after 12ms).
func TestDialErrorSaysHowLongItTried(t *testing.T) {
	start := time.Now()
	_, err := broker.Open(context.Background(), "kafka://127.0.0.1:1?dial_timeout=10s")
	took := time.Since(start)
	if err == nil || broker.KindOf(err) != semantics.Transient {
		t.Fatalf("Open of a refused address = %v, want a transient error", err)
	}
	if strings.Contains(err.Error(), "within 10s") {
		t.Errorf("error claims the whole dial timeout: %v", err)
	}
	m := regexp.MustCompile(`tried for ([0-9.]+[µm]?s) of dial_timeout 10s`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error does not say how long it tried: %v", err)
	}
	said, perr := time.ParseDuration(m[1])
	// The error rounds to the millisecond, so compare with took rounded
	// the same way (rounding is monotone: what it measured <= took).
	if perr != nil || said > took.Round(time.Millisecond) {
		t.Errorf("said it tried %v, but Open took %v", m[1], took)
	}
}
