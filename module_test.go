package supervisor_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// Helpers of the module tests.

// moduleApp returns an App with a quiet logger and the given options.
func moduleApp(o supervisor.AppOptions) *supervisor.App {
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	return supervisor.NewApp(o)
}

// moduleLog is a concurrency-safe log buffer for an App's Logger.
type moduleLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *moduleLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *moduleLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *moduleLog) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// moduleCalls records the calls of control functions, in order.
type moduleCalls struct {
	mu    sync.Mutex
	calls []string
}

func (c *moduleCalls) add(call string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call)
}

func (c *moduleCalls) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

// only returns the recorded calls that end with suffix (":prep", ":start",
// ":stop"), in order.
func (c *moduleCalls) only(suffix string) []string {
	var out []string
	for _, call := range c.all() {
		if len(call) > len(suffix) && call[len(call)-len(suffix):] == suffix {
			out = append(out, call)
		}
	}
	return out
}

// funcs returns control functions that record "<name>:prep",
// "<name>:start" and "<name>:stop".
func (c *moduleCalls) funcs(name string) supervisor.ModuleFuncs {
	return supervisor.ModuleFuncs{
		Prep:  func(context.Context, *supervisor.Module) error { c.add(name + ":prep"); return nil },
		Start: func(context.Context, *supervisor.Module) error { c.add(name + ":start"); return nil },
		Stop:  func(context.Context, *supervisor.Module) error { c.add(name + ":stop"); return nil },
	}
}

// moduleRegister registers a module and fails the test on an error.
func moduleRegister(t *testing.T, a *supervisor.App, name string, fns supervisor.ModuleFuncs, deps ...string) *supervisor.Module {
	t.Helper()
	m, err := a.Register(name, fns, deps...)
	require.NoError(t, err)
	return m
}

// moduleStatuses returns the status of every module of a, by name.
func moduleStatuses(a *supervisor.App) map[string]supervisor.ModuleStatus {
	out := map[string]supervisor.ModuleStatus{}
	for _, m := range a.Modules() {
		out[m.Name()] = m.Status()
	}
	return out
}

// moduleClosed reports whether ch is closed.
func moduleClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// 1. Lifecycle.

func TestAppRegisterRejectsEmptyDuplicateAndLateNames(t *testing.T) {
	a := moduleApp(supervisor.AppOptions{})
	_, err := a.Register("", supervisor.ModuleFuncs{})
	require.Error(t, err)
	moduleRegister(t, a, "db", supervisor.ModuleFuncs{})
	_, err = a.Register("db", supervisor.ModuleFuncs{})
	require.ErrorContains(t, err, "db")
	require.Len(t, a.Modules(), 1)

	require.NoError(t, a.Start(t.Context()))
	_, err = a.Register("late", supervisor.ModuleFuncs{})
	require.ErrorContains(t, err, "late")
	require.Nil(t, a.Module("late"))
	require.NoError(t, a.Shutdown(t.Context()))
}

func TestAppStartRefusesUnknownDependenciesAndCyclesNamingTheModules(t *testing.T) {
	cases := []struct {
		name    string
		modules [][]string // name, deps...
		names   []string   // the error names them all
	}{
		{"unknown dependency", [][]string{{"api", "store"}, {"store", "nosuch"}}, []string{`"store"`, `"nosuch"`}},
		{"self cycle", [][]string{{"a", "a"}}, []string{"a -> a"}},
		{"cycle", [][]string{{"x"}, {"a", "b"}, {"b", "c"}, {"c", "a"}}, []string{"a -> b -> c -> a"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var calls moduleCalls
			a := moduleApp(supervisor.AppOptions{Prep: func() error { calls.add("app:prep"); return nil }})
			for _, m := range tc.modules {
				moduleRegister(t, a, m[0], calls.funcs(m[0]), m[1:]...)
			}
			err := a.Start(t.Context())
			require.Error(t, err)
			for _, n := range tc.names {
				require.ErrorContains(t, err, n)
			}
			require.Empty(t, calls.all(), "nothing may run")
			for name, s := range moduleStatuses(a) {
				require.Equal(t, supervisor.StatusDead, s, name)
			}
			require.NoError(t, a.Shutdown(t.Context()))
		})
	}
}

func TestAppStartRunsAppPrepThenEveryPrepThenEveryStartInDependencyOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls moduleCalls
		a := moduleApp(supervisor.AppOptions{Prep: func() error { calls.add("app:prep"); return nil }})
		// api → store → config; metrics and log are independent (ties:
		// registration order).
		moduleRegister(t, a, "metrics", calls.funcs("metrics"))
		moduleRegister(t, a, "api", calls.funcs("api"), "store")
		moduleRegister(t, a, "store", calls.funcs("store"), "config")
		moduleRegister(t, a, "config", calls.funcs("config"))
		moduleRegister(t, a, "log", calls.funcs("log"))
		require.NoError(t, a.Start(t.Context()))
		order := []string{"metrics", "config", "store", "api", "log"}
		var want []string
		want = append(want, "app:prep")
		for _, n := range order {
			want = append(want, n+":prep")
		}
		for _, n := range order {
			want = append(want, n+":start")
		}
		require.Equal(t, want, calls.all())
		for name, s := range moduleStatuses(a) {
			require.Equal(t, supervisor.StatusOnline, s, name)
		}
		require.Equal(t, []*supervisor.Module{a.Module("store")}, a.Module("api").Dependencies())

		require.NoError(t, a.Shutdown(t.Context()))
		var stops []string
		for _, n := range slices.Backward(order) {
			stops = append(stops, n+":stop")
		}
		require.Equal(t, stops, calls.only(":stop"), "reverse dependency order")
	})
}

