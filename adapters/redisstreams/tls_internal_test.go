package redisstreams

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/queuekit/queuekit/internal/testenv"
)

// The reader's connection negotiates TLS as the client does (through the
// client's Dialer) on a server of the test's own that serves TLS only on a
// port of its own; without the client's TLS configuration the same port
// refuses the reader.
func TestReaderConnTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := testenv.RedisServer(t)
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "qk-test"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer admin.Close()
	if err := admin.ConfigSet(ctx, "tls-cert-file", certFile).Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigSet(ctx, "tls-key-file", keyFile).Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigSet(ctx, "tls-auth-clients", "no").Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigSet(ctx, "tls-port", strconv.Itoa(port)).Err(); err != nil {
		t.Skipf("this redis-server cannot serve TLS: %v", err)
	}
	tlsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(certPEM)
	c := redis.NewClient(&redis.Options{Addr: tlsAddr, TLSConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}})
	defer c.Close()
	st, id := streamWithOneMessage(t, c, "qkt-tls-")
	o, ok := ownConn(c)
	if !ok {
		t.Fatal("ownConn = false")
	}
	rc, err := dialReader(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, ok := rc.nc.(*tls.Conn); !ok {
		t.Errorf("the reader's connection is a %T; want a *tls.Conn", rc.nc)
	}
	n, ids, err := readGroupG(t, rc, st)
	if err != nil || n != 1 || ids[0] != id {
		t.Errorf("read over TLS: %d, %v, %q; want %s", n, err, ids, id)
	}

	plain := redis.NewClient(&redis.Options{Addr: tlsAddr, DialTimeout: 2 * time.Second})
	defer plain.Close()
	if rc, err := dialReader(ctx, plain.Options()); err == nil {
		_ = rc.Close()
		t.Error("a reader without TLS got through the TLS port")
	}
}
