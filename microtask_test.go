package supervisor_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// microFailures records the failures an App's kernel receives.
type microFailures struct {
	mu       sync.Mutex
	failures []supervisor.Failure
}

func (f *microFailures) policy(_ context.Context, failure supervisor.Failure) supervisor.Action {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, failure)
	return supervisor.Continue
}

func (f *microFailures) all() []supervisor.Failure {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]supervisor.Failure(nil), f.failures...)
}

// microApp starts an App of one module "mod" with options o (quiet, with a
// kernel recording into the returned microFailures); the test shuts it
// down.
func microApp(t *testing.T, o supervisor.AppOptions, fns supervisor.ModuleFuncs) (*supervisor.App, *supervisor.Module, *microFailures) {
	t.Helper()
	failures := &microFailures{}
	o.Logger = quietLogger()
	o.Kernel = quietKernel(failures.policy)
	app := supervisor.NewApp(o)
	m, err := app.Register("mod", fns)
	require.NoError(t, err)
	require.NoError(t, app.Start(t.Context()))
	return app, m, failures
}

// microLog records what ran, in order, and when (since its start).
type microLog struct {
	mu    sync.Mutex
	start time.Time
	names []string
	at    map[string]time.Duration
}

func newMicroLog() *microLog { return &microLog{start: time.Now(), at: map[string]time.Duration{}} }

// task returns a microtask that records its name.
func (l *microLog) task(name string) func(context.Context) error {
	return func(context.Context) error {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.names = append(l.names, name)
		l.at[name] = time.Since(l.start)
		return nil
	}
}

func (l *microLog) ran() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.names...)
}

func (l *microLog) when(name string) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.at[name]
	return d, ok
}

// microBlockers starts n high-priority microtasks that hold their slots
// until the returned release is called (each call releases one).
func microBlockers(m *supervisor.Module, n int) (release func()) {
	gate := make(chan struct{})
	for range n {
		m.StartMicroTask("blocker", func(context.Context) error {
			<-gate
			return nil
		})
	}
	return func() { gate <- struct{}{} }
}

func TestMicroTaskHighPriorityNeverWaitsEvenAtTheLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app, m, _ := microApp(t, supervisor.AppOptions{MaxConcurrentMicroTasks: 2}, supervisor.ModuleFuncs{})
		release := microBlockers(m, 2)
		start := time.Now()
		ran := false
		require.NoError(t, m.RunMicroTask("high", func(context.Context) error { ran = true; return nil }))
		require.True(t, ran)
		require.Zero(t, time.Since(start), "high priority waited")

		log := newMicroLog()
		m.StartMediumPriorityMicroTask("medium", log.task("medium"))
		synctest.Wait()
		require.Empty(t, log.ran(), "a medium microtask ran over the limit")
		release()
		synctest.Wait()
		require.Equal(t, []string{"medium"}, log.ran(), "a freed slot goes to the waiting microtask")
		release()
		require.NoError(t, app.Shutdown(t.Context()))
	})
}

func TestMicroTasksWaitForASlotMediumFirstEachInArrivalOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app, m, _ := microApp(t, supervisor.AppOptions{MaxConcurrentMicroTasks: 2}, supervisor.ModuleFuncs{})
		release := microBlockers(m, 2)
		log := newMicroLog()
		m.StartLowPriorityMicroTask("low1", log.task("low1"))
		m.StartMediumPriorityMicroTask("medium1", log.task("medium1"))
		var wg sync.WaitGroup
		wg.Go(func() { _ = m.RunLowPriorityMicroTask("low2", log.task("low2")) })
		synctest.Wait()
		wg.Go(func() { _ = m.RunMediumPriorityMicroTask("medium2", log.task("medium2")) })
		synctest.Wait()
		m.StartMediumPriorityMicroTask("medium3", log.task("medium3"))
		synctest.Wait()
		require.Empty(t, log.ran(), "nothing runs while the limit is reached")

		release() // one slot: the waiting ones run one after the other
		wg.Wait()
		synctest.Wait()
		require.Equal(t, []string{"medium1", "medium2", "medium3", "low1", "low2"}, log.ran())
		release()
		require.NoError(t, app.Shutdown(t.Context()))
	})
}

