package supervisor_test

import (
	"context"
	"errors"
	"log/slog"
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

// supKeyedTable returns a MapTable of the given rows, in order.
func supKeyedTable(rows ...supKeyed) *supervisor.MapTable[string, supervisor.Runnable] {
	table := supervisor.NewMapTable[string, supervisor.Runnable]()
	for _, r := range rows {
		table.Put(r.key, r.run)
	}
	return table
}

type supKeyed struct {
	key string
	run supervisor.Runnable
}

// Runnable contract (DESIGN.md "Runnable").

func TestSupervisorStartReturnsOnlyAfterCustomRunnableCalledCallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var setupDone, callbackCalled atomic.Bool
		svc := service(func(ctx context.Context, callback supervisor.Callback) error {
			time.Sleep(5 * time.Second) // prepare: open files, dial, warm caches
			setupDone.Store(true)
			callbackCalled.Store(true)
			return callback(ctx)
		})
		rows := supervisor.NewMapTable[string, supervisor.Runnable]()
		ev := &recorder{}
		s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, quietOptions("", ev))
		run := startRunReady(t, s)
		rows.Put("svc", svc)

		start := time.Now()
		_, err := s.Start(context.Background(), "svc")
		require.NoError(t, err)
		require.Equal(t, 5*time.Second, time.Since(start), "Start returns when the process is ready")
		require.True(t, setupDone.Load())
		require.True(t, callbackCalled.Load())
		_, err = s.Get(context.Background(), "svc")
		require.NoError(t, err)
		st := requireStatus(t, s.Status(), "svc")
		require.Equal(t, supervisor.ProcessRunning, st.State)
		require.True(t, st.Since.Equal(start.Add(5*time.Second)), "ready at %v", st.Since)
		synctest.Wait() // see TestSupervisorCleanLifeEventsStayInOrderWithASlowLogger
		require.Equal(t, []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady}, ev.kinds("svc"))

		require.NoError(t, run.stop())
	})
}

func TestSupervisorStopIsGracefulWhenRunnableShutsDownAfterCallbackReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ctxErrWhenCallbackReturned error
		var shutDown atomic.Bool
		svc := service(func(ctx context.Context, callback supervisor.Callback) error {
			err := callback(ctx) // returns when the supervisor asks for a graceful stop
			ctxErrWhenCallbackReturned = ctx.Err()
			time.Sleep(time.Second) // flush, close connections
			shutDown.Store(true)
			return err
		})
		kernel := quietKernel(nil)
		ev := &recorder{}
		opts := quietOptions("", ev)
		opts.Kernel = kernel
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"svc", svc}), opts)
		run := startRunReady(t, s)

		start := time.Now()
		require.NoError(t, s.Stop(context.Background(), "svc"))
		require.Equal(t, time.Second, time.Since(start), "Stop waits for the graceful shutdown")
		require.True(t, shutDown.Load())
		require.NoError(t, ctxErrWhenCallbackReturned, "a graceful stop does not cancel the process's ctx")
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
		}, ev.kinds("svc"))
		require.NoError(t, ev.about("svc")[3].Err, "a clean stop")
		require.Empty(t, kernel.Recent(), "a clean stop is not a failure")

		require.NoError(t, run.stop())
	})
}

func TestSupervisorForcesStopByCancellingContextAfterStopTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		forcedAt := make(chan time.Time, 1)
		svc := service(func(ctx context.Context, callback supervisor.Callback) error {
			_ = callback(ctx)
			<-ctx.Done() // a shutdown that only ends when forced
			forcedAt <- time.Now()
			return ctx.Err()
		})
		kernel := quietKernel(nil)
		ev := &recorder{}
		opts := quietOptions("", ev)
		opts.Kernel = kernel
		opts.StopTimeout = 3 * time.Second
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"svc", svc}), opts)
		run := startRunReady(t, s)

		stopAsked := time.Now()
		require.NoError(t, s.Stop(context.Background(), "svc"))
		require.Equal(t, 3*time.Second, time.Since(stopAsked), "Stop returns once the forced process returned")
		require.Equal(t, 3*time.Second, (<-forcedAt).Sub(stopAsked), "the process's ctx is cancelled after StopTimeout")
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
		}, ev.kinds("svc"))
		require.NoError(t, ev.about("svc")[3].Err, "returning ctx.Err() after a forced stop is a clean stop")
		require.Empty(t, kernel.Recent())

		require.NoError(t, run.stop())
	})
}

func TestSupervisorRunContextCancelledForcesProcessesToStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var callbackReturned, ctxDone atomic.Bool
		svc := service(func(ctx context.Context, callback supervisor.Callback) error {
			_ = callback(ctx)
			callbackReturned.Store(true)
			<-ctx.Done()
			ctxDone.Store(true)
			return ctx.Err()
		})
		opts := quietOptions("", nil)
		opts.StopTimeout = time.Hour
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"svc", svc}), opts)
		run := startRunReady(t, s)

		start := time.Now()
		require.NoError(t, run.stop())
		require.Zero(t, time.Since(start), "a cancelled Run ctx forces the stop at once")
		require.True(t, callbackReturned.Load())
		require.True(t, ctxDone.Load())
	})
}

