package pool_test

import (
	"context"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/pool"
)

func TestNewPoolSpawnsAllWorkersConcurrentlyEachInItsOwnProcessGroup(t *testing.T) {
	const (
		numWorkers = 4
		spawnDelay = 700 * time.Millisecond // each worker's wait before its handshake
	)
	for _, fc := range factories {
		t.Run(fc.name, func(t *testing.T) {
			cmd := workerCmd("", startDelayEnv+"="+strconv.Itoa(int(spawnDelay.Milliseconds())))
			start := time.Now()
			p := startPool(t, cmd, fc.new(t), pool.Config{NumWorkers: numWorkers, SpawnTimeout: 10 * time.Second})
			elapsed := time.Since(start)
			require.GreaterOrEqual(t, elapsed, spawnDelay, "NewPool returned before the handshakes")
			require.Less(t, elapsed, numWorkers*spawnDelay, "one spawn after the other would take at least %s", numWorkers*spawnDelay)

			workers := p.Workers()
			require.Len(t, workers, numWorkers)
			var pids []int
			for i, w := range workers {
				require.Equal(t, i, w.Slot)
				require.Equal(t, pool.StateReady, w.State, "worker %d", w.Pid)
				pgid, err := syscall.Getpgid(w.Pid)
				require.NoError(t, err)
				require.Equal(t, w.Pid, pgid, "worker %d runs in its own process group", w.Pid)
				pids = append(pids, w.Pid)
			}
			require.Len(t, slices.Compact(slices.Sorted(slices.Values(pids))), numWorkers, "distinct pids")

			reply, err := p.Exec(t.Context(), pool.Payload{Body: []byte("hello")})
			require.NoError(t, err)
			require.Equal(t, "hello", string(reply.Body))
			require.NoError(t, p.Destroy(context.Background()))
			requireGone(t, pids)
		})
	}
}

func TestNewPoolFailsWithinSpawnTimeoutWhenAWorkerNeverHandsShake(t *testing.T) {
	const spawnTimeout = 400 * time.Millisecond
	for _, fc := range factories {
		t.Run(fc.name, func(t *testing.T) {
			dir, env := spawnDir(t)
			start := time.Now()
			p, err := pool.NewPool(t.Context(), workerCmd("no-handshake", env), fc.new(t),
				pool.Config{NumWorkers: 2, SpawnTimeout: spawnTimeout, Logger: quietLogger()})
			elapsed := time.Since(start)
			require.Error(t, err)
			require.Nil(t, p)
			require.GreaterOrEqual(t, elapsed, spawnTimeout)
			require.Less(t, elapsed, spawnTimeout+3*time.Second)
			// A worker killed before it registered has no pid here; one
			// registered is enough to show that nothing was left behind.
			pids := spawnedPids(t, dir)
			require.NotEmpty(t, pids)
			requireGone(t, pids)
		})
	}
}

func TestNewPoolStopsTheStartedWorkersWhenOneFailsToSpawn(t *testing.T) {
	for _, fc := range factories {
		t.Run(fc.name, func(t *testing.T) {
			dir, env := spawnDir(t)
			// The third worker to start exits before its handshake; over a
			// socket, its spawn fails when SpawnTimeout passes.
			p, err := pool.NewPool(t.Context(), workerCmd("", env, failSpawnEnv+"=3"), fc.new(t),
				pool.Config{NumWorkers: 4, SpawnTimeout: 1500 * time.Millisecond, Logger: quietLogger()})
			require.Error(t, err)
			require.Nil(t, p)
			pids := spawnedPids(t, dir)
			require.Len(t, pids, 4)
			requireGone(t, pids)
		})
	}
}

func TestNewPoolRefusesAWorkerWhoseHandshakeNamesAnotherProcess(t *testing.T) {
	dir, env := spawnDir(t)
	// The shell runs the worker as its child instead of exec'ing it, so the
	// handshake names the child while the pool spawned the shell.
	cmd := func() *exec.Cmd {
		cmd := exec.Command("/bin/sh", "-c", `"$0" -test.run='^$'; exit $?`, os.Args[0])
		cmd.Env = append(os.Environ(), testWorkerEnv+"=", raceEnv(), env)
		return cmd
	}
	p, err := pool.NewPool(t.Context(), cmd, pool.NewPipeFactory(),
		pool.Config{NumWorkers: 1, SpawnTimeout: 5 * time.Second, Logger: quietLogger()})
	require.ErrorIs(t, err, pool.ErrProtocol)
	require.Nil(t, p)
	pids := spawnedPids(t, dir)
	require.Len(t, pids, 1)
	// The worker was the shell's child, in the shell's process group: the
	// kill reached it.
	require.Eventually(t, func() bool { return pidDead(pids[0]) }, 5*time.Second, 10*time.Millisecond)
}

// ownPipeFactory is a Factory written outside the package: it starts the
// command with pipes of its own and hands them to pool.NewWorker.
type ownPipeFactory struct {
	mu   sync.Mutex
	pids []int // the processes it started
}

