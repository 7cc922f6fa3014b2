package supervisor_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// These tests check points of DESIGN.md "Core (contract)" that the other
// test files leave out, and races between a process's exit, Stop, table
// changes, group restarts and the final stop.

// contractStepBackoff answers 1×step, 2×step, 3×step... and starts over
// when reset.
type contractStepBackoff struct {
	step time.Duration
	n    int
}

func (b *contractStepBackoff) NextBackOff() time.Duration {
	b.n++
	return time.Duration(b.n) * b.step
}

func (b *contractStepBackoff) Reset() { b.n = 0 }

// contractSuperviseP runs a supervisor of the one row "p" holding proc,
// with kernel and a restart delay of 1s, that records its events into rec.
func contractSuperviseP(t *testing.T, proc *fakeProc, kernel *supervisor.ErrorKernel) (rec *recorder, sup *supervisor.Supervisor[string, *fakeProc], run *backgroundRun) {
	rows := supervisor.NewMapTable[string, *fakeProc]()
	rows.Put("p", proc)
	rec = &recorder{}
	opts := quietOptions("", rec)
	opts.Kernel = kernel
	opts.Backoff = constantBackoff(time.Second)
	sup = supervisor.NewSupervisor(rows, opts)
	return rec, sup, startRun(t, sup)
}

var errContractContinue = errors.New("transient glitch")

// Report (DESIGN.md "Error kernel").

func TestReportWithDoneContextAnswersAbortToItsCallerOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errReported := errors.New("bad message")
		errExit := errors.New("connection lost")
		answered := make(chan supervisor.Action, 1)
		exit := make(chan struct{})
		firstCtx := make(chan context.Context, 1)
		proc := &fakeProc{life: func(ctx context.Context, run int) error {
			if run > 1 {
				return serve(ctx)
			}
			firstCtx <- ctx
			reportCtx, cancel := context.WithCancel(ctx)
			cancel() // the caller's own ctx is done: the answer is Abort
			answered <- supervisor.Report(reportCtx, errReported, "msg-1")
			select {
			case <-exit:
				return errExit
			case <-ctx.Done():
				return nil
			}
		}}
		kernel := quietKernel(func(context.Context, supervisor.Failure) supervisor.Action {
			return supervisor.Kill // whatever the policy says
		})
		rec, sup, run := contractSuperviseP(t, proc, kernel)

		require.Equal(t, supervisor.Abort, <-answered)
		synctest.Wait()
		require.NoError(t, (<-firstCtx).Err(), "the supervisor did not act on the Abort")
		got, err := sup.Get(t.Context(), "p")
		require.NoError(t, err)
		require.Same(t, proc, got)
		require.Equal(t, []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady}, rec.kinds("p"))

		close(exit) // the exit that follows is handled like any exit
		time.Sleep(time.Second)
		synctest.Wait()
		recent := kernel.Recent()
		require.Len(t, recent, 2, "the exit is reported too")
		require.ErrorIs(t, recent[0].Failure.Err, errReported)
		require.False(t, recent[0].Failure.Exited)
		require.Equal(t, "msg-1", recent[0].Failure.Message)
		require.Equal(t, supervisor.Abort, recent[0].Action)
		require.ErrorIs(t, recent[1].Failure.Err, errExit)
		require.True(t, recent[1].Failure.Exited)
		require.Equal(t, supervisor.Kill, recent[1].Action)
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady,
			supervisor.EventFailed, supervisor.EventBackoff, supervisor.EventRestarting,
			supervisor.EventStarting, supervisor.EventReady,
		}, rec.kinds("p"))
		failed := rec.of(supervisor.EventFailed)
		require.ErrorIs(t, failed[0].Err, errExit)
		require.Equal(t, supervisor.Kill, failed[0].Action)
		runs, active := proc.counts()
		require.Equal(t, 2, runs)
		require.Equal(t, 1, active)

		require.NoError(t, run.stop())
	})
}

func TestReportWithNilErrorIsDecidedAndActedOn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		type reported struct {
			action supervisor.Action
			ctxErr error // the process's ctx right after Report returned
		}
		reports := make(chan reported, 1)
		proc := &fakeProc{life: func(ctx context.Context, run int) error {
			if run > 1 {
				return serve(ctx)
			}
			var action supervisor.Action
			func() {
				defer func() {
					if v := recover(); v != nil {
						action = supervisor.Action(255)
					}
				}()
				action = supervisor.Report(ctx, nil, "job-7")
			}()
			reports <- reported{action, ctx.Err()}
			<-ctx.Done()
			return ctx.Err()
		}}
		kernel := quietKernel(func(context.Context, supervisor.Failure) supervisor.Action { return supervisor.Kill })
		rec, _, run := contractSuperviseP(t, proc, kernel)

		got := <-reports
		require.Equal(t, supervisor.Kill, got.action, "decided, no panic")
		require.Error(t, got.ctxErr, "Kill cancelled the process before Report returned")
		time.Sleep(time.Second)
		synctest.Wait()
		recent := kernel.Recent()
		require.Len(t, recent, 1, "the exit after a Kill is not reported again")
		require.Equal(t, "job-7", recent[0].Failure.Message)
		require.False(t, recent[0].Failure.Exited)
		require.Equal(t, "supervisor/p", recent[0].Failure.Process)
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady,
			supervisor.EventFailed, supervisor.EventBackoff, supervisor.EventRestarting,
			supervisor.EventStarting, supervisor.EventReady,
		}, rec.kinds("p"))
		runs, active := proc.counts()
		require.Equal(t, 2, runs)
		require.Equal(t, 1, active)

		require.NoError(t, run.stop())
	})
}

// OnEvent (DESIGN.md "Supervisor": OnEvent may call Status, Keys and Get).

