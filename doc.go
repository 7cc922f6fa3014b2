// Package supervisor keeps the processes of a Go service running, the way
// Erlang/OTP supervisors do, with every failure decided in one place.
//
// Use it when a service runs many long-lived things — listeners,
// consumers, per-tenant workers, connections — and each must come back when
// it fails, without a crash loop taking the service down and without a
// failure going unnoticed.
//
// # Quick start
//
// Put the processes in a table, one row per key, and run a supervisor over
// it:
//
//	table := supervisor.NewMapTable[string, supervisor.Runnable]()
//	table.Put("ticker", supervisor.RunnableFunc(func(ctx context.Context) error {
//		for {
//			select {
//			case <-ctx.Done():
//				return ctx.Err()
//			case <-time.After(time.Second):
//				fmt.Println("tick")
//			}
//		}
//	}))
//	sup := supervisor.NewSupervisor[string, supervisor.Runnable](table, supervisor.Options{Name: "app"})
//	err := sup.Run(ctx, nil) // until ctx is cancelled; every row runs, failures restart
//
// Rows put into or deleted from a MapTable while the supervisor runs start
// and stop at once; a row put again replaces its process.
//
// # Processes
//
// A Runnable says when it is ready by calling its callback, and is asked to
// stop gracefully when the callback returns, or forcibly when its context
// is cancelled. RunnableFunc adapts a plain serve-style function. A
// *Supervisor is a Runnable too, so supervisors nest into trees: a child
// that gives up (ErrTooManyRestarts) is a failed process of its parent.
//
// # Failures and the error kernel
//
// Every failure — an error return, a panic (as *PanicError), a start that
// fails or times out, or a failure a process reports while running with
// Report — goes to an ErrorKernel. The failing process waits for the
// kernel's Action: Continue (restart at once, or keep running), Kill
// (restart after the process's backoff delay) or Abort (stop for good). The
// kernel keeps a per-process ErrorState and asks a Policy; DefaultPolicy
// and AbortAfter cover the usual needs. Share one kernel between
// supervisors to see and decide every failure of a program in one place,
// and Subscribe to it to be told about each decision.
//
// # Restarts
//
// Restart policies (Permanent, Transient, Temporary) and strategies
// (OneForOne, OneForAll, RestForOne) follow Erlang/OTP. Backoff is per
// process (DefaultBackoff: 100ms doubling to 30s, with jitter) and resets
// once a process has been healthy for Options.HealthyAfter. With
// Options.MaxRestarts and Options.Period, too many restarts make Run stop
// everything and return ErrTooManyRestarts: the OTP escalation.
//
// # Applications
//
// An App runs a program made of Modules: NewApp, Register each module with
// its Prep, Start and Stop functions and the modules it depends on, then
// App.Run (or Start and Shutdown in tests). Modules run work as workers
// (RunWorker, StartWorker), self-restarting service workers
// (StartServiceWorker), tasks (NewTask: queued, prioritized, scheduled,
// repeated) and microtasks (short work under a concurrency limit, with high,
// medium and low priority). Every failure of that work reaches the App's
// ErrorKernel as a *ModuleError, and Report works inside workers and tasks.
//
// # Observability
//
// Options.OnEvent receives an Event for every start, readiness, failure,
// backoff, restart and stop; Supervisor.Status returns a snapshot of every
// process; logs go to log/slog (slog.Default() unless Options.Logger is
// set).
//
// # Time and goroutines
//
// The package reads time only from package time, keeps no package-level
// state and starts no goroutine outside Run, so its behaviour runs in
// virtual time inside testing/synctest bubbles, and no goroutine of it is
// left once Run has returned (except a process that ignores its context
// past both stop timeouts, which is reported with EventStopTimeout).
package supervisor
