// Command modules is a small service of three modules — config, store and
// api — run by a supervisor.App: a flaky service worker that the App
// restarts with backoff, a repeating task, prioritized tasks and
// microtasks, and every failure decided by one error kernel.
//
//	go run ./examples/modules -duration 3s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/gosupervise/supervisor"
)

func main() {
	duration := flag.Duration("duration", 3*time.Second, "how long the service runs")
	flag.Parse()
	os.Exit(run(*duration, os.Stdout))
}

// run runs the service for d and returns the App's exit code.
func run(d time.Duration, out io.Writer) int {
	start := time.Now()
	say := func(who, format string, args ...any) {
		fmt.Fprintf(out, "%6.3fs  %-7s %s\n", time.Since(start).Seconds(), who, fmt.Sprintf(format, args...))
	}

	kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quiet()})
	decisions, unsubscribe := kernel.Subscribe(64)
	defer unsubscribe()
	go func() { // the operator's view: every decision the kernel made
		for d := range decisions {
			say("kernel", "%s: %v -> %s", d.Failure.Process, d.Failure.Err, d.Action)
		}
	}()

	app := supervisor.NewApp(supervisor.AppOptions{
		Name:                    "shop",
		Kernel:                  kernel,
		Logger:                  quiet(),
		MaxConcurrentMicroTasks: 2,
		MinRepeatInterval:       200 * time.Millisecond, // short, for the demo
		MaxServiceBackoff:       time.Second,
	})

	var dsn string
	must(app.Register("config", supervisor.ModuleFuncs{
		Prep: func(ctx context.Context, m *supervisor.Module) error {
			dsn = "memory://orders"
			say("config", "prepared: dsn %s", dsn)
			return nil
		},
	}))

	var stored atomic.Int64
	must(app.Register("store", supervisor.ModuleFuncs{
		Start: func(ctx context.Context, m *supervisor.Module) error {
			say("store", "opening %s", dsn)
			// A service worker is restarted after backoff × consecutive
			// failures until it returns nil or its context ends.
			var runs atomic.Int64
			m.StartServiceWorker("replicator", 100*time.Millisecond, func(ctx context.Context) error {
				n := runs.Add(1)
				say("store", "replicator run %d", n)
				if n <= 3 {
					return fmt.Errorf("replica unreachable (run %d)", n)
				}
				<-ctx.Done()
				return ctx.Err()
			})
			// A repeating task: one interval after each completion.
			m.NewTask("compact", func(ctx context.Context, t *supervisor.Task) error {
				say("store", "compacting %d orders", stored.Load())
				return nil
			}).Repeat(500 * time.Millisecond)
			return nil
		},
		Stop: func(ctx context.Context, m *supervisor.Module) error {
			say("store", "closed with %d orders", stored.Load())
			return nil
		},
	}, "config"))

	must(app.Register("api", supervisor.ModuleFuncs{
		Start: func(ctx context.Context, m *supervisor.Module) error {
			// Tasks run one at a time; prioritized ones go first.
			for _, name := range []string{"report-daily", "report-weekly"} {
				m.NewTask(name, func(ctx context.Context, t *supervisor.Task) error {
					say("api", "task %s", name)
					return nil
				}).Queue()
			}
			m.NewTask("reindex", func(ctx context.Context, t *supervisor.Task) error {
				say("api", "task reindex (prioritized)")
				return nil
			}).Prioritize()
			// Orders arrive as microtasks: short work under the App's limit.
			m.StartWorker("orders", func(ctx context.Context) error {
				ticker := time.NewTicker(300 * time.Millisecond)
				defer ticker.Stop()
				for i := 1; ; i++ {
					select {
					case <-ctx.Done():
						return nil
					case <-ticker.C:
					}
					order := i
					m.StartMediumPriorityMicroTask("order", func(ctx context.Context) error {
						if order%4 == 0 {
							return errors.New("payment declined")
						}
						stored.Add(1)
						say("api", "order %d stored", order)
						return nil
					})
				}
			})
			return nil
		},
	}, "store"))

	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	say("main", "running for %v", d)
	code := app.Run(ctx)
	for _, ms := range app.Status().Modules {
		say("status", "%-7s %-8s failure=%s", ms.Name, ms.Status, ms.FailureLevel)
	}
	say("main", "exit code %d", code)
	return code
}

func quiet() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

func must(_ *supervisor.Module, err error) {
	if err != nil {
		panic(err)
	}
}
