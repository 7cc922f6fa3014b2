package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// These tests check reconciliation: the running processes follow the rows
// of the table, at once for a Watcher, at the next scan otherwise.

// reconcileEvents records every Event a supervisor delivers.
type reconcileEvents struct {
	mu     sync.Mutex
	events []supervisor.Event
}

func (r *reconcileEvents) record(e supervisor.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// kinds returns the kinds of the events about process, in order.
func (r *reconcileEvents) kinds(process string) []supervisor.EventKind {
	r.mu.Lock()
	defer r.mu.Unlock()
	var kinds []supervisor.EventKind
	for _, e := range r.events {
		if e.Process == process {
			kinds = append(kinds, e.Kind)
		}
	}
	return kinds
}

// of returns the events of the given kind, in order.
func (r *reconcileEvents) of(kind supervisor.EventKind) []supervisor.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var events []supervisor.Event
	for _, e := range r.events {
		if e.Kind == kind {
			events = append(events, e)
		}
	}
	return events
}

// reconcileProc is a process whose n-th run (from 0) lasts life(n) and then
// returns life's error; a nil life or a negative duration runs until
// stopped.
type reconcileProc struct {
	life func(run int) (time.Duration, error)

	mu     sync.Mutex
	runs   int // calls of Run
	active int // runs that have not returned
}

func (p *reconcileProc) Run(ctx context.Context, callback supervisor.Callback) error {
	p.mu.Lock()
	run := p.runs
	p.runs++
	p.active++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.active--
		p.mu.Unlock()
	}()
	lasts, exitErr := time.Duration(-1), error(nil)
	if p.life != nil {
		lasts, exitErr = p.life(run)
	}
	return supervisor.RunnableFunc(func(ctx context.Context) error {
		if lasts < 0 {
			<-ctx.Done()
			return ctx.Err()
		}
		timer := time.NewTimer(lasts)
		defer timer.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return exitErr
		}
	}).Run(ctx, callback)
}

// counts returns how many times the process was run and how many of those
// runs have not returned yet.
func (p *reconcileProc) counts() (runs, active int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.runs, p.active
}

// reconcileRun is a Run in the background of a synctest bubble.
type reconcileRun struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// reconcileStart runs s until the test stops it (or ends), and lets the
// bubble settle before returning.
func reconcileStart[K comparable, P supervisor.Runnable](t *testing.T, s *supervisor.Supervisor[K, P]) *reconcileRun {
	ctx, cancel := context.WithCancel(context.Background())
	r := &reconcileRun{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = s.Run(ctx, nil)
	}()
	t.Cleanup(func() { _ = r.stop() })
	synctest.Wait()
	return r
}

// stop cancels Run's ctx and returns Run's error.
func (r *reconcileRun) stop() error {
	r.cancel()
	<-r.done
	return r.err
}

func reconcileOptions(events *reconcileEvents) supervisor.Options {
	return supervisor.Options{
		Name:    "rec",
		Logger:  slog.New(slog.DiscardHandler),
		OnEvent: events.record,
	}
}

var errReconcileBoom = errors.New("boom")

var (
	reconcileRunning = []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady}
	reconcileStopped = []supervisor.EventKind{
		supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
	}
)

func TestSupervisorStartsAndStopsWatchedRowsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, *reconcileProc]()
		events := &reconcileEvents{}
		sup := supervisor.NewSupervisor(table, reconcileOptions(events))
		run := reconcileStart(t, sup)
		start := time.Now()

		proc := &reconcileProc{}
		table.Put("a", proc)
		synctest.Wait()
		require.Equal(t, start, time.Now(), "no virtual time passed")
		require.Equal(t, reconcileRunning, events.kinds("a"))
		runs, active := proc.counts()
		require.Equal(t, 1, runs)
		require.Equal(t, 1, active)
		got, err := sup.Get(t.Context(), "a")
		require.NoError(t, err)
		require.Same(t, proc, got)

		require.True(t, table.Delete("a"))
		synctest.Wait()
		require.Equal(t, start, time.Now(), "no virtual time passed")
		require.Equal(t, reconcileStopped, events.kinds("a"))
		runs, active = proc.counts()
		require.Equal(t, 1, runs)
		require.Zero(t, active)
		_, err = sup.Get(t.Context(), "a")
		require.ErrorIs(t, err, supervisor.ErrProcessNotFound)

		require.NoError(t, run.stop())
	})
}

