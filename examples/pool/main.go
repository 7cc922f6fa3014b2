// Pool is a tour of package pool: a pool of Python workers (worker.py,
// standard library only) and a pool of Go workers (goworker, a program
// written with pool.Serve, built when the tour starts). Run it from
// anywhere in the repository with
//
//	go run ./examples/pool              # from the repository root
//	go run . -duration 5s               # from examples/pool
//
// For each pool it sends one job of every kind the workers know, kills a
// worker with SIGKILL in the middle of a job, then keeps four callers busy
// for -duration while it kills another worker. It prints every event of
// the pool (Config.OnEvent), every reply and every error as they happen,
// with the time since start, then destroys the pool: every worker gets a
// stop frame and is reaped. Without python3 on PATH it says so and tours
// the Go pool only. Ctrl-C stops it early, cleanly.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gosupervise/supervisor/pool"
)

// workerPy is the Python worker, carried inside the program so that the
// tour finds it wherever it runs from; a real program starts its worker's
// file.
//
//go:embed worker.py
var workerPy []byte

// goWorkerPackage is built into a temporary directory at start. The pool
// must start the worker itself, not `go run`: the handshake checks that
// the process that speaks is the one the pool spawned.
const goWorkerPackage = "github.com/gosupervise/supervisor/examples/pool/goworker"

func main() {
	duration := flag.Duration("duration", 2*time.Second, "how long four callers keep each pool busy")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, tourConfig{duration: *duration, python: findPython(ctx)}); err != nil {
		fmt.Fprintln(os.Stderr, "pool example:", err)
		stop()
		os.Exit(1)
	}
}

// findPython returns the python3 interpreter on PATH, or "" if there is
// none. A version manager's shim (pyenv) is resolved to the interpreter
// behind it, once: a shim is a script that takes longer to start than
// Python itself, on every spawn.
func findPython(ctx context.Context) string {
	python, err := exec.LookPath("python3")
	if err != nil {
		return ""
	}
	out, err := exec.CommandContext(ctx, python, "-c", "import sys; print(sys.executable)").Output()
	if resolved := strings.TrimSpace(string(out)); err == nil && resolved != "" {
		return resolved
	}
	return python
}

// tourConfig is what main passes to run.
type tourConfig struct {
	duration time.Duration // of each pool's busy phase
	python   string        // the python3 interpreter; "" skips the Python pool
}

// run is the whole program; main only reads the flags, looks for python3
// and handles Ctrl-C, so that a test can run the tour.
func run(ctx context.Context, out io.Writer, cfg tourConfig) error {
	con := newConsole(out)
	dir, err := os.MkdirTemp("", "pool-example-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	var tours []workerProgram
	if cfg.python == "" {
		con.printf("main", "python3 not found on PATH: skipping the Python pool")
	} else {
		script := filepath.Join(dir, "worker.py")
		if err := os.WriteFile(script, workerPy, 0o644); err != nil {
			return err
		}
		tours = append(tours, workerProgram{"python", func() *exec.Cmd { return exec.Command(cfg.python, script) }})
	}
	con.printf("main", "building the Go worker (%s)", goWorkerPackage)
	goWorker := filepath.Join(dir, "goworker")
	build := exec.CommandContext(ctx, "go", "build", "-o", goWorker, goWorkerPackage)
	if output, err := build.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return nil // Ctrl-C
		}
		return fmt.Errorf("building the Go worker: %w\n%s", err, output)
	}
	tours = append(tours, workerProgram{"go", func() *exec.Cmd { return exec.Command(goWorker) }})

	for _, w := range tours {
		if err := tour(ctx, con, w, cfg.duration); err != nil {
			return err
		}
		if ctx.Err() != nil {
			break
		}
	}
	con.printf("main", "done")
	return nil
}

// workerProgram is a pool's name and the command that starts one worker.
type workerProgram struct {
	name string
	cmd  func() *exec.Cmd
}

// tour runs one pool through its paces and destroys it.
func tour(ctx context.Context, con *console, w workerProgram, duration time.Duration) error {
	p, err := pool.NewPool(ctx, w.cmd, pool.NewPipeFactory(), pool.Config{
		Name:       w.name,
		NumWorkers: 2,
		// The tour prints the events instead of logging them; a real
		// program keeps a logger (nil means slog.Default()).
		Logger:  slog.New(slog.DiscardHandler),
		OnEvent: func(e pool.Event) { con.printf("event", "%s", e) },
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // Ctrl-C while the workers started
		}
		return err
	}
	con.printf(w.name, "pool ready: %s", describeWorkers(p.Workers()))

	for _, step := range []func(context.Context, *console, string, *pool.Pool) error{
		everyKindOfJob,
		killMidJob,
		func(ctx context.Context, con *console, name string, p *pool.Pool) error {
			return busy(ctx, con, name, p, duration)
		},
	} {
		if err = step(ctx, con, w.name, p); err != nil || ctx.Err() != nil {
			break
		}
	}
	con.printf(w.name, "workers: %s", describeWorkers(p.Workers()))

	// Destroy waits for jobs under way, stops every worker with a stop
	// frame (SIGKILL after DestroyTimeout) and returns once all are reaped.
	destroyCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if destroyErr := p.Destroy(destroyCtx); destroyErr != nil {
		return errors.Join(err, destroyErr)
	}
	con.printf(w.name, "destroyed: every worker stopped and reaped")
	return err
}