func TestSupervisorRestartsRunnableThatFailsWhileRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		diskFull := errors.New("disk full")
		var runs atomic.Int32
		var callbackReturnedAfterFailure atomic.Bool
		svc := service(func(ctx context.Context, callback supervisor.Callback) error {
			first := runs.Add(1) == 1
			callbackCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			callbackDone := make(chan error, 1)
			go func() { callbackDone <- callback(callbackCtx) }()
			if !first {
				return <-callbackDone
			}
			select {
			case <-time.After(time.Second):
				cancel() // failing: the callback must return
				<-callbackDone
				callbackReturnedAfterFailure.Store(true)
				return diskFull
			case err := <-callbackDone:
				return err
			}
		})
		kernel := quietKernel(nil)
		ev := &recorder{}
		opts := quietOptions("", ev)
		opts.Kernel = kernel
		opts.Backoff = constantBackoff(2 * time.Second)
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"svc", svc}), opts)
		run := startRunReady(t, s)
		start := time.Now()

		time.Sleep(4 * time.Second) // fails at 1s, restarts at 3s
		synctest.Wait()
		require.True(t, callbackReturnedAfterFailure.Load())
		require.Equal(t, int32(2), runs.Load())

		decisions := kernel.Recent()
		require.Len(t, decisions, 1)
		require.Equal(t, "supervisor/svc", decisions[0].Failure.Process)
		require.ErrorIs(t, decisions[0].Failure.Err, diskFull)
		require.True(t, decisions[0].Failure.Exited)
		require.Equal(t, supervisor.Kill, decisions[0].Action)

		events := ev.about("svc")
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed, supervisor.EventBackoff,
			supervisor.EventRestarting, supervisor.EventStarting, supervisor.EventReady,
		}, ev.kinds("svc"))
		require.ErrorIs(t, events[2].Err, diskFull)
		require.Equal(t, supervisor.Kill, events[2].Action)
		require.True(t, events[2].Time.Equal(start.Add(time.Second)))
		require.Equal(t, 2*time.Second, events[3].Delay)
		require.True(t, events[6].Time.Equal(start.Add(3*time.Second)))

		st := requireStatus(t, s.Status(), "svc")
		require.Equal(t, supervisor.ProcessRunning, st.State)
		require.Equal(t, 1, st.Restarts)
		require.ErrorIs(t, st.LastError, diskFull)

		require.NoError(t, run.stop())
	})
}

func TestRunnableFuncUsedDirectly(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name     string
		f        supervisor.RunnableFunc
		callback func(ctx context.Context) error
		check    func(t *testing.T, err error)
	}{
		{
			name: "returning from callback is a graceful stop: nil",
			f: func(ctx context.Context) error {
				<-ctx.Done()
				return ctx.Err()
			},
			callback: func(ctx context.Context) error {
				time.Sleep(time.Second)
				return nil
			},
			check: func(t *testing.T, err error) { require.NoError(t, err) },
		},
		{
			name: "f's error is returned and cancels the callback's ctx",
			f: func(ctx context.Context) error {
				time.Sleep(time.Second)
				return boom
			},
			callback: func(ctx context.Context) error {
				<-ctx.Done()
				return nil
			},
			check: func(t *testing.T, err error) { require.ErrorIs(t, err, boom) },
		},
		{
			name: "a panic in f is returned as *PanicError",
			f: func(ctx context.Context) error {
				time.Sleep(time.Second)
				panic("kaboom")
			},
			callback: func(ctx context.Context) error {
				<-ctx.Done()
				return nil
			},
			check: func(t *testing.T, err error) {
				pe, ok := supervisor.IsPanic(err)
				require.True(t, ok, "got %v", err)
				require.Equal(t, "kaboom", pe.Value)
				require.NotEmpty(t, pe.Stack)
			},
		},
		{
			name: "a panic with an error value is seen through by errors.Is",
			f: func(ctx context.Context) error {
				panic(boom)
			},
			callback: func(ctx context.Context) error {
				<-ctx.Done()
				return nil
			},
			check: func(t *testing.T, err error) {
				_, ok := supervisor.IsPanic(err)
				require.True(t, ok, "got %v", err)
				require.ErrorIs(t, err, boom)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var called atomic.Int32
				err := tt.f.Run(context.Background(), func(ctx context.Context) error {
					called.Add(1)
					return tt.callback(ctx)
				})
				require.Equal(t, int32(1), called.Load(), "the callback is called once")
				tt.check(t, err)
			})
		})
	}
}

func TestNilRunnableFuncRunReturnsErrNilProcess(t *testing.T) {
	var f supervisor.RunnableFunc
	called := false
	err := f.Run(context.Background(), func(context.Context) error { called = true; return nil })
	require.ErrorIs(t, err, supervisor.ErrNilProcess)
	require.False(t, called)
}

// Supervisor API (DESIGN.md "Supervisor").

// supReadyAfter is a custom Runnable that is ready after setup and records
// its readiness in ready.
func supReadyAfter(setup time.Duration, ready *atomic.Bool) supervisor.Runnable {
	return service(func(ctx context.Context, callback supervisor.Callback) error {
		select {
		case <-time.After(setup):
		case <-ctx.Done():
			return ctx.Err()
		}
		ready.Store(true)
		return callback(ctx)
	})
}

func TestSupervisorRunCallsCallbackOnlyAfterEveryRowIsReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var a, b, c atomic.Bool
		table := supKeyedTable(
			supKeyed{"a", supReadyAfter(1*time.Second, &a)},
			supKeyed{"b", supReadyAfter(3*time.Second, &b)},
			supKeyed{"c", supReadyAfter(2*time.Second, &c)},
		)
		s := supervisor.NewSupervisor(table, quietOptions("", nil))
		start := time.Now()
		var calledAfter time.Duration
		var allReady bool
		var keys []string
		var states []supervisor.ProcessState
		err := s.Run(t.Context(), func(ctx context.Context) error {
			calledAfter = time.Since(start)
			allReady = a.Load() && b.Load() && c.Load()
			keys = s.Keys()
			for _, st := range s.Status() {
				states = append(states, st.State)
			}
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, 3*time.Second, calledAfter, "the callback waits for the slowest row")
		require.True(t, allReady)
		require.Equal(t, []string{"a", "b", "c"}, keys, "rows start in table order")
		require.Equal(t, []supervisor.ProcessState{
			supervisor.ProcessRunning, supervisor.ProcessRunning, supervisor.ProcessRunning,
		}, states)
	})
}

