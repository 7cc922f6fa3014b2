package postgres_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/background"
	"github.com/gosupervise/supervisor/postgres"
)

// storeServer is one server for the subtests of a test. Each Prefix it
// hands out is new (random per run, so a server kept between runs never
// shows one run's states to the next), and its tables are dropped when
// the subtest that asked for it ends.
type storeServer struct {
	url   string
	admin *pgxpool.Pool // for the test's own statements; never closed by a subtest
}

func newStoreServer(t *testing.T) *storeServer {
	t.Helper()
	s := &storeServer{url: testURL(t)}
	s.admin = s.pool(t)
	return s
}

// pool returns a new pool of at most 16 connections, closed when t ends.
func (s *storeServer) pool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	config, err := pgxpool.ParseConfig(s.url)
	require.NoError(t, err)
	config.MaxConns = 16
	db, err := pgxpool.NewWithConfig(t.Context(), config)
	require.NoError(t, err)
	t.Cleanup(db.Close)
	return db
}

// prefix returns a new Prefix whose tables are dropped when t ends.
func (s *storeServer) prefix(t *testing.T) string {
	t.Helper()
	prefix := testPrefix()
	t.Cleanup(func() {
		var tables []string
		for _, table := range []string{"tables", "rows", "nodes", "states"} {
			tables = append(tables, pgx.Identifier{prefix + table}.Sanitize())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := s.admin.Exec(ctx, `DROP TABLE IF EXISTS `+strings.Join(tables, ", "))
		require.NoError(t, err)
	})
	return prefix
}

// openStore opens a Store on a pool of its own (as another machine would)
// with the given prefix.
func (s *storeServer) openStore(t *testing.T, prefix string) (*postgres.Store, *pgxpool.Pool) {
	t.Helper()
	db := s.pool(t)
	store, err := postgres.NewStore(t.Context(), db, postgres.Options{Prefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	return store, db
}

// store opens a Store with a new prefix.
func (s *storeServer) store(t *testing.T) *postgres.Store {
	t.Helper()
	store, _ := s.openStore(t, s.prefix(t))
	return store
}

// storeLock locks the state name, and rolls the transaction back when t
// ends if it is still open: a test that fails midway must not leave a
// transaction holding its connection, or closing the pool would wait.
func storeLock(t *testing.T, ctx context.Context, store background.Store, name string) background.Tx {
	t.Helper()
	tx, err := store.Lock(ctx, name)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback() })
	return tx
}

// storeRead reads the state name in a transaction of its own.
func storeRead(t *testing.T, store background.Store, name string) (*background.State, error) {
	t.Helper()
	tx := storeLock(t, t.Context(), store, name)
	defer func() { require.NoError(t, tx.Rollback()) }()
	return tx.Read(t.Context())
}

// storeWrite writes and commits s as the state name.
func storeWrite(t *testing.T, store background.Store, name string, s *background.State) {
	t.Helper()
	tx := storeLock(t, t.Context(), store, name)
	require.NoError(t, tx.Write(t.Context(), s))
	require.NoError(t, tx.Commit())
}

// storeFullState returns a State with every field set, times in UTC
// without a monotonic reading (which JSON does not keep), so that a round
// trip through the store compares deep-equal.
func storeFullState(name string) *background.State {
	at := func(sec int) time.Time { return time.Date(2024, 5, 17, 10, 0, sec, 123456789, time.UTC) }
	status := func(state background.RunState, sec int) background.Status {
		return background.Status{
			State:         state,
			StartTime:     at(sec),
			ProgressTime:  at(sec + 1),
			FinishTime:    at(sec + 2),
			Errors:        []background.ErrorRecord{{Time: at(sec + 1), Text: "disk full: \"/var\"\n"}},
			TotalErrors:   31,
			LastErrorTime: at(sec + 1),
			Stats:         map[string]float64{"rows": 2.5, "tiny": 1e-300},
		}
	}
	return &background.State{
		Name:              name,
		Instance:          "b",
		Claim:             1<<53 + 1, // not a float64: JSON numbers must stay exact
		ScheduleFrequency: 90*time.Minute + time.Nanosecond,
		Settings: background.Params{
			Ints:    map[string]int64{"batch": -5, "max": math.MaxInt64},
			Strings: map[string]string{"mode": "fast ✓", "nul-free": "a\tb"},
		},
		SettingsTime: at(1),
		ActiveWork: map[string]*background.Work{
			"users":  {Params: background.Params{Ints: map[string]int64{"batch": 500}}, Status: status(background.StateCompleted, 10)},
			"orders": {Params: background.Params{Strings: map[string]string{"table": "orders"}}, Status: status(background.StateIncomplete, 20)},
		},
		CleanupWork:    map[string]time.Time{"old": at(2)},
		DroppedWork:    map[string]time.Time{"older": at(3)},
		Status:         status(background.StateActive, 30),
		AggregateStats: map[string]float64{"runs": 3, "duration": 0.1, "huge": 1e300},
	}
}

// storeRequireAllSet fails if a field of v (a struct) is its zero value:
// a field added to State later must be added to the round trip too.
func storeRequireAllSet(t *testing.T, v any) {
	t.Helper()
	rv := reflect.ValueOf(v)
	for i := range rv.NumField() {
		require.False(t, rv.Field(i).IsZero(), "%s.%s is not set", rv.Type().Name(), rv.Type().Field(i).Name)
	}
}

// storeLockedAtOnce asserts that Lock answers ErrLocked, well before a
// second.
func storeLockedAtOnce(t *testing.T, store background.Store, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second) // fail, not hang, if Lock waits
	defer cancel()
	start := time.Now()
	tx, err := store.Lock(ctx, name)
	elapsed := time.Since(start)
	if err == nil {
		_ = tx.Rollback()
	}
	require.ErrorIs(t, err, background.ErrLocked)
	require.Less(t, elapsed, time.Second, "ErrLocked must come at once")
	t.Logf("ErrLocked after %v", elapsed)
}

