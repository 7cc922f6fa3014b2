package supervisor_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// Reviewer's tests of DESIGN.md § Application layer (contract): the points
// the per-file tests leave open.

// contractApp returns an App (quiet unless logger is set) whose kernel
// records every failure into log and answers with policy (nil:
// DefaultPolicy), with one registered module "m".
func contractApp(t *testing.T, o supervisor.AppOptions, log *failureLog, policy supervisor.Policy, fns supervisor.ModuleFuncs) (*supervisor.App, *supervisor.Module) {
	t.Helper()
	if policy == nil {
		policy = supervisor.DefaultPolicy
	}
	o.Kernel = quietKernel(log.deciding(policy))
	a := moduleApp(o)
	return a, moduleRegister(t, a, "m", fns)
}

// contractFailuresOf returns the recorded failures about process.
func contractFailuresOf(log *failureLog, process string) []supervisor.Failure {
	var out []supervisor.Failure
	for _, f := range log.all() {
		if f.Process == process {
			out = append(out, f)
		}
	}
	return out
}

// contractRunUnit runs fn as a unit of the given kind named "unit" of m.
func contractRunUnit(m *supervisor.Module, kind string, fn func(context.Context) error) {
	switch kind {
	case "worker":
		_ = m.RunWorker("unit", fn)
	case "service-worker":
		m.StartServiceWorker("unit", time.Second, fn)
	case "task":
		var tfn func(context.Context, *supervisor.Task) error
		if fn != nil {
			tfn = func(ctx context.Context, _ *supervisor.Task) error { return fn(ctx) }
		}
		m.NewTask("unit", tfn).Queue()
	case "microtask":
		_ = m.RunMicroTask("unit", fn)
	}
}

func TestAppContractUnitFailuresReachTheKernelAsModuleErrorsWithTheRestartPolicyOfTheirKind(t *testing.T) {
	kinds := []struct {
		kind    string
		restart supervisor.RestartPolicy
	}{
		{"worker", supervisor.Temporary},
		{"service-worker", supervisor.Permanent},
		{"task", supervisor.Transient},
		{"microtask", supervisor.Temporary},
	}
	for _, k := range kinds {
		for _, panics := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/panic=%v", k.kind, panics), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					log := &failureLog{}
					a, m := contractApp(t, supervisor.AppOptions{}, log, always(supervisor.Abort), supervisor.ModuleFuncs{})
					require.NoError(t, a.Start(t.Context()))
					contractRunUnit(m, k.kind, func(context.Context) error {
						if panics {
							panic("kaboom")
						}
						return fmt.Errorf("wrapped: %w", errBoom)
					})
					synctest.Wait()
					require.NoError(t, a.Shutdown(t.Context()))

					failures := contractFailuresOf(log, "m/unit")
					require.Len(t, failures, 1)
					f := failures[0]
					require.Equal(t, k.restart, f.Restart)
					var me *supervisor.ModuleError
					require.ErrorAs(t, f.Err, &me)
					require.Equal(t, "m", me.ModuleName)
					require.Equal(t, "unit", me.TaskName)
					require.Equal(t, k.kind, me.TaskType)
					if panics {
						pe, ok := supervisor.IsPanic(f.Err)
						require.True(t, ok, "IsPanic sees through the *ModuleError")
						require.Equal(t, "kaboom", pe.Value)
						require.Equal(t, "panic", me.Severity)
						require.Equal(t, "kaboom", me.PanicValue)
						require.NotEmpty(t, me.StackTrace)
					} else {
						require.ErrorIs(t, f.Err, errBoom)
						require.Equal(t, "error", me.Severity)
					}
				})
			})
		}
	}
}