func TestSupervisorRunCallsCallbackAfterStartTimeoutWhenARowNeverGetsReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var fastReady atomic.Bool
		never := service(func(ctx context.Context, callback supervisor.Callback) error {
			<-ctx.Done() // never ready
			return ctx.Err()
		})
		table := supKeyedTable(
			supKeyed{"fast", supReadyAfter(time.Second, &fastReady)},
			supKeyed{"never", never},
		)
		kernel := quietKernel(nil)
		ev := &recorder{}
		opts := quietOptions("", ev)
		opts.Kernel = kernel
		opts.StartTimeout = 5 * time.Second
		opts.Backoff = constantBackoff(time.Hour)
		s := supervisor.NewSupervisor(table, opts)
		start := time.Now()
		var calledAfter time.Duration
		err := s.Run(t.Context(), func(ctx context.Context) error {
			calledAfter = time.Since(start)
			synctest.Wait() // let the timed-out start reach the kernel
			return nil
		})
		require.NoError(t, err)
		require.Equal(t, 5*time.Second, calledAfter, "the callback runs after StartTimeout")
		require.True(t, fastReady.Load())

		decisions := kernel.Recent()
		require.Len(t, decisions, 1)
		require.Equal(t, "supervisor/never", decisions[0].Failure.Process)
		require.ErrorIs(t, decisions[0].Failure.Err, supervisor.ErrStartTimeout)
		require.True(t, decisions[0].Failure.Exited)
		require.True(t, decisions[0].Failure.Time.Equal(start.Add(5*time.Second)))

		failed := ev.about("never")[1]
		require.Equal(t, supervisor.EventFailed, failed.Kind)
		require.ErrorIs(t, failed.Err, supervisor.ErrStartTimeout)
		require.NotContains(t, ev.kinds("never"), supervisor.EventReady)
	})
}

func TestSupervisorReadyProcessIsNotCancelledByStartTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var funcRuns, customRuns atomic.Int32
		fn := countingServe(&funcRuns)
		custom := service(func(ctx context.Context, callback supervisor.Callback) error {
			customRuns.Add(1)
			return callback(ctx)
		})
		kernel := quietKernel(nil)
		ev := &recorder{}
		opts := quietOptions("", ev)
		opts.Kernel = kernel
		opts.StartTimeout = 5 * time.Second
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"func", fn}, supKeyed{"custom", custom}), opts)
		run := startRunReady(t, s)

		time.Sleep(time.Minute) // far past StartTimeout
		synctest.Wait()
		require.Equal(t, int32(1), funcRuns.Load(), "StartTimeout only bounds the wait for readiness")
		require.Equal(t, int32(1), customRuns.Load(), "StartTimeout only bounds the wait for readiness")
		require.Empty(t, kernel.Recent())
		for _, k := range []string{"func", "custom"} {
			require.Equal(t, []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady}, ev.kinds(k), k)
		}

		require.NoError(t, run.stop())
	})
}

func TestSupervisorMethodsOutsideRunReturnErrNotRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"a", blocking()}), quietOptions("", nil))
		check := func(when string) {
			_, err := s.Start(context.Background(), "a")
			require.ErrorIs(t, err, supervisor.ErrNotRunning, "Start %s", when)
			require.ErrorIs(t, s.Stop(context.Background(), "a"), supervisor.ErrNotRunning, "Stop %s", when)
			_, err = s.Get(context.Background(), "a")
			require.ErrorIs(t, err, supervisor.ErrNotRunning, "Get %s", when)
		}
		check("before Run")
		run := startRunReady(t, s)
		require.NoError(t, run.stop())
		check("after Run returned")
	})
}

func TestSupervisorSecondConcurrentRunReturnsErrAlreadyRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs atomic.Int32
		svc := countingServe(&runs)
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"a", svc}), quietOptions("", nil))
		run := startRunReady(t, s)

		called := false
		err := s.Run(context.Background(), func(context.Context) error { called = true; return nil })
		require.ErrorIs(t, err, supervisor.ErrAlreadyRunning)
		require.False(t, called, "the second Run does not call its callback")
		synctest.Wait()
		require.Equal(t, int32(1), runs.Load(), "the second Run starts nothing")
		_, err = s.Get(context.Background(), "a")
		require.NoError(t, err, "the first Run goes on")

		require.NoError(t, run.stop())
	})
}

func TestSupervisorStartOfRunningOrStartingKeyReturnsErrProcessExists(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var slowReady atomic.Bool
		rows := supKeyedTable(supKeyed{"running", blocking()})
		s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, quietOptions("", nil))
		run := startRunReady(t, s)

		_, err := s.Start(context.Background(), "running")
		require.ErrorIs(t, err, supervisor.ErrProcessExists)

		rows.Put("starting", supReadyAfter(10*time.Second, &slowReady))
		firstStart := make(chan error, 1)
		go func() {
			_, err := s.Start(context.Background(), "starting")
			firstStart <- err
		}()
		synctest.Wait()
		_, err = s.Start(context.Background(), "starting")
		require.ErrorIs(t, err, supervisor.ErrProcessExists)
		require.NoError(t, <-firstStart)
		require.Equal(t, []string{"running", "starting"}, s.Keys())

		require.NoError(t, run.stop())
	})
}

