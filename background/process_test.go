package background_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/background"
)

// The tests in this file cover a Process apart from its runs: its
// defaults, its flow control, and the registration methods that change
// its stored state (RegisterWork, UnregisterWork, UpdateSettings), with a
// transaction of their own or the caller's. Tests that look at times run
// in a synctest bubble, so time.Now only moves when the test sleeps.

// prName is the name of the processes of these tests.
const prName = "reindex"

// prDiscard is the logger of the processes of these tests.
var prDiscard = slog.New(slog.DiscardHandler)

// prWorker does no work; its Wait records the duration and blocks until
// ctx is done, so Run stays in its first wait until canceled.
type prWorker struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (w *prWorker) ProcessActiveWork(context.Context, *background.State, string, *background.Work, *background.Process) error {
	return nil
}

func (w *prWorker) CleanupWork(context.Context, *background.State, string, *background.Process) error {
	return nil
}

func (w *prWorker) Wait(ctx context.Context, d time.Duration) bool {
	w.mu.Lock()
	w.waits = append(w.waits, d)
	w.mu.Unlock()
	<-ctx.Done()
	return false
}

func (w *prWorker) recorded() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.waits...)
}

// newTestProcessPR returns a process named prName on store.
func newTestProcessPR(store background.Store, freq time.Duration, defaults background.Params, opts ...background.Option) *background.Process {
	opts = append([]background.Option{background.WithLogger(prDiscard)}, opts...)
	return background.NewProcess(prName, &prWorker{}, store, freq, defaults, opts...)
}

// prDefaults returns the default settings of the processes of these tests.
func prDefaults() background.Params {
	return background.Params{Ints: map[string]int64{"batch": 500}, Strings: map[string]string{"mode": "full"}}
}

// prParams returns item parameters naming table.
func prParams(table string) background.Params {
	return background.Params{Strings: map[string]string{"table": table}}
}

// prRead reads the committed state of the process prName in a transaction
// of its own; the state must exist.
func prRead(t *testing.T, store background.Store) *background.State {
	t.Helper()
	s, err := prTryRead(t, store)
	require.NoError(t, err)
	return s
}

// prTryRead reads the committed state of prName, or fails with the
// store's error.
func prTryRead(t *testing.T, store background.Store) (*background.State, error) {
	t.Helper()
	tx, err := store.Lock(context.Background(), prName)
	require.NoError(t, err, "the state's lock must be free")
	defer func() { require.NoError(t, tx.Rollback()) }()
	return tx.Read(context.Background())
}

// prEdit changes the committed state of prName directly in the store, as
// another instance's run would.
func prEdit(t *testing.T, store background.Store, edit func(s *background.State)) {
	t.Helper()
	ctx := context.Background()
	tx, err := store.Lock(ctx, prName)
	require.NoError(t, err)
	s, err := tx.Read(ctx)
	if errors.Is(err, background.ErrNotFound) {
		s, err = &background.State{Name: prName}, nil
	}
	require.NoError(t, err)
	edit(s)
	require.NoError(t, tx.Write(ctx, s))
	require.NoError(t, tx.Commit())
}

// prRequireLockFree fails unless the state's lock can be taken, that is
// no transaction was left open.
func prRequireLockFree(t *testing.T, store background.Store) {
	t.Helper()
	tx, err := store.Lock(context.Background(), prName)
	require.NoError(t, err, "a transaction was left holding the lock")
	require.NoError(t, tx.Rollback())
}

// prSameTime fails unless got is the instant want.
func prSameTime(t *testing.T, want, got time.Time, msgAndArgs ...any) {
	t.Helper()
	require.Truef(t, want.Equal(got), "want %v, got %v: %v", want, got, fmt.Sprint(msgAndArgs...))
}

// prFakeStore wraps a MemoryStore, counts the writes of its transactions
// and fails Lock, Read, Write or Commit with the errors set in it.
type prFakeStore struct {
	inner *background.MemoryStore

	lockErr, readErr, writeErr, commitErr error

	locks     atomic.Int64
	writes    atomic.Int64
	rollbacks atomic.Int64
}

func newPRFakeStore() *prFakeStore {
	return &prFakeStore{inner: background.NewMemoryStore()}
}

func (s *prFakeStore) Lock(ctx context.Context, name string) (background.Tx, error) {
	s.locks.Add(1)
	if s.lockErr != nil {
		return nil, s.lockErr
	}
	tx, err := s.inner.Lock(ctx, name)
	if err != nil {
		return nil, err
	}
	return &prFakeTx{store: s, inner: tx}, nil
}

type prFakeTx struct {
	store *prFakeStore
	inner background.Tx
}

func (t *prFakeTx) Read(ctx context.Context) (*background.State, error) {
	if t.store.readErr != nil {
		return nil, t.store.readErr
	}
	return t.inner.Read(ctx)
}

func (t *prFakeTx) Write(ctx context.Context, s *background.State) error {
	t.store.writes.Add(1)
	if t.store.writeErr != nil {
		return t.store.writeErr
	}
	return t.inner.Write(ctx, s)
}

