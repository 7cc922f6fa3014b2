package supervisor_test

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// These tests check what happens when a process ends: restart policies,
// the kernel's answers, backoff, strategies, intensity and nesting.

func TestSupervisorKeepsReadyProcessRunningPastStartTimeout(t *testing.T) {
	for _, startTimeout := range []time.Duration{0, 5 * time.Second} { // 0: the default, 1m
		t.Run("StartTimeout="+startTimeout.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				table := supervisor.NewMapTable[string, *fakeProc]()
				proc := &fakeProc{}
				table.Put("a", proc)
				events := &recorder{}
				opts := quietOptions("sup", events)
				opts.StartTimeout = startTimeout
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)

				time.Sleep(10 * time.Minute)
				synctest.Wait()
				require.Equal(t, []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady}, events.kinds("a"),
					"events: %v", events.about("a"))
				runs, active := proc.counts()
				require.Equal(t, 1, runs)
				require.Equal(t, 1, active)
				require.NoError(t, proc.contexts()[0].Err(), "the ready process's ctx is live")

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorRestartsByRestartPolicyAndExit(t *testing.T) {
	for _, tc := range []struct {
		name        string
		policy      supervisor.RestartPolicy
		exitErr     error
		wantAfter   []supervisor.EventKind // events after the first start
		wantAction  supervisor.Action      // the EventFailed's action, if any
		wantRuns    int
		wantRunning bool
	}{
		{
			"permanent, clean exit", supervisor.Permanent, nil,
			slices.Concat([]supervisor.EventKind{supervisor.EventBackoff}, kindsRestarted), 0, 2, true,
		},
		{
			"permanent, failure", supervisor.Permanent, errBoom,
			slices.Concat([]supervisor.EventKind{supervisor.EventFailed, supervisor.EventBackoff}, kindsRestarted),
			supervisor.Kill, 2, true,
		},
		{
			"transient, clean exit", supervisor.Transient, nil,
			[]supervisor.EventKind{supervisor.EventStopped}, 0, 1, false,
		},
		{
			"transient, failure", supervisor.Transient, errBoom,
			slices.Concat([]supervisor.EventKind{supervisor.EventFailed, supervisor.EventBackoff}, kindsRestarted),
			supervisor.Kill, 2, true,
		},
		{
			"temporary, clean exit", supervisor.Temporary, nil,
			[]supervisor.EventKind{supervisor.EventStopped}, 0, 1, false,
		},
		{
			"temporary, failure", supervisor.Temporary, errBoom,
			[]supervisor.EventKind{supervisor.EventFailed, supervisor.EventAborted}, supervisor.Abort, 1, false,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				table := supervisor.NewMapTable[string, *fakeProc]()
				proc := &fakeProc{life: failRuns(time.Second, map[int]error{1: tc.exitErr})}
				table.Put("a", proc)
				events := &recorder{}
				kernel := quietKernel(nil)
				opts := quietOptions("sup", events)
				opts.Kernel = kernel
				opts.Restart = tc.policy
				opts.ScanInterval = 5 * time.Second
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)

				time.Sleep(30 * time.Second) // the exit, a restart if any, and scans
				synctest.Wait()
				require.Equal(t, slices.Concat(kindsRunning, tc.wantAfter), events.kinds("a"))
				runs, active := proc.counts()
				require.Equal(t, tc.wantRuns, runs)
				decisions := kernel.Recent()
				if tc.exitErr == nil {
					require.Empty(t, decisions, "a clean exit is not a failure")
				} else {
					require.Len(t, decisions, 1)
					require.Equal(t, "sup/a", decisions[0].Failure.Process)
					require.ErrorIs(t, decisions[0].Failure.Err, tc.exitErr)
					require.True(t, decisions[0].Failure.Exited)
					require.Equal(t, tc.policy, decisions[0].Failure.Restart)
					require.Equal(t, tc.wantAction, decisions[0].Action)
					failed := events.of(supervisor.EventFailed)
					require.Len(t, failed, 1)
					require.Equal(t, tc.wantAction, failed[0].Action)
					require.ErrorIs(t, failed[0].Err, tc.exitErr)
				}
				_, err := sup.Get(t.Context(), "a")
				if tc.wantRunning {
					require.Equal(t, 1, active)
					require.NoError(t, err)
				} else {
					require.Zero(t, active)
					require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
					require.Empty(t, sup.Keys())
				}

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorLetsProcessOverrideRestartPolicy(t *testing.T) {
	for _, tc := range []struct {
		name      string
		options   supervisor.RestartPolicy // Options.Restart
		own       supervisor.RestartPolicy // the process's RestartPolicy()
		exitErr   error
		wantAfter []supervisor.EventKind
	}{
		{
			"permanent process under temporary default fails", supervisor.Temporary, supervisor.Permanent, errBoom,
			slices.Concat([]supervisor.EventKind{supervisor.EventFailed, supervisor.EventBackoff}, kindsRestarted),
		},
		{
			"permanent process under transient default exits cleanly", supervisor.Transient, supervisor.Permanent, nil,
			slices.Concat([]supervisor.EventKind{supervisor.EventBackoff}, kindsRestarted),
		},
		{
			"temporary process under permanent default fails", supervisor.Permanent, supervisor.Temporary, errBoom,
			[]supervisor.EventKind{supervisor.EventFailed, supervisor.EventAborted},
		},
		{
			"transient process under permanent default exits cleanly", supervisor.Permanent, supervisor.Transient, nil,
			[]supervisor.EventKind{supervisor.EventStopped},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				table := supervisor.NewMapTable[string, supervisor.Runnable]()
				proc := &fakeProc{life: failRuns(time.Second, map[int]error{1: tc.exitErr})}
				table.Put("a", withPolicy{proc, tc.own})
				events := &recorder{}
				kernel := quietKernel(nil)
				opts := quietOptions("sup", events)
				opts.Kernel = kernel
				opts.Restart = tc.options
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)

				time.Sleep(10 * time.Second)
				synctest.Wait()
				require.Equal(t, slices.Concat(kindsRunning, tc.wantAfter), events.kinds("a"))
				if tc.exitErr != nil {
					decisions := kernel.Recent()
					require.Len(t, decisions, 1)
					require.Equal(t, tc.own, decisions[0].Failure.Restart, "the kernel is told the process's own policy")
				}

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorActsOnKernelAnswerToExit(t *testing.T) {
	for _, tc := range []struct {
		action    supervisor.Action
		wantAfter []supervisor.EventKind // after EventFailed
	}{
		{supervisor.Continue, kindsRestarted},
		{supervisor.Kill, slices.Concat([]supervisor.EventKind{supervisor.EventBackoff}, kindsRestarted)},
		{supervisor.Abort, []supervisor.EventKind{supervisor.EventAborted}},
	} {
		t.Run(tc.action.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				table := supervisor.NewMapTable[string, *fakeProc]()
				proc := &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})}
				table.Put("a", proc)
				events := &recorder{}
				var failures failureLog
				kernel := quietKernel(failures.answer(tc.action))
				opts := quietOptions("sup", events)
				opts.Kernel = kernel
				opts.ScanInterval = 5 * time.Second
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)

				time.Sleep(time.Second) // the failure
				synctest.Wait()
				failedAt := time.Now()
				time.Sleep(time.Minute) // the restart if any, and scans
				synctest.Wait()

				require.Len(t, failures.all(), 1)
				require.True(t, failures.all()[0].Exited)
				require.ErrorIs(t, failures.all()[0].Err, errBoom)
				want := slices.Concat(kindsRunning, []supervisor.EventKind{supervisor.EventFailed}, tc.wantAfter)
				require.Equal(t, want, events.kinds("a"))
				failed := events.of(supervisor.EventFailed)
				require.Equal(t, tc.action, failed[0].Action)
				require.Equal(t, failedAt, failed[0].Time)
				runs, active := proc.counts()
				switch tc.action {
				case supervisor.Continue:
					restarting := events.of(supervisor.EventRestarting)
					require.Equal(t, failedAt, restarting[0].Time, "restarted at once")
					require.Equal(t, 2, runs)
					require.Equal(t, 1, active)
				case supervisor.Kill:
					backoffs := events.of(supervisor.EventBackoff)
					require.GreaterOrEqual(t, backoffs[0].Delay, 50*time.Millisecond)
					require.LessOrEqual(t, backoffs[0].Delay, 150*time.Millisecond)
					restarting := events.of(supervisor.EventRestarting)
					require.Equal(t, failedAt.Add(backoffs[0].Delay), restarting[0].Time, "restarted after the delay")
					require.Equal(t, 2, runs)
					require.Equal(t, 1, active)
				case supervisor.Abort:
					require.Equal(t, 1, runs, "scans skip an aborted process")
					require.Zero(t, active)
					_, err := sup.Get(t.Context(), "a")
					require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
					require.Empty(t, sup.Keys())
				}

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorWaitsCustomBackoffBeforeRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, *fakeProc]()
		proc := &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom, 2: errBoom, 3: errBoom})}
		table.Put("a", proc)
		events := &recorder{}
		opts := quietOptions("sup", events)
		opts.Backoff = constantBackoff(5 * time.Second)
		sup := supervisor.NewSupervisor(table, opts)
		run := startRun(t, sup)

		time.Sleep(time.Minute)
		synctest.Wait()
		failed := events.of(supervisor.EventFailed)
		backoffs := events.of(supervisor.EventBackoff)
		starts := events.of(supervisor.EventStarting)
		require.Len(t, failed, 3)
		require.Len(t, backoffs, 3)
		require.Len(t, starts, 4)
		for i := range failed {
			require.Equal(t, 5*time.Second, backoffs[i].Delay)
			require.Equal(t, 5*time.Second, starts[i+1].Time.Sub(failed[i].Time), "restart %d", i+1)
		}
		runs, active := proc.counts()
		require.Equal(t, 4, runs)
		require.Equal(t, 1, active)

		require.NoError(t, run.stop())
	})
}

