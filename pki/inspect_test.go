package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestIssuedBy(t *testing.T) {
	c0, c1 := newTestCA(t, "kubernetes"), newTestCA(t, "kubernetes-2026")
	// Same subject as c0, different key: the issuer name matches, the
	// signature does not.
	twin := newTestCA(t, "kubernetes")
	leaf := c0.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "kubernetes-admin"}}, ecKey(t))
	tests := []struct {
		name     string
		cert, ca *x509.Certificate
		want     bool
	}{
		{"leaf by its CA", leaf, c0.Cert, true},
		{"leaf by another CA", leaf, c1.Cert, false},
		{"same subject, other key", leaf, twin.Cert, false},
		{"self-signed CA by itself", c0.Cert, c0.Cert, true},
		{"CA by another CA", c0.Cert, c1.Cert, false},
		{"leaf as issuer", leaf, leaf, false},
		{"nil cert", nil, c0.Cert, false},
		{"nil CA", leaf, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IssuedBy(tt.cert, tt.ca); got != tt.want {
				t.Fatalf("IssuedBy = %t, want %t", got, tt.want)
			}
		})
	}
}

func TestChainsTo(t *testing.T) {
	c0, c1 := newTestCA(t, "kubernetes"), newTestCA(t, "kubernetes-2026")
	server := c0.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"}, DNSNames: []string{"kubernetes"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ecKey(t))
	b := certPEM(c0.Cert, c1.Cert)
	tests := []struct {
		name    string
		cert    *x509.Certificate
		bundle  []byte
		usage   x509.ExtKeyUsage
		now     time.Time
		wantErr string
	}{
		{name: "old leaf, bundle", cert: server, bundle: b, usage: x509.ExtKeyUsageServerAuth, now: testNow},
		{name: "old leaf, bundle new first", cert: server, bundle: certPEM(c1.Cert, c0.Cert), usage: x509.ExtKeyUsageServerAuth, now: testNow},
		{name: "any usage", cert: server, bundle: b, usage: x509.ExtKeyUsageAny, now: testNow},
		{name: "CA itself", cert: c1.Cert, bundle: b, usage: x509.ExtKeyUsageAny, now: testNow},
		{name: "old leaf, new CA only", cert: server, bundle: certPEM(c1.Cert), usage: x509.ExtKeyUsageServerAuth, now: testNow,
			wantErr: "verify " + Describe(server) + " against bundle of 1: x509: certificate signed by unknown authority"},
		{name: "wrong usage", cert: server, bundle: b, usage: x509.ExtKeyUsageClientAuth, now: testNow,
			wantErr: "verify " + Describe(server) + " against bundle of 2: x509: certificate specifies an incompatible key usage"},
		{name: "expired at now", cert: server, bundle: b, usage: x509.ExtKeyUsageServerAuth, now: testNow.AddDate(2, 0, 0),
			wantErr: "verify " + Describe(server) + " against bundle of 2: x509: certificate has expired or is not yet valid"},
		{name: "garbage bundle", cert: server, bundle: []byte("x"), usage: x509.ExtKeyUsageAny, now: testNow,
			wantErr: "verify " + Describe(server) + ": parse bundle: unexpected non-PEM data"},
		{name: "nil cert", cert: nil, bundle: b, wantErr: "verify chain: certificate is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ChainsTo(tt.cert, tt.bundle, tt.usage, tt.now)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v\nwant  %s", err, tt.wantErr)
			}
		})
	}
}

func TestExpiresBefore(t *testing.T) {
	c := newTestCA(t, "c").Issue(t, &x509.Certificate{NotAfter: testNow.Add(time.Hour)}, ecKey(t))
	tests := []struct {
		name string
		cert *x509.Certificate
		t    time.Time
		want bool
	}{
		{"well before", c, testNow, false},
		{"at NotAfter", c, c.NotAfter, false},
		{"after NotAfter", c, c.NotAfter.Add(time.Second), true},
		{"nil", nil, testNow, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ExpiresBefore(tt.cert, tt.t); got != tt.want {
				t.Fatalf("ExpiresBefore = %t, want %t", got, tt.want)
			}
		})
	}
}

func TestScanIssuedBy(t *testing.T) {
	c0, c1, f0 := newTestCA(t, "kubernetes"), newTestCA(t, "kubernetes-2026"), newTestCA(t, "front-proxy-ca")
	adminKey := ecKey(t)
	admin := c0.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"kubeadm:cluster-admins"}}}, adminKey)
	kubeletKey := ecKey(t)
	kubeletOld := c0.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "system:node:w1", Organization: []string{"system:nodes"}}}, kubeletKey)
	kubeletNew := c1.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "system:node:w2", Organization: []string{"system:nodes"}}}, ecKey(t))
	proxy := f0.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "front-proxy-client"}}, ecKey(t))
	sec1, _ := EncodeKeyPEM(kubeletKey)
	finding := func(where string, c *x509.Certificate) Finding {
		return Finding{Where: where, Subject: c.Subject.String(), Fingerprint: Fingerprint(c), Issuer: c.Issuer.String(), NotAfter: c.NotAfter}
	}
	sources := []Source{
		{Where: "node cp1:/etc/kubernetes/pki/ca.crt", PEM: certPEM(c0.Cert, c1.Cert)},
		{Where: "node cp1:/etc/kubernetes/admin.conf", PEM: cat(certPEM(admin), keyPEM(t, adminKey))},
		{Where: "node w1:/var/lib/kubelet/pki/kubelet-client-current.pem", PEM: cat(certPEM(kubeletOld), sec1)},
		{Where: "node w2:/var/lib/kubelet/pki/kubelet-client-current.pem", PEM: cat(certPEM(kubeletNew))},
		{Where: "node cp1:/etc/kubernetes/pki/front-proxy-client.crt", PEM: certPEM(proxy)},
		{Where: "node cp1:/etc/kubernetes/pki/sa.pub", PEM: []byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")},
		{Where: "kubeconfig without client cert", PEM: nil},
	}
	tests := []struct {
		name    string
		ca      *x509.Certificate
		sources []Source
		want    []Finding
		wantErr string
	}{
		{name: "old cluster CA", ca: c0.Cert, sources: sources, want: []Finding{
			finding("node cp1:/etc/kubernetes/admin.conf", admin),
			finding("node w1:/var/lib/kubelet/pki/kubelet-client-current.pem", kubeletOld),
		}},
		{name: "new cluster CA", ca: c1.Cert, sources: sources, want: []Finding{
			finding("node w2:/var/lib/kubelet/pki/kubelet-client-current.pem", kubeletNew),
		}},
		{name: "front-proxy CA", ca: f0.Cert, sources: sources, want: []Finding{
			finding("node cp1:/etc/kubernetes/pki/front-proxy-client.crt", proxy),
		}},
		{name: "nothing", ca: c0.Cert, sources: nil, want: nil},
		{name: "unparsable source", ca: c0.Cert, sources: append(sources[:1:1], Source{Where: "ConfigMap kube-system/x", PEM: []byte("ca.crt: |\n")}),
			wantErr: "scan ConfigMap kube-system/x: unexpected non-PEM data at byte 0"},
		{name: "unexpected block", ca: c0.Cert, sources: []Source{{Where: "Secret a/b", PEM: []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")}},
			wantErr: `scan Secret a/b: PEM block 1 has unexpected type "X509 CRL"`},
		{name: "nil CA", ca: nil, sources: sources, wantErr: "scan: CA certificate is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ScanIssuedBy(tt.ca, tt.sources)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v\nwant  %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