// Commit fails, when told to, without ending the transaction: the lock
// stays held until a Rollback.
func (t *prFakeTx) Commit() error {
	if t.store.commitErr != nil {
		return t.store.commitErr
	}
	return t.inner.Commit()
}

func (t *prFakeTx) Rollback() error {
	t.store.rollbacks.Add(1)
	return t.inner.Rollback()
}

func TestProcessInstanceAndName(t *testing.T) {
	store := background.NewMemoryStore()
	p1 := newTestProcessPR(store, time.Hour, background.Params{})
	p2 := newTestProcessPR(store, time.Hour, background.Params{})
	require.NotEmpty(t, p1.Instance())
	require.NotEmpty(t, p2.Instance())
	require.NotEqual(t, p1.Instance(), p2.Instance(), "each Process value gets its own random instance ID")
	require.Equal(t, p1.Instance(), p1.Instance(), "the ID is fixed for the value's life")

	p3 := newTestProcessPR(store, time.Hour, background.Params{}, background.WithInstance("node-1"))
	require.Equal(t, "node-1", p3.Instance())
	p4 := newTestProcessPR(store, time.Hour, background.Params{}, background.WithInstance(""))
	require.NotEmpty(t, p4.Instance(), "an empty ID keeps the random default")

	require.Equal(t, prName, p1.Name())
	other := background.NewProcess("other", &prWorker{}, store, time.Hour, background.Params{})
	require.Equal(t, "other", other.Name())
}

func TestProcessScheduleFrequencyIsRaisedToTheMinimum(t *testing.T) {
	tests := []struct {
		freq, want time.Duration
	}{
		{-time.Minute, background.DefaultMinScheduleFrequency},
		{0, background.DefaultMinScheduleFrequency},
		{time.Minute, 15 * time.Minute},
		{15*time.Minute - time.Nanosecond, 15 * time.Minute},
		{15 * time.Minute, 15 * time.Minute},
		{15*time.Minute + time.Second, 15*time.Minute + time.Second},
		{time.Hour, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.freq.String(), func(t *testing.T) {
			p := newTestProcessPR(background.NewMemoryStore(), tt.freq, background.Params{})
			require.Equal(t, tt.want, p.ScheduleFrequency())
		})
	}
}

func TestProcessUpdateFlowControlMinimumFrequency(t *testing.T) {
	tests := []struct {
		name          string
		freq, minimum time.Duration
		want          time.Duration
	}{
		{"lower minimum lets a lower frequency through", time.Minute, time.Minute, time.Minute},
		{"minimum between", 5 * time.Minute, time.Minute, 5 * time.Minute},
		{"no minimum", 30 * time.Second, 0, 30 * time.Second},
		{"minimum above the default raises more", time.Hour, 2 * time.Hour, 2 * time.Hour},
		{"minimum below a high frequency keeps it", time.Hour, time.Minute, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := background.NewMemoryStore()
			p := newTestProcessPR(store, tt.freq, background.Params{})
			require.Equal(t, max(tt.freq, background.DefaultMinScheduleFrequency), p.ScheduleFrequency(), "before")
			require.NoError(t, p.UpdateFlowControl(time.Minute, tt.minimum, 0))
			require.Equal(t, tt.want, p.ScheduleFrequency())

			// A state created afterwards gets the frequency as raised now.
			_, err := p.RegisterWork("users", prParams("users"), nil)
			require.NoError(t, err)
			require.Equal(t, tt.want, prRead(t, store).ScheduleFrequency)
		})
	}
}

func TestProcessUpdateFlowControlRejectsNegativeDurations(t *testing.T) {
	tests := []struct {
		name                                 string
		initialWait, minimum, progressWrites time.Duration
	}{
		{"initial wait", -time.Second, time.Minute, 0},
		{"minimum", time.Second, -time.Minute, 0},
		{"progress frequency", time.Second, time.Minute, -time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newTestProcessPR(background.NewMemoryStore(), time.Minute, background.Params{})
			err := p.UpdateFlowControl(tt.initialWait, tt.minimum, tt.progressWrites)
			require.Error(t, err)
			require.Contains(t, err.Error(), `"`+prName+`"`)
			// Nothing was applied: the 1m frequency is still raised to the
			// default minimum (a minimum of 1m, or of -1m, would let it
			// through).
			require.Equal(t, background.DefaultMinScheduleFrequency, p.ScheduleFrequency())
		})
	}
}

func TestProcessInitialWaitDefaultAndUpdate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &prWorker{}
		p := background.NewProcess(prName, w, background.NewMemoryStore(), time.Hour, background.Params{}, background.WithLogger(prDiscard))

		prRunUntilFirstWait(t, p)
		require.Equal(t, []time.Duration{background.DefaultInitialWait}, w.recorded())
		require.Equal(t, time.Minute, background.DefaultInitialWait)

		require.NoError(t, p.UpdateFlowControl(5*time.Second, 0, 0))
		prRunUntilFirstWait(t, p)
		require.Equal(t, []time.Duration{background.DefaultInitialWait, 5 * time.Second}, w.recorded())
	})
}

