package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// Helpers of the worker tests.

// workerApp returns a started App (quiet, deciding by policy, nil:
// DefaultPolicy, logging failures into log) with one module "m" whose
// Start is start (nil: none).
func workerApp(t *testing.T, o supervisor.AppOptions, log *failureLog, policy supervisor.Policy,
	start func(context.Context, *supervisor.Module) error,
) (*supervisor.App, *supervisor.Module) {
	t.Helper()
	if policy == nil {
		policy = supervisor.DefaultPolicy
	}
	o.Kernel = quietKernel(log.deciding(policy))
	a := moduleApp(o)
	m := moduleRegister(t, a, "m", supervisor.ModuleFuncs{Start: start})
	require.NoError(t, a.Start(t.Context()))
	return a, m
}

// workerRuns records when each run of a worker began, relative to a start
// time.
type workerRuns struct {
	mu     sync.Mutex
	begin  time.Time
	starts []time.Duration
}

func newWorkerRuns() *workerRuns { return &workerRuns{begin: time.Now()} }

// run records a run and returns its number, from 1.
func (r *workerRuns) run() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.starts = append(r.starts, time.Since(r.begin))
	return len(r.starts)
}

func (r *workerRuns) times() []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Duration(nil), r.starts...)
}

func (r *workerRuns) count() int { return len(r.times()) }

// workerSeconds converts whole seconds to durations.
func workerSeconds(secs ...float64) []time.Duration {
	out := make([]time.Duration, len(secs))
	for i, s := range secs {
		out[i] = time.Duration(s * float64(time.Second))
	}
	return out
}

// Plain workers.

func TestRunWorkerReturnsErrorAndCancelsContextWhenDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := workerApp(t, supervisor.AppOptions{}, log, nil, nil)
		var workerCtx context.Context
		err := m.RunWorker("job", func(ctx context.Context) error {
			workerCtx = ctx
			require.NoError(t, ctx.Err())
			return errBoom
		})
		require.ErrorIs(t, err, errBoom)
		require.Error(t, workerCtx.Err(), "cancelled when the worker returned")
		require.NoError(t, m.Ctx().Err(), "not the module's")

		failures := log.all()
		require.Len(t, failures, 1)
		require.Equal(t, "m/job", failures[0].Process)
		require.Equal(t, supervisor.Temporary, failures[0].Restart)
		require.ErrorIs(t, failures[0].Err, errBoom)
		var me *supervisor.ModuleError
		require.ErrorAs(t, failures[0].Err, &me)
		require.Equal(t, "m", me.ModuleName)
		require.Equal(t, "job", me.TaskName)
		require.Equal(t, "worker", me.TaskType)

		require.NoError(t, m.RunWorker("ok", func(context.Context) error { return nil }))
		require.Len(t, log.all(), 1, "success is no failure")
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestRunWorkerTurnsAPanicIntoPanicError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := workerApp(t, supervisor.AppOptions{}, log, nil, nil)
		err := m.RunWorker("crash", func(context.Context) error { panic("kaput") })
		pe, ok := supervisor.IsPanic(err)
		require.True(t, ok, "%v", err)
		require.Equal(t, "kaput", pe.Value)

		failures := log.all()
		require.Len(t, failures, 1)
		require.Equal(t, "m/crash", failures[0].Process)
		require.Equal(t, supervisor.Temporary, failures[0].Restart)
		var me *supervisor.ModuleError
		require.ErrorAs(t, failures[0].Err, &me)
		require.Equal(t, "panic", me.Severity)
		require.Equal(t, "kaput", me.PanicValue)
		require.NotEmpty(t, me.StackTrace)
		_, ok = supervisor.IsPanic(failures[0].Err)
		require.True(t, ok)
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestStartWorkerRunsInItsOwnGoroutineAndModuleStopWaitsForIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls moduleCalls
		a := moduleApp(supervisor.AppOptions{})
		m := moduleRegister(t, a, "m", supervisor.ModuleFuncs{
			Stop: func(context.Context, *supervisor.Module) error { calls.add("stop"); return nil },
		})
		require.NoError(t, a.Start(t.Context()))
		release := make(chan struct{})
		var workerCtx context.Context
		m.StartWorker("w", func(ctx context.Context) error {
			workerCtx = ctx
			<-release
			calls.add("worker done")
			return nil
		})
		synctest.Wait()
		require.Equal(t, 1, moduleSnapshot(a, "m").Workers)
		close(release)
		synctest.Wait()
		require.Error(t, workerCtx.Err())
		require.Zero(t, moduleSnapshot(a, "m").Workers)

		m.StartWorker("w2", func(ctx context.Context) error {
			<-ctx.Done()
			time.Sleep(2 * time.Second)
			calls.add("w2 done")
			return ctx.Err()
		})
		begin := time.Now()
		require.NoError(t, a.Shutdown(t.Context()))
		require.Equal(t, 2*time.Second, time.Since(begin))
		require.Equal(t, []string{"worker done", "w2 done", "stop"}, calls.all())
	})
}