func TestSupervisorStartOfMissingRowReturnsTableErrNotFound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := supervisor.NewSupervisor(supKeyedTable(), quietOptions("", nil))
		run := startRunReady(t, s)

		_, err := s.Start(context.Background(), "missing")
		require.ErrorIs(t, err, supervisor.ErrNotFound)
		require.Empty(t, s.Keys())
		require.Empty(t, s.Status())

		require.NoError(t, run.stop())
	})
}

func TestSupervisorStopAndGetOfUnknownKeyReturnErrProcessNotFound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"a", blocking()}), quietOptions("", nil))
		run := startRunReady(t, s)

		require.ErrorIs(t, s.Stop(context.Background(), "unknown"), supervisor.ErrProcessNotFound)
		_, err := s.Get(context.Background(), "unknown")
		require.ErrorIs(t, err, supervisor.ErrProcessNotFound)

		require.NoError(t, s.Stop(context.Background(), "a"))
		require.ErrorIs(t, s.Stop(context.Background(), "a"), supervisor.ErrProcessNotFound, "a stopped key")
		_, err = s.Get(context.Background(), "a")
		require.ErrorIs(t, err, supervisor.ErrProcessNotFound, "a stopped key")

		require.NoError(t, run.stop())
	})
}

func TestSupervisorLoserOfTwoConcurrentStopsGetsErrProcessNotFound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		svc := service(func(ctx context.Context, callback supervisor.Callback) error {
			err := callback(ctx)
			time.Sleep(time.Second) // a graceful shutdown that takes a while
			return err
		})
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"a", svc}), quietOptions("", nil))
		run := startRunReady(t, s)

		type result struct {
			err   error
			after time.Duration
		}
		start := time.Now()
		results := make(chan result, 2)
		for range 2 {
			go func() {
				err := s.Stop(context.Background(), "a")
				results <- result{err, time.Since(start)}
			}()
		}
		synctest.Wait()
		_, err := s.Get(context.Background(), "a")
		require.ErrorIs(t, err, supervisor.ErrProcessNotFound, "Get while stopping for good")
		require.NotContains(t, s.Keys(), "a")

		loser, winner := <-results, <-results
		require.ErrorIs(t, loser.err, supervisor.ErrProcessNotFound)
		require.Zero(t, loser.after, "the loser returns at once")
		require.NoError(t, winner.err)
		require.Equal(t, time.Second, winner.after, "the winner waits for the process")

		require.NoError(t, run.stop())
	})
}

func TestSupervisorGetReturnsErrProcessNotRunningWhileStartingOrInBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var slowReady atomic.Bool
		failing := supervisor.RunnableFunc(func(ctx context.Context) error {
			time.Sleep(time.Second)
			return errors.New("lost connection")
		})
		rows := supKeyedTable(supKeyed{"failing", failing})
		opts := quietOptions("", nil)
		opts.Kernel = quietKernel(nil)
		opts.Backoff = constantBackoff(10 * time.Second)
		s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, opts)
		run := startRunReady(t, s)

		time.Sleep(2 * time.Second) // failed at 1s, back at 11s
		_, err := s.Get(context.Background(), "failing")
		require.ErrorIs(t, err, supervisor.ErrProcessNotRunning, "in backoff")
		require.Equal(t, supervisor.ProcessBackoff, requireStatus(t, s.Status(), "failing").State)

		rows.Put("starting", supReadyAfter(5*time.Second, &slowReady))
		started := make(chan error, 1)
		go func() {
			_, err := s.Start(context.Background(), "starting")
			started <- err
		}()
		synctest.Wait()
		_, err = s.Get(context.Background(), "starting")
		require.ErrorIs(t, err, supervisor.ErrProcessNotRunning, "starting")
		require.Equal(t, supervisor.ProcessStarting, requireStatus(t, s.Status(), "starting").State)
		require.NoError(t, <-started)
		_, err = s.Get(context.Background(), "starting")
		require.NoError(t, err, "ready")

		require.NoError(t, run.stop())
	})
}

func TestSupervisorStopReturnsErrStopTimeoutAfterTwiceStopTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		releaseOnce := sync.OnceFunc(func() { close(release) })
		forcedAt := make(chan time.Time, 1)
		stubborn := service(func(ctx context.Context, callback supervisor.Callback) error {
			go func() {
				<-ctx.Done()
				forcedAt <- time.Now()
			}()
			_ = callback(ctx)
			<-release // ignores its ctx
			return nil
		})
		ev := &recorder{}
		opts := quietOptions("", ev)
		opts.StopTimeout = 3 * time.Second
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"stubborn", stubborn}), opts)
		run := startRunReady(t, s)
		defer releaseOnce() // so that Run can return if an assertion fails

		stopAsked := time.Now()
		err := s.Stop(context.Background(), "stubborn")
		require.ErrorIs(t, err, supervisor.ErrStopTimeout)
		require.Equal(t, 6*time.Second, time.Since(stopAsked), "graceful StopTimeout, then forced StopTimeout")
		require.Equal(t, 3*time.Second, (<-forcedAt).Sub(stopAsked), "forced after StopTimeout")
		require.Contains(t, ev.kinds("stubborn"), supervisor.EventStopTimeout)

		releaseOnce()
		synctest.Wait()
		require.NoError(t, run.stop())
	})
}

// supWatchSpy is a MapTable that records the contexts passed to Watch.
type supWatchSpy struct {
	*supervisor.MapTable[string, supervisor.Runnable]
	mu   sync.Mutex
	ctxs []context.Context
}

