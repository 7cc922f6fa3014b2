package supervisor_test

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// Helpers of the task tests. Every test runs in a synctest bubble, so the
// times it checks are exact virtual times since the bubble's start.

// taskRun is one execution of a task: its name and when it began.
type taskRun struct {
	name string
	at   time.Duration
}

// taskRuns records the executions of tasks.
type taskRuns struct {
	start time.Time

	mu      sync.Mutex
	runs    []taskRun
	running map[string]int
	overlap bool // a task ran concurrently with itself
	busy    int  // executions under way
	maxBusy int
}

func newTaskRuns() *taskRuns {
	return &taskRuns{start: time.Now(), running: map[string]int{}}
}

// begin records the start of an execution of name and returns its end.
func (r *taskRuns) begin(name string) (end func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.runs = append(r.runs, taskRun{name, time.Since(r.start)})
	r.running[name]++
	r.overlap = r.overlap || r.running[name] > 1
	r.busy++
	r.maxBusy = max(r.maxBusy, r.busy)
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.running[name]--
		r.busy--
	}
}

// work returns a task function that records its runs and works for d (or
// until its ctx is done).
func (r *taskRuns) work(name string, d time.Duration) func(context.Context, *supervisor.Task) error {
	return func(ctx context.Context, _ *supervisor.Task) error {
		defer r.begin(name)()
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
		return nil
	}
}

// all returns the executions in the order they began; those that began at
// the same time (on goroutines of their own) in name order.
func (r *taskRuns) all() []taskRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	runs := slices.Clone(r.runs)
	slices.SortStableFunc(runs, func(a, b taskRun) int {
		return cmp.Or(cmp.Compare(a.at, b.at), strings.Compare(a.name, b.name))
	})
	return runs
}

func (r *taskRuns) names() []string {
	var names []string
	for _, run := range r.all() {
		names = append(names, run.name)
	}
	return names
}

// times returns when name's executions began.
func (r *taskRuns) times(name string) []time.Duration {
	var at []time.Duration
	for _, run := range r.all() {
		if run.name == name {
			at = append(at, run.at)
		}
	}
	return at
}

// taskApp returns a started App with one module "jobs"; its Shutdown runs
// at the end of the test. A nil policy is DefaultPolicy.
func taskApp(t *testing.T, o supervisor.AppOptions, policy supervisor.Policy) (*supervisor.App, *supervisor.Module) {
	t.Helper()
	app, m := taskAppRegistered(t, o, policy, supervisor.ModuleFuncs{})
	require.NoError(t, app.Start(t.Context()))
	return app, m
}

// taskAppRegistered returns an App with the module "jobs" registered with
// fns, not started; its Shutdown runs at the end of the test.
func taskAppRegistered(t *testing.T, o supervisor.AppOptions, policy supervisor.Policy, fns supervisor.ModuleFuncs) (*supervisor.App, *supervisor.Module) {
	t.Helper()
	o.Logger = quietLogger()
	if o.Kernel == nil {
		o.Kernel = quietKernel(policy)
	}
	app := supervisor.NewApp(o)
	m, err := app.Register("jobs", fns)
	require.NoError(t, err)
	t.Cleanup(func() { _ = app.Shutdown(context.Background()) })
	return app, m
}

// Queue order and slots.

func TestTasksRunInQueueOrderOnePerSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{}, nil)
		for _, name := range []string{"a", "b", "c"} {
			m.NewTask(name, runs.work(name, time.Second)).Queue()
		}
		time.Sleep(time.Minute)
		require.Equal(t, []taskRun{{"a", 0}, {"b", time.Second}, {"c", 2 * time.Second}}, runs.all())
	})
}

