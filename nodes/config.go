package nodes

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"
)

// Config is how to reach one node. Zero values take the documented
// defaults (see WithDefaults).
type Config struct {
	// Name is the node's inventory name, used in every error and log.
	Name string
	// Address is a host name or IP address, without port.
	Address string
	// Port defaults to 22.
	Port int
	// User defaults to root.
	User string

	// IdentityFile is an unencrypted private key file (OpenSSH or PEM). A
	// passphrase-protected key must be loaded into ssh-agent instead.
	IdentityFile string
	// UseAgent offers the keys of the ssh-agent at AgentSocket (default
	// $SSH_AUTH_SOCK). Agent keys are tried before IdentityFile.
	UseAgent    bool
	AgentSocket string
	// Become runs every command through `sudo -n` (non-interactive: sudo
	// that wants a password is an ErrBecome error). Ignored for root.
	Become bool

	// KnownHostsFile is verified against; default ~/.ssh/known_hosts.
	KnownHostsFile string
	// InsecureIgnoreHostKey disables host key verification. Only for
	// throw-away test clusters; the CLI exposes it under a name that says so.
	InsecureIgnoreHostKey bool

	// JumpHost, when set, is an SSH server the node is reached through
	// (OpenSSH's ProxyJump): rotate logs in to it, then opens a
	// direct-tcpip channel to Address:Port. Both hosts' keys are verified
	// against KnownHostsFile.
	JumpHost *JumpHost

	// jumpFor, on the Config of a jump host's own connection, is the node
	// it leads to (errors name both).
	jumpFor string

	// DialTimeout bounds one TCP connect plus SSH handshake (default 10s).
	DialTimeout time.Duration
	// CommandTimeout bounds every command (default 2m); the remote command
	// is killed when it passes. Negative disables the bound (ctx still
	// applies).
	CommandTimeout time.Duration
	// KeepAlive is the interval of keepalive@openssh.com requests (default
	// 15s); a connection that does not answer within two intervals is
	// closed, and Pool re-dials it. Negative disables keepalives.
	KeepAlive time.Duration
	// Retries is how many times a transient dial error (refused, reset,
	// timeout, unreachable) is retried with exponential backoff starting at
	// RetryBackoff (default 3 and 500ms). Negative means no retry.
	// Authentication and host key errors are never retried.
	Retries      int
	RetryBackoff time.Duration
}

// JumpHost is an SSH bastion in front of a node. Zero values take the
// node's: User, IdentityFile (and its agent use); Port defaults to 22.
type JumpHost struct {
	Address      string
	Port         int
	User         string
	IdentityFile string
}

// Defaults for Config's zero values.
const (
	DefaultPort           = 22
	DefaultUser           = "root"
	DefaultDialTimeout    = 10 * time.Second
	DefaultCommandTimeout = 2 * time.Minute
	DefaultKeepAlive      = 15 * time.Second
	DefaultRetries        = 3
	DefaultRetryBackoff   = 500 * time.Millisecond
)

// WithDefaults returns c with zero values replaced by the defaults.
func (c Config) WithDefaults() Config {
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.User == "" {
		c.User = DefaultUser
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.CommandTimeout == 0 {
		c.CommandTimeout = DefaultCommandTimeout
	}
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.Retries == 0 {
		c.Retries = DefaultRetries
	}
	if c.RetryBackoff == 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	if c.UseAgent && c.AgentSocket == "" {
		c.AgentSocket = os.Getenv("SSH_AUTH_SOCK")
	}
	if c.JumpHost != nil {
		j := *c.JumpHost
		if j.Port == 0 {
			j.Port = DefaultPort
		}
		if j.User == "" {
			j.User = c.User
		}
		if j.IdentityFile == "" {
			j.IdentityFile = c.IdentityFile
		}
		c.JumpHost = &j
	}
	if c.KnownHostsFile == "" && !c.InsecureIgnoreHostKey {
		if home, err := os.UserHomeDir(); err == nil {
			c.KnownHostsFile = filepath.Join(home, ".ssh", "known_hosts")
		}
	}
	return c
}

// Validate reports configuration errors (after WithDefaults).
func (c Config) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	if c.Address == "" {
		errs = append(errs, errors.New("address is empty"))
	}
	if strings.ContainsAny(c.Address, " /") {
		errs = append(errs, fmt.Errorf("address %q is not a host name or IP address", c.Address))
	}
	if c.Port < 1 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d out of range", c.Port))
	}
	if j := c.JumpHost; j != nil {
		if j.Address == "" || strings.ContainsAny(j.Address, " /") {
			errs = append(errs, fmt.Errorf("jump host address %q is not a host name or IP address", j.Address))
		}
		if j.Port < 1 || j.Port > 65535 {
			errs = append(errs, fmt.Errorf("jump host port %d out of range", j.Port))
		}
	}
	if c.IdentityFile == "" && !c.UseAgent {
		errs = append(errs, errors.New("no authentication: set an identity file or use the ssh agent"))
	}
	if c.UseAgent && c.AgentSocket == "" {
		errs = append(errs, errors.New("use agent is set but SSH_AUTH_SOCK is empty"))
	}
	if !c.InsecureIgnoreHostKey && c.KnownHostsFile == "" {
		errs = append(errs, errors.New("no known_hosts file to verify the host key against"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node %s: invalid ssh config: %w", c.Name, err)
	}
	return nil
}

// jump is the Config of the connection to the node's jump host (nil:
// none), with the node's verification and timeouts (defaults applied).
func (c Config) jump() *Config {
	if c.JumpHost == nil {
		return nil
	}
	j := c
	j.Address, j.Port, j.User, j.IdentityFile = c.JumpHost.Address, c.JumpHost.Port, c.JumpHost.User, c.JumpHost.IdentityFile
	j.JumpHost, j.jumpFor = nil, c.Name
	return &j
}

// label names the host in errors: "node cp1", or "jump host
// bastion:22 of node cp1".
func (c Config) label() string {
	if c.jumpFor != "" {
		return fmt.Sprintf("jump host %s of node %s", c.addr(), c.jumpFor)
	}
	return "node " + c.Name
}

// become reports whether commands go through sudo.
func (c Config) become() bool { return c.Become && c.User != "root" }

// CheckKnownHosts loads path as Dial will: a known_hosts file that cannot
// be read or has a line that does not parse is an error here, before any
// node is dialed.
func CheckKnownHosts(path string) error {
	_, err := knownhosts.New(path)
	return err
}

// CheckAgentSocket reports whether $SSH_AUTH_SOCK names a Unix socket, as
// UseAgent needs (without AgentSocket set).
func CheckAgentSocket() error {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		return errors.New("$SSH_AUTH_SOCK is not set (start ssh-agent and add the key, or set identityFile)")
	}
	fi, err := os.Stat(sock)
	if err != nil {
		return fmt.Errorf("$SSH_AUTH_SOCK %s: %w", sock, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("$SSH_AUTH_SOCK %s is not a socket", sock)
	}
	return nil
}
