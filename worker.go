package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultBackoffDuration is a service worker's backoff when it is given 0.
const DefaultBackoffDuration = 2 * time.Second

// serviceResetAfter is how long a service worker must run without failing
// for its failure count to start again from zero.
const serviceResetAfter = 5 * time.Minute

// RunWorker runs fn as a worker of the module and returns its error (a
// panic as *PanicError). fn's context derives from the module's and is
// cancelled when fn returns. A failure goes to the App's kernel as
// "<module>/<name>", reported after fn returned; a worker is Temporary:
// nothing restarts it. The module's stop waits for it.
func (m *Module) RunWorker(name string, fn func(context.Context) error) error {
	return m.runWorker(m.track("worker", name), "worker", name, Temporary, fn).err
}

// StartWorker runs fn as a worker of the module in a goroutine of its own;
// see RunWorker.
func (m *Module) StartWorker(name string, fn func(context.Context) error) {
	untrack := m.track("worker", name)
	go m.runWorker(untrack, "worker", name, Temporary, fn)
}

// StartServiceWorker runs fn as a supervised process of the module: it
// ends when fn returns nil or context.Canceled; ErrRestartNow restarts it
// at once, uncounted; any other error or panic goes to the kernel and, on
// Kill, restarts it after backoff × consecutive failures (0 means
// DefaultBackoffDuration; capped by AppOptions.MaxServiceBackoff; the count
// starts again after 5 minutes without failure); Continue restarts it at
// once, uncounted; Abort ends it and sets the module's failure status
// Error. A module stop interrupts a pending backoff at once.
func (m *Module) StartServiceWorker(name string, backoff time.Duration, fn func(context.Context) error) {
	if backoff <= 0 {
		backoff = DefaultBackoffDuration
	}
	untrack := m.track("service-worker", name)
	go m.serve(untrack, name, backoff, fn)
}

func (m *Module) serve(untrack func(), name string, backoff time.Duration, fn func(context.Context) error) {
	defer untrack()
	a := m.app
	failures := 0
	var lastFailure time.Time
	for {
		r := m.runWorker(nil, "service-worker", name, Permanent, fn)
		switch {
		case r.stopping:
			return
		case r.decided && r.action == Kill:
			// killed through Report: back off below, whatever fn returned
		case r.action == Abort:
			msg := "aborted by the error kernel"
			if r.err != nil {
				msg = r.err.Error()
			}
			m.Error(m.name+":"+name+":aborted", msg)
			return
		case r.err == nil || errors.Is(r.err, context.Canceled):
			return
		case errors.Is(r.err, ErrRestartNow), r.action == Continue:
			continue
		}
		now := time.Now()
		if now.Sub(lastFailure) > serviceResetAfter {
			failures = 0
		}
		failures++
		lastFailure = now
		delay := min(backoff*time.Duration(failures), a.opts.MaxServiceBackoff)
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-m.Stopping():
			timer.Stop()
			return
		}
	}
}

// workerResult is how one run of a worker ended.
type workerResult struct {
	err      error  // what fn returned (a panic as *PanicError)
	action   Action // the kernel's answer to a failure
	stopping bool   // the module was stopping
	decided  bool   // the kernel decided through Report inside the worker
}

// runWorker runs fn once as a worker named name; untrack, if not nil, is
// called when it ended.
func (m *Module) runWorker(untrack func(), kind, name string, restart RestartPolicy, fn func(context.Context) error) workerResult {
	if untrack != nil {
		defer untrack()
	}
	w := &workerCtx{m: m, kind: kind, name: name, restart: restart}
	w.Context, w.cancel = context.WithCancelCause(m.Ctx())
	var r workerResult
	if fn == nil {
		r.err = fmt.Errorf("%s %q of module %q: nil function", kind, name, m.name)
	} else {
		r.err = callWorker(w, fn)
	}
	w.cancel(errWorkerReturned)
	r.stopping = m.stoppingNow()
	if decided, action := w.decision(); decided {
		r.action, r.decided = action, true
		return r
	}
	if r.err == nil || errors.Is(r.err, ErrRestartNow) || errors.Is(r.err, context.Canceled) && (r.stopping || kind == "service-worker") {
		return r
	}
	r.action = m.app.kernel.Report(context.Background(), Failure{
		Process: m.name + "/" + name,
		Err:     m.app.moduleError(m.name, name, kind, r.err),
		Exited:  true,
		Restart: restart,
	})
	return r
}

var errWorkerReturned = errors.New("supervisor: worker returned")

func callWorker(ctx context.Context, fn func(context.Context) error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = newPanicError(v)
		}
	}()
	return fn(ctx)
}

func (m *Module) stoppingNow() bool {
	select {
	case <-m.Stopping():
		return true
	default:
		return m.Status() != StatusOnline && m.Status() != StatusStarting
	}
}

// workerCtx is a worker's context: it carries the worker for Report.
type workerCtx struct {
	context.Context
	cancel  context.CancelCauseFunc
	m       *Module
	kind    string
	name    string
	restart RestartPolicy

	mu      sync.Mutex
	decided bool
	action  Action
}

// Value finds the worker for Report, and the rest in the module's ctx.
func (w *workerCtx) Value(key any) any {
	if key == (reporterKey{}) {
		return w
	}
	return w.Context.Value(key)
}

// report is Report from inside the worker: Kill or Abort cancel it before
// Report returns, and its exit is then not reported again.
func (w *workerCtx) report(ctx context.Context, err error, msg any) Action {
	action := w.m.app.kernel.Report(ctx, Failure{
		Process: w.m.name + "/" + w.name,
		Err:     w.m.app.moduleError(w.m.name, w.name, w.kind, err),
		Message: msg,
		Restart: w.restart,
	})
	if ctx.Err() != nil || action == Continue {
		return action
	}
	w.mu.Lock()
	if !w.decided || action > w.action {
		w.decided, w.action = true, action
	}
	w.mu.Unlock()
	w.cancel(errKilled)
	return action
}

func (w *workerCtx) decision() (bool, Action) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.decided, w.action
}
