package pubsub_test

import (
	"os"
	"testing"

	"github.com/queuekit/queuekit/internal/testenv"
)

// TestMain runs the child consumer of the kill tests when childEnv says so
// (see kill_test.go), and otherwise the tests; then it stops the pstest
// server process the tests share before the test binary exits, so that no
// process outlives `go test`. (Should the binary die first, the server
// still exits: it watches its standard input.)
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	code := m.Run()
	testenv.StopServers()
	os.Exit(code)
}
