package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// These tests check reconciliation: the running processes follow the rows
// of the table, at once for a Watcher, at the next scan otherwise.

func TestSupervisorStartsAndStopsWatchedRowsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, *fakeProc]()
		events := &recorder{}
		sup := supervisor.NewSupervisor(table, quietOptions("rec", events))
		run := startRun(t, sup)
		start := time.Now()

		proc := &fakeProc{}
		table.Put("a", proc)
		synctest.Wait()
		require.Equal(t, start, time.Now(), "no virtual time passed")
		require.Equal(t, kindsRunning, events.kinds("a"))
		runs, active := proc.counts()
		require.Equal(t, 1, runs)
		require.Equal(t, 1, active)
		got, err := sup.Get(t.Context(), "a")
		require.NoError(t, err)
		require.Same(t, proc, got)

		require.True(t, table.Delete("a"))
		synctest.Wait()
		require.Equal(t, start, time.Now(), "no virtual time passed")
		require.Equal(t, kindsStopped, events.kinds("a"))
		runs, active = proc.counts()
		require.Equal(t, 1, runs)
		require.Zero(t, active)
		_, err = sup.Get(t.Context(), "a")
		require.ErrorIs(t, err, supervisor.ErrProcessNotFound)

		require.NoError(t, run.stop())
	})
}

// reconcileRequireScanned puts a row into rows and deletes it, checking
// that the supervisor starts and stops its process exactly at the next
// scan, interval after the previous one (the bubble's clock stands on a
// scan when it is called).
func reconcileRequireScanned(t *testing.T, rows *supervisor.MapTable[string, *fakeProc], events *recorder, interval time.Duration) {
	t.Helper()
	proc := &fakeProc{}
	rows.Put("a", proc)
	time.Sleep(interval - time.Millisecond)
	synctest.Wait()
	require.Empty(t, events.kinds("a"), "started before the scan")
	time.Sleep(time.Millisecond)
	synctest.Wait()
	require.Equal(t, kindsRunning, events.kinds("a"), "started by the scan")

	require.True(t, rows.Delete("a"))
	time.Sleep(interval - time.Millisecond)
	synctest.Wait()
	require.Equal(t, kindsRunning, events.kinds("a"), "stopped before the scan")
	_, active := proc.counts()
	require.Equal(t, 1, active)
	time.Sleep(time.Millisecond)
	synctest.Wait()
	require.Equal(t, kindsStopped, events.kinds("a"), "stopped by the scan")
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
				rows := supervisor.NewMapTable[string, *fakeProc]()
				events := &recorder{}
				opts := quietOptions("rec", events)
				opts.ScanInterval = tc.scanInterval
				sup := supervisor.NewSupervisor[string, *fakeProc](scanOnly[string, *fakeProc]{rows}, opts)
				run := startRun(t, sup)

				reconcileRequireScanned(t, rows, events, tc.wantInterval)
				require.NoError(t, run.stop())
			})
		})
	}
}

func TestSupervisorReplacesProcessWhenWatchedRowIsPutAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, *fakeProc]()
		oldProc, newProc := &fakeProc{}, &fakeProc{}
		table.Put("a", oldProc)
		events := &recorder{}
		sup := supervisor.NewSupervisor(table, quietOptions("rec", events))
		run := startRun(t, sup)
		require.Equal(t, kindsRunning, events.kinds("a"))

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
				rows := supervisor.NewMapTable[string, *fakeProc]()
				var table supervisor.Table[string, *fakeProc] = rows
				if !watched {
					table = scanOnly[string, *fakeProc]{rows}
				}
				proc := &fakeProc{life: failAfter(time.Second, errBoom)}
				rows.Put("a", proc)
				events := &recorder{}
				opts := quietOptions("rec", events)
				opts.ScanInterval = time.Hour // no scan sees the delete before the restart is due
				opts.Backoff = constantBackoff(5 * time.Second)
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)

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
				rows := supervisor.NewMapTable[string, *fakeProc]()
				var table supervisor.Table[string, *fakeProc] = rows
				if !tc.watched {
					table = scanOnly[string, *fakeProc]{rows}
				}
				proc := &fakeProc{life: failRuns(time.Second, map[int]error{1: fmt.Errorf("give up: %w", supervisor.ErrAbort)})}
				rows.Put("a", proc)
				events := &recorder{}
				opts := quietOptions("rec", events)
				opts.ScanInterval = time.Minute
				sup := supervisor.NewSupervisor(table, opts)
				run := startRun(t, sup)

				time.Sleep(3 * time.Minute) // scans come and skip the aborted row
				synctest.Wait()
				require.Equal(t, aborted, events.kinds("a"))
				runs, _ := proc.counts()
				require.Equal(t, 1, runs)

				require.True(t, rows.Delete("a"))
				tc.settle()
				rows.Put("a", proc)
				tc.settle()
				require.Equal(t, slices.Concat(aborted, kindsRunning), events.kinds("a"))
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