func TestAppStartOrderIsDeterministic(t *testing.T) {
	var first []string
	for range 20 {
		var calls moduleCalls
		a := moduleApp(supervisor.AppOptions{})
		for i, n := range []string{"e", "d", "c", "b", "a", "f"} {
			var deps []string
			if i%2 == 0 && n != "a" {
				deps = []string{"a"}
			}
			moduleRegister(t, a, n, calls.funcs(n), deps...)
		}
		require.NoError(t, a.Start(t.Context()))
		require.NoError(t, a.Shutdown(t.Context()))
		if first == nil {
			first = calls.all()
			continue
		}
		require.Equal(t, first, calls.all())
	}
}

func TestAppFailedStartStopsStartedModulesInReverseAndNamesTheFailedOne(t *testing.T) {
	cases := []struct {
		name    string
		start   func(ctx context.Context, m *supervisor.Module) error
		elapsed time.Duration
	}{
		{"error", func(context.Context, *supervisor.Module) error { return errBoom }, 0},
		{"panic", func(context.Context, *supervisor.Module) error { panic("kaput") }, 0},
		{"timeout", func(ctx context.Context, _ *supervisor.Module) error { <-ctx.Done(); return nil }, 5 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var calls moduleCalls
				a := moduleApp(supervisor.AppOptions{StartTimeout: 5 * time.Second})
				moduleRegister(t, a, "config", calls.funcs("config"))
				moduleRegister(t, a, "store", calls.funcs("store"), "config")
				bad := calls.funcs("broken")
				bad.Start = func(ctx context.Context, m *supervisor.Module) error {
					calls.add("broken:start")
					return tc.start(ctx, m)
				}
				broken := moduleRegister(t, a, "broken", bad, "store")
				moduleRegister(t, a, "api", calls.funcs("api"), "broken")

				begin := time.Now()
				err := a.Start(t.Context())
				require.Error(t, err)
				require.ErrorContains(t, err, `"broken"`)
				require.Equal(t, tc.elapsed, time.Since(begin))
				require.Equal(t, []string{"config:start", "store:start", "broken:start"}, calls.only(":start"))
				require.Equal(t, []string{"store:stop", "config:stop"}, calls.only(":stop"), "the failed module's Stop is not called")

				level, id, _ := broken.FailureStatus()
				require.Equal(t, supervisor.FailureError, level)
				require.Equal(t, "broken:start-failed", id)
				for name, s := range moduleStatuses(a) {
					require.NotContains(t, []supervisor.ModuleStatus{supervisor.StatusStarting, supervisor.StatusPreparing}, s, name)
				}
				require.Equal(t, supervisor.StatusOffline, a.Module("api").Status(), "prepped, never started")
				require.NoError(t, a.Shutdown(t.Context()))
			})
		})
	}
}

func TestAppFailedPrepLeavesModuleDeadWithPrepFailedStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls moduleCalls
		a := moduleApp(supervisor.AppOptions{})
		moduleRegister(t, a, "config", calls.funcs("config"))
		bad := calls.funcs("store")
		bad.Prep = func(context.Context, *supervisor.Module) error { return errBoom }
		store := moduleRegister(t, a, "store", bad, "config")
		err := a.Start(t.Context())
		require.ErrorIs(t, err, errBoom)
		require.ErrorContains(t, err, `"store"`)
		require.Empty(t, calls.only(":start"))
		require.Equal(t, supervisor.StatusDead, store.Status())
		level, id, _ := store.FailureStatus()
		require.Equal(t, supervisor.FailureError, level)
		require.Equal(t, "store:prep-failed", id)
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestAppStartReturnsErrCleanExitFromAPrepAndStartsNothing(t *testing.T) {
	cases := []struct {
		name    string
		appPrep bool
	}{{"module prep", false}, {"app prep", true}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var calls moduleCalls
				o := supervisor.AppOptions{}
				if tc.appPrep {
					o.Prep = func() error { return fmt.Errorf("version printed: %w", supervisor.ErrCleanExit) }
				}
				a := moduleApp(o)
				moduleRegister(t, a, "config", calls.funcs("config"))
				fns := calls.funcs("cli")
				if !tc.appPrep {
					fns.Prep = func(context.Context, *supervisor.Module) error {
						return fmt.Errorf("version printed: %w", supervisor.ErrCleanExit)
					}
				}
				moduleRegister(t, a, "cli", fns)
				err := a.Start(t.Context())
				require.ErrorIs(t, err, supervisor.ErrCleanExit)
				require.Empty(t, calls.only(":start"))
				require.Empty(t, a.Kernel().Recent(), "a clean exit is no failure")
				require.NoError(t, a.Shutdown(t.Context()))
			})
		})
	}
}