func (w *supWatchSpy) Watch(ctx context.Context) (<-chan string, error) {
	w.mu.Lock()
	w.ctxs = append(w.ctxs, ctx)
	w.mu.Unlock()
	return w.MapTable.Watch(ctx)
}

func (w *supWatchSpy) watchContexts() []context.Context {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ctxs)
}

func TestSupervisorRunEndsItsTableWatchWhenItReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := &supWatchSpy{MapTable: supKeyedTable(supKeyed{"a", blocking()})}
		s := supervisor.NewSupervisor[string, supervisor.Runnable](table, quietOptions("", nil))
		// Run's ctx stays live after Run returned (cancelled at cleanup
		// only): nothing Run started may depend on it to end.
		err := s.Run(t.Context(), func(context.Context) error { return nil })
		require.NoError(t, err)

		watches := table.watchContexts()
		require.Len(t, watches, 1, "Run watches a Watcher table")
		require.Error(t, watches[0].Err(), "Run must end its Watch (and the watch goroutine) when it returns")
	})
}

func TestSupervisorCanRunAgainWithFreshState(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		flaky := errors.New("flaky")
		var bRuns atomic.Int32
		b := supervisor.RunnableFunc(func(ctx context.Context) error {
			if bRuns.Add(1) == 1 {
				return flaky
			}
			<-ctx.Done()
			return ctx.Err()
		})
		table := supKeyedTable(supKeyed{"a", blocking()}, supKeyed{"b", b})
		opts := quietOptions("", nil)
		opts.Kernel = quietKernel(nil)
		opts.Backoff = constantBackoff(time.Second)
		s := supervisor.NewSupervisor(table, opts)

		run := startRunReady(t, s)
		time.Sleep(2 * time.Second)
		require.NoError(t, s.Stop(context.Background(), "a"))
		require.Equal(t, []string{"b"}, s.Keys())
		stB := requireStatus(t, s.Status(), "b")
		require.Equal(t, 1, stB.Restarts)
		require.ErrorIs(t, stB.LastError, flaky)
		require.NoError(t, run.stop())
		require.Nil(t, s.Keys(), "no processes outside Run")

		run = startRunReady(t, s)
		require.Equal(t, []string{"a", "b"}, s.Keys(), "a fresh read of the table: the stopped row runs again")
		for _, st := range s.Status() {
			require.Equal(t, supervisor.ProcessRunning, st.State, st.Key)
			require.Zero(t, st.Restarts, st.Key)
			require.NoError(t, st.LastError, st.Key)
		}
		require.NoError(t, run.stop())
	})
}

func TestSupervisorStoppedProcessStaysStoppedUntilStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs atomic.Int32
		svc := countingServe(&runs)
		rows := supKeyedTable(supKeyed{"a", svc}, supKeyed{"b", blocking()})
		opts := quietOptions("", nil)
		opts.ScanInterval = time.Second
		s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, opts)
		run := startRunReady(t, s)

		require.NoError(t, s.Stop(context.Background(), "a"))
		time.Sleep(5*time.Second + time.Millisecond) // five scans
		synctest.Wait()
		require.Equal(t, int32(1), runs.Load(), "scans do not restart a stopped process")
		require.Equal(t, []string{"b"}, s.Keys())
		_, err := s.Get(context.Background(), "a")
		require.ErrorIs(t, err, supervisor.ErrProcessNotFound)

		_, err = s.Start(context.Background(), "a")
		require.NoError(t, err)
		synctest.Wait() // a RunnableFunc is ready before its first line ran
		require.Equal(t, int32(2), runs.Load())
		require.Equal(t, []string{"b", "a"}, s.Keys())
		time.Sleep(5 * time.Second)
		synctest.Wait()
		require.Equal(t, int32(2), runs.Load(), "scans leave the started process alone")

		require.NoError(t, run.stop())
	})
}

func TestSupervisorScansSkipProcessesThatEndedForGood(t *testing.T) {
	tests := []struct {
		name   string
		run    func(ctx context.Context) error
		policy supervisor.RestartPolicy
		want   []supervisor.EventKind
	}{
		{
			name:   "transient clean exit",
			run:    func(context.Context) error { time.Sleep(time.Second); return nil },
			policy: supervisor.Transient,
			want:   []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopped},
		},
		{
			name:   "temporary clean exit",
			run:    func(context.Context) error { time.Sleep(time.Second); return nil },
			policy: supervisor.Temporary,
			want:   []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopped},
		},
		{
			name:   "abort",
			run:    func(context.Context) error { time.Sleep(time.Second); return supervisor.ErrAbort },
			policy: supervisor.Permanent,
			want: []supervisor.EventKind{
				supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed, supervisor.EventAborted,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var runs atomic.Int32
				f := supervisor.RunnableFunc(func(ctx context.Context) error {
					runs.Add(1)
					return tt.run(ctx)
				})
				rows := supKeyedTable(supKeyed{"p", withPolicy{f, tt.policy}})
				ev := &recorder{}
				opts := quietOptions("", ev)
				opts.Kernel = quietKernel(nil)
				opts.ScanInterval = time.Second
				s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, opts)
				run := startRunReady(t, s)

				time.Sleep(10 * time.Second) // nine scans after the end
				synctest.Wait()
				require.Equal(t, int32(1), runs.Load(), "not run again")
				require.Equal(t, tt.want, ev.kinds("p"))
				require.Empty(t, s.Keys())
				require.Empty(t, s.Status())

				require.NoError(t, run.stop())
			})
		})
	}
}

