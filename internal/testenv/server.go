package testenv

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// serverStartTimeout bounds how long a helper server may take to print its
// address (the first start may wait for a busy machine).
const serverStartTimeout = 60 * time.Second

// Server is a helper server process started by StartServer: a small main in
// internal/testenv/<name> that serves a fake broker on 127.0.0.1.
type Server struct {
	// Addr is the host:port the server printed.
	Addr string

	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *tailBuffer
	once   sync.Once
}

// StartServer builds the command in internal/testenv/<name> of this module
// (once per test binary, without -race; the go build cache makes a repeat
// build quick) and starts it with args. The command must print
// "ADDR host:port" as the first line of its standard output once it serves,
// and exit when its standard input reaches EOF: StartServer keeps that pipe
// open, so the server dies with the test binary however the binary ends
// (even killed), and Stop ends it sooner.
func StartServer(name string, args ...string) (*Server, error) {
	bin, err := buildServer(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	stderr := &tailBuffer{max: 16 << 10}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	s := &Server{cmd: cmd, stdin: stdin, stderr: stderr}
	running.Lock()
	running.servers = append(running.servers, s)
	running.Unlock()
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, stdout) // never let the server block on a full pipe
	}()
	select {
	case line := <-lines:
		addr, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR ")
		if !ok || addr == "" {
			return nil, s.fail(fmt.Errorf("%s printed %q, want \"ADDR host:port\"", name, line))
		}
		s.Addr = addr
		return s, nil
	case <-time.After(serverStartTimeout):
		return nil, s.fail(fmt.Errorf("%s did not print its address within %v", name, serverStartTimeout))
	}
}

// fail stops s and returns err with the end of the server's standard error.
func (s *Server) fail(err error) error {
	_ = s.Stop()
	if msg := strings.TrimSpace(s.stderr.String()); msg != "" {
		err = fmt.Errorf("%w: %s", err, lastLines(msg, 5))
	}
	return err
}

// Stop closes the server's standard input and waits for it to exit,
// killing it when it has not exited within 5s. Calling it again does
// nothing.
func (s *Server) Stop() error {
	var err error
	s.once.Do(func() {
		running.Lock()
		running.servers = slices.DeleteFunc(running.servers, func(r *Server) bool { return r == s })
		running.Unlock()
		_ = s.stdin.Close()
		exited := make(chan error, 1)
		go func() { exited <- s.cmd.Wait() }()
		select {
		case err = <-exited:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			err = fmt.Errorf("%s did not exit within 5s of its standard input closing; killed: %v",
				filepath.Base(s.cmd.Path), <-exited)
		}
	})
	return err
}

// running lists the servers StartServer started, for StopServers.
var running struct {
	sync.Mutex
	servers []*Server
}

// StopServers stops every server StartServer started that is still
// running, including those shared by the tests of a binary. A TestMain
// calls it after m.Run so that they have exited when the test binary
// does, rather than moments later (when their standard input closes).
func StopServers() {
	running.Lock()
	servers := running.servers
	running.servers = nil
	running.Unlock()
	for _, s := range servers {
		_ = s.Stop()
	}
}

var serverBuilds struct {
	mu   sync.Mutex
	done map[string]*serverBuild
}

type serverBuild struct {
	once sync.Once
	path string
	err  error
}

// buildServer runs `go build` for internal/testenv/<name> once per test
// binary, into a directory of the temporary directory named after the
// module root, and returns the executable's path. The path is the same for
// every test binary of a checkout, so go build finds it up to date and does
// not link again; binaries of different checkouts do not share it.
func buildServer(name string) (string, error) {
	serverBuilds.mu.Lock()
	if serverBuilds.done == nil {
		serverBuilds.done = map[string]*serverBuild{}
	}
	b := serverBuilds.done[name]
	if b == nil {
		b = &serverBuild{}
		serverBuilds.done[name] = b
	}
	serverBuilds.mu.Unlock()
	b.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			b.err = errors.New("the go command is not on PATH (it builds internal/testenv/" + name + ")")
			return
		}
		root, err := moduleRoot()
		if err != nil {
			b.err = err
			return
		}
		sum := sha256.Sum256([]byte(root))
		dir := filepath.Join(os.TempDir(), "queuekit-testenv-"+hex.EncodeToString(sum[:6]))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			b.err = err
			return
		}
		path := filepath.Join(dir, name)
		cmd := exec.Command(goBin, "build", "-o", path, "./internal/testenv/"+name)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./internal/testenv/%s: %v: %s", name, err, lastLines(strings.TrimSpace(string(out)), 5))
			return
		}
		b.path = path
	})
	return b.path, b.err
}

// moduleRoot finds the directory of go.mod by walking up from the working
// directory (a test runs in its package's directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the module root (go.mod) above the working directory")
		}
		dir = parent
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if extra := b.buf.Len() - b.max; extra > 0 {
		b.buf.Next(extra)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
