package pool_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/pool"
)

func TestExecReturnsPayloadsIntact(t *testing.T) {
	sizes := []int{0, 1, 64<<10 - 1, 64 << 10, 64<<10 + 1, 1 << 20, 10<<20 + 7}
	random := rand.New(rand.NewChaCha8([32]byte{1}))
	for _, fc := range factories {
		t.Run(fc.name, func(t *testing.T) {
			p := startPool(t, workerCmd(""), fc.new(t), pool.Config{NumWorkers: 2})
			for _, size := range sizes {
				body := make([]byte, size)
				for i := range body {
					body[i] = byte(random.Uint32())
				}
				reply, err := p.Exec(t.Context(), pool.Payload{Body: body})
				require.NoError(t, err, "%d bytes", size)
				require.Len(t, reply.Body, size)
				require.True(t, bytes.Equal(body, reply.Body), "a body of %d bytes came back changed", size)
				require.JSONEq(t, `{"echo":true}`, string(reply.Context))
			}
		})
	}
}

func TestExecReturnsAJobErrorAndKeepsTheWorker(t *testing.T) {
	p := newTestPool(t, pool.Config{NumWorkers: 1}, "")
	pid := onlyWorker(t, p).Pid
	_, err := p.Exec(t.Context(), op{Op: "fail", Message: "no such user"}.payload(nil))
	var jobErr pool.JobError
	require.ErrorAs(t, err, &jobErr)
	require.Equal(t, "no such user", string(jobErr))
	var werr *pool.WorkerError
	require.False(t, errors.As(err, &werr))

	require.Equal(t, pid, execPid(t, p), "the same worker answers the next job")
	w := onlyWorker(t, p)
	require.Equal(t, pid, w.Pid)
	require.Equal(t, uint64(2), w.NumExecs)
}