func TestSupervisorAbortsProcessWhenBackoffStops(t *testing.T) {
	for _, tc := range []struct {
		name      string
		exitErr   error
		wantAfter []supervisor.EventKind
	}{
		{"failure", errBoom, []supervisor.EventKind{supervisor.EventFailed, supervisor.EventAborted}},
		{"clean exit of a permanent process", nil, []supervisor.EventKind{supervisor.EventAborted}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				table := supervisor.NewMapTable[string, *fakeProc]()
				proc := &fakeProc{life: failAfter(time.Second, tc.exitErr)}
				table.Put("a", proc)
				events := &recorder{}
				opts := quietOptions("sup", events)
				opts.Backoff = func() backoff.BackOff { return &backoff.StopBackOff{} }
				opts.ScanInterval = 5 * time.Second
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)

				time.Sleep(time.Minute)
				synctest.Wait()
				require.Equal(t, slices.Concat(kindsRunning, tc.wantAfter), events.kinds("a"))
				runs, active := proc.counts()
				require.Equal(t, 1, runs, "scans skip the aborted process")
				require.Zero(t, active)
				_, err := sup.Get(t.Context(), "a")
				require.ErrorIs(t, err, supervisor.ErrProcessNotFound)

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestDefaultBackoffGrowsExponentiallyWithJitterUpToCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const backoffs, steps = 200, 40
		var firsts []time.Duration
		for range backoffs {
			b := supervisor.DefaultBackoff()
			interval := 100 * time.Millisecond // before jitter: ×2 per step, capped at 30s
			for step := range steps {
				d := b.NextBackOff()
				require.NotEqual(t, backoff.Stop, d, "step %d", step)
				require.GreaterOrEqual(t, d, interval/2, "step %d", step)
				require.LessOrEqual(t, d, interval*3/2, "step %d", step)
				if step == 0 {
					firsts = append(firsts, d)
				}
				interval = min(2*interval, 30*time.Second)
			}
			time.Sleep(24 * time.Hour) // no elapsed-time limit: it never gives up
			require.NotEqual(t, backoff.Stop, b.NextBackOff())
		}
		slices.Sort(firsts)
		require.Less(t, firsts[0], 75*time.Millisecond, "jitter spreads the delays")
		require.Greater(t, firsts[len(firsts)-1], 125*time.Millisecond, "jitter spreads the delays")

		a, b := supervisor.DefaultBackoff(), supervisor.DefaultBackoff()
		for range 10 {
			a.NextBackOff()
		}
		d := b.NextBackOff()
		require.GreaterOrEqual(t, d, 50*time.Millisecond, "each call returns an independent BackOff")
		require.LessOrEqual(t, d, 150*time.Millisecond, "each call returns an independent BackOff")
	})
}

