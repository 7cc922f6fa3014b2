package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// kernelWithoutMonotonic strips the monotonic clock reading from LastAt so
// that states compare with require.Equal.
func kernelWithoutMonotonic(s supervisor.ErrorState) supervisor.ErrorState {
	s.LastAt = s.LastAt.Round(0)
	return s
}

func TestActionString(t *testing.T) {
	requireStrings(t, []stringCase[supervisor.Action]{
		{supervisor.Continue, "continue"},
		{supervisor.Kill, "kill"},
		{supervisor.Abort, "abort"},
		{supervisor.Action(7), "Action(7)"},
	})
}

func TestErrorKernelReportBlocksUntilPolicyDecides(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		decide := make(chan supervisor.Action)
		k := quietKernel(func(ctx context.Context, f supervisor.Failure) supervisor.Action { return <-decide })
		answered := make(chan supervisor.Action, 1)
		go func() {
			answered <- k.Report(context.Background(), supervisor.Failure{Process: "p", Err: errors.New("x")})
		}()
		time.Sleep(time.Hour)
		synctest.Wait()
		require.Empty(t, answered, "Report returned before the policy decided")

		decide <- supervisor.Kill
		require.Equal(t, supervisor.Kill, <-answered)
	})
}

// kernelReportFromHere calls Report from a frame the policy can look for in
// its own stack.
func kernelReportFromHere(ctx context.Context, k *supervisor.ErrorKernel, f supervisor.Failure) supervisor.Action {
	return k.Report(ctx, f)
}

type kernelCtxKey struct{}

func TestErrorKernelPolicyRunsOnReportingGoroutineWithReportContext(t *testing.T) {
	var (
		gotValue any
		gotStack string
	)
	k := quietKernel(func(ctx context.Context, f supervisor.Failure) supervisor.Action {
		gotValue = ctx.Value(kernelCtxKey{})
		buf := make([]byte, 64<<10)
		gotStack = string(buf[:runtime.Stack(buf, false)])
		return supervisor.Kill
	})
	ctx := context.WithValue(context.Background(), kernelCtxKey{}, "set by the caller")
	action := kernelReportFromHere(ctx, k, supervisor.Failure{Process: "p", Err: errors.New("x")})

	require.Equal(t, supervisor.Kill, action)
	require.Equal(t, "set by the caller", gotValue)
	require.Contains(t, gotStack, "kernelReportFromHere", "the policy ran on another goroutine")
}

func TestErrorKernelReportAnswersAbortWhenItsContextIsDone(t *testing.T) {
	waitForCtx := func(ctx context.Context, f supervisor.Failure) supervisor.Action {
		<-ctx.Done()
		return supervisor.Continue
	}
	answerAtOnce := func(ctx context.Context, f supervisor.Failure) supervisor.Action { return supervisor.Continue }
	tests := []struct {
		name    string
		policy  supervisor.Policy
		ctx     func() (context.Context, context.CancelFunc)
		elapsed time.Duration // how long Report takes
	}{
		{
			name:   "cancelled while the policy waits",
			policy: waitForCtx,
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(3*time.Second, cancel)
				return ctx, cancel
			},
			elapsed: 3 * time.Second,
		},
		{
			name:   "deadline passes while the policy waits",
			policy: waitForCtx,
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 5*time.Second)
			},
			elapsed: 5 * time.Second,
		},
		{
			name:   "done before Report",
			policy: answerAtOnce,
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx, cancel
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				k := quietKernel(tt.policy)
				ctx, cancel := tt.ctx()
				defer cancel()
				start := time.Now()
				action := k.Report(ctx, supervisor.Failure{Process: "p", Err: errors.New("x")})
				require.Equal(t, supervisor.Abort, action, "the policy said continue, but ctx is done")
				require.Equal(t, tt.elapsed, time.Since(start))
			})
		})
	}
}

