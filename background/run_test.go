package background_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/background"
)

// The tests in this file follow the runs of one instance of a process:
// when its cycles start, what a cycle does, how it finishes, what its
// progress writes and how its errors count. Every test runs in a synctest
// bubble, whose clock starts at 2000-01-01 00:00:00 UTC, so schedule slots
// start on exact multiples of the frequency from the bubble's start.

// runEpoch is the bubble's start time.
var runEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// runDiscard is the logger of the processes of these tests.
var runDiscard = slog.New(slog.DiscardHandler)

// runCall is one call of ProcessActiveWork ("process") or CleanupWork
// ("cleanup").
type runCall struct {
	Cycle    int // 1 for the first cycle
	At       time.Time
	Kind     string
	Name     string
	Instance string
}

// runWaitCall is one call of Wait.
type runWaitCall struct {
	At time.Time
	D  time.Duration
}

// runItem is what a runWorker hook gets for one item.
type runItem struct {
	Cycle int
	Ctx   context.Context
	State *background.State
	Name  string
	Work  *background.Work // nil for a cleanup item
	P     *background.Process
}

// runWorker records every call and does each item's work with Process or
// Cleanup (nil: succeed at once). Its Wait waits for real (in the bubble's
// time) Cycles times, then answers false; with Endless it always waits.
type runWorker struct {
	Cycles  int
	Endless bool
	Process func(it runItem) error
	Cleanup func(it runItem) error

	mu    sync.Mutex
	calls []runCall
	waits []runWaitCall
}

func (w *runWorker) record(kind, name string, p *background.Process) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	cycle := len(w.waits)
	w.calls = append(w.calls, runCall{Cycle: cycle, At: time.Now(), Kind: kind, Name: name, Instance: p.Instance()})
	return cycle
}

func (w *runWorker) ProcessActiveWork(ctx context.Context, state *background.State, name string, work *background.Work, p *background.Process) error {
	cycle := w.record("process", name, p)
	if w.Process == nil {
		return nil
	}
	return w.Process(runItem{Cycle: cycle, Ctx: ctx, State: state, Name: name, Work: work, P: p})
}

func (w *runWorker) CleanupWork(ctx context.Context, state *background.State, name string, p *background.Process) error {
	cycle := w.record("cleanup", name, p)
	if w.Cleanup == nil {
		return nil
	}
	return w.Cleanup(runItem{Cycle: cycle, Ctx: ctx, State: state, Name: name, P: p})
}

func (w *runWorker) Wait(ctx context.Context, d time.Duration) bool {
	w.mu.Lock()
	w.waits = append(w.waits, runWaitCall{At: time.Now(), D: d})
	stop := !w.Endless && len(w.waits) > w.Cycles
	w.mu.Unlock()
	if stop {
		return false
	}
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *runWorker) allCalls() []runCall {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.calls)
}

func (w *runWorker) allWaits() []runWaitCall {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.waits)
}

// names returns "kind:name" of the calls of cycle (0: every cycle).
func (w *runWorker) names(cycle int) []string {
	var out []string
	for _, c := range w.allCalls() {
		if cycle == 0 || c.Cycle == cycle {
			out = append(out, c.Kind+":"+c.Name)
		}
	}
	return out
}

// starts returns the time of the first call of each cycle, in order.
func (w *runWorker) starts() []time.Time {
	var out []time.Time
	last := 0
	for _, c := range w.allCalls() {
		if c.Cycle != last {
			out = append(out, c.At)
			last = c.Cycle
		}
	}
	return out
}

// newRunProcess returns a process on store that logs nothing.
func newRunProcess(name string, w background.Worker, store background.Store, freq time.Duration, opts ...background.Option) *background.Process {
	opts = append([]background.Option{background.WithLogger(runDiscard)}, opts...)
	return background.NewProcess(name, w, store, freq, background.Params{}, opts...)
}

// runRegister registers items with empty params.
func runRegister(t *testing.T, p *background.Process, items ...string) {
	t.Helper()
	for _, name := range items {
		_, err := p.RegisterWork(name, background.Params{}, nil)
		require.NoError(t, err)
	}
}

// runSnapshot returns the stored state of the process name.
func runSnapshot(store background.Store, name string) (*background.State, error) {
	tx, err := store.Lock(context.Background(), name)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback() }()
	return tx.Read(context.Background())
}

// runRead returns the stored state of the process name.
func runRead(t *testing.T, store background.Store, name string) *background.State {
	t.Helper()
	s, err := runSnapshot(store, name)
	require.NoError(t, err)
	return s
}

// runIntrude changes the stored state of the process name, as another
// owner would, and returns it as stored.
func runIntrude(store background.Store, name string, change func(s *background.State)) (*background.State, error) {
	tx, err := store.Lock(context.Background(), name)
	if err != nil {
		return nil, err
	}
	s, err := tx.Read(context.Background())
	if err != nil {
		_ = tx.Rollback()
		return nil, err
	}
	change(s)
	if err := tx.Write(context.Background(), s); err != nil {
		_ = tx.Rollback()
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return runSnapshot(store, name)
}

// runTime requires got to be the instant want.
func runTime(t *testing.T, want, got time.Time, msgAndArgs ...any) {
	t.Helper()
	require.Equal(t, want.UTC(), got.UTC(), msgAndArgs...)
}

// runStart checks the bubble's clock and returns it.
func runStart(t *testing.T) time.Time {
	t.Helper()
	t0 := time.Now()
	runTime(t, runEpoch, t0)
	return t0
}

func TestRunFirstCycleAfterInitialWait(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  bool
		wait time.Duration
	}{
		{name: "default", wait: time.Minute},
		{name: "custom", set: true, wait: 10 * time.Second},
		{name: "none", set: true, wait: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := runStart(t)
				store := background.NewMemoryStore()
				w := &runWorker{Cycles: 1}
				p := newRunProcess("first", w, store, time.Hour)
				if tc.set {
					require.NoError(t, p.UpdateFlowControl(tc.wait, background.DefaultMinScheduleFrequency, 0))
				}
				runRegister(t, p, "a")

				p.Run(t.Context())

				waits := w.allWaits()
				require.Len(t, waits, 2)
				require.Equal(t, tc.wait, waits[0].D)
				runTime(t, t0, waits[0].At)
				calls := w.allCalls()
				require.Len(t, calls, 1)
				require.Equal(t, "a", calls[0].Name)
				runTime(t, t0.Add(tc.wait), calls[0].At, "the first cycle comes right after the initial wait")
				require.Equal(t, p.Instance(), calls[0].Instance)
				s := runRead(t, store, "first")
				runTime(t, t0.Add(tc.wait), s.Status.StartTime)
				require.Equal(t, p.Instance(), s.Instance)
			})
		})
	}
}