func TestTaskQueuePlacesByPriority(t *testing.T) {
	type op struct{ task, how string }
	cases := []struct {
		name string
		ops  []op
		want []string
	}{
		{"normal tasks in queue order", []op{{"n1", "queue"}, {"n2", "queue"}}, []string{"n1", "n2"}},
		{"prioritized before normal", []op{{"n1", "queue"}, {"p1", "prioritize"}, {"n2", "queue"}, {"p2", "prioritize"}},
			[]string{"p1", "p2", "n1", "n2"}},
		{"StartASAP at the front", []op{{"n1", "queue"}, {"p1", "prioritize"}, {"s1", "asap"}, {"s2", "asap"}},
			[]string{"s2", "s1", "p1", "n1"}},
		{"queued twice keeps its place", []op{{"n1", "queue"}, {"n2", "queue"}, {"n1", "queue"}}, []string{"n1", "n2"}},
		{"prioritized twice keeps its place", []op{{"p1", "prioritize"}, {"p2", "prioritize"}, {"p1", "prioritize"}},
			[]string{"p1", "p2"}},
		{"queue does not move a prioritized task down", []op{{"p1", "prioritize"}, {"n1", "queue"}, {"p1", "queue"}},
			[]string{"p1", "n1"}},
		{"prioritize moves a normal task up", []op{{"p1", "prioritize"}, {"n1", "queue"}, {"n2", "queue"}, {"n2", "prioritize"}},
			[]string{"p1", "n2", "n1"}},
		{"StartASAP moves a queued task to the front", []op{{"p1", "prioritize"}, {"n1", "queue"}, {"n1", "asap"}},
			[]string{"n1", "p1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				runs := newTaskRuns()
				_, m := taskApp(t, supervisor.AppOptions{}, nil)
				m.NewTask("blocker", runs.work("blocker", time.Second)).Queue()
				synctest.Wait()
				tasks := map[string]*supervisor.Task{}
				for _, o := range c.ops {
					if tasks[o.task] == nil {
						tasks[o.task] = m.NewTask(o.task, runs.work(o.task, time.Second))
					}
					switch o.how {
					case "queue":
						tasks[o.task].Queue()
					case "prioritize":
						tasks[o.task].Prioritize()
					case "asap":
						tasks[o.task].StartASAP()
					}
				}
				time.Sleep(time.Minute)
				require.Equal(t, append([]string{"blocker"}, c.want...), runs.names())
			})
		})
	}
}

func TestTaskNeverRunsConcurrentlyWithItself(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{MaxConcurrentTasks: 3}, nil)
		task := m.NewTask("a", runs.work("a", 2*time.Second)).Queue()
		synctest.Wait()
		task.Queue().Prioritize().StartASAP() // queued once, for after the run
		task.Queue()
		time.Sleep(time.Minute)
		require.Equal(t, []time.Duration{0, 2 * time.Second}, runs.times("a"))
		require.False(t, runs.overlap)
	})
}

func TestTwoSlotsRunTwoTasksAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{MaxConcurrentTasks: 2}, nil)
		for _, name := range []string{"a", "b", "c", "d", "e"} {
			m.NewTask(name, runs.work(name, time.Second)).Queue()
		}
		time.Sleep(time.Minute)
		require.Equal(t, []taskRun{{"a", 0}, {"b", 0}, {"c", time.Second}, {"d", time.Second}, {"e", 2 * time.Second}}, runs.all())
		require.Equal(t, 2, runs.maxBusy)
	})
}

func TestTaskRunningPastSlotTimeoutFreesItsSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{TaskSlotTimeout: 10 * time.Second}, nil)
		long := m.NewTask("long", runs.work("long", time.Minute)).Queue()
		m.NewTask("next", runs.work("next", time.Second)).Queue()
		m.NewTask("last", runs.work("last", time.Second)).Queue()
		time.Sleep(15 * time.Second)
		require.Equal(t, []taskRun{{"long", 0}, {"next", 10 * time.Second}, {"last", 11 * time.Second}}, runs.all())
		long.Queue() // still running: it goes to the queue after its run
		time.Sleep(time.Minute)
		require.Equal(t, []time.Duration{0, time.Minute}, runs.times("long"), "the long task kept running and never overlapped")
		require.False(t, runs.overlap)
	})
}

func TestTaskQueuedPastMaxDelayRunsWithoutAFreeSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{TaskSlotTimeout: time.Hour}, nil)
		m.NewTask("blocker", runs.work("blocker", 10*time.Minute)).Queue()
		m.NewTask("default", runs.work("default", time.Second)).Queue()
		m.NewTask("urgent", runs.work("urgent", time.Second)).MaxDelay(30 * time.Second).Queue()
		m.NewTask("patient", runs.work("patient", time.Second)).Queue().MaxDelay(time.Hour)
		time.Sleep(time.Hour)
		require.Equal(t, []taskRun{
			{"blocker", 0},
			{"urgent", 30 * time.Second},
			{"default", 3 * time.Minute}, // AppOptions.DefaultMaxDelay's default
			{"patient", 10 * time.Minute},
		}, runs.all())
	})
}

// The module's life.

