package testenv

import (
	"bufio"
	"os"
	"os/exec"
	"testing"
)

// StartChild starts this test binary again as a child process, with
// -test.run=^$ (so that it runs no test: its TestMain decides from env
// what it does) and env (os.Environ() plus the child's settings). It
// returns the command and the lines the child prints on stdout; its
// stderr is the test's. The child's stdin stays open until t ends, when it
// is closed (a child may exit on EOF) and the child killed and reaped.
func StartChild(t testing.TB, env []string) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = env
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the child process: %v", err)
	}
	t.Cleanup(func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 4096)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return cmd, lines
}