func TestAppContractFailedControlFunctionsReachTheKernelAndLeaveNoModulePreparingOrStarting(t *testing.T) {
	block := func(ctx context.Context, _ *supervisor.Module) error { time.Sleep(time.Hour); return nil }
	fail := func(context.Context, *supervisor.Module) error { return fmt.Errorf("wrapped: %w", errBoom) }
	panics := func(context.Context, *supervisor.Module) error { panic("kaboom") }
	cases := []struct {
		name       string
		fns        supervisor.ModuleFuncs
		status     supervisor.ModuleStatus
		id         string
		process    string
		checkError func(t *testing.T, err error)
	}{
		{"prep error", supervisor.ModuleFuncs{Prep: fail}, supervisor.StatusDead, "m:prep-failed", "m/prep",
			func(t *testing.T, err error) { require.ErrorIs(t, err, errBoom) }},
		{"prep panic", supervisor.ModuleFuncs{Prep: panics}, supervisor.StatusDead, "m:prep-failed", "m/prep",
			func(t *testing.T, err error) { _, ok := supervisor.IsPanic(err); require.True(t, ok) }},
		{"prep timeout", supervisor.ModuleFuncs{Prep: block}, supervisor.StatusDead, "m:prep-failed", "m/prep",
			func(t *testing.T, err error) { require.ErrorIs(t, err, context.DeadlineExceeded) }},
		{"start error", supervisor.ModuleFuncs{Start: fail}, supervisor.StatusOffline, "m:start-failed", "m/start",
			func(t *testing.T, err error) { require.ErrorIs(t, err, errBoom) }},
		{"start panic", supervisor.ModuleFuncs{Start: panics}, supervisor.StatusOffline, "m:start-failed", "m/start",
			func(t *testing.T, err error) { _, ok := supervisor.IsPanic(err); require.True(t, ok) }},
		{"start timeout", supervisor.ModuleFuncs{Start: block}, supervisor.StatusOffline, "m:start-failed", "m/start",
			func(t *testing.T, err error) { require.ErrorIs(t, err, context.DeadlineExceeded) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				log := &failureLog{}
				a, m := contractApp(t, supervisor.AppOptions{StartTimeout: time.Minute}, log, nil, c.fns)
				err := a.Start(t.Context())
				require.Error(t, err)
				require.Contains(t, err.Error(), `"m"`)
				c.checkError(t, err)
				require.Equal(t, c.status, m.Status())
				level, id, _ := m.FailureStatus()
				require.Equal(t, supervisor.FailureError, level)
				require.Equal(t, c.id, id)

				failures := contractFailuresOf(log, c.process)
				require.Len(t, failures, 1)
				var me *supervisor.ModuleError
				require.ErrorAs(t, failures[0].Err, &me)
				require.Equal(t, "module-control", me.TaskType)
				c.checkError(t, failures[0].Err)
				require.NoError(t, a.Shutdown(t.Context()))
				time.Sleep(2 * time.Hour) // let a blocked control function return
			})
		})
	}
}

func TestAppContractErrRestartNowNeverReachesTheKernel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := contractApp(t, supervisor.AppOptions{}, log, nil, supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		restartNow := fmt.Errorf("again: %w", supervisor.ErrRestartNow)
		var serviceRuns atomic.Int32
		m.StartServiceWorker("service", time.Second, func(ctx context.Context) error {
			if serviceRuns.Add(1) <= 3 {
				return restartNow
			}
			<-ctx.Done()
			return ctx.Err()
		})
		require.ErrorIs(t, m.RunWorker("worker", func(context.Context) error { return restartNow }), supervisor.ErrRestartNow)
		synctest.Wait()
		require.Equal(t, int32(4), serviceRuns.Load(), "restarted at once each time")
		require.NoError(t, a.Shutdown(t.Context()))
		require.Empty(t, log.all())
	})
}