func TestTasksWaitForTheirModuleToBeOnline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		fns := supervisor.ModuleFuncs{
			Prep: func(_ context.Context, m *supervisor.Module) error {
				m.NewTask("in prep", runs.work("in prep", time.Second)).Queue()
				return nil
			},
			Start: func(_ context.Context, m *supervisor.Module) error {
				m.NewTask("in start", runs.work("in start", time.Second)).Prioritize()
				time.Sleep(5 * time.Second)
				return nil
			},
		}
		app, m := taskAppRegistered(t, supervisor.AppOptions{}, nil, fns)
		m.NewTask("before start", runs.work("before start", time.Second)).Queue()
		time.Sleep(time.Minute)
		require.Empty(t, runs.all(), "nothing runs before the module is online")

		started := time.Since(runs.start)
		require.NoError(t, app.Start(t.Context()))
		time.Sleep(time.Minute)
		require.Equal(t, []taskRun{
			{"in start", started + 5*time.Second},
			{"before start", started + 6*time.Second},
			{"in prep", started + 7*time.Second},
		}, runs.all())
	})
}

func TestTaskQueuedPastMaxDelayWhileTheModuleIsOfflineRunsOnceItIsOnline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		app, m := taskAppRegistered(t, supervisor.AppOptions{TaskSlotTimeout: time.Hour}, nil, supervisor.ModuleFuncs{})
		m.NewTask("blocker", runs.work("blocker", time.Hour)).Queue()
		m.NewTask("urgent", runs.work("urgent", time.Second)).MaxDelay(time.Second).Queue()
		time.Sleep(time.Minute)
		require.NoError(t, app.Start(t.Context()))
		synctest.Wait()
		require.ElementsMatch(t, []taskRun{{"blocker", time.Minute}, {"urgent", time.Minute}}, runs.all(),
			"the overdue task runs beside the one holding the slot")
	})
}

func TestTasksQueuedWhileTheModuleStopsOrIsStoppedRunOnceItStartsAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		fns := supervisor.ModuleFuncs{Stop: func(_ context.Context, m *supervisor.Module) error {
			m.NewTask("from stop", runs.work("from stop", time.Second)).Prioritize()
			return nil
		}}
		app, m := taskAppRegistered(t, supervisor.AppOptions{}, nil, fns)
		require.True(t, app.EnableModuleManagement(nil))
		require.NoError(t, app.Start(t.Context()))
		m.Disable()
		require.NoError(t, app.ManageModules())
		require.Equal(t, supervisor.StatusOffline, m.Status())

		m.NewTask("waiting", runs.work("waiting", time.Second)).Queue()
		time.Sleep(time.Minute)
		require.Empty(t, runs.all(), "nothing runs while the module is offline")
		m.Enable()
		require.NoError(t, app.ManageModules())
		synctest.Wait()
		require.Equal(t, []taskRun{{"from stop", time.Minute}}, runs.all())
		time.Sleep(time.Second)
		synctest.Wait()
		require.Equal(t, []taskRun{{"from stop", time.Minute}, {"waiting", time.Minute + time.Second}}, runs.all())
	})
}

// Schedules.

func TestScheduledTaskRunsAtItsTime(t *testing.T) {
	cases := []struct {
		name  string
		times []time.Duration // Schedule calls, from the start; -1: the zero time
		want  []time.Duration
	}{
		{"at the exact time", []time.Duration{10 * time.Second}, []time.Duration{10 * time.Second}},
		{"zero time unschedules", []time.Duration{10 * time.Second, -1}, nil},
		{"reschedule later moves it", []time.Duration{10 * time.Second, 20 * time.Second}, []time.Duration{20 * time.Second}},
		{"reschedule earlier moves it", []time.Duration{20 * time.Second, 5 * time.Second}, []time.Duration{5 * time.Second}},
		{"a past time runs at once", []time.Duration{-time.Second}, []time.Duration{0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				runs := newTaskRuns()
				_, m := taskApp(t, supervisor.AppOptions{}, nil)
				task := m.NewTask("s", runs.work("s", time.Second))
				for _, d := range c.times {
					at := time.Time{}
					if d != -1 {
						at = runs.start.Add(d)
					}
					task.Schedule(at)
				}
				time.Sleep(time.Hour)
				require.Equal(t, c.want, runs.times("s"))
			})
		})
	}
}

func TestScheduledTaskStartsAheadOfTheQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{}, nil)
		m.NewTask("blocker", runs.work("blocker", 10*time.Second)).Queue()
		m.NewTask("normal", runs.work("normal", time.Second)).Queue()
		m.NewTask("prio", runs.work("prio", time.Second)).Prioritize()
		m.NewTask("late", runs.work("late", time.Second)).Schedule(runs.start.Add(2 * time.Second))
		m.NewTask("early", runs.work("early", time.Second)).Schedule(runs.start.Add(time.Second))
		time.Sleep(time.Minute)
		require.Equal(t, []string{"blocker", "late", "early", "prio", "normal"}, runs.names())
	})
}

func TestTasksScheduledAtTheSameTimeRunInScheduleOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{}, nil)
		at := runs.start.Add(time.Minute)
		for _, name := range []string{"a", "b", "c"} {
			m.NewTask(name, runs.work(name, time.Second)).Schedule(at)
		}
		time.Sleep(time.Hour)
		require.Equal(t, []taskRun{{"a", time.Minute}, {"b", time.Minute + time.Second}, {"c", time.Minute + 2*time.Second}}, runs.all())
	})
}

func TestRepeatingTaskRunsOneIntervalAfterEachCompletion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{}, nil)
		m.NewTask("r", runs.work("r", 10*time.Second)).Repeat(2 * time.Minute)
		time.Sleep(7 * time.Minute)
		require.Equal(t, []time.Duration{2 * time.Minute, 4*time.Minute + 10*time.Second, 6*time.Minute + 20*time.Second}, runs.times("r"))
	})
}

func TestRepeatIntervalIsRaisedToMinRepeatInterval(t *testing.T) {
	cases := []struct {
		name     string
		opts     supervisor.AppOptions
		interval time.Duration
		want     []time.Duration
	}{
		{"default floor of a minute", supervisor.AppOptions{}, time.Second, []time.Duration{time.Minute, 2 * time.Minute}},
		{"configured floor", supervisor.AppOptions{MinRepeatInterval: 30 * time.Second}, time.Second,
			[]time.Duration{30 * time.Second, time.Minute, 90 * time.Second, 2 * time.Minute}},
		{"above the floor", supervisor.AppOptions{}, 90 * time.Second, []time.Duration{90 * time.Second}},
		{"negative stops", supervisor.AppOptions{}, -time.Minute, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				runs := newTaskRuns()
				_, m := taskApp(t, c.opts, nil)
				m.NewTask("r", runs.work("r", 0)).Repeat(c.interval)
				time.Sleep(2*time.Minute + time.Second)
				require.Equal(t, c.want, runs.times("r"))
			})
		})
	}
}

func TestRepeatZeroStopsTheRepetition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{}, nil)
		task := m.NewTask("r", runs.work("r", 0)).Repeat(time.Minute)
		time.Sleep(90 * time.Second)
		task.Repeat(0)
		time.Sleep(time.Hour)
		require.Equal(t, []time.Duration{time.Minute}, runs.times("r"))
	})
}

func TestRepeatZeroKeepsAnExplicitSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{}, nil)
		m.NewTask("s", runs.work("s", 0)).Schedule(runs.start.Add(5 * time.Minute)).Repeat(0)
		time.Sleep(time.Hour)
		require.Equal(t, []time.Duration{5 * time.Minute}, runs.times("s"))
	})
}

// From inside its function.

func TestTaskQueuesItselfAgainFromItsFunction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{MaxConcurrentTasks: 2}, nil)
		n := 0
		m.NewTask("self", func(ctx context.Context, task *supervisor.Task) error {
			defer runs.begin("self")()
			if n++; n < 3 {
				task.Queue()
			}
			time.Sleep(time.Second)
			return nil
		}).Queue()
		time.Sleep(time.Minute)
		require.Equal(t, []time.Duration{0, time.Second, 2 * time.Second}, runs.times("self"))
		require.False(t, runs.overlap)
	})
}

func TestTaskReschedulesItselfFromItsFunction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{}, nil)
		n := 0
		m.NewTask("self", func(ctx context.Context, task *supervisor.Task) error {
			defer runs.begin("self")()
			if n++; n < 3 {
				task.Schedule(time.Now().Add(30 * time.Second))
			}
			return nil
		}).Repeat(time.Hour).Queue()
		time.Sleep(2 * time.Hour)
		require.Equal(t, []time.Duration{0, 30 * time.Second, time.Minute, time.Minute + time.Hour}, runs.times("self"),
			"a schedule set during the run replaces the next repeat; the repetition goes on after it")
	})
}