// Service workers.

func TestServiceWorkerEndsOnNilOrContextCanceled(t *testing.T) {
	cases := []struct {
		name string
		err  error
	}{
		{"nil", nil},
		{"context.Canceled", context.Canceled},
		{"wrapped context.Canceled", fmt.Errorf("gave up: %w", context.Canceled)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				log := &failureLog{}
				a, m := workerApp(t, supervisor.AppOptions{}, log, nil, nil)
				runs := newWorkerRuns()
				m.StartServiceWorker("svc", time.Second, func(context.Context) error { runs.run(); return tc.err })
				time.Sleep(time.Minute)
				require.Equal(t, 1, runs.count())
				require.Empty(t, log.all())
				require.Zero(t, moduleSnapshot(a, "m").Workers)
				require.NoError(t, a.Shutdown(t.Context()))
			})
		})
	}
}

func TestServiceWorkerRestartsAfterBackoffTimesConsecutiveFailures(t *testing.T) {
	cases := []struct {
		name       string
		backoff    time.Duration
		maxBackoff time.Duration
		want       []time.Duration // start time of each run
	}{
		{"backoff 1s", time.Second, 0, workerSeconds(0, 1, 3, 6, 10, 15)},
		{"zero backoff is DefaultBackoffDuration", 0, 0, workerSeconds(0, 2, 6, 12)},
		{"negative backoff is DefaultBackoffDuration", -time.Second, 0, workerSeconds(0, 2, 6, 12)},
		{"capped by MaxServiceBackoff", time.Second, 3 * time.Second, workerSeconds(0, 1, 3, 6, 9, 12)},
		{"default cap is one minute", 20 * time.Second, 0, workerSeconds(0, 20, 60, 120, 180)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				require.Equal(t, 2*time.Second, supervisor.DefaultBackoffDuration)
				log := &failureLog{}
				a, m := workerApp(t, supervisor.AppOptions{MaxServiceBackoff: tc.maxBackoff}, log, nil, nil)
				runs := newWorkerRuns()
				m.StartServiceWorker("svc", tc.backoff, func(context.Context) error {
					if runs.run() == len(tc.want) {
						return nil
					}
					return errBoom
				})
				time.Sleep(tc.want[len(tc.want)-1] + time.Second)
				require.Equal(t, tc.want, runs.times())
				failures := log.all()
				require.Len(t, failures, len(tc.want)-1)
				for _, f := range failures {
					require.Equal(t, "m/svc", f.Process)
					require.Equal(t, supervisor.Permanent, f.Restart)
					require.ErrorIs(t, f.Err, errBoom)
					var me *supervisor.ModuleError
					require.ErrorAs(t, f.Err, &me)
					require.Equal(t, "service-worker", me.TaskType)
				}
				require.NoError(t, a.Shutdown(t.Context()))
			})
		})
	}
}