func TestRunLaterCyclesStartAtSlotPlusJitter(t *testing.T) {
	for _, tc := range []struct {
		name      string
		freq      time.Duration
		minFreq   time.Duration // 0: the default
		cadence   time.Duration
		maxJitter time.Duration
		cycles    int
	}{
		{name: "hourly", freq: time.Hour, cadence: time.Hour, maxJitter: 30 * time.Second, cycles: 6},
		{name: "raised to the minimum", freq: time.Minute, cadence: 15 * time.Minute, maxJitter: 30 * time.Second, cycles: 8},
		{name: "jitter a tenth of the frequency", freq: 2 * time.Minute, minFreq: time.Minute, cadence: 2 * time.Minute, maxJitter: 12 * time.Second, cycles: 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := runStart(t)
				store := background.NewMemoryStore()
				w := &runWorker{Cycles: tc.cycles}
				p := newRunProcess("cadence", w, store, tc.freq)
				if tc.minFreq != 0 {
					require.NoError(t, p.UpdateFlowControl(time.Minute, tc.minFreq, 0))
				}
				runRegister(t, p, "a")

				p.Run(t.Context())

				starts := w.starts()
				require.Len(t, starts, tc.cycles)
				waits := w.allWaits()
				require.Len(t, waits, tc.cycles+1)
				runTime(t, t0.Add(time.Minute), starts[0])
				var jittered int
				for i, start := range starts {
					slot := start.Truncate(tc.cadence)
					runTime(t, t0.Add(time.Duration(i)*tc.cadence), slot, "cycle %d must run in its own slot, right after the previous one", i)
					if i == 0 {
						continue
					}
					jitter := start.Sub(slot)
					require.GreaterOrEqual(t, jitter, time.Duration(0), "cycle %d", i)
					require.LessOrEqual(t, jitter, tc.maxJitter, "cycle %d", i)
					if jitter > 0 {
						jittered++
					}
					// The Wait before cycle i ends exactly when cycle i starts.
					runTime(t, waits[i].At.Add(waits[i].D), start, "cycle %d", i)
				}
				require.Positive(t, jittered, "cycles start at a random delay after their slot")
				require.Equal(t, tc.cadence, runRead(t, store, "cadence").ScheduleFrequency)
			})
		})
	}
}

func TestRunStoredScheduleFrequencyWins(t *testing.T) {
	t.Run("changed during a run", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := runStart(t)
			store := background.NewMemoryStore()
			other := newRunProcess("freq", &runWorker{}, store, time.Hour)
			var updateErr error
			w := &runWorker{Cycles: 4, Process: func(it runItem) error {
				if it.Cycle == 1 {
					updateErr = other.UpdateSettings(3*time.Hour, background.Params{}, nil)
				}
				return nil
			}}
			p := newRunProcess("freq", w, store, time.Hour)
			runRegister(t, p, "a")

			p.Run(t.Context())

			require.NoError(t, updateErr)
			starts := w.starts()
			require.Len(t, starts, 4)
			runTime(t, t0.Add(time.Minute), starts[0])
			for i, slot := range []time.Duration{3 * time.Hour, 6 * time.Hour, 9 * time.Hour} {
				runTime(t, t0.Add(slot), starts[i+1].Truncate(3*time.Hour), "cycle %d", i+1)
				require.LessOrEqual(t, starts[i+1].Sub(t0.Add(slot)), 30*time.Second, "cycle %d", i+1)
			}
			require.Equal(t, time.Hour, p.ScheduleFrequency(), "the process's own frequency is unchanged; the stored one sets the cadence")
			require.Equal(t, 3*time.Hour, runRead(t, store, "freq").ScheduleFrequency)
		})
	})
	t.Run("shorter than the process's own", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := runStart(t)
			store := background.NewMemoryStore()
			w := &runWorker{Cycles: 4}
			p := newRunProcess("freq", w, store, time.Hour)
			runRegister(t, p, "a")
			other := newRunProcess("freq", &runWorker{}, store, time.Hour)
			require.NoError(t, other.UpdateSettings(15*time.Minute, background.Params{}, nil))

			p.Run(t.Context())

			starts := w.starts()
			require.Len(t, starts, 4)
			runTime(t, t0.Add(time.Minute), starts[0])
			for i := 1; i < 4; i++ {
				slot := t0.Add(time.Duration(i) * 15 * time.Minute)
				runTime(t, slot, starts[i].Truncate(15*time.Minute), "cycle %d runs in its own quarter-hour slot", i)
				require.LessOrEqual(t, starts[i].Sub(slot), 30*time.Second, "cycle %d", i)
			}
		})
	})
	t.Run("changed between runs", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := runStart(t)
			store := background.NewMemoryStore()
			other := newRunProcess("freq", &runWorker{}, store, time.Hour)
			w := &runWorker{Cycles: 4}
			p := newRunProcess("freq", w, store, time.Hour)
			runRegister(t, p, "a")
			updated := make(chan error, 1)
			go func() {
				time.Sleep(30 * time.Minute)
				updated <- other.UpdateSettings(3*time.Hour, background.Params{}, nil)
			}()

			p.Run(t.Context())

			require.NoError(t, <-updated)
			starts := w.starts()
			require.Len(t, starts, 4)
			runTime(t, t0.Add(time.Minute), starts[0])
			// The second cycle was due on the hour; it runs, since the
			// settings changed after the first, and reads the new frequency.
			runTime(t, t0.Add(time.Hour), starts[1].Truncate(time.Hour))
			runTime(t, t0.Add(3*time.Hour), starts[2].Truncate(3*time.Hour))
			runTime(t, t0.Add(6*time.Hour), starts[3].Truncate(3*time.Hour))
			require.LessOrEqual(t, starts[2].Sub(t0.Add(3*time.Hour)), 30*time.Second)
			require.LessOrEqual(t, starts[3].Sub(t0.Add(6*time.Hour)), 30*time.Second)
		})
	})
}