func TestSupervisorResetsBackoffOfProcessUpForHealthyAfter(t *testing.T) {
	for _, tc := range []struct {
		name         string
		healthyAfter time.Duration // Options.HealthyAfter
		want         time.Duration
	}{
		{"default", 0, 30 * time.Second},
		{"custom", 10 * time.Second, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				table := supervisor.NewMapTable[string, *fakeProc]()
				proc := &fakeProc{life: func(ctx context.Context, run int) error {
					switch {
					case run <= 5: // five quick failures grow the backoff
						return exitAfter(ctx, time.Second, errBoom)
					case run == 6: // up past HealthyAfter, then fails
						return exitAfter(ctx, tc.want+10*time.Second, errBoom)
					}
					return serve(ctx)
				}}
				table.Put("a", proc)
				events := &recorder{}
				kernel := quietKernel(nil)
				opts := quietOptions("sup", events)
				opts.Kernel = kernel
				opts.HealthyAfter = tc.healthyAfter
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)

				for i := range 5 {
					time.Sleep(time.Second) // run i fails
					synctest.Wait()
					backoffs := events.of(supervisor.EventBackoff)
					require.Len(t, backoffs, i+1)
					time.Sleep(backoffs[i].Delay) // run i+1 starts
					synctest.Wait()
				}
				backoffs := events.of(supervisor.EventBackoff)
				require.Len(t, backoffs, 5)
				require.GreaterOrEqual(t, backoffs[4].Delay, 800*time.Millisecond, "the fifth delay grew: 1.6s ±50%")
				require.LessOrEqual(t, backoffs[4].Delay, 2400*time.Millisecond, "the fifth delay grew: 1.6s ±50%")
				ready := events.of(supervisor.EventReady)
				require.Len(t, ready, 6)
				upSince := ready[5].Time
				require.Equal(t, upSince, time.Now())
				require.Equal(t, 5, kernel.State("sup/a").Consecutive)

				time.Sleep(tc.want - time.Millisecond)
				synctest.Wait()
				require.Equal(t, 5, kernel.State("sup/a").Consecutive, "not healthy yet")
				time.Sleep(time.Millisecond)
				synctest.Wait()
				require.Zero(t, kernel.State("sup/a").Consecutive, "healthy after HealthyAfter")
				require.Equal(t, 5, kernel.State("sup/a").Failures)

				time.Sleep(10 * time.Second) // the sixth failure
				synctest.Wait()
				backoffs = events.of(supervisor.EventBackoff)
				require.Len(t, backoffs, 6)
				require.GreaterOrEqual(t, backoffs[5].Delay, 50*time.Millisecond, "the backoff was reset")
				require.LessOrEqual(t, backoffs[5].Delay, 150*time.Millisecond, "the backoff was reset")
				require.Equal(t, 1, kernel.State("sup/a").Consecutive)
				require.Equal(t, 6, kernel.State("sup/a").Failures)

				require.NoError(t, run.stop())
			})
		})
	}
}