func TestErrorKernelDecisionsForDifferentProcessesDoNotWaitOnEachOther(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		releaseSlow := make(chan struct{})
		k := quietKernel(func(ctx context.Context, f supervisor.Failure) supervisor.Action {
			if f.Process == "slow" {
				<-releaseSlow
				return supervisor.Abort
			}
			return supervisor.Kill
		})
		slow := make(chan supervisor.Action, 1)
		go func() {
			slow <- k.Report(context.Background(), supervisor.Failure{Process: "slow", Err: errors.New("x")})
		}()
		synctest.Wait() // the slow policy is now blocked

		// If the kernel held a lock while the slow policy runs, this Report
		// would block on it and the test would hang instead of failing.
		fast := make(chan supervisor.Action, 1)
		go func() {
			fast <- k.Report(context.Background(), supervisor.Failure{Process: "fast", Err: errors.New("y")})
		}()
		synctest.Wait()
		require.Len(t, fast, 1, "the fast decision waited for the slow one")
		require.Equal(t, supervisor.Kill, <-fast)
		require.Empty(t, slow)
		require.Equal(t, 1, k.State("slow").Failures, "State is readable while a policy runs")

		close(releaseSlow)
		require.Equal(t, supervisor.Abort, <-slow)
	})
}

func TestErrorKernelKeepsErrorStatePerProcess(t *testing.T) {
	tests := []struct {
		name   string
		window time.Duration // KernelOptions.Window
		want   time.Duration // the window in effect
	}{
		{"explicit window", 10 * time.Second, 10 * time.Second},
		{"default window", 0, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var log failureLog
				k := supervisor.NewErrorKernel(supervisor.KernelOptions{
					Logger: quietLogger(), Window: tt.window, Policy: log.answer(supervisor.Kill),
				})
				w := tt.want
				start := time.Now()
				errs := []error{errors.New("first"), errors.New("second"), errors.New("third")}
				report := func(process string, err error) {
					k.Report(context.Background(), supervisor.Failure{Process: process, Err: err})
				}

				report("db", errs[0]) // at 0
				time.Sleep(w / 2)
				report("db", errs[1]) // at w/2
				report("cache", errors.New("cache failed"))
				time.Sleep(w * 3 / 4)
				report("db", errs[2]) // at 1.25w: the first is out of the window

				want := []supervisor.ErrorState{
					{Failures: 1, Recent: 1, Consecutive: 1, LastErr: errs[0], LastAt: start},
					{Failures: 2, Recent: 2, Consecutive: 2, LastErr: errs[1], LastAt: start.Add(w / 2)},
					{Failures: 3, Recent: 2, Consecutive: 3, LastErr: errs[2], LastAt: start.Add(w * 5 / 4)},
				}
				var got []supervisor.ErrorState
				for _, f := range log.all() {
					if f.Process == "db" {
						got = append(got, kernelWithoutMonotonic(f.State))
					}
				}
				for i := range want {
					want[i] = kernelWithoutMonotonic(want[i])
				}
				require.Equal(t, want, got, "Failure.State includes the failure itself")
				require.Equal(t, want[2], kernelWithoutMonotonic(k.State("db")))
				require.Equal(t, 1, k.State("cache").Failures)
				require.Zero(t, k.State("never failed"))

				time.Sleep(w / 2) // now 1.75w: only the third is within the window
				state := kernelWithoutMonotonic(k.State("db"))
				want[2].Recent = 1
				require.Equal(t, want[2], state, "State counts Recent at the time it is asked")
			})
		})
	}
}

func TestErrorKernelHealthyResetsOnlyConsecutive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log failureLog
		k := quietKernel(log.answer(supervisor.Kill))
		errLast := errors.New("last")
		k.Report(context.Background(), supervisor.Failure{Process: "db", Err: errors.New("first")})
		time.Sleep(time.Second)
		k.Report(context.Background(), supervisor.Failure{Process: "db", Err: errLast})
		k.Report(context.Background(), supervisor.Failure{Process: "cache", Err: errLast})
		before := kernelWithoutMonotonic(k.State("db"))
		require.Equal(t, 2, before.Consecutive)

		k.Healthy("db")
		after := kernelWithoutMonotonic(k.State("db"))
		want := before
		want.Consecutive = 0
		require.Equal(t, want, after)
		require.Equal(t, 1, k.State("cache").Consecutive, "another process is not reset")
		k.Healthy("never failed") // no record: nothing to reset, no panic
		require.Zero(t, k.State("never failed"))

		k.Report(context.Background(), supervisor.Failure{Process: "db", Err: errLast})
		failures := log.all()
		last := failures[len(failures)-1].State
		require.Equal(t, 1, last.Consecutive)
		require.Equal(t, 3, last.Failures)
		require.Equal(t, 3, last.Recent)
	})
}