func TestRunReturnsWhenWaitAnswersFalse(t *testing.T) {
	t.Run("at the initial wait", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := runStart(t)
			store := background.NewMemoryStore()
			w := &runWorker{Cycles: 0}
			p := newRunProcess("stop", w, store, time.Hour)
			runRegister(t, p, "a")

			p.Run(t.Context())

			runTime(t, t0, time.Now(), "Run returns at once")
			require.Len(t, w.allWaits(), 1)
			require.Empty(t, w.allCalls())
			require.Equal(t, background.StateNew, runRead(t, store, "stop").ActiveWork["a"].Status.State)
		})
	})
	t.Run("between cycles", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := runStart(t)
			store := background.NewMemoryStore()
			w := &runWorker{Cycles: 2}
			p := newRunProcess("stop", w, store, time.Hour)
			runRegister(t, p, "a")

			p.Run(t.Context())

			require.Len(t, w.allWaits(), 3)
			require.Equal(t, []string{"process:a", "process:a"}, w.names(0))
			require.Less(t, time.Since(t0), time.Hour+time.Minute, "Run returns after the third Wait, at the end of the second cycle")
		})
	})
}

func TestRunReturnsWhenContextIsCancelled(t *testing.T) {
	for _, tc := range []struct {
		name   string
		at     time.Duration // when the context is cancelled
		cycles int           // cycles that ran
		block  bool          // item "a" runs until its context is done
	}{
		{name: "during the initial wait", at: 30 * time.Second, cycles: 0},
		{name: "between cycles", at: 90 * time.Second, cycles: 1},
		{name: "during an item", at: 90 * time.Second, cycles: 1, block: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := runStart(t)
				store := background.NewMemoryStore()
				w := &runWorker{Endless: true}
				if tc.block {
					w.Process = func(it runItem) error {
						if it.Name == "a" {
							<-it.Ctx.Done()
							return it.Ctx.Err()
						}
						return nil
					}
				}
				p := newRunProcess("cancel", w, store, time.Hour)
				runRegister(t, p, "a", "b")
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				done := make(chan struct{})
				go func() {
					defer close(done)
					p.Run(ctx)
				}()

				time.Sleep(tc.at)
				synctest.Wait()
				select {
				case <-done:
					t.Fatal("Run returned before its context was cancelled")
				default:
				}
				cancel()
				synctest.Wait()
				select {
				case <-done:
				default:
					t.Fatal("Run did not return when its context was cancelled")
				}

				var want []string
				switch {
				case tc.cycles == 0:
				case tc.block:
					want = []string{"process:a"}
				default:
					want = []string{"process:a", "process:b"}
				}
				require.Equal(t, want, w.names(0))
				s := runRead(t, store, "cancel")
				if tc.block {
					// The run stopped where it was and wrote nothing more:
					// the claim's active status is what the store holds.
					require.Equal(t, background.StateActive, s.Status.State)
					runTime(t, t0.Add(time.Minute), s.Status.StartTime)
					require.True(t, s.Status.FinishTime.IsZero())
					require.Empty(t, s.AggregateStats)
					require.Equal(t, background.StateNew, s.ActiveWork["b"].Status.State)
					require.Len(t, w.allWaits(), 1, "no Wait after a cancelled run")
				}
			})
		})
	}
}

func TestRunCycleProcessesActiveItemsInNameOrderThenCleanup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := runStart(t)
		store := background.NewMemoryStore()
		w := &runWorker{Cycles: 2, Cleanup: func(it runItem) error {
			if it.Name == "y" {
				return errors.New("y busy")
			}
			return nil
		}}
		p := newRunProcess("order", w, store, time.Hour)
		runRegister(t, p, "c", "a", "b")
		require.NoError(t, p.UnregisterWork("y", nil))
		require.NoError(t, p.UnregisterWork("x", nil))
		// Queued at the change's SettingsTime: t0, or a few ns past it for
		// changes made at the same instant.
		queued := runRead(t, store, "order").CleanupWork["y"]
		require.WithinDuration(t, t0, queued, time.Microsecond)

		p.Run(t.Context())

		require.Equal(t, []string{"process:a", "process:b", "process:c", "cleanup:x", "cleanup:y"}, w.names(1))
		require.Equal(t, []string{"process:a", "process:b", "process:c", "cleanup:y"}, w.names(2),
			"a dropped item is not cleaned up again; a failed cleanup is retried")

		s := runRead(t, store, "order")
		require.Contains(t, s.DroppedWork, "x")
		runTime(t, t0.Add(time.Minute), s.DroppedWork["x"], "dropped when its cleanup succeeded, in the first cycle")
		require.NotContains(t, s.CleanupWork, "x")
		require.Contains(t, s.CleanupWork, "y")
		runTime(t, queued, s.CleanupWork["y"], "a failed cleanup keeps the item as it was queued")
		require.NotContains(t, s.DroppedWork, "y")
		require.Equal(t, background.StateIncomplete, s.Status.State)
		require.Equal(t, 1, s.Status.TotalErrors)
		require.Len(t, s.Status.Errors, 1)
		require.Contains(t, s.Status.Errors[0].Text, `"y"`)
		require.Contains(t, s.Status.Errors[0].Text, "y busy")
		for _, name := range []string{"a", "b", "c"} {
			require.Equal(t, background.StateCompleted, s.ActiveWork[name].Status.State, name)
		}
	})
}

