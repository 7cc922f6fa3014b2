package background_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/background"
)

// funcWorker runs its functions, and answers Wait with a virtual sleep
// for cycles cycles, then false.
type funcWorker struct {
	process func(ctx context.Context, s *background.State, name string, p *background.Process) error
	cleanup func(ctx context.Context, s *background.State, name string, p *background.Process) error
	cycles  int
	waits   int
}

func (w *funcWorker) ProcessActiveWork(ctx context.Context, s *background.State, name string, _ *background.Work, p *background.Process) error {
	if w.process == nil {
		return nil
	}
	return w.process(ctx, s, name, p)
}

func (w *funcWorker) CleanupWork(ctx context.Context, s *background.State, name string, p *background.Process) error {
	if w.cleanup == nil {
		return nil
	}
	return w.cleanup(ctx, s, name, p)
}

func (w *funcWorker) Wait(ctx context.Context, d time.Duration) bool {
	w.waits++
	if w.waits > w.cycles {
		return false
	}
	time.Sleep(d)
	return ctx.Err() == nil
}

// An item the run cleaned up, registered and unregistered again at the
// same clock reading while the run goes on, is queued for cleanup again:
// the merge tells by the settings change, not by comparing clocks.
func TestAnItemUnregisteredAgainAfterItsCleanupIsCleanedUpAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		cleaned := map[string]int{}
		w := &funcWorker{cycles: 2}
		w.cleanup = func(_ context.Context, _ *background.State, name string, p *background.Process) error {
			cleaned[name]++
			if name == "b" && cleaned["b"] == 1 {
				// "a" was cleaned up and dropped a moment ago.
				_, err := p.RegisterWork("a", background.Params{Ints: map[string]int64{"v": 2}}, nil)
				require.NoError(t, err)
				require.NoError(t, p.UnregisterWork("a", nil))
			}
			return nil
		}
		p := background.NewProcess("tie", w, store, time.Hour, background.Params{}, background.WithLogger(runDiscard))
		require.NoError(t, p.UpdateFlowControl(time.Minute, time.Hour, time.Nanosecond))
		require.NoError(t, p.UnregisterWork("a", nil))
		require.NoError(t, p.UnregisterWork("b", nil))

		p.Run(t.Context())

		require.Equal(t, map[string]int{"a": 2, "b": 1}, cleaned, "a is cleaned up in the second cycle too")
		s := runRead(t, store, "tie")
		require.Empty(t, s.CleanupWork)
		require.Contains(t, s.DroppedWork, "a")
		require.Contains(t, s.DroppedWork, "b")
	})
}

// A state kept from an earlier run cannot be written by Progress: it
// would take the stored Claim back and undo the fencing.
func TestProgressRefusesAStateOfAnotherRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		var kept *background.State
		var progress []background.Progress
		var errs []error
		w := &funcWorker{cycles: 2}
		w.process = func(_ context.Context, s *background.State, _ string, p *background.Process) error {
			if kept == nil {
				kept = s
				return nil
			}
			time.Sleep(10 * time.Minute) // past the progress frequency
			pr, err := p.Progress(kept)
			progress, errs = append(progress, pr), append(errs, err)
			pr, err = p.Progress(s)
			progress, errs = append(progress, pr), append(errs, err)
			return nil
		}
		p := background.NewProcess("stale", w, store, time.Hour, background.Params{}, background.WithLogger(runDiscard))
		_, err := p.RegisterWork("x", background.Params{}, nil)
		require.NoError(t, err)

		p.Run(t.Context())

		require.Equal(t, []background.Progress{background.None, background.Updated}, progress)
		require.ErrorContains(t, errs[0], "not this run's")
		require.NoError(t, errs[1])
		s := runRead(t, store, "stale")
		require.Equal(t, int64(2), s.Claim, "the second run's claim stands")
		require.Equal(t, background.StateCompleted, s.Status.State)
	})
}

// After a merge that changes the schedule frequency, the run's progress
// frequency follows it (with no minimum: frequency/10).
func TestProgressFrequencyFollowsAMergedScheduleFrequency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		other := background.NewProcess("follow", &funcWorker{}, store, time.Hour, background.Params{}, background.WithLogger(runDiscard))
		var got []background.Progress
		w := &funcWorker{cycles: 1}
		w.process = func(_ context.Context, s *background.State, _ string, p *background.Process) error {
			step := func(d time.Duration) {
				time.Sleep(d)
				pr, err := p.Progress(s)
				require.NoError(t, err)
				got = append(got, pr)
			}
			step(7 * time.Minute) // past 6m (1h/10): updated
			require.NoError(t, other.UpdateSettings(3*time.Hour, background.Params{}, nil))
			step(7 * time.Minute)  // merged: the frequency is 3h now
			step(7 * time.Minute)  // 7m since the last write, under 18m (3h/10)
			step(11 * time.Minute) // 18m since the last write
			return nil
		}
		p := background.NewProcess("follow", w, store, time.Hour, background.Params{}, background.WithLogger(runDiscard))
		require.NoError(t, p.UpdateFlowControl(time.Minute, 0, 0))
		_, err := p.RegisterWork("x", background.Params{}, nil)
		require.NoError(t, err)

		p.Run(t.Context())

		require.Equal(t, []background.Progress{background.Updated, background.Merged, background.None, background.Updated}, got)
	})
}
