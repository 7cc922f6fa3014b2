package pool_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/pool"
)

func TestDestroyRefusesWaitingExecsAndLetsTheJobUnderWayFinish(t *testing.T) {
	dir, env := spawnDir(t)
	p, err := pool.NewPool(t.Context(), workerCmd("", env), pool.NewPipeFactory(),
		pool.Config{NumWorkers: 1, MaxQueue: 1, Logger: quietLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Destroy(context.Background()) }) // if the test fails early

	inFlight := runAsync(t.Context(), p, op{Op: "sleep", Ms: 1000}.payload([]byte("finished")))
	awaitState(t, p, 0, pool.StateWorking)
	waiting := queueOne(t, p)

	start := time.Now()
	destroyed := make(chan error, 1)
	go func() { destroyed <- p.Destroy(context.Background()) }()
	r := <-waiting
	require.ErrorIs(t, r.err, pool.ErrPoolStopped)
	require.Less(t, time.Since(start), 500*time.Millisecond, "the waiting Exec was refused at once")

	r = <-inFlight
	require.NoError(t, r.err, "the job under way finished")
	require.Equal(t, "finished", string(r.reply.Body))
	require.NoError(t, <-destroyed)
	requireGone(t, spawnedPids(t, dir))

	require.NoError(t, p.Destroy(context.Background()), "a second Destroy returns the first one's result")
	_, err = p.Exec(t.Context(), pool.Payload{})
	require.ErrorIs(t, err, pool.ErrPoolStopped)
}