func TestRunItemsChangedDuringARunJoinTheNextCycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := runStart(t)
		store := background.NewMemoryStore()
		other := newRunProcess("join", &runWorker{}, store, time.Hour)
		var changeErrs []error
		w := &runWorker{Cycles: 2, Process: func(it runItem) error {
			if it.Cycle == 1 && it.Name == "a" {
				// "ab" sorts between "a" and "b": were it taken into this
				// cycle, it would run next.
				_, err := other.RegisterWork("ab", background.Params{}, nil)
				changeErrs = append(changeErrs, err, other.UnregisterWork("c", nil))
				time.Sleep(6 * time.Minute) // past the progress frequency: the write after "a" merges
			}
			return nil
		}}
		p := newRunProcess("join", w, store, time.Hour)
		runRegister(t, p, "a", "b", "c")

		p.Run(t.Context())

		for _, err := range changeErrs {
			require.NoError(t, err)
		}
		require.Equal(t, []string{"process:a", "process:b"}, w.names(1),
			"an item registered during the run waits for the next cycle; an unregistered one is not processed")
		require.Equal(t, []string{"process:a", "process:ab", "process:b", "cleanup:c"}, w.names(2))

		s := runRead(t, store, "join")
		require.Equal(t, []string{"a", "ab", "b"}, slices.Sorted(maps.Keys(s.ActiveWork)))
		require.Equal(t, background.StateCompleted, s.ActiveWork["ab"].Status.State)
		require.Empty(t, s.CleanupWork)
		require.Contains(t, s.DroppedWork, "c")
		require.Equal(t, float64(2), s.AggregateStats["runs"])
		require.Equal(t, float64(2), s.AggregateStats["state.completed"])
		require.True(t, s.Status.StartTime.After(t0.Add(time.Hour)) || s.Status.StartTime.Equal(t0.Add(time.Hour)))
	})
}

func TestRunFinishStatus(t *testing.T) {
	t.Run("completed", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := runStart(t)
			store := background.NewMemoryStore()
			w := &runWorker{Cycles: 1, Process: func(it runItem) error {
				time.Sleep(10 * time.Second)
				return nil
			}}
			p := newRunProcess("finish", w, store, time.Hour)
			runRegister(t, p, "a", "b")

			p.Run(t.Context())

			s := runRead(t, store, "finish")
			start := t0.Add(time.Minute)
			require.Equal(t, background.StateCompleted, s.Status.State)
			runTime(t, start, s.Status.StartTime)
			runTime(t, start.Add(20*time.Second), s.Status.FinishTime)
			runTime(t, start.Add(20*time.Second), s.Status.ProgressTime)
			require.Zero(t, s.Status.TotalErrors)
			require.Empty(t, s.Status.Errors)
			for i, name := range []string{"a", "b"} {
				st := s.ActiveWork[name].Status
				require.Equal(t, background.StateCompleted, st.State, name)
				runTime(t, start.Add(time.Duration(i)*10*time.Second), st.StartTime, name)
				runTime(t, start.Add(time.Duration(i+1)*10*time.Second), st.FinishTime, name)
			}
			require.Equal(t, float64(1), s.Status.Stats["runs"])
			require.Equal(t, float64(20), s.Status.Stats["duration"])
			require.Equal(t, float64(1), s.Status.Stats["state.completed"])
			require.Equal(t, float64(1), s.AggregateStats["state.completed"])
		})
	})
	t.Run("incomplete", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := runStart(t)
			store := background.NewMemoryStore()
			w := &runWorker{Cycles: 1, Process: func(it runItem) error {
				if it.Name == "b" {
					return errors.New("b failed")
				}
				return nil
			}}
			p := newRunProcess("finish", w, store, time.Hour)
			runRegister(t, p, "a", "b", "c")

			p.Run(t.Context())

			require.Equal(t, []string{"process:a", "process:b", "process:c"}, w.names(0), "a failed item does not stop the run")
			s := runRead(t, store, "finish")
			require.Equal(t, background.StateIncomplete, s.Status.State)
			runTime(t, t0.Add(time.Minute), s.Status.FinishTime)
			require.Equal(t, 1, s.Status.TotalErrors)
			require.Len(t, s.Status.Errors, 1)
			require.Equal(t, "b failed", s.Status.Errors[0].Text)
			runTime(t, t0.Add(time.Minute), s.Status.Errors[0].Time)
			b := s.ActiveWork["b"].Status
			require.Equal(t, background.StateIncomplete, b.State)
			require.Equal(t, 1, b.TotalErrors)
			require.Len(t, b.Errors, 1)
			require.Equal(t, "b failed", b.Errors[0].Text)
			runTime(t, t0.Add(time.Minute), b.LastErrorTime)
			require.Equal(t, background.StateCompleted, s.ActiveWork["a"].Status.State)
			require.Equal(t, background.StateCompleted, s.ActiveWork["c"].Status.State)
			require.Equal(t, float64(1), s.AggregateStats["state.incomplete"])
			require.Equal(t, float64(1), s.AggregateStats["errors"])
		})
	})
	t.Run("aborted", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			t0 := runStart(t)
			store := background.NewMemoryStore()
			var actions []background.ErrorAction
			w := &runWorker{Cycles: 1, Process: func(it runItem) error {
				if it.Name == "a" {
					for i := range 10 {
						actions = append(actions, it.P.AddWorkError(fmt.Errorf("a error %d", i+1), "a", it.State))
					}
					return errors.New("a gave up") // the 11th error on "a"
				}
				return nil
			}}
			p := newRunProcess("finish", w, store, time.Hour)
			runRegister(t, p, "a", "b", "c")

			p.Run(t.Context())

			require.Equal(t, slices.Repeat([]background.ErrorAction{background.Continue}, 10), actions)
			require.Equal(t, []string{"process:a"}, w.names(0), "the items after an abort are not processed")
			s := runRead(t, store, "finish")
			require.Equal(t, background.StateAborted, s.Status.State)
			runTime(t, t0.Add(time.Minute), s.Status.FinishTime)
			a := s.ActiveWork["a"].Status
			require.Equal(t, background.StateAborted, a.State)
			require.Equal(t, 11, a.TotalErrors)
			require.Len(t, a.Errors, 10)
			require.Equal(t, background.StateNew, s.ActiveWork["b"].Status.State)
			require.Equal(t, background.StateNew, s.ActiveWork["c"].Status.State)
			require.Equal(t, float64(1), s.AggregateStats["state.aborted"])
		})
	})
}

