package orchestrator

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// The worker secret proves to the dispatcher that a worker belongs to the
// cluster. It is created once, beside the config at mode 0600 (or taken
// from [dispatcher] secret_env), pushed by `nodes deploy` in each node's
// config, and never written to argv, logs or errors.

// Secret returns the cluster's worker secret: [worker] secret (in a node's
// config), the secret_env variable, or the secret file.
func (c *Config) Secret(getenv func(string) string) ([]byte, error) {
	if c.Worker.Secret != "" {
		return []byte(c.Worker.Secret), nil
	}
	if env := c.Dispatcher.SecretEnv; env != "" {
		if v := getenv(env); v != "" {
			return []byte(v), nil
		}
	}
	path := c.Dispatcher.SecretFile
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &ConfigError{File: c.Path, Key: "dispatcher.secret_file",
			Msg: fmt.Sprintf("no worker secret: %s does not exist; `pampactl dispatcher run`, `up` or `nodes deploy` create it, or export %s", path, c.Dispatcher.SecretEnv)}
	}
	if err != nil {
		return nil, fmt.Errorf("read worker secret: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, &ConfigError{File: c.Path, Key: "dispatcher.secret_file",
			Msg: fmt.Sprintf("%s is readable by others (mode %04o); run: chmod 600 %s", path, fi.Mode().Perm(), path)}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read worker secret: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < 16 {
		return nil, &ConfigError{File: c.Path, Key: "dispatcher.secret_file",
			Msg: fmt.Sprintf("%s holds fewer than 16 characters; remove it and a new secret is made", path)}
	}
	return b, nil
}

// EnsureSecret returns the worker secret, creating the secret file first
// (32 random bytes, mode 0600) when there is none. created says it did.
func (c *Config) EnsureSecret(getenv func(string) string) (secret []byte, created bool, err error) {
	s, err := c.Secret(getenv)
	var ce *ConfigError
	if err == nil || !errors.As(err, &ce) || c.Worker.Secret != "" {
		return s, false, err
	}
	if _, statErr := os.Stat(c.Dispatcher.SecretFile); !errors.Is(statErr, fs.ErrNotExist) {
		return nil, false, err // there, but unusable: say why rather than replace it
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, false, err
	}
	s = []byte(base64.RawURLEncoding.EncodeToString(raw))
	if err := os.MkdirAll(filepath.Dir(c.Dispatcher.SecretFile), 0o755); err != nil {
		return nil, false, fmt.Errorf("create worker secret: %w", err)
	}
	// Written aside, then linked in place: of two commands creating it at
	// once, one wins and both use its secret, never a half-written file.
	tmp, err := os.CreateTemp(filepath.Dir(c.Dispatcher.SecretFile), ".pampa-secret-*")
	if err != nil {
		return nil, false, fmt.Errorf("create worker secret: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(s, '\n')); err != nil {
		tmp.Close()
		return nil, false, fmt.Errorf("create worker secret: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, false, fmt.Errorf("create worker secret: %w", err)
	}
	if err := os.Link(tmp.Name(), c.Dispatcher.SecretFile); errors.Is(err, fs.ErrExist) {
		s, err := c.Secret(getenv)
		return s, false, err
	} else if err != nil {
		return nil, false, fmt.Errorf("create worker secret: %w", err)
	}
	return s, true, nil
}