func TestOnEventMayCallStatusKeysAndGetWithoutDeadlock(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForOne, supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var (
					sup   *supervisor.Supervisor[string, *fakeProc]
					mu    sync.Mutex
					kinds = map[supervisor.EventKind]int{}
				)
				rows := supervisor.NewMapTable[string, *fakeProc]()
				for _, k := range []string{"a", "b", "c", "d", "e"} {
					rows.Put(k, &fakeProc{})
				}
				rows.Put("flaky", &fakeProc{life: func(ctx context.Context, run int) error {
					select {
					case <-time.After(3 * time.Second):
						return errBoom
					case <-ctx.Done():
						return nil
					}
				}})
				rows.Put("stubborn", &fakeProc{life: func(ctx context.Context, run int) error {
					<-ctx.Done()
					time.Sleep(time.Minute) // past both stop timeouts
					return nil
				}})
				opts := supervisor.Options{
					Logger:       quietLogger(),
					Kernel:       quietKernel(nil),
					Strategy:     strategy,
					Backoff:      constantBackoff(time.Second),
					StopTimeout:  time.Second,
					ScanInterval: 2 * time.Second,
					OnEvent: func(e supervisor.Event) {
						_ = sup.Status()
						_ = sup.Keys()
						if e.Process != "" {
							_, _ = sup.Get(context.Background(), e.Process)
						}
						mu.Lock()
						kinds[e.Kind]++
						mu.Unlock()
					},
				}
				sup = supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				time.Sleep(10 * time.Second) // restarts
				require.NoError(t, sup.Stop(t.Context(), "a"))
				rows.Delete("b")
				rows.Put("c", &fakeProc{})
				rows.Put("f", &fakeProc{})
				time.Sleep(10 * time.Second)
				require.NoError(t, run.stop())
				require.Nil(t, sup.Status())
				time.Sleep(time.Minute) // the stubborn process returns at last

				mu.Lock()
				defer mu.Unlock()
				for _, k := range []supervisor.EventKind{
					supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed,
					supervisor.EventBackoff, supervisor.EventRestarting, supervisor.EventStopping,
					supervisor.EventStopped, supervisor.EventStopTimeout,
				} {
					require.Positive(t, kinds[k], "an OnEvent for %v returned", k)
				}
			})
		})
	}
}

// Start, Stop and Get by process state (DESIGN.md "Supervisor").

