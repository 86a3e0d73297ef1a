package nats

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/queuekit/queuekit/broker"
	"github.com/queuekit/queuekit/internal/testenv"
	"github.com/queuekit/queuekit/semantics"
)

// TestTLSAndCredentialsByURL runs a nats-server of the test's own that
// requires TLS (a certificate from a CA made here) and knows two users —
// one by NKey, one by password — and opens it by URL only: tls_ca with
// nkey=<seed file>, and tls_ca with user:password. A wrong password, a
// missing CA and an unknown NKey are refused, and no error shows a secret.
func TestTLSAndCredentialsByURL(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeTLSFiles(t, dir)
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	otherFile := filepath.Join(dir, "other.nk")
	if err := os.WriteFile(otherFile, otherSeed, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(conf, []byte(`authorization { users = [ {nkey: "`+pub+`"}, {user: "app", password: "s3cret"} ] }`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := testenv.NATSServerWith(t, "tls", "-c", conf, "--tls", "--tlscert", cert, "--tlskey", key)
	u, _ := url.Parse(srv.URL)
	base := "nats://" + u.Host
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, good := range []string{
		base + "?tls_ca=" + url.QueryEscape(ca) + "&nkey=" + url.QueryEscape(seedFile),
		"nats://app:s3cret@" + u.Host + "?tls_ca=" + url.QueryEscape(ca),
	} {
		nb, err := Open(ctx, good)
		if err != nil {
			t.Errorf("Open(%s): %v", good, err)
			continue
		}
		b := broker.New(nb)
		topic := uniq("qkauth")
		s, err := b.NewSubscriber(ctx, broker.SubscriberOptions{Topic: topic, Group: "g"})
		if err != nil {
			t.Fatal(err)
		}
		p, _ := b.NewPublisher(ctx)
		m := &broker.Message{Payload: []byte("over TLS")}
		if err := p.Publish(ctx, topic, m); err != nil {
			t.Fatal(err)
		}
		d, err := s.Receive(ctx)
		if err != nil || d.Message().ID != m.ID {
			t.Errorf("roundtrip over TLS: %v", err)
		}
		if !nb.Conn().TLSRequired() {
			t.Error("the connection does not use TLS")
		}
		_ = b.Close(ctx)
	}

	for _, bad := range []string{
		"nats://app:wrong-s3cret@" + u.Host + "?tls_ca=" + url.QueryEscape(ca),
		base + "?tls_ca=" + url.QueryEscape(ca) + "&nkey=" + url.QueryEscape(otherFile),
		"nats://app:s3cret@" + u.Host + "?connect_timeout=3s", // no CA: the server's certificate is not trusted
	} {
		_, err := Open(ctx, bad)
		if err == nil {
			t.Errorf("Open(%s) succeeded", bad)
			continue
		}
		if k := broker.KindOf(err); k != semantics.Permanent {
			t.Errorf("Open(%s) = %v (kind %v), want a permanent error", bad, err, k)
		}
		if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), string(seed)) {
			t.Errorf("Open(%s) error shows a secret: %v", bad, err)
		}
	}
}

// writeTLSFiles makes a CA and a certificate for 127.0.0.1 signed by it,
// and returns the CA, certificate and key file names.
func writeTLSFiles(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "queuekit test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caTmpl, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	write := func(name, typ string, der []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server-key.pem", "EC PRIVATE KEY", keyDER)
}