func TestServiceWorkerRestartsAtOnceOnErrRestartNowWithoutCountingIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := workerApp(t, supervisor.AppOptions{}, log, nil, nil)
		runs := newWorkerRuns()
		// Runs: 1 fails, 2 and 3 restart now (one wrapped), 4 fails, 5 ends.
		m.StartServiceWorker("svc", time.Second, func(context.Context) error {
			switch runs.run() {
			case 2:
				return supervisor.ErrRestartNow
			case 3:
				return fmt.Errorf("reconnect: %w", supervisor.ErrRestartNow)
			case 5:
				return nil
			}
			return errBoom
		})
		time.Sleep(time.Minute)
		require.Equal(t, workerSeconds(0, 1, 1, 1, 3), runs.times(), "the second failure waits 2×backoff")
		require.Len(t, log.all(), 2, "ErrRestartNow never reaches the kernel")
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestServiceWorkerFailureCountResetsAfterFiveMinutesWithoutFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := workerApp(t, supervisor.AppOptions{}, log, nil, nil)
		runs := newWorkerRuns()
		// Runs 1 and 2 fail at once; run 3 works for 5m1s, then fails;
		// run 4 fails at once; run 5 ends.
		m.StartServiceWorker("svc", time.Second, func(ctx context.Context) error {
			switch runs.run() {
			case 3:
				return exitAfter(ctx, 5*time.Minute+time.Second, errBoom)
			case 5:
				return nil
			}
			return errBoom
		})
		time.Sleep(10 * time.Minute)
		// 0 fail → 1s; 1 fail → 2s; 3 fails at 3+301=304 → 1s (reset); 305 fails → 2s.
		require.Equal(t, workerSeconds(0, 1, 3, 305, 307), runs.times())
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestServiceWorkerEndsOnKernelAbortAndSetsFailureStatusError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := workerApp(t, supervisor.AppOptions{}, log, always(supervisor.Abort), nil)
		runs := newWorkerRuns()
		m.StartServiceWorker("svc", time.Second, func(context.Context) error { runs.run(); return errBoom })
		time.Sleep(time.Minute)
		require.Equal(t, 1, runs.count())
		level, _, msg := m.FailureStatus()
		require.Equal(t, supervisor.FailureError, level)
		require.Contains(t, msg, "boom")
		require.Zero(t, moduleSnapshot(a, "m").Workers)
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestServiceWorkerEndsOnErrAbortWithDefaultPolicy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := workerApp(t, supervisor.AppOptions{}, log, nil, nil)
		runs := newWorkerRuns()
		m.StartServiceWorker("svc", time.Second, func(context.Context) error {
			runs.run()
			return fmt.Errorf("fatal: %w", supervisor.ErrAbort)
		})
		time.Sleep(time.Minute)
		require.Equal(t, 1, runs.count())
		level, _, _ := m.FailureStatus()
		require.Equal(t, supervisor.FailureError, level)
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestServiceWorkerBackoffIsInterruptedByModuleStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := workerApp(t, supervisor.AppOptions{MaxServiceBackoff: time.Hour}, log, nil, nil)
		runs := newWorkerRuns()
		m.StartServiceWorker("svc", 30*time.Minute, func(context.Context) error { runs.run(); return errBoom })
		time.Sleep(time.Second)
		begin := time.Now()
		require.NoError(t, a.Shutdown(t.Context()))
		require.Zero(t, time.Since(begin))
		require.Equal(t, 1, runs.count())
	})
}

func TestServiceWorkerBackoffIsInterruptedByAFailedStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{MaxServiceBackoff: time.Hour})
		runs := newWorkerRuns()
		moduleRegister(t, a, "m", supervisor.ModuleFuncs{
			Start: func(_ context.Context, m *supervisor.Module) error {
				m.StartServiceWorker("svc", 30*time.Minute, func(context.Context) error { runs.run(); return errBoom })
				time.Sleep(time.Second) // the worker failed and backs off
				return errors.New("start broke")
			},
		})
		defer func() {
			// A broken library leaves the worker in its backoff: let it
			// end, or the bubble would panic and hide the other tests.
			_ = a.Shutdown(context.Background())
			time.Sleep(time.Hour)
		}()
		begin := time.Now()
		require.Error(t, a.Start(t.Context()))
		require.Equal(t, time.Second, time.Since(begin), "the failed start waited for the service worker's backoff")
		require.Zero(t, moduleSnapshot(a, "m").Workers, "the service worker outlives the failed start")
		require.Equal(t, 1, runs.count())
	})
}

func TestServiceWorkerIsNotRestartedWhileItsModuleStops(t *testing.T) {
	cases := []struct {
		name string
		err  error
	}{
		{"other error", errBoom},
		{"panic", nil},
		{"ErrRestartNow", supervisor.ErrRestartNow},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				log := &failureLog{}
				var statusInStop supervisor.FailureLevel
				o := supervisor.AppOptions{Kernel: quietKernel(log.answer(supervisor.Abort))}
				a := moduleApp(o)
				runs := newWorkerRuns()
				moduleRegister(t, a, "m", supervisor.ModuleFuncs{
					Start: func(_ context.Context, m *supervisor.Module) error {
						m.StartServiceWorker("svc", time.Second, func(ctx context.Context) error {
							if runs.run() > 3 {
								return nil // keeps a broken library from spinning forever
							}
							<-ctx.Done()
							if tc.err == nil {
								panic("stopping")
							}
							return tc.err
						})
						return nil
					},
					Stop: func(_ context.Context, m *supervisor.Module) error {
						statusInStop, _, _ = m.FailureStatus()
						return nil
					},
				})
				require.NoError(t, a.Start(t.Context()))
				synctest.Wait()
				require.NoError(t, a.Shutdown(t.Context()))
				require.Equal(t, 1, runs.count(), "restarted while stopping")
				require.Equal(t, supervisor.FailureNone, statusInStop)
				if tc.err != supervisor.ErrRestartNow {
					require.Len(t, log.all(), 1, "a failure while stopping is still reported")
					require.Equal(t, "m/svc", log.all()[0].Process)
				} else {
					require.Empty(t, log.all())
				}
			})
		})
	}
}