func TestSupervisorStartOfKeyWaitingForRestartReturnsErrProcessExists(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForOne, supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				failing := &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})}
				rows := supervisor.NewMapTable[string, *fakeProc]()
				rows.Put("failing", failing)
				rows.Put("sibling", &fakeProc{})
				opts := quietOptions("", &recorder{})
				opts.Strategy = strategy
				opts.Backoff = constantBackoff(10 * time.Second)
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				time.Sleep(2 * time.Second) // failed at 1s, restarts at 11s
				synctest.Wait()
				st, ok := findStatus(sup.Status(), "failing")
				require.True(t, ok)
				require.Equal(t, supervisor.ProcessBackoff, st.State)
				_, err := sup.Start(t.Context(), "failing")
				require.ErrorIs(t, err, supervisor.ErrProcessExists)

				time.Sleep(10 * time.Second)
				synctest.Wait()
				runs, active := failing.counts()
				require.Equal(t, 2, runs, "restarted once, by the supervisor only")
				require.Equal(t, 1, active)
				_, err = sup.Get(t.Context(), "failing")
				require.NoError(t, err)

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorGetOfSiblingDownForGroupRestartReturnsErrProcessNotRunning(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				procs := failingSiblings()
				rows := procTable(procs, "a", "b", "c")
				opts := quietOptions("", &recorder{})
				opts.Strategy = strategy
				opts.Backoff = constantBackoff(10 * time.Second)
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				time.Sleep(2 * time.Second) // b failed at 1s, the group restarts at 11s
				synctest.Wait()
				_, err := sup.Get(t.Context(), "c")
				require.ErrorIs(t, err, supervisor.ErrProcessNotRunning, "c is down for b's group restart")
				st, ok := findStatus(sup.Status(), "c")
				require.True(t, ok)
				require.Equal(t, supervisor.ProcessBackoff, st.State)
				_, err = sup.Get(t.Context(), "b")
				require.ErrorIs(t, err, supervisor.ErrProcessNotRunning)
				_, err = sup.Get(t.Context(), "a")
				if strategy == supervisor.OneForAll {
					require.ErrorIs(t, err, supervisor.ErrProcessNotRunning, "a is down for b's group restart")
				} else {
					require.NoError(t, err, "RestForOne leaves the processes started before b alone")
				}
				require.Equal(t, []string{"a", "b", "c"}, sup.Keys(), "processes down for a group restart are still supervised")

				time.Sleep(10 * time.Second)
				synctest.Wait()
				for _, k := range []string{"a", "b", "c"} {
					got, err := sup.Get(t.Context(), k)
					require.NoError(t, err, k)
					require.Same(t, procs[k], got)
				}

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorGetOfProcessBeingStoppedForGoodReturnsErrProcessNotFound(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(t *testing.T, sup *supervisor.Supervisor[string, *fakeProc], rows *supervisor.MapTable[string, *fakeProc]) <-chan error
	}{
		{"Stop", func(t *testing.T, sup *supervisor.Supervisor[string, *fakeProc], _ *supervisor.MapTable[string, *fakeProc]) <-chan error {
			stopped := make(chan error, 1)
			go func() { stopped <- sup.Stop(context.Background(), "slow") }()
			return stopped
		}},
		{"row deleted", func(t *testing.T, _ *supervisor.Supervisor[string, *fakeProc], rows *supervisor.MapTable[string, *fakeProc]) <-chan error {
			require.True(t, rows.Delete("slow"))
			stopped := make(chan error, 1)
			stopped <- nil
			return stopped
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				slow := &fakeProc{life: func(ctx context.Context, run int) error {
					<-ctx.Done()
					time.Sleep(3 * time.Second) // a graceful stop that takes a while
					return nil
				}}
				rows := supervisor.NewMapTable[string, *fakeProc]()
				rows.Put("other", &fakeProc{})
				rows.Put("slow", slow)
				rec := &recorder{}
				sup := supervisor.NewSupervisor(rows, quietOptions("", rec))
				run := startRun(t, sup)

				stopped := tc.stop(t, sup, rows)
				time.Sleep(time.Second)
				synctest.Wait()
				_, err := sup.Get(t.Context(), "slow")
				require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
				require.Equal(t, []string{"other"}, sup.Keys())
				st, ok := findStatus(sup.Status(), "slow")
				require.True(t, ok, "Status includes the processes being stopped")
				require.Equal(t, supervisor.ProcessStopping, st.State)
				_, active := slow.counts()
				require.Equal(t, 1, active, "still stopping")

				require.NoError(t, <-stopped)
				time.Sleep(3 * time.Second)
				synctest.Wait()
				_, ok = findStatus(sup.Status(), "slow")
				require.False(t, ok)
				_, err = sup.Get(t.Context(), "slow")
				require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
				runs, active := slow.counts()
				require.Equal(t, 1, runs)
				require.Zero(t, active)
				require.Equal(t, []supervisor.EventKind{
					supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
				}, rec.kinds("slow"))

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorStopOfProcessInBackoffReturnsAtOnceAndItIsNotRestarted(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForOne, supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				failing := &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})}
				sibling := &fakeProc{}
				rows := supervisor.NewMapTable[string, *fakeProc]()
				rows.Put("failing", failing)
				rows.Put("sibling", sibling)
				rec := &recorder{}
				opts := quietOptions("", rec)
				opts.Strategy = strategy
				opts.Backoff = constantBackoff(10 * time.Second)
				opts.ScanInterval = time.Second
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				time.Sleep(2 * time.Second) // failed at 1s, restarts at 11s
				synctest.Wait()
				before := time.Now()
				require.NoError(t, sup.Stop(t.Context(), "failing"))
				require.Zero(t, time.Since(before), "nothing to wait for")

				time.Sleep(time.Minute) // past the restart and many scans
				synctest.Wait()
				runs, active := failing.counts()
				require.Equal(t, 1, runs, "not restarted")
				require.Zero(t, active)
				_, err := sup.Get(t.Context(), "failing")
				require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
				require.Equal(t, []string{"sibling"}, sup.Keys())
				kinds := rec.kinds("failing")
				require.NotContains(t, kinds, supervisor.EventRestarting)
				require.Equal(t, supervisor.EventStopped, kinds[len(kinds)-1])
				got, err := sup.Get(t.Context(), "sibling")
				require.NoError(t, err, "the sibling runs (again, after a group restart)")
				require.Same(t, sibling, got)

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorStoppedProcessStartsAgainOnlyWhenItsRowIsPutAgainOrComesBack(t *testing.T) {
	const scan = 10 * time.Second
	for _, tc := range []struct {
		name     string
		watched  bool
		change   func(rows *supervisor.MapTable[string, *fakeProc], p *fakeProc)
		wantRuns int
	}{
		{"watched: put again", true, func(rows *supervisor.MapTable[string, *fakeProc], p *fakeProc) {
			rows.Put("p", p)
		}, 2},
		{"watched: deleted then put", true, func(rows *supervisor.MapTable[string, *fakeProc], p *fakeProc) {
			rows.Delete("p")
			synctest.Wait()
			rows.Put("p", p)
		}, 2},
		{"watched: deleted", true, func(rows *supervisor.MapTable[string, *fakeProc], p *fakeProc) {
			rows.Delete("p")
		}, 1},
		{"scanned: deleted at one scan and back at the next", false, func(rows *supervisor.MapTable[string, *fakeProc], p *fakeProc) {
			rows.Delete("p")
			time.Sleep(scan)
			synctest.Wait()
			rows.Put("p", p)
		}, 2},
		{"scanned: deleted and put back between two scans", false, func(rows *supervisor.MapTable[string, *fakeProc], p *fakeProc) {
			rows.Delete("p")
			time.Sleep(scan / 2)
			rows.Put("p", p)
		}, 1},
		{"scanned: put again", false, func(rows *supervisor.MapTable[string, *fakeProc], p *fakeProc) {
			rows.Put("p", p)
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := &fakeProc{}
				rows := supervisor.NewMapTable[string, *fakeProc]()
				rows.Put("p", p)
				var table supervisor.Table[string, *fakeProc] = rows
				if !tc.watched {
					table = scanOnly[string, *fakeProc]{rows}
				}
				opts := quietOptions("", &recorder{})
				opts.ScanInterval = scan
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)
				time.Sleep(scan / 4) // between scans

				require.NoError(t, sup.Stop(t.Context(), "p"))
				tc.change(rows, p)
				time.Sleep(5 * scan)
				synctest.Wait()
				runs, active := p.counts()
				require.Equal(t, tc.wantRuns, runs)
				require.Equal(t, tc.wantRuns-1, active)
				_, err := sup.Get(t.Context(), "p")
				if tc.wantRuns == 2 {
					require.NoError(t, err)
				} else {
					require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
				}

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorKeepsStoppedRowStoppedWhenItsReadFailsDuringAScan(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const scan = 10 * time.Second
		p := &fakeProc{}
		table := newFaultyTable(procTable(map[string]*fakeProc{"p": p, "q": {}}, "p", "q"))
		rec := &recorder{}
		opts := quietOptions("", rec)
		opts.ScanInterval = scan
		sup := supervisor.NewSupervisor[string, *fakeProc](table, opts)
		run := startRun(t, sup)
		time.Sleep(scan / 2)

		require.NoError(t, sup.Stop(t.Context(), "p"))
		table.setBroken("p", true)
		time.Sleep(scan) // one scan cannot read p: it counts as present
		synctest.Wait()
		require.Len(t, rec.of(supervisor.EventTableError), 1)
		table.setBroken("p", false)
		time.Sleep(3 * scan)
		synctest.Wait()
		runs, active := p.counts()
		require.Equal(t, 1, runs, "p never disappeared from the table: it stays stopped")
		require.Zero(t, active)
		require.Equal(t, []string{"q"}, sup.Keys())

		require.NoError(t, run.stop())
	})
}

// Failure handling, backoff and intensity (DESIGN.md "Supervisor").

func TestSupervisorAbortsWhenCustomBackoffStopsUnderGroupStrategies(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				procs := failingSiblings()
				rows := procTable(procs, "a", "b", "c")
				rec := &recorder{}
				opts := quietOptions("", rec)
				opts.Strategy = strategy
				opts.ScanInterval = 10 * time.Second
				opts.Backoff = func() backoff.BackOff { return &backoff.StopBackOff{} }
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				time.Sleep(time.Minute) // b fails at 1s; five scans after
				synctest.Wait()
				require.Equal(t, []supervisor.EventKind{
					supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed, supervisor.EventAborted,
				}, rec.kinds("b"))
				require.Equal(t, supervisor.Kill, rec.of(supervisor.EventFailed)[0].Action, "the kernel said Kill; the backoff stopped")
				runs, active := procs["b"].counts()
				require.Equal(t, 1, runs, "aborted: not restarted")
				require.Zero(t, active)
				for _, k := range []string{"a", "c"} {
					require.Equal(t, []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady}, rec.kinds(k), k)
				}
				require.Equal(t, []string{"a", "c"}, sup.Keys())
				require.False(t, run.returned())

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorCountsAGroupRestartOnceTowardIntensity(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				// f fails 1s after each start; each failure restarts the
				// whole group 1s later: f fails at 1s, 3s and 5s.
				f := &fakeProc{life: failAfter(time.Second, errBoom)}
				siblings := []*fakeProc{{}, {}, {}}
				rows := supervisor.NewMapTable[string, *fakeProc]()
				rows.Put("f", f)
				for i, p := range siblings {
					rows.Put(string(rune('a'+i)), p)
				}
				rec := &recorder{}
				opts := quietOptions("", rec)
				opts.Strategy = strategy
				opts.Backoff = constantBackoff(time.Second)
				opts.MaxRestarts = 2
				opts.Period = time.Hour
				sup := supervisor.NewSupervisor(rows, opts)
				start := time.Now()
				run := startRun(t, sup)

				err := run.wait()
				require.ErrorIs(t, err, supervisor.ErrTooManyRestarts)
				require.Equal(t, 5*time.Second, time.Since(start), "given up at the third failure, not the first")
				runs, active := f.counts()
				require.Equal(t, 3, runs)
				require.Zero(t, active)
				for _, p := range siblings {
					runs, active := p.counts()
					require.Equal(t, 3, runs, "restarted with f twice")
					require.Zero(t, active)
				}
				require.Len(t, rec.of(supervisor.EventTooManyRestarts), 1)
			})
		})
	}
}

