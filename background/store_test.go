package background_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/background"
)

// The tests in this file hold the MemoryStore to the Store and Tx
// contract: one transaction per state name at a time, reads that see only
// committed (or the transaction's own) writes, and deep copies in and out.

// stName is the state name of these tests.
const stName = "reindex"

// stTime is the time stamped into the states of these tests.
var stTime = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// stFullState returns a state with every map and slice filled, so that a
// store sharing any of them with its caller shows up in stMutate.
func stFullState() *background.State {
	return &background.State{
		Name:              stName,
		Instance:          "node-1",
		Claim:             7,
		ScheduleFrequency: time.Hour,
		Settings: background.Params{
			Ints:    map[string]int64{"batch": 500},
			Strings: map[string]string{"mode": "full"},
		},
		SettingsTime: stTime,
		ActiveWork: map[string]*background.Work{
			"users": {
				Params: background.Params{
					Ints:    map[string]int64{"shard": 1},
					Strings: map[string]string{"table": "users"},
				},
				Status: background.Status{
					State:       background.StateIncomplete,
					StartTime:   stTime,
					Errors:      []background.ErrorRecord{{Time: stTime, Text: "boom"}},
					TotalErrors: 1,
					Stats:       map[string]float64{"rows": 10},
				},
			},
			"orders": {
				Params: background.Params{Ints: map[string]int64{"shard": 2}},
				Status: background.Status{State: background.StateNew},
			},
		},
		CleanupWork: map[string]time.Time{"old": stTime},
		DroppedWork: map[string]time.Time{"older": stTime},
		Status: background.Status{
			State:       background.StateActive,
			StartTime:   stTime,
			Errors:      []background.ErrorRecord{{Time: stTime, Text: "run boom"}},
			TotalErrors: 1,
			Stats:       map[string]float64{"runs": 1},
		},
		AggregateStats: map[string]float64{"runs": 3},
	}
}

// stMutate changes every map, slice element and pointed-to value of a
// state from stFullState, in place.
func stMutate(s *background.State) {
	s.Settings.Ints["batch"] = 1
	s.Settings.Strings["mode"] = "partial"
	users := s.ActiveWork["users"]
	users.Params.Ints["shard"] = 99
	users.Params.Strings["table"] = "changed"
	users.Status.State = background.StateAborted
	users.Status.Errors[0].Text = "changed"
	users.Status.Stats["rows"] = -1
	delete(s.ActiveWork, "orders")
	s.ActiveWork["intruder"] = &background.Work{}
	s.CleanupWork["old"] = time.Time{}
	s.CleanupWork["intruder"] = stTime
	s.DroppedWork["older"] = time.Time{}
	s.Status.Errors[0].Text = "changed"
	s.Status.Stats["runs"] = 100
	s.AggregateStats["runs"] = 100
}

// stLock locks the state stName or fails the test.
func stLock(t *testing.T, store background.Store) background.Tx {
	t.Helper()
	tx, err := store.Lock(t.Context(), stName)
	require.NoError(t, err)
	return tx
}

// stCommitted writes s in a transaction of its own and commits it.
func stCommitted(t *testing.T, store background.Store, s *background.State) {
	t.Helper()
	tx := stLock(t, store)
	require.NoError(t, tx.Write(t.Context(), s))
	require.NoError(t, tx.Commit())
}

// stReadCommitted reads the state stName in a transaction of its own.
func stReadCommitted(t *testing.T, store background.Store) (*background.State, error) {
	t.Helper()
	tx := stLock(t, store)
	defer func() { require.NoError(t, tx.Rollback()) }()
	return tx.Read(t.Context())
}

func TestMemoryStoreLockIsExclusiveUntilTheTransactionEnds(t *testing.T) {
	for _, end := range []struct {
		name string
		end  func(background.Tx) error
	}{
		{"commit", background.Tx.Commit},
		{"rollback", background.Tx.Rollback},
	} {
		t.Run(end.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := background.NewMemoryStore()
				tx := stLock(t, store)

				// The second Lock must answer at once, not wait for the
				// holder: no virtual time passes.
				start := time.Now()
				again, err := store.Lock(t.Context(), stName)
				require.ErrorIs(t, err, background.ErrLocked)
				require.Nil(t, again)
				require.Zero(t, time.Since(start))

				// And keeps answering so while the holder holds it.
				_, err = store.Lock(t.Context(), stName)
				require.ErrorIs(t, err, background.ErrLocked)

				require.NoError(t, end.end(tx))
				next, err := store.Lock(t.Context(), stName)
				require.NoError(t, err)
				require.NoError(t, next.Rollback())
			})
		})
	}
}