func TestErrorKernelRecentIsNewestLastAndCappedAtHistory(t *testing.T) {
	tests := []struct {
		name    string
		history int
		reports int
		want    []int // the Message of each decision kept, oldest first
	}{
		{"fewer than History", 3, 2, []int{0, 1}},
		{"exactly History", 3, 3, []int{0, 1, 2}},
		{"more than History", 3, 5, []int{2, 3, 4}},
		{"default History 256", 0, 300, kernelRange(44, 300)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := supervisor.NewErrorKernel(supervisor.KernelOptions{
				Logger: quietLogger(), History: tt.history,
				Policy: func(ctx context.Context, f supervisor.Failure) supervisor.Action {
					return supervisor.Action(f.Message.(int) % 3) // a different action each time
				},
			})
			require.Empty(t, k.Recent())
			for i := range tt.reports {
				k.Report(context.Background(), supervisor.Failure{Process: "p", Err: errors.New("x"), Message: i})
			}
			var got []int
			for _, d := range k.Recent() {
				require.Equal(t, supervisor.Action(d.Failure.Message.(int)%3), d.Action, "decision %v", d.Failure.Message)
				require.Equal(t, "p", d.Failure.Process)
				got = append(got, d.Failure.Message.(int))
			}
			require.Equal(t, tt.want, got)
		})
	}
}

// kernelRange returns from, from+1, ..., to-1.
func kernelRange(from, to int) []int {
	var r []int
	for i := from; i < to; i++ {
		r = append(r, i)
	}
	return r
}

func TestErrorKernelSubscribeDeliversEachDecision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := quietKernel(nil)
		decisions, cancel := k.Subscribe(10)
		defer cancel()
		errAbort := fmt.Errorf("bad input: %w", supervisor.ErrAbort)
		k.Report(context.Background(), supervisor.Failure{Process: "a", Err: errors.New("x"), Exited: true})
		k.Report(context.Background(), supervisor.Failure{Process: "b", Err: errAbort, Message: "order 66"})

		first, second := <-decisions, <-decisions
		require.Equal(t, "a", first.Failure.Process)
		require.Equal(t, supervisor.Kill, first.Action)
		require.Equal(t, "b", second.Failure.Process)
		require.Equal(t, supervisor.Abort, second.Action)
		require.Equal(t, "order 66", second.Failure.Message, "an Abort carries the message that was not handled")
		require.Equal(t, 1, second.Failure.State.Failures)
		require.Empty(t, decisions)
		require.Zero(t, k.Dropped())
	})
}

func TestErrorKernelSubscribeNeverBlocksTheKernel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := quietKernel(nil)
		decisions, cancel := k.Subscribe(1) // never read until the end
		// A Report blocked on the subscriber would deadlock the bubble, which
		// synctest reports as a failure.
		start := time.Now()
		for i := range 10 {
			k.Report(context.Background(), supervisor.Failure{Process: "p", Err: errors.New("x"), Message: i})
		}
		require.Zero(t, time.Since(start), "Report waited for the subscriber")
		require.Equal(t, uint64(9), k.Dropped())

		cancel()
		d, ok := <-decisions
		require.True(t, ok, "the buffered decision is still there")
		require.Equal(t, 0, d.Failure.Message, "the buffer kept the first decision")
		_, ok = <-decisions
		require.False(t, ok, "cancel closes the channel")

		cancel() // idempotent
		k.Report(context.Background(), supervisor.Failure{Process: "p", Err: errors.New("x")})
		require.Equal(t, uint64(9), k.Dropped(), "a cancelled subscription no longer counts")
	})
}