func TestMicroTaskWaitingLongerThanItsMaxWaitRunsAnyway(t *testing.T) {
	tests := []struct {
		name             string
		opts             supervisor.AppOptions
		wantMed, wantLow time.Duration
	}{
		{"defaults", supervisor.AppOptions{MaxConcurrentMicroTasks: 2}, 3 * time.Second, 15 * time.Second},
		{"custom", supervisor.AppOptions{MaxConcurrentMicroTasks: 2, MediumPriorityMaxWait: time.Second, LowPriorityMaxWait: 4 * time.Second}, time.Second, 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				app, m, _ := microApp(t, tt.opts, supervisor.ModuleFuncs{})
				release := microBlockers(m, 2)
				log := newMicroLog()
				m.StartLowPriorityMicroTask("low", log.task("low"))
				var medErr error
				done := make(chan struct{})
				go func() {
					medErr = m.RunMediumPriorityMicroTask("medium", log.task("medium"))
					close(done)
				}()
				time.Sleep(time.Minute)
				<-done
				require.NoError(t, medErr)
				at, ok := log.when("medium")
				require.True(t, ok, "medium never ran")
				require.Equal(t, tt.wantMed, at)
				at, ok = log.when("low")
				require.True(t, ok, "low never ran")
				require.Equal(t, tt.wantLow, at)
				release()
				release()
				require.NoError(t, app.Shutdown(t.Context()))
			})
		})
	}
}

func TestSetMaxConcurrentMicroTasksRaisingTheLimitGrantsWaitersAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app, m, _ := microApp(t, supervisor.AppOptions{MaxConcurrentMicroTasks: 2}, supervisor.ModuleFuncs{})
		release := microBlockers(m, 2)
		log := newMicroLog()
		hold := make(chan struct{})
		for _, name := range []string{"a", "b", "c"} {
			record := log.task(name)
			m.StartLowPriorityMicroTask(name, func(ctx context.Context) error {
				_ = record(ctx)
				<-hold // keeps its slot
				return nil
			})
		}
		synctest.Wait()
		require.Empty(t, log.ran())
		app.SetMaxConcurrentMicroTasks(4) // two more slots
		synctest.Wait()
		require.ElementsMatch(t, []string{"a", "b"}, log.ran(), "the first two waiters")
		app.SetMaxConcurrentMicroTasks(5)
		synctest.Wait()
		require.ElementsMatch(t, []string{"a", "b", "c"}, log.ran())
		require.Zero(t, time.Since(log.start))
		close(hold)
		release()
		release()
		require.NoError(t, app.Shutdown(t.Context()))
	})
}

func TestMicroTaskLimitIsNeverBelowTwo(t *testing.T) {
	tests := []struct {
		name  string
		opts  int
		set   bool
		setTo int
	}{
		{"option 1", 1, false, 0},
		{"option negative", -3, false, 0}, // 2×GOMAXPROCS ≥ 2
		{"set 1", 8, true, 1},
		{"set 0", 8, true, 0},
		{"set negative", 8, true, -5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				app, m, _ := microApp(t, supervisor.AppOptions{MaxConcurrentMicroTasks: tt.opts}, supervisor.ModuleFuncs{})
				if tt.set {
					app.SetMaxConcurrentMicroTasks(tt.setTo)
				}
				gate := make(chan struct{})
				var mu sync.Mutex
				running := 0
				for range 2 {
					m.StartMediumPriorityMicroTask("hold", func(context.Context) error {
						mu.Lock()
						running++
						mu.Unlock()
						<-gate
						return nil
					})
				}
				synctest.Wait()
				mu.Lock()
				require.Equal(t, 2, running, "two microtasks run at once")
				mu.Unlock()
				close(gate)
				require.NoError(t, app.Shutdown(t.Context()))
			})
		})
	}
}