// TestExecReplacesAWorkerThatFails covers every way a job can lose its
// worker: the Exec gets the right error, the worker is replaced, failures
// go to the kernel and planned replacements do not, and the next Exec
// succeeds on the new worker.
func TestExecReplacesAWorkerThatFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  pool.Config
		env  []string
		// exec runs the job that loses the worker and returns its error.
		exec func(t *testing.T, p *pool.Pool) error
		// check checks the error, given the pid of the worker.
		check    func(t *testing.T, err error, pid int)
		replaced string // the EventWorkerReplaced reason, if any
		failure  bool   // a failure for the kernel
	}{
		{
			name: "worker dies",
			exec: func(t *testing.T, p *pool.Pool) error {
				_, err := p.Exec(t.Context(), op{Op: "crash", Message: "fatal: out of cheese"}.payload(nil))
				return err
			},
			check: func(t *testing.T, err error, pid int) {
				werr := requireWorkerError(t, err, pid, pool.ErrWorkerExited)
				require.Contains(t, werr.Stderr, "fatal: out of cheese")
				require.Contains(t, werr.Error(), "fatal: out of cheese")
			},
			failure: true,
		},
		{
			name: "protocol violation",
			exec: func(t *testing.T, p *pool.Pool) error {
				_, err := p.Exec(t.Context(), op{Op: "stray"}.payload(nil))
				return err
			},
			check: func(t *testing.T, err error, pid int) {
				werr := requireWorkerError(t, err, pid, pool.ErrProtocol)
				require.Contains(t, werr.Error(), "hello from a stray print")
			},
			failure: true,
		},
		{
			name: "reply over MaxPayload",
			cfg:  pool.Config{MaxPayload: 4 << 10},
			env:  []string{ignoreLimitEnv + "=1"},
			exec: func(t *testing.T, p *pool.Pool) error {
				_, err := p.Exec(t.Context(), op{Op: "big", Size: 8 << 10}.payload(nil))
				return err
			},
			check: func(t *testing.T, err error, pid int) {
				requireWorkerError(t, err, pid, pool.ErrPayloadTooLarge)
			},
			failure: true,
		},
		{
			name: "ExecTimeout",
			cfg:  pool.Config{ExecTimeout: 200 * time.Millisecond},
			exec: func(t *testing.T, p *pool.Pool) error {
				start := time.Now()
				_, err := p.Exec(t.Context(), op{Op: "hang"}.payload(nil))
				require.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)
				return err
			},
			check: func(t *testing.T, err error, pid int) {
				requireWorkerError(t, err, pid, pool.ErrExecTimeout)
			},
			replaced: pool.ReasonExecTimeout,
			failure:  true,
		},
		{
			name: "caller's ctx cancelled mid-job",
			exec: func(t *testing.T, p *pool.Pool) error {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				done := runAsync(ctx, p, op{Op: "hang"}.payload(nil))
				awaitState(t, p, 0, pool.StateWorking)
				cancel()
				return (<-done).err
			},
			check: func(t *testing.T, err error, _ int) {
				require.ErrorIs(t, err, context.Canceled)
				var werr *pool.WorkerError
				require.False(t, errors.As(err, &werr), "a cancelled job is the caller's doing: %v", err)
			},
			replaced: pool.ReasonCancelled,
		},
		{
			name: "stray output while idle",
			exec: func(t *testing.T, p *pool.Pool) error {
				// The job succeeds; 100ms later the idle worker prints to
				// stdout, and is replaced without a job failing.
				reply, err := p.Exec(t.Context(), op{Op: "stray-later", Ms: 100}.payload([]byte("ok")))
				require.Equal(t, "ok", string(reply.Body))
				return err
			},
			check: func(t *testing.T, err error, _ int) {
				require.NoError(t, err)
			},
			failure: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quietLogger()})
			decisions, unsubscribe := kernel.Subscribe(16)
			defer unsubscribe()
			events := &eventLog{}
			cfg := tc.cfg
			cfg.Name = "jobs"
			cfg.NumWorkers = 1
			cfg.Kernel = kernel
			cfg.Backoff = constantBackoff(50 * time.Millisecond)
			cfg.OnEvent = events.add
			p := newTestPool(t, cfg, "", tc.env...)
			pid := onlyWorker(t, p).Pid

			tc.check(t, tc.exec(t, p), pid)

			next := awaitReplacement(t, p, 0, pid)
			require.True(t, pidGone(pid), "the old worker was reaped")
			require.Equal(t, next.Pid, execPid(t, p), "the next job runs on the new worker")
			if tc.replaced != "" {
				require.Equal(t, []string{tc.replaced}, events.replaced(pid))
			} else {
				require.Empty(t, events.replaced(pid))
			}
			if !tc.failure {
				require.Empty(t, events.failed(pid))
				require.Zero(t, kernel.State("jobs/0").Failures, "a planned replacement is not a failure")
				return
			}
			failed := events.failed(pid)
			require.Len(t, failed, 1)
			var werr *pool.WorkerError
			require.ErrorAs(t, failed[0].Err, &werr)
			require.Equal(t, pid, werr.Pid)
			require.Equal(t, 1, kernel.State("jobs/0").Failures)
			d := awaitDecision(t, decisions)
			require.Equal(t, "jobs/0", d.Failure.Process)
			require.ErrorAs(t, d.Failure.Err, &werr)
			require.Equal(t, pid, werr.Pid)
			require.Equal(t, supervisor.Kill, d.Action)
		})
	}
}

// requireWorkerError checks that err is a *WorkerError of pid wrapping
// target, and returns it.
func requireWorkerError(t *testing.T, err error, pid int, target error) *pool.WorkerError {
	t.Helper()
	var werr *pool.WorkerError
	require.ErrorAs(t, err, &werr)
	require.Equal(t, pid, werr.Pid)
	require.ErrorIs(t, err, target)
	return werr
}