// restartSiblings builds the table a, b, c (started in that order) in
// which b fails once, 1s after its start; a value of own gives c that
// restart policy.
func restartSiblings(own *supervisor.RestartPolicy) (*supervisor.MapTable[string, supervisor.Runnable], map[string]*fakeProc) {
	procs := failingSiblings()
	table := supervisor.NewMapTable[string, supervisor.Runnable]()
	table.Put("a", procs["a"])
	table.Put("b", procs["b"])
	if own != nil {
		table.Put("c", withPolicy{procs["c"], *own})
	} else {
		table.Put("c", procs["c"])
	}
	return table, procs
}

func TestSupervisorRestartsSiblingsByStrategy(t *testing.T) {
	for _, tc := range []struct {
		strategy     supervisor.Strategy
		wantStopping []string // after b's failure
		wantStarting []string // after b's failure
	}{
		{supervisor.OneForOne, nil, []string{"b"}},
		{supervisor.OneForAll, []string{"c", "a"}, []string{"a", "b", "c"}},
		{supervisor.RestForOne, []string{"c"}, []string{"b", "c"}},
	} {
		t.Run(tc.strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				table, procs := restartSiblings(nil)
				events := &recorder{}
				opts := quietOptions("sup", events)
				opts.Strategy = tc.strategy
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)
				require.Equal(t, []string{"a", "b", "c"}, sup.Keys(), "start order")

				time.Sleep(10 * time.Second)
				synctest.Wait()
				afterFailure := events.after(t, supervisor.EventFailed)
				require.Equal(t, tc.wantStopping, afterFailure.processes(supervisor.EventStopping))
				require.Equal(t, tc.wantStarting, afterFailure.processes(supervisor.EventStarting))
				require.Len(t, events.of(supervisor.EventFailed), 1, "stopped siblings did not fail")
				require.Equal(t, []string{"a", "b", "c"}, sup.Keys())
				for _, k := range []string{"a", "b", "c"} {
					runs, active := procs[k].counts()
					wantRuns := 1
					if slices.Contains(tc.wantStarting, k) {
						wantRuns = 2
					}
					require.Equal(t, wantRuns, runs, k)
					require.Equal(t, 1, active, k)
					_, err := sup.Get(t.Context(), k)
					require.NoError(t, err, k)
				}

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorDoesNotRestartTemporarySiblingInGroupRestart(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				temporary := supervisor.Temporary
				table, procs := restartSiblings(&temporary)
				events := &recorder{}
				opts := quietOptions("sup", events)
				opts.Strategy = strategy
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)

				time.Sleep(10 * time.Second)
				synctest.Wait()
				runs, active := procs["c"].counts()
				require.Equal(t, 1, runs, "the temporary sibling is not restarted")
				require.Zero(t, active)
				_, err := sup.Get(t.Context(), "c")
				require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
				require.Equal(t, []string{"a", "b"}, sup.Keys())
				runs, active = procs["b"].counts()
				require.Equal(t, 2, runs, "the failed process restarts")
				require.Equal(t, 1, active)
				require.Equal(t, []supervisor.EventKind{
					supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
				}, events.kinds("c"), "one stop, one EventStopped")

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorGivesUpAfterTooManyRestartsWithinPeriod(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, *fakeProc]()
		flaky := &fakeProc{life: failAfter(time.Second, errBoom)}
		steady := &fakeProc{}
		table.Put("flaky", flaky)
		table.Put("steady", steady)
		events := &recorder{}
		opts := quietOptions("sup", events)
		opts.MaxRestarts = 3
		opts.Period = time.Minute
		sup := supervisor.NewSupervisor(table, opts)
		run := startRun(t, sup)

		time.Sleep(time.Minute)
		synctest.Wait()
		require.True(t, run.returned(), "Run gave up")
		err := run.wait()
		require.ErrorIs(t, err, supervisor.ErrTooManyRestarts)
		for name, p := range map[string]*fakeProc{"flaky": flaky, "steady": steady} {
			_, active := p.counts()
			require.Zero(t, active, "%s returned before Run", name)
			for _, ctx := range p.contexts() {
				require.Error(t, ctx.Err(), name)
			}
		}
		require.Error(t, run.callbackCtx().Err(), "the callback's ctx was cancelled")
		runs, _ := flaky.counts()
		require.Equal(t, 4, runs, "the fourth failure would be the fourth restart")
		require.Len(t, events.of(supervisor.EventFailed), 4)
		tooMany := events.of(supervisor.EventTooManyRestarts)
		require.Len(t, tooMany, 1)
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
		}, events.kinds("steady"))
		steadyStopped := events.about("steady")[3]
		require.False(t, steadyStopped.Time.Before(tooMany[0].Time), "stopped after giving up")
	})
}

