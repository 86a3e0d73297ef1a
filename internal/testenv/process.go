package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// process is a server binary that a test owns: started on a free loopback
// port, stopped with SIGTERM (so that it flushes what it stored) when the
// test ends, and restartable on the same port with the same arguments.
// NATSProcess and RedisProcess are processes.
type process struct {
	name string // the binary's name, for errors
	addr string // 127.0.0.1:port
	bin  string
	args []string
	mu   sync.Mutex
	cmd  *exec.Cmd
}

// findServer returns the path of the binary name — on PATH, or at
// fallback — or skips t (fails it under CI=true) saying which Debian
// package provides it.
func findServer(t testing.TB, name, fallback, pkg string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if _, serr := os.Stat(fallback); serr == nil {
			return fallback
		}
		Unavailable(t, name, err, "install it (Debian package "+pkg+") to run the tests that restart a server of their own")
	}
	return bin
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// run starts p for t and stops it when t ends.
func (p *process) run(t testing.TB) {
	t.Helper()
	if err := p.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
}

// start starts the binary and waits (up to 30s, or ctx) until it accepts
// connections.
func (p *process) start(ctx context.Context) error {
	cmd := exec.Command(p.bin, p.args...)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	p.mu.Lock()
	p.cmd = cmd
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if Reachable(p.addr, 200*time.Millisecond) == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer on %s: %w", p.name, p.addr, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop ends the server with SIGTERM and waits for it (10s, then SIGKILL).
func (p *process) stop() {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart stops the server and starts it again on the same port with the
// same store: what it acknowledged survives.
func (p *process) Restart(ctx context.Context) error {
	p.stop()
	return p.start(ctx)
}