func TestExecRunsAJobOnceMoreOnAnotherWorkerAfterAStopRequest(t *testing.T) {
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quietLogger()})
	events := &eventLog{}
	p := newTestPool(t, pool.Config{Name: "stop", NumWorkers: 1, Kernel: kernel, OnEvent: events.add}, "")
	marker := filepath.Join(t.TempDir(), "stopped")

	reply, err := p.Exec(t.Context(), op{Op: "stop-once", Message: marker}.payload(nil))
	require.NoError(t, err)
	data, err := os.ReadFile(marker)
	require.NoError(t, err)
	first, err := strconv.Atoi(string(data))
	require.NoError(t, err)
	second, err := strconv.Atoi(string(reply.Body))
	require.NoError(t, err, "the reply is the rerun's, not the stop request's")
	require.NotEqual(t, first, second, "the job ran again on another worker")
	require.True(t, pidGone(first), "the worker that asked to stop was replaced")
	require.Equal(t, second, onlyWorker(t, p).Pid)
	require.Equal(t, []string{pool.ReasonStopRequest}, events.replaced(first))

	// A job that gets a stop request twice fails.
	_, err = p.Exec(t.Context(), op{Op: "stop"}.payload(nil))
	var werr *pool.WorkerError
	require.ErrorAs(t, err, &werr)
	require.Equal(t, []string{pool.ReasonStopRequest}, events.replaced(second))
	require.Zero(t, kernel.State("stop/0").Failures, "a stop request is a planned replacement")
	_, err = p.Exec(t.Context(), pool.Payload{Body: []byte("still works")})
	require.NoError(t, err)
}

func TestExecFailsDistinctlyWhenNoWorkerIsFreeTheQueueIsFullOrThePoolIsStopped(t *testing.T) {
	// No free worker: the one worker is busy past AllocateTimeout.
	const allocateTimeout = 300 * time.Millisecond
	p := newTestPool(t, pool.Config{NumWorkers: 1, AllocateTimeout: allocateTimeout}, "")
	busy := runAsync(t.Context(), p, op{Op: "sleep", Ms: 1000}.payload([]byte("done")))
	awaitState(t, p, 0, pool.StateWorking)
	start := time.Now()
	_, noFree := p.Exec(t.Context(), pool.Payload{})
	require.ErrorIs(t, noFree, pool.ErrNoFreeWorkers)
	require.GreaterOrEqual(t, time.Since(start), allocateTimeout)
	require.Less(t, time.Since(start), allocateTimeout+time.Second)
	require.NoError(t, (<-busy).err)

	// Queue full: the one worker is busy and one Exec already waits.
	q := newTestPool(t, pool.Config{NumWorkers: 1, MaxQueue: 1, AllocateTimeout: 10 * time.Second}, "")
	busy = runAsync(t.Context(), q, op{Op: "sleep", Ms: 1000}.payload([]byte("done")))
	awaitState(t, q, 0, pool.StateWorking)
	waiting := queueOne(t, q)
	start = time.Now()
	_, queueFull := q.Exec(t.Context(), pool.Payload{})
	require.ErrorIs(t, queueFull, pool.ErrQueueFull)
	require.Less(t, time.Since(start), time.Second, "an Exec beyond MaxQueue fails at once, not after AllocateTimeout")
	require.NoError(t, (<-busy).err)
	r := <-waiting
	require.NoError(t, r.err)
	require.Equal(t, "waited", string(r.reply.Body))

	// Pool stopped.
	s := newTestPool(t, pool.Config{NumWorkers: 1}, "")
	require.NoError(t, s.Destroy(context.Background()))
	_, stopped := s.Exec(t.Context(), pool.Payload{})

	errs := []error{noFree, queueFull, stopped}
	sentinels := []error{pool.ErrNoFreeWorkers, pool.ErrQueueFull, pool.ErrPoolStopped}
	for i, err := range errs {
		for j, sentinel := range sentinels {
			require.Equal(t, i == j, errors.Is(err, sentinel), "errors.Is(%v, %v)", err, sentinel)
		}
	}
}