func TestSupervisorContinueRestartsAtOnceWithoutCountingOrBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Runs 1-11 fail at once; the kernel answers Continue to the first
		// ten exits and Kill to the eleventh.
		p := &fakeProc{life: func(ctx context.Context, run int) error {
			if run <= 11 {
				return errBoom
			}
			return serve(ctx)
		}}
		var (
			mu    sync.Mutex
			exits int
		)
		kernel := quietKernel(func(_ context.Context, f supervisor.Failure) supervisor.Action {
			mu.Lock()
			defer mu.Unlock()
			exits++
			if exits <= 10 {
				return supervisor.Continue
			}
			return supervisor.Kill
		})
		rows := supervisor.NewMapTable[string, *fakeProc]()
		rows.Put("p", p)
		rec := &recorder{}
		opts := quietOptions("", rec)
		opts.Kernel = kernel
		opts.MaxRestarts = 1
		opts.Period = time.Hour
		opts.Backoff = func() backoff.BackOff { return &contractStepBackoff{step: time.Second} }
		start := time.Now()
		run := startRun(t, supervisor.NewSupervisor(rows, opts))

		time.Sleep(time.Minute)
		synctest.Wait()
		require.False(t, run.returned(), "ten Continue restarts and one Kill restart do not exceed MaxRestarts=1")
		starts := p.startTimes()
		require.Len(t, starts, 12)
		for i, at := range starts[:11] {
			require.Equal(t, start, at, "run %d: Continue restarts at once", i+1)
		}
		require.Equal(t, start.Add(time.Second), starts[11], "the Kill waits the first backoff delay")
		backoffs := rec.of(supervisor.EventBackoff)
		require.Len(t, backoffs, 1)
		require.Equal(t, time.Second, backoffs[0].Delay)
		var actions []supervisor.Action
		for _, e := range rec.of(supervisor.EventFailed) {
			actions = append(actions, e.Action)
		}
		require.Len(t, actions, 11)
		require.Equal(t, supervisor.Kill, actions[10])
		require.NotContains(t, actions[:10], supervisor.Kill)
		require.Len(t, rec.of(supervisor.EventRestarting), 11)

		require.NoError(t, run.stop())
	})
}

func TestProcessStatusRestartsCountsEveryRestartUntilTheRowIsPutAgain(t *testing.T) {
	restartsOf := func(t *testing.T, sup *supervisor.Supervisor[string, *fakeProc], key string) int {
		t.Helper()
		st, ok := findStatus(sup.Status(), key)
		require.True(t, ok, key)
		return st.Restarts
	}
	t.Run("Continue and Kill restarts, then a replacement", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &fakeProc{life: failRuns(time.Second, map[int]error{
				1: errContractContinue, 2: errBoom, 3: errContractContinue,
			})}
			kernel := quietKernel(func(_ context.Context, f supervisor.Failure) supervisor.Action {
				if errors.Is(f.Err, errContractContinue) {
					return supervisor.Continue
				}
				return supervisor.Kill
			})
			rows := supervisor.NewMapTable[string, *fakeProc]()
			rows.Put("p", p)
			opts := quietOptions("", &recorder{})
			opts.Kernel = kernel
			opts.Backoff = constantBackoff(time.Second)
			sup := supervisor.NewSupervisor(rows, opts)
			run := startRun(t, sup)
			require.Zero(t, restartsOf(t, sup, "p"), "the first start is no restart")

			time.Sleep(10 * time.Second) // fails at 1s (Continue), 2s (Kill), 4s (Continue)
			synctest.Wait()
			runs, _ := p.counts()
			require.Equal(t, 4, runs)
			require.Equal(t, 3, restartsOf(t, sup, "p"))

			rows.Put("p", p) // replaced: a fresh process of the row
			synctest.Wait()
			runs, active := p.counts()
			require.Equal(t, 5, runs)
			require.Equal(t, 1, active)
			require.Zero(t, restartsOf(t, sup, "p"))

			require.NoError(t, run.stop())
		})
	})
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String()+" group restarts", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rows := supervisor.NewMapTable[string, *fakeProc]()
				rows.Put("a", &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})})
				rows.Put("b", &fakeProc{})
				opts := quietOptions("", &recorder{})
				opts.Strategy = strategy
				opts.Backoff = constantBackoff(time.Second)
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				time.Sleep(5 * time.Second)
				synctest.Wait()
				require.Equal(t, 1, restartsOf(t, sup, "a"))
				require.Equal(t, 1, restartsOf(t, sup, "b"), "restarted with a")

				require.NoError(t, run.stop())
			})
		})
	}
}

// Run (DESIGN.md "Supervisor").