// Cancel.

func TestCancelCancelsTheRunningExecutionAndEveryLaterRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		var failures failureLog
		_, m := taskApp(t, supervisor.AppOptions{}, failures.answer(supervisor.Kill))
		var cause error
		task := m.NewTask("c", func(ctx context.Context, _ *supervisor.Task) error {
			defer runs.begin("c")()
			<-ctx.Done()
			cause = context.Cause(ctx)
			return ctx.Err()
		}).Queue().Repeat(time.Minute)
		synctest.Wait()
		task.Cancel()
		synctest.Wait()
		require.Error(t, cause)
		require.ErrorContains(t, cause, "cancel")

		task.Queue().Prioritize().StartASAP().Schedule(time.Now().Add(time.Second)).Repeat(time.Minute)
		task.Cancel()
		time.Sleep(time.Hour)
		require.Equal(t, []time.Duration{0}, runs.times("c"))
		require.Empty(t, failures.all(), "a cancelled run is no failure")
	})
}

func TestCancelTakesAQueuedTaskOutOfTheQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		_, m := taskApp(t, supervisor.AppOptions{}, nil)
		m.NewTask("blocker", runs.work("blocker", time.Second)).Queue()
		m.NewTask("cancelled", runs.work("cancelled", time.Second)).Queue().Cancel()
		m.NewTask("next", runs.work("next", time.Second)).Queue()
		time.Sleep(time.Minute)
		require.Equal(t, []taskRun{{"blocker", 0}, {"next", time.Second}}, runs.all())
	})
}

// Failures.

func TestTaskFailuresReachTheKernelAsModuleErrors(t *testing.T) {
	cases := []struct {
		name  string
		fn    func(context.Context, *supervisor.Task) error
		check func(t *testing.T, err error)
	}{
		{"error", func(context.Context, *supervisor.Task) error { return errBoom },
			func(t *testing.T, err error) { require.ErrorIs(t, err, errBoom) }},
		{"panic", func(context.Context, *supervisor.Task) error { panic("oops") },
			func(t *testing.T, err error) {
				pe, ok := supervisor.IsPanic(err)
				require.True(t, ok)
				require.Equal(t, "oops", pe.Value)
			}},
		{"nil function", nil, func(t *testing.T, err error) { require.ErrorContains(t, err, "nil function") }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var failures failureLog
				_, m := taskApp(t, supervisor.AppOptions{}, failures.deciding(supervisor.DefaultPolicy))
				m.NewTask("flaky", c.fn).Queue()
				synctest.Wait()
				got := failures.all()
				require.Len(t, got, 1)
				require.Equal(t, "jobs/flaky", got[0].Process)
				require.Equal(t, supervisor.Transient, got[0].Restart)
				var me *supervisor.ModuleError
				require.ErrorAs(t, got[0].Err, &me)
				require.Equal(t, "jobs", me.ModuleName)
				require.Equal(t, "flaky", me.TaskName)
				require.Equal(t, "task", me.TaskType)
				c.check(t, got[0].Err)
			})
		})
	}
}

func TestRepeatingTaskKeepsRepeatingAfterFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		var failures failureLog
		_, m := taskApp(t, supervisor.AppOptions{}, failures.deciding(supervisor.DefaultPolicy))
		m.NewTask("flaky", func(context.Context, *supervisor.Task) error {
			defer runs.begin("flaky")()
			return errBoom
		}).Repeat(time.Minute)
		time.Sleep(3*time.Minute + time.Second)
		require.Equal(t, []time.Duration{time.Minute, 2 * time.Minute, 3 * time.Minute}, runs.times("flaky"))
		require.Len(t, failures.all(), 3)
	})
}

func TestKernelAbortCancelsTheTask(t *testing.T) {
	cases := []struct {
		name string
		fn   func(ctx context.Context) error
	}{
		{"on its exit", func(context.Context) error { return errBoom }},
		{"reported from inside", func(ctx context.Context) error {
			if supervisor.Report(ctx, errBoom, "item 7") != supervisor.Abort {
				return errors.New("Report did not answer Abort")
			}
			<-ctx.Done() // Abort cancels the execution
			return ctx.Err()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				runs := newTaskRuns()
				var failures failureLog
				_, m := taskApp(t, supervisor.AppOptions{}, failures.answer(supervisor.Abort))
				task := m.NewTask("doomed", func(ctx context.Context, _ *supervisor.Task) error {
					defer runs.begin("doomed")()
					return c.fn(ctx)
				}).Repeat(time.Minute)
				time.Sleep(time.Hour)
				task.Queue().Schedule(time.Now().Add(time.Second))
				time.Sleep(time.Hour)
				require.Equal(t, []time.Duration{time.Minute}, runs.times("doomed"))
				require.Len(t, failures.all(), 1)
			})
		})
	}
}