func TestErrorKernelSubscribersAreIndependent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) { // a kernel blocked on a subscriber deadlocks the bubble
		k := quietKernel(nil)
		full, cancelFull := k.Subscribe(0) // unbuffered and never read: drops all
		defer cancelFull()
		reader, cancelReader := k.Subscribe(2)
		start := time.Now()
		k.Report(context.Background(), supervisor.Failure{Process: "p", Err: errors.New("x")})
		k.Report(context.Background(), supervisor.Failure{Process: "q", Err: errors.New("y")})
		require.Zero(t, time.Since(start), "Report waited for a subscriber")
		require.Equal(t, uint64(2), k.Dropped())
		require.Equal(t, "p", (<-reader).Failure.Process)
		require.Equal(t, "q", (<-reader).Failure.Process)
		cancelReader()
		require.Empty(t, full)
	})
}

func TestDefaultPolicy(t *testing.T) {
	errAbort := fmt.Errorf("cannot go on: %w", supervisor.ErrAbort)
	errOther := errors.New("connection refused")
	tests := []struct {
		name    string
		failure supervisor.Failure
		want    supervisor.Action
	}{
		{"ErrAbort wrapped, running", supervisor.Failure{Err: errAbort}, supervisor.Abort},
		{"ErrAbort wrapped, exited", supervisor.Failure{Err: errAbort, Exited: true}, supervisor.Abort},
		{"ErrAbort, exited permanent", supervisor.Failure{Err: supervisor.ErrAbort, Exited: true, Restart: supervisor.Permanent}, supervisor.Abort},
		{"ErrAbort in a panic", supervisor.Failure{Err: &supervisor.PanicError{Value: errAbort}, Exited: true}, supervisor.Abort},
		{"running failure", supervisor.Failure{Err: errOther}, supervisor.Continue},
		{"running failure of a temporary process", supervisor.Failure{Err: errOther, Restart: supervisor.Temporary}, supervisor.Continue},
		{"temporary exit", supervisor.Failure{Err: errOther, Exited: true, Restart: supervisor.Temporary}, supervisor.Abort},
		{"permanent exit", supervisor.Failure{Err: errOther, Exited: true, Restart: supervisor.Permanent}, supervisor.Kill},
		{"transient exit", supervisor.Failure{Err: errOther, Exited: true, Restart: supervisor.Transient}, supervisor.Kill},
		{"panic exit", supervisor.Failure{Err: &supervisor.PanicError{Value: "boom"}, Exited: true}, supervisor.Kill},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, supervisor.DefaultPolicy(context.Background(), tt.failure))
		})
	}
}

func TestAbortAfterAbortsOnceTooManyFailuresWithinWindowPerProcess(t *testing.T) {
	type step struct {
		at      time.Duration // since the start
		process string
		want    supervisor.Action
	}
	tests := []struct {
		name  string
		n     int
		steps []step
	}{
		{
			name: "more than n within the window",
			n:    2,
			steps: []step{
				{0, "a", supervisor.Continue},
				{10 * time.Second, "a", supervisor.Continue},
				{20 * time.Second, "a", supervisor.Abort}, // 3 > 2
				{20 * time.Second, "b", supervisor.Continue},
				{25 * time.Second, "a", supervisor.Abort}, // 4 > 2
				{30 * time.Second, "b", supervisor.Continue},
			},
		},
		{
			name: "failures older than the window are forgotten",
			n:    2,
			steps: []step{
				{0, "a", supervisor.Continue},
				{10 * time.Second, "a", supervisor.Continue},
				{20 * time.Second, "a", supervisor.Abort},
				{75 * time.Second, "a", supervisor.Continue}, // 0s and 10s are forgotten: 20s, 75s
				{76 * time.Second, "a", supervisor.Abort},    // 20s, 75s, 76s
				{3 * time.Minute, "a", supervisor.Continue},  // all forgotten
			},
		},
		{
			name: "n zero aborts at the first failure",
			n:    0,
			steps: []step{
				{0, "a", supervisor.Abort},
				{time.Hour, "b", supervisor.Abort},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				next := func(ctx context.Context, f supervisor.Failure) supervisor.Action { return supervisor.Continue }
				k := quietKernel(supervisor.AbortAfter(tt.n, time.Minute, next))
				start := time.Now()
				for i, s := range tt.steps {
					time.Sleep(time.Until(start.Add(s.at)))
					// An exit: DefaultPolicy would say Kill, so Continue is next's answer.
					got := k.Report(context.Background(), supervisor.Failure{Process: s.process, Err: errors.New("x"), Exited: true})
					require.Equal(t, s.want, got, "step %d: %s at %v", i, s.process, s.at)
				}
			})
		})
	}
}