func TestAppShutdownWaitsForWorkersThenCallsStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls moduleCalls
		a := moduleApp(supervisor.AppOptions{})
		fns := calls.funcs("store")
		fns.Start = func(_ context.Context, m *supervisor.Module) error {
			m.StartWorker("flush", func(ctx context.Context) error {
				<-ctx.Done()
				time.Sleep(3 * time.Second) // flushing
				calls.add("store:flushed")
				return nil
			})
			return nil
		}
		moduleRegister(t, a, "store", fns)
		require.NoError(t, a.Start(t.Context()))
		begin := time.Now()
		require.NoError(t, a.Shutdown(t.Context()))
		require.Equal(t, 3*time.Second, time.Since(begin))
		require.Equal(t, []string{"store:prep", "store:flushed", "store:stop"}, calls.all())
	})
}

func TestAppShutdownGivesUpOnWorkersAfterStopTimeoutAndStillCallsStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls moduleCalls
		release := make(chan struct{})
		var log moduleLog
		a := moduleApp(supervisor.AppOptions{StopTimeout: 7 * time.Second, Logger: log.logger()})
		fns := calls.funcs("stuck")
		fns.Start = func(_ context.Context, m *supervisor.Module) error {
			m.StartWorker("deaf", func(context.Context) error { <-release; return nil })
			return nil
		}
		moduleRegister(t, a, "stuck", fns)
		moduleRegister(t, a, "after", calls.funcs("after"), "stuck")
		require.NoError(t, a.Start(t.Context()))
		begin := time.Now()
		require.NoError(t, a.Shutdown(t.Context()))
		require.Equal(t, 7*time.Second, time.Since(begin))
		require.Equal(t, []string{"after:stop", "stuck:stop"}, calls.only(":stop"))
		require.Contains(t, log.String(), "deaf", "the log names what still runs")
		close(release)
	})
}

func TestAppShutdownJoinsStopErrorsAndStopsEveryModule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls moduleCalls
		var log moduleLog
		errA, errC := errors.New("a broke"), errors.New("c broke")
		a := moduleApp(supervisor.AppOptions{Logger: log.logger()})
		for _, n := range []string{"a", "b", "c"} {
			fns := calls.funcs(n)
			failWith := map[string]error{"a": errA, "c": errC}[n]
			if failWith != nil {
				fns.Stop = func(context.Context, *supervisor.Module) error { calls.add(n + ":stop"); return failWith }
			}
			if n == "b" {
				fns.Stop = func(context.Context, *supervisor.Module) error { calls.add(n + ":stop"); panic("b panics") }
			}
			moduleRegister(t, a, n, fns)
		}
		require.NoError(t, a.Start(t.Context()))
		err := a.Shutdown(t.Context())
		require.ErrorIs(t, err, errA)
		require.ErrorIs(t, err, errC)
		_, isPanic := supervisor.IsPanic(err)
		require.True(t, isPanic)
		require.Equal(t, []string{"c:stop", "b:stop", "a:stop"}, calls.only(":stop"))
		for name, s := range moduleStatuses(a) {
			require.Equal(t, supervisor.StatusOffline, s, name)
		}

		// A second Shutdown does nothing more, and says so.
		before := log.String()
		again := a.Shutdown(t.Context())
		require.Greater(t, len(log.String()), len(before), "the second Shutdown logs")
		require.Equal(t, []string{"c:stop", "b:stop", "a:stop"}, calls.only(":stop"))
		require.ErrorIs(t, again, errA)
	})
}

func TestAppStartRefusesASecondStartAndAStartAfterShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls moduleCalls
		a := moduleApp(supervisor.AppOptions{})
		moduleRegister(t, a, "m", calls.funcs("m"))
		require.NoError(t, a.Start(t.Context()))
		require.Error(t, a.Start(t.Context()))
		require.NoError(t, a.Shutdown(t.Context()))

		b := moduleApp(supervisor.AppOptions{})
		moduleRegister(t, b, "m", calls.funcs("n"))
		require.NoError(t, b.Shutdown(t.Context()))
		require.Error(t, b.Start(t.Context()))
		require.Equal(t, []string{"m:prep", "m:start", "m:stop"}, calls.all())
	})
}

func TestAppShutdownCancelsModuleContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		var startCtx context.Context
		var stopSawCancelled bool
		m := moduleRegister(t, a, "m", supervisor.ModuleFuncs{
			Start: func(_ context.Context, m *supervisor.Module) error { startCtx = m.Ctx(); return nil },
			Stop: func(_ context.Context, m *supervisor.Module) error {
				stopSawCancelled = startCtx.Err() != nil
				return nil
			},
		})
		require.Error(t, m.Ctx().Err(), "not live before start")
		require.NoError(t, a.Start(t.Context()))
		require.NoError(t, startCtx.Err())
		require.NoError(t, a.Shutdown(t.Context()))
		require.True(t, stopSawCancelled)
		require.True(t, a.IsShuttingDown())
		require.True(t, moduleClosed(a.ShuttingDown()))
	})
}