func TestSupervisorStartsHealthyRowsWhenOneRowIsBroken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		procs := map[string]*fakeProc{"a": {}, "b": {}, "c": {}}
		table := newFaultyTable(procTable(procs, "a", "b", "c"))
		table.set(func(t *faultyTable) { t.broken["b"] = true })
		events := &recorder{}
		opts := quietOptions("rec", events)
		opts.ScanInterval = time.Minute
		sup := supervisor.NewSupervisor[string, *fakeProc](table, opts)
		run := startRun(t, sup)

		require.Equal(t, kindsRunning, events.kinds("a"))
		require.Empty(t, events.kinds("b"))
		require.Equal(t, kindsRunning, events.kinds("c"))
		tableErrors := events.of(supervisor.EventTableError)
		require.Len(t, tableErrors, 1)
		require.ErrorIs(t, tableErrors[0].Err, errBrokenRow)

		time.Sleep(time.Minute) // a scan meets the broken row again
		synctest.Wait()
		require.Len(t, events.of(supervisor.EventTableError), 2)
		require.Equal(t, kindsRunning, events.kinds("a"))
		require.Equal(t, kindsRunning, events.kinds("c"))

		table.set(func(t *faultyTable) { delete(t.broken, "b") })
		time.Sleep(time.Minute) // the next scan reads the mended row
		synctest.Wait()
		require.Len(t, events.of(supervisor.EventTableError), 2)
		require.Equal(t, kindsRunning, events.kinds("b"))
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
		fault   func(t *faultyTable)
		wantErr error
	}{
		{"Iter fails", func(t *faultyTable) { t.iterErr = errIter }, errIter},
		{"walk ends early", func(t *faultyTable) { t.walkErr = errWalk }, errWalk},
		{"running row's read fails", func(t *faultyTable) { t.broken["b"] = true }, errBrokenRow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				procs := map[string]*fakeProc{"a": {}, "b": {}, "c": {}}
				table := newFaultyTable(procTable(procs, "a", "b", "c"))
				events := &recorder{}
				opts := quietOptions("rec", events)
				opts.ScanInterval = time.Minute
				sup := supervisor.NewSupervisor[string, *fakeProc](table, opts)
				run := startRun(t, sup)
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
					require.Equal(t, kindsRunning, events.kinds(k), k)
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
	*supervisor.MapTable[string, *fakeProc]
}

func (reconcileWatchFails) Watch(context.Context) (<-chan string, error) {
	return nil, errReconcileWatch
}

func TestSupervisorFallsBackToScansWhenWatchFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rows := supervisor.NewMapTable[string, *fakeProc]()
		table := reconcileWatchFails{rows}
		var _ supervisor.Watcher[string] = table
		events := &recorder{}
		opts := quietOptions("rec", events)
		opts.ScanInterval = 10 * time.Second
		sup := supervisor.NewSupervisor[string, *fakeProc](table, opts)
		run := startRun(t, sup)

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
		table := supervisor.NewMapTable[string, *fakeProc]()
		oldProc := &fakeProc{life: failAfter(time.Second, errBoom)}
		newProc := &fakeProc{}
		table.Put("a", oldProc)
		events := &recorder{}
		opts := quietOptions("rec", events)
		opts.Backoff = constantBackoff(5 * time.Second)
		sup := supervisor.NewSupervisor(table, opts)
		run := startRun(t, sup)

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

// slowStart becomes ready after delay.
type slowStart time.Duration

func (d slowStart) Run(ctx context.Context, callback supervisor.Callback) error {
	select {
	case <-time.After(time.Duration(d)):
	case <-ctx.Done():
		return ctx.Err()
	}
	return callback(ctx)
}

// A table that moves rows away (a deleted row, or one lost to another
// node) must see its processes stop at once, even while Run still waits
// for a sibling that is slow to start.
func TestSupervisorAppliesWatchedChangesWhileWaitingForSlowStarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		table := supervisor.NewMapTable[string, supervisor.Runnable]()
		fast := &fakeProc{}
		table.Put("fast", fast)
		table.Put("slow", slowStart(10*time.Second))
		sup := supervisor.NewSupervisor(table, quietOptions("rec", nil))
		run := startRun(t, sup)
		start := time.Now()

		require.True(t, table.Delete("fast"))
		added := &fakeProc{}
		table.Put("added", added)
		synctest.Wait()
		require.Equal(t, start, time.Now(), "no virtual time passed")
		runs, active := fast.counts()
		require.Equal(t, 1, runs)
		require.Zero(t, active, "the deleted row stopped while its sibling is still starting")
		_, active = added.counts()
		require.Equal(t, 1, active, "the added row started")
		select {
		case <-run.called:
			t.Fatal("callback called before the slow process is ready")
		default:
		}

		time.Sleep(10 * time.Second)
		synctest.Wait()
		select {
		case <-run.called:
		default:
			t.Fatal("callback not called once the slow process is ready")
		}
		require.NoError(t, run.stop())
	})
}