func TestMicroTaskFailureIsReturnedFreesItsSlotAndReachesTheKernel(t *testing.T) {
	tests := []struct {
		name      string
		fn        func(context.Context) error
		wantPanic bool
		severity  string
	}{
		{"error", func(context.Context) error { return errBoom }, false, "error"},
		{"panic", func(context.Context) error { panic("kaboom") }, true, "panic"},
	}
	runs := map[string]func(*supervisor.Module, string, func(context.Context) error) error{
		"high":   (*supervisor.Module).RunMicroTask,
		"medium": (*supervisor.Module).RunMediumPriorityMicroTask,
		"low":    (*supervisor.Module).RunLowPriorityMicroTask,
	}
	for _, tt := range tests {
		for priority, run := range runs {
			t.Run(tt.name+"/"+priority, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					app, m, failures := microApp(t, supervisor.AppOptions{MaxConcurrentMicroTasks: 2}, supervisor.ModuleFuncs{})
					err := run(m, "flaky", tt.fn)
					require.Error(t, err)
					pe, isPanic := supervisor.IsPanic(err)
					require.Equal(t, tt.wantPanic, isPanic)
					if isPanic {
						require.Equal(t, "kaboom", pe.Value)
					} else {
						require.ErrorIs(t, err, errBoom)
					}

					got := failures.all()
					require.Len(t, got, 1, "the failure was reported once, before Run returned")
					f := got[0]
					require.Equal(t, "mod/flaky", f.Process)
					require.Equal(t, supervisor.Temporary, f.Restart)
					require.True(t, f.Exited)
					var me *supervisor.ModuleError
					require.ErrorAs(t, f.Err, &me)
					require.Equal(t, "microtask", me.TaskType)
					require.Equal(t, "mod", me.ModuleName)
					require.Equal(t, "flaky", me.TaskName)
					require.Equal(t, tt.severity, me.Severity)

					release := microBlockers(m, 1) // with the failed one's slot freed, one is left
					start := time.Now()
					require.NoError(t, m.RunMediumPriorityMicroTask("after", func(context.Context) error { return nil }))
					require.Zero(t, time.Since(start), "the failed microtask kept its slot")
					release()
					require.NoError(t, app.Shutdown(t.Context()))
				})
			})
		}
	}
}

func TestStartedMicroTaskFailureReachesTheKernel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app, m, failures := microApp(t, supervisor.AppOptions{}, supervisor.ModuleFuncs{})
		m.StartMediumPriorityMicroTask("bad", func(context.Context) error { panic("kaboom") })
		m.StartLowPriorityMicroTask("nil", nil)
		synctest.Wait()
		got := failures.all()
		require.Len(t, got, 2)
		processes := []string{got[0].Process, got[1].Process}
		require.ElementsMatch(t, []string{"mod/bad", "mod/nil"}, processes)
		require.NoError(t, app.Shutdown(t.Context()))
	})
}

func TestMicroTaskAfterShutdownBeganIsNotRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app, m, _ := microApp(t, supervisor.AppOptions{}, supervisor.ModuleFuncs{})
		require.NoError(t, app.Shutdown(t.Context()))
		called := false
		fn := func(context.Context) error { called = true; return nil }
		require.ErrorIs(t, m.RunMicroTask("late", fn), supervisor.ErrNotRunning)
		require.ErrorIs(t, m.RunMediumPriorityMicroTask("late", fn), supervisor.ErrNotRunning)
		require.ErrorIs(t, m.RunLowPriorityMicroTask("late", fn), supervisor.ErrNotRunning)
		m.StartMicroTask("late", fn)
		m.StartMediumPriorityMicroTask("late", fn)
		m.StartLowPriorityMicroTask("late", fn)
		synctest.Wait()
		require.False(t, called)
	})
}