func TestRunReturnsAtOnceWithContextErrorWhenCancelledWhileAProcessStarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu     sync.Mutex
			active int
		)
		neverReady := service(func(ctx context.Context, callback supervisor.Callback) error {
			mu.Lock()
			active++
			mu.Unlock()
			defer func() {
				mu.Lock()
				active--
				mu.Unlock()
			}()
			<-ctx.Done() // preparing, never ready
			return ctx.Err()
		})
		rows := supervisor.NewMapTable[string, supervisor.Runnable]()
		rows.Put("ready", supervisor.RunnableFunc(serve))
		rows.Put("slow", neverReady)
		rec := &recorder{}
		sup := supervisor.NewSupervisor(rows, quietOptions("", rec))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		called := false
		done := make(chan error, 1)
		go func() {
			done <- sup.Run(ctx, func(context.Context) error { called = true; return nil })
		}()

		time.Sleep(5 * time.Second) // StartTimeout is 1m
		synctest.Wait()
		cancel()
		cancelled := time.Now()
		err := <-done
		require.ErrorIs(t, err, context.Canceled)
		require.Zero(t, time.Since(cancelled), "Run returns at once")
		require.False(t, called, "the callback is never called")
		mu.Lock()
		require.Zero(t, active, "the starting process has returned")
		mu.Unlock()
		require.Nil(t, sup.Status())
		// Whether its last events were delivered before Run returned is
		// checked by TestRunReturnsOnlyAfterTheEventsOfAnEndedProcessWereDelivered.
		kinds := rec.kinds("slow")
		require.Equal(t, supervisor.EventStarting, kinds[0])
		require.NotContains(t, kinds, supervisor.EventReady)
	})
}

// Error kernel shared by supervisors (DESIGN.md "Error kernel").

func TestSharedKernelSlowPolicyForOneSupervisorDoesNotDelayAnother(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		waiting := make(chan struct{})
		kernel := quietKernel(func(ctx context.Context, f supervisor.Failure) supervisor.Action {
			if f.Process == "slow/p" { // an operator who takes his time
				close(waiting)
				select {
				case <-release:
				case <-ctx.Done():
				}
				return supervisor.Kill
			}
			return supervisor.DefaultPolicy(ctx, f)
		})
		newSup := func(name string, p *fakeProc) *supervisor.Supervisor[string, *fakeProc] {
			rows := supervisor.NewMapTable[string, *fakeProc]()
			rows.Put("p", p)
			opts := quietOptions("", &recorder{})
			opts.Name = name
			opts.Kernel = kernel
			opts.Backoff = constantBackoff(time.Second)
			return supervisor.NewSupervisor(rows, opts)
		}
		slow := &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})}
		fast := &fakeProc{life: failAfter(time.Second, errBoom)}
		slowRun := startRun(t, newSup("slow", slow))
		start := time.Now()
		fastRun := startRun(t, newSup("fast", fast))

		time.Sleep(19 * time.Second)
		synctest.Wait()
		select {
		case <-waiting:
		default:
			require.FailNow(t, "the slow policy was never asked")
		}
		runs, _ := slow.counts()
		require.Equal(t, 1, runs, "its restart waits for the slow decision")
		starts := fast.startTimes()
		require.Len(t, starts, 10, "fast restarts every 2s, undelayed")
		for i, at := range starts {
			require.Equal(t, start.Add(time.Duration(2*i)*time.Second), at, "run %d", i+1)
		}

		require.NoError(t, fastRun.stop())
		require.NoError(t, slowRun.stop())
	})
}

// Stop timeouts of a deleted row (DESIGN.md ground rules and "Supervisor").

func TestDeletedRowsProcessIgnoringItsContextIsReportedAndNeverRestarted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const stopTimeout = time.Second
		stubborn := &fakeProc{life: func(ctx context.Context, run int) error {
			<-ctx.Done()
			time.Sleep(5 * stopTimeout) // ignores the stop past both timeouts
			return nil
		}}
		rows := supervisor.NewMapTable[string, *fakeProc]()
		rows.Put("stubborn", stubborn)
		rows.Put("other", &fakeProc{})
		rec := &recorder{}
		opts := quietOptions("", rec)
		opts.StopTimeout = stopTimeout
		opts.ScanInterval = 2 * time.Second
		sup := supervisor.NewSupervisor(rows, opts)
		run := startRun(t, sup)

		deleted := time.Now()
		require.True(t, rows.Delete("stubborn"))
		time.Sleep(3 * stopTimeout)
		synctest.Wait()
		timeouts := rec.of(supervisor.EventStopTimeout)
		require.Len(t, timeouts, 1)
		require.Equal(t, "stubborn", timeouts[0].Process)
		require.Equal(t, 2*stopTimeout, timeouts[0].Time.Sub(deleted))
		require.ErrorIs(t, timeouts[0].Err, supervisor.ErrStopTimeout)
		_, err := sup.Get(t.Context(), "stubborn")
		require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
		require.Equal(t, []string{"other"}, sup.Keys())

		time.Sleep(time.Minute) // it returns at 5s; many scans after
		synctest.Wait()
		runs, active := stubborn.counts()
		require.Equal(t, 1, runs, "never restarted")
		require.Zero(t, active, "it returned")
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping,
			supervisor.EventStopTimeout, supervisor.EventStopped,
		}, rec.kinds("stubborn"))
		_, ok := findStatus(sup.Status(), "stubborn")
		require.False(t, ok)
		require.Equal(t, []string{"other"}, sup.Keys())

		require.NoError(t, run.stop())
	})
}

// Races and corner cases found by reading the implementation.

func TestGroupRestartRestartsSiblingThatReturnedAfterItsStopTimeout(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const stopTimeout = time.Second
				failing := &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})}
				slowToStop := &fakeProc{life: func(ctx context.Context, run int) error {
					<-ctx.Done()
					if run == 1 {
						time.Sleep(10 * stopTimeout) // past both stop timeouts, then it returns
					}
					return nil
				}}
				rows := supervisor.NewMapTable[string, *fakeProc]()
				rows.Put("failing", failing)
				rows.Put("slow", slowToStop)
				rec := &recorder{}
				opts := quietOptions("", rec)
				opts.Strategy = strategy
				opts.StopTimeout = stopTimeout
				opts.Backoff = constantBackoff(time.Second)
				opts.ScanInterval = 5 * time.Second
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				time.Sleep(time.Minute) // failing fails at 1s; slow returns at 11s
				synctest.Wait()
				require.Len(t, rec.of(supervisor.EventStopTimeout), 1)
				_, err := sup.Get(t.Context(), "failing")
				require.NoError(t, err, "restarted")
				runs, active := slowToStop.counts()
				st, _ := findStatus(sup.Status(), "slow")
				require.Equal(t, 2, runs, "the sibling is restarted once it returned (state %v, events %v)", st.State, rec.kinds("slow"))
				require.Equal(t, 1, active)
				_, err = sup.Get(t.Context(), "slow")
				require.NoError(t, err)

				require.NoError(t, run.stop())
			})
		})
	}
}

