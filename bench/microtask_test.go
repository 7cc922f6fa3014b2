package bench_test

import (
	"context"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/alitto/pond/v2"
	"github.com/panjf2000/ants/v2"

	"github.com/gosupervise/supervisor"
)

// Microtask dispatch: 1M trivial tasks submitted from one goroutine to a
// pool of 1000, ours (medium priority, limit 1000) against ants, pond and
// plain goroutines. Each iteration runs microTasks tasks; ns/task and
// allocs/task are reported per task.

const (
	microTasks = 1_000_000
	microLimit = 1000
)

// microDispatch measures microTasks submits per iteration; prepare gets
// the task (it marks one task done) and returns the submit that
// dispatches it once.
func microDispatch(b *testing.B, prepare func(task func()) (submit func())) {
	var wg sync.WaitGroup
	submit := prepare(func() { wg.Done() })
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	iterations := 0
	for b.Loop() {
		wg.Add(microTasks)
		for range microTasks {
			submit()
		}
		wg.Wait()
		iterations++
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	tasks := float64(iterations * microTasks)
	b.ReportMetric(float64(elapsed.Nanoseconds())/tasks, "ns/task")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/tasks, "allocs/task")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/tasks, "B/task")
}

func BenchmarkMicroDispatch(b *testing.B) {
	b.Run("supervisor", func(b *testing.B) {
		app := supervisor.NewApp(supervisor.AppOptions{Logger: slog.New(slog.DiscardHandler), MaxConcurrentMicroTasks: microLimit})
		m, err := app.Register("bench", supervisor.ModuleFuncs{})
		if err != nil {
			b.Fatal(err)
		}
		if err := app.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = app.Shutdown(context.Background()) }()
		microDispatch(b, func(task func()) func() {
			micro := func(context.Context) error { task(); return nil }
			return func() { m.StartMediumPriorityMicroTask("task", micro) }
		})
	})
	b.Run("ants", func(b *testing.B) {
		pool, err := ants.NewPool(microLimit)
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			_ = pool.ReleaseTimeout(10 * time.Second)
			_ = ants.ReleaseTimeout(10 * time.Second) // the package's default pool, started by its init, for goleak
		}()
		microDispatch(b, func(task func()) func() {
			return func() { _ = pool.Submit(task) }
		})
	})
	b.Run("pond", func(b *testing.B) {
		pool := pond.NewPool(microLimit)
		defer pool.StopAndWait()
		microDispatch(b, func(task func()) func() {
			return func() { pool.Submit(task) }
		})
	})
	b.Run("goroutines", func(b *testing.B) {
		microDispatch(b, func(task func()) func() {
			return func() { go task() }
		})
	})
}

// High-priority RunMicroTask against calling the function directly.
func BenchmarkMicroRunOverhead(b *testing.B) {
	var calls int
	fn := func(context.Context) error { calls++; return nil }
	b.Run("direct", func(b *testing.B) {
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			_ = fn(ctx)
		}
	})
	b.Run("RunMicroTask", func(b *testing.B) {
		app := supervisor.NewApp(supervisor.AppOptions{Logger: slog.New(slog.DiscardHandler)})
		m, err := app.Register("bench", supervisor.ModuleFuncs{})
		if err != nil {
			b.Fatal(err)
		}
		if err := app.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = app.Shutdown(context.Background()) }()
		b.ReportAllocs()
		for b.Loop() {
			_ = m.RunMicroTask("task", fn)
		}
	})
}