// prRunUntilFirstWait starts Run, lets it block in its first Wait (of a
// prWorker), then cancels it and waits for it to return.
func prRunUntilFirstWait(t *testing.T, p *background.Process) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	synctest.Wait()
	cancel()
	<-done
}

func TestProcessUpdateFlowControlWhileRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := &prWorker{}
		p := background.NewProcess(prName, w, background.NewMemoryStore(), time.Minute, background.Params{}, background.WithLogger(prDiscard))
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			p.Run(ctx)
		}()
		synctest.Wait()
		require.Len(t, w.recorded(), 1, "Run is in its first Wait")

		err := p.UpdateFlowControl(0, time.Minute, 0)
		require.ErrorIs(t, err, background.ErrRunning)
		require.Contains(t, err.Error(), `"`+prName+`"`)
		require.Equal(t, background.DefaultMinScheduleFrequency, p.ScheduleFrequency(), "the refused change was not applied")

		cancel()
		<-done

		// Once Run has returned, flow control can change again.
		require.NoError(t, p.UpdateFlowControl(0, time.Minute, 0))
		require.Equal(t, time.Minute, p.ScheduleFrequency())
	})
}

func TestProcessDefaultSettingsIsACopy(t *testing.T) {
	defaults := prDefaults()
	p := newTestProcessPR(background.NewMemoryStore(), time.Hour, defaults)

	// Changing the caller's map after NewProcess changes nothing.
	defaults.Ints["batch"] = 1
	defaults.Strings["extra"] = "x"
	require.Equal(t, prDefaults(), p.DefaultSettings())

	// Neither does changing a returned copy.
	got := p.DefaultSettings()
	got.Ints["batch"] = 2
	delete(got.Strings, "mode")
	require.Equal(t, prDefaults(), p.DefaultSettings())
}

func TestProcessRegisterWorkCreatesTheState(t *testing.T) {
	tests := []struct {
		name    string
		freq    time.Duration
		minimum time.Duration // -1: the default
		want    time.Duration
	}{
		{"frequency raised to the minimum", time.Minute, -1, 15 * time.Minute},
		{"frequency above the minimum", time.Hour, -1, time.Hour},
		{"frequency under a lowered minimum", time.Minute, time.Minute, time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := background.NewMemoryStore()
				p := newTestProcessPR(store, tt.freq, prDefaults())
				if tt.minimum >= 0 {
					require.NoError(t, p.UpdateFlowControl(time.Minute, tt.minimum, 0))
				}
				_, err := prTryRead(t, store)
				require.ErrorIs(t, err, background.ErrNotFound)

				time.Sleep(time.Hour)
				now := time.Now()
				params := prParams("users")
				w, err := p.RegisterWork("users", params, nil)
				require.NoError(t, err)
				want := &background.Work{Params: prParams("users"), Status: background.Status{State: background.StateNew}}
				require.Equal(t, want, w)

				// Neither the caller's params nor the returned work share
				// maps with the stored state.
				params.Strings["table"] = "changed"
				require.Equal(t, want, w, "the returned work shares the caller's params")
				w.Params.Strings["table"] = "changed too"

				s := prRead(t, store)
				require.Equal(t, prName, s.Name)
				require.Equal(t, tt.want, s.ScheduleFrequency)
				require.Equal(t, prDefaults(), s.Settings)
				require.Equal(t, map[string]*background.Work{"users": want}, s.ActiveWork)
				require.Empty(t, s.CleanupWork)
				require.Empty(t, s.DroppedWork)
				require.Empty(t, s.Instance, "registration claims no run")
				require.Zero(t, s.Claim)
				require.False(t, s.SettingsTime.Before(now), "SettingsTime %v is before the registration at %v", s.SettingsTime, now)
				require.Less(t, s.SettingsTime.Sub(now), time.Millisecond, "SettingsTime %v is not the registration's time %v", s.SettingsTime, now)
			})
		})
	}
}

func TestProcessRegisterWorkWithEqualParamsWritesNothing(t *testing.T) {
	tests := []struct {
		name         string
		first, again background.Params
	}{
		{"same values", prParams("users"), prParams("users")},
		{"nil and empty maps", background.Params{}, background.Params{Ints: map[string]int64{}, Strings: map[string]string{}}},
		{"empty and nil maps", background.Params{Ints: map[string]int64{}}, background.Params{}},
		{"both kinds of values", background.Params{Ints: map[string]int64{"a": 1}, Strings: map[string]string{"b": "c"}},
			background.Params{Ints: map[string]int64{"a": 1}, Strings: map[string]string{"b": "c"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := newPRFakeStore()
				p := newTestProcessPR(store, time.Hour, prDefaults())
				_, err := p.RegisterWork("users", tt.first, nil)
				require.NoError(t, err)
				// A run has completed the item since.
				prEdit(t, store, func(s *background.State) {
					s.ActiveWork["users"].Status = background.Status{State: background.StateCompleted, TotalErrors: 2}
				})
				before := prRead(t, store)
				writes := store.writes.Load()

				time.Sleep(time.Hour)
				w, err := p.RegisterWork("users", tt.again, nil)
				require.NoError(t, err)
				require.Equal(t, background.StateCompleted, w.Status.State, "the item keeps its status")
				require.Equal(t, 2, w.Status.TotalErrors)
				require.Equal(t, writes, store.writes.Load(), "no write for equal params")
				after := prRead(t, store)
				prSameTime(t, before.SettingsTime, after.SettingsTime, "SettingsTime must not move")
				require.Equal(t, before, after)
			})
		})
	}
}

