package pki

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// sameLeaf compares the fields Reissue promises to copy.
func sameLeaf(t *testing.T, got, old *x509.Certificate) {
	t.Helper()
	if !bytes.Equal(got.RawSubject, old.RawSubject) {
		t.Errorf("subject %s, want %s", got.Subject, old.Subject)
	}
	if got.Subject.String() != old.Subject.String() ||
		!reflect.DeepEqual(got.Subject.Organization, old.Subject.Organization) ||
		!reflect.DeepEqual(got.Subject.OrganizationalUnit, old.Subject.OrganizationalUnit) {
		t.Errorf("subject fields %+v, want %+v", got.Subject, old.Subject)
	}
	if !reflect.DeepEqual(got.DNSNames, old.DNSNames) {
		t.Errorf("DNS SANs %v, want %v", got.DNSNames, old.DNSNames)
	}
	if len(got.IPAddresses) != len(old.IPAddresses) {
		t.Errorf("IP SANs %v, want %v", got.IPAddresses, old.IPAddresses)
	} else {
		for i := range got.IPAddresses {
			if !got.IPAddresses[i].Equal(old.IPAddresses[i]) {
				t.Errorf("IP SAN %d %s, want %s", i, got.IPAddresses[i], old.IPAddresses[i])
			}
		}
	}
	if len(got.URIs) != len(old.URIs) {
		t.Errorf("URI SANs %v, want %v", got.URIs, old.URIs)
	} else {
		for i := range got.URIs {
			if got.URIs[i].String() != old.URIs[i].String() {
				t.Errorf("URI SAN %d %s, want %s", i, got.URIs[i], old.URIs[i])
			}
		}
	}
	if !reflect.DeepEqual(got.EmailAddresses, old.EmailAddresses) {
		t.Errorf("email SANs %v, want %v", got.EmailAddresses, old.EmailAddresses)
	}
	if got.KeyUsage != old.KeyUsage {
		t.Errorf("key usage %b, want %b", got.KeyUsage, old.KeyUsage)
	}
	if !reflect.DeepEqual(got.ExtKeyUsage, old.ExtKeyUsage) {
		t.Errorf("ext key usage %v, want %v", got.ExtKeyUsage, old.ExtKeyUsage)
	}
	if got.PublicKeyAlgorithm != old.PublicKeyAlgorithm || KeyShape(got.PublicKey) != KeyShape(old.PublicKey) {
		t.Errorf("key %s, want %s", KeyShape(got.PublicKey), KeyShape(old.PublicKey))
	}
	if got.IsCA {
		t.Error("re-issued leaf is a CA")
	}
}

