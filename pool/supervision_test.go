package pool_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/pool"
)

func TestPlannedReplacementsHappenAtOnceWithoutBackoffOrTheKernel(t *testing.T) {
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quietLogger()})
	p := newTestPool(t, pool.Config{
		Name:            "planned",
		NumWorkers:      1,
		MaxExecutions:   1,
		Kernel:          kernel,
		Backoff:         constantBackoff(time.Minute), // a replacement through the kernel would take this long
		AllocateTimeout: 3 * time.Second,
	}, "")
	var pids []int
	for range 5 {
		pids = append(pids, execPid(t, p)) // each job waits for the last one's replacement
	}
	require.Len(t, slices.Compact(slices.Sorted(slices.Values(pids))), 5, "every job ran on a new worker")
	require.Zero(t, kernel.State("planned/0").Failures)
	require.Empty(t, kernel.Recent())
}

func TestWorkerFailuresGoToTheKernelAndTheSlotComesBackAfterBackoff(t *testing.T) {
	const backoffDelay = 400 * time.Millisecond
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quietLogger()})
	decisions, unsubscribe := kernel.Subscribe(16)
	defer unsubscribe()
	events := &eventLog{}
	p := newTestPool(t, pool.Config{
		Name:       "sup",
		NumWorkers: 2,
		Kernel:     kernel,
		Backoff:    constantBackoff(backoffDelay),
		OnEvent:    events.add,
	}, "")
	pids := []int{p.Workers()[0].Pid, p.Workers()[1].Pid}

	_, err := p.Exec(t.Context(), op{Op: "crash"}.payload(nil))
	var werr *pool.WorkerError
	require.ErrorAs(t, err, &werr)
	slot := slices.Index(pids, werr.Pid)
	require.GreaterOrEqual(t, slot, 0)
	process := "sup/" + strconv.Itoa(slot)

	d := awaitDecision(t, decisions)
	require.Equal(t, process, d.Failure.Process)
	require.Equal(t, supervisor.Kill, d.Action)
	var reported *pool.WorkerError
	require.ErrorAs(t, d.Failure.Err, &reported)
	require.Equal(t, werr.Pid, reported.Pid)
	require.Equal(t, 1, kernel.State(process).Failures)

	// Backing off: the slot has no worker, the other one serves.
	require.Equal(t, pool.WorkerInfo{Slot: slot, State: pool.StateInactive}, p.Workers()[slot])
	reply, err := p.Exec(t.Context(), pool.Payload{Body: []byte("meanwhile")})
	require.NoError(t, err)
	require.Equal(t, "meanwhile", string(reply.Body))

	awaitReplacement(t, p, slot, werr.Pid)
	failed := events.failed(werr.Pid)
	require.Len(t, failed, 1)
	started := events.started(slot)
	restart := started[len(started)-1]
	require.GreaterOrEqual(t, restart.Time.Sub(failed[0].Time), backoffDelay, "the slot came back after its backoff")
	require.Less(t, restart.Time.Sub(failed[0].Time), backoffDelay+3*time.Second)
}