func TestProcessRegisterWorkWithNewParamsResetsTheItem(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		p := newTestProcessPR(store, time.Hour, prDefaults())
		_, err := p.RegisterWork("users", prParams("users"), nil)
		require.NoError(t, err)
		_, err = p.RegisterWork("orders", prParams("orders"), nil)
		require.NoError(t, err)
		done := background.Status{
			State:       background.StateIncomplete,
			Errors:      []background.ErrorRecord{{Time: time.Now(), Text: "boom"}},
			TotalErrors: 1,
			Stats:       map[string]float64{"rows": 3},
		}
		prEdit(t, store, func(s *background.State) {
			s.ActiveWork["users"].Status = done.Clone()
			s.ActiveWork["orders"].Status = done.Clone()
		})
		first := prRead(t, store).SettingsTime

		// No virtual time passes: the change must still move SettingsTime
		// forward.
		newParams := background.Params{Strings: map[string]string{"table": "users_v2"}, Ints: map[string]int64{"shard": 3}}
		w, err := p.RegisterWork("users", newParams, nil)
		require.NoError(t, err)
		want := &background.Work{Params: newParams, Status: background.Status{State: background.StateNew}}
		require.Equal(t, want, w)
		s := prRead(t, store)
		require.Equal(t, want, s.ActiveWork["users"])
		require.Equal(t, done, s.ActiveWork["orders"].Status, "the other item is untouched")
		second := s.SettingsTime
		require.True(t, second.After(first), "SettingsTime %v is not after %v", second, first)

		// Once time has passed, SettingsTime is the change's time.
		time.Sleep(time.Minute)
		_, err = p.RegisterWork("users", prParams("users_v3"), nil)
		require.NoError(t, err)
		s = prRead(t, store)
		require.True(t, s.SettingsTime.After(second))
		prSameTime(t, time.Now(), s.SettingsTime)
		require.Equal(t, prParams("users_v3"), s.ActiveWork["users"].Params)
	})
}

func TestProcessSettingsTimeIsAfterTheRunStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		p := newTestProcessPR(store, time.Hour, prDefaults())
		_, err := p.RegisterWork("users", prParams("users"), nil)
		require.NoError(t, err)
		time.Sleep(time.Hour)
		// A run starts at this very instant.
		start := time.Now()
		prEdit(t, store, func(s *background.State) {
			s.Instance, s.Claim = "node-1", 1
			s.Status = background.Status{State: background.StateActive, StartTime: start, ProgressTime: start}
		})

		_, err = p.RegisterWork("orders", prParams("orders"), nil)
		require.NoError(t, err)
		s := prRead(t, store)
		require.True(t, s.SettingsTime.After(start),
			"a change at the run's start (SettingsTime %v, StartTime %v) must not look seen by that run", s.SettingsTime, start)
		require.Equal(t, "node-1", s.Instance, "registration leaves the owner alone")
		require.Equal(t, int64(1), s.Claim)
		require.Equal(t, background.StateActive, s.Status.State)
	})
}

func TestProcessRegisterWorkOnASparseState(t *testing.T) {
	// A store that drops empty maps and zero values hands back a state
	// with nil maps and no frequency.
	store := background.NewMemoryStore()
	prEdit(t, store, func(s *background.State) {
		*s = background.State{Name: prName, Settings: background.Params{Ints: map[string]int64{"batch": 7}}}
	})
	p := newTestProcessPR(store, time.Hour, prDefaults())
	_, err := p.RegisterWork("users", prParams("users"), nil)
	require.NoError(t, err)
	require.NoError(t, p.UnregisterWork("orders", nil))

	s := prRead(t, store)
	require.Equal(t, prParams("users"), s.ActiveWork["users"].Params)
	require.Contains(t, s.CleanupWork, "orders")
	require.Equal(t, time.Hour, s.ScheduleFrequency, "a missing frequency is the process's")
	require.Equal(t, background.Params{Ints: map[string]int64{"batch": 7}}, s.Settings, "stored settings are kept, not the defaults")
}