func TestDestroyKillsBusyWorkersWhenItsContextExpires(t *testing.T) {
	dir, env := spawnDir(t)
	p, err := pool.NewPool(t.Context(), workerCmd("", env), pool.NewPipeFactory(),
		pool.Config{NumWorkers: 2, Logger: quietLogger()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Destroy(context.Background()) })

	cut := runAsync(t.Context(), p, op{Op: "hang"}.payload(nil))
	require.Eventually(t, func() bool {
		for _, w := range p.Workers() {
			if w.State == pool.StateWorking {
				return true
			}
		}
		return false
	}, 5*time.Second, time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = p.Destroy(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded, "Destroy waited for ctx to expire")
	require.Less(t, time.Since(start), 5*time.Second)

	r := <-cut
	require.ErrorIs(t, r.err, pool.ErrPoolStopped, "the cut job says why")
	requireGone(t, spawnedPids(t, dir))

	require.Equal(t, err, p.Destroy(context.Background()), "a second Destroy returns the first one's result")
	_, err = p.Exec(t.Context(), pool.Payload{})
	require.ErrorIs(t, err, pool.ErrPoolStopped)
}

func TestDestroyKillsAWorkerThatIgnoresTheStopFrameAfterDestroyTimeout(t *testing.T) {
	const destroyTimeout = 400 * time.Millisecond
	dir, env := spawnDir(t)
	p, err := pool.NewPool(t.Context(), workerCmd("ignore-stop", env), pool.NewPipeFactory(),
		pool.Config{NumWorkers: 2, DestroyTimeout: destroyTimeout, Logger: quietLogger()})
	require.NoError(t, err)
	reply, err := p.Exec(t.Context(), pool.Payload{Body: []byte("hello")})
	require.NoError(t, err)
	require.Equal(t, "hello", string(reply.Body))

	start := time.Now()
	require.NoError(t, p.Destroy(context.Background()))
	require.GreaterOrEqual(t, time.Since(start), destroyTimeout)
	require.Less(t, time.Since(start), destroyTimeout+3*time.Second)
	requireGone(t, spawnedPids(t, dir))
}

func TestDestroyStopsEveryWorkerWithoutWaitingForDestroyTimeout(t *testing.T) {
	dir, env := spawnDir(t)
	events := &eventLog{}
	p, err := pool.NewPool(t.Context(), workerCmd("", env), pool.NewPipeFactory(),
		pool.Config{NumWorkers: 3, DestroyTimeout: 5 * time.Second, OnEvent: events.add, Logger: quietLogger()})
	require.NoError(t, err)
	var pids []int
	for _, w := range p.Workers() {
		pids = append(pids, w.Pid)
	}
	start := time.Now()
	require.NoError(t, p.Destroy(context.Background()))
	require.Less(t, time.Since(start), 3*time.Second, "the workers obeyed the stop frame")
	requireGone(t, spawnedPids(t, dir))
	var stopped []int
	for _, e := range events.of(pool.EventWorkerStopped) {
		stopped = append(stopped, e.Pid)
	}
	require.ElementsMatch(t, pids, stopped)
	require.Empty(t, events.of(pool.EventWorkerFailed))
}

func TestPoolPassesWorkerStderrOnLineByLine(t *testing.T) {
	events := &eventLog{}
	p := newTestPool(t, pool.Config{Name: "err", NumWorkers: 1, OnEvent: events.add}, "")
	pid := onlyWorker(t, p).Pid
	var want []string
	for i := range 3 {
		first, second := fmt.Sprintf("line %d.1", i), fmt.Sprintf("line %d.2", i)
		want = append(want, first, second)
		_, err := p.Exec(t.Context(), op{Op: "stderr", Message: first + "\n" + second}.payload(nil))
		require.NoError(t, err)
	}
	ours := func() []pool.Event {
		return slices.DeleteFunc(events.of(pool.EventWorkerStderr), func(e pool.Event) bool {
			return !strings.HasPrefix(e.Line, "line ")
		})
	}
	require.Eventually(t, func() bool { return len(ours()) == len(want) }, 5*time.Second, 5*time.Millisecond)
	var lines []string
	for _, e := range ours() {
		require.Equal(t, pid, e.Pid)
		require.Equal(t, "err", e.Pool)
		require.Equal(t, 0, e.Slot)
		lines = append(lines, e.Line)
	}
	require.Equal(t, want, lines, "in order, one event per line")
}

func TestWorkerErrorCarriesTheTailOfStderr(t *testing.T) {
	p := newTestPool(t, pool.Config{NumWorkers: 1}, "")
	noise := strings.Repeat("n", 1000)
	for range 10 {
		_, err := p.Exec(t.Context(), op{Op: "stderr", Message: noise}.payload(nil))
		require.NoError(t, err)
	}
	_, err := p.Exec(t.Context(), op{Op: "crash", Message: "the last words"}.payload(nil))
	var werr *pool.WorkerError
	require.ErrorAs(t, err, &werr)
	require.Contains(t, werr.Stderr, "the last words")
	require.True(t, strings.HasSuffix(werr.Stderr, "test worker: crashing on request"), "the tail ends with the last line: %q", werr.Stderr)
	require.Less(t, len(werr.Stderr), 10*len(noise), "only the tail is kept")
}

func TestWorkersReportsPidStateJobsAgeAndMemory(t *testing.T) {
	before := time.Now()
	p := newTestPool(t, pool.Config{NumWorkers: 2}, "")
	after := time.Now()
	workers := p.Workers()
	require.Len(t, workers, 2)
	for i, w := range workers {
		require.Equal(t, i, w.Slot)
		require.NotZero(t, w.Pid)
		require.Equal(t, pool.StateReady, w.State)
		require.Zero(t, w.NumExecs)
		require.False(t, w.Created.Before(before) || w.Created.After(after), "created %s, NewPool ran from %s to %s", w.Created, before, after)
		require.NotZero(t, w.RSS)
	}
	require.NotEqual(t, workers[0].Pid, workers[1].Pid)

	job := runAsync(t.Context(), p, op{Op: "sleep", Ms: 500}.payload(nil))
	var busy pool.WorkerInfo
	require.Eventually(t, func() bool {
		for _, w := range p.Workers() {
			if w.State == pool.StateWorking {
				busy = w
				return true
			}
		}
		return false
	}, 5*time.Second, time.Millisecond, "a worker under a job is working")
	require.Equal(t, uint64(1), busy.NumExecs)
	require.NoError(t, (<-job).err)
	after2 := p.Workers()[busy.Slot]
	require.Equal(t, busy.Pid, after2.Pid)
	require.Equal(t, pool.StateReady, after2.State)
	require.Equal(t, uint64(1), after2.NumExecs)
	require.Equal(t, busy.Created, after2.Created)
}