func TestRunStatsAddUpOverRuns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		w := &runWorker{Cycles: 2, Process: func(it runItem) error {
			time.Sleep(10 * time.Second)
			it.P.AddWorkStats(2, "rows", it.Name, it.State)
			it.P.AddStats(1, "custom", it.State)
			if it.Name == "a" {
				it.P.AddWorkStats(5, "ghost", "nope", it.State) // no such item: the run's stat only
			}
			return nil
		}}
		p := newRunProcess("stats", w, store, time.Hour)
		runRegister(t, p, "a", "b")

		p.Run(t.Context())

		s := runRead(t, store, "stats")
		for _, name := range []string{"a", "b"} {
			require.Equal(t, map[string]float64{"rows": 2}, s.ActiveWork[name].Status.Stats, "item %s: the stats of its last run", name)
		}
		last := map[string]float64{"custom": 2, "work.rows": 4, "work.ghost": 5, "runs": 1, "duration": 20, "state.completed": 1, "errors": 0}
		sum := map[string]float64{"custom": 4, "work.rows": 8, "work.ghost": 10, "runs": 2, "duration": 40, "state.completed": 2, "errors": 0}
		for k, v := range last {
			require.Equal(t, v, s.Status.Stats[k], "run stat %s", k)
		}
		for k, v := range sum {
			require.Equal(t, v, s.AggregateStats[k], "aggregate stat %s", k)
		}
	})
}

func TestRunProgressFrequency(t *testing.T) {
	for _, tc := range []struct {
		name     string
		freq     time.Duration
		custom   time.Duration // set with UpdateFlowControl; 0: the default
		progress time.Duration
	}{
		{name: "default, a third of the minimum", freq: time.Hour, progress: 5 * time.Minute},
		{name: "default, a tenth of the frequency", freq: 20 * time.Minute, progress: 2 * time.Minute},
		{name: "custom", freq: time.Hour, custom: 40 * time.Second, progress: 40 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				t0 := runStart(t)
				store := background.NewMemoryStore()
				var (
					results []background.Progress
					errs    []error
					times   []time.Time // stored ProgressTime after each call
				)
				call := func(it runItem) {
					r, err := it.P.Progress(it.State)
					results = append(results, r)
					errs = append(errs, err)
					s, err := runSnapshot(store, "progress")
					errs = append(errs, err)
					if s != nil {
						times = append(times, s.Status.ProgressTime)
					}
				}
				w := &runWorker{Cycles: 1, Process: func(it runItem) error {
					call(it) // at the claim's write
					time.Sleep(tc.progress - time.Nanosecond)
					call(it) // just before the progress frequency
					time.Sleep(time.Nanosecond)
					call(it) // at the progress frequency
					call(it) // right after that write
					time.Sleep(tc.progress)
					call(it)
					return nil
				}}
				p := newRunProcess("progress", w, store, tc.freq)
				if tc.custom != 0 {
					require.NoError(t, p.UpdateFlowControl(time.Minute, background.DefaultMinScheduleFrequency, tc.custom))
				}
				runRegister(t, p, "a")

				p.Run(t.Context())

				for _, err := range errs {
					require.NoError(t, err)
				}
				require.Equal(t, []background.Progress{background.None, background.None, background.Updated, background.None, background.Updated}, results)
				start := t0.Add(time.Minute)
				require.Len(t, times, 5)
				for i, want := range []time.Time{start, start, start.Add(tc.progress), start.Add(tc.progress), start.Add(2 * tc.progress)} {
					runTime(t, want, times[i], "stored ProgressTime after call %d", i)
				}
			})
		})
	}
}

func TestRunProgressWritesInRunStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := runStart(t)
		store := background.NewMemoryStore()
		var (
			before, after *background.State
			result        background.Progress
			errs          []error
		)
		w := &runWorker{Cycles: 1, Process: func(it runItem) error {
			if it.Name != "b" {
				return nil
			}
			var err error
			before, err = runSnapshot(store, "inrun")
			errs = append(errs, err)
			time.Sleep(5 * time.Minute)
			it.P.AddWorkStats(4, "rows", "b", it.State)
			result, err = it.P.Progress(it.State)
			errs = append(errs, err)
			after, err = runSnapshot(store, "inrun")
			errs = append(errs, err)
			return nil
		}}
		p := newRunProcess("inrun", w, store, time.Hour)
		runRegister(t, p, "a", "b")

		p.Run(t.Context())

		for _, err := range errs {
			require.NoError(t, err)
		}
		start := t0.Add(time.Minute)
		// Nothing was due after "a": the store still holds the claim.
		require.Equal(t, background.StateActive, before.Status.State)
		require.Equal(t, background.StateNew, before.ActiveWork["a"].Status.State)

		require.Equal(t, background.Updated, result)
		require.Equal(t, p.Instance(), after.Instance)
		require.Equal(t, background.StateActive, after.Status.State)
		runTime(t, start.Add(5*time.Minute), after.Status.ProgressTime)
		require.Equal(t, float64(4), after.Status.Stats["work.rows"])
		a := after.ActiveWork["a"].Status
		require.Equal(t, background.StateCompleted, a.State)
		runTime(t, start, a.FinishTime)
		b := after.ActiveWork["b"].Status
		require.Equal(t, background.StateActive, b.State)
		runTime(t, start, b.StartTime)
		require.Equal(t, map[string]float64{"rows": 4}, b.Stats)
	})
}

func TestRunProgressMergesSettingsChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		t0 := runStart(t)
		store := background.NewMemoryStore()
		other := newRunProcess("merge", &runWorker{}, store, time.Hour)
		var (
			result      background.Progress
			errs        []error
			merged      *background.State // the run's state after the merge
			stored      *background.State
			workState   background.RunState // of the *Work the worker holds
			bParams     background.Params   // as the worker saw them
			processedAB bool
		)
		w := &runWorker{Cycles: 1, Process: func(it runItem) error {
			switch it.Name {
			case "a":
				_, err := other.RegisterWork("ab", background.Params{Ints: map[string]int64{"n": 1}}, nil)
				errs = append(errs, err)
				_, err = other.RegisterWork("b", background.Params{Ints: map[string]int64{"batch": 7}}, nil)
				errs = append(errs, err)
				errs = append(errs, other.UnregisterWork("c", nil))
				errs = append(errs, other.UpdateSettings(2*time.Hour, background.Params{Strings: map[string]string{"k": "v2"}}, nil))
				it.P.AddWorkStats(3, "rows", "a", it.State)
				time.Sleep(5 * time.Minute)
				result, err = it.P.Progress(it.State)
				errs = append(errs, err)
				merged = it.State.Clone()
				workState = it.Work.Status.State
				stored, err = runSnapshot(store, "merge")
				errs = append(errs, err)
			case "ab":
				processedAB = true
			case "b":
				bParams = it.Work.Params.Clone()
			}
			return nil
		}}
		p := newRunProcess("merge", w, store, time.Hour)
		require.NoError(t, p.UpdateSettings(0, background.Params{Strings: map[string]string{"k": "v1"}}, nil))
		runRegister(t, p, "a", "b", "c")

		p.Run(t.Context())

		for _, err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, background.Merged, result)
		start := t0.Add(time.Minute)
		for _, s := range []*background.State{merged, stored} {
			require.Equal(t, map[string]string{"k": "v2"}, s.Settings.Strings, "stored settings win")
			require.Equal(t, 2*time.Hour, s.ScheduleFrequency)
			require.Equal(t, []string{"a", "ab", "b"}, slices.Sorted(maps.Keys(s.ActiveWork)))
			a := s.ActiveWork["a"].Status
			require.Equal(t, background.StateActive, a.State, "the item under way keeps its in-run status")
			runTime(t, start, a.StartTime)
			require.Equal(t, map[string]float64{"rows": 3}, a.Stats)
			require.Equal(t, background.StateNew, s.ActiveWork["ab"].Status.State, "a new item joins, not run yet")
			require.Equal(t, map[string]int64{"n": 1}, s.ActiveWork["ab"].Params.Ints)
			require.Equal(t, map[string]int64{"batch": 7}, s.ActiveWork["b"].Params.Ints, "stored params win")
			require.Contains(t, s.CleanupWork, "c", "a removed item goes to cleanup")
			require.Equal(t, float64(3), s.Status.Stats["work.rows"], "the run's stats are kept")
		}
		runTime(t, start.Add(5*time.Minute), stored.Status.ProgressTime)
		require.Equal(t, background.StateActive, workState)
		require.Equal(t, map[string]int64{"batch": 7}, bParams.Ints, "the next item runs with the merged params")
		require.False(t, processedAB)
		require.Equal(t, []string{"process:a", "process:b"}, w.names(1))
		final := runRead(t, store, "merge")
		require.Equal(t, background.StateCompleted, final.Status.State)
		require.Equal(t, map[string]string{"k": "v2"}, final.Settings.Strings)
		require.Equal(t, background.StateNew, final.ActiveWork["ab"].Status.State)
	})
}

func TestRunProgressConflict(t *testing.T) {
	for _, tc := range []struct {
		name     string
		change   func(s *background.State)
		sleep    bool     // past the progress frequency after the intrusion
		progress bool     // the worker calls Progress itself
		want     []string // calls of the run
	}{
		{
			name:     "another instance, seen by the worker",
			change:   func(s *background.State) { s.Instance = "intruder" },
			sleep:    true,
			progress: true,
			want:     []string{"process:a"},
		},
		{
			name:     "a newer claim of the same instance, seen by the worker",
			change:   func(s *background.State) { s.Claim++ },
			sleep:    true,
			progress: true,
			want:     []string{"process:a"},
		},
		{
			name:   "another instance, seen after the item",
			change: func(s *background.State) { s.Instance = "intruder" },
			sleep:  true,
			want:   []string{"process:a"},
		},
		{
			name:   "another instance, seen at the finish",
			change: func(s *background.State) { s.Instance = "intruder" },
			want:   []string{"process:a", "process:b"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := background.NewMemoryStore()
				var (
					intruded *background.State
					results  []background.Progress
					errs     []error
					intrErr  error
				)
				w := &runWorker{Cycles: 1, Process: func(it runItem) error {
					if it.Name != "a" {
						return nil
					}
					intruded, intrErr = runIntrude(store, "conflict", func(s *background.State) {
						tc.change(s)
						s.Settings = background.Params{Strings: map[string]string{"owner": "intruder"}}
						s.Status.Stats = map[string]float64{"intruder": 1}
					})
					if tc.sleep {
						time.Sleep(5 * time.Minute)
					}
					if tc.progress {
						for range 2 {
							r, err := it.P.Progress(it.State)
							results = append(results, r)
							errs = append(errs, err)
						}
					}
					it.P.AddStats(1, "after", it.State)
					return nil
				}}
				p := newRunProcess("conflict", w, store, time.Hour)
				runRegister(t, p, "a", "b")

				p.Run(t.Context())

				require.NoError(t, intrErr)
				if tc.progress {
					require.Equal(t, []background.Progress{background.Conflict, background.Conflict}, results)
					for _, err := range errs {
						require.ErrorIs(t, err, background.ErrConflict)
					}
				}
				require.Equal(t, tc.want, w.names(0))
				require.Equal(t, intruded, runRead(t, store, "conflict"), "after a conflict the run writes nothing, its finish neither")
			})
		})
	}
}