func TestAppContractNilFunctionsFailEveryRunAndReachTheKernel(t *testing.T) {
	for _, kind := range []string{"worker", "task", "microtask"} {
		t.Run(kind, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				log := &failureLog{}
				a, m := contractApp(t, supervisor.AppOptions{}, log, nil, supervisor.ModuleFuncs{})
				require.NoError(t, a.Start(t.Context()))
				contractRunUnit(m, kind, nil)
				synctest.Wait()
				require.NoError(t, a.Shutdown(t.Context()))
				failures := contractFailuresOf(log, "m/unit")
				require.Len(t, failures, 1)
				require.ErrorContains(t, failures[0].Err, "nil function")
			})
		})
	}
	t.Run("run micro task returns the error", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			a, m := contractApp(t, supervisor.AppOptions{}, &failureLog{}, nil, supervisor.ModuleFuncs{})
			require.NoError(t, a.Start(t.Context()))
			require.ErrorContains(t, m.RunMicroTask("unit", nil), "nil function")
			require.ErrorContains(t, m.RunWorker("unit", nil), "nil function")
			require.NoError(t, a.Shutdown(t.Context()))
		})
	})
	t.Run("service worker backs off like any failure", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			log := &failureLog{}
			a, m := contractApp(t, supervisor.AppOptions{}, log, nil, supervisor.ModuleFuncs{})
			require.NoError(t, a.Start(t.Context()))
			m.StartServiceWorker("unit", time.Second, nil)
			time.Sleep(9500 * time.Millisecond) // runs at 0, 1, 3, 6 (then 10) seconds
			require.Len(t, contractFailuresOf(log, "m/unit"), 4)
			require.NoError(t, a.Shutdown(t.Context()))
		})
	})
}

func TestAppContractRunMicroTasksAfterShutdownReturnErrNotRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, m := contractApp(t, supervisor.AppOptions{}, &failureLog{}, nil, supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		require.NoError(t, a.Shutdown(t.Context()))
		called := false
		fn := func(context.Context) error { called = true; return nil }
		for name, run := range map[string]func(string, func(context.Context) error) error{
			"high": m.RunMicroTask, "medium": m.RunMediumPriorityMicroTask, "low": m.RunLowPriorityMicroTask,
		} {
			require.ErrorIs(t, run(name, fn), supervisor.ErrNotRunning, name)
		}
		require.False(t, called)
	})
}

func TestAppContractSecondShutdownDoesNothingAndSaysSo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &moduleLog{}
		var stops atomic.Int32
		a, _ := contractApp(t, supervisor.AppOptions{Logger: logs.logger()}, &failureLog{}, nil, supervisor.ModuleFuncs{
			Stop: func(context.Context, *supervisor.Module) error { stops.Add(1); return errBoom },
		})
		require.NoError(t, a.Start(t.Context()))
		first := a.Shutdown(t.Context())
		require.ErrorIs(t, first, errBoom)
		second := a.Shutdown(t.Context())
		require.Equal(t, first, second)
		require.Equal(t, int32(1), stops.Load())
		require.Contains(t, logs.String(), "shutdown already called")
	})
}

func TestAppContractGetExitStatusCodeBlocksUntilAnExplicitCodeAndShutdownCompleted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		a, _ := contractApp(t, supervisor.AppOptions{}, &failureLog{}, nil, supervisor.ModuleFuncs{
			Stop: func(context.Context, *supervisor.Module) error { <-release; return nil },
		})
		require.NoError(t, a.Start(t.Context()))
		a.SetExitStatusCode(7)
		var code atomic.Int32
		code.Store(-1)
		go func() { code.Store(int32(a.GetExitStatusCode())) }()
		go func() { _ = a.Shutdown(context.Background()) }()
		synctest.Wait()
		require.Equal(t, int32(-1), code.Load(), "Stop still runs")
		close(release)
		synctest.Wait()
		require.Equal(t, int32(7), code.Load())
	})
}

func TestAppContractStopTimeoutLogNamesEveryUnitStillRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &moduleLog{}
		release := make(chan struct{})
		defer func() { close(release); synctest.Wait() }() // a failed check must not strand the units
		stuck := func(context.Context) error { <-release; return nil }
		a, m := contractApp(t, supervisor.AppOptions{Logger: logs.logger(), StopTimeout: time.Second}, &failureLog{}, nil, supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		m.StartWorker("stuck-worker", stuck)
		m.StartServiceWorker("stuck-service", 0, stuck)
		m.NewTask("stuck-task", func(ctx context.Context, _ *supervisor.Task) error { return stuck(ctx) }).Queue()
		m.StartMicroTask("stuck-micro", stuck)
		synctest.Wait()
		done := make(chan error, 1)
		go func() { done <- a.Shutdown(context.Background()) }()
		time.Sleep(1500 * time.Millisecond)
		select {
		case err := <-done:
			require.NoError(t, err, "shutdown went on after StopTimeout")
		default:
			t.Fatal("shutdown still waits after StopTimeout")
		}
		out := logs.String()
		require.Contains(t, out, "still running")
		for _, name := range []string{"stuck-worker", "stuck-service", "stuck-task", "stuck-micro"} {
			require.Contains(t, out, name, "the log names every unit still running")
		}
	})
}