func TestACrashLoopingCommandDegradesThePoolUntilItWorksAgain(t *testing.T) {
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quietLogger()})
	crashFile := filepath.Join(t.TempDir(), "crash")
	p := newTestPool(t, pool.Config{
		Name:            "loop",
		NumWorkers:      2,
		Kernel:          kernel,
		Backoff:         constantBackoff(50 * time.Millisecond),
		AllocateTimeout: 200 * time.Millisecond,
	}, "crash-if-file", crashFileEnv+"="+crashFile)

	require.NoError(t, os.WriteFile(crashFile, nil, 0o600))
	for _, w := range p.Workers() {
		require.NoError(t, syscall.Kill(w.Pid, syscall.SIGKILL))
	}
	// Until the deaths are noticed a job may still get a dying worker.
	var err error
	require.Eventually(t, func() bool {
		_, err = p.Exec(t.Context(), pool.Payload{})
		var werr *pool.WorkerError
		return !errors.As(err, &werr)
	}, 5*time.Second, time.Millisecond)
	require.ErrorIs(t, err, pool.ErrNoFreeWorkers)
	for range 3 {
		_, err := p.Exec(t.Context(), pool.Payload{})
		require.ErrorIs(t, err, pool.ErrNoFreeWorkers)
		workers := p.Workers()
		require.Len(t, workers, 2, "the pool never shrinks")
		for _, w := range workers {
			require.Equal(t, pool.StateInactive, w.State)
		}
	}
	require.Eventually(t, func() bool {
		return kernel.State("loop/0").Failures >= 3 && kernel.State("loop/1").Failures >= 3
	}, 5*time.Second, 10*time.Millisecond, "every failed start goes to the kernel")

	require.NoError(t, os.Remove(crashFile))
	require.Eventually(t, func() bool {
		_, err := p.Exec(t.Context(), pool.Payload{})
		return err == nil
	}, 5*time.Second, time.Millisecond, "the pool recovers")
	require.Eventually(t, func() bool {
		for _, w := range p.Workers() {
			if w.State != pool.StateReady {
				return false
			}
		}
		return true
	}, 5*time.Second, 5*time.Millisecond)
}

func TestAnAbortedSlotComesBackAfterAbortDelay(t *testing.T) {
	const abortDelay = 500 * time.Millisecond
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{
		Logger: quietLogger(),
		Policy: func(context.Context, supervisor.Failure) supervisor.Action { return supervisor.Abort },
	})
	decisions, unsubscribe := kernel.Subscribe(16)
	defer unsubscribe()
	events := &eventLog{}
	p := newTestPool(t, pool.Config{
		Name:       "abort",
		NumWorkers: 2,
		Kernel:     kernel,
		Backoff:    constantBackoff(50 * time.Millisecond),
		AbortDelay: abortDelay,
		OnEvent:    events.add,
	}, "")

	for range 2 { // an aborted slot comes back every time
		pids := []int{p.Workers()[0].Pid, p.Workers()[1].Pid}
		_, err := p.Exec(t.Context(), op{Op: "crash"}.payload(nil))
		var werr *pool.WorkerError
		require.ErrorAs(t, err, &werr)
		slot := slices.Index(pids, werr.Pid)
		require.GreaterOrEqual(t, slot, 0)

		d := awaitDecision(t, decisions)
		require.Equal(t, "abort/"+strconv.Itoa(slot), d.Failure.Process)
		require.Equal(t, supervisor.Abort, d.Action)
		require.Len(t, p.Workers(), 2, "the pool never shrinks")

		awaitReplacement(t, p, slot, werr.Pid)
		failed := events.failed(werr.Pid)
		require.Len(t, failed, 1)
		started := events.started(slot)
		restart := started[len(started)-1]
		require.GreaterOrEqual(t, restart.Time.Sub(failed[0].Time), abortDelay, "the slot came back after AbortDelay")
		require.Less(t, restart.Time.Sub(failed[0].Time), abortDelay+3*time.Second)
		for range 4 {
			_, err := p.Exec(t.Context(), pool.Payload{})
			require.NoError(t, err)
		}
	}
}

// awaitDecision returns the kernel's next decision.
func awaitDecision(t *testing.T, decisions <-chan supervisor.Decision) supervisor.Decision {
	t.Helper()
	select {
	case d := <-decisions:
		return d
	case <-time.After(5 * time.Second):
		t.Fatal("no decision of the kernel")
		return supervisor.Decision{}
	}
}

