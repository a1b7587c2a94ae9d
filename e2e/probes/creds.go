package probes

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"path"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// credSource is one credential holder's current client configuration. It
// re-reads the holder's files (a kubeconfig and the files it refers to)
// at most every minRefresh and switches when their content changes, as a
// user who gets the new file or a kubelet restarted with new files would.
type credSource struct {
	name string
	load func() (*rest.Config, []byte, error)

	mu       sync.Mutex
	checked  time.Time
	sum      [32]byte
	cfg      *rest.Config
	gen      int
	lastErr  string
	onChange func(gen int, msg string)
}

const minRefresh = 500 * time.Millisecond

// current returns the configuration and its generation (incremented on
// every change). A load error keeps the previous configuration (a file
// half written); with none loaded yet it returns the error.
func (s *credSource) current() (*rest.Config, int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Since(s.checked) < minRefresh && s.cfg != nil {
		return s.cfg, s.gen, nil
	}
	s.checked = time.Now()
	cfg, content, err := s.load()
	if err != nil {
		if s.cfg == nil {
			return nil, 0, fmt.Errorf("load %s: %w", s.name, err)
		}
		if msg := err.Error(); msg != s.lastErr {
			s.lastErr = msg
			if s.onChange != nil {
				s.onChange(s.gen, fmt.Sprintf("reload failed, keeping the previous credentials: %v", err))
			}
		}
		return s.cfg, s.gen, nil
	}
	s.lastErr = ""
	sum := sha256.Sum256(content)
	if s.cfg != nil && sum == s.sum {
		return s.cfg, s.gen, nil
	}
	first := s.cfg == nil
	s.cfg, s.sum = cfg, sum
	s.gen++
	if s.onChange != nil {
		verb := "changed, reloaded"
		if first {
			verb = "loaded"
		}
		s.onChange(s.gen, fmt.Sprintf("%s: %s", verb, describeConfig(cfg)))
	}
	return s.cfg, s.gen, nil
}

// describeConfig names a configuration's server, CA certificates and
// client certificate by subject and fingerprint (never key material).
func describeConfig(cfg *rest.Config) string {
	s := "server " + cfg.Host
	if ids := certIDs(cfg.CAData); ids != "" {
		s += "; CA " + ids
	}
	if ids := certIDs(cfg.CertData); ids != "" {
		s += "; client " + ids
	}
	if cfg.BearerToken != "" {
		s += "; bearer token"
	}
	return s
}

// kubeconfigLoader loads the kubeconfig at node path p, reading every file
// it refers to through fs (node paths, symlinks resolved with node
// semantics) and inlining it.
func kubeconfigLoader(fs nodeFS, p string) func() (*rest.Config, []byte, error) {
	return func() (*rest.Config, []byte, error) {
		data, err := fs.readFile(p)
		if err != nil {
			return nil, nil, err
		}
		raw, err := clientcmd.Load(data)
		if err != nil {
			return nil, nil, err
		}
		content := append([]byte(nil), data...)
		read := func(file string) ([]byte, error) {
			if !path.IsAbs(file) {
				file = path.Join(path.Dir(p), file)
			}
			b, err := fs.readFile(file)
			content = append(content, b...)
			return b, err
		}
		ctxName := raw.CurrentContext
		kctx := raw.Contexts[ctxName]
		if kctx == nil {
			return nil, nil, fmt.Errorf("%s: current context %q not found", p, ctxName)
		}
		if cl := raw.Clusters[kctx.Cluster]; cl != nil && cl.CertificateAuthority != "" {
			if cl.CertificateAuthorityData, err = read(cl.CertificateAuthority); err != nil {
				return nil, nil, err
			}
			cl.CertificateAuthority = ""
		}
		if ai := raw.AuthInfos[kctx.AuthInfo]; ai != nil {
			if err := inlineAuth(ai, read); err != nil {
				return nil, nil, err
			}
		}
		cfg, err := clientcmd.NewNonInteractiveClientConfig(*raw, ctxName, &clientcmd.ConfigOverrides{}, nil).ClientConfig()
		if err != nil {
			return nil, nil, err
		}
		return cfg, content, nil
	}
}

func inlineAuth(ai *clientcmdapi.AuthInfo, read func(string) ([]byte, error)) error {
	var err error
	if ai.ClientCertificate != "" {
		if ai.ClientCertificateData, err = read(ai.ClientCertificate); err != nil {
			return err
		}
		ai.ClientCertificate = ""
	}
	if ai.ClientKey != "" {
		if ai.ClientKeyData, err = read(ai.ClientKey); err != nil {
			return err
		}
		ai.ClientKey = ""
	}
	if ai.TokenFile != "" {
		b, err := read(ai.TokenFile)
		if err != nil {
			return err
		}
		ai.Token, ai.TokenFile = string(b), ""
	}
	return nil
}

// clientSet caches one HTTP client per endpoint for one generation of a
// credential; a new generation drops the old clients (and their
// connections).
type clientSet struct {
	mu      sync.Mutex
	gen     int
	clients map[string]*http.Client
}

func (cs *clientSet) get(cfg *rest.Config, gen int, base string) (*http.Client, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.gen != gen || cs.clients == nil {
		for _, c := range cs.clients {
			c.CloseIdleConnections()
		}
		cs.gen, cs.clients = gen, map[string]*http.Client{}
	}
	if c := cs.clients[base]; c != nil {
		return c, nil
	}
	rc := rest.CopyConfig(cfg)
	rc.Host = base
	rc.Timeout = 0
	c, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, err
	}
	cs.clients[base] = c
	return c, nil
}

// maxBody bounds how much of a response is kept for classification.
const maxBody = 16 << 10

// doGet performs one GET and returns status and (bounded) body.
func doGet(ctx context.Context, c *http.Client, url string) (int, []byte, error) {
	return doRequest(ctx, c, http.MethodGet, url, nil)
}

// doRequest sends a request with an optional JSON body ("" method: GET).
func doRequest(ctx context.Context, c *http.Client, method, url string, body []byte) (int, []byte, error) {
	if method == "" {
		method = http.MethodGet
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return resp.StatusCode, got, err
	}
	return resp.StatusCode, got, nil
}

// insecureHealthClient is the apiserver health tracker's client: like a
// load balancer's health check it does not authenticate or verify.
func insecureHealthClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // health check only, like an LB
		DisableKeepAlives: true,
	}}
}