// reconcileScanOnly hides MapTable's Watch: its changes are seen only by
// scans.
type reconcileScanOnly[K comparable, V any] struct {
	rows *supervisor.MapTable[K, V]
}

func (t reconcileScanOnly[K, V]) Get(ctx context.Context, key K) (V, error) {
	return t.rows.Get(ctx, key)
}

func (t reconcileScanOnly[K, V]) Iter(ctx context.Context) (supervisor.Iterator[K, V], error) {
	return t.rows.Iter(ctx)
}

// reconcileRequireScanned puts a row into rows and deletes it, checking
// that the supervisor starts and stops its process exactly at the next
// scan, interval after the previous one (the bubble's clock stands on a
// scan when it is called).
func reconcileRequireScanned(t *testing.T, rows *supervisor.MapTable[string, *reconcileProc], events *reconcileEvents, interval time.Duration) {
	t.Helper()
	proc := &reconcileProc{}
	rows.Put("a", proc)
	time.Sleep(interval - time.Millisecond)
	synctest.Wait()
	require.Empty(t, events.kinds("a"), "started before the scan")
	time.Sleep(time.Millisecond)
	synctest.Wait()
	require.Equal(t, reconcileRunning, events.kinds("a"), "started by the scan")

	require.True(t, rows.Delete("a"))
	time.Sleep(interval - time.Millisecond)
	synctest.Wait()
	require.Equal(t, reconcileRunning, events.kinds("a"), "stopped before the scan")
	_, active := proc.counts()
	require.Equal(t, 1, active)
	time.Sleep(time.Millisecond)
	synctest.Wait()
	require.Equal(t, reconcileStopped, events.kinds("a"), "stopped by the scan")
	runs, active := proc.counts()
	require.Equal(t, 1, runs)
	require.Zero(t, active)
}

func TestSupervisorPicksUpChangesOfUnwatchedTableAtNextScan(t *testing.T) {
	for _, tc := range []struct {
		name         string
		scanInterval time.Duration // Options.ScanInterval
		wantInterval time.Duration
	}{
		{"default interval", 0, 30 * time.Second},
		{"custom interval", 10 * time.Second, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rows := supervisor.NewMapTable[string, *reconcileProc]()
				events := &reconcileEvents{}
				opts := reconcileOptions(events)
				opts.ScanInterval = tc.scanInterval
				sup := supervisor.NewSupervisor[string, *reconcileProc](reconcileScanOnly[string, *reconcileProc]{rows}, opts)
				run := reconcileStart(t, sup)

				reconcileRequireScanned(t, rows, events, tc.wantInterval)
				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorReplacesProcessWhenWatchedRowIsPutAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, *reconcileProc]()
		oldProc, newProc := &reconcileProc{}, &reconcileProc{}
		table.Put("a", oldProc)
		events := &reconcileEvents{}
		sup := supervisor.NewSupervisor(table, reconcileOptions(events))
		run := reconcileStart(t, sup)
		require.Equal(t, reconcileRunning, events.kinds("a"))

		table.Put("a", newProc)
		synctest.Wait()
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady, // old value
			supervisor.EventStopping, supervisor.EventStopped, // old value replaced
			supervisor.EventStarting, supervisor.EventReady, // new value
		}, events.kinds("a"))
		runs, active := oldProc.counts()
		require.Equal(t, 1, runs)
		require.Zero(t, active, "the old value was stopped")
		runs, active = newProc.counts()
		require.Equal(t, 1, runs)
		require.Equal(t, 1, active, "the new value runs")
		got, err := sup.Get(t.Context(), "a")
		require.NoError(t, err)
		require.Same(t, newProc, got)

		require.NoError(t, run.stop())
	})
}