func TestProcessRegisterWorkTakesTheItemOutOfCleanupAndDropped(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, p *background.Process, store background.Store)
	}{
		{"in cleanup", func(t *testing.T, _ *background.Process, store background.Store) {
			prEdit(t, store, func(s *background.State) {
				s.CleanupWork = map[string]time.Time{"users": time.Now(), "other": time.Now()}
			})
		}},
		{"dropped", func(t *testing.T, _ *background.Process, store background.Store) {
			prEdit(t, store, func(s *background.State) {
				s.DroppedWork = map[string]time.Time{"users": time.Now(), "other": time.Now()}
			})
		}},
		{"unregistered, then registered with the same params", func(t *testing.T, p *background.Process, _ background.Store) {
			_, err := p.RegisterWork("users", prParams("users"), nil)
			require.NoError(t, err)
			require.NoError(t, p.UnregisterWork("users", nil))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := background.NewMemoryStore()
				p := newTestProcessPR(store, time.Hour, prDefaults())
				tt.setup(t, p, store)
				before := prRead(t, store)
				_, wasCleanup := before.CleanupWork["other"]
				_, wasDropped := before.DroppedWork["other"]

				w, err := p.RegisterWork("users", prParams("users"), nil)
				require.NoError(t, err)
				require.Equal(t, background.StateNew, w.Status.State)
				s := prRead(t, store)
				require.Contains(t, s.ActiveWork, "users")
				require.NotContains(t, s.CleanupWork, "users")
				require.NotContains(t, s.DroppedWork, "users")
				require.True(t, s.SettingsTime.After(before.SettingsTime))
				// Other items stay where they were.
				_, isCleanup := s.CleanupWork["other"]
				_, isDropped := s.DroppedWork["other"]
				require.Equal(t, wasCleanup, isCleanup)
				require.Equal(t, wasDropped, isDropped)
			})
		})
	}
}

func TestProcessUnregisterWork(t *testing.T) {
	t.Run("active item goes to cleanup", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := background.NewMemoryStore()
			p := newTestProcessPR(store, time.Hour, prDefaults())
			_, err := p.RegisterWork("users", prParams("users"), nil)
			require.NoError(t, err)
			_, err = p.RegisterWork("orders", prParams("orders"), nil)
			require.NoError(t, err)
			before := prRead(t, store).SettingsTime

			time.Sleep(time.Minute)
			now := time.Now()
			require.NoError(t, p.UnregisterWork("users", nil))
			s := prRead(t, store)
			require.NotContains(t, s.ActiveWork, "users")
			require.Contains(t, s.ActiveWork, "orders")
			require.Contains(t, s.CleanupWork, "users")
			prSameTime(t, now, s.CleanupWork["users"], "the cleanup entry's time")
			require.NotContains(t, s.DroppedWork, "users")
			require.True(t, s.SettingsTime.After(before))
			prSameTime(t, now, s.SettingsTime)
		})
	})

	t.Run("unknown item is queued for cleanup", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := background.NewMemoryStore()
			p := newTestProcessPR(store, time.Hour, prDefaults())
			// On an empty store, the state is created with it.
			require.NoError(t, p.UnregisterWork("ghost", nil))
			s := prRead(t, store)
			require.Empty(t, s.ActiveWork)
			require.Equal(t, map[string]time.Time{"ghost": time.Now()}, s.CleanupWork)
			require.Equal(t, prDefaults(), s.Settings)
			require.Equal(t, time.Hour, s.ScheduleFrequency)

			// On an existing state too, without touching the active items.
			_, err := p.RegisterWork("users", prParams("users"), nil)
			require.NoError(t, err)
			time.Sleep(time.Minute)
			require.NoError(t, p.UnregisterWork("phantom", nil))
			s = prRead(t, store)
			require.Contains(t, s.ActiveWork, "users")
			require.Contains(t, s.CleanupWork, "ghost")
			prSameTime(t, time.Now(), s.CleanupWork["phantom"])
		})
	})

	for _, where := range []string{"cleanup", "dropped"} {
		t.Run("item already "+where+" is left alone", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := newPRFakeStore()
				p := newTestProcessPR(store, time.Hour, prDefaults())
				queued := time.Now()
				prEdit(t, store, func(s *background.State) {
					s.ScheduleFrequency = time.Hour
					s.SettingsTime = queued
					if where == "cleanup" {
						s.CleanupWork = map[string]time.Time{"users": queued}
					} else {
						s.DroppedWork = map[string]time.Time{"users": queued}
					}
				})
				before := prRead(t, store)
				writes := store.writes.Load()

				time.Sleep(time.Hour)
				require.NoError(t, p.UnregisterWork("users", nil))
				require.Equal(t, writes, store.writes.Load(), "no write")
				after := prRead(t, store)
				require.Equal(t, before, after)
				prSameTime(t, queued, after.SettingsTime)
				prRequireLockFree(t, store)
			})
		})
	}
}