func (f *ownPipeFactory) SpawnWorker(ctx context.Context, cmd *exec.Cmd) (*pool.Worker, error) {
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.pids = append(f.pids, cmd.Process.Pid)
	f.mu.Unlock()
	return pool.NewWorker(ctx, cmd, pipeConn{stdout, stdin})
}

func (f *ownPipeFactory) started() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.pids)
}

// pipeConn is a worker's stdout and stdin as one connection.
type pipeConn struct {
	io.ReadCloser // stdout
	stdin         io.WriteCloser
}

func (c pipeConn) Write(b []byte) (int, error) { return c.stdin.Write(b) }

func (c pipeConn) Close() error {
	err := c.stdin.Close()
	if err2 := c.ReadCloser.Close(); err == nil {
		err = err2
	}
	return err
}

func TestNewWorkerLetsAFactoryOutsideThePackageStartWorkers(t *testing.T) {
	f := &ownPipeFactory{}
	p := startPool(t, workerCmd(""), f, pool.Config{NumWorkers: 2, Backoff: constantBackoff(50 * time.Millisecond)})
	var pids []int
	for _, w := range p.Workers() {
		require.Equal(t, pool.StateReady, w.State)
		pids = append(pids, w.Pid)
	}
	require.ElementsMatch(t, f.started(), pids)

	reply, err := p.Exec(t.Context(), pool.Payload{Body: []byte("hello")})
	require.NoError(t, err)
	require.Equal(t, "hello", string(reply.Body))

	// A replacement is spawned by the same factory.
	_, err = p.Exec(t.Context(), op{Op: "crash"}.payload(nil))
	var werr *pool.WorkerError
	require.ErrorAs(t, err, &werr)
	awaitReplacement(t, p, slices.Index(pids, werr.Pid), werr.Pid)
	require.Len(t, f.started(), 3)
	require.Contains(t, f.started(), execPid(t, p))
}

func TestNewWorkerKillsAndReapsAWorkerThatDoesNotHandShakeInTime(t *testing.T) {
	cmd := workerCmd("no-handshake")()
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	w, err := pool.NewWorker(ctx, cmd, pipeConn{stdout, stdin})
	require.ErrorIs(t, err, context.DeadlineExceeded, "it gave up when ctx expired")
	require.Nil(t, w)
	require.True(t, pidGone(cmd.Process.Pid), "the process was killed and reaped")
}

func TestNewWorkerRefusesACommandThatDidNotStartOrHasNoConnection(t *testing.T) {
	_, err := pool.NewWorker(t.Context(), nil, nil)
	require.Error(t, err)
	_, err = pool.NewWorker(t.Context(), workerCmd("")(), nil)
	require.Error(t, err, "a command that was not started")

	cmd := workerCmd("no-handshake")()
	require.NoError(t, cmd.Start())
	_, err = pool.NewWorker(t.Context(), cmd, nil)
	require.Error(t, err)
	require.True(t, pidGone(cmd.Process.Pid), "the started process was killed and reaped")
}

func TestNewPoolRejectsAnInvalidConfig(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       pool.Config
		noCmd     bool
		noFactory bool
	}{
		{name: "too many workers", cfg: pool.Config{NumWorkers: pool.MaxWorkers + 1}},
		{name: "negative workers", cfg: pool.Config{NumWorkers: -1}},
		{name: "negative AllocateTimeout", cfg: pool.Config{AllocateTimeout: -time.Second}},
		{name: "negative DestroyTimeout", cfg: pool.Config{DestroyTimeout: -time.Second}},
		{name: "negative ExecTimeout", cfg: pool.Config{ExecTimeout: -time.Second}},
		{name: "negative TTL", cfg: pool.Config{TTL: -time.Second}},
		{name: "negative IdleTTL", cfg: pool.Config{IdleTTL: -time.Second}},
		{name: "negative WatchInterval", cfg: pool.Config{WatchInterval: -time.Second}},
		{name: "negative SpawnTimeout", cfg: pool.Config{SpawnTimeout: -time.Second}},
		{name: "negative AbortDelay", cfg: pool.Config{AbortDelay: -time.Second}},
		{name: "negative MaxQueue", cfg: pool.Config{MaxQueue: -1}},
		{name: "negative MaxPayload", cfg: pool.Config{MaxPayload: -1}},
		{name: "no command", cfg: pool.Config{NumWorkers: 1}, noCmd: true},
		{name: "no factory", cfg: pool.Config{NumWorkers: 1}, noFactory: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, env := spawnDir(t)
			cmd := workerCmd("", env)
			if tc.noCmd {
				cmd = nil
			}
			var f pool.Factory = pool.NewPipeFactory()
			if tc.noFactory {
				f = nil
			}
			tc.cfg.Logger = quietLogger()
			p, err := pool.NewPool(t.Context(), cmd, f, tc.cfg)
			require.Error(t, err)
			require.Nil(t, p)
			require.Empty(t, spawnedPids(t, dir), "nothing was started")
		})
	}
}