func TestAKillReachesTheWorkersProcessGroup(t *testing.T) {
	p := newTestPool(t, pool.Config{NumWorkers: 1, ExecTimeout: 300 * time.Millisecond}, "")
	reply, err := p.Exec(t.Context(), op{Op: "child"}.payload(nil))
	require.NoError(t, err)
	child, err := strconv.Atoi(string(reply.Body))
	require.NoError(t, err)
	require.False(t, pidDead(child))

	_, err = p.Exec(t.Context(), op{Op: "hang"}.payload(nil))
	require.ErrorIs(t, err, pool.ErrExecTimeout)
	require.Eventually(t, func() bool { return pidDead(child) }, 5*time.Second, 10*time.Millisecond,
		"the worker's child survived the kill")
}

func TestAWorkersProcessGroupDiesWithItWhenItExitsOnItsOwn(t *testing.T) {
	p := newTestPool(t, pool.Config{NumWorkers: 1, Backoff: constantBackoff(10 * time.Millisecond)}, "")
	childOf := func() int {
		reply, err := p.Exec(t.Context(), op{Op: "child"}.payload(nil))
		require.NoError(t, err)
		child, err := strconv.Atoi(string(reply.Body))
		require.NoError(t, err)
		require.False(t, pidDead(child))
		return child
	}
	// A crash: nobody killed the worker, yet its child goes with it.
	crashed := childOf()
	_, err := p.Exec(t.Context(), op{Op: "crash"}.payload(nil))
	var werr *pool.WorkerError
	require.ErrorAs(t, err, &werr)
	require.Eventually(t, func() bool { return pidDead(crashed) }, 5*time.Second, 10*time.Millisecond,
		"the child of a worker that exited on its own survived it")

	// A clean stop at Destroy: the same.
	stopped := childOf()
	require.NoError(t, p.Destroy(t.Context()))
	require.Eventually(t, func() bool { return pidDead(stopped) }, 5*time.Second, 10*time.Millisecond,
		"the child of a stopped worker survived it")
}

func TestWorkersAreReplacedOverEveryFactory(t *testing.T) {
	for _, fc := range factories {
		t.Run(fc.name, func(t *testing.T) {
			events := &eventLog{}
			p := startPool(t, workerCmd(""), fc.new(t), pool.Config{NumWorkers: 1, Backoff: constantBackoff(10 * time.Millisecond), OnEvent: events.add})
			pid := onlyWorker(t, p).Pid
			_, err := p.Exec(t.Context(), op{Op: "crash", Message: "last words"}.payload(nil))
			var werr *pool.WorkerError
			require.ErrorAs(t, err, &werr)
			require.Contains(t, werr.Stderr, "last words")
			next := awaitReplacement(t, p, 0, pid)
			require.Equal(t, next.Pid, execPid(t, p))
			require.True(t, slices.ContainsFunc(events.of(pool.EventWorkerStderr), func(e pool.Event) bool {
				return e.Pid == pid && e.Line == "last words"
			}))
		})
	}
}

func TestDestroyReturnsPromptlyWhileASlotIsDown(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy supervisor.Policy
	}{
		{"backing off", nil},
		{"aborted", func(context.Context, supervisor.Failure) supervisor.Action { return supervisor.Abort }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, env := spawnDir(t)
			kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quietLogger(), Policy: tc.policy})
			decisions, unsubscribe := kernel.Subscribe(16)
			defer unsubscribe()
			p, err := pool.NewPool(t.Context(), workerCmd("", env), pool.NewPipeFactory(), pool.Config{
				NumWorkers: 2,
				Kernel:     kernel,
				Backoff:    constantBackoff(time.Minute),
				AbortDelay: time.Minute,
				Logger:     quietLogger(),
			})
			require.NoError(t, err)
			t.Cleanup(func() { _ = p.Destroy(context.Background()) })
			_, err = p.Exec(t.Context(), op{Op: "crash"}.payload(nil))
			var werr *pool.WorkerError
			require.ErrorAs(t, err, &werr)
			awaitDecision(t, decisions)

			start := time.Now()
			require.NoError(t, p.Destroy(context.Background()))
			require.Less(t, time.Since(start), 3*time.Second)
			requireGone(t, spawnedPids(t, dir))
		})
	}
}
