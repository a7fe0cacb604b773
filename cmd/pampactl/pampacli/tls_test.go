package pampacli_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, PEM, into dir.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pampa dispatcher"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "dispatcher.crt"), filepath.Join(dir, "dispatcher.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// Workers that dial the dispatcher directly do so over TLS: with the CA in
// ca_file they work; a worker that does not trust the certificate never
// gets a row.
func TestWorkersOverTLS(t *testing.T) {
	t.Parallel()
	r := newRig(t, 200, 2, 1, "echo $PAMPA_TASK_ID >> OK")
	cert, _ := selfSigned(t, r.dir)
	text, err := os.ReadFile(r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	withTLS := strings.NewReplacer(
		"[dispatcher]\n", "[dispatcher]\ntls_cert_file = \"dispatcher.crt\"\ntls_key_file = \"dispatcher.key\"\n",
		"[worker]\n", "[worker]\nca_file = \""+cert+"\"\n").Replace(string(text))
	if err := os.WriteFile(r.cfg, []byte(withTLS), 0o600); err != nil {
		t.Fatal(err)
	}
	r.dispatcher(0)
	// A worker configured without the CA: its own config (the later
	// --config wins), same cluster.
	untrusting := filepath.Join(r.dir, "untrusting.toml")
	if err := os.WriteFile(untrusting, []byte(strings.Replace(withTLS, "ca_file = \""+cert+"\"\n", "", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	r.start("worker.untrusting", "--config", untrusting, "worker", "run", "--no-log-file", "--id", "local.2")
	r.worker("local.1")
	r.check()
	if n := r.count(`select count(*) from tasks where work_reservation_id = 'local.2'`); n != 0 {
		t.Errorf("a worker that does not trust the dispatcher's certificate got %d rows", n)
	}
	r.waitLog("worker.untrusting", "certificate", 10*time.Second)
}