func TestErrorKernelReportSetsZeroTimeToNow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log failureLog
		k := quietKernel(log.answer(supervisor.Kill))
		start := time.Now()
		time.Sleep(5 * time.Second)
		k.Report(context.Background(), supervisor.Failure{Process: "p", Err: errors.New("x")})
		given := start.Add(-time.Hour)
		k.Report(context.Background(), supervisor.Failure{Process: "p", Err: errors.New("y"), Time: given})

		failures := log.all()
		require.Len(t, failures, 2)
		require.True(t, failures[0].Time.Equal(start.Add(5*time.Second)), "zero Time became now: %v", failures[0].Time)
		require.True(t, failures[1].Time.Equal(given), "a given Time is kept: %v", failures[1].Time)
		recent := k.Recent()
		require.True(t, recent[0].Failure.Time.Equal(start.Add(5*time.Second)))
		require.True(t, k.State("p").LastAt.Equal(given))
	})
}

func TestErrorKernelPanickingPolicyFallsBackToDefaultPolicy(t *testing.T) {
	tests := []struct {
		name    string
		failure supervisor.Failure
		want    supervisor.Action
	}{
		{"permanent exit", supervisor.Failure{Process: "p", Err: errors.New("x"), Exited: true}, supervisor.Kill},
		{"running failure", supervisor.Failure{Process: "p", Err: errors.New("x")}, supervisor.Continue},
		{"temporary exit", supervisor.Failure{Process: "p", Err: errors.New("x"), Exited: true, Restart: supervisor.Temporary}, supervisor.Abort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := quietKernel(func(ctx context.Context, f supervisor.Failure) supervisor.Action { panic("policy bug") })
			require.Equal(t, tt.want, k.Report(context.Background(), tt.failure))
			recent := k.Recent()
			require.Len(t, recent, 1)
			require.Equal(t, tt.want, recent[0].Action)
			require.Equal(t, 1, k.State("p").Failures)
		})
	}
}

// kernelReported is what a process saw right after its Report returned.
type kernelReported struct {
	action supervisor.Action
	ctxErr error
	at     time.Time
}

// kernelReportingProcess returns a process that, on its first run, waits
// for trigger, reports errReport while handling msg, sends what it saw and
// returns errReport (an exit whose failure was decided already). Later runs
// serve until their ctx is done. runs counts the runs.
func kernelReportingProcess(trigger <-chan struct{}, errReport error, msg any, reported chan<- kernelReported, runs *atomic.Int32) supervisor.RunnableFunc {
	return func(ctx context.Context) error {
		if runs.Add(1) == 1 {
			select {
			case <-trigger:
			case <-ctx.Done():
				return ctx.Err()
			}
			action := supervisor.Report(ctx, errReport, msg)
			reported <- kernelReported{action: action, ctxErr: ctx.Err(), at: time.Now()}
			if action == supervisor.Continue {
				<-ctx.Done()
				return ctx.Err()
			}
			return fmt.Errorf("giving up: %w", errReport)
		}
		<-ctx.Done()
		return ctx.Err()
	}
}

var errKernelBadMessage = errors.New("bad message")

