package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gosupervise/supervisor"
)

// A supervisor keeps one process running per row of its table. Run starts
// every row and calls its callback once they are ready; when the callback
// returns, Run stops them all.
func ExampleNewSupervisor() {
	serve := supervisor.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done() // serve until stopped
		return ctx.Err()
	})
	table := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
	table.Put("web", serve)
	table.Put("worker", serve)

	sup := supervisor.NewSupervisor(table, supervisor.Options{
		Name:   "app",
		Logger: slog.New(slog.DiscardHandler),
	})
	err := sup.Run(context.Background(), func(ctx context.Context) error {
		fmt.Println("running:", sup.Keys())
		if _, err := sup.Get(ctx, "web"); err == nil {
			fmt.Println("web is running")
		}
		_, err := sup.Get(ctx, "cron")
		fmt.Println(err)
		return nil // stop everything and return
	})
	fmt.Println("Run returned:", err)
	fmt.Println("after Run:", sup.Keys())
	// Output:
	// running: [web worker]
	// web is running
	// supervisor "app": get cron: supervisor: process not found
	// Run returned: <nil>
	// after Run: []
}

// An error kernel decides what happens to a failed process. Supervisors
// report to it, but anything can: here the failures are reported directly.
func ExampleErrorKernel() {
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{
		// Give up on a process after more than 2 failures a minute;
		// below that, DefaultPolicy decides.
		Policy: supervisor.AbortAfter(2, time.Minute, nil),
		Logger: slog.New(slog.DiscardHandler),
	})
	ctx := context.Background()
	refused := errors.New("connection refused")

	// A process that exited with an error: DefaultPolicy answers Kill
	// (restart after backoff) until AbortAfter's limit is passed.
	for range 3 {
		action := kernel.Report(ctx, supervisor.Failure{Process: "workers/db", Err: refused, Exited: true})
		fmt.Println("workers/db exited:", action)
	}
	// A failure reported while the process keeps running: Continue.
	action := kernel.Report(ctx, supervisor.Failure{
		Process: "workers/mail", Err: errors.New("bad recipient"), Message: "mail #42",
	})
	fmt.Println("workers/mail reported:", action)

	st := kernel.State("workers/db")
	fmt.Printf("workers/db: %d failures, %d recent, %d consecutive, last: %v\n",
		st.Failures, st.Recent, st.Consecutive, st.LastErr)
	kernel.Healthy("workers/db") // what a supervisor does once it ran healthy
	fmt.Println("after Healthy, consecutive:", kernel.State("workers/db").Consecutive)

	for _, d := range kernel.Recent() {
		fmt.Printf("decided %s for %s (%v, message %v)\n", d.Action, d.Failure.Process, d.Failure.Err, d.Failure.Message)
	}
	// Output:
	// workers/db exited: kill
	// workers/db exited: kill
	// workers/db exited: abort
	// workers/mail reported: continue
	// workers/db: 3 failures, 3 recent, 3 consecutive, last: connection refused
	// after Healthy, consecutive: 0
	// decided kill for workers/db (connection refused, message <nil>)
	// decided kill for workers/db (connection refused, message <nil>)
	// decided abort for workers/db (connection refused, message <nil>)
	// decided continue for workers/mail (bad recipient, message mail #42)
}

// AbortAfter counts each process's failures within a sliding window. A
// policy is a plain function, so it can be tried out by calling it.
func ExampleAbortAfter() {
	policy := supervisor.AbortAfter(2, time.Minute, nil)
	ctx := context.Background()
	t0 := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	crash := errors.New("crash")

	for _, at := range []time.Duration{0, 10 * time.Second, 20 * time.Second, 90 * time.Second} {
		action := policy(ctx, supervisor.Failure{Process: "api", Err: crash, Exited: true, Time: t0.Add(at)})
		fmt.Printf("api fails at %v: %s\n", at, action)
	}
	// Each process has its own count.
	action := policy(ctx, supervisor.Failure{Process: "cron", Err: crash, Exited: true, Time: t0.Add(20 * time.Second)})
	fmt.Println("cron fails at 20s:", action)

	// Below the limit, AbortAfter asks the next policy.
	lenient := supervisor.AbortAfter(2, time.Minute, func(context.Context, supervisor.Failure) supervisor.Action {
		return supervisor.Continue
	})
	fmt.Println("lenient:", lenient(ctx, supervisor.Failure{Process: "api", Err: crash, Exited: true, Time: t0}))
	// Output:
	// api fails at 0s: kill
	// api fails at 10s: kill
	// api fails at 20s: abort
	// api fails at 1m30s: kill
	// cron fails at 20s: kill
	// lenient: continue
}