func TestAppGetExitStatusCodeBlocksUntilShutdownCompleted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		moduleRegister(t, a, "slow", supervisor.ModuleFuncs{
			Stop: func(context.Context, *supervisor.Module) error { time.Sleep(time.Second); return nil },
		})
		require.NoError(t, a.Start(t.Context()))
		a.SetExitStatusCode(4)
		var code atomic.Int32
		code.Store(-1)
		go func() { code.Store(int32(a.GetExitStatusCode())) }()
		synctest.Wait()
		require.EqualValues(t, -1, code.Load())
		go func() { _ = a.Shutdown(context.Background()) }()
		synctest.Wait()
		require.EqualValues(t, -1, code.Load(), "shutdown has not completed")
		time.Sleep(time.Second)
		synctest.Wait()
		require.EqualValues(t, 4, code.Load())
	})
}

// Run installs signal handlers: not in a synctest bubble.
func TestAppRunReturnsExitCode(t *testing.T) {
	cases := []struct {
		name    string
		start   func(context.Context, *supervisor.Module) error
		setCode int // 0: none
		want    int
	}{
		{"clean", func(context.Context, *supervisor.Module) error { return nil }, 0, 0},
		{"clean without a Start function", nil, 0, 0},
		{"start error", func(context.Context, *supervisor.Module) error { return errBoom }, 0, 1},
		{"start error with a code set", func(context.Context, *supervisor.Module) error { return errBoom }, 3, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := moduleApp(supervisor.AppOptions{})
			stopped := false
			moduleRegister(t, a, "m", supervisor.ModuleFuncs{
				Start: tc.start,
				Stop:  func(context.Context, *supervisor.Module) error { stopped = true; return nil },
			})
			if tc.setCode != 0 {
				a.SetExitStatusCode(tc.setCode)
			}
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			require.Equal(t, tc.want, a.Run(ctx), "kernel decisions: %v", a.Kernel().Recent())
			require.Equal(t, tc.want, a.GetExitStatusCode())
			require.True(t, a.IsShuttingDown())
			require.Equal(t, tc.want == 0, stopped)
		})
	}
}

func TestAppRunExitsZeroOnErrCleanExit(t *testing.T) {
	a := moduleApp(supervisor.AppOptions{Prep: func() error { return supervisor.ErrCleanExit }})
	moduleRegister(t, a, "m", supervisor.ModuleFuncs{})
	require.Equal(t, 0, a.Run(t.Context()))
}

func TestAppRunEndsOnShutdown(t *testing.T) {
	a := moduleApp(supervisor.AppOptions{})
	moduleRegister(t, a, "m", supervisor.ModuleFuncs{
		Start: func(_ context.Context, m *supervisor.Module) error {
			m.StartWorker("shutter", func(context.Context) error {
				go func() { _ = a.Shutdown(context.Background()) }()
				return nil
			})
			return nil
		},
	})
	require.Equal(t, 0, a.Run(t.Context()))
}

// 2. Status.

func TestModuleStatusFollowsItsLife(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		type seen struct {
			status              supervisor.ModuleStatus
			online, soon, stopg bool
			stoppingClosed      bool
			startCompleted      bool
		}
		var mu sync.Mutex
		observed := map[string]seen{}
		look := func(phase string, m *supervisor.Module) {
			mu.Lock()
			defer mu.Unlock()
			observed[phase] = seen{m.Status(), m.Online(), m.OnlineSoon(), m.IsStopping(),
				moduleClosed(m.Stopping()), moduleClosed(m.StartCompleted())}
		}
		a := moduleApp(supervisor.AppOptions{})
		m := moduleRegister(t, a, "m", supervisor.ModuleFuncs{
			Prep:  func(_ context.Context, m *supervisor.Module) error { look("prep", m); return nil },
			Start: func(_ context.Context, m *supervisor.Module) error { look("start", m); return nil },
			Stop:  func(_ context.Context, m *supervisor.Module) error { look("stop", m); return nil },
		})
		look("registered", m)
		completed := m.StartCompleted()
		require.NoError(t, a.Start(t.Context()))
		look("online", m)
		require.True(t, moduleClosed(completed))
		require.NoError(t, a.Shutdown(t.Context()))
		look("offline", m)

		require.Equal(t, map[string]seen{
			"registered": {status: supervisor.StatusDead},
			"prep":       {status: supervisor.StatusPreparing},
			"start":      {status: supervisor.StatusStarting, soon: true},
			"online":     {status: supervisor.StatusOnline, online: true, soon: true, startCompleted: true},
			"stop":       {status: supervisor.StatusStopping, stopg: true, stoppingClosed: true, startCompleted: true},
			"offline":    {status: supervisor.StatusOffline, stoppingClosed: true},
		}, observed)
	})
}