// Shutdown.

func TestShutdownLeavesNoTaskRunningOrScheduled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		app, m := taskApp(t, supervisor.AppOptions{MaxConcurrentTasks: 2}, nil)
		var ended atomic.Bool
		m.NewTask("running", func(ctx context.Context, _ *supervisor.Task) error {
			defer ended.Store(true)
			defer runs.begin("running")()
			<-ctx.Done()
			return ctx.Err()
		}).Queue()
		m.NewTask("repeating", runs.work("repeating", 0)).Repeat(time.Minute)
		m.NewTask("scheduled", runs.work("scheduled", 0)).Schedule(time.Now().Add(time.Hour))
		m.NewTask("long", runs.work("long", time.Hour)).Queue()
		m.NewTask("queued", runs.work("queued", 0)).Queue()
		synctest.Wait()
		require.Equal(t, 2, app.Status().Modules[0].Tasks)
		require.NoError(t, app.Shutdown(t.Context()))
		require.True(t, ended.Load(), "Shutdown waited for the running task")
		require.Zero(t, app.Status().Modules[0].Tasks)
		before := runs.all()
		time.Sleep(24 * time.Hour)
		require.Equal(t, before, runs.all(), "nothing ran after Shutdown")
		// The bubble ends only once every goroutine it started has ended.
	})
}

func TestTasksOfAModuleThatNeverStartsEndWithShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		app, m := taskAppRegistered(t, supervisor.AppOptions{}, nil, supervisor.ModuleFuncs{})
		m.NewTask("waiting", runs.work("waiting", 0)).Queue().Repeat(time.Minute)
		time.Sleep(time.Hour)
		require.NoError(t, app.Shutdown(t.Context()))
		synctest.Wait()
		require.Empty(t, runs.all())
	})
}

func TestTaskQueuedWhileItsModuleStopsRunsTheInstantItIsOnlineAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		const stopping = 1050 * time.Millisecond // ends between two 100ms ticks after the Queue below
		fns := supervisor.ModuleFuncs{Stop: func(context.Context, *supervisor.Module) error {
			time.Sleep(stopping)
			return nil
		}}
		app, m := taskAppRegistered(t, supervisor.AppOptions{}, nil, fns)
		require.True(t, app.EnableModuleManagement(nil))
		require.NoError(t, app.Start(t.Context()))

		m.Disable()
		stopped := make(chan error, 1)
		go func() { stopped <- app.ManageModules() }()
		time.Sleep(500 * time.Millisecond)
		require.Equal(t, supervisor.StatusStopping, m.Status())
		m.NewTask("waiting", runs.work("waiting", time.Second)).Queue()

		require.NoError(t, <-stopped)
		require.Equal(t, supervisor.StatusOffline, m.Status())
		synctest.Wait()
		require.Empty(t, runs.all(), "nothing runs while the module is offline")
		m.Enable()
		require.NoError(t, app.ManageModules())
		synctest.Wait()
		require.Equal(t, []taskRun{{"waiting", stopping}}, runs.all(),
			"the task starts the instant its module is online, not at the next poll")
	})
}

func TestShutdownDisarmsTheTimerOfTasksScheduledFarAhead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		runs := newTaskRuns()
		app, m := taskApp(t, supervisor.AppOptions{}, nil)
		scheduled := m.NewTask("scheduled", runs.work("scheduled", 0)).Schedule(time.Now().Add(24 * time.Hour))
		repeating := m.NewTask("repeating", runs.work("repeating", 0)).Repeat(time.Hour)
		require.NoError(t, app.Shutdown(t.Context()))

		scheduled.Schedule(time.Now().Add(time.Minute)) // refused: the app shut down
		repeating.Queue()
		time.Sleep(48 * time.Hour)
		synctest.Wait()
		require.Empty(t, runs.all(), "nothing runs after Shutdown, however far time advances")
		// The bubble ends only once every goroutine it started has ended;
		// goleak (TestMain) checks the same outside bubbles.
	})
}