func TestStore(t *testing.T) {
	srv := newStoreServer(t)

	t.Run("ReadBeforeFirstWriteIsErrNotFound", func(t *testing.T) {
		store := srv.store(t)
		_, err := storeRead(t, store, "never-written")
		require.ErrorIs(t, err, background.ErrNotFound)
		// The row inserted by the first Lock still holds no state.
		_, err = storeRead(t, store, "never-written")
		require.ErrorIs(t, err, background.ErrNotFound)
	})

	t.Run("CommittedStateReadsBackEqual", func(t *testing.T) {
		store := srv.store(t)
		want := storeFullState("report")
		storeRequireAllSet(t, *want)
		storeRequireAllSet(t, want.Status)
		storeWrite(t, store, "report", want)
		got, err := storeRead(t, store, "report")
		require.NoError(t, err)
		require.Equal(t, want, got)

		// A time of the clock (local zone, monotonic reading) comes back
		// as the same instant.
		now := time.Now()
		want.Status.ProgressTime = now
		storeWrite(t, store, "report", want)
		got, err = storeRead(t, store, "report")
		require.NoError(t, err)
		require.True(t, now.Equal(got.Status.ProgressTime), "wrote %v, read %v", now, got.Status.ProgressTime)
	})

	t.Run("WriteNamesTheStateAfterTheLockedName", func(t *testing.T) {
		store := srv.store(t)
		s := storeFullState("some other name")
		storeWrite(t, store, "report", s)
		require.Equal(t, "some other name", s.Name, "the caller's state is left alone")
		got, err := storeRead(t, store, "report")
		require.NoError(t, err)
		require.Equal(t, "report", got.Name)
	})

	t.Run("TxReadsItsOwnWriteAndReadsAreCopies", func(t *testing.T) {
		store := srv.store(t)
		tx := storeLock(t, t.Context(), store, "report")
		require.NoError(t, tx.Write(t.Context(), storeFullState("report")))
		first, err := tx.Read(t.Context())
		require.NoError(t, err)
		require.Equal(t, storeFullState("report"), first)
		first.Settings.Ints["batch"] = 1000
		first.ActiveWork["users"].Status.Stats["rows"] = 7
		second, err := tx.Read(t.Context())
		require.NoError(t, err)
		require.Equal(t, storeFullState("report"), second, "a change to a state read must not reach the next Read")
		require.NoError(t, tx.Commit())
	})

	t.Run("RollbackDiscardsWrite", func(t *testing.T) {
		store := srv.store(t)
		tx := storeLock(t, t.Context(), store, "report")
		require.NoError(t, tx.Write(t.Context(), storeFullState("report")))
		require.NoError(t, tx.Rollback())
		_, err := storeRead(t, store, "report")
		require.ErrorIs(t, err, background.ErrNotFound)

		committed := storeFullState("report")
		storeWrite(t, store, "report", committed)
		tx = storeLock(t, t.Context(), store, "report")
		changed := storeFullState("report")
		changed.Claim++
		require.NoError(t, tx.Write(t.Context(), changed))
		require.NoError(t, tx.Rollback())
		got, err := storeRead(t, store, "report")
		require.NoError(t, err)
		require.Equal(t, committed, got)
	})

	t.Run("SecondLockWhileHeldIsErrLockedAtOnce", func(t *testing.T) {
		prefix := srv.prefix(t)
		store, _ := srv.openStore(t, prefix)
		elsewhere, _ := srv.openStore(t, prefix) // another machine's Store
		tx := storeLock(t, t.Context(), store, "report")
		storeLockedAtOnce(t, store, "report")
		storeLockedAtOnce(t, elsewhere, "report")

		// Other names, and the same name under another prefix, are free.
		other := storeLock(t, t.Context(), store, "other")
		require.NoError(t, other.Rollback())
		unrelated := srv.store(t)
		storeWrite(t, unrelated, "report", storeFullState("report"))

		require.NoError(t, tx.Commit())
	})

	t.Run("LockAfterCommitOrRollbackSucceeds", func(t *testing.T) {
		store := srv.store(t)
		for _, end := range []func(background.Tx) error{background.Tx.Commit, background.Tx.Rollback} {
			tx := storeLock(t, t.Context(), store, "report")
			require.NoError(t, tx.Write(t.Context(), storeFullState("report")))
			require.NoError(t, end(tx))
			start := time.Now()
			tx = storeLock(t, t.Context(), store, "report")
			require.Less(t, time.Since(start), time.Second)
			require.NoError(t, tx.Rollback())
		}
	})

	t.Run("EndedTxIsErrTxDone", func(t *testing.T) {
		store := srv.store(t)
		for _, end := range []func(background.Tx) error{background.Tx.Commit, background.Tx.Rollback} {
			tx := storeLock(t, t.Context(), store, "report")
			require.NoError(t, end(tx))
			_, err := tx.Read(t.Context())
			require.ErrorIs(t, err, background.ErrTxDone)
			require.ErrorIs(t, tx.Write(t.Context(), storeFullState("report")), background.ErrTxDone)
			require.ErrorIs(t, tx.Commit(), background.ErrTxDone)
			require.ErrorIs(t, tx.Rollback(), background.ErrTxDone)
		}
		_, err := storeRead(t, store, "report")
		require.ErrorIs(t, err, background.ErrNotFound, "a write after the end is not stored")
	})

	t.Run("NilStateIsRefused", func(t *testing.T) {
		store := srv.store(t)
		tx := storeLock(t, t.Context(), store, "report")
		err := tx.Write(t.Context(), nil)
		require.Error(t, err)
		require.NotErrorIs(t, err, background.ErrTxDone)
		require.NoError(t, tx.Commit(), "a refused write leaves the transaction usable")
		_, err = storeRead(t, store, "report")
		require.ErrorIs(t, err, background.ErrNotFound)
	})

	t.Run("InvalidNameIsErrInvalidKey", func(t *testing.T) {
		store := srv.store(t)
		for what, name := range map[string]string{
			"empty":    "",
			"too long": strings.Repeat("x", postgres.MaxKeyLen+1),
			"not UTF8": "bad\xff",
			"NUL":      "a\x00b",
		} {
			_, err := store.Lock(t.Context(), name)
			require.ErrorIs(t, err, postgres.ErrInvalidKey, what)
		}
		storeWrite(t, store, strings.Repeat("é", postgres.MaxKeyLen/2), storeFullState(""))
	})

	t.Run("InvalidOptionsAreRefused", func(t *testing.T) {
		db := srv.admin
		_, err := postgres.NewStore(t.Context(), nil, postgres.Options{})
		require.ErrorIs(t, err, postgres.ErrInvalidOptions)
		for _, o := range []postgres.Options{
			{Prefix: "Upper_"},
			{Prefix: "x; DROP TABLE y"},
			{Renew: -time.Second},
			{LeaseTTL: time.Second},
		} {
			_, err := postgres.NewStore(t.Context(), db, o)
			require.ErrorIs(t, err, postgres.ErrInvalidOptions, "%+v", o)
		}
		// NewStore again on an existing schema keeps its states.
		prefix := srv.prefix(t)
		first, _ := srv.openStore(t, prefix)
		storeWrite(t, first, "report", storeFullState("report"))
		second, _ := srv.openStore(t, prefix)
		got, err := storeRead(t, second, "report")
		require.NoError(t, err)
		require.Equal(t, storeFullState("report"), got)
	})

	t.Run("CancelledContext", func(t *testing.T) {
		store := srv.store(t)
		cancelled, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := store.Lock(cancelled, "report")
		require.ErrorIs(t, err, context.Canceled)

		// A call's cancelled ctx fails that call only.
		tx := storeLock(t, t.Context(), store, "report")
		_, err = tx.Read(cancelled)
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorIs(t, tx.Write(cancelled, storeFullState("report")), context.Canceled)
		require.NoError(t, tx.Write(t.Context(), storeFullState("report")))
		require.NoError(t, tx.Commit())

		// Lock's ctx is the transaction's: once it is done, every call
		// fails and Commit rolls back, freeing the lock by the time it
		// returns.
		lockCtx, cancelLock := context.WithCancel(t.Context())
		tx = storeLock(t, lockCtx, store, "report")
		changed := storeFullState("report")
		changed.Claim++
		require.NoError(t, tx.Write(t.Context(), changed))
		cancelLock()
		_, err = tx.Read(t.Context())
		require.ErrorIs(t, err, context.Canceled)
		require.ErrorIs(t, tx.Write(t.Context(), changed), context.Canceled)
		require.ErrorIs(t, tx.Commit(), context.Canceled)
		require.ErrorIs(t, tx.Rollback(), background.ErrTxDone)
		got, err := storeRead(t, store, "report")
		require.NoError(t, err)
		require.Equal(t, storeFullState("report"), got, "the write of a cancelled transaction is not stored")

		// Rollback works after Lock's ctx is done, and frees the lock.
		lockCtx, cancelLock = context.WithCancel(t.Context())
		tx = storeLock(t, lockCtx, store, "report")
		cancelLock()
		require.NoError(t, tx.Rollback())
		_, err = storeRead(t, store, "report")
		require.NoError(t, err)
	})

	t.Run("TxOnDeadConnectionFailsPromptly", func(t *testing.T) {
		prefix := srv.prefix(t)
		store, _ := srv.openStore(t, prefix)
		tx := storeLock(t, t.Context(), store, "report")

		// Find the transaction's server process by the table it locked,
		// and end it.
		var pid int32
		err := srv.admin.QueryRow(t.Context(), `SELECT pid FROM pg_stat_activity
			WHERE state = 'idle in transaction' AND strpos(query, $1) > 0`, prefix+"states").Scan(&pid)
		require.NoError(t, err)
		var terminated bool
		require.NoError(t, srv.admin.QueryRow(t.Context(), `SELECT pg_terminate_backend($1, 5000)`, pid).Scan(&terminated))
		require.True(t, terminated)

		start := time.Now()
		require.Error(t, tx.Write(t.Context(), storeFullState("report")))
		_, err = tx.Read(t.Context())
		require.Error(t, err)
		require.Error(t, tx.Commit())
		require.Less(t, time.Since(start), time.Second)
		require.ErrorIs(t, tx.Rollback(), background.ErrTxDone)

		_, err = storeRead(t, store, "report")
		require.ErrorIs(t, err, background.ErrNotFound, "the lock is free and nothing was stored")
	})

	t.Run("ConcurrentLocksOfNewNameHaveOneWinner", func(t *testing.T) {
		// If the missing row were inserted inside the locking transaction,
		// the other callers' inserts would wait for the winner's commit,
		// which waits for them: they would time out instead of answering
		// ErrLocked.
		const rounds, callers = 10, 10
		store := srv.store(t)
		for round := range rounds {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			name := fmt.Sprintf("new-%d", round)
			txs := make([]background.Tx, callers)
			errs := make([]error, callers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range callers {
				wg.Go(func() {
					<-start
					txs[i], errs[i] = store.Lock(ctx, name)
				})
			}
			close(start)
			wg.Wait() // every loser has answered while the winner holds the lock
			for _, tx := range txs {
				if tx != nil {
					t.Cleanup(func() { _ = tx.Rollback() })
				}
			}
			var winner background.Tx
			for i, err := range errs {
				if err != nil {
					require.ErrorIs(t, err, background.ErrLocked, "round %d, caller %d", round, i)
					continue
				}
				require.Nil(t, winner, "round %d: two callers hold the lock", round)
				winner = txs[i]
			}
			require.NotNil(t, winner, "round %d: nobody got the lock", round)
			require.NoError(t, winner.Write(ctx, storeFullState(name)))
			require.NoError(t, winner.Commit())
		}
	})

	t.Run("ClosedPoolFailsLockPromptly", func(t *testing.T) {
		store, db := srv.openStore(t, srv.prefix(t))
		db.Close()
		start := time.Now()
		_, err := store.Lock(t.Context(), "report")
		require.Error(t, err)
		require.NotErrorIs(t, err, background.ErrLocked)
		require.Less(t, time.Since(start), time.Second)
	})
}

// storeExec is one ProcessActiveWork call of a storeWorker.
type storeExec struct {
	instance, owner string
	claim           int64
	slot            time.Time // the slot of the run's claim
	item            string
}

// storeWorker logs the items it processes, each taking a few
// milliseconds, and waits in real time.
type storeWorker struct {
	mu    sync.Mutex
	execs []storeExec
}

func (w *storeWorker) ProcessActiveWork(ctx context.Context, state *background.State, name string, _ *background.Work, p *background.Process) error {
	w.mu.Lock()
	w.execs = append(w.execs, storeExec{
		instance: p.Instance(),
		owner:    state.Instance,
		claim:    state.Claim,
		slot:     state.Status.StartTime.Truncate(state.ScheduleFrequency),
		item:     name,
	})
	w.mu.Unlock()
	return storeSleep(ctx, 5*time.Millisecond)
}

func (w *storeWorker) CleanupWork(context.Context, *background.State, string, *background.Process) error {
	return nil
}

func (w *storeWorker) Wait(ctx context.Context, d time.Duration) bool {
	return storeSleep(ctx, d) == nil
}

// storeSleep waits d, or until ctx is done.
func storeSleep(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// storeCountingStore counts the Lock calls of one instance.
type storeCountingStore struct {
	background.Store
	locks atomic.Int64
}

func (s *storeCountingStore) Lock(ctx context.Context, name string) (background.Tx, error) {
	s.locks.Add(1)
	return s.Store.Lock(ctx, name)
}

// TestStoreProcessInstancesRunEachSlotOnce runs two instances of one
// process, each on a Store of its own (two machines) over the same tables,
// in real time at a 250ms schedule: both keep trying the slots, and every
// slot's items are processed exactly once, by the one instance that
// claimed it.
func TestStoreProcessInstancesRunEachSlotOnce(t *testing.T) {
	const frequency = 250 * time.Millisecond
	items := []string{"a", "b", "c"}
	srv := newStoreServer(t)
	prefix := srv.prefix(t)
	worker := &storeWorker{}
	var stores []*storeCountingStore
	var procs []*background.Process
	for _, id := range []string{"a", "b"} {
		store, _ := srv.openStore(t, prefix)
		counting := &storeCountingStore{Store: store}
		p := background.NewProcess("shared", worker, counting, frequency, background.Params{},
			background.WithInstance(id), background.WithLogger(slog.New(slog.DiscardHandler)))
		require.NoError(t, p.UpdateFlowControl(0, 0, 0)) // no initial wait, no minimum frequency
		stores, procs = append(stores, counting), append(procs, p)
	}
	for _, item := range items {
		_, err := procs[0].RegisterWork(item, background.Params{}, nil)
		require.NoError(t, err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { p.Run(ctx) })
	}
	time.Sleep(12*frequency + frequency/2)
	cancel()
	wg.Wait()

	worker.mu.Lock()
	execs := worker.execs
	worker.mu.Unlock()
	claimOwner := map[int64]string{}
	slotClaims := map[time.Time]map[int64]bool{}
	done := map[int64]map[string]int{}
	for _, e := range execs {
		require.Equal(t, e.instance, e.owner, "the run's state names its own instance")
		if owner, ok := claimOwner[e.claim]; ok {
			require.Equal(t, owner, e.instance, "claim %d ran on two instances", e.claim)
		}
		claimOwner[e.claim] = e.instance
		if slotClaims[e.slot] == nil {
			slotClaims[e.slot] = map[int64]bool{}
		}
		slotClaims[e.slot][e.claim] = true
		if done[e.claim] == nil {
			done[e.claim] = map[string]int{}
		}
		done[e.claim][e.item]++
	}
	for slot, claims := range slotClaims {
		require.Len(t, claims, 1, "slot %v was claimed more than once: %v", slot, claims)
	}
	var last int64
	for claim := range done {
		last = max(last, claim)
	}
	for claim, processed := range done {
		for item, n := range processed {
			require.Equal(t, 1, n, "claim %d processed %q %d times", claim, item, n)
		}
		if claim != last { // the last run may have been stopped midway
			require.Len(t, processed, len(items), "claim %d did not process every item", claim)
		}
	}
	require.Len(t, done, int(last), "claims 1 to %d each ran", last)
	require.GreaterOrEqual(t, len(slotClaims), 6, "too few slots ran in 12: %d", len(slotClaims))
	for i, s := range stores {
		require.GreaterOrEqual(t, s.locks.Load(), int64(6), "instance %s hardly tried", procs[i].Instance())
	}
	won := map[string]int{}
	for _, owner := range claimOwner {
		won[owner]++
	}
	t.Logf("%d slots run, claims won per instance: %v, Lock calls: a %d, b %d",
		len(slotClaims), won, stores[0].locks.Load(), stores[1].locks.Load())

	final, err := storeRead(t, stores[0], "shared")
	require.NoError(t, err)
	require.GreaterOrEqual(t, final.Claim, last, "the stored claim counts every run")
	require.LessOrEqual(t, final.Claim, last+1, "at most one claim (stopped before its first item) ran nothing")
}
