package bench_test

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gosupervise/supervisor"
)

// Tasks: 100k tasks scheduled at distinct times, in shuffled order, in one
// App — the cost of a Schedule call, the heap each scheduled task holds,
// and whether they fire in the exact order of their times.

const (
	scheduledTasks = 100_000
	scheduleStep   = time.Millisecond // between consecutive deadlines
)

// taskBenchApp returns a started App with one module; stop shuts it down.
func taskBenchApp(tb testing.TB) (m *supervisor.Module, stop func()) {
	tb.Helper()
	app := supervisor.NewApp(supervisor.AppOptions{Logger: discardLogger()})
	m, err := app.Register("jobs", supervisor.ModuleFuncs{})
	if err != nil {
		tb.Fatal(err)
	}
	if err := app.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return m, func() {
		if err := app.Shutdown(context.Background()); err != nil {
			tb.Error(err)
		}
	}
}

// shuffledDeadlines returns n distinct deadlines step apart from base, in
// a fixed pseudo-random order, with each deadline's rank.
func shuffledDeadlines(base time.Time, n int) (at []time.Time, rank []int) {
	rank = rand.New(rand.NewPCG(1, 2)).Perm(n)
	at = make([]time.Time, n)
	for i, r := range rank {
		at[i] = base.Add(time.Duration(r+1) * scheduleStep)
	}
	return at, rank
}

// scheduleCost schedules n new tasks an hour or more ahead and returns the
// time per Schedule call and the live heap per scheduled task (the Task
// and its share of the App's timer heap).
func scheduleCost(tb testing.TB, h hooks, n int) (nsPerSchedule, bytesPerTask float64) {
	m, stop := taskBenchApp(tb)
	defer stop()
	at, _ := shuffledDeadlines(time.Now().Add(time.Hour), n)
	noop := func(context.Context, *supervisor.Task) error { return nil }

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tasks := make([]*supervisor.Task, n)
	for i := range tasks {
		tasks[i] = m.NewTask("scheduled", noop)
	}
	h.start()
	began := time.Now()
	for i, t := range tasks {
		t.Schedule(at[i])
	}
	elapsed := time.Since(began)
	h.stop()
	runtime.GC()
	runtime.ReadMemStats(&after)
	slice := float64(n) * 8 // the benchmark's own []*Task
	bytesPerTask = (float64(after.HeapAlloc) - float64(before.HeapAlloc) - slice) / float64(n)
	runtime.KeepAlive(tasks)
	return float64(elapsed.Nanoseconds()) / float64(n), bytesPerTask
}

// BenchmarkTaskSchedule100k reports ns per Schedule call (target < 1 µs)
// and live heap bytes per scheduled task (target ≤ 300 B); one iteration
// schedules 100k tasks.
func BenchmarkTaskSchedule100k(b *testing.B) {
	var ns, bytes float64
	runs := 0
	for b.Loop() {
		n, by := scheduleCost(b, noHooks(), scheduledTasks)
		ns, bytes, runs = ns+n, bytes+by, runs+1
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ns/float64(runs), "ns/schedule")
	b.ReportMetric(bytes/float64(runs), "B/task")
}

// TestTaskScheduleHeapPerTask checks the memory target, which (unlike
// time) does not depend on the machine's load.
func TestTaskScheduleHeapPerTask(t *testing.T) {
	ns, bytes := scheduleCost(t, noHooks(), scheduledTasks)
	t.Logf("%d scheduled tasks: %.0f ns per Schedule, %.0f B per task", scheduledTasks, ns, bytes)
	if bytes > 300 {
		t.Errorf("%.0f B per scheduled task, want ≤ 300", bytes)
	}
}

// TestScheduled100kTasksFireInExactOrder schedules 100k tasks in shuffled
// order at distinct times (virtual time) and checks that each starts at
// exactly its time, in the order of the times.
func TestScheduled100kTasksFireInExactOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m, stop := taskBenchApp(t)
		defer stop()
		start := time.Now()
		at, rank := shuffledDeadlines(start, scheduledTasks)
		var mu sync.Mutex
		type firing struct {
			rank int
			at   time.Duration
		}
		fired := make([]firing, 0, scheduledTasks)
		for i := range at {
			m.NewTask("scheduled", func(context.Context, *supervisor.Task) error {
				mu.Lock()
				fired = append(fired, firing{rank[i], time.Since(start)})
				mu.Unlock()
				return nil
			}).Schedule(at[i])
		}
		time.Sleep(time.Duration(scheduledTasks+1) * scheduleStep)
		mu.Lock()
		defer mu.Unlock()
		if len(fired) != scheduledTasks {
			t.Fatalf("%d tasks fired, want %d", len(fired), scheduledTasks)
		}
		for i, f := range fired {
			if want := (firing{i, time.Duration(i+1) * scheduleStep}); f != want {
				t.Fatalf("firing %d: task of rank %d at %v, want rank %d at %v", i, f.rank, f.at, want.rank, want.at)
			}
		}
	})
}