func TestExecRefusesAnOversizeRequestBeforeSendingIt(t *testing.T) {
	const limit = 1024
	p := newTestPool(t, pool.Config{NumWorkers: 1, MaxPayload: limit}, "")
	before := onlyWorker(t, p)
	echo := op{Op: "echo"}.payload(nil)
	for _, rqs := range []pool.Payload{
		{Body: make([]byte, limit+1)},
		{Context: []byte(strings.Repeat(" ", limit+1))},
		{Context: echo.Context, Body: make([]byte, limit-len(echo.Context)+1)},
	} {
		_, err := p.Exec(t.Context(), rqs)
		require.ErrorIs(t, err, pool.ErrPayloadTooLarge)
		var werr *pool.WorkerError
		require.False(t, errors.As(err, &werr), "the worker is not involved")
	}
	after := onlyWorker(t, p)
	require.Equal(t, before.Pid, after.Pid)
	require.Equal(t, before.NumExecs, after.NumExecs, "nothing was sent")

	body := bytes.Repeat([]byte{'a'}, limit-len(echo.Context))
	reply, err := p.Exec(t.Context(), pool.Payload{Context: echo.Context, Body: body})
	require.NoError(t, err, "a request of exactly MaxPayload is sent")
	require.Equal(t, body, reply.Body)
}

func TestExecReturnsCtxErrorWhileWaitingForAWorker(t *testing.T) {
	p := newTestPool(t, pool.Config{NumWorkers: 1}, "")
	busy := runAsync(t.Context(), p, op{Op: "sleep", Ms: 1000}.payload(nil))
	awaitState(t, p, 0, pool.StateWorking)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := p.Exec(ctx, pool.Payload{})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, (<-busy).err)
	require.Equal(t, uint64(1), onlyWorker(t, p).NumExecs, "the waiting job never ran")
}

// queueOne starts an Exec that waits for a worker of p, a pool with
// MaxQueue 1 whose workers are all busy, and returns once it waits.
func queueOne(t *testing.T, p *pool.Pool) <-chan result {
	t.Helper()
	waiting := make(chan result, 1)
	go func() {
		for {
			// Retried while a probe below holds the place in the queue.
			reply, err := p.Exec(t.Context(), pool.Payload{Body: []byte("waited")})
			if !errors.Is(err, pool.ErrQueueFull) {
				waiting <- result{reply, err}
				return
			}
		}
	}()
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
		defer cancel()
		_, err := p.Exec(ctx, pool.Payload{})
		return errors.Is(err, pool.ErrQueueFull)
	}, 5*time.Second, time.Millisecond, "the Exec never waited")
	return waiting
}

// result is what an Exec returned.
type result struct {
	reply pool.Payload
	err   error
}

// runAsync runs one Exec on its own goroutine.
func runAsync(ctx context.Context, p *pool.Pool, rqs pool.Payload) <-chan result {
	done := make(chan result, 1)
	go func() {
		reply, err := p.Exec(ctx, rqs)
		done <- result{reply, err}
	}()
	return done
}

// awaitState waits until slot's worker is in state.
func awaitState(t *testing.T, p *pool.Pool, slot int, state pool.State) {
	t.Helper()
	require.Eventually(t, func() bool { return p.Workers()[slot].State == state },
		5*time.Second, time.Millisecond, "slot %d never %s", slot, state)
}

func TestExecNeverReturnsAReplyMeantForAnotherJob(t *testing.T) {
	p := newTestPool(t, pool.Config{NumWorkers: 1, Backoff: constantBackoff(10 * time.Millisecond)}, "")
	for range 10 {
		// The worker answers one request with three replies: the first is
		// taken as the job's, the second is a protocol violation.
		_, _ = p.Exec(t.Context(), op{Op: "extra-replies", Ms: 200}.payload(nil))
		reply, err := p.Exec(t.Context(), pool.Payload{Body: []byte("fresh")})
		if err == nil {
			require.Equal(t, "fresh", string(reply.Body), "a job got the reply of an earlier one")
		} else {
			var werr *pool.WorkerError
			require.ErrorAs(t, err, &werr)
		}
		awaitState(t, p, 0, pool.StateReady)
	}
}