func TestSupervisorToleratesRestartsSpreadWiderThanPeriod(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, *fakeProc]()
		flaky := &fakeProc{life: failAfter(25*time.Second, errBoom)}
		table.Put("flaky", flaky)
		events := &recorder{}
		opts := quietOptions("sup", events)
		opts.MaxRestarts = 3
		opts.Period = time.Minute // 25s apart: at most 3 restarts in any minute
		sup := supervisor.NewSupervisor(table, opts)
		run := startRun(t, sup)

		time.Sleep(10 * time.Minute)
		synctest.Wait()
		require.False(t, run.returned())
		require.Empty(t, events.of(supervisor.EventTooManyRestarts))
		runs, _ := flaky.counts()
		require.Greater(t, runs, 2*(opts.MaxRestarts+1), "far more restarts than MaxRestarts in all")
		require.Equal(t, []string{"flaky"}, sup.Keys(), "still supervised")

		require.NoError(t, run.stop())
	})
}

func TestChildSupervisorThatGivesUpIsAFailureOfItsParent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The child's first Run gives up on its second failure.
		worker := &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom, 2: errBoom})}
		childTable := supervisor.NewMapTable[string, *fakeProc]()
		childTable.Put("worker", worker)
		childEvents := &recorder{}
		childOpts := quietOptions("child", childEvents)
		childOpts.MaxRestarts = 1
		childOpts.Period = time.Minute
		child := supervisor.NewSupervisor(childTable, childOpts)

		parentTable := supervisor.NewMapTable[string, supervisor.Runnable]()
		parentTable.Put("child", child)
		parentEvents := &recorder{}
		var failures failureLog
		parentKernel := quietKernel(failures.deciding(supervisor.DefaultPolicy))
		parentOpts := quietOptions("parent", parentEvents)
		parentOpts.Kernel = parentKernel
		parent := supervisor.NewSupervisor(parentTable, parentOpts)
		run := startRun(t, parent)
		require.Equal(t, kindsRunning, parentEvents.kinds("child"), "the child is ready once its rows are")

		time.Sleep(time.Minute)
		synctest.Wait()
		require.Len(t, childEvents.of(supervisor.EventTooManyRestarts), 1)
		require.Len(t, failures.all(), 1)
		failure := failures.all()[0]
		require.Equal(t, "parent/child", failure.Process)
		require.True(t, failure.Exited)
		require.ErrorIs(t, failure.Err, supervisor.ErrTooManyRestarts)
		require.Equal(t, slices.Concat(kindsRunning,
			[]supervisor.EventKind{supervisor.EventFailed, supervisor.EventBackoff}, kindsRestarted,
		), parentEvents.kinds("child"), "the parent restarted the child")
		runs, active := worker.counts()
		require.Equal(t, 3, runs, "the restarted child runs its worker again")
		require.Equal(t, 1, active)
		got, err := child.Get(t.Context(), "worker")
		require.NoError(t, err)
		require.Same(t, worker, got)

		require.NoError(t, run.stop())
	})
}