func TestNewPoolFillsInDefaults(t *testing.T) {
	events := &eventLog{}
	p := newTestPool(t, pool.Config{OnEvent: events.add}, "")
	require.Len(t, p.Workers(), min(runtime.NumCPU(), pool.MaxWorkers), "NumWorkers defaults to the number of CPUs")
	for _, e := range events.of(pool.EventWorkerStarted) {
		require.Equal(t, "pool", e.Pool, "Name defaults to pool")
	}
	reply, err := p.Exec(t.Context(), op{Op: "env", Message: "SUPERVISOR_POOL_MAX_PAYLOAD"}.payload(nil))
	require.NoError(t, err)
	require.Equal(t, strconv.Itoa(64<<20), string(reply.Body), "MaxPayload defaults to 64 MiB, passed to the worker")
	_, err = p.Exec(t.Context(), pool.Payload{Body: make([]byte, 64<<20+1)})
	require.ErrorIs(t, err, pool.ErrPayloadTooLarge)

	require.Equal(t, 60*time.Second, pool.DefaultAllocateTimeout)
	require.Equal(t, 10*time.Second, pool.DefaultDestroyTimeout)
	require.Equal(t, time.Second, pool.DefaultWatchInterval)
	require.Equal(t, 64<<20, pool.DefaultMaxPayload)
	require.Equal(t, 10*time.Second, pool.DefaultSpawnTimeout)
	require.Equal(t, 30*time.Second, pool.DefaultAbortDelay)
	require.Equal(t, 1024, pool.MaxWorkers)
}

func TestNewPoolPassesMaxPayloadToTheWorkers(t *testing.T) {
	p := newTestPool(t, pool.Config{NumWorkers: 1, MaxPayload: 1000}, "")
	reply, err := p.Exec(t.Context(), op{Op: "env", Message: "SUPERVISOR_POOL_MAX_PAYLOAD"}.payload(nil))
	require.NoError(t, err)
	require.Equal(t, "1000", string(reply.Body))
}

func TestAWorkerThatExitsRightAfterItsHandshakeIsReplacedBeforeAnyExecGetsIt(t *testing.T) {
	dir, env := spawnDir(t)
	events := &eventLog{}
	// The first worker to start exits right after its handshake; the other
	// takes 500ms to hand shake, so NewPool is still starting when the
	// first one is gone.
	p := newTestPool(t, pool.Config{NumWorkers: 2, Backoff: constantBackoff(50 * time.Millisecond), OnEvent: events.add},
		"", env, quitSpawnEnv+"=1", startDelayEnv+"=500")
	quitter := spawnedPids(t, dir)[0]
	slot := slices.IndexFunc(p.Workers(), func(w pool.WorkerInfo) bool { return w.Pid == quitter })
	if slot >= 0 {
		// Its slot notices the death without a job: the pool does not
		// offer a dead worker as ready for long.
		awaitReplacement(t, p, slot, quitter)
	}
	require.True(t, pidGone(quitter))
	require.Len(t, events.failed(quitter), 1)
	for range 2 {
		_, err := p.Exec(t.Context(), pool.Payload{Body: []byte("hello")})
		require.NoError(t, err)
	}
}

func TestNewPoolCtxBoundsTheStartUpOnly(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	p := func() *pool.Pool {
		defer cancel()
		cfg := pool.Config{NumWorkers: 2, Backoff: constantBackoff(10 * time.Millisecond), Logger: quietLogger()}
		p, err := pool.NewPool(ctx, workerCmd(""), pool.NewPipeFactory(), cfg)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, p.Destroy(context.Background())) })
		return p
	}()
	// Both workers outlive the cancelled ctx and take jobs at once.
	first := runAsync(t.Context(), p, op{Op: "sleep", Ms: 100}.payload([]byte("a")))
	second := runAsync(t.Context(), p, op{Op: "sleep", Ms: 100}.payload([]byte("b")))
	require.NoError(t, (<-first).err)
	require.NoError(t, (<-second).err)
	_, err := p.Exec(t.Context(), op{Op: "crash"}.payload(nil))
	var werr *pool.WorkerError
	require.ErrorAs(t, err, &werr)
	slot := slices.IndexFunc(p.Workers(), func(w pool.WorkerInfo) bool { return w.Pid == werr.Pid || w.Pid == 0 })
	require.GreaterOrEqual(t, slot, 0)
	awaitReplacement(t, p, slot, werr.Pid)
}

func TestNewPoolWithADoneCtxFailsAndLeavesNoProcess(t *testing.T) {
	dir, env := spawnDir(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	p, err := pool.NewPool(ctx, workerCmd("", env), pool.NewPipeFactory(), pool.Config{NumWorkers: 2, Logger: quietLogger()})
	require.ErrorIs(t, err, context.Canceled)
	require.Nil(t, p)
	require.Less(t, time.Since(start), 3*time.Second)
	requireGone(t, spawnedPids(t, dir))
}