func TestReportInsideAWorkerReachesTheKernelAndKillCancelsIt(t *testing.T) {
	cases := []struct {
		name    string
		service bool
	}{{"worker", false}, {"service worker", true}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				log := &failureLog{}
				policy := func(_ context.Context, f supervisor.Failure) supervisor.Action {
					if f.Exited {
						return supervisor.Abort
					}
					return supervisor.Kill
				}
				a, m := workerApp(t, supervisor.AppOptions{}, log, policy, nil)
				runs := newWorkerRuns()
				var action supervisor.Action
				var cancelledOnReturn bool
				fn := func(ctx context.Context) error {
					if runs.run() > 1 {
						<-ctx.Done()
						return ctx.Err()
					}
					action = supervisor.Report(ctx, errBoom, "msg-1")
					cancelledOnReturn = ctx.Err() != nil
					return ctx.Err()
				}
				if tc.service {
					m.StartServiceWorker("w", time.Second, fn)
				} else {
					m.StartWorker("w", fn)
				}
				time.Sleep(10 * time.Second)
				synctest.Wait()
				require.Equal(t, supervisor.Kill, action)
				require.True(t, cancelledOnReturn)
				failures := log.all()
				require.Len(t, failures, 1, "the exit after a Kill is not reported again")
				require.Equal(t, "m/w", failures[0].Process)
				require.False(t, failures[0].Exited)
				require.Equal(t, "msg-1", failures[0].Message)
				require.ErrorIs(t, failures[0].Err, errBoom)
				if tc.service {
					require.Equal(t, workerSeconds(0, 1), runs.times(), "killed: restarted after backoff")
				} else {
					require.Equal(t, 1, runs.count())
				}
				require.NoError(t, a.Shutdown(t.Context()))
			})
		})
	}
}

func TestReportInsideAWorkerWithContinueLeavesItRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := workerApp(t, supervisor.AppOptions{}, log, nil, nil)
		err := m.RunWorker("w", func(ctx context.Context) error {
			require.Equal(t, supervisor.Continue, supervisor.Report(ctx, errBoom, nil))
			return ctx.Err()
		})
		require.NoError(t, err)
		require.Len(t, log.all(), 1)
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestWorkersOfTwoAppsReportToTheirOwnKernels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := [2]*failureLog{{}, {}}
		var apps [2]*supervisor.App
		var mods [2]*supervisor.Module
		for i := range apps {
			apps[i], mods[i] = workerApp(t, supervisor.AppOptions{}, logs[i], nil, nil)
		}
		var wg sync.WaitGroup
		var fails atomic.Int32
		for i := range mods {
			wg.Go(func() {
				for range 3 + i {
					if mods[i].RunWorker("w", func(context.Context) error { return errBoom }) != nil {
						fails.Add(1)
					}
				}
			})
		}
		wg.Wait()
		require.EqualValues(t, 7, fails.Load())
		require.Len(t, logs[0].all(), 3)
		require.Len(t, logs[1].all(), 4)
		for _, a := range apps {
			require.NoError(t, a.Shutdown(t.Context()))
		}
	})
}

func TestReportAbortInsideAServiceWorkerEndsItAndSetsFailureStatusError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := workerApp(t, supervisor.AppOptions{}, log, always(supervisor.Abort), nil)
		runs := newWorkerRuns()
		m.StartServiceWorker("w", time.Second, func(ctx context.Context) error {
			if runs.run() > 1 {
				<-ctx.Done()
				return ctx.Err()
			}
			require.Equal(t, supervisor.Abort, supervisor.Report(ctx, errBoom, nil))
			return ctx.Err()
		})
		time.Sleep(10 * time.Second)
		require.Equal(t, 1, runs.count())
		require.Len(t, log.all(), 1)
		level, _, _ := m.FailureStatus()
		require.Equal(t, supervisor.FailureError, level, "an Abort of a service worker sets its module's failure status")
		require.NoError(t, a.Shutdown(t.Context()))
	})
}