func TestProcessUpdateSettings(t *testing.T) {
	tests := []struct {
		name     string
		minimum  time.Duration // -1: the default
		freq     time.Duration // given to UpdateSettings; the process starts at 1h
		stored   time.Duration // the stored frequency afterwards
		schedule time.Duration // ScheduleFrequency afterwards
	}{
		{"no frequency keeps it", -1, 0, time.Hour, time.Hour},
		{"negative frequency keeps it", -1, -time.Minute, time.Hour, time.Hour},
		{"higher frequency", -1, 2 * time.Hour, 2 * time.Hour, 2 * time.Hour},
		{"lower frequency raised to the minimum", -1, 5 * time.Minute, 15 * time.Minute, 15 * time.Minute},
		{"lower frequency under a lowered minimum", time.Minute, 5 * time.Minute, 5 * time.Minute, 5 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := background.NewMemoryStore()
				p := newTestProcessPR(store, time.Hour, prDefaults())
				if tt.minimum >= 0 {
					require.NoError(t, p.UpdateFlowControl(time.Minute, tt.minimum, 0))
				}
				_, err := p.RegisterWork("users", prParams("users"), nil)
				require.NoError(t, err)
				before := prRead(t, store)

				time.Sleep(time.Minute)
				settings := background.Params{Ints: map[string]int64{"parallel": 4}}
				require.NoError(t, p.UpdateSettings(tt.freq, settings, nil))
				settings.Ints["parallel"] = 99 // the stored settings are a copy

				s := prRead(t, store)
				require.Equal(t, background.Params{Ints: map[string]int64{"parallel": 4}}, s.Settings, "replaced, not merged")
				require.Equal(t, tt.stored, s.ScheduleFrequency)
				require.Equal(t, tt.schedule, p.ScheduleFrequency())
				require.Equal(t, before.ActiveWork, s.ActiveWork, "items are untouched")
				require.True(t, s.SettingsTime.After(before.SettingsTime))
				prSameTime(t, time.Now(), s.SettingsTime)
			})
		})
	}

	t.Run("frequency kept as given below the minimum", func(t *testing.T) {
		p := newTestProcessPR(background.NewMemoryStore(), time.Hour, prDefaults())
		require.NoError(t, p.UpdateSettings(5*time.Minute, background.Params{}, nil))
		require.Equal(t, 15*time.Minute, p.ScheduleFrequency())
		// Lowering the minimum later lets the asked-for frequency through.
		require.NoError(t, p.UpdateFlowControl(time.Minute, time.Minute, 0))
		require.Equal(t, 5*time.Minute, p.ScheduleFrequency())
	})

	t.Run("same instant still moves SettingsTime", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			store := background.NewMemoryStore()
			p := newTestProcessPR(store, time.Hour, prDefaults())
			require.NoError(t, p.UpdateSettings(0, background.Params{Ints: map[string]int64{"a": 1}}, nil))
			first := prRead(t, store).SettingsTime
			require.NoError(t, p.UpdateSettings(0, background.Params{Ints: map[string]int64{"a": 1}}, nil))
			second := prRead(t, store).SettingsTime
			require.True(t, second.After(first), "SettingsTime %v is not after %v", second, first)
		})
	})
}

// prOp is a registration method called on a process with a transaction
// (nil: its own), with what the stored state looks like before and after.
type prOp struct {
	name string
	// setup prepares the store (it may leave it empty).
	setup func(t *testing.T, p *background.Process)
	call  func(p *background.Process, tx background.Tx) error
	// changed tells whether s shows the call's change.
	changed func(s *background.State) bool
}

func prOps() []prOp {
	registerUsers := func(t *testing.T, p *background.Process) {
		_, err := p.RegisterWork("users", prParams("users"), nil)
		require.NoError(t, err)
	}
	return []prOp{
		{
			name:  "RegisterWork on an empty store",
			setup: func(*testing.T, *background.Process) {},
			call: func(p *background.Process, tx background.Tx) error {
				_, err := p.RegisterWork("users", prParams("users"), tx)
				return err
			},
			changed: func(s *background.State) bool { _, ok := s.ActiveWork["users"]; return ok },
		},
		{
			name:  "RegisterWork with new params",
			setup: registerUsers,
			call: func(p *background.Process, tx background.Tx) error {
				_, err := p.RegisterWork("users", prParams("users_v2"), tx)
				return err
			},
			changed: func(s *background.State) bool {
				return s.ActiveWork["users"].Params.Equal(prParams("users_v2"))
			},
		},
		{
			name:  "UnregisterWork",
			setup: registerUsers,
			call:  func(p *background.Process, tx background.Tx) error { return p.UnregisterWork("users", tx) },
			changed: func(s *background.State) bool {
				_, active := s.ActiveWork["users"]
				_, cleanup := s.CleanupWork["users"]
				return !active && cleanup
			},
		},
		{
			name:  "UpdateSettings",
			setup: registerUsers,
			call: func(p *background.Process, tx background.Tx) error {
				return p.UpdateSettings(2*time.Hour, background.Params{Strings: map[string]string{"mode": "delta"}}, tx)
			},
			changed: func(s *background.State) bool {
				return s.ScheduleFrequency == 2*time.Hour && s.Settings.Strings["mode"] == "delta"
			},
		},
	}
}

