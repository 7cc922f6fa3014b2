// Package pgtest starts throwaway PostgreSQL clusters for tests, benchmarks
// and examples: initdb into a temporary directory, a server on a unix
// socket and a free loopback port, removed again by Close. It runs the
// server binaries found on the machine (pg_config --bindir, then PATH,
// then /usr/lib/postgresql/*/bin), as the postgres system user when the
// caller is root, since initdb refuses to run as root.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the environment variable that, when set, points the tests
// at an existing server instead of a throwaway cluster.
const EnvURL = "SUPERVISOR_TEST_DATABASE_URL"

// InstallHint says how to get the server binaries.
const InstallHint = "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql; " +
	"macOS: brew install postgresql) or set " + EnvURL + " to a database URL"

// ErrNoServer is returned by Start when no server binaries are found.
var ErrNoServer = errors.New("pgtest: no PostgreSQL server binaries found")

// Server is a running throwaway cluster.
type Server struct {
	dir  string // data directory and socket directory live under it
	port int
	cmd  *exec.Cmd
	done chan struct{} // closed when the server process has exited
	log  bytes.Buffer
}

// URL returns a connection URL for the cluster's "postgres" database over
// TCP on loopback; add pool parameters with URL + "&...".
func (s *Server) URL() string {
	return "postgres://postgres@127.0.0.1:" + strconv.Itoa(s.port) + "/postgres?sslmode=disable"
}

// SocketURL returns a connection URL over the cluster's unix socket.
func (s *Server) SocketURL() string {
	return "postgres://postgres@/postgres?host=" + filepath.Join(s.dir, "sock") +
		"&port=" + strconv.Itoa(s.port) + "&sslmode=disable"
}

// Start initialises and starts a throwaway cluster; it returns
// ErrNoServer (with InstallHint) when the server binaries are missing.
func Start(ctx context.Context) (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{dir: dir, done: make(chan struct{})}
	if err := s.start(ctx, bin); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) start(ctx context.Context, bin string) error {
	cred, err := serverUser(s.dir)
	if err != nil {
		return err
	}
	data, sock := filepath.Join(s.dir, "data"), filepath.Join(s.dir, "sock")
	if err := os.Mkdir(sock, 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	if cred != nil {
		if err := chownAll(s.dir, cred); err != nil {
			return err
		}
	}
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", data,
		"-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	for range 5 { // a free port can be taken by someone else before the server binds it
		if s.port, err = freePort(); err != nil {
			return err
		}
		if err = s.run(ctx, bin, data, sock, cred); err == nil {
			return nil
		}
	}
	return err
}

// run starts the server and waits until it accepts connections.
func (s *Server) run(ctx context.Context, bin, data, sock string, cred *syscall.Credential) error {
	s.log.Reset()
	s.done = make(chan struct{})
	s.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", sock,
		"-p", strconv.Itoa(s.port), "-h", "127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=32MB")
	s.cmd.Stdout, s.cmd.Stderr = &s.log, &s.log
	// The server dies with the caller, even when the caller is killed.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	ready := filepath.Join(sock, ".s.PGSQL."+strconv.Itoa(s.port))
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil && s.accepts(ctx) {
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("pgtest: postgres exited: %s", s.log.String())
		case <-ctx.Done():
			s.kill()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("pgtest: postgres not ready after 30s: %s", s.log.String())
		}
	}
}

// accepts reports whether the server answers a query over TCP (it
// refuses connections while it starts up).
func (s *Server) accepts(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL())
	if err != nil {
		return false
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx) == nil
}

func (s *Server) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGQUIT) // immediate shutdown
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	}
}

// Close stops the server and removes its directory.
func (s *Server) Close() error {
	s.kill()
	return os.RemoveAll(s.dir)
}

// URL returns the database URL for tests: SUPERVISOR_TEST_DATABASE_URL when
// set, otherwise a throwaway cluster's, which is stopped by the test's
// Cleanup. Without either it skips the test with InstallHint.
func URL(t testing.TB) string {
	t.Helper()
	if url := os.Getenv(EnvURL); url != "" {
		return url
	}
	s, err := Start(context.Background())
	if errors.Is(err, ErrNoServer) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s.URL()
}

// binDir finds the directory of initdb and postgres.
func binDir() (string, error) {
	var dirs []string
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dirs = append(dirs, strings.TrimSpace(string(out)))
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		dirs = append(dirs, filepath.Dir(p))
	}
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.Reverse(versions) // newest first, as far as names sort
	dirs = append(dirs, versions...)
	for _, d := range dirs {
		if isFile(filepath.Join(d, "initdb")) && isFile(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrNoServer, InstallHint)
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir()
}

// serverUser returns the credential to run the server with: nil for a
// caller that is not root, the postgres system user for root.
func serverUser(dir string) (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root needs a postgres system user to run the server: %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgtest: user postgres: %w", err)
	}
	// The temporary directory's parent must let the server in.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func chownAll(dir string, cred *syscall.Credential) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, int(cred.Uid), int(cred.Gid))
	})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