func TestModuleStatusValuesAndNames(t *testing.T) {
	cases := []struct {
		s    supervisor.ModuleStatus
		n    uint8
		name string
	}{
		{supervisor.StatusDead, 0, "dead"},
		{supervisor.StatusPreparing, 1, "preparing"},
		{supervisor.StatusOffline, 2, "offline"},
		{supervisor.StatusStopping, 3, "stopping"},
		{supervisor.StatusStarting, 4, "starting"},
		{supervisor.StatusOnline, 5, "online"},
	}
	for _, tc := range cases {
		require.Equal(t, tc.n, uint8(tc.s))
		require.Equal(t, tc.name, tc.s.String())
	}
	levels := []supervisor.FailureLevel{supervisor.FailureNone, supervisor.FailureHint, supervisor.FailureWarning, supervisor.FailureError}
	for i, l := range levels {
		require.Equal(t, uint8(i), uint8(l))
		require.Equal(t, []string{"none", "hint", "warning", "error"}[i], l.String())
	}
}

func TestModuleStartCompletedAndStoppingAreReArmedWhenTheModuleStartsAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		require.True(t, a.EnableModuleManagement(nil))
		m := moduleRegister(t, a, "m", supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		require.True(t, moduleClosed(m.StartCompleted()))
		require.False(t, moduleClosed(m.Stopping()))

		m.Disable()
		require.NoError(t, a.ManageModules())
		require.Equal(t, supervisor.StatusOffline, m.Status())
		require.True(t, moduleClosed(m.Stopping()))
		completed := m.StartCompleted()
		require.False(t, moduleClosed(completed), "re-armed by the stop")

		m.Enable()
		require.NoError(t, a.ManageModules())
		require.Equal(t, supervisor.StatusOnline, m.Status())
		require.True(t, moduleClosed(completed))
		require.True(t, moduleClosed(m.StartCompleted()))
		stopping := m.Stopping()
		require.False(t, moduleClosed(stopping), "re-armed by the start")
		require.NoError(t, a.Shutdown(t.Context()))
		require.True(t, moduleClosed(stopping))
	})
}

// 3. Failure status.

func TestModuleFailureStatusHasOneSlot(t *testing.T) {
	type status struct {
		level   supervisor.FailureLevel
		id, msg string
	}
	steps := []struct {
		name string
		do   func(m *supervisor.Module)
		want status
	}{
		{"hint", func(m *supervisor.Module) { m.Hint("cfg", "check config") }, status{supervisor.FailureHint, "cfg", "check config"}},
		{"same id ignored", func(m *supervisor.Module) { m.Error("cfg", "other") }, status{supervisor.FailureHint, "cfg", "check config"}},
		{"another id replaces", func(m *supervisor.Module) { m.Warning("disk", "disk full") }, status{supervisor.FailureWarning, "disk", "disk full"}},
		{"resolve another id keeps", func(m *supervisor.Module) { m.Resolve("cfg") }, status{supervisor.FailureWarning, "disk", "disk full"}},
		{"resolve the id clears", func(m *supervisor.Module) { m.Resolve("disk") }, status{}},
		{"error", func(m *supervisor.Module) { m.Error("net", "down") }, status{supervisor.FailureError, "net", "down"}},
		{"lower level, other id replaces", func(m *supervisor.Module) { m.Hint("tip", "hint") }, status{supervisor.FailureHint, "tip", "hint"}},
		{"resolve any", func(m *supervisor.Module) { m.Resolve("") }, status{}},
		{"after clearing the same id is set again", func(m *supervisor.Module) { m.Hint("tip", "again") }, status{supervisor.FailureHint, "tip", "again"}},
	}
	a := moduleApp(supervisor.AppOptions{})
	m := moduleRegister(t, a, "m", supervisor.ModuleFuncs{})
	for _, step := range steps {
		step.do(m)
		level, id, msg := m.FailureStatus()
		require.Equal(t, step.want, status{level, id, msg}, step.name)
	}
}

func TestModuleFailureStatusIsClearedOnStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		m := moduleRegister(t, a, "m", supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		m.Error("x", "broken")
		require.NoError(t, a.Shutdown(t.Context()))
		level, id, _ := m.FailureStatus()
		require.Equal(t, supervisor.FailureNone, level)
		require.Empty(t, id)
	})
}

// Events and hooks.

// moduleEventApp registers "source" with event "changed" and "sink" that
// depends on it and hooks it with hook.
func moduleEventApp(t *testing.T, a *supervisor.App, sourceFns supervisor.ModuleFuncs, sinkFns supervisor.ModuleFuncs,
	hook func(context.Context, any) error,
) (source, sink *supervisor.Module) {
	t.Helper()
	sourcePrep := sourceFns.Prep
	sourceFns.Prep = func(ctx context.Context, m *supervisor.Module) error {
		m.RegisterEvent("changed")
		if sourcePrep != nil {
			return sourcePrep(ctx, m)
		}
		return nil
	}
	source = moduleRegister(t, a, "source", sourceFns)
	sinkPrep := sinkFns.Prep
	sinkFns.Prep = func(ctx context.Context, m *supervisor.Module) error {
		if err := m.RegisterEventHook("source", "changed", "react", hook); err != nil {
			return err
		}
		if sinkPrep != nil {
			return sinkPrep(ctx, m)
		}
		return nil
	}
	sink = moduleRegister(t, a, "sink", sinkFns, "source")
	return source, sink
}