// kernelReportScenario is a supervisor "sup" of one row "w", a
// kernelReportingProcess that reported errKernelBadMessage while handling
// "message 7" to a kernel.
type kernelReportScenario struct {
	log  *failureLog // what the kernel's policy was asked
	k    *supervisor.ErrorKernel
	rec  *recorder
	runs *atomic.Int32 // runs of the process
	s    *supervisor.Supervisor[string, supervisor.RunnableFunc]
	run  *backgroundRun
	r    kernelReported // what the process saw right after Report returned
}

// kernelReportOnce runs the scenario with a kernel answering action and a
// constant restart delay (0: the default backoff), and returns once the
// process reported.
func kernelReportOnce(t *testing.T, action supervisor.Action, restartDelay time.Duration) *kernelReportScenario {
	sc := &kernelReportScenario{log: &failureLog{}, rec: &recorder{}, runs: &atomic.Int32{}}
	sc.k = quietKernel(sc.log.answer(action))
	trigger, reported := make(chan struct{}), make(chan kernelReported, 1)
	tbl := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
	tbl.Put("w", kernelReportingProcess(trigger, errKernelBadMessage, "message 7", reported, sc.runs))
	opts := quietOptions("sup", sc.rec)
	opts.Kernel = sc.k
	if restartDelay > 0 {
		opts.Backoff = constantBackoff(restartDelay)
	}
	sc.s = supervisor.NewSupervisor[string, supervisor.RunnableFunc](tbl, opts)
	sc.run = startRun(t, sc.s)
	close(trigger)
	sc.r = <-reported
	return sc
}

func TestReportFromProcessReachesKernelAndContinueKeepsItRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := kernelReportOnce(t, supervisor.Continue, 0)
		require.Equal(t, supervisor.Continue, sc.r.action)
		require.NoError(t, sc.r.ctxErr, "Continue leaves the process's ctx alone")

		failures := sc.log.all()
		require.Len(t, failures, 1)
		f := failures[0]
		require.Equal(t, "sup/w", f.Process)
		require.ErrorIs(t, f.Err, errKernelBadMessage)
		require.Equal(t, "message 7", f.Message)
		require.False(t, f.Exited)
		require.Equal(t, supervisor.Permanent, f.Restart)
		require.Equal(t, 1, f.State.Failures)

		time.Sleep(time.Hour)
		synctest.Wait()
		require.Equal(t, int32(1), sc.runs.Load(), "never restarted")
		status := sc.s.Status()
		require.Len(t, status, 1)
		require.Equal(t, supervisor.ProcessRunning, status[0].State)
		require.Zero(t, status[0].Restarts)
		require.Equal(t, eventKinds{supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed}, sc.rec.allKinds())
		require.Equal(t, supervisor.Continue, sc.rec.all()[2].Action)
		require.NoError(t, sc.run.shutdown())
	})
}

func TestReportKillCancelsProcessBeforeReturningAndRestartsItAfterBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := kernelReportOnce(t, supervisor.Kill, time.Second)
		require.Equal(t, supervisor.Kill, sc.r.action)
		require.Error(t, sc.r.ctxErr, "Kill cancels the process's ctx before Report returns")

		time.Sleep(time.Second - time.Nanosecond)
		synctest.Wait()
		require.Equal(t, int32(1), sc.runs.Load(), "restarted before the backoff delay")
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		require.Equal(t, int32(2), sc.runs.Load(), "restarted after the backoff delay")

		require.Len(t, sc.log.all(), 1, "the exit that followed Kill was reported again")
		recent := sc.k.Recent()
		require.Len(t, recent, 1)
		require.False(t, recent[0].Failure.Exited)
		require.Equal(t, supervisor.Kill, recent[0].Action)
		require.Equal(t, eventKinds{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed, supervisor.EventBackoff,
			supervisor.EventRestarting, supervisor.EventStarting, supervisor.EventReady,
		}, sc.rec.allKinds())
		events := sc.rec.all()
		require.Equal(t, supervisor.Kill, events[2].Action)
		require.Equal(t, time.Second, events[3].Delay)
		require.Equal(t, sc.r.at.Add(time.Second), events[4].Time)
		status := sc.s.Status()
		require.Len(t, status, 1)
		require.Equal(t, supervisor.ProcessRunning, status[0].State)
		require.Equal(t, 1, status[0].Restarts)
		require.NoError(t, sc.run.shutdown())
	})
}

