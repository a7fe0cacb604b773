// Package pgserver runs a private PostgreSQL server from the machine's
// installed binaries: initdb into a temporary directory, postgres on a free
// port of 127.0.0.1 (and a socket in that directory), tuned for speed rather
// than durability. Tests (internal/pgtest), the demo and the benchmarks use
// it. PostgreSQL refuses to run as root: as root, the server runs as the
// unprivileged user "postgres" that Debian's package creates.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Settings of the throwaway server, kept together. initArgs follow
// "initdb -D dir"; serverSettings become "postgres -c" options.
var (
	// --no-locale keeps initdb independent of the host's locales.
	initArgs       = []string{"-A", "trust", "-U", superuser, "--no-sync", "-E", "UTF8", "--no-locale"}
	serverSettings = []string{
		"listen_addresses=127.0.0.1",
		"fsync=off",
		"synchronous_commit=off",
		"full_page_writes=off",
		"max_connections=200",
		"shared_buffers=128MB",
	}
)

const (
	superuser = "pampa"    // role created by initdb
	osUser    = "postgres" // who runs the server when tests run as root
	// stopGrace is how long a fast shutdown (SIGINT) may take before SIGKILL.
	stopGrace = 5 * time.Second
)

// ErrNoBinaries means BinDir found no PostgreSQL server binaries.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb, postgres) not found " +
	"under /usr/lib/postgresql/*/bin or in PATH; install them (Debian: apt-get install postgresql)")

// ErrNoUser means we run as root and there is no user to run the server as.
var ErrNoUser = errors.New("running as root, which PostgreSQL refuses, and there is no user " +
	osUser + " to run it as; install the Debian package postgresql (which creates it) or run as another user")

// BinDir returns the directory holding the PostgreSQL server binaries initdb
// and postgres: the highest version under /usr/lib/postgresql/*/bin (Debian
// and Ubuntu), else the directory of initdb in PATH. The error wraps
// ErrNoBinaries when there is none.
func BinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Highest version first: "15" > "9.6", compared part by part.
	slices.SortFunc(dirs, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	if p, err := exec.LookPath("initdb"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	for _, d := range dirs {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) || i < len(bs); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return strings.Compare(a, b)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Server is a running private PostgreSQL server.
type Server struct {
	bin      string              // directory of initdb and postgres
	dir      string              // temporary directory: data/, sock/, postgres.log
	port     int                 // TCP port on 127.0.0.1, kept across restarts
	cred     *syscall.Credential // run as this user; nil unless tests run as root
	settings []string            // more -c options

	mu   sync.Mutex // serialises Restart and close
	cmd  *exec.Cmd
	done chan error // receives the result of cmd.Wait
}

// URL returns the superuser URL of the server's postgres database.
func (s *Server) URL() string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/postgres?sslmode=disable", superuser, s.port)
}

// Restart stops the server with a fast shutdown and starts it again on the
// same port and data directory, as an operator restarting PostgreSQL would.
// Every connection breaks.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stop(); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := s.launch(ctx); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return nil
}

// Start creates a cluster in a new temporary directory and runs a server on
// it. Errors wrap ErrNoBinaries or ErrNoUser when a prerequisite is missing.
//
// settings are more "postgres -c" options, after (and so over) the defaults,
// such as "max_connections=20".
func Start(ctx context.Context, settings ...string) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, settings: settings}
	if os.Geteuid() == 0 {
		u, err := user.Lookup(osUser)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoUser, err)
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("user %s: %w", osUser, err)
		}
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}

	if s.dir, err = os.MkdirTemp("", "pampa-pg-"); err != nil {
		return nil, fmt.Errorf("create server directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(s.dir)
		}
	}()
	if err := os.Mkdir(filepath.Join(s.dir, "sock"), 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if s.cred != nil {
		if err := chownTree(s.dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return nil, err
		}
	}

	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		append([]string{"-D", filepath.Join(s.dir, "data")}, initArgs...)...)
	initdb.Dir = s.dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		hint := ""
		if s.cred != nil {
			hint = fmt.Sprintf(" (run as user %s: can it reach %s?)", osUser, s.dir)
		}
		return nil, fmt.Errorf("initdb%s: %w\n%s", hint, err, out)
	}

	// A free port can be taken between choosing and binding it: try another.
	for attempt := 1; ; attempt++ {
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
		err = s.launch(ctx)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "already in use") {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func chownTree(root string, uid, gid int) error {
	err := filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
	if err != nil {
		return fmt.Errorf("give %s to user %s: %w", root, osUser, err)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// launch runs postgres on s.dir and s.port and waits until it accepts
// connections. The caller holds s.mu or owns s alone.
func (s *Server) launch(ctx context.Context) error {
	logPath := filepath.Join(s.dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer logFile.Close() // the child has its own copy

	args := []string{"-D", filepath.Join(s.dir, "data"), "-k", filepath.Join(s.dir, "sock"), "-p", strconv.Itoa(s.port)}
	for _, c := range append(slices.Clone(serverSettings), s.settings...) {
		args = append(args, "-c", c)
	}
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), args...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: s.cred,
		// Own process group, so that stop reaches the backends too.
		Setpgid: true,
		// If the test binary dies, shut down at once (SIGQUIT is
		// PostgreSQL's immediate shutdown, which also frees shared memory).
		// The kernel sends it when the starting OS thread exits; Go keeps
		// its threads until the process exits.
		Pdeathsig: syscall.SIGQUIT,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	s.cmd, s.done = cmd, done

	if err := s.waitReady(ctx); err != nil {
		_ = s.stop()
		return fmt.Errorf("postgres on port %d (log %s): %w\n%s", s.port, logPath, err, tail(logPath))
	}
	return nil
}

// waitReady polls until the server accepts a connection, the server exits or
// ctx ends.
func (s *Server) waitReady(ctx context.Context) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		attemptCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(attemptCtx, s.URL())
		cancel()
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case werr := <-s.done:
			s.done <- werr // keep it for stop
			return fmt.Errorf("exited before accepting connections: %w", werr)
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last attempt: %w)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// stop shuts the server down: SIGINT (fast shutdown) to its process group,
// then SIGKILL if it is still running after stopGrace.
func (s *Server) stop() error {
	if s.cmd == nil {
		return nil
	}
	pgid := s.cmd.Process.Pid
	s.cmd = nil
	_ = syscall.Kill(-pgid, syscall.SIGINT)
	timer := time.NewTimer(stopGrace)
	defer timer.Stop()
	var err error
	select {
	case err = <-s.done:
	case <-timer.C:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-s.done
		return fmt.Errorf("stop postgres: no fast shutdown within %v, killed", stopGrace)
	}
	// Backends left behind, if any, would keep the port.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		// Already dead before the signal (it crashed): worth reporting.
		return fmt.Errorf("stop postgres: %w", err)
	}
	return nil
}

// Close stops the server and removes its directory.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.stop(), os.RemoveAll(s.dir))
}

// tail returns the end of the server log, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	const n = 2000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