func TestMemoryStoreNamesLockIndependently(t *testing.T) {
	store := background.NewMemoryStore()
	a, err := store.Lock(t.Context(), "a")
	require.NoError(t, err)
	b, err := store.Lock(t.Context(), "b")
	require.NoError(t, err, "a lock on another name must not block")

	// Each name's state is its own.
	sa := stFullState()
	sa.Claim = 1
	require.NoError(t, a.Write(t.Context(), sa))
	require.NoError(t, a.Commit())
	_, err = b.Read(t.Context())
	require.ErrorIs(t, err, background.ErrNotFound)

	// b is still held after a was released.
	_, err = store.Lock(t.Context(), "b")
	require.ErrorIs(t, err, background.ErrLocked)
	require.NoError(t, b.Rollback())

	got, err := store.Lock(t.Context(), "a")
	require.NoError(t, err)
	s, err := got.Read(t.Context())
	require.NoError(t, err)
	require.Equal(t, int64(1), s.Claim)
	require.NoError(t, got.Rollback())
}

func TestMemoryStoreReadNotFound(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, store background.Store)
	}{
		{"before any transaction", func(*testing.T, background.Store) {}},
		{"after a commit without a write", func(t *testing.T, store background.Store) {
			require.NoError(t, stLock(t, store).Commit())
		}},
		{"after a rolled-back write", func(t *testing.T, store background.Store) {
			tx := stLock(t, store)
			require.NoError(t, tx.Write(t.Context(), stFullState()))
			require.NoError(t, tx.Rollback())
		}},
		{"after a write to another name", func(t *testing.T, store background.Store) {
			tx, err := store.Lock(t.Context(), "other")
			require.NoError(t, err)
			require.NoError(t, tx.Write(t.Context(), stFullState()))
			require.NoError(t, tx.Commit())
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := background.NewMemoryStore()
			tt.setup(t, store)
			s, err := stReadCommitted(t, store)
			require.ErrorIs(t, err, background.ErrNotFound)
			require.Nil(t, s)
		})
	}
}

func TestMemoryStoreWriteIsSeenInItsTransactionAndStoredAtCommit(t *testing.T) {
	store := background.NewMemoryStore()
	tx := stLock(t, store)
	_, err := tx.Read(t.Context())
	require.ErrorIs(t, err, background.ErrNotFound)

	require.NoError(t, tx.Write(t.Context(), stFullState()))
	got, err := tx.Read(t.Context())
	require.NoError(t, err, "a transaction sees its own write")
	require.Equal(t, stFullState(), got)

	// A second write replaces the first.
	second := stFullState()
	second.Claim = 8
	require.NoError(t, tx.Write(t.Context(), second))
	got, err = tx.Read(t.Context())
	require.NoError(t, err)
	require.Equal(t, int64(8), got.Claim)
	require.NoError(t, tx.Commit())

	got, err = stReadCommitted(t, store)
	require.NoError(t, err)
	require.Equal(t, second, got)
}

func TestMemoryStoreRollbackDiscardsTheWrite(t *testing.T) {
	store := background.NewMemoryStore()
	stCommitted(t, store, stFullState())

	tx := stLock(t, store)
	changed := stFullState()
	changed.Claim = 99
	delete(changed.ActiveWork, "users")
	require.NoError(t, tx.Write(t.Context(), changed))
	require.NoError(t, tx.Rollback())

	got, err := stReadCommitted(t, store)
	require.NoError(t, err)
	require.Equal(t, stFullState(), got)
}

func TestMemoryStoreWriteNilState(t *testing.T) {
	store := background.NewMemoryStore()
	tx := stLock(t, store)
	require.Error(t, tx.Write(t.Context(), nil))
	require.NoError(t, tx.Commit())
	_, err := stReadCommitted(t, store)
	require.ErrorIs(t, err, background.ErrNotFound)
}

func TestMemoryStoreCopiesStatesInAndOut(t *testing.T) {
	tests := []struct {
		name string
		// run writes or reads states and mutates one the store handed out
		// or was handed; the committed state must still be stFullState.
		run func(t *testing.T, store background.Store)
	}{
		{"state mutated after Write", func(t *testing.T, store background.Store) {
			tx := stLock(t, store)
			s := stFullState()
			require.NoError(t, tx.Write(t.Context(), s))
			stMutate(s)
			got, err := tx.Read(t.Context())
			require.NoError(t, err)
			require.Equal(t, stFullState(), got, "the transaction's own read")
			require.NoError(t, tx.Commit())
		}},
		{"state mutated after Commit", func(t *testing.T, store background.Store) {
			s := stFullState()
			stCommitted(t, store, s)
			stMutate(s)
		}},
		{"state read in the writing transaction mutated", func(t *testing.T, store background.Store) {
			tx := stLock(t, store)
			require.NoError(t, tx.Write(t.Context(), stFullState()))
			got, err := tx.Read(t.Context())
			require.NoError(t, err)
			stMutate(got)
			again, err := tx.Read(t.Context())
			require.NoError(t, err)
			require.Equal(t, stFullState(), again, "the transaction's next read")
			require.NoError(t, tx.Commit())
		}},
		{"state read from the store mutated", func(t *testing.T, store background.Store) {
			stCommitted(t, store, stFullState())
			tx := stLock(t, store)
			got, err := tx.Read(t.Context())
			require.NoError(t, err)
			stMutate(got)
			again, err := tx.Read(t.Context())
			require.NoError(t, err)
			require.Equal(t, stFullState(), again, "the transaction's next read")
			require.NoError(t, tx.Rollback())
		}},
		{"state read from the store mutated, committed without a write", func(t *testing.T, store background.Store) {
			stCommitted(t, store, stFullState())
			tx := stLock(t, store)
			got, err := tx.Read(t.Context())
			require.NoError(t, err)
			stMutate(got)
			require.NoError(t, tx.Commit())
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := background.NewMemoryStore()
			tt.run(t, store)
			got, err := stReadCommitted(t, store)
			require.NoError(t, err)
			require.Equal(t, stFullState(), got, "what another transaction reads")
		})
	}
}