func TestReportAbortEndsProcessForGood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sc := kernelReportOnce(t, supervisor.Abort, time.Second)
		require.Equal(t, supervisor.Abort, sc.r.action)
		require.Error(t, sc.r.ctxErr, "Abort cancels the process's ctx before Report returns")

		time.Sleep(time.Hour) // many backoff delays and scans
		synctest.Wait()
		require.Equal(t, int32(1), sc.runs.Load(), "an aborted process was restarted")
		require.Empty(t, sc.s.Keys())
		require.Len(t, sc.log.all(), 1, "the exit that followed Abort was reported again")
		require.Len(t, sc.k.Recent(), 1)
		require.Equal(t, eventKinds{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed, supervisor.EventAborted,
		}, sc.rec.allKinds())
		require.Equal(t, supervisor.Abort, sc.rec.all()[2].Action)
		require.NoError(t, sc.run.shutdown())
	})
}

func TestReportOutsideSupervisedProcessReturnsContinue(t *testing.T) {
	require.Equal(t, supervisor.Continue, supervisor.Report(context.Background(), errors.New("nobody supervises me"), "msg"))
}

func TestReportFromNestedSupervisorGoesToInnerKernel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var innerLog, outerLog failureLog
		innerKernel := quietKernel(innerLog.answer(supervisor.Continue))
		outerKernel := quietKernel(outerLog.answer(supervisor.Continue))
		errBad := errors.New("bad message")
		trigger, reported := make(chan struct{}), make(chan kernelReported, 1)
		var runs atomic.Int32
		innerTable := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
		innerTable.Put("w", kernelReportingProcess(trigger, errBad, nil, reported, &runs))
		innerOpts := quietOptions("inner", nil)
		innerOpts.Kernel = innerKernel
		inner := supervisor.NewSupervisor[string, supervisor.RunnableFunc](innerTable, innerOpts)
		outerTable := supervisor.NewMapTable[string, *supervisor.Supervisor[string, supervisor.RunnableFunc]]()
		outerTable.Put("child", inner)
		outerOpts := quietOptions("outer", nil)
		outerOpts.Kernel = outerKernel
		outer := supervisor.NewSupervisor[string, *supervisor.Supervisor[string, supervisor.RunnableFunc]](outerTable, outerOpts)
		run := startRun(t, outer)
		close(trigger)
		require.Equal(t, supervisor.Continue, (<-reported).action)

		failures := innerLog.all()
		require.Len(t, failures, 1)
		require.Equal(t, "inner/w", failures[0].Process)
		require.ErrorIs(t, failures[0].Err, errBad)
		require.Empty(t, outerLog.all(), "the outer kernel saw the inner process's report")
		require.Empty(t, outerKernel.Recent())
		require.NoError(t, run.shutdown())
	})
}

func TestErrorKernelSharedBySupervisorsSeesFailuresOfBoth(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var log failureLog
		k := quietKernel(log.answer(supervisor.Continue))
		errBoom := errors.New("boom")
		failOnce := func() supervisor.RunnableFunc {
			var runs atomic.Int32
			return func(ctx context.Context) error {
				if runs.Add(1) == 1 {
					return errBoom
				}
				<-ctx.Done()
				return ctx.Err()
			}
		}
		var runs []*backgroundRun
		for _, name := range []string{"a", "b"} {
			tbl := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
			tbl.Put("w", failOnce())
			opts := quietOptions(name, nil)
			opts.Kernel = k
			s := supervisor.NewSupervisor[string, supervisor.RunnableFunc](tbl, opts)
			runs = append(runs, startRun(t, s))
		}
		synctest.Wait()

		var processes []string
		for _, d := range k.Recent() {
			require.ErrorIs(t, d.Failure.Err, errBoom)
			require.True(t, d.Failure.Exited)
			require.Equal(t, supervisor.Continue, d.Action)
			processes = append(processes, d.Failure.Process)
		}
		require.ElementsMatch(t, []string{"a/w", "b/w"}, processes)
		require.Len(t, log.all(), 2)
		require.Equal(t, 1, k.State("a/w").Failures)
		require.Equal(t, 1, k.State("b/w").Failures)
		for _, run := range runs {
			require.NoError(t, run.shutdown())
		}
	})
}