func TestModuleRegisterEventHookNeedsAnExistingModuleAndEvent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		var errs []error
		moduleRegister(t, a, "source", supervisor.ModuleFuncs{
			Prep: func(_ context.Context, m *supervisor.Module) error { m.RegisterEvent("changed"); return nil },
		})
		hook := func(context.Context, any) error { return nil }
		moduleRegister(t, a, "sink", supervisor.ModuleFuncs{
			Prep: func(_ context.Context, m *supervisor.Module) error {
				errs = append(errs,
					m.RegisterEventHook("nosuch", "changed", "a", hook),
					m.RegisterEventHook("source", "nosuch", "b", hook),
					m.RegisterEventHook("source", "changed", "c", hook))
				return nil
			},
		}, "source")
		require.NoError(t, a.Start(t.Context()))
		require.Len(t, errs, 3)
		require.ErrorContains(t, errs[0], "nosuch")
		require.ErrorContains(t, errs[1], "nosuch")
		require.NoError(t, errs[2])
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestModuleEventHookRunsAsWorkerOfTheHookingModule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log := &failureLog{}
		a := moduleApp(supervisor.AppOptions{Kernel: quietKernel(log.answer(supervisor.Abort))})
		var got []any
		var hookCtx context.Context
		source, sink := moduleEventApp(t, a, supervisor.ModuleFuncs{}, supervisor.ModuleFuncs{},
			func(ctx context.Context, data any) error { got = append(got, data); hookCtx = ctx; return errBoom })
		require.NoError(t, a.Start(t.Context()))
		source.TriggerEvent("changed", 42)
		synctest.Wait()
		require.Equal(t, []any{42}, got)
		require.Error(t, hookCtx.Err(), "a worker's ctx is cancelled when it returns")
		failures := log.all()
		require.Len(t, failures, 1)
		require.Contains(t, failures[0].Process, "sink/")
		_ = sink
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestModuleTriggerDuringSourceStartRunsHookOnceBothAreOnline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		var ran atomic.Int32
		var sinkOnline, sourceOnline atomic.Bool
		var source, sink *supervisor.Module
		source, sink = moduleEventApp(t, a,
			supervisor.ModuleFuncs{Start: func(_ context.Context, m *supervisor.Module) error {
				m.TriggerEvent("changed", "initial")
				time.Sleep(time.Second)
				return nil
			}},
			supervisor.ModuleFuncs{Start: func(context.Context, *supervisor.Module) error {
				time.Sleep(time.Second)
				return nil
			}},
			func(context.Context, any) error {
				ran.Add(1)
				sourceOnline.Store(source.Online())
				sinkOnline.Store(sink.Online())
				return nil
			})
		require.NoError(t, a.Start(t.Context()))
		synctest.Wait()
		require.EqualValues(t, 1, ran.Load(), "the hook of a trigger during the source's start runs once both are online")
		require.True(t, sourceOnline.Load())
		require.True(t, sinkOnline.Load())
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestModuleTriggerEventNeverBlocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		var running atomic.Int32
		source, _ := moduleEventApp(t, a, supervisor.ModuleFuncs{}, supervisor.ModuleFuncs{},
			func(ctx context.Context, _ any) error { running.Add(1); <-ctx.Done(); return nil })
		require.NoError(t, a.Start(t.Context()))
		begin := time.Now()
		for i := range 3 {
			source.TriggerEvent("changed", i)
		}
		require.Zero(t, time.Since(begin))
		synctest.Wait()
		require.EqualValues(t, 3, running.Load())
		require.Equal(t, 3, moduleSnapshot(a, "sink").Workers)
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestModuleEventHookIsDroppedWhileTheHookingModuleIsStoppingOrOffline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		require.True(t, a.EnableModuleManagement(nil))
		var ran atomic.Int32
		var source *supervisor.Module
		source, sink := moduleEventApp(t, a, supervisor.ModuleFuncs{},
			supervisor.ModuleFuncs{Stop: func(context.Context, *supervisor.Module) error {
				source.TriggerEvent("changed", "while stopping")
				return nil
			}},
			func(context.Context, any) error { ran.Add(1); return nil })
		require.NoError(t, a.Start(t.Context()))
		sink.Disable()
		require.NoError(t, a.ManageModules())
		require.Equal(t, supervisor.StatusOffline, sink.Status())
		source.TriggerEvent("changed", "while offline")
		synctest.Wait()
		require.Zero(t, ran.Load())

		sink.Enable()
		require.NoError(t, a.ManageModules())
		source.TriggerEvent("changed", "online")
		synctest.Wait()
		require.EqualValues(t, 1, ran.Load())
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestModuleInjectEventRunsTheTargetsHooks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		var got []any
		_, _ = moduleEventApp(t, a, supervisor.ModuleFuncs{}, supervisor.ModuleFuncs{},
			func(_ context.Context, data any) error { got = append(got, data); return nil })
		other := moduleRegister(t, a, "other", supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		require.NoError(t, other.InjectEvent("mine", "source", "changed", "injected"))
		synctest.Wait()
		require.Equal(t, []any{"injected"}, got)
		require.Error(t, other.InjectEvent("mine", "source", "nosuch", nil))
		require.Error(t, other.InjectEvent("mine", "nosuch", "changed", nil))
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

// 4. Module management.

func TestAppEnableModuleManagementOnlyOnce(t *testing.T) {
	a := moduleApp(supervisor.AppOptions{})
	require.True(t, a.EnableModuleManagement(nil))
	require.False(t, a.EnableModuleManagement(nil))
}

func TestAppManagedStartStartsOnlyEnabledModulesAndTheirDependencies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls moduleCalls
		a := moduleApp(supervisor.AppOptions{})
		require.True(t, a.EnableModuleManagement(nil))
		base := moduleRegister(t, a, "base", calls.funcs("base"))
		moduleRegister(t, a, "api", calls.funcs("api"), "base")
		extra := moduleRegister(t, a, "extra", calls.funcs("extra"))
		base.Disable()
		require.True(t, extra.Disable())
		require.False(t, extra.Disable(), "no change")
		require.False(t, extra.Enabled())
		require.NoError(t, a.Start(t.Context()))
		require.True(t, base.EnabledAsDependency())
		require.False(t, extra.EnabledAsDependency())
		require.Equal(t, []string{"base:start", "api:start"}, calls.only(":start"))
		require.Equal(t, supervisor.StatusOnline, base.Status())
		require.NotEqual(t, supervisor.StatusOnline, extra.Status())
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestAppManageModulesStopsASharedDependencyAfterItsLastEnabledDependent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls moduleCalls
		a := moduleApp(supervisor.AppOptions{})
		require.True(t, a.EnableModuleManagement(nil))
		shared := moduleRegister(t, a, "shared", calls.funcs("shared"))
		one := moduleRegister(t, a, "one", calls.funcs("one"), "shared")
		two := moduleRegister(t, a, "two", calls.funcs("two"), "shared")
		shared.Disable()
		require.NoError(t, a.Start(t.Context()))
		require.Equal(t, []string{"shared:start", "one:start", "two:start"}, calls.only(":start"))

		one.Disable()
		require.NoError(t, a.ManageModules())
		require.Equal(t, []string{"one:stop"}, calls.only(":stop"))
		require.Equal(t, supervisor.StatusOnline, shared.Status())
		require.True(t, shared.EnabledAsDependency())

		two.Disable()
		require.False(t, shared.EnabledAsDependency())
		require.NoError(t, a.ManageModules())
		require.Equal(t, []string{"one:stop", "two:stop", "shared:stop"}, calls.only(":stop"))
		require.Equal(t, supervisor.StatusOffline, shared.Status())

		one.Enable()
		require.NoError(t, a.ManageModules())
		require.Equal(t, []string{"shared:start", "one:start", "two:start", "shared:start", "one:start"}, calls.only(":start"))
		require.Equal(t, supervisor.StatusOffline, two.Status())
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestAppManageModulesNeedsManagementAndARunningApp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		require.Error(t, a.ManageModules())
		a.EnableModuleManagement(nil)
		require.ErrorIs(t, a.ManageModules(), supervisor.ErrNotRunning)
		require.NoError(t, a.Start(t.Context()))
		require.NoError(t, a.Shutdown(t.Context()))
		require.ErrorIs(t, a.ManageModules(), supervisor.ErrNotRunning)
	})
}