func TestRunProgressWithoutARun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		other := newRunProcess("norun", &runWorker{}, store, time.Hour)
		var (
			otherResult background.Progress
			otherErr    error
			runState    *background.State
		)
		w := &runWorker{Cycles: 1, Process: func(it runItem) error {
			runState = it.State
			otherResult, otherErr = other.Progress(it.State)
			return nil
		}}
		p := newRunProcess("norun", w, store, time.Hour)
		runRegister(t, p, "a")

		result, err := p.Progress(&background.State{})
		require.ErrorIs(t, err, background.ErrNoRun, "before Run")
		require.Equal(t, background.None, result)

		p.Run(t.Context())

		require.ErrorIs(t, otherErr, background.ErrNoRun, "another Process value has no run under way")
		require.Equal(t, background.None, otherResult)
		result, err = p.Progress(runState)
		require.ErrorIs(t, err, background.ErrNoRun, "after the run")
		require.Equal(t, background.None, result)
		require.Equal(t, background.StateCompleted, runRead(t, store, "norun").Status.State)
	})
}

func TestRunErrorLimits(t *testing.T) {
	C, A := background.Continue, background.Abort
	for _, tc := range []struct {
		name       string
		opts       []background.Option
		items      []string
		errors     map[string]int // errors each item adds, up to the first Abort
		actions    map[string][]background.ErrorAction
		processed  []string
		runTotal   int
		runKept    int
		itemTotals map[string]int
		itemKept   map[string]int
	}{
		{
			name:       "default item limit",
			items:      []string{"a", "b"},
			errors:     map[string]int{"a": 20},
			actions:    map[string][]background.ErrorAction{"a": append(slices.Repeat([]background.ErrorAction{C}, 10), A)},
			processed:  []string{"process:a"},
			runTotal:   11,
			runKept:    11,
			itemTotals: map[string]int{"a": 11},
			itemKept:   map[string]int{"a": 10},
		},
		{
			name:   "default run limit",
			items:  []string{"a", "b", "c", "d"},
			errors: map[string]int{"a": 9, "b": 9, "c": 9},
			actions: map[string][]background.ErrorAction{
				"a": slices.Repeat([]background.ErrorAction{C}, 9),
				"b": slices.Repeat([]background.ErrorAction{C}, 9),
				"c": append(slices.Repeat([]background.ErrorAction{C}, 7), A), // the 26th of the run
			},
			processed:  []string{"process:a", "process:b", "process:c"},
			runTotal:   26,
			runKept:    25,
			itemTotals: map[string]int{"a": 9, "b": 9, "c": 8},
			itemKept:   map[string]int{"a": 9, "b": 9, "c": 8},
		},
		{
			name:       "custom item limit",
			opts:       []background.Option{background.WithErrorLimits(2, 3)},
			items:      []string{"a", "b"},
			errors:     map[string]int{"a": 5},
			actions:    map[string][]background.ErrorAction{"a": {C, C, A}},
			processed:  []string{"process:a"},
			runTotal:   3,
			runKept:    3,
			itemTotals: map[string]int{"a": 3},
			itemKept:   map[string]int{"a": 2},
		},
		{
			name:       "custom run limit",
			opts:       []background.Option{background.WithErrorLimits(2, 3)},
			items:      []string{"a", "b", "c"},
			errors:     map[string]int{"a": 2, "b": 2},
			actions:    map[string][]background.ErrorAction{"a": {C, C}, "b": {C, A}},
			processed:  []string{"process:a", "process:b"},
			runTotal:   4,
			runKept:    3,
			itemTotals: map[string]int{"a": 2, "b": 2},
			itemKept:   map[string]int{"a": 2, "b": 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := background.NewMemoryStore()
				actions := map[string][]background.ErrorAction{}
				w := &runWorker{Cycles: 1, Process: func(it runItem) error {
					for i := range tc.errors[it.Name] {
						action := it.P.AddWorkError(fmt.Errorf("%s error %d", it.Name, i+1), it.Name, it.State)
						actions[it.Name] = append(actions[it.Name], action)
						if action == background.Abort {
							break
						}
					}
					return nil
				}}
				p := newRunProcess("limits", w, store, time.Hour, tc.opts...)
				runRegister(t, p, tc.items...)

				p.Run(t.Context())

				require.Equal(t, tc.actions, actions)
				require.Equal(t, tc.processed, w.names(0), "the run stops at the error past a limit")
				s := runRead(t, store, "limits")
				require.Equal(t, background.StateAborted, s.Status.State)
				require.Equal(t, tc.runTotal, s.Status.TotalErrors)
				require.Len(t, s.Status.Errors, tc.runKept)
				require.Equal(t, "a error 1", s.Status.Errors[0].Text)
				for name, total := range tc.itemTotals {
					st := s.ActiveWork[name].Status
					require.Equal(t, total, st.TotalErrors, name)
					require.Len(t, st.Errors, tc.itemKept[name], name)
					require.Equal(t, name+" error 1", st.Errors[0].Text, name)
				}
			})
		})
	}
}

func TestRunAddErrorWithoutWorkStatusCountsOnTheRunOnly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		var actions []background.ErrorAction
		w := &runWorker{Cycles: 1, Process: func(it runItem) error {
			switch it.Name {
			case "a":
				actions = append(actions, it.P.AddError(errors.New("run only"), nil, it.State))
			case "b":
				actions = append(actions, it.P.AddError(errors.New("on b"), &it.Work.Status, it.State))
			}
			return nil
		}}
		p := newRunProcess("adderror", w, store, time.Hour)
		runRegister(t, p, "a", "b")

		p.Run(t.Context())

		require.Equal(t, []background.ErrorAction{background.Continue, background.Continue}, actions)
		s := runRead(t, store, "adderror")
		require.Equal(t, 2, s.Status.TotalErrors)
		require.Equal(t, []string{"run only", "on b"}, []string{s.Status.Errors[0].Text, s.Status.Errors[1].Text})
		require.Zero(t, s.ActiveWork["a"].Status.TotalErrors)
		require.Empty(t, s.ActiveWork["a"].Status.Errors)
		require.Equal(t, 1, s.ActiveWork["b"].Status.TotalErrors)
		require.Equal(t, "on b", s.ActiveWork["b"].Status.Errors[0].Text)
		require.Equal(t, background.StateIncomplete, s.Status.State, "errors recorded make the run incomplete")
	})
}