func TestSupervisorNeverRestartsProcessWhoseRowWasDeletedDuringBackoff(t *testing.T) {
	for _, watched := range []bool{true, false} {
		t.Run(map[bool]string{true: "watched table", false: "scanned table"}[watched], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rows := supervisor.NewMapTable[string, *reconcileProc]()
				var table supervisor.Table[string, *reconcileProc] = rows
				if !watched {
					table = reconcileScanOnly[string, *reconcileProc]{rows}
				}
				proc := &reconcileProc{life: func(int) (time.Duration, error) {
					return time.Second, errReconcileBoom
				}}
				rows.Put("a", proc)
				events := &reconcileEvents{}
				opts := reconcileOptions(events)
				opts.ScanInterval = time.Hour // no scan sees the delete before the restart is due
				opts.Backoff = func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Second) }
				sup := supervisor.NewSupervisor(table, opts)
				run := reconcileStart(t, sup)

				time.Sleep(2 * time.Second) // failed at 1s, restart due at 6s
				synctest.Wait()
				require.Equal(t, []supervisor.EventKind{
					supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed, supervisor.EventBackoff,
				}, events.kinds("a"))
				_, err := sup.Get(t.Context(), "a")
				require.ErrorIs(t, err, supervisor.ErrProcessNotRunning, "backing off")

				require.True(t, rows.Delete("a"))
				time.Sleep(10 * time.Second)
				synctest.Wait()
				want := []supervisor.EventKind{
					supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed, supervisor.EventBackoff,
				}
				if watched { // the delete stops it; a scanned table's is found by the read before the restart
					want = append(want, supervisor.EventStopping)
				}
				require.Equal(t, append(want, supervisor.EventStopped), events.kinds("a"))
				runs, active := proc.counts()
				require.Equal(t, 1, runs, "never restarted")
				require.Zero(t, active)
				require.Empty(t, sup.Keys())
				_, err = sup.Get(t.Context(), "a")
				require.ErrorIs(t, err, supervisor.ErrProcessNotFound)

				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorStartsAbortedRowAgainAfterItWasDeletedAndPutBack(t *testing.T) {
	aborted := []supervisor.EventKind{
		supervisor.EventStarting, supervisor.EventReady, supervisor.EventFailed, supervisor.EventAborted,
	}
	for _, tc := range []struct {
		name    string
		watched bool
		// settle lets the supervisor see the row's change.
		settle func()
	}{
		{"watched table", true, synctest.Wait},
		{"scanned table", false, func() { time.Sleep(time.Minute); synctest.Wait() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rows := supervisor.NewMapTable[string, *reconcileProc]()
				var table supervisor.Table[string, *reconcileProc] = rows
				if !tc.watched {
					table = reconcileScanOnly[string, *reconcileProc]{rows}
				}
				proc := &reconcileProc{life: func(run int) (time.Duration, error) {
					if run == 0 {
						return time.Second, fmt.Errorf("give up: %w", supervisor.ErrAbort)
					}
					return -1, nil
				}}
				rows.Put("a", proc)
				events := &reconcileEvents{}
				opts := reconcileOptions(events)
				opts.ScanInterval = time.Minute
				sup := supervisor.NewSupervisor(table, opts)
				run := reconcileStart(t, sup)

				time.Sleep(3 * time.Minute) // scans come and skip the aborted row
				synctest.Wait()
				require.Equal(t, aborted, events.kinds("a"))
				runs, _ := proc.counts()
				require.Equal(t, 1, runs)

				require.True(t, rows.Delete("a"))
				tc.settle()
				rows.Put("a", proc)
				tc.settle()
				require.Equal(t, slices.Concat(aborted, reconcileRunning), events.kinds("a"))
				runs, active := proc.counts()
				require.Equal(t, 2, runs)
				require.Equal(t, 1, active)
				got, err := sup.Get(t.Context(), "a")
				require.NoError(t, err)
				require.Same(t, proc, got)

				require.NoError(t, run.stop())
			})
		})
	}
}

var errReconcileBroken = errors.New("broken row")

// reconcileFaultyTable is an unwatched table whose reads can be made to
// fail: a broken row's Get fails (in the iterator too), Iter can fail, and
// a walk can end early with an error after its first row.
type reconcileFaultyTable struct {
	rows *supervisor.MapTable[string, *reconcileProc]

	mu      sync.Mutex
	broken  map[string]bool
	iterErr error // Iter fails with it
	walkErr error // the walk ends with it after the first row
}

func newReconcileFaultyTable() *reconcileFaultyTable {
	return &reconcileFaultyTable{rows: supervisor.NewMapTable[string, *reconcileProc](), broken: map[string]bool{}}
}