func TestAppModuleChangedCallbackRunsOnItsOwnGoroutineAndMayManageModules(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		var mu sync.Mutex
		var changes []string
		var manageErrs []error
		require.True(t, a.EnableModuleManagement(func(m *supervisor.Module) {
			mu.Lock()
			changes = append(changes, m.Name()+":"+m.Status().String())
			mu.Unlock()
			err := a.ManageModules() // must not deadlock
			mu.Lock()
			manageErrs = append(manageErrs, err)
			mu.Unlock()
		}))
		m := moduleRegister(t, a, "m", supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		synctest.Wait()
		m.Disable()
		require.NoError(t, a.ManageModules())
		synctest.Wait()
		mu.Lock()
		require.Equal(t, []string{"m:online", "m:offline"}, changes)
		for _, err := range manageErrs {
			require.NoError(t, err)
		}
		mu.Unlock()
		require.NoError(t, a.Shutdown(t.Context()))
	})
}

func TestAppModuleChangedCallbacksDoNotOutliveShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{})
		var inFlight atomic.Int32
		a.EnableModuleManagement(func(*supervisor.Module) {
			inFlight.Add(1)
			defer inFlight.Add(-1)
			time.Sleep(time.Second)
		})
		moduleRegister(t, a, "m", supervisor.ModuleFuncs{})
		require.NoError(t, a.Start(t.Context()))
		require.NoError(t, a.Shutdown(t.Context()))
		synctest.Wait()
		require.Zero(t, inFlight.Load(), "a changed callback still runs after Shutdown returned")
	})
}

// 8. ModuleError and the status snapshot.

