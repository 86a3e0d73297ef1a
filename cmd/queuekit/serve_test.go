package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/ingest"
)

// lockedBuffer is an output a running command writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// served is a `queuekit serve` running in process.
type served struct {
	url, metrics   string
	stdout, stderr *lockedBuffer
	stop           func() error
}

var listening = regexp.MustCompile(`listening on (https?://\S+),`)
var metricsOn = regexp.MustCompile(`metrics on (http://\S+)`)

// startServe runs `queuekit serve args...` against c's broker until stop.
func startServe(t *testing.T, c *cli, args ...string) *served {
	t.Helper()
	s := &served{stdout: &lockedBuffer{}, stderr: &lockedBuffer{}}
	e := &env{stdin: strings.NewReader(""), stdout: s.stdout, stderr: s.stderr, getenv: func(k string) string {
		if k == "QUEUEKIT_BROKER" {
			return c.url
		}
		return ""
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, e, append([]string{"serve"}, args...)) }()
	var once sync.Once
	var err error
	s.stop = func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = s.stop() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := listening.FindStringSubmatch(s.stdout.String()); m != nil {
			s.url = m[1]
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, s.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not listen within 20 s:\n%s", s.stdout.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if m := metricsOn.FindStringSubmatch(s.stdout.String()); m != nil {
		s.metrics = m[1]
	}
	return s
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ingest.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const serveToken = "qk_serve-test-token"

func serveConfig() string {
	return `{
  "tokens": [{"name": "checkout", "sha256": "` + ingest.HashToken(serveToken) + `", "topics": ["orders"]}],
  "zones": [{"name": "per_token", "key": "token", "rate": "1r/m", "burst": 1, "nodelay": true}],
  "publish_timeout": "5s",
  "server": {"listen": "127.0.0.1:0", "read_header_timeout": "2s"}
}`
}

func postTo(t *testing.T, client *http.Client, url, token, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Idempotency-Key", "k-"+body)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestServe(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	sub, err := c.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close(ctx)
	s := startServe(t, c, "-config", writeConfig(t, serveConfig()), "-metrics", "127.0.0.1:0")
	client := &http.Client{Timeout: 10 * time.Second}
	target := s.url + "/v1/topics/orders/messages"

	for i, want := range []int{200, 200, 429} { // 1r/m, burst 1: two pass, the third waits a minute
		resp := postTo(t, client, target, serveToken, "m"+string(rune('0'+i)))
		if resp.StatusCode != want {
			t.Errorf("request %d: %d, want %d", i, resp.StatusCode, want)
		}
		if want == 429 && resp.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	if resp := postTo(t, client, target, "wrong", "x"); resp.StatusCode != 401 {
		t.Errorf("wrong token: %d", resp.StatusCode)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d, err := sub.Receive(rctx)
	if err != nil || d.Message().ID != "k-m0" || string(d.Message().Payload) != "m0" {
		t.Fatalf("received %v, %v", d, err)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := client.Get(s.url + path)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("%s: %v %v", path, resp, err)
		} else {
			resp.Body.Close()
		}
	}

	resp, err := client.Get(s.metrics)
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`queuekit_ingest_accepted_total{messaging_destination_name="orders"} 2`,
		`queuekit_ingest_rejected_total{reason="rate_limited"} 1`, `queuekit_ingest_rejected_total{reason="unauthorized"} 1`,
		"queuekit_ingest_duration_seconds_bucket"} {
		if !strings.Contains(string(scrape), want) {
			t.Errorf("metrics lack %q:\n%s", want, scrape)
		}
	}

	if err := s.stop(); err != nil {
		t.Fatalf("serve returned %v after the signal", err)
	}
	if !strings.Contains(s.stdout.String(), "shut down") {
		t.Errorf("stdout: %s", s.stdout.String())
	}
	logs := s.stderr.String()
	if strings.Contains(logs, serveToken) || strings.Contains(logs, "wrong") {
		t.Errorf("a token is in the log:\n%s", logs)
	}
	if !strings.Contains(logs, `"token":"checkout"`) || !strings.Contains(logs, `"status":429`) {
		t.Errorf("access log:\n%s", logs)
	}
}

// TestServeTLS: with -tls-cert and -tls-key the endpoint speaks HTTPS only.
func TestServeTLS(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	sub, _ := c.b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: "orders", Group: "billing"})
	defer sub.Close(ctx)
	certFile, keyFile, pool := selfSigned(t)
	s := startServe(t, c, "-config", writeConfig(t, serveConfig()), "-tls-cert", certFile, "-tls-key", keyFile)
	if !strings.HasPrefix(s.url, "https://") {
		t.Fatalf("url %s", s.url)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if resp := postTo(t, client, s.url+"/v1/topics/orders/messages", serveToken, "secure"); resp.StatusCode != 200 {
		t.Errorf("over TLS: %d", resp.StatusCode)
	}
	plain := strings.Replace(s.url, "https://", "http://", 1)
	if resp := postTo(t, &http.Client{Timeout: 10 * time.Second}, plain+"/v1/topics/orders/messages", serveToken, "plain"); resp.StatusCode != 400 {
		t.Errorf("plain HTTP to the TLS port: %d, want 400", resp.StatusCode)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "queuekit test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}

func TestServeTokens(t *testing.T) {
	c := newCLI(t)
	out, _, err := c.run("my-secret\n", "serve", "-hash-token")
	if err != nil || strings.TrimSpace(out) != ingest.HashToken("my-secret") {
		t.Errorf("-hash-token: %q, %v", out, err)
	}
	out, _, err = c.run("", "serve", "-new-token")
	m := regexp.MustCompile(`token:\s+(\S+)\nsha256:\s+([0-9a-f]{64})`).FindStringSubmatch(out)
	if err != nil || m == nil || ingest.HashToken(m[1]) != m[2] {
		t.Errorf("-new-token: %q, %v", out, err)
	}
	if _, _, err := c.run("", "serve", "-hash-token"); !errors.Is(err, errUsage) {
		t.Errorf("-hash-token without input: %v", err)
	}
}

func TestServeBadInput(t *testing.T) {
	c := newCLI(t)
	bad := writeConfig(t, `{"zones":[{"name":"z","key":"token","rate":"lots"}]}`)
	for _, tc := range []struct {
		args  []string
		usage bool
		want  string
	}{
		{[]string{"serve"}, true, "needs -config"},
		{[]string{"serve", "-config", bad}, false, `zone "z": limitreq: invalid rate "lots"`},
		{[]string{"serve", "-config", filepath.Join(t.TempDir(), "none.json")}, false, "no such file"},
		{[]string{"serve", "-config", writeConfig(t, serveConfig()), "-log", "xml"}, true, "-log is json or text"},
		{[]string{"serve", "-config", writeConfig(t, serveConfig()), "-tls-cert", "c.pem"}, false, "tls_cert and tls_key go together"},
		{[]string{"serve", "-broker", "amqp://u:secret@127.0.0.1:1/", "-config", writeConfig(t, serveConfig())}, false, ""},
	} {
		_, _, err := c.run("", tc.args...)
		if err == nil {
			t.Errorf("%v: no error", tc.args)
			continue
		}
		if tc.usage != errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v (usage %v), want %q (usage %v)", tc.args, err, errors.Is(err, errUsage), tc.want, tc.usage)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%v: password in error: %v", tc.args, err)
		}
	}
}
