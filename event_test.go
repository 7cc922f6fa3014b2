package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

func TestEventKindString(t *testing.T) {
	requireStrings(t, []stringCase[supervisor.EventKind]{
		{supervisor.EventStarting, "starting"},
		{supervisor.EventReady, "ready"},
		{supervisor.EventFailed, "failed"},
		{supervisor.EventBackoff, "backoff"},
		{supervisor.EventRestarting, "restarting"},
		{supervisor.EventAborted, "aborted"},
		{supervisor.EventStopping, "stopping"},
		{supervisor.EventStopped, "stopped"},
		{supervisor.EventStopTimeout, "stop-timeout"},
		{supervisor.EventTooManyRestarts, "too-many-restarts"},
		{supervisor.EventTableError, "table-error"},
		{supervisor.EventKind(200), "EventKind(200)"},
	})
}

func TestEventStringNamesProcessKindActionDelayAndError(t *testing.T) {
	tests := []struct {
		name        string
		event       supervisor.Event
		contains    []string
		notContains []string
	}{
		{
			name: "failed shows the kernel's action and the error",
			event: supervisor.Event{Kind: supervisor.EventFailed, Supervisor: "workers", Process: "db",
				Err: errors.New("connection refused"), Action: supervisor.Kill},
			contains: []string{"workers/db", "failed", "kill", "connection refused"},
		},
		{
			name:        "backoff shows the delay",
			event:       supervisor.Event{Kind: supervisor.EventBackoff, Supervisor: "workers", Process: "db", Delay: 1500 * time.Millisecond},
			contains:    []string{"workers/db", "backoff", "1.5s"},
			notContains: []string{"continue"},
		},
		{
			name:        "ready shows no action",
			event:       supervisor.Event{Kind: supervisor.EventReady, Supervisor: "workers", Process: "db"},
			contains:    []string{"workers/db", "ready"},
			notContains: []string{"continue", "<nil>"},
		},
		{
			name: "stop timeout shows the error",
			event: supervisor.Event{Kind: supervisor.EventStopTimeout, Supervisor: "workers", Process: "42",
				Err: supervisor.ErrStopTimeout},
			contains: []string{"workers/42", "stop-timeout", supervisor.ErrStopTimeout.Error()},
		},
		{
			name:     "a supervisor-wide event has no process",
			event:    supervisor.Event{Kind: supervisor.EventTableError, Supervisor: "workers", Err: errors.New("disk on fire")},
			contains: []string{"workers", "table-error", "disk on fire"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.event.String()
			for _, want := range tt.contains {
				require.Contains(t, got, want)
			}
			for _, unwanted := range tt.notContains {
				require.NotContains(t, got, unwanted)
			}
		})
	}
}

func TestEventStringMatchesDocumentedExample(t *testing.T) {
	e := supervisor.Event{Kind: supervisor.EventFailed, Supervisor: "workers", Process: "db",
		Err: errors.New("connection refused"), Action: supervisor.Kill}
	require.Equal(t, "workers/db: failed (kill): connection refused", e.String())
}

// eventKey is a key whose fmt.Sprint form ("{3 db}") differs from any field.
type eventKey struct {
	Shard int
	Name  string
}

// eventShop runs a supervisor "shop" of table whose options configure sets
// (nil: the defaults), recording its events into rec.
func eventShop[K comparable, P supervisor.Runnable](t *testing.T, table supervisor.Table[K, P], configure func(*supervisor.Options)) (rec *recorder, s *supervisor.Supervisor[K, P], run *backgroundRun) {
	rec = &recorder{}
	opts := quietOptions("shop", rec)
	if configure != nil {
		configure(&opts)
	}
	s = supervisor.NewSupervisor(table, opts)
	return rec, s, startRun(t, s)
}

// eventRequireStamped checks that every event names the supervisor and the
// process and carries a time, in the order the events happened.
func eventRequireStamped(t *testing.T, events []supervisor.Event, sup, process string) {
	t.Helper()
	var last time.Time
	for i, e := range events {
		require.Equal(t, sup, e.Supervisor, "event %d (%v)", i, e)
		require.Equal(t, process, e.Process, "event %d (%v)", i, e)
		require.False(t, e.Time.IsZero(), "event %d (%v) has no time", i, e)
		require.False(t, e.Time.After(time.Now()), "event %d (%v) is in the future", i, e)
		require.False(t, e.Time.Before(last), "event %d (%v) is older than the one before", i, e)
		last = e.Time
	}
}

func TestEventsOfCleanLifeAreStartingReadyStoppingStopped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		key := eventKey{Shard: 3, Name: "db"}
		tbl := supervisor.NewMapTable[eventKey, supervisor.RunnableFunc]()
		tbl.Put(key, serve)
		rec, _, run := eventShop(t, tbl, nil)
		require.Equal(t, eventKinds{supervisor.EventStarting, supervisor.EventReady}, rec.allKinds())
		time.Sleep(time.Hour) // longer than every default timeout and interval
		synctest.Wait()
		require.Equal(t, eventKinds{supervisor.EventStarting, supervisor.EventReady}, rec.allKinds(),
			"a process that runs quietly has no events")

		require.NoError(t, run.shutdown())
		require.Equal(t, eventKinds{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
		}, rec.allKinds())
		events := rec.all()
		eventRequireStamped(t, events, "shop", fmt.Sprint(key))
		require.NoError(t, events[3].Err, "a clean stop has no error")
	})
}

