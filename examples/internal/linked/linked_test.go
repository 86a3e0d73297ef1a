package linked

import (
	"strings"
	"testing"

	_ "github.com/queuekit/queuekit/adapters/memory" // the only adapter linked here
)

func TestCheck(t *testing.T) {
	for _, ok := range []string{"mem://", "mem://x?buffer=10", "not a url", ""} {
		if err := Check(ok, "./examples/orders"); err != nil {
			t.Errorf("Check(%q) = %v, want nil", ok, err)
		}
	}
	err := Check("amqp://guest:secret@127.0.0.1:5672/", "./examples/orders")
	if err == nil {
		t.Fatal("Check of an adapter that is not linked = nil")
	}
	for _, want := range []string{"amqp://", "-tags allbrokers", "go run -tags allbrokers ./examples/orders -broker 'amqp://guest:xxxxx@127.0.0.1:5672/'", "mem://"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("password in error: %v", err)
	}
}