// everyKindOfJob sends one job of each op the workers know and prints
// what comes back.
func everyKindOfJob(ctx context.Context, con *console, name string, p *pool.Pool) error {
	for _, job := range []struct{ context, body, note string }{
		{`{"op":"echo"}`, "hello", ""},
		{`{"op":"upper"}`, "hello", ""},
		{`{"op":"fail","message":"no such user"}`, "", "the handler fails; its worker stays"},
		{`{"op":"print"}`, "hello", "the worker writes to stderr: the pool passes each line on as an event"},
		{`{"op":"stop"}`, "", "the worker asks to be replaced; the job runs once more on another, which asks too"},
		{`{"op":"crash"}`, "", "the worker exits without replying; its slot comes back after backoff"},
	} {
		if job.note != "" {
			con.printf(name, "-- %s", job.note)
		}
		reply, err := p.Exec(ctx, pool.Payload{Context: []byte(job.context), Body: []byte(job.body)})
		con.printf(name, "%s %q -> %s", job.context, job.body, describe(reply, err))
		if ctx.Err() != nil {
			return nil
		}
	}
	return nil
}

// killMidJob starts a job that sleeps and SIGKILLs its worker while it
// does: the job's Exec returns a *pool.WorkerError and the slot replaces
// the worker.
func killMidJob(ctx context.Context, con *console, name string, p *pool.Pool) error {
	const sleep = `{"op":"sleep","seconds":5}`
	con.printf(name, "-- a job that sleeps 5s; its worker is killed while it runs")
	replied := make(chan error, 1)
	go func() {
		_, err := p.Exec(ctx, pool.Payload{Context: []byte(sleep), Body: []byte("zzz")})
		replied <- err
	}()
	pid, err := workingPid(ctx, p)
	if err != nil {
		<-replied
		return err
	}
	con.printf(name, "kill -9 %d (slot running the sleep job)", pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing worker %d: %w", pid, err)
	}
	con.printf(name, "%s %q -> %s", sleep, "zzz", describe(pool.Payload{}, <-replied))
	return nil
}

// workingPid waits until a worker runs a job and returns its pid.
func workingPid(ctx context.Context, p *pool.Pool) (int, error) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for {
		for _, w := range p.Workers() {
			if w.State == pool.StateWorking {
				return w.Pid, nil
			}
		}
		select {
		case <-tick.C:
		case <-deadline:
			return 0, errors.New("no worker took the sleep job within 10s")
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// busy keeps four callers sending echo jobs for duration and kills a
// worker halfway: the job it was running fails, the others carry on on
// the other worker until its slot brings a new one.
func busy(ctx context.Context, con *console, name string, p *pool.Pool, duration time.Duration) error {
	const callers = 4
	con.printf(name, "-- %d callers send echo jobs for %s; a worker is killed halfway", callers, duration)
	deadline := time.Now().Add(duration)
	var replies, failures atomic.Int64
	var wg sync.WaitGroup
	for caller := range callers {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				body := fmt.Sprintf("caller %d job %d", caller, i)
				reply, err := p.Exec(ctx, pool.Payload{Body: []byte(body)})
				switch {
				case err == nil && string(reply.Body) == body:
					replies.Add(1)
				case ctx.Err() != nil:
				default:
					failures.Add(1)
					con.printf(name, "%q -> %s", body, describe(reply, err))
				}
			}
		})
	}
	select {
	case <-time.After(duration / 2):
		if w, ok := busiest(p.Workers()); ok {
			con.printf(name, "kill -9 %d (slot %d, %s, %d jobs done)", w.Pid, w.Slot, w.State, w.NumExecs)
			_ = syscall.Kill(w.Pid, syscall.SIGKILL) // it may have ended since: then this does nothing
		}
	case <-ctx.Done():
	}
	wg.Wait()
	con.printf(name, "%d replies, %d failed jobs in %s (%.0f jobs/s)", replies.Load(), failures.Load(),
		duration, float64(replies.Load())/duration.Seconds())
	return nil
}

// busiest returns a worker that runs a job, else any that has a process.
func busiest(workers []pool.WorkerInfo) (pool.WorkerInfo, bool) {
	var found pool.WorkerInfo
	for _, w := range workers {
		switch {
		case w.State == pool.StateWorking:
			return w, true
		case w.Pid != 0 && found.Pid == 0:
			found = w
		}
	}
	return found, found.Pid != 0
}

// describe says what an Exec came to.
func describe(reply pool.Payload, err error) string {
	var jobErr pool.JobError
	var workerErr *pool.WorkerError
	switch {
	case err == nil:
		return fmt.Sprintf("reply %q, context %s", reply.Body, reply.Context)
	case errors.As(err, &jobErr):
		return fmt.Sprintf("JobError %q", string(jobErr))
	case errors.As(err, &workerErr):
		return fmt.Sprintf("WorkerError: worker %d: %v", workerErr.Pid, workerErr.Err)
	}
	return "error: " + err.Error()
}

func describeWorkers(workers []pool.WorkerInfo) string {
	s := ""
	for i, w := range workers {
		if i > 0 {
			s += "; "
		}
		s += fmt.Sprintf("slot %d pid %d %s, %d jobs, %.1f MiB", w.Slot, w.Pid, w.State, w.NumExecs, float64(w.RSS)/(1<<20))
	}
	return s
}

// console prints lines prefixed with the time since start. OnEvent and
// the callers print from their own goroutines, hence the mutex.
type console struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func newConsole(out io.Writer) *console {
	return &console{out: out, start: time.Now()}
}

func (c *console) printf(tag, format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.out, "%6.3fs  %-7s %s\n", time.Since(c.start).Seconds(), tag, fmt.Sprintf(format, args...))
}