// contractOperatorPolicy answers exits only when released or when its ctx
// is done, as a policy that waits must; it closes asked when it starts
// waiting and answered when it answers.
func contractOperatorPolicy(asked, answered, release chan struct{}) supervisor.Policy {
	return func(ctx context.Context, f supervisor.Failure) supervisor.Action {
		if !f.Exited {
			return supervisor.Continue
		}
		close(asked)
		defer close(answered)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return supervisor.Kill
	}
}

// contractExitAwaitingKernel is a supervisor of one row "p" whose first
// run fails at 1s, with StopTimeout 10s and a kernel that decides that
// exit only when the test ends (see contractOperatorPolicy).
type contractExitAwaitingKernel struct {
	failing  *fakeProc
	rec      *recorder
	sup      *supervisor.Supervisor[string, *fakeProc]
	run      *backgroundRun
	answered chan struct{} // closed once the kernel answered
}

// contractAwaitKernel runs the scenario and returns 1s after p's exit
// reached the kernel.
func contractAwaitKernel(t *testing.T) *contractExitAwaitingKernel {
	const stopTimeout = 10 * time.Second
	asked, answered, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	sc := &contractExitAwaitingKernel{
		failing:  &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})},
		rec:      &recorder{},
		answered: answered,
	}
	rows := supervisor.NewMapTable[string, *fakeProc]()
	rows.Put("p", sc.failing)
	opts := quietOptions("", sc.rec)
	opts.Kernel = quietKernel(contractOperatorPolicy(asked, answered, release))
	opts.StopTimeout = stopTimeout
	sc.sup = supervisor.NewSupervisor(rows, opts)
	sc.run = startRun(t, sc.sup)
	// Registered after startRun's cleanup, so it runs first: the kernel is
	// released before Run is stopped, and no goroutine is left if an
	// assertion fails.
	t.Cleanup(func() { close(release) })

	<-asked // p failed at 1s; its exit waits for the kernel
	time.Sleep(time.Second)
	return sc
}

func TestRunReturnsAtOnceWhenCallbackReturnsWhileAnExitAwaitsTheKernel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := contractAwaitKernel(t)
		finished := time.Now()
		require.NoError(t, sc.run.shutdown()) // the callback returns: Run stops everything
		require.Zero(t, time.Since(finished), "no process is running: nothing to wait for")
		require.Empty(t, sc.rec.of(supervisor.EventStopTimeout), "p returned long ago")
		select {
		case <-sc.answered:
		default:
			require.FailNow(t, "Run returned while the kernel still decides p's exit: its goroutine outlives Run")
		}
		runs, active := sc.failing.counts()
		require.Equal(t, 1, runs, "the decision that came because Run ended is not acted upon")
		require.Zero(t, active)
	})
}

func TestStopOfProcessWhoseExitAwaitsTheKernelDoesNotTimeOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := contractAwaitKernel(t)
		stopped := time.Now()
		err := sc.sup.Stop(context.Background(), "p")
		require.NoError(t, err, "p has returned: Stop must not report ErrStopTimeout")
		require.Zero(t, time.Since(stopped))
		require.Empty(t, sc.rec.of(supervisor.EventStopTimeout))
		synctest.Wait()
		_, err = sc.sup.Get(t.Context(), "p")
		require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
		runs, active := sc.failing.counts()
		require.Equal(t, 1, runs)
		require.Zero(t, active)

		require.NoError(t, sc.run.stop())
	})
}

func TestRunReturnsOnlyAfterTheEventsOfAnEndedProcessWereDelivered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rows := supervisor.NewMapTable[string, *fakeProc]()
		rows.Put("p", &fakeProc{life: failRuns(time.Second, map[int]error{1: supervisor.ErrAbort})})
		entered := make(chan struct{})
		var (
			mu         sync.Mutex
			delivering bool
		)
		opts := quietOptions("", nil)
		opts.OnEvent = func(e supervisor.Event) {
			if e.Kind != supervisor.EventAborted {
				return
			}
			mu.Lock()
			delivering = true
			mu.Unlock()
			close(entered)
			time.Sleep(time.Second) // a slow sink: a log shipper, a metrics push
			mu.Lock()
			delivering = false
			mu.Unlock()
		}
		sup := supervisor.NewSupervisor[string, *fakeProc](scanOnly[string, *fakeProc]{rows}, opts)
		run := startRun(t, sup)

		<-entered // p aborted at 1s; its EventAborted is being delivered
		// Let the delivery end if Run did not wait for it.
		defer time.Sleep(time.Second)
		require.NoError(t, run.stop())
		mu.Lock()
		defer mu.Unlock()
		require.False(t, delivering, "Run returned while its process goroutine was still delivering an event")
	})
}

func TestProcessReadyJustAsItsStartTimesOutEitherFailsItsStartOrKeepsRunning(t *testing.T) {
	// The start timer and the readiness race at the same virtual instant;
	// each outcome is fine, a ready process stopped by the timer is not.
	for i := range 1000 {
		synctest.Test(t, func(t *testing.T) {
			const startTimeout = time.Second
			p := &fakeProc{}
			rows := supervisor.NewMapTable[string, supervisor.Runnable]()
			rows.Put("p", service(func(ctx context.Context, callback supervisor.Callback) error {
				time.Sleep(startTimeout) // prepares for exactly StartTimeout
				return p.Run(ctx, callback)
			}))
			rec := &recorder{}
			opts := quietOptions("", rec)
			opts.StartTimeout = startTimeout
			opts.Backoff = constantBackoff(time.Hour)
			sup := supervisor.NewSupervisor(rows, opts)
			run := startRun(t, sup)

			time.Sleep(10 * time.Second)
			synctest.Wait()
			kinds := rec.kinds("p")
			if len(kinds) > 1 && kinds[1] == supervisor.EventReady {
				require.Equal(t, []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady}, kinds,
					"attempt %d: ready, so it keeps running", i)
				_, active := p.counts()
				require.Equal(t, 1, active)
			} else {
				require.Equal(t, []supervisor.EventKind{supervisor.EventStarting, supervisor.EventFailed, supervisor.EventBackoff}, kinds,
					"attempt %d: not ready in time, so its start failed", i)
				require.ErrorIs(t, rec.of(supervisor.EventFailed)[0].Err, supervisor.ErrStartTimeout)
			}

			require.NoError(t, run.stop())
		})
	}
}