func TestWaitingMicroTasksAreGrantedAtOnceWhenShutdownBegins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app, m, _ := microApp(t, supervisor.AppOptions{MaxConcurrentMicroTasks: 2}, supervisor.ModuleFuncs{})
		release := microBlockers(m, 2) // they ignore the module's context
		log := newMicroLog()
		m.StartLowPriorityMicroTask("low", log.task("low"))
		var wg sync.WaitGroup
		wg.Go(func() { _ = m.RunMediumPriorityMicroTask("medium", log.task("medium")) })
		synctest.Wait()
		require.Empty(t, log.ran())

		shutdown := make(chan error, 1)
		go func() { shutdown <- app.Shutdown(context.Background()) }()
		synctest.Wait()
		require.ElementsMatch(t, []string{"medium", "low"}, log.ran())
		require.Zero(t, time.Since(log.start))
		wg.Wait()
		release()
		release()
		require.NoError(t, <-shutdown)
	})
}

func TestModuleStopWaitsForItsMicroTasks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var stoppedAt time.Duration
		start := time.Now()
		fns := supervisor.ModuleFuncs{Stop: func(context.Context, *supervisor.Module) error {
			stoppedAt = time.Since(start)
			return nil
		}}
		app, m, _ := microApp(t, supervisor.AppOptions{MaxConcurrentMicroTasks: 2}, fns)
		var mu sync.Mutex
		var endedAt, queuedRanAt time.Duration
		slow := func(context.Context) error {
			time.Sleep(10 * time.Second) // ignores the context
			mu.Lock()
			defer mu.Unlock()
			endedAt = time.Since(start)
			return nil
		}
		m.StartMicroTask("slow", slow)
		m.StartMicroTask("slow2", slow)
		m.StartLowPriorityMicroTask("queued", func(context.Context) error {
			queuedRanAt = time.Since(start)
			return nil
		})
		synctest.Wait()
		require.NoError(t, app.Shutdown(t.Context()))
		require.Equal(t, 10*time.Second, endedAt)
		require.Zero(t, queuedRanAt, "shutdown grants the waiting microtask at once")
		require.Equal(t, 10*time.Second, stoppedAt, "Stop ran before the microtasks ended")
		require.Equal(t, 10*time.Second, time.Since(start))
	})
}

func TestReportInsideAMicroTaskReturnsContinue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app, m, failures := microApp(t, supervisor.AppOptions{}, supervisor.ModuleFuncs{})
		var action supervisor.Action = supervisor.Abort
		require.NoError(t, m.RunMediumPriorityMicroTask("reporter", func(ctx context.Context) error {
			action = supervisor.Report(ctx, errBoom, "note")
			return nil
		}))
		require.Equal(t, supervisor.Continue, action)
		require.Empty(t, failures.all(), "a microtask has no reporter: Report only logs")
		require.NoError(t, app.Shutdown(t.Context()))
	})
}

func TestMicroTaskGetsItsModulesContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app, m, _ := microApp(t, supervisor.AppOptions{}, supervisor.ModuleFuncs{})
		var got context.Context
		require.NoError(t, m.RunMicroTask("ctx", func(ctx context.Context) error { got = ctx; return nil }))
		require.Equal(t, m.Ctx(), got)
		require.NoError(t, app.Shutdown(t.Context()))
		require.Error(t, got.Err(), "the module's stop cancels it")
	})
}

func TestStartMicroTaskRunsInAGoroutineAndCounts(t *testing.T) {
	starts := map[string]func(*supervisor.Module, string, func(context.Context) error){
		"high":   (*supervisor.Module).StartMicroTask,
		"medium": (*supervisor.Module).StartMediumPriorityMicroTask,
		"low":    (*supervisor.Module).StartLowPriorityMicroTask,
	}
	for priority, start := range starts {
		t.Run(priority, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				app, m, _ := microApp(t, supervisor.AppOptions{MaxConcurrentMicroTasks: 2}, supervisor.ModuleFuncs{})
				gate := make(chan struct{})
				for range 2 {
					start(m, "blocker", func(context.Context) error { <-gate; return nil }) // returns at once
				}
				log := newMicroLog()
				m.StartMediumPriorityMicroTask("waiter", log.task("waiter"))
				synctest.Wait()
				require.Empty(t, log.ran(), "the started microtasks hold both slots")
				close(gate)
				synctest.Wait()
				require.Equal(t, []string{"waiter"}, log.ran())
				require.NoError(t, app.Shutdown(t.Context()))
			})
		})
	}
}