func TestEventsOfFailureAddFailedAndBackoffBeforeRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errBoom := errors.New("boom")
		var runs atomic.Int32
		tbl := supervisor.NewMapTable[int, supervisor.RunnableFunc]()
		tbl.Put(42, func(ctx context.Context) error {
			if runs.Add(1) == 1 {
				select {
				case <-time.After(5 * time.Second):
					return errBoom
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			<-ctx.Done()
			return ctx.Err()
		})
		rec, _, run := eventShop(t, tbl, func(o *supervisor.Options) {
			o.Backoff = constantBackoff(time.Second)
		})
		time.Sleep(time.Minute)
		require.Equal(t, int32(2), runs.Load())
		require.NoError(t, run.shutdown())

		require.Equal(t, eventKinds{
			supervisor.EventStarting, supervisor.EventReady,
			supervisor.EventFailed, supervisor.EventBackoff,
			supervisor.EventRestarting, supervisor.EventStarting, supervisor.EventReady,
			supervisor.EventStopping, supervisor.EventStopped,
		}, rec.allKinds())
		events := rec.all()
		eventRequireStamped(t, events, "shop", "42")
		failed, backoffEvent, restarting := events[2], events[3], events[4]
		require.ErrorIs(t, failed.Err, errBoom)
		require.Equal(t, supervisor.Kill, failed.Action, "DefaultPolicy kills a failed permanent process")
		require.Equal(t, time.Second, backoffEvent.Delay)
		require.Equal(t, events[0].Time.Add(5*time.Second), failed.Time)
		require.Equal(t, time.Second, restarting.Time.Sub(failed.Time), "restarted after the backoff delay")
	})
}

func TestEventTooManyRestartsEndsTheSequenceWhenIntensityIsExceeded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errBoom := errors.New("boom")
		tbl := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
		tbl.Put("flaky", func(ctx context.Context) error {
			select {
			case <-time.After(5 * time.Second):
				return errBoom
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		rec, _, run := eventShop(t, tbl, func(o *supervisor.Options) {
			o.Backoff = constantBackoff(time.Second)
			o.MaxRestarts = 1
			o.Period = time.Minute
		})
		require.ErrorIs(t, run.wait(), supervisor.ErrTooManyRestarts)
		require.Equal(t, 11*time.Second, run.returnedAt.Sub(rec.all()[0].Time), "gave up at the second failure")

		require.Equal(t, eventKinds{
			supervisor.EventStarting, supervisor.EventReady,
			supervisor.EventFailed, supervisor.EventBackoff,
			supervisor.EventRestarting, supervisor.EventStarting, supervisor.EventReady,
			supervisor.EventFailed, supervisor.EventTooManyRestarts,
		}, rec.allKinds())
		eventRequireStamped(t, rec.all(), "shop", "flaky")
	})
}

// eventBrokenTable is a table whose Iter fails and whose rows are missing.
type eventBrokenTable struct{ err error }

func (b eventBrokenTable) Get(ctx context.Context, key string) (supervisor.RunnableFunc, error) {
	return nil, fmt.Errorf("row %s: %w", key, supervisor.ErrNotFound)
}

func (b eventBrokenTable) Iter(ctx context.Context) (supervisor.Iterator[string, supervisor.RunnableFunc], error) {
	return nil, b.err
}

// eventRowsWithBadRow is a table of one bad row (whose Get fails) followed by
// one good row.
type eventRowsWithBadRow struct {
	err  error
	good supervisor.RunnableFunc
}

func (r eventRowsWithBadRow) Get(ctx context.Context, key string) (supervisor.RunnableFunc, error) {
	if key == "good" {
		return r.good, nil
	}
	return nil, r.err
}

func (r eventRowsWithBadRow) Iter(ctx context.Context) (supervisor.Iterator[string, supervisor.RunnableFunc], error) {
	return &eventBadRowIterator{table: r, pos: -1}, nil
}

type eventBadRowIterator struct {
	table eventRowsWithBadRow
	pos   int
}

func (it *eventBadRowIterator) Next() bool { it.pos++; return it.pos < 2 }

func (it *eventBadRowIterator) Get(ctx context.Context) (string, supervisor.RunnableFunc, error) {
	if it.pos == 0 {
		return "bad", nil, it.table.err
	}
	return "good", it.table.good, nil
}

func (it *eventBadRowIterator) Err() error   { return nil }
func (it *eventBadRowIterator) Close() error { return nil }