func TestRowPutAgainWhileTheKernelDecidesAnExitStartsTheNewValueWhateverTheAnswer(t *testing.T) {
	for _, tc := range []struct {
		restart supervisor.RestartPolicy
		answer  supervisor.Action
	}{
		{supervisor.Permanent, supervisor.Continue},
		{supervisor.Permanent, supervisor.Kill},
		{supervisor.Permanent, supervisor.Abort},
		{supervisor.Temporary, supervisor.Kill},
	} {
		answer := tc.answer
		t.Run(tc.restart.String()+" "+answer.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				asked, release := make(chan struct{}), make(chan struct{})
				kernel := quietKernel(func(ctx context.Context, f supervisor.Failure) supervisor.Action {
					close(asked)
					select {
					case <-release:
					case <-ctx.Done():
					}
					return answer
				})
				old := &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})}
				next := &fakeProc{}
				rows := supervisor.NewMapTable[string, *fakeProc]()
				rows.Put("p", old)
				rec := &recorder{}
				opts := quietOptions("", rec)
				opts.Kernel = kernel
				opts.Restart = tc.restart
				opts.Backoff = constantBackoff(time.Second)
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				<-asked // old failed at 1s; the kernel decides
				rows.Put("p", next)
				synctest.Wait()
				close(release)
				time.Sleep(5 * time.Second)
				synctest.Wait()
				runs, active := next.counts()
				require.Equal(t, 1, runs, "the row was put again after the failure: its new value runs (events %v)", rec.kinds("p"))
				require.Equal(t, 1, active)
				got, err := sup.Get(t.Context(), "p")
				require.NoError(t, err)
				require.Same(t, next, got)
				runs, active = old.counts()
				require.Equal(t, 1, runs, "the old value is not restarted")
				require.Zero(t, active)

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSiblingDownForGroupRestartWhenRunEndsIsStoppedOnce(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rows := supervisor.NewMapTable[string, *fakeProc]()
				rows.Put("failing", &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})})
				rows.Put("sibling", &fakeProc{})
				rec := &recorder{}
				opts := quietOptions("", rec)
				opts.Strategy = strategy
				opts.Backoff = constantBackoff(10 * time.Second)
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				time.Sleep(2 * time.Second) // failing failed at 1s; the group restarts at 11s
				synctest.Wait()
				require.NoError(t, run.stop())
				require.Equal(t, []supervisor.EventKind{
					supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
				}, rec.kinds("sibling"), "one life, one EventStopped")
				require.Equal(t, []supervisor.EventKind{
					supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed, supervisor.EventBackoff,
					supervisor.EventStopped,
				}, rec.kinds("failing"))
			})
		})
	}
}

func TestSupervisorStopForcesTheStopWhenItsContextIsDone(t *testing.T) {
	const stopTimeout = 10 * time.Second
	for _, tc := range []struct {
		name      string
		ctxDoneIn time.Duration // -1: done before Stop is called
		obeysCtx  bool          // the process returns once forced
		wantIn    time.Duration
		wantErr   error
	}{
		{"ctx done during the graceful wait", 2 * time.Second, true, 2 * time.Second, nil},
		{"ctx done before Stop", -1, true, 0, nil},
		{"process ignores the forced stop", 2 * time.Second, false, 2*time.Second + stopTimeout, supervisor.ErrStopTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				release := make(chan struct{})
				defer close(release)
				var forcedAt time.Time
				// It ignores the graceful stop (callback returned) and, if it
				// obeys, returns when its ctx is cancelled.
				stubborn := service(func(ctx context.Context, callback supervisor.Callback) error {
					_ = callback(ctx)
					if tc.obeysCtx {
						<-ctx.Done()
						forcedAt = time.Now()
						return nil
					}
					<-release
					return nil
				})
				rows := supervisor.NewMapTable[string, supervisor.Runnable]()
				rows.Put("p", stubborn)
				opts := quietOptions("", &recorder{})
				opts.StopTimeout = stopTimeout
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				if tc.ctxDoneIn < 0 {
					cancel()
				} else {
					time.AfterFunc(tc.ctxDoneIn, cancel)
				}
				start := time.Now()
				err := sup.Stop(ctx, "p")
				require.Equal(t, tc.wantIn, time.Since(start))
				if tc.wantErr != nil {
					require.ErrorIs(t, err, tc.wantErr)
					return
				}
				require.NoError(t, err)
				require.Equal(t, start.Add(max(tc.ctxDoneIn, 0)), forcedAt, "forced when Stop's ctx was done")

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestGroupRestartNeverRestartsAProcessWhoseRowWasDeleted(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		for _, deleted := range []string{"a", "b"} {
			t.Run(strategy.String()+" "+deleted+" deleted", func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					procs := map[string]*fakeProc{
						"a": {life: failRuns(time.Second, map[int]error{1: errBoom})},
						"b": {},
					}
					rows := procTable(procs, "a", "b")
					rec := &recorder{}
					opts := quietOptions("", rec)
					opts.Strategy = strategy
					opts.ScanInterval = time.Hour // no scan sees the delete before the restart
					opts.Backoff = constantBackoff(10 * time.Second)
					sup := supervisor.NewSupervisor[string, *fakeProc](scanOnly[string, *fakeProc]{rows}, opts)
					run := startRun(t, sup)

					time.Sleep(2 * time.Second) // a failed at 1s; the group restarts at 11s
					synctest.Wait()
					require.True(t, rows.Delete(deleted))
					time.Sleep(time.Minute)
					synctest.Wait()
					kept := map[string]string{"a": "b", "b": "a"}[deleted]
					runs, active := procs[deleted].counts()
					require.Equal(t, 1, runs, "never restarted")
					require.Zero(t, active)
					runs, active = procs[kept].counts()
					require.Equal(t, 2, runs, "restarted by the group restart")
					require.Equal(t, 1, active)
					require.Equal(t, []string{kept}, sup.Keys())
					kinds := rec.kinds(deleted)
					require.NotContains(t, kinds, supervisor.EventRestarting)
					require.Equal(t, supervisor.EventStopped, kinds[len(kinds)-1])

					require.NoError(t, run.stop())
				})
			})
		}
	}
}

