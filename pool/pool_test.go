package pool_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/pool"
)

// newTestPool starts a pool of test workers and destroys it when the test
// ends.
func newTestPool(t *testing.T, cfg pool.Config, mode string, env ...string) *pool.Pool {
	t.Helper()
	return startPool(t, workerCmd(mode, env...), pool.NewPipeFactory(), cfg)
}

// startPool starts a pool with f and checks, when the test ends, that it
// is destroyed cleanly.
func startPool(t *testing.T, cmd func() *exec.Cmd, f pool.Factory, cfg pool.Config) *pool.Pool {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	p, err := pool.NewPool(t.Context(), cmd, f, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Destroy(context.Background())) })
	return p
}

// quietLogger keeps the pools' logs out of the test output: the tests
// check events and errors instead.
func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// constantBackoff gives a slot the same delay after every failure.
func constantBackoff(d time.Duration) func() backoff.BackOff {
	return func() backoff.BackOff { return backoff.NewConstantBackOff(d) }
}

// factoryCase is a way to connect to workers.
type factoryCase struct {
	name string
	new  func(t *testing.T) pool.Factory
}

// factories are every factory of the package: pipes, a unix socket and a
// TCP socket.
var factories = []factoryCase{
	{"pipes", func(*testing.T) pool.Factory { return pool.NewPipeFactory() }},
	{"unix socket", func(t *testing.T) pool.Factory {
		return pool.NewSocketFactory(listen(t, "unix", filepath.Join(t.TempDir(), "pool.sock")), 5*time.Second)
	}},
	{"tcp socket", func(t *testing.T) pool.Factory {
		return pool.NewSocketFactory(listen(t, "tcp", "127.0.0.1:0"), 5*time.Second)
	}},
}

func listen(t *testing.T, network, address string) net.Listener {
	t.Helper()
	ls, err := net.Listen(network, address)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ls.Close() }) // after the pool's Destroy: cleanups run last first
	return ls
}

// eventLog records a pool's events.
type eventLog struct {
	mu     sync.Mutex
	events []pool.Event
}

func (l *eventLog) add(e pool.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

// of returns the events of kind, oldest first.
func (l *eventLog) of(kind pool.EventKind) []pool.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var events []pool.Event
	for _, e := range l.events {
		if e.Kind == kind {
			events = append(events, e)
		}
	}
	return events
}

// replaced returns the reasons of the EventWorkerReplaced events of pid.
func (l *eventLog) replaced(pid int) []string {
	var reasons []string
	for _, e := range l.of(pool.EventWorkerReplaced) {
		if e.Pid == pid {
			reasons = append(reasons, e.Reason)
		}
	}
	return reasons
}

// failed returns the EventWorkerFailed events of pid.
func (l *eventLog) failed(pid int) []pool.Event {
	return slices.DeleteFunc(l.of(pool.EventWorkerFailed), func(e pool.Event) bool { return e.Pid != pid })
}

// started returns the EventWorkerStarted events of slot.
func (l *eventLog) started(slot int) []pool.Event {
	return slices.DeleteFunc(l.of(pool.EventWorkerStarted), func(e pool.Event) bool { return e.Slot != slot })
}

// pidGone reports whether no process pid exists, not even a zombie: it
// ended and was reaped.
func pidGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// pidDead reports whether pid ended: it is gone, or a zombie waiting to
// be reaped (an orphan is reaped by init, in its own time).
func pidDead(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return pidGone(pid)
	}
	// The state follows the command name, which is in parentheses.
	_, after, ok := strings.Cut(string(stat), ") ")
	return ok && strings.HasPrefix(after, "Z")
}

// requireGone checks that every pid ended and was reaped.
func requireGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		require.Truef(t, pidGone(pid), "process %d is still there", pid)
	}
}

// spawnDir returns a directory in which the test workers register their
// pids, and the environment variable that names it.
func spawnDir(t *testing.T) (dir, env string) {
	dir = t.TempDir()
	return dir, spawnDirEnv + "=" + dir
}

// spawnedPids returns the pids of the workers registered in dir, in the
// order they started.
func spawnedPids(t *testing.T, dir string) []int {
	t.Helper()
	var pids []int
	for n := 1; ; n++ {
		data, err := os.ReadFile(filepath.Join(dir, "spawn-"+strconv.Itoa(n)))
		if errors.Is(err, os.ErrNotExist) {
			return pids
		}
		require.NoError(t, err)
		pid, err := strconv.Atoi(string(data))
		require.NoError(t, err, "spawn-%d", n)
		pids = append(pids, pid)
	}
}

// onlyWorker returns the one worker of a pool of one.
func onlyWorker(t *testing.T, p *pool.Pool) pool.WorkerInfo {
	t.Helper()
	workers := p.Workers()
	require.Len(t, workers, 1)
	return workers[0]
}

// awaitReplacement waits until slot has a ready worker other than old and
// returns it.
func awaitReplacement(t *testing.T, p *pool.Pool, slot, old int) pool.WorkerInfo {
	t.Helper()
	var w pool.WorkerInfo
	require.Eventually(t, func() bool {
		w = p.Workers()[slot]
		return w.Pid != 0 && w.Pid != old && w.State == pool.StateReady
	}, 5*time.Second, 5*time.Millisecond, "slot %d keeps worker %d", slot, old)
	return w
}

// execPid runs the pid op and returns the pid of the worker that ran it.
func execPid(t *testing.T, p *pool.Pool) int {
	t.Helper()
	reply, err := p.Exec(t.Context(), op{Op: "pid"}.payload(nil))
	require.NoError(t, err)
	pid, err := strconv.Atoi(string(reply.Body))
	require.NoError(t, err)
	return pid
}

func TestPoolExecEchoesOverPipes(t *testing.T) {
	p := newTestPool(t, pool.Config{NumWorkers: 2}, "")
	reply, err := p.Exec(t.Context(), op{Op: "echo"}.payload([]byte("hello")))
	require.NoError(t, err)
	require.Equal(t, "hello", string(reply.Body))
	require.JSONEq(t, `{"echo":true}`, string(reply.Context))
	workers := p.Workers()
	require.Len(t, workers, 2)
	for _, w := range workers {
		require.NotZero(t, w.Pid)
		require.Equal(t, pool.StateReady, w.State)
	}
}