// RunnableFunc turns a serve-style function into a Runnable: it is ready at
// once, a graceful stop cancels its context, and its error (or panic) is
// the process's failure. A supervisor calls Run; here it is called by hand.
func ExampleRunnableFunc() {
	serve := supervisor.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done()
		fmt.Println("serve: shutting down")
		return ctx.Err() // the stop we asked for is not a failure
	})
	err := serve.Run(context.Background(), func(ctx context.Context) error {
		fmt.Println("ready")
		return nil // ask for a graceful stop
	})
	fmt.Println("stopped:", err)

	// A function that fails cancels the callback's context, and Run
	// returns its error.
	listen := supervisor.RunnableFunc(func(ctx context.Context) error {
		return errors.New("listen :80: address already in use")
	})
	err = listen.Run(context.Background(), func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	})
	fmt.Println("failed:", err)

	// A panic is a failure too, as a *PanicError.
	broken := supervisor.RunnableFunc(func(ctx context.Context) error {
		panic("nil map")
	})
	err = broken.Run(context.Background(), func(ctx context.Context) error {
		<-ctx.Done()
		return nil
	})
	if p, ok := supervisor.IsPanic(err); ok {
		fmt.Println("panicked:", p.Value)
	}
	// Output:
	// ready
	// serve: shutting down
	// stopped: <nil>
	// failed: listen :80: address already in use
	// panicked: nil map
}

// A process that hits a problem it can survive reports it with
// supervisor.Report, naming what it was handling, and does what its
// kernel answers. This kernel lets bad input pass and kills the process
// for anything else.
func ExampleReport() {
	errBadInput := errors.New("bad input")
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{
		Policy: func(ctx context.Context, f supervisor.Failure) supervisor.Action {
			if errors.Is(f.Err, errBadInput) {
				return supervisor.Continue
			}
			return supervisor.Kill
		},
		Logger: slog.New(slog.DiscardHandler),
	})

	reported := make(chan struct{})
	table := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
	table.Put("orders", func(ctx context.Context) error {
		action := supervisor.Report(ctx, fmt.Errorf("order 7: %w", errBadInput), "order 7")
		fmt.Println("order 7:", action)

		action = supervisor.Report(ctx, errors.New("database gone"), "order 8")
		fmt.Println("order 8:", action)
		// On Kill or Abort the context is already cancelled.
		fmt.Println("cancelled:", ctx.Err() != nil)
		close(reported)
		return ctx.Err()
	})
	sup := supervisor.NewSupervisor(table, supervisor.Options{
		Kernel: kernel,
		// The restart after Kill would come after an hour; the
		// example ends before.
		Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Hour) },
		Logger:  slog.New(slog.DiscardHandler),
	})
	_ = sup.Run(context.Background(), func(ctx context.Context) error {
		<-reported
		return nil
	})
	for _, d := range kernel.Recent() {
		fmt.Printf("kernel: %s while handling %v: %s\n", d.Failure.Err, d.Failure.Message, d.Action)
	}
	// Output:
	// order 7: continue
	// order 8: kill
	// cancelled: true
	// kernel: order 7: bad input while handling order 7: continue
	// kernel: database gone while handling order 8: kill
}

// A *Supervisor is a Runnable, so supervisors nest into trees: here a
// child supervisor is one row of its parent's table. The parent starts the
// child, which starts its own processes; the child is ready once they are.
// A child that gives up (ErrTooManyRestarts) is a failed process of its
// parent. Give both the same kernel to decide every failure in one place.
func ExampleSupervisor_nested() {
	quiet := slog.New(slog.DiscardHandler)
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quiet})
	serve := supervisor.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})

	storage := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
	storage.Put("db", serve)
	storage.Put("cache", serve)
	child := supervisor.NewSupervisor(storage, supervisor.Options{
		Name: "storage", Kernel: kernel, Logger: quiet,
	})

	// The parent's rows are of different kinds: its P is Runnable.
	root := supervisor.NewMapTable[string, supervisor.Runnable]()
	root.Put("storage", child)
	root.Put("web", serve)
	parent := supervisor.NewSupervisor(root, supervisor.Options{
		Name: "app", Kernel: kernel, Logger: quiet,
	})

	err := parent.Run(context.Background(), func(ctx context.Context) error {
		fmt.Println("app runs:", parent.Keys())
		fmt.Println("storage runs:", child.Keys())
		if _, err := child.Get(ctx, "db"); err == nil {
			fmt.Println("storage/db is running")
		}
		return nil // stops web and storage; storage stops db and cache
	})
	fmt.Println("Run returned:", err)
	fmt.Println("storage after:", child.Keys())
	// Output:
	// app runs: [storage web]
	// storage runs: [db cache]
	// storage/db is running
	// Run returned: <nil>
	// storage after: []
}