func TestAppContractShutdownDuringAppPrepLeavesNoModuleRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		a, m := contractApp(t, supervisor.AppOptions{Prep: func() error { <-release; return nil }}, &failureLog{}, nil, supervisor.ModuleFuncs{})
		started := make(chan error, 1)
		go func() { started <- a.Start(context.Background()) }()
		synctest.Wait()
		require.NoError(t, a.Shutdown(t.Context()))
		close(release)
		err := <-started
		require.NotEqual(t, supervisor.StatusOnline, m.Status(),
			"Start (err %v) must not bring a module online after Shutdown completed", err)
		require.Error(t, err)
		_ = a.Shutdown(t.Context())
	})
}

// contractChain registers base ← mid ← top (each depending on the one
// before) in an App with module management.
func contractChain(t *testing.T) (a *supervisor.App, base, mid, top *supervisor.Module) {
	a = moduleApp(supervisor.AppOptions{})
	base = moduleRegister(t, a, "base", supervisor.ModuleFuncs{})
	mid = moduleRegister(t, a, "mid", supervisor.ModuleFuncs{}, "base")
	top = moduleRegister(t, a, "top", supervisor.ModuleFuncs{}, "mid")
	require.True(t, a.EnableModuleManagement(nil))
	return a, base, mid, top
}

func TestAppContractEnabledAsDependencyFollowsTheEnabledDependents(t *testing.T) {
	a, base, mid, top := contractChain(t)
	require.NoError(t, a.Start(t.Context()))
	require.True(t, base.EnabledAsDependency())
	require.True(t, mid.EnabledAsDependency())
	require.False(t, top.EnabledAsDependency())
	mid.Disable()
	require.True(t, base.EnabledAsDependency(), "top still depends on base through mid")
	top.Disable()
	require.False(t, base.EnabledAsDependency())
	require.False(t, mid.EnabledAsDependency())
	require.NoError(t, a.Shutdown(t.Context()))
}

func TestAppContractEnabledAsDependencyIsKnownBeforeStart(t *testing.T) {
	_, base, mid, top := contractChain(t)
	require.True(t, base.EnabledAsDependency(), "an enabled module depends on it, indirectly")
	require.True(t, mid.EnabledAsDependency())
	require.False(t, top.EnabledAsDependency())
}

func TestAppContractTwoAppsShareNoMicroTaskLimitOrTaskQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := supervisor.AppOptions{MaxConcurrentMicroTasks: 2, MaxConcurrentTasks: 1}
		a1, m1 := contractApp(t, o, &failureLog{}, nil, supervisor.ModuleFuncs{})
		a2, m2 := contractApp(t, o, &failureLog{}, nil, supervisor.ModuleFuncs{})
		require.NoError(t, a1.Start(t.Context()))
		require.NoError(t, a2.Start(t.Context()))
		release := make(chan struct{})
		block := func(context.Context) error { <-release; return nil }
		m1.StartMicroTask("b1", block)
		m1.StartMicroTask("b2", block)
		m1.NewTask("busy", func(ctx context.Context, _ *supervisor.Task) error { return block(ctx) }).Queue()
		synctest.Wait()

		begin := time.Now()
		require.NoError(t, m2.RunLowPriorityMicroTask("free", func(context.Context) error { return nil }))
		require.Zero(t, time.Since(begin), "app 2's microtask does not wait for app 1's slots")
		ran := make(chan time.Duration, 1)
		m2.NewTask("free", func(context.Context, *supervisor.Task) error { ran <- time.Since(begin); return nil }).Queue()
		synctest.Wait()
		select {
		case d := <-ran:
			require.Zero(t, d, "app 2's task does not wait for app 1's slot")
		default:
			t.Fatal("app 2's task waits for app 1's busy slot")
		}
		close(release)
		require.NoError(t, a1.Shutdown(t.Context()))
		require.NoError(t, a2.Shutdown(t.Context()))
	})
}