// TestProcessRegistrationTransactions runs in bubbles so that a method
// that waited for the caller's own lock would fail at once (deadlock or
// ErrLocked after the virtual retry bound) rather than after real time.
func TestProcessRegistrationTransactions(t *testing.T) {
	for _, op := range prOps() {
		t.Run(op.name+"/own", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := background.NewMemoryStore()
				p := newTestProcessPR(store, time.Hour, prDefaults())
				op.setup(t, p)
				require.NoError(t, op.call(p, nil))
				prRequireLockFree(t, store)
				require.True(t, op.changed(prRead(t, store)), "committed")
			})
		})

		for _, commit := range []bool{true, false} {
			end := "rollback"
			if commit {
				end = "commit"
			}
			t.Run(op.name+"/caller's tx, "+end, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					ctx := context.Background()
					store := background.NewMemoryStore()
					p := newTestProcessPR(store, time.Hour, prDefaults())
					op.setup(t, p)
					before, beforeErr := prTryRead(t, store)

					tx, err := store.Lock(ctx, p.Name())
					require.NoError(t, err)
					require.NoError(t, op.call(p, tx))

					// The method neither committed nor rolled back: the caller
					// still holds the lock and the transaction is usable.
					_, err = store.Lock(ctx, p.Name())
					require.ErrorIs(t, err, background.ErrLocked, "the caller's transaction was ended")
					inTx, err := tx.Read(ctx)
					require.NoError(t, err)
					require.True(t, op.changed(inTx), "the change is written in the caller's transaction")

					if commit {
						require.NoError(t, tx.Commit())
						require.True(t, op.changed(prRead(t, store)), "the change is stored at the caller's commit")
						return
					}
					require.NoError(t, tx.Rollback())
					after, err := prTryRead(t, store)
					if beforeErr != nil {
						require.ErrorIs(t, err, background.ErrNotFound, "the rolled-back change was stored")
						return
					}
					require.NoError(t, err)
					require.Equal(t, before, after, "the rolled-back change was stored")
				})
			})
		}
	}
}

func TestProcessNoChangeLeavesTheCallersTxOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		store := background.NewMemoryStore()
		p := newTestProcessPR(store, time.Hour, prDefaults())
		_, err := p.RegisterWork("users", prParams("users"), nil)
		require.NoError(t, err)
		require.NoError(t, p.UnregisterWork("old", nil))

		tx, err := store.Lock(ctx, prName)
		require.NoError(t, err)
		_, err = p.RegisterWork("users", prParams("users"), tx) // equal params
		require.NoError(t, err)
		require.NoError(t, p.UnregisterWork("old", tx)) // already in cleanup
		_, err = tx.Read(ctx)
		require.NoError(t, err, "the transaction must still be open")
		require.NoError(t, tx.Commit())
	})
}

func TestProcessRegistrationRetriesALockedStore(t *testing.T) {
	for _, op := range prOps() {
		t.Run(op.name+"/released after 5s", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := background.NewMemoryStore()
				p := newTestProcessPR(store, time.Hour, prDefaults())
				op.setup(t, p)
				released := prHoldLock(t, p, store, 5*time.Second)

				start := time.Now()
				require.NoError(t, op.call(p, nil))
				elapsed := time.Since(start)
				<-released
				require.GreaterOrEqual(t, elapsed, 5*time.Second, "it went ahead of the holder")
				require.Less(t, elapsed, 10*time.Second, "it kept waiting after the release")

				s := prRead(t, store)
				require.True(t, op.changed(s))
				require.Contains(t, s.ActiveWork, "held", "the holder's write was lost")
			})
		})

		t.Run(op.name+"/held past the retry bound", func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := background.NewMemoryStore()
				p := newTestProcessPR(store, time.Hour, prDefaults())
				op.setup(t, p)
				freq := p.ScheduleFrequency()
				released := prHoldLock(t, p, store, 2*time.Minute)

				start := time.Now()
				err := op.call(p, nil)
				elapsed := time.Since(start)
				require.ErrorIs(t, err, background.ErrLocked)
				require.Contains(t, err.Error(), `"`+prName+`"`)
				require.GreaterOrEqual(t, elapsed, 25*time.Second, "it gave up too early")
				require.LessOrEqual(t, elapsed, 35*time.Second, "it retried past the bound")
				<-released

				s := prRead(t, store)
				require.False(t, op.changed(s), "the failed call's change was stored")
				require.Contains(t, s.ActiveWork, "held")
				require.Equal(t, freq, p.ScheduleFrequency(), "the failed call changed the process")
			})
		})
	}
}

// prHoldLock takes the state's lock, registers the item "held" in that
// transaction, and commits it after hold in a goroutine; the returned
// channel is closed after the commit.
func prHoldLock(t *testing.T, p *background.Process, store background.Store, hold time.Duration) <-chan struct{} {
	t.Helper()
	holder, err := store.Lock(context.Background(), prName)
	require.NoError(t, err)
	_, err = p.RegisterWork("held", prParams("held"), holder)
	require.NoError(t, err)
	released := make(chan struct{})
	go func() {
		defer close(released)
		time.Sleep(hold)
		if err := holder.Commit(); err != nil {
			panic(err)
		}
	}()
	return released
}