func (t *reconcileFaultyTable) set(f func(t *reconcileFaultyTable)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(t)
}

func (t *reconcileFaultyTable) isBroken(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.broken[key]
}

func (t *reconcileFaultyTable) Get(ctx context.Context, key string) (*reconcileProc, error) {
	if t.isBroken(key) {
		return nil, fmt.Errorf("get %s: %w", key, errReconcileBroken)
	}
	return t.rows.Get(ctx, key)
}

func (t *reconcileFaultyTable) Iter(ctx context.Context) (supervisor.Iterator[string, *reconcileProc], error) {
	t.mu.Lock()
	iterErr, walkErr := t.iterErr, t.walkErr
	t.mu.Unlock()
	if iterErr != nil {
		return nil, iterErr
	}
	it, err := t.rows.Iter(ctx)
	if err != nil {
		return nil, err
	}
	return &reconcileFaultyIterator{Iterator: it, table: t, walkErr: walkErr}, nil
}

type reconcileFaultyIterator struct {
	supervisor.Iterator[string, *reconcileProc]
	table   *reconcileFaultyTable
	walkErr error
	seen    int
	cut     bool
}

func (it *reconcileFaultyIterator) Next() bool {
	if it.walkErr != nil && it.seen == 1 {
		it.cut = true
		return false
	}
	it.seen++
	return it.Iterator.Next()
}

func (it *reconcileFaultyIterator) Get(ctx context.Context) (string, *reconcileProc, error) {
	k, v, err := it.Iterator.Get(ctx)
	if err == nil && it.table.isBroken(k) {
		return k, nil, fmt.Errorf("read %s: %w", k, errReconcileBroken)
	}
	return k, v, err
}

func (it *reconcileFaultyIterator) Err() error {
	if it.cut {
		return it.walkErr
	}
	return it.Iterator.Err()
}

func TestSupervisorStartsHealthyRowsWhenOneRowIsBroken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := newReconcileFaultyTable()
		procs := map[string]*reconcileProc{"a": {}, "b": {}, "c": {}}
		for _, k := range []string{"a", "b", "c"} {
			table.rows.Put(k, procs[k])
		}
		table.set(func(t *reconcileFaultyTable) { t.broken["b"] = true })
		events := &reconcileEvents{}
		opts := reconcileOptions(events)
		opts.ScanInterval = time.Minute
		sup := supervisor.NewSupervisor[string, *reconcileProc](table, opts)
		run := reconcileStart(t, sup)

		require.Equal(t, reconcileRunning, events.kinds("a"))
		require.Empty(t, events.kinds("b"))
		require.Equal(t, reconcileRunning, events.kinds("c"))
		tableErrors := events.of(supervisor.EventTableError)
		require.Len(t, tableErrors, 1)
		require.ErrorIs(t, tableErrors[0].Err, errReconcileBroken)

		time.Sleep(time.Minute) // a scan meets the broken row again
		synctest.Wait()
		require.Len(t, events.of(supervisor.EventTableError), 2)
		require.Equal(t, reconcileRunning, events.kinds("a"))
		require.Equal(t, reconcileRunning, events.kinds("c"))

		table.set(func(t *reconcileFaultyTable) { delete(t.broken, "b") })
		time.Sleep(time.Minute) // the next scan reads the mended row
		synctest.Wait()
		require.Len(t, events.of(supervisor.EventTableError), 2)
		require.Equal(t, reconcileRunning, events.kinds("b"))
		require.Equal(t, []string{"a", "c", "b"}, sup.Keys())
		for k, p := range procs {
			runs, active := p.counts()
			require.Equal(t, 1, runs, k)
			require.Equal(t, 1, active, k)
		}

		require.NoError(t, run.stop())
	})
}