func TestProcessWhoseExitAwaitsTheKernelDuringASiblingsGroupRestartIsRestarted(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		t.Run(strategy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const stopTimeout = time.Second
				// a fails at 2s and is decided at once; b fails at 1s and its
				// decision takes 5s: b's exit is pending during a's group
				// restart.
				kernel := quietKernel(func(ctx context.Context, f supervisor.Failure) supervisor.Action {
					if f.Process == "supervisor/b" {
						select {
						case <-time.After(5 * time.Second):
						case <-ctx.Done():
						}
					}
					return supervisor.Kill
				})
				procs := map[string]*fakeProc{
					"a": {life: failRuns(2*time.Second, map[int]error{1: errBoom})},
					"b": {life: failRuns(time.Second, map[int]error{1: errBoom})},
				}
				rows := procTable(procs, "a", "b")
				rec := &recorder{}
				opts := quietOptions("", rec)
				opts.Kernel = kernel
				opts.Strategy = strategy
				opts.StopTimeout = stopTimeout
				opts.ScanInterval = time.Hour
				opts.Backoff = constantBackoff(time.Second)
				sup := supervisor.NewSupervisor(rows, opts)
				run := startRun(t, sup)

				time.Sleep(time.Minute)
				synctest.Wait()
				for _, k := range []string{"a", "b"} {
					runs, active := procs[k].counts()
					require.Equal(t, 2, runs, "%s restarted once (events %v)", k, rec.kinds(k))
					require.Equal(t, 1, active, k)
					_, err := sup.Get(t.Context(), k)
					require.NoError(t, err, k)
				}
				require.Empty(t, rec.of(supervisor.EventStopTimeout), "b had returned: there was nothing to time out")

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSiblingStoppedDeletedOrPutAgainDuringAGroupRestartFollowsItsRow(t *testing.T) {
	for _, strategy := range []supervisor.Strategy{supervisor.OneForAll, supervisor.RestForOne} {
		for _, tc := range []struct {
			name     string
			change   func(t *testing.T, sup *supervisor.Supervisor[string, *fakeProc], rows *supervisor.MapTable[string, *fakeProc], next *fakeProc)
			wantNext bool // the sibling's row runs next; otherwise nothing runs it
		}{
			{"Stop", func(t *testing.T, sup *supervisor.Supervisor[string, *fakeProc], _ *supervisor.MapTable[string, *fakeProc], _ *fakeProc) {
				require.NoError(t, sup.Stop(t.Context(), "sibling"))
			}, false},
			{"row deleted", func(_ *testing.T, _ *supervisor.Supervisor[string, *fakeProc], rows *supervisor.MapTable[string, *fakeProc], _ *fakeProc) {
				rows.Delete("sibling")
			}, false},
			{"row put again", func(_ *testing.T, _ *supervisor.Supervisor[string, *fakeProc], rows *supervisor.MapTable[string, *fakeProc], next *fakeProc) {
				rows.Put("sibling", next)
			}, true},
		} {
			t.Run(strategy.String()+" "+tc.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					failing := &fakeProc{life: failRuns(time.Second, map[int]error{1: errBoom})}
					sibling, next := &fakeProc{}, &fakeProc{}
					rows := supervisor.NewMapTable[string, *fakeProc]()
					rows.Put("failing", failing)
					rows.Put("sibling", sibling)
					opts := quietOptions("", &recorder{})
					opts.Strategy = strategy
					opts.Backoff = constantBackoff(10 * time.Second)
					opts.ScanInterval = 5 * time.Second
					sup := supervisor.NewSupervisor(rows, opts)
					run := startRun(t, sup)

					time.Sleep(2 * time.Second) // failing failed at 1s; the group restarts at 11s
					synctest.Wait()
					tc.change(t, sup, rows, next)
					time.Sleep(time.Minute)
					synctest.Wait()

					runs, active := failing.counts()
					require.Equal(t, 2, runs, "the failed process is restarted")
					require.Equal(t, 1, active)
					runs, active = sibling.counts()
					require.Equal(t, 1, runs, "the old sibling is not restarted")
					require.Zero(t, active)
					runs, active = next.counts()
					got, err := sup.Get(t.Context(), "sibling")
					if tc.wantNext {
						require.Equal(t, 1, runs)
						require.Equal(t, 1, active)
						require.NoError(t, err)
						require.Same(t, next, got)
						require.Equal(t, []string{"failing", "sibling"}, sup.Keys())
					} else {
						require.Zero(t, runs)
						require.ErrorIs(t, err, supervisor.ErrProcessNotFound)
						require.Equal(t, []string{"failing"}, sup.Keys())
					}

					require.NoError(t, run.stop())
				})
			})
		}
	}
}

func TestSupervisorFailedStartIsTriedAgainByTheNextScan(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const scan = 30 * time.Second
		errBadConfig := errors.New("bad config")
		var (
			mu   sync.Mutex
			runs int
		)
		svc := service(func(ctx context.Context, callback supervisor.Callback) error {
			mu.Lock()
			runs++
			run := runs
			mu.Unlock()
			if run == 1 {
				return errBadConfig // before ready: a start failure
			}
			return callback(ctx)
		})
		rows := supervisor.NewMapTable[string, supervisor.Runnable]()
		opts := quietOptions("", &recorder{})
		opts.ScanInterval = scan
		sup := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, opts)
		run := startRun(t, sup)
		time.Sleep(scan / 2)

		rows.Put("p", svc)
		_, err := sup.Start(t.Context(), "p")
		require.ErrorIs(t, err, errBadConfig)
		require.Empty(t, sup.Keys(), "a failed Start leaves nothing running")

		time.Sleep(scan) // the next scan tries the row again
		synctest.Wait()
		mu.Lock()
		require.Equal(t, 2, runs)
		mu.Unlock()
		got, err := sup.Get(t.Context(), "p")
		require.NoError(t, err)
		require.NotNil(t, got)

		require.NoError(t, run.stop())
	})
}