func TestAppContractQueuedTaskRunsAnywayAfterTheDefaultMaxDelay(t *testing.T) {
	for _, c := range []struct {
		name  string
		delay time.Duration // AppOptions.DefaultMaxDelay
		want  time.Duration
	}{
		{"unset: 3m", 0, 3 * time.Minute},
		{"set", 10 * time.Second, 10 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a, m := contractApp(t, supervisor.AppOptions{DefaultMaxDelay: c.delay, TaskSlotTimeout: time.Hour}, &failureLog{}, nil, supervisor.ModuleFuncs{})
				require.NoError(t, a.Start(t.Context()))
				release := make(chan struct{})
				begin := time.Now()
				m.NewTask("busy", func(context.Context, *supervisor.Task) error { <-release; return nil }).Queue()
				ran := make(chan time.Duration, 1)
				m.NewTask("late", func(context.Context, *supervisor.Task) error { ran <- time.Since(begin); return nil }).Queue()
				require.Equal(t, c.want, <-ran)
				close(release)
				require.NoError(t, a.Shutdown(t.Context()))
			})
		})
	}
}

func TestAppContractNegativeRepeatIsLoggedAndRunsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &moduleLog{}
		a, m := contractApp(t, supervisor.AppOptions{Logger: logs.logger()}, &failureLog{}, nil, supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		var runs atomic.Int32
		m.NewTask("neg", func(context.Context, *supervisor.Task) error { runs.Add(1); return nil }).Repeat(-time.Minute)
		time.Sleep(time.Hour)
		require.Zero(t, runs.Load())
		require.Contains(t, logs.String(), "level=WARN")
		require.Contains(t, logs.String(), "neg")
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestAppContractModuleStatusIsObservableInEveryStep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var seen []supervisor.ModuleStatus
		see := func(m *supervisor.Module) { mu.Lock(); seen = append(seen, m.Status()); mu.Unlock() }
		a, m := contractApp(t, supervisor.AppOptions{}, &failureLog{}, nil, supervisor.ModuleFuncs{
			Prep:  func(_ context.Context, m *supervisor.Module) error { see(m); return nil },
			Start: func(_ context.Context, m *supervisor.Module) error { see(m); return nil },
			Stop:  func(_ context.Context, m *supervisor.Module) error { see(m); return nil },
		})
		require.True(t, a.EnableModuleManagement(nil))
		see(m)
		require.NoError(t, a.Start(t.Context()))
		see(m)
		first := m.StartCompleted()
		require.True(t, moduleClosed(first))
		m.Disable()
		require.NoError(t, a.ManageModules())
		see(m)
		require.False(t, moduleClosed(m.StartCompleted()), "re-armed")
		m.Enable()
		require.NoError(t, a.ManageModules())
		see(m)
		require.True(t, moduleClosed(m.StartCompleted()))
		require.NoError(t, a.Shutdown(t.Context()))
		see(m)
		S := supervisor.ModuleStatus.String
		var names []string
		for _, s := range seen {
			names = append(names, S(s))
		}
		require.Equal(t, "dead preparing starting online stopping offline starting online stopping offline", strings.Join(names, " "))
	})
}

func TestAppContractErrRestartNowFromATaskOrMicroTaskNeverReachesTheKernel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a, m := contractApp(t, supervisor.AppOptions{}, log, nil, supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		restartNow := func(context.Context) error { return supervisor.ErrRestartNow }
		contractRunUnit(m, "task", restartNow)
		contractRunUnit(m, "microtask", restartNow)
		m.StartMicroTask("started", restartNow)
		synctest.Wait()
		require.NoError(t, a.Shutdown(t.Context()))
		require.Empty(t, log.all())
	})
}