func TestSupervisorKeepsRunningRowsWhenAScanFails(t *testing.T) {
	errIter := errors.New("iter failed")
	errWalk := errors.New("walk cut short")
	for _, tc := range []struct {
		name    string
		fault   func(t *reconcileFaultyTable)
		wantErr error
	}{
		{"Iter fails", func(t *reconcileFaultyTable) { t.iterErr = errIter }, errIter},
		{"walk ends early", func(t *reconcileFaultyTable) { t.walkErr = errWalk }, errWalk},
		{"running row's read fails", func(t *reconcileFaultyTable) { t.broken["b"] = true }, errReconcileBroken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				table := newReconcileFaultyTable()
				procs := map[string]*reconcileProc{"a": {}, "b": {}, "c": {}}
				for _, k := range []string{"a", "b", "c"} {
					table.rows.Put(k, procs[k])
				}
				events := &reconcileEvents{}
				opts := reconcileOptions(events)
				opts.ScanInterval = time.Minute
				sup := supervisor.NewSupervisor[string, *reconcileProc](table, opts)
				run := reconcileStart(t, sup)
				require.Equal(t, []string{"a", "b", "c"}, sup.Keys())

				table.set(tc.fault)
				time.Sleep(3 * time.Minute) // three failed scans
				synctest.Wait()
				tableErrors := events.of(supervisor.EventTableError)
				require.Len(t, tableErrors, 3)
				for _, e := range tableErrors {
					require.ErrorIs(t, e.Err, tc.wantErr)
				}
				for k, p := range procs {
					require.Equal(t, reconcileRunning, events.kinds(k), k)
					runs, active := p.counts()
					require.Equal(t, 1, runs, k)
					require.Equal(t, 1, active, k)
				}
				require.Equal(t, []string{"a", "b", "c"}, sup.Keys())

				require.NoError(t, run.stop())
			})
		})
	}
}

var errReconcileWatch = errors.New("watch refused")

// reconcileWatchFails is a MapTable whose Watch fails.
type reconcileWatchFails struct {
	*supervisor.MapTable[string, *reconcileProc]
}

func (reconcileWatchFails) Watch(context.Context) (<-chan string, error) {
	return nil, errReconcileWatch
}

func TestSupervisorFallsBackToScansWhenWatchFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rows := supervisor.NewMapTable[string, *reconcileProc]()
		table := reconcileWatchFails{rows}
		var _ supervisor.Watcher[string] = table
		events := &reconcileEvents{}
		opts := reconcileOptions(events)
		opts.ScanInterval = 10 * time.Second
		sup := supervisor.NewSupervisor[string, *reconcileProc](table, opts)
		run := reconcileStart(t, sup)

		tableErrors := events.of(supervisor.EventTableError)
		require.Len(t, tableErrors, 1)
		require.ErrorIs(t, tableErrors[0].Err, errReconcileWatch)

		reconcileRequireScanned(t, rows, events, 10*time.Second)
		require.Len(t, events.of(supervisor.EventTableError), 1)

		require.NoError(t, run.stop())
	})
}

func TestSupervisorStartsNewValueAtOnceWhenWatchedRowIsPutDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, *reconcileProc]()
		oldProc := &reconcileProc{life: func(int) (time.Duration, error) { return time.Second, errReconcileBoom }}
		newProc := &reconcileProc{}
		table.Put("a", oldProc)
		events := &reconcileEvents{}
		opts := reconcileOptions(events)
		opts.Backoff = func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Second) }
		sup := supervisor.NewSupervisor(table, opts)
		run := reconcileStart(t, sup)

		time.Sleep(2 * time.Second) // failed at 1s, restart due at 6s
		synctest.Wait()
		_, err := sup.Get(t.Context(), "a")
		require.ErrorIs(t, err, supervisor.ErrProcessNotRunning, "backing off")

		putAt := time.Now()
		table.Put("a", newProc)
		synctest.Wait()
		require.Equal(t, putAt, time.Now(), "no virtual time passed")
		ready := events.of(supervisor.EventReady)
		require.Len(t, ready, 2)
		require.Equal(t, putAt, ready[1].Time, "the new value started at once")
		got, err := sup.Get(t.Context(), "a")
		require.NoError(t, err)
		require.Same(t, newProc, got)

		time.Sleep(time.Minute) // the old value's restart was due meanwhile
		synctest.Wait()
		runs, active := oldProc.counts()
		require.Equal(t, 1, runs, "the old value never ran again")
		require.Zero(t, active)
		runs, active = newProc.counts()
		require.Equal(t, 1, runs)
		require.Equal(t, 1, active)

		require.NoError(t, run.stop())
	})
}