// kernelPanickingFunc is a RunnableFunc that panics with v as soon as it
// runs.
func kernelPanickingFunc(v any) supervisor.RunnableFunc {
	return func(ctx context.Context) error { panic(v) }
}

// kernelPanickingRunnable panics with value in Run: before calling its
// callback (a start failure), or once ready, after a second of running (it
// cancels the ctx it gave its callback, so the callback returns, then
// panics).
type kernelPanickingRunnable struct {
	value      any
	afterReady bool
}

func (r kernelPanickingRunnable) Run(ctx context.Context, callback supervisor.Callback) error {
	if !r.afterReady {
		panic(r.value)
	}
	cbCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := time.AfterFunc(time.Second, cancel)
	defer stop.Stop()
	_ = callback(cbCtx)
	panic(r.value)
}

func TestPanicsInProcessesArePanicErrorFailures(t *testing.T) {
	errBoom := errors.New("boom")
	places := []struct {
		name      string
		runnable  func(v any) supervisor.Runnable
		wantKinds eventKinds
	}{
		{
			name:     "in a RunnableFunc",
			runnable: func(v any) supervisor.Runnable { return kernelPanickingFunc(v) },
			wantKinds: eventKinds{supervisor.EventStarting, supervisor.EventReady,
				supervisor.EventFailed, supervisor.EventAborted},
		},
		{
			name:      "in Run before callback",
			runnable:  func(v any) supervisor.Runnable { return kernelPanickingRunnable{value: v} },
			wantKinds: eventKinds{supervisor.EventStarting, supervisor.EventFailed, supervisor.EventAborted},
		},
		{
			name:     "in Run after callback",
			runnable: func(v any) supervisor.Runnable { return kernelPanickingRunnable{value: v, afterReady: true} },
			wantKinds: eventKinds{supervisor.EventStarting, supervisor.EventReady,
				supervisor.EventFailed, supervisor.EventAborted},
		},
	}
	values := []struct {
		name  string
		value any
	}{
		{"error value", errBoom},
		{"string value", "boom"},
	}
	for _, place := range places {
		for _, value := range values {
			t.Run(place.name+"/"+value.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					var log failureLog
					k := quietKernel(log.answer(supervisor.Abort))
					tbl := supervisor.NewMapTable[string, supervisor.Runnable]()
					tbl.Put("w", place.runnable(value.value))
					var rec recorder
					opts := quietOptions("sup", &rec)
					opts.Kernel = k
					s := supervisor.NewSupervisor[string, supervisor.Runnable](tbl, opts)
					run := startRun(t, s)
					time.Sleep(time.Minute)
					synctest.Wait()

					failures := log.all()
					require.Len(t, failures, 1)
					f := failures[0]
					require.Equal(t, "sup/w", f.Process)
					require.True(t, f.Exited)
					pe, ok := supervisor.IsPanic(f.Err)
					require.True(t, ok, "not a *PanicError: %#v", f.Err)
					require.Equal(t, value.value, pe.Value)
					require.NotEmpty(t, pe.Stack)
					require.Contains(t, string(pe.Stack), "kernelPanicking", "the stack is the panicking goroutine's")
					require.Contains(t, pe.Error(), "boom")
					if _, isErr := value.value.(error); isErr {
						require.ErrorIs(t, f.Err, errBoom, "errors.Is sees through the panic")
					} else {
						require.NoError(t, pe.Unwrap())
					}

					require.Equal(t, place.wantKinds, rec.allKinds())
					failed := rec.all()[len(place.wantKinds)-2]
					_, ok = supervisor.IsPanic(failed.Err)
					require.True(t, ok, "EventFailed carries the *PanicError")
					require.NoError(t, run.shutdown())
				})
			})
		}
	}
}