// supFailingBeforeReady is a custom Runnable whose setup fails: it returns
// err without calling its callback.
func supFailingBeforeReady(err error, runs *atomic.Int32) supervisor.Runnable {
	return service(func(ctx context.Context, callback supervisor.Callback) error {
		runs.Add(1)
		time.Sleep(time.Second)
		return err
	})
}

func TestSupervisorFailedStartReturnsErrorAndLeavesNothingRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		badConfig := errors.New("bad config")
		var runs atomic.Int32
		rows := supervisor.NewMapTable[string, supervisor.Runnable]()
		var log failureLog
		kernel := quietKernel(log.deciding(supervisor.DefaultPolicy))
		opts := quietOptions("", nil)
		opts.Kernel = kernel
		s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, opts)
		run := startRunReady(t, s)
		rows.Put("bad", supFailingBeforeReady(badConfig, &runs))

		_, err := s.Start(context.Background(), "bad")
		require.ErrorIs(t, err, badConfig)
		synctest.Wait()
		require.Empty(t, s.Keys())
		require.Empty(t, s.Status())
		_, err = s.Get(context.Background(), "bad")
		require.ErrorIs(t, err, supervisor.ErrProcessNotFound)

		failures := log.all()
		require.Len(t, failures, 1, "the failed start reached the kernel")
		require.Equal(t, "supervisor/bad", failures[0].Process)
		require.ErrorIs(t, failures[0].Err, badConfig)
		require.True(t, failures[0].Exited)

		time.Sleep(10 * time.Second) // past any backoff, before the next scan
		synctest.Wait()
		require.Equal(t, int32(1), runs.Load(), "a failed Start is not restarted")
		require.Empty(t, s.Keys())

		require.NoError(t, run.stop())
	})
}

func TestSupervisorFailedStartIsGoneWhenStartReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		badConfig := errors.New("bad config")
		var runs atomic.Int32
		rows := supervisor.NewMapTable[string, supervisor.Runnable]()
		decide := make(chan struct{})
		kernel := quietKernel(func(ctx context.Context, f supervisor.Failure) supervisor.Action {
			<-decide // a slow decision
			return supervisor.DefaultPolicy(ctx, f)
		})
		decideOnce := sync.OnceFunc(func() { close(decide) })
		defer decideOnce()
		opts := quietOptions("", nil)
		opts.Kernel = kernel
		s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, opts)
		run := startRunReady(t, s)
		rows.Put("bad", supFailingBeforeReady(badConfig, &runs))

		startReturned := make(chan error, 1)
		go func() {
			_, err := s.Start(context.Background(), "bad")
			startReturned <- err
		}()
		time.Sleep(2 * time.Second) // the start has failed; the kernel is deciding
		synctest.Wait()
		select {
		case err := <-startReturned:
			require.ErrorIs(t, err, badConfig)
			// Start returned the start error: nothing may be left of the
			// process, so that the caller can retry at once.
			require.Empty(t, s.Keys(), "a failed Start leaves nothing running")
			require.Empty(t, s.Status(), "a failed Start leaves nothing running")
			_, err = s.Start(context.Background(), "bad")
			require.NotErrorIs(t, err, supervisor.ErrProcessExists, "retrying a failed Start")
		default:
			// Start waits for the kernel: acceptable too.
		}
		decideOnce()
		synctest.Wait()
		require.Empty(t, s.Keys())
		require.NoError(t, run.stop())
	})
}

func TestSupervisorStartWithCancelledContextReturnsCtxErr(t *testing.T) {
	tests := []struct {
		name    string
		ctx     func() (context.Context, context.CancelFunc)
		wantErr error
	}{
		{
			name: "cancelled",
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(time.Second, cancel)
				return ctx, cancel
			},
			wantErr: context.Canceled,
		},
		{
			name: "deadline",
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), time.Second)
			},
			wantErr: context.DeadlineExceeded,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var ready atomic.Bool
				rows := supervisor.NewMapTable[string, supervisor.Runnable]()
				s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, quietOptions("", nil))
				run := startRunReady(t, s)
				rows.Put("slow", supReadyAfter(10*time.Second, &ready))

				ctx, cancel := tt.ctx()
				defer cancel()
				start := time.Now()
				_, err := s.Start(ctx, "slow")
				require.Equal(t, time.Second, time.Since(start))
				require.ErrorIs(t, err, tt.wantErr)
				require.Equal(t, ctx.Err(), err, "Start returns ctx.Err()")

				// The process's ctx derives from Run's, not Start's: it goes on.
				time.Sleep(9*time.Second + time.Millisecond)
				require.True(t, ready.Load())
				_, err = s.Get(context.Background(), "slow")
				require.NoError(t, err)

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorStatusReportsStateRestartsLastErrorAndSince(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs atomic.Int32
		errs := []error{errors.New("first failure"), errors.New("second failure")}
		flaky := service(func(ctx context.Context, callback supervisor.Callback) error {
			n := runs.Add(1)
			if n > 2 {
				return callback(ctx)
			}
			callbackCtx, cancel := context.WithTimeout(ctx, time.Second) // fails after 1s up
			defer cancel()
			_ = callback(callbackCtx)
			return errs[n-1]
		})
		var slowReady atomic.Bool
		slowStop := service(func(ctx context.Context, callback supervisor.Callback) error {
			err := callback(ctx)
			time.Sleep(time.Hour) // a long graceful shutdown
			return err
		})
		rows := supKeyedTable(supKeyed{"flaky", flaky}, supKeyed{"steady", blocking()}, supKeyed{"slowStop", slowStop})
		opts := quietOptions("", nil)
		opts.Kernel = quietKernel(nil)
		opts.Backoff = constantBackoff(2 * time.Second)
		opts.StopTimeout = 2 * time.Hour
		s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, opts)
		start := time.Now()
		run := startRunReady(t, s)
		at := func(d time.Duration) time.Time { return start.Add(d) }
		type status struct {
			State     supervisor.ProcessState
			Restarts  int
			LastError error
			Since     time.Time
		}
		check := func(key string, want status) {
			t.Helper()
			st := requireStatus(t, s.Status(), key)
			got := status{st.State, st.Restarts, st.LastError, st.Since}
			require.True(t, want.Since.Equal(got.Since), "%s: Since %v, want %v", key, got.Since, want.Since)
			got.Since = want.Since
			require.Equal(t, want, got, key)
		}

		// flaky: up at 0s, fails at 1s, back at 3s, fails at 4s, back at 6s.
		time.Sleep(1500 * time.Millisecond)
		check("flaky", status{supervisor.ProcessBackoff, 0, errs[0], at(time.Second)})
		check("steady", status{supervisor.ProcessRunning, 0, nil, at(0)})
		time.Sleep(2 * time.Second) // 3.5s
		check("flaky", status{supervisor.ProcessRunning, 1, errs[0], at(3 * time.Second)})
		time.Sleep(3 * time.Second) // 6.5s
		check("flaky", status{supervisor.ProcessRunning, 2, errs[1], at(6 * time.Second)})

		rows.Put("starting", supReadyAfter(time.Minute, &slowReady))
		go func() { _, _ = s.Start(context.Background(), "starting") }()
		synctest.Wait()
		check("starting", status{supervisor.ProcessStarting, 0, nil, at(6500 * time.Millisecond)})

		go func() { _ = s.Stop(context.Background(), "slowStop") }()
		time.Sleep(time.Second) // 7.5s
		check("slowStop", status{supervisor.ProcessStopping, 0, nil, at(6500 * time.Millisecond)})
		require.Equal(t, []string{"flaky", "steady", "slowStop", "starting"}, statusKeys(s.Status()),
			"Status lists processes in start order, including the ones being stopped")

		require.NoError(t, run.stop())
	})
}

func TestSupervisorKeysAreInStartOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supKeyedTable(supKeyed{"a", blocking()}, supKeyed{"b", blocking()}, supKeyed{"c", blocking()})
		s := supervisor.NewSupervisor(table, quietOptions("", nil))
		run := startRunReady(t, s)
		require.Equal(t, []string{"a", "b", "c"}, s.Keys())

		require.NoError(t, s.Stop(context.Background(), "a"))
		require.Equal(t, []string{"b", "c"}, s.Keys())
		_, err := s.Start(context.Background(), "a")
		require.NoError(t, err)
		require.Equal(t, []string{"b", "c", "a"}, s.Keys(), "a restarted by Start goes last, whatever the table order")
		require.Equal(t, []string{"b", "c", "a"}, statusKeys(s.Status()))

		require.NoError(t, run.stop())
	})
}

// Bad input (DESIGN.md "Ground rules": a clear error, never a panic or a hang).

func TestSupervisorRunRefusesNilTable(t *testing.T) {
	tests := []struct {
		name  string
		table supervisor.Table[string, supervisor.Runnable]
	}{
		{"nil interface", nil},
		{"typed nil MapTable", (*supervisor.MapTable[string, supervisor.Runnable])(nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s := supervisor.NewSupervisor(tt.table, quietOptions("", nil))
				called := false
				err := s.Run(t.Context(), func(context.Context) error { called = true; return nil })
				require.ErrorIs(t, err, supervisor.ErrInvalidOptions)
				require.False(t, called)
			})
		})
	}
}

func TestSupervisorRunRefusesInvalidOptionsNamingTheField(t *testing.T) {
	tests := []struct {
		field  string
		modify func(*supervisor.Options)
	}{
		{"HealthyAfter", func(o *supervisor.Options) { o.HealthyAfter = -time.Second }},
		{"Period", func(o *supervisor.Options) { o.Period = -time.Second }},
		{"ScanInterval", func(o *supervisor.Options) { o.ScanInterval = -time.Second }},
		{"StartTimeout", func(o *supervisor.Options) { o.StartTimeout = -time.Second }},
		{"StopTimeout", func(o *supervisor.Options) { o.StopTimeout = -time.Second }},
		{"MaxRestarts", func(o *supervisor.Options) { o.MaxRestarts = -1 }},
		{"Strategy", func(o *supervisor.Options) { o.Strategy = supervisor.Strategy(99) }},
		{"Restart", func(o *supervisor.Options) { o.Restart = supervisor.RestartPolicy(99) }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var runs atomic.Int32
				svc := supervisor.RunnableFunc(func(ctx context.Context) error {
					runs.Add(1)
					<-ctx.Done()
					return nil
				})
				opts := quietOptions("", nil)
				tt.modify(&opts)
				s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"a", svc}), opts)
				called := false
				err := s.Run(t.Context(), func(context.Context) error { called = true; return nil })
				require.ErrorIs(t, err, supervisor.ErrInvalidOptions)
				require.ErrorContains(t, err, tt.field)
				require.False(t, called)
				require.Zero(t, runs.Load(), "nothing started")
			})
		})
	}
}

// supNilable is a custom Runnable with a pointer receiver that would panic
// on a nil pointer.
type supNilable struct{ runs int }

func (r *supNilable) Run(ctx context.Context, callback supervisor.Callback) error {
	r.runs++
	return callback(ctx)
}