func TestProcessConcurrentRegistrationsAllLand(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := background.NewMemoryStore()
		// Several instances of the process, all on one store.
		procs := make([]*background.Process, 3)
		for i := range procs {
			procs[i] = newTestProcessPR(store, time.Hour, prDefaults())
		}
		const items = 8
		errs := make(chan error, 2*items)
		var wg sync.WaitGroup
		for i := range items {
			p := procs[i%len(procs)]
			name := fmt.Sprintf("item-%02d", i)
			wg.Go(func() {
				_, err := p.RegisterWork(name, prParams(name), nil)
				errs <- err
			})
			wg.Go(func() { errs <- p.UnregisterWork("gone-"+name, nil) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		s := prRead(t, store)
		require.Len(t, s.ActiveWork, items)
		require.Len(t, s.CleanupWork, items)
		for i := range items {
			name := fmt.Sprintf("item-%02d", i)
			require.Equal(t, prParams(name), s.ActiveWork[name].Params)
			require.Contains(t, s.CleanupWork, "gone-"+name)
		}
	})
}

func TestProcessRegistrationErrorsNameTheProcess(t *testing.T) {
	errDisk := errors.New("disk on fire")
	stages := []struct {
		name   string
		inject func(s *prFakeStore)
	}{
		{"lock", func(s *prFakeStore) { s.lockErr = errDisk }},
		{"read", func(s *prFakeStore) { s.readErr = errDisk }},
		{"write", func(s *prFakeStore) { s.writeErr = errDisk }},
		{"commit", func(s *prFakeStore) { s.commitErr = errDisk }},
	}
	methods := map[string]string{
		"RegisterWork on an empty store": "RegisterWork",
		"RegisterWork with new params":   "RegisterWork",
		"UnregisterWork":                 "UnregisterWork",
		"UpdateSettings":                 "UpdateSettings",
	}
	for _, op := range prOps() {
		for _, stage := range stages {
			t.Run(op.name+"/"+stage.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					store := newPRFakeStore()
					p := newTestProcessPR(store, time.Hour, prDefaults())
					op.setup(t, p)
					before, beforeErr := prTryRead(t, store)
					freq := p.ScheduleFrequency()
					locks := store.locks.Load()
					stage.inject(store)

					start := time.Now()
					err := op.call(p, nil)
					require.ErrorIs(t, err, errDisk)
					require.Contains(t, err.Error(), `process "`+prName+`"`)
					require.Contains(t, err.Error(), methods[op.name])
					require.Zero(t, time.Since(start), "an error other than ErrLocked must not be retried")
					require.Equal(t, locks+1, store.locks.Load(), "one Lock, no retries")
					require.Equal(t, freq, p.ScheduleFrequency(), "the failed call changed the process")

					store.lockErr, store.readErr, store.writeErr, store.commitErr = nil, nil, nil, nil
					prRequireLockFree(t, store) // the method's own transaction was rolled back
					after, err := prTryRead(t, store)
					if beforeErr != nil {
						require.ErrorIs(t, err, background.ErrNotFound)
						return
					}
					require.NoError(t, err)
					require.Equal(t, before, after, "the failed call's change was stored")
				})
			})
		}
	}
}

func TestProcessRegistrationWithACallersTxReportsItsErrors(t *testing.T) {
	errDisk := errors.New("disk on fire")
	for _, op := range prOps() {
		t.Run(op.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := newPRFakeStore()
				p := newTestProcessPR(store, time.Hour, prDefaults())
				op.setup(t, p)
				tx, err := store.Lock(context.Background(), prName)
				require.NoError(t, err)
				store.writeErr = errDisk
				rollbacks := store.rollbacks.Load()
				err = op.call(p, tx)
				require.ErrorIs(t, err, errDisk)
				require.Contains(t, err.Error(), `process "`+prName+`"`)
				require.Equal(t, rollbacks, store.rollbacks.Load(), "the caller's transaction is the caller's to end")
				require.NoError(t, tx.Rollback())
			})
		})
	}
}

func TestProcessEmptyWorkName(t *testing.T) {
	t.Run("RegisterWork", func(t *testing.T) {
		store := background.NewMemoryStore()
		p := newTestProcessPR(store, time.Hour, prDefaults())
		w, err := p.RegisterWork("", prParams("users"), nil)
		require.Error(t, err)
		require.Nil(t, w)
		require.Contains(t, err.Error(), `"`+prName+`"`)
		_, err = prTryRead(t, store)
		require.ErrorIs(t, err, background.ErrNotFound, "nothing was written")
	})
	t.Run("UnregisterWork", func(t *testing.T) {
		// An item named "" can never be registered, so queuing it for
		// cleanup would hand the worker a name it never saw.
		store := background.NewMemoryStore()
		p := newTestProcessPR(store, time.Hour, prDefaults())
		err := p.UnregisterWork("", nil)
		require.Error(t, err)
		require.Contains(t, err.Error(), `"`+prName+`"`)
		_, err = prTryRead(t, store)
		require.ErrorIs(t, err, background.ErrNotFound, "nothing was written")
	})
}