func TestRunPanicBecomesAnError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		w := &runWorker{
			Cycles: 1,
			Process: func(it runItem) error {
				if it.Name == "a" {
					panic("boom-in-a")
				}
				return nil
			},
			Cleanup: func(it runItem) error { panic("boom-in-x") },
		}
		p := newRunProcess("panic", w, store, time.Hour)
		runRegister(t, p, "a", "b")
		require.NoError(t, p.UnregisterWork("x", nil))

		p.Run(t.Context())

		require.Equal(t, []string{"process:a", "process:b", "cleanup:x"}, w.names(0), "the run goes on after a panic")
		s := runRead(t, store, "panic")
		a := s.ActiveWork["a"].Status
		require.Equal(t, background.StateIncomplete, a.State)
		require.Len(t, a.Errors, 1)
		require.Contains(t, a.Errors[0].Text, "boom-in-a")
		require.Equal(t, background.StateCompleted, s.ActiveWork["b"].Status.State)
		require.Contains(t, s.CleanupWork, "x", "a panicking cleanup keeps the item")
		require.Equal(t, background.StateIncomplete, s.Status.State)
		require.Equal(t, 2, s.Status.TotalErrors)
		require.Contains(t, s.Status.Errors[1].Text, "boom-in-x")
	})
}

// runPolicy records the failures it decides and answers action.
type runPolicy struct {
	mu       sync.Mutex
	action   supervisor.Action
	failures []supervisor.Failure
}

func (r *runPolicy) decide(_ context.Context, f supervisor.Failure) supervisor.Action {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, f)
	return r.action
}

func (r *runPolicy) all() []supervisor.Failure {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.failures)
}

func TestRunErrorsReachTheKernel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		policy := &runPolicy{action: supervisor.Continue}
		k := supervisor.NewErrorKernel(supervisor.KernelOptions{Policy: policy.decide, Logger: runDiscard})
		decisions, unsubscribe := k.Subscribe(16)
		defer unsubscribe()
		store := background.NewMemoryStore()
		var actions []background.ErrorAction
		w := &runWorker{
			Cycles: 1,
			Process: func(it runItem) error {
				switch it.Name {
				case "a":
					return errors.New("a failed")
				case "b":
					actions = append(actions, it.P.AddWorkError(errors.New("b note"), "b", it.State))
					actions = append(actions, it.P.AddError(errors.New("b status"), &it.Work.Status, it.State))
					actions = append(actions, it.P.AddError(errors.New("run note"), nil, it.State))
				}
				return nil
			},
			Cleanup: func(it runItem) error { return errors.New("x busy") },
		}
		p := newRunProcess("kern", w, store, time.Hour, background.WithKernel(k))
		runRegister(t, p, "a", "b", "c")
		require.NoError(t, p.UnregisterWork("x", nil))

		p.Run(t.Context())

		require.Equal(t, []background.ErrorAction{background.Continue, background.Continue, background.Continue}, actions)
		require.Equal(t, []string{"process:a", "process:b", "process:c", "cleanup:x"}, w.names(0))
		failures := policy.all()
		require.Len(t, failures, 5)
		type seen struct {
			Process string
			Message any
			Err     string
		}
		var got []seen
		for _, f := range failures {
			got = append(got, seen{f.Process, f.Message, f.Err.Error()})
		}
		require.Equal(t, "a failed", got[0].Err)
		require.Contains(t, got[4].Err, "x busy")
		got[4].Err = "x busy"
		require.Equal(t, []seen{
			{"background/kern", "a", "a failed"},
			{"background/kern", "b", "b note"},
			{"background/kern", "b", "b status"},
			{"background/kern", "", "run note"},
			{"background/kern", "x", "x busy"},
		}, got)
		for i := range 5 {
			select {
			case d := <-decisions:
				require.Equal(t, "background/kern", d.Failure.Process)
				require.Equal(t, supervisor.Continue, d.Action)
			default:
				t.Fatalf("decision %d was not published", i)
			}
		}
		require.Equal(t, 5, k.State("background/kern").Failures)
		s := runRead(t, store, "kern")
		require.Equal(t, background.StateIncomplete, s.Status.State)
		require.Equal(t, 5, s.Status.TotalErrors)
	})
}

func TestRunKernelAbortAbortsTheRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		policy := &runPolicy{action: supervisor.Abort}
		k := supervisor.NewErrorKernel(supervisor.KernelOptions{Policy: policy.decide, Logger: runDiscard})
		store := background.NewMemoryStore()
		w := &runWorker{Cycles: 1, Process: func(it runItem) error {
			if it.Name == "a" {
				return errors.New("a failed")
			}
			return nil
		}}
		p := newRunProcess("kabort", w, store, time.Hour, background.WithKernel(k))
		runRegister(t, p, "a", "b")

		p.Run(t.Context())

		require.Equal(t, []string{"process:a"}, w.names(0), "the items after the kernel's Abort are not processed")
		require.Len(t, policy.all(), 1)
		s := runRead(t, store, "kabort")
		require.Equal(t, background.StateAborted, s.Status.State)
		require.Equal(t, background.StateAborted, s.ActiveWork["a"].Status.State)
		require.Equal(t, 1, s.ActiveWork["a"].Status.TotalErrors, "one error, well within the limits")
		require.Equal(t, background.StateNew, s.ActiveWork["b"].Status.State)
		require.Equal(t, float64(1), s.AggregateStats["state.aborted"])
	})
}