func TestStoppingParentSupervisorStopsChildProcesses(t *testing.T) {
	for _, tc := range []struct {
		name string
		// stop stops the parent's Run: its callback returns, or its ctx
		// is cancelled.
		stop func(run *backgroundRun) error
		// graceful: the child's processes are asked to stop, none is
		// cancelled first (with a cancelled ctx they may end on their own).
		graceful bool
	}{
		{"parent's callback returns", (*backgroundRun).shutdown, true},
		{"parent's ctx cancelled", (*backgroundRun).stop, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				workers := map[string]*fakeProc{"w1": {}, "w2": {}}
				childTable := supervisor.NewMapTable[string, *fakeProc]()
				childTable.Put("w1", workers["w1"])
				childTable.Put("w2", workers["w2"])
				childEvents := &recorder{}
				childOpts := quietOptions("child", childEvents)
				child := supervisor.NewSupervisor(childTable, childOpts)

				parentTable := supervisor.NewMapTable[string, supervisor.Runnable]()
				parentTable.Put("child", child)
				parentEvents := &recorder{}
				parent := supervisor.NewSupervisor(parentTable, quietOptions("parent", parentEvents))
				run := startRun(t, parent)
				for name, w := range workers {
					_, active := w.counts()
					require.Equal(t, 1, active, name)
				}

				require.NoError(t, tc.stop(run))
				for name, w := range workers {
					runs, active := w.counts()
					require.Equal(t, 1, runs, name)
					require.Zero(t, active, "%s returned before the parent's Run", name)
					require.Error(t, w.contexts()[0].Err(), name)
					kinds := childEvents.kinds(name)
					if tc.graceful {
						require.Equal(t, kindsStopped, kinds, name)
					} else {
						require.Equal(t, supervisor.EventStopped, kinds[len(kinds)-1], name)
						require.Equal(t, 1, restartCount(kinds, supervisor.EventStopped), name)
					}
				}
				parentKinds := parentEvents.kinds("child")
				if tc.graceful {
					require.Equal(t, kindsStopped, parentKinds)
				}
				require.Equal(t, supervisor.EventStopped, parentKinds[len(parentKinds)-1])
				require.Equal(t, 1, restartCount(parentKinds, supervisor.EventStopped))
				require.Empty(t, parentEvents.of(supervisor.EventFailed), "the child stopped cleanly")
				_, err := child.Get(t.Context(), "w1")
				require.ErrorIs(t, err, supervisor.ErrNotRunning, "the child's Run returned")
			})
		})
	}
}

// restartCount returns how many of kinds are kind.
func restartCount(kinds []supervisor.EventKind, kind supervisor.EventKind) int {
	n := 0
	for _, k := range kinds {
		if k == kind {
			n++
		}
	}
	return n
}