func TestEventTableErrorIsSentAtEveryScanWhenIterFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errDisk := errors.New("disk on fire")
		rec, _, run := eventShop(t, eventBrokenTable{err: errDisk}, func(o *supervisor.Options) {
			o.ScanInterval = 10 * time.Second
		})
		require.Equal(t, eventKinds{supervisor.EventTableError}, rec.allKinds(), "the first read")

		time.Sleep(10 * time.Second)
		synctest.Wait()
		require.Equal(t, eventKinds{supervisor.EventTableError, supervisor.EventTableError}, rec.allKinds(),
			"the next scan")
		require.NoError(t, run.shutdown())

		events := rec.all()
		require.Len(t, events, 2, "no event at shutdown: there was no process")
		for _, e := range events {
			require.ErrorIs(t, e.Err, errDisk)
			require.Equal(t, "shop", e.Supervisor)
			require.Empty(t, e.Process, "a table error is supervisor-wide")
			require.False(t, e.Time.IsZero())
		}
		require.Equal(t, 10*time.Second, events[1].Time.Sub(events[0].Time))
	})
}

func TestEventTableErrorForOneRowDoesNotStopTheOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errRow := errors.New("cannot decode row")
		tbl := eventRowsWithBadRow{err: errRow, good: serve}
		rec, s, run := eventShop(t, tbl, nil)
		require.Equal(t, eventKinds{
			supervisor.EventTableError, supervisor.EventStarting, supervisor.EventReady,
		}, rec.allKinds())
		events := rec.all()
		require.ErrorIs(t, events[0].Err, errRow)
		require.Empty(t, events[0].Process)
		eventRequireStamped(t, events[1:], "shop", "good")
		require.Equal(t, []string{"good"}, s.Keys())
		require.NoError(t, run.shutdown())
	})
}

func TestShutdownGivesUpOnProcessIgnoringContextAfterGracefulAndForcedTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		finished := make(chan struct{})
		tbl := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
		tbl.Put("stubborn", func(ctx context.Context) error {
			defer close(finished)
			time.Sleep(25 * time.Second) // ignores ctx
			return nil
		})
		rec, _, run := eventShop(t, tbl, func(o *supervisor.Options) {
			o.StopTimeout = 10 * time.Second
		})
		stopBegan := time.Now()
		require.NoError(t, run.shutdown())
		require.Equal(t, 20*time.Second, run.returnedAt.Sub(stopBegan), "graceful 10s, then forced 10s")

		require.Equal(t, eventKinds{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopTimeout,
		}, rec.allKinds())
		events := rec.all()
		eventRequireStamped(t, events, "shop", "stubborn")
		require.ErrorIs(t, events[3].Err, supervisor.ErrStopTimeout)
		require.Equal(t, stopBegan.Add(20*time.Second), events[3].Time)

		// Let the process finish so that nothing outlives the test.
		time.Sleep(5 * time.Second)
		synctest.Wait()
		select {
		case <-finished:
		default:
			t.Fatal("the process has not finished")
		}
	})
}

func TestShutdownIsImmediateWhenProcessReturnsAtGracefulStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
		tbl.Put("polite", func(ctx context.Context) error { <-ctx.Done(); return nil })
		rec, _, run := eventShop(t, tbl, func(o *supervisor.Options) {
			o.StopTimeout = 10 * time.Second
		})
		stopBegan := time.Now()
		require.NoError(t, run.shutdown())
		require.Zero(t, run.returnedAt.Sub(stopBegan))
		require.Equal(t, eventKinds{
			supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
		}, rec.allKinds())
	})
}

// eventCtxOnlyRunnable ignores the graceful stop (it goes on after its
// callback returned) and returns only when its ctx is cancelled, sending the
// time of that cancellation.
type eventCtxOnlyRunnable struct{ cancelledAt chan<- time.Time }

func (r eventCtxOnlyRunnable) Run(ctx context.Context, callback supervisor.Callback) error {
	_ = callback(ctx)
	<-ctx.Done()
	r.cancelledAt <- time.Now()
	return ctx.Err()
}

func TestShutdownForcesStopByCancellingContextAtStopTimeout(t *testing.T) {
	tests := []struct {
		name        string
		stopTimeout time.Duration
		want        time.Duration
	}{
		{"default 10s", 0, 10 * time.Second},
		{"explicit 3s", 3 * time.Second, 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cancelledAt := make(chan time.Time, 1)
				tbl := supervisor.NewMapTable[string, eventCtxOnlyRunnable]()
				tbl.Put("deaf", eventCtxOnlyRunnable{cancelledAt: cancelledAt})
				rec, _, run := eventShop(t, tbl, func(o *supervisor.Options) {
					o.StopTimeout = tt.stopTimeout
				})
				stopBegan := time.Now()
				require.NoError(t, run.shutdown())

				require.Equal(t, tt.want, (<-cancelledAt).Sub(stopBegan), "ctx cancelled at StopTimeout")
				require.Equal(t, tt.want, run.returnedAt.Sub(stopBegan))
				require.Equal(t, eventKinds{
					supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
				}, rec.allKinds(), "a forced stop that worked is no stop timeout")
				eventRequireStamped(t, rec.all(), "shop", "deaf")
			})
		})
	}
}