func TestExecRunsAJobAtMostOnceWhenItsWorkerFails(t *testing.T) {
	runs := filepath.Join(t.TempDir(), "runs")
	p := newTestPool(t, pool.Config{NumWorkers: 2, ExecTimeout: 200 * time.Millisecond, Backoff: constantBackoff(10 * time.Millisecond)}, "")
	_, err := p.Exec(t.Context(), op{Op: "crash", Record: runs}.payload(nil))
	require.ErrorIs(t, err, pool.ErrWorkerExited)
	_, err = p.Exec(t.Context(), op{Op: "hang", Record: runs}.payload(nil))
	require.ErrorIs(t, err, pool.ErrExecTimeout)
	require.Eventually(t, func() bool {
		return !slices.ContainsFunc(p.Workers(), func(w pool.WorkerInfo) bool { return w.State != pool.StateReady })
	}, 5*time.Second, 5*time.Millisecond)
	data, err := os.ReadFile(runs)
	require.NoError(t, err)
	require.Len(t, strings.Fields(string(data)), 2, "each job ran once: %q", data)
}

func TestExecReturnsAJobErrorForAnOversizeReplyOfAServeWorker(t *testing.T) {
	// Serve checks its replies against the limit the pool passed it.
	p := newTestPool(t, pool.Config{NumWorkers: 1, MaxPayload: 4 << 10}, "")
	pid := onlyWorker(t, p).Pid
	_, err := p.Exec(t.Context(), op{Op: "big", Size: 8 << 10}.payload(nil))
	var jobErr pool.JobError
	require.ErrorAs(t, err, &jobErr)
	require.Contains(t, string(jobErr), pool.ErrPayloadTooLarge.Error())
	require.Equal(t, pid, execPid(t, p), "the worker stays")
}

func TestExecReturnsAWorkerErrorWhenTheRequestCannotBeSent(t *testing.T) {
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quietLogger()})
	decisions, unsubscribe := kernel.Subscribe(16)
	defer unsubscribe()
	p := newTestPool(t, pool.Config{
		NumWorkers:  1,
		Kernel:      kernel,
		Backoff:     constantBackoff(time.Minute),
		ExecTimeout: 5 * time.Second, // if the request went through after all
	}, "deaf")
	pid := onlyWorker(t, p).Pid
	_, err := p.Exec(t.Context(), pool.Payload{Body: []byte("hello")})
	var werr *pool.WorkerError
	require.ErrorAs(t, err, &werr)
	require.NotNil(t, werr, "a nil *WorkerError")
	require.Equal(t, pid, werr.Pid)
	require.ErrorIs(t, err, pool.ErrWorkerExited)
	require.True(t, pidGone(pid))

	d := awaitDecision(t, decisions)
	_, panicked := supervisor.IsPanic(d.Failure.Err)
	require.False(t, panicked, "the slot panicked: %v", d.Failure.Err)
	require.ErrorAs(t, d.Failure.Err, &werr)
	require.NotNil(t, werr)
}

func TestOutputBetweenJobsIsFoundBeforeTheNextRequestIsSent(t *testing.T) {
	dir := t.TempDir()
	printed, runs := filepath.Join(dir, "printed"), filepath.Join(dir, "runs")
	events := &eventLog{}
	// No watcher tick comes in time: the next Exec finds the output.
	p := newTestPool(t, pool.Config{NumWorkers: 1, WatchInterval: time.Hour, Backoff: constantBackoff(10 * time.Millisecond), OnEvent: events.add}, "")
	pid := onlyWorker(t, p).Pid
	_, err := p.Exec(t.Context(), op{Op: "stray-later", Ms: 50, Message: printed}.payload([]byte("ok")))
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := os.Stat(printed); return err == nil }, 5*time.Second, 5*time.Millisecond)

	reply, err := p.Exec(t.Context(), op{Record: runs}.payload([]byte("next")))
	require.NoError(t, err, "the job was never sent to the broken worker: it runs on its replacement")
	require.Equal(t, "next", string(reply.Body))
	data, err := os.ReadFile(runs)
	require.NoError(t, err)
	ran := strings.Fields(string(data))
	require.Len(t, ran, 1, "the job ran once")
	require.NotEqual(t, strconv.Itoa(pid), ran[0])

	failed := events.failed(pid)
	require.Len(t, failed, 1)
	requireWorkerError(t, failed[0].Err, pid, pool.ErrProtocol)
	require.True(t, pidGone(pid), "the broken worker was reaped")
}
