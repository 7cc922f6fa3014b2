// Quickstart is a two-second tour of package supervisor. Run it with
//
//	go run ./examples/quickstart
//
// It supervises a few processes, one of which keeps failing (with errors and
// once with a panic) until the error kernel gives up on it; it adds and
// deletes a row while running, reports a failure from inside a process, and
// prints every supervision event as it happens, with the time since start.
// At the end it prints the supervisor's status and the kernel's decisions.
// Ctrl-C stops it early, cleanly.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gosupervise/supervisor"
)

func main() {
	// Ctrl-C cancels ctx; Run then stops every process and returns.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		stop()
		os.Exit(1)
	}
}

// run is the whole program; main only adds the signal handling, so that a
// test can run the tour in virtual time.
func run(ctx context.Context, out io.Writer) error {
	con := newConsole(out)

	// This program prints the events instead of logging them. A real
	// program keeps a logger (nil means slog.Default()).
	quiet := slog.New(slog.DiscardHandler)

	// One error kernel decides every failure. A failing process waits for
	// its answer: Continue (keep going), Kill (restart after backoff) or
	// Abort (stop for good). AbortAfter aborts a process once it has failed
	// more than 3 times within a minute, and otherwise asks DefaultPolicy:
	// Kill for a process that exited with an error, Continue for a failure
	// reported while running. Share this one kernel with every supervisor
	// of the program to see and decide all failures in one place.
	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{
		Policy: supervisor.AbortAfter(3, time.Minute, nil),
		Logger: quiet,
	})

	// The table is the desired state: one row, one process. MapTable is the
	// in-memory table; it announces its changes, so a row put or deleted
	// while the supervisor runs starts or stops its process at once.
	table := supervisor.NewMapTable[string, supervisor.Runnable]()
	table.Put("cache", supervisor.RunnableFunc(serveUntilStopped))
	table.Put("flaky", flaky())
	table.Put("orders", orders(con))

	sup := supervisor.NewSupervisor(table, supervisor.Options{
		Name:   "quickstart",
		Kernel: kernel,
		// Each process gets its own BackOff: the delays between its
		// restarts. The default starts at 100ms and doubles up to 30s;
		// a constant 200ms keeps the tour short.
		Backoff: func() backoff.BackOff {
			return backoff.NewConstantBackOff(200 * time.Millisecond)
		},
		StopTimeout: time.Second,
		Logger:      quiet,
		// Every start, readiness, failure, backoff, restart and stop is
		// an event. OnEvent must not block: printing a line is fine.
		OnEvent: func(e supervisor.Event) { con.printf("event   %s", e) },
	})

	// Run starts every row, calls the callback once they are all ready,
	// and keeps them running (restarting the failed ones as the kernel
	// decides) until the callback returns or ctx is cancelled. Then it
	// stops every process and returns the callback's error.
	err := sup.Run(ctx, func(ctx context.Context) error {
		con.printf("main    running: %v", sup.Keys())

		if !pause(ctx, 500*time.Millisecond) {
			return nil // interrupted: Run stops everything
		}
		con.printf("main    put row mailer")
		table.Put("mailer", supervisor.RunnableFunc(serveUntilStopped))

		if !pause(ctx, 700*time.Millisecond) {
			return nil
		}
		con.printf("main    delete row cache")
		table.Delete("cache")

		if !pause(ctx, 500*time.Millisecond) {
			return nil
		}
		// Status is a snapshot of the processes of the running
		// supervisor (outside Run it is nil). flaky is not in it: the
		// kernel aborted it. orders remembers the failure it reported.
		for _, st := range sup.Status() {
			con.printf("status  %-7s %-8s restarts=%d last error: %v", st.Key, st.State, st.Restarts, st.LastError)
		}
		return nil // graceful stop of everything
	})
	if err != nil {
		return err
	}

	// The kernel keeps its last decisions (256 by default), newest last.
	for _, d := range kernel.Recent() {
		f := d.Failure
		msg := ""
		if f.Message != nil {
			msg = fmt.Sprintf(" while handling %v", f.Message)
		}
		con.printf("kernel  %s failed%s: %v -> %s (failure %d)", f.Process, msg, f.Err, d.Action, f.State.Failures)
	}
	return nil
}

// serveUntilStopped is the shape of most processes: a serve loop that runs
// until its context is cancelled. Wrapped in RunnableFunc it is ready as
// soon as it is called.
func serveUntilStopped(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// flaky fails 100ms into every run: with an error, and on its second run
// with a panic, which the supervisor recovers into a *PanicError failure.
// Its fourth failure within a minute gets Abort from the kernel.
//
// The run counter is the tour's script, shared by the runs on purpose: a
// real process keeps its per-run state inside Run, because the same value
// runs again after each restart.
func flaky() supervisor.Runnable {
	var runs atomic.Int32
	return supervisor.RunnableFunc(func(ctx context.Context) error {
		run := runs.Add(1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if run == 2 {
			panic("flaky: assignment to entry in nil map")
		}
		return fmt.Errorf("connection reset (run %d)", run)
	})
}

// errInvalidAddress is the failure orders reports for a bad order.
var errInvalidAddress = errors.New("invalid address")

// orders handles an order every 200ms. A bad order is not a reason to
// crash: it reports the failure to the kernel with supervisor.Report,
// naming the order it was handling, and does what the kernel answers.
func orders(con *console) supervisor.Runnable {
	return supervisor.RunnableFunc(func(ctx context.Context) error {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for id := 1; id <= 4; id++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
			order := fmt.Sprintf("order-%d", id)
			if id != 3 {
				con.printf("orders  shipped %s", order)
				continue
			}
			// Report blocks until the kernel answers. On Kill or
			// Abort our ctx is already cancelled: return promptly.
			action := supervisor.Report(ctx, errInvalidAddress, order)
			con.printf("orders  %s rejected; the kernel says %s", order, action)
			if action != supervisor.Continue {
				return ctx.Err()
			}
		}
		return serveUntilStopped(ctx) // queue empty: wait for the stop
	})
}

// pause waits d and reports whether ctx is still live.
func pause(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// console prints lines prefixed with the time since start. Processes and
// OnEvent print from their own goroutines, hence the mutex.
type console struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func newConsole(out io.Writer) *console {
	return &console{out: out, start: time.Now()}
}

func (c *console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	elapsed := time.Since(c.start).Seconds()
	fmt.Fprintf(c.out, "%6.3fs  %s\n", elapsed, fmt.Sprintf(format, args...))
}