// supCheckNilProcessFails runs a supervisor over a table whose row "nil"
// holds nilValue and checks that the row fails its start with
// ErrNilProcess, reported to the kernel, while a sibling runs.
func supCheckNilProcessFails[P supervisor.Runnable](t *testing.T, nilValue, sibling P) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, P]()
		table.Put("nil", nilValue)
		table.Put("sibling", sibling)
		kernel := quietKernel(always(supervisor.Abort))
		ev := &recorder{}
		opts := quietOptions("", ev)
		opts.Kernel = kernel
		s := supervisor.NewSupervisor(table, opts)
		run := startRunReady(t, s)
		synctest.Wait()

		decisions := kernel.Recent()
		require.Len(t, decisions, 1)
		require.Equal(t, "supervisor/nil", decisions[0].Failure.Process)
		require.ErrorIs(t, decisions[0].Failure.Err, supervisor.ErrNilProcess)
		_, isPanic := supervisor.IsPanic(decisions[0].Failure.Err)
		require.False(t, isPanic, "a nil process is not called")
		require.True(t, decisions[0].Failure.Exited)
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventFailed, supervisor.EventAborted,
		}, ev.kinds("nil"))
		require.Equal(t, []string{"sibling"}, s.Keys())

		_, err := s.Start(context.Background(), "nil")
		require.ErrorIs(t, err, supervisor.ErrNilProcess, "Start of a nil row")
		synctest.Wait() // see TestSupervisorFailedStartIsGoneWhenStartReturns
		require.Equal(t, []string{"sibling"}, s.Keys())

		require.NoError(t, run.stop())
	})
}

func TestSupervisorNilProcessIsAStartFailureNotAPanic(t *testing.T) {
	t.Run("nil interface value", func(t *testing.T) {
		supCheckNilProcessFails[supervisor.Runnable](t, nil, blocking())
	})
	t.Run("typed nil pointer in an interface", func(t *testing.T) {
		supCheckNilProcessFails[supervisor.Runnable](t, (*supNilable)(nil), blocking())
	})
	t.Run("typed nil pointer", func(t *testing.T) {
		supCheckNilProcessFails(t, (*supNilable)(nil), &supNilable{})
	})
	t.Run("nil RunnableFunc", func(t *testing.T) {
		supCheckNilProcessFails(t, supervisor.RunnableFunc(nil), blocking().(supervisor.RunnableFunc))
	})
}

func TestSupervisorZeroOptionsWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs atomic.Int32
		svc := countingServe(&runs)
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"a", svc}), supervisor.Options{})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var keys []string
		err := s.Run(ctx, func(context.Context) error {
			keys = s.Keys()
			_, err := s.Get(ctx, "a")
			return err
		})
		require.NoError(t, err)
		require.Equal(t, []string{"a"}, keys)
		require.Equal(t, int32(1), runs.Load())
	})
}

func TestSupervisorRunWithNilCallbackWaitsForContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ev := &recorder{}
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"a", blocking()}), quietOptions("", ev))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx, nil) }()

		time.Sleep(time.Hour)
		synctest.Wait()
		select {
		case err := <-done:
			require.FailNow(t, "Run returned before its ctx was done", "%v", err)
		default:
		}
		require.Equal(t, []string{"a"}, s.Keys())

		cancel()
		require.NoError(t, <-done)
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
		}, ev.kinds("a"), "Run stopped its process before returning")
	})
}

func TestSupervisorRunReturnsPanicErrorWhenCallbackPanics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var stopped atomic.Int32
		svc := service(func(ctx context.Context, callback supervisor.Callback) error {
			defer stopped.Add(1)
			return callback(ctx)
		})
		ev := &recorder{}
		s := supervisor.NewSupervisor(supKeyedTable(supKeyed{"a", svc}, supKeyed{"b", svc}), quietOptions("", ev))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()

		err := s.Run(ctx, func(context.Context) error { panic("callback bug") })
		pe, ok := supervisor.IsPanic(err)
		require.True(t, ok, "got %v", err)
		require.Equal(t, "callback bug", pe.Value)
		require.NotEmpty(t, pe.Stack)
		require.Equal(t, int32(2), stopped.Load(), "every process returned before Run")
		for _, k := range []string{"a", "b"} {
			// The order of Ready and Stopping is checked by
			// TestSupervisorCleanLifeEventsStayInOrderWithASlowLogger.
			kinds := ev.kinds(k)
			require.ElementsMatch(t, []supervisor.EventKind{
				supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
			}, kinds, k)
			require.Equal(t, supervisor.EventStopped, kinds[len(kinds)-1], k)
		}
		require.Nil(t, s.Keys(), "Run is over")
	})
}

// supSlowHandler is a log handler that takes a while to write the records
// whose message contains slowOn, like a handler writing to a slow disk.
type supSlowHandler struct{ slowOn string }

func (h supSlowHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h supSlowHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.slowOn) {
		time.Sleep(time.Millisecond)
	}
	return nil
}
func (h supSlowHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h supSlowHandler) WithGroup(string) slog.Handler      { return h }

func TestSupervisorCleanLifeEventsStayInOrderWithASlowLogger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rows := supervisor.NewMapTable[string, supervisor.Runnable]()
		ev := &recorder{}
		opts := quietOptions("", ev)
		opts.Logger = slog.New(supSlowHandler{slowOn: supervisor.EventReady.String()})
		s := supervisor.NewSupervisor[string, supervisor.Runnable](scanOnly[string, supervisor.Runnable]{rows}, opts)
		run := startRunReady(t, s)
		rows.Put("a", blocking())

		_, err := s.Start(context.Background(), "a")
		require.NoError(t, err)
		require.NoError(t, s.Stop(context.Background(), "a"))
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
		}, ev.kinds("a"), "a clean life, in order")

		require.NoError(t, run.stop())
	})
}