func TestReissue(t *testing.T) {
	c0, f0 := newTestCA(t, "kubernetes"), newTestCA(t, "front-proxy-ca")
	c1, err := NewCA(CAOptions{CommonName: "kubernetes-2026", Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	f1, err := NewCA(CAOptions{CommonName: "front-proxy-ca-2026", Algorithm: RSA2048, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	newFor := func(old *testCA) *CA {
		if old == f0 {
			return f1
		}
		return c1
	}
	for _, fx := range kubeadmLeaves(t, c0, f0) {
		for _, keep := range []bool{false, true} {
			name := fx.name + "/new key"
			if keep {
				name = fx.name + "/keep key"
			}
			t.Run(name, func(t *testing.T) {
				ca := newFor(fx.ca)
				opts := ReissueOptions{Now: testNow, KeepKey: keep}
				if keep {
					opts.OldKey = fx.key
				}
				is, err := Reissue(fx.cert, ca, opts)
				if err != nil {
					t.Fatal(err)
				}
				got := is.Cert
				sameLeaf(t, got, fx.cert)

				// Verifies against the new CA, not against the old one.
				verify := func(root *x509.Certificate) error {
					pool := x509.NewCertPool()
					pool.AddCert(root)
					_, err := got.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: testNow, KeyUsages: []x509.ExtKeyUsage{fx.usage}})
					return err
				}
				if err := verify(ca.Cert); err != nil {
					t.Errorf("does not verify against the new CA: %v", err)
				}
				if err := verify(fx.ca.Cert); err == nil {
					t.Error("verifies against the old CA")
				}
				if !IssuedBy(got, ca.Cert) || IssuedBy(got, fx.ca.Cert) {
					t.Error("IssuedBy disagrees with Verify")
				}

				if !bytes.Equal(got.AuthorityKeyId, ca.Cert.SubjectKeyId) {
					t.Errorf("AuthorityKeyId %x, want %x", got.AuthorityKeyId, ca.Cert.SubjectKeyId)
				}
				if got.SerialNumber.Cmp(fx.cert.SerialNumber) == 0 || got.SerialNumber.BitLen() < 64 {
					t.Errorf("serial %s", got.SerialNumber)
				}
				if want := testNow.Add(-Backdate); !got.NotBefore.Equal(want) {
					t.Errorf("NotBefore %s, want %s", got.NotBefore, want)
				}
				if want := testNow.Add(DefaultLeafValidity); !got.NotAfter.Equal(want) {
					t.Errorf("NotAfter %s, want %s", got.NotAfter, want)
				}
				if !KeyMatches(got, is.Key) {
					t.Error("Issued.Key does not match Issued.Cert")
				}
				if samePub := KeyMatches(got, fx.key); samePub != keep {
					t.Errorf("new certificate uses the old key: %t, want %t", samePub, keep)
				}
				if c, err := ParseCertsPEM(is.CertPEM); err != nil || len(c) != 1 || !c[0].Equal(got) {
					t.Errorf("CertPEM does not hold the certificate: %v", err)
				}
				if k, err := ParseKeyPEM(is.KeyPEM); err != nil || !KeyMatches(got, k) {
					t.Errorf("KeyPEM does not hold the key: %v", err)
				}
			})
		}
	}
}

func TestReissueValidityAndErrors(t *testing.T) {
	c0 := newTestCA(t, "kubernetes")
	leafKey := ecKey(t)
	leaf := c0.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, leafKey)
	short := pkiCA(t, newTestCAWith(t, "short-lived", ecKey(t), func(c *x509.Certificate) { c.NotAfter = testNow.Add(48 * time.Hour) }))
	expired := pkiCA(t, newTestCAWith(t, "expired", ecKey(t), func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter = testNow.AddDate(-1, 0, 0), testNow.Add(-time.Minute)
	}))
	notCA := pkiCA(t, newTestCAWith(t, "not a CA", ecKey(t), func(c *x509.Certificate) { c.IsCA = false }))
	c1 := pkiCA(t, newTestCA(t, "kubernetes-2026"))
	mismatched := &CA{Cert: c1.Cert, Key: ecKey(t)}
	d := Describe(leaf)

	t.Run("validity option", func(t *testing.T) {
		is, err := Reissue(leaf, c1, ReissueOptions{Now: testNow, Validity: 90 * 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if want := testNow.Add(90 * 24 * time.Hour); !is.Cert.NotAfter.Equal(want) {
			t.Fatalf("NotAfter %s, want %s", is.Cert.NotAfter, want)
		}
	})
	t.Run("capped at CA NotAfter", func(t *testing.T) {
		is, err := Reissue(leaf, short, ReissueOptions{Now: testNow})
		if err != nil {
			t.Fatal(err)
		}
		if !is.Cert.NotAfter.Equal(short.Cert.NotAfter) {
			t.Fatalf("NotAfter %s, want CA's %s", is.Cert.NotAfter, short.Cert.NotAfter)
		}
	})
	t.Run("from a template", func(t *testing.T) {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: "rotate", Organization: []string{"system:masters"}},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		is, err := Reissue(tmpl, c1, ReissueOptions{Now: testNow})
		if err != nil {
			t.Fatal(err)
		}
		if is.Cert.Subject.String() != "CN=rotate,O=system:masters" || KeyShape(is.Cert.PublicKey) != "ECDSA-P-256" {
			t.Fatalf("got %s with %s", is.Cert.Subject, KeyShape(is.Cert.PublicKey))
		}
		if err := ChainsTo(is.Cert, c1.CertPEM, x509.ExtKeyUsageClientAuth, testNow); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("zero Now uses the clock", func(t *testing.T) {
		is, err := Reissue(leaf, c1, ReissueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if since := time.Since(is.Cert.NotBefore.Add(Backdate)); since < -time.Second || since > time.Minute {
			t.Fatalf("NotBefore %s is not ~now-5m", is.Cert.NotBefore)
		}
	})

	errTests := []struct {
		name    string
		old     *x509.Certificate
		ca      *CA
		opts    ReissueOptions
		wantErr string
		is      error
	}{
		{name: "nil old", old: nil, ca: c1, wantErr: "reissue: old certificate is nil"},
		{name: "nil CA", old: leaf, ca: nil, wantErr: "reissue " + d + ": CA certificate or key is missing"},
		{name: "CA without key", old: leaf, ca: &CA{Cert: c1.Cert}, wantErr: "reissue " + d + ": CA certificate or key is missing"},
		{name: "CA key mismatch", old: leaf, ca: mismatched, wantErr: "reissue " + d + ": CA " + Describe(c1.Cert) + ": private key does not match the certificate", is: ErrKeyMismatch},
		{name: "CA is not a CA", old: leaf, ca: notCA, wantErr: "reissue " + d + ": CA " + Describe(notCA.Cert) + ": certificate is not a CA (basic constraints)", is: ErrNotCA},
		{name: "CA expired", old: leaf, ca: expired, opts: ReissueOptions{Now: testNow}, wantErr: "reissue " + d + ": CA " + Describe(expired.Cert) + ": certificate has expired (not after 2026-03-01T11:59:00Z)", is: ErrExpired},
		{name: "old is a CA", old: c0.Cert, ca: c1, wantErr: "reissue " + Describe(c0.Cert) + ": certificate is a CA; create CAs with NewCA"},
		{name: "keep key without key", old: leaf, ca: c1, opts: ReissueOptions{KeepKey: true}, wantErr: "reissue " + d + ": KeepKey set without OldKey"},
		{name: "keep key, wrong key", old: leaf, ca: c1, opts: ReissueOptions{KeepKey: true, OldKey: ecKey(t)}, wantErr: "reissue " + d + ": old key: private key does not match the certificate", is: ErrKeyMismatch},
		{name: "negative validity", old: leaf, ca: c1, opts: ReissueOptions{Validity: -time.Hour}, wantErr: "reissue " + d + ": negative validity -1h0m0s"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Reissue(tt.old, tt.ca, tt.opts)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("err = %v\nwant  %s", err, tt.wantErr)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("errors.Is(%v, %v) = false", err, tt.is)
			}
		})
	}
}

func TestNewKubeletClientCert(t *testing.T) {
	c1 := pkiCA(t, newTestCA(t, "kubernetes-2026"))
	rsaK := rsaKey(t, 2048)
	tests := []struct {
		name    string
		node    string
		ca      *CA
		opts    ReissueOptions
		shape   string
		usage   x509.KeyUsage
		wantErr string
	}{
		{name: "new P-256 key", node: "worker-1", ca: c1, opts: ReissueOptions{Now: testNow}, shape: "ECDSA-P-256", usage: x509.KeyUsageDigitalSignature},
		{name: "keep RSA key", node: "cp1.example.test", ca: c1, opts: ReissueOptions{Now: testNow, KeepKey: true, OldKey: rsaK}, shape: "RSA-2048", usage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment},
		{name: "empty node", node: "", ca: c1, wantErr: "kubelet client certificate: node name is empty"},
		{name: "bad node", node: "a b", ca: c1, wantErr: `kubelet client certificate: invalid node name "a b"`},
		{name: "nil CA", node: "n", ca: nil, wantErr: "kubelet client certificate for node n: CA certificate or key is missing"},
		{name: "keep without key", node: "n", ca: c1, opts: ReissueOptions{KeepKey: true}, wantErr: "kubelet client certificate for node n: KeepKey set without OldKey"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			is, err := NewKubeletClientCert(tt.node, tt.ca, tt.opts)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := is.Cert
			if c.Subject.CommonName != "system:node:"+tt.node || !reflect.DeepEqual(c.Subject.Organization, []string{"system:nodes"}) {
				t.Errorf("subject %s", c.Subject)
			}
			if !reflect.DeepEqual(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || c.KeyUsage != tt.usage {
				t.Errorf("usages %b %v", c.KeyUsage, c.ExtKeyUsage)
			}
			if got := KeyShape(c.PublicKey); got != tt.shape {
				t.Errorf("key %s, want %s", got, tt.shape)
			}
			if err := ChainsTo(c, c1.CertPEM, x509.ExtKeyUsageClientAuth, testNow); err != nil {
				t.Error(err)
			}
			if len(c.DNSNames)+len(c.IPAddresses)+len(c.URIs)+len(c.EmailAddresses) != 0 {
				t.Error("kubelet client certificate has SANs")
			}
		})
	}
}

func TestKubeletPEM(t *testing.T) {
	c1 := newTestCA(t, "kubernetes-2026")
	is, err := NewKubeletClientCert("worker-1", pkiCA(t, c1), ReissueOptions{Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	data, err := KubeletPEM(is)
	if err != nil {
		t.Fatal(err)
	}
	// Layout: the certificate, then the key.
	b1, rest := pem.Decode(data)
	b2, rest := pem.Decode(rest)
	if b1 == nil || b1.Type != "CERTIFICATE" || b2 == nil || b2.Type != "EC PRIVATE KEY" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("layout %v %v", b1, b2)
	}
	other := ecKey(t)
	otherPEM, _ := EncodeKeyPEM(other)
	chain := cat(is.CertPEM, certPEM(c1.Cert), is.KeyPEM)

	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{name: "round trip", in: data},
		{name: "key first", in: cat(is.KeyPEM, is.CertPEM)},
		{name: "with chain", in: chain},
		{name: "PKCS#8 key", in: cat(is.CertPEM, keyPEM(t, is.Key))},
		{name: "no key", in: is.CertPEM, wantErr: "parse kubelet PEM " + Describe(is.Cert) + ": no private key found"},
		{name: "no cert", in: is.KeyPEM, wantErr: "parse kubelet PEM: no certificates found"},
		{name: "two keys", in: cat(data, otherPEM), wantErr: "parse kubelet PEM: more than one private key"},
		{name: "wrong key", in: cat(is.CertPEM, otherPEM), wantErr: "parse kubelet PEM " + Describe(is.Cert) + ": private key does not match the certificate"},
		{name: "garbage", in: cat(data, []byte("x")), wantErr: "parse kubelet PEM: unexpected non-PEM data"},
		{name: "other block", in: cat(data, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: []byte{1}})), wantErr: `parse kubelet PEM: unexpected PEM block 3 of type "X509 CRL"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, key, err := ParseKubeletPEM(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !cert.Equal(is.Cert) || !KeyMatches(cert, key) {
				t.Fatal("parsed certificate/key differ")
			}
		})
	}

	errTests := []struct {
		name    string
		is      *Issued
		wantErr string
	}{
		{"nil", nil, "kubelet PEM: certificate or key is missing"},
		{"no key", &Issued{Cert: is.Cert}, "kubelet PEM: certificate or key is missing"},
		{"wrong key", &Issued{Cert: is.Cert, Key: other}, "kubelet PEM " + Describe(is.Cert) + ": private key does not match the certificate"},
	}
	for _, tt := range errTests {
		t.Run("KubeletPEM "+tt.name, func(t *testing.T) {
			if _, err := KubeletPEM(tt.is); err == nil || err.Error() != tt.wantErr {
				t.Fatalf("err = %v, want %s", err, tt.wantErr)
			}
		})
	}
	t.Run("KubeletPEM without CertPEM", func(t *testing.T) {
		got, err := KubeletPEM(&Issued{Cert: is.Cert, Key: is.Key})
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("err %v, equal %t", err, bytes.Equal(got, data))
		}
	})
}