func TestModuleErrorConstructorsCarryModuleTaskTypeSeverityAndStack(t *testing.T) {
	a := moduleApp(supervisor.AppOptions{})
	m := moduleRegister(t, a, "store", supervisor.ModuleFuncs{})

	e := m.NewErrorMessage("flush", errBoom)
	require.Equal(t, "store", e.ModuleName)
	require.Equal(t, "flush", e.TaskName)
	require.Equal(t, "error", e.Severity)
	require.NotEmpty(t, e.TaskType)
	require.Equal(t, errBoom.Error(), e.Message)
	require.ErrorIs(t, e, errBoom)

	i := m.NewInfoMessage("all good")
	require.Equal(t, "store", i.ModuleName)
	require.Equal(t, "info", i.Severity)
	require.Equal(t, "all good", i.Message)

	p := m.NewPanicError("loop", "service-worker", "kaput")
	require.Equal(t, "store", p.ModuleName)
	require.Equal(t, "loop", p.TaskName)
	require.Equal(t, "service-worker", p.TaskType)
	require.Equal(t, "panic", p.Severity)
	require.Equal(t, "kaput", p.PanicValue)
	require.Contains(t, p.StackTrace, "TestModuleErrorConstructorsCarryModuleTaskTypeSeverityAndStack")
	pe, ok := supervisor.IsPanic(p)
	require.True(t, ok)
	require.Equal(t, "kaput", pe.Value)
}

// moduleSnapshot returns the snapshot of module name in a's status.
func moduleSnapshot(a *supervisor.App, name string) supervisor.ModuleSnapshot {
	for _, ms := range a.Status().Modules {
		if ms.Name == name {
			return ms
		}
	}
	return supervisor.ModuleSnapshot{}
}

func TestAppStatusListsEveryModuleWithFailureStatusAndWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := moduleApp(supervisor.AppOptions{Name: "shop"})
		moduleRegister(t, a, "config", supervisor.ModuleFuncs{})
		moduleRegister(t, a, "api", supervisor.ModuleFuncs{
			Start: func(_ context.Context, m *supervisor.Module) error {
				m.StartWorker("a", serve)
				m.StartWorker("b", serve)
				m.StartServiceWorker("c", time.Second, serve)
				m.Warning("slow", "slow disk")
				return nil
			},
		}, "config")
		require.NoError(t, a.Start(t.Context()))
		synctest.Wait()
		st := a.Status()
		require.Equal(t, "shop", st.Name)
		require.False(t, st.ShuttingDown)
		require.Equal(t, []supervisor.ModuleSnapshot{
			{Name: "config", Status: supervisor.StatusOnline, Enabled: true},
			{Name: "api", Status: supervisor.StatusOnline, Enabled: true, Workers: 3,
				FailureLevel: supervisor.FailureWarning, FailureID: "slow", FailureMessage: "slow disk"},
		}, st.Modules)
		require.NoError(t, a.Shutdown(t.Context()))
		st = a.Status()
		require.True(t, st.ShuttingDown)
		require.Zero(t, st.Modules[1].Workers)
	})
}

// Isolation.

func TestTwoAppsNeverSeeEachOther(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := [2]*failureLog{{}, {}}
		apps := [2]*supervisor.App{}
		mods := [2]*supervisor.Module{}
		for i := range apps {
			apps[i] = moduleApp(supervisor.AppOptions{Kernel: quietKernel(logs[i].answer(supervisor.Abort))})
			mods[i] = moduleRegister(t, apps[i], "same", supervisor.ModuleFuncs{
				Prep: func(_ context.Context, m *supervisor.Module) error { m.RegisterEvent("e"); return nil },
			})
			require.True(t, apps[i].EnableModuleManagement(nil))
		}
		for _, a := range apps {
			require.NoError(t, a.Start(t.Context()))
		}
		require.ErrorIs(t, mods[0].RunWorker("w", func(context.Context) error { return errBoom }), errBoom)
		mods[0].Error("x", "only in app 0")
		require.Len(t, logs[0].all(), 1)
		require.Empty(t, logs[1].all())
		level, _, _ := mods[1].FailureStatus()
		require.Equal(t, supervisor.FailureNone, level)

		require.NoError(t, apps[0].Shutdown(t.Context()))
		require.False(t, apps[1].IsShuttingDown())
		require.True(t, mods[1].Online())
		require.NoError(t, apps[1].ManageModules())
		require.Same(t, mods[1], apps[1].Module("same"))
		require.NoError(t, apps[1].Shutdown(t.Context()))
	})
}

func TestAppConcurrentManageModulesStartsEachModuleOnce(t *testing.T) {
	for range 200 {
		synctest.Test(t, func(t *testing.T) {
			var starts [4]atomic.Int32
			a := moduleApp(supervisor.AppOptions{})
			a.EnableModuleManagement(func(*supervisor.Module) { _ = a.ManageModules() })
			var mods []*supervisor.Module
			for i := range starts {
				mods = append(mods, moduleRegister(t, a, fmt.Sprint("m", i), supervisor.ModuleFuncs{
					Start: func(context.Context, *supervisor.Module) error { starts[i].Add(1); return nil },
				}))
				mods[i].Disable()
			}
			require.NoError(t, a.Start(t.Context()))
			for _, m := range mods {
				m.Enable()
			}
			var wg sync.WaitGroup
			for range 3 {
				wg.Go(func() { _ = a.ManageModules() })
			}
			wg.Wait()
			synctest.Wait()
			for i := range starts {
				require.EqualValues(t, 1, starts[i].Load(), "starts of m%d", i)
			}
			require.NoError(t, a.Shutdown(t.Context()))
		})
	}
}
