package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// SQSEndpointEnv names the environment variable that points the SQS tests
// at an SQS/SNS endpoint of one's own instead of a fauxqs process.
const SQSEndpointEnv = "QUEUEKIT_SQS_ENDPOINT"

var (
	sqsOnce     sync.Once
	sqsEndpoint string
	sqsErr      error
	sqsHow      string
	// sqsStdin is only written: it keeps fauxqs's standard input reachable,
	// so that no finalizer closes it (fauxqs exits when it closes).
	//lint:ignore U1000 reachable on purpose, see above
	sqsStdin io.WriteCloser
)

// SQS returns the endpoint URL (http://127.0.0.1:PORT) of an SQS and SNS
// emulator: $QUEUEKIT_SQS_ENDPOINT, or else a fauxqs process (from npm,
// installed in internal/testenv/npm by `make test`) started on a free port
// once per test binary. That process exits when the test binary does,
// however it ends, because it watches its standard input, a pipe from this
// process; its endpoint is then exported in $QUEUEKIT_SQS_ENDPOINT, so that
// the processes a test starts (the conformance suite's consumer processes,
// which it kills) reach the same emulator. When no endpoint can be had, t
// is skipped (failed under CI=true) with a message that says how to
// provide one.
func SQS(t testing.TB) string {
	t.Helper()
	if ep := os.Getenv(SQSEndpointEnv); ep != "" {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			Unavailable(t, "SQS", fmt.Errorf("%s=%q is not an http(s) URL", SQSEndpointEnv, ep), "set it to an endpoint such as http://127.0.0.1:4566")
		}
		addr := u.Host
		if u.Port() == "" && u.Scheme == "https" {
			addr += ":443"
		} else if u.Port() == "" {
			addr += ":80"
		}
		if err := Reachable(addr, 2*time.Second); err != nil {
			Unavailable(t, "SQS", err, "start the emulator "+SQSEndpointEnv+" points at, or unset it to let the tests start fauxqs")
		}
		return ep
	}
	sqsOnce.Do(startFauxqs)
	if sqsErr != nil {
		Unavailable(t, "SQS (fauxqs)", sqsErr, sqsHow)
	}
	return sqsEndpoint
}

func startFauxqs() {
	sqsHow = "run make test (it runs npm ci in internal/testenv/npm), or set " + SQSEndpointEnv + " to an SQS/SNS endpoint"
	dir, err := npmDir()
	if err != nil {
		sqsErr = err
		return
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "fauxqs", "package.json")); err != nil {
		sqsErr = errors.New("fauxqs is not installed in internal/testenv/npm/node_modules")
		return
	}
	node, err := exec.LookPath("node")
	if err != nil {
		sqsErr = errors.New("node is not on PATH")
		sqsHow = "install Node.js 20 or newer (Debian: apt-get install nodejs npm), then run make test, or set " + SQSEndpointEnv
		return
	}
	cmd := exec.Command(node, "fauxqs.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "FAUXQS_PORT=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		sqsErr = err
		return
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		sqsErr = err
		return
	}
	if err := cmd.Start(); err != nil {
		sqsErr = fmt.Errorf("starting fauxqs: %w", err)
		return
	}
	sqsStdin = stdin
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	fail := func(err error) {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w: %s", err, lastLines(msg, 5))
		}
		sqsErr = err
	}
	select {
	case line, ok := <-lines:
		port, found := strings.CutPrefix(line, "fauxqs listening on ")
		if !ok || !found {
			fail(errors.New("fauxqs exited before it listened"))
			return
		}
		addr := "127.0.0.1:" + port
		if err := Reachable(addr, 2*time.Second); err != nil {
			fail(fmt.Errorf("fauxqs said it listens on %s but does not answer: %w", addr, err))
			return
		}
		sqsEndpoint = "http://" + addr
		if err := os.Setenv(SQSEndpointEnv, sqsEndpoint); err != nil {
			fail(fmt.Errorf("exporting %s: %w", SQSEndpointEnv, err))
			return
		}
	case <-time.After(30 * time.Second):
		fail(errors.New("fauxqs did not start within 30s"))
	}
}

// npmDir finds internal/testenv/npm by walking up from the working
// directory (a test runs in its package's directory) to the module root.
func npmDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "internal", "testenv", "npm"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the module root (go.mod) above the working directory")
		}
		dir = parent
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
