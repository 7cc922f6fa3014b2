package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gosupervise/supervisor"
)

// Tasks run through the App's task queue, one at a time by default
// (MaxConcurrentTasks 1): StartASAP puts a task at the front, Prioritize
// ahead of every normal task, Queue at the end. A task is in the queue at
// most once, and tasks queued before their module is online wait for it.
func ExampleTask() {
	app := supervisor.NewApp(supervisor.AppOptions{
		Logger:             slog.New(slog.DiscardHandler),
		MaxConcurrentTasks: 1,
	})
	var done sync.WaitGroup
	run := func(name string) func(context.Context, *supervisor.Task) error {
		return func(context.Context, *supervisor.Task) error {
			defer done.Done()
			fmt.Println("run", name)
			return nil
		}
	}
	_, err := app.Register("reports", supervisor.ModuleFuncs{
		Start: func(ctx context.Context, m *supervisor.Module) error {
			// Queued during Start: they run once the module is online.
			done.Add(4)
			daily := m.NewTask("daily", run("daily")).Queue()
			m.NewTask("weekly", run("weekly")).Queue()
			m.NewTask("alert", run("alert")).Prioritize()
			m.NewTask("outage", run("outage")).StartASAP()
			daily.Queue() // queued already: keeps its place, runs once
			return nil
		},
	})
	if err != nil {
		panic(err)
	}
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	done.Wait()
	if err := app.Shutdown(context.Background()); err != nil {
		panic(err)
	}
	// Output:
	// run outage
	// run alert
	// run daily
	// run weekly
}

// A repeating task runs one interval after each of its runs ended; it may
// stop its own repetition from its function. (The interval floor,
// MinRepeatInterval, is lowered here so that the example runs quickly.)
func ExampleTask_Repeat() {
	app := supervisor.NewApp(supervisor.AppOptions{
		Logger:            slog.New(slog.DiscardHandler),
		MinRepeatInterval: time.Millisecond,
	})
	m, err := app.Register("cleaner", supervisor.ModuleFuncs{})
	if err != nil {
		panic(err)
	}
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	done := make(chan struct{})
	runs := 0
	m.NewTask("sweep", func(ctx context.Context, t *supervisor.Task) error {
		runs++ // a task never runs concurrently with itself
		fmt.Println("sweep", runs)
		if runs == 3 {
			t.Repeat(0) // no next run
			close(done)
		}
		return nil
	}).Repeat(time.Millisecond)
	<-done
	if err := app.Shutdown(context.Background()); err != nil {
		panic(err)
	}
	// Output:
	// sweep 1
	// sweep 2
	// sweep 3
}

// RunMicroTask runs a short function of the module at once and returns its
// error; a panic comes back as a *PanicError.
func ExampleModule_RunMicroTask() {
	app := supervisor.NewApp(supervisor.AppOptions{Logger: slog.New(slog.DiscardHandler)})
	m, err := app.Register("parser", supervisor.ModuleFuncs{})
	if err != nil {
		panic(err)
	}
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	err = m.RunMicroTask("decode", func(ctx context.Context) error {
		return errors.New("unexpected end of input")
	})
	fmt.Println("error:", err)

	err = m.RunMicroTask("index", func(ctx context.Context) error {
		panic("index corrupted")
	})
	if pe, ok := supervisor.IsPanic(err); ok {
		fmt.Println("panic:", pe.Value)
	}
	if err := app.Shutdown(context.Background()); err != nil {
		panic(err)
	}
	// Output:
	// error: unexpected end of input
	// panic: index corrupted
}