func TestMemoryStoreTxDone(t *testing.T) {
	for _, end := range []struct {
		name string
		end  func(background.Tx) error
	}{
		{"commit", background.Tx.Commit},
		{"rollback", background.Tx.Rollback},
	} {
		t.Run(end.name, func(t *testing.T) {
			store := background.NewMemoryStore()
			stCommitted(t, store, stFullState())
			tx := stLock(t, store)
			require.NoError(t, end.end(tx))

			_, err := tx.Read(t.Context())
			require.ErrorIs(t, err, background.ErrTxDone)
			changed := stFullState()
			changed.Claim = 99
			require.ErrorIs(t, tx.Write(t.Context(), changed), background.ErrTxDone)

			// A later transaction holds the lock now; the done one must
			// neither release it nor store anything.
			next := stLock(t, store)
			require.ErrorIs(t, tx.Commit(), background.ErrTxDone)
			require.ErrorIs(t, tx.Rollback(), background.ErrTxDone)
			_, err = store.Lock(t.Context(), stName)
			require.ErrorIs(t, err, background.ErrLocked, "a done transaction released another's lock")
			got, err := next.Read(t.Context())
			require.NoError(t, err)
			require.Equal(t, stFullState(), got)
			require.NoError(t, next.Rollback())
		})
	}
}

func TestMemoryStoreLockWithADoneContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		canceled, cancel := context.WithCancel(t.Context())
		cancel()
		expired, cancelExpired := context.WithTimeout(t.Context(), time.Second)
		defer cancelExpired()
		time.Sleep(2 * time.Second)

		for _, c := range []struct {
			name string
			ctx  context.Context
			want error
		}{
			{"canceled", canceled, context.Canceled},
			{"deadline exceeded", expired, context.DeadlineExceeded},
		} {
			store := background.NewMemoryStore()
			tx, err := store.Lock(c.ctx, stName)
			require.ErrorIs(t, err, c.want, c.name)
			require.Nil(t, tx, c.name)

			// The failed Lock took nothing.
			tx, err = store.Lock(t.Context(), stName)
			require.NoError(t, err, c.name)
			require.NoError(t, tx.Rollback(), c.name)
		}
	})
}

func TestMemoryStoreConcurrentLockHasOneWinner(t *testing.T) {
	store := background.NewMemoryStore()
	const goroutines = 64
	for round := range 20 {
		start := make(chan struct{})
		txs := make(chan background.Tx, goroutines)
		errs := make(chan error, goroutines)
		var wg sync.WaitGroup
		for range goroutines {
			wg.Go(func() {
				<-start
				tx, err := store.Lock(context.Background(), stName)
				if err != nil {
					errs <- err
					return
				}
				txs <- tx
			})
		}
		close(start)
		wg.Wait()
		close(txs)
		close(errs)

		require.Len(t, txs, 1, "round %d: winners", round)
		require.Len(t, errs, goroutines-1, "round %d: losers", round)
		for err := range errs {
			require.ErrorIs(t, err, background.ErrLocked, "round %d", round)
		}
		require.NoError(t, (<-txs).Commit())
	}
}

func TestMemoryStoreConcurrentTransactionsLoseNoUpdate(t *testing.T) {
	store := background.NewMemoryStore()
	const goroutines, increments = 16, 50
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for range goroutines {
		wg.Go(func() {
			for range increments {
				if err := stIncrement(store); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	got, err := stReadCommitted(t, store)
	require.NoError(t, err)
	require.Equal(t, int64(goroutines*increments), got.Claim)
}

// stIncrement adds one to the stored Claim of stName, retrying ErrLocked.
func stIncrement(store background.Store) error {
	ctx := context.Background()
	for {
		tx, err := store.Lock(ctx, stName)
		if errors.Is(err, background.ErrLocked) {
			runtime.Gosched()
			continue
		}
		if err != nil {
			return err
		}
		s, err := tx.Read(ctx)
		if errors.Is(err, background.ErrNotFound) {
			s, err = &background.State{}, nil
		}
		if err != nil {
			_ = tx.Rollback()
			return err
		}
		s.Claim++
		if err := tx.Write(ctx, s); err != nil {
			_ = tx.Rollback()
			return err
		}
		return tx.Commit()
	}
}
