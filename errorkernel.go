package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Action is an error kernel's reply to a Failure.
type Action uint8

const (
	// Continue keeps the process running; an exited process restarts at
	// once, without counting towards backoff or intensity.
	Continue Action = iota
	// Kill stops the process and restarts it after its backoff delay.
	Kill
	// Abort stops the process for good and escalates.
	Abort
)

// String returns "continue", "kill" or "abort".
func (a Action) String() string {
	switch a {
	case Continue:
		return "continue"
	case Kill:
		return "kill"
	case Abort:
		return "abort"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// Failure is one failure sent to an ErrorKernel.
type Failure struct {
	Process string        // "<supervisor name>/<key>", "<module>/<worker>", ...
	Err     error         // a panic arrives as *PanicError
	Message any           // what the process was handling, if it said
	Exited  bool          // the process has ended (false: reported while running)
	Restart RestartPolicy // the process's restart policy
	Time    time.Time     // zero: Report sets time.Now()
	State   ErrorState    // the kernel's record of Process, this failure included
}

// ErrorState is an error kernel's record of one process.
type ErrorState struct {
	Failures    int       // all failures recorded
	Recent      int       // failures within KernelOptions.Window (counted up to 16384)
	Consecutive int       // since the process last ran healthy
	LastErr     error     // the latest failure's error
	LastAt      time.Time // the latest failure's time
}

// Decision is a failure and the kernel's reply to it.
type Decision struct {
	Failure Failure
	Action  Action
}

// Policy decides what to do about a failure. It runs on the reporting
// goroutine with Report's ctx; a policy that waits must return when ctx is
// done.
type Policy func(ctx context.Context, f Failure) Action

// DefaultPolicy is the policy of a kernel without one: errors wrapping
// ErrAbort get Abort; other failures reported while running get Continue;
// exits of Temporary processes get Abort; other exits get Kill.
func DefaultPolicy(ctx context.Context, f Failure) Action {
	switch {
	case errors.Is(f.Err, ErrAbort):
		return Abort
	case !f.Exited:
		return Continue
	case f.Restart == Temporary:
		return Abort
	default:
		return Kill
	}
}

// AbortAfter returns a policy that answers Abort once a process has more
// than n failures within window (this one included), and next's answer
// otherwise (nil next: DefaultPolicy). Each returned Policy keeps its own
// count, by Failure.Process and Failure.Time.
func AbortAfter(n int, window time.Duration, next Policy) Policy {
	if next == nil {
		next = DefaultPolicy
	}
	var (
		mu      sync.Mutex
		windows = map[string]*slidingWindow{}
	)
	return func(ctx context.Context, f Failure) Action {
		mu.Lock()
		w := windows[f.Process]
		if w == nil {
			w = &slidingWindow{limit: n + 1} // enough to tell "more than n"
			windows[f.Process] = w
		}
		over := w.add(f.Time, window) > n
		mu.Unlock()
		if over {
			return Abort
		}
		return next(ctx, f)
	}
}

// slidingWindow counts events within a trailing window of time, up to a
// limit (a crash loop must not grow memory without bound). Adding is
// amortised O(1) and counting at a later time O(log n): expired times are
// skipped by moving a head index, and the array is compacted only once
// half of it is dead.
type slidingWindow struct {
	limit int             // most events kept; counts saturate at it
	base  time.Time       // the first event: times are kept as offsets from it
	times []time.Duration // oldest first, from head on; no pointers for the GC
	head  int
}

// maxRecent is the most failures an ErrorState.Recent counts.
const maxRecent = 1 << 14

// add records an event at now, forgets the ones not within window before
// it, and returns how many remain (now's included).
func (w *slidingWindow) add(now time.Time, window time.Duration) int {
	if w.base.IsZero() {
		w.base = now
	}
	at := now.Sub(w.base)
	cutoff := at - window
	for w.head < len(w.times) && w.times[w.head] <= cutoff {
		w.head++
	}
	if w.head > 32 && w.head > len(w.times)/2 {
		w.times = append(w.times[:0], w.times[w.head:]...)
		w.head = 0
	}
	if len(w.times)-w.head >= w.limit {
		w.head++ // forget the oldest: the count saturates
	}
	w.times = append(w.times, at)
	return len(w.times) - w.head
}

// count returns how many events are within window before now.
func (w *slidingWindow) count(now time.Time, window time.Duration) int {
	live := w.times[w.head:]
	cutoff := now.Sub(w.base) - window
	return len(live) - sort.Search(len(live), func(i int) bool { return live[i] > cutoff })
}

// KernelOptions configures an ErrorKernel. The zero value is usable.
type KernelOptions struct {
	Policy  Policy        // nil: DefaultPolicy
	Window  time.Duration // for ErrorState.Recent; default 1m
	History int           // decisions kept for Recent(); default 256
	Logger  *slog.Logger  // nil: slog.Default()
}

// ErrorKernel is the one place that sees and decides failures. Share one
// kernel between supervisors, Apps and pools to decide every failure of a
// program in one place. It starts no goroutine: Report runs the policy on
// the caller's goroutine and holds no lock while it runs, so a slow decision
// for one process never delays another.
type ErrorKernel struct {
	policy  Policy
	window  time.Duration
	logger  *slog.Logger
	dropped atomic.Uint64

	mu      sync.Mutex
	records map[string]*errorRecord
	history []Decision // ring buffer of the last decisions
	next    int        // where the next decision goes in history
	full    bool       // history has wrapped
	subs    map[*subscription]struct{}
}

type errorRecord struct {
	failures    int
	consecutive int
	lastErr     error
	lastAt      time.Time
	recent      slidingWindow
}

type subscription struct{ ch chan Decision }

// NewErrorKernel returns a kernel with the given options; zero fields take
// their defaults, negative ones too (with a logged warning).
func NewErrorKernel(o KernelOptions) *ErrorKernel {
	logger := o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	if o.Policy == nil {
		o.Policy = DefaultPolicy
	}
	if o.Window < 0 {
		logger.Warn("supervisor: negative KernelOptions.Window, using the default", "window", o.Window)
		o.Window = 0
	}
	if o.Window == 0 {
		o.Window = time.Minute
	}
	if o.History < 0 {
		logger.Warn("supervisor: negative KernelOptions.History, using the default", "history", o.History)
		o.History = 0
	}
	if o.History == 0 {
		o.History = 256
	}
	return &ErrorKernel{
		policy:  o.Policy,
		window:  o.Window,
		logger:  logger,
		records: map[string]*errorRecord{},
		history: make([]Decision, o.History),
		subs:    map[*subscription]struct{}{},
	}
}

// Report records f in f.Process's error state, asks the policy and returns
// its answer, blocking until it is decided. A zero f.Time becomes
// time.Now(). If ctx is done by the time the policy answered, Report answers
// Abort whatever the policy said. A panicking policy is logged and its
// failure decided by DefaultPolicy.
func (k *ErrorKernel) Report(ctx context.Context, f Failure) Action {
	if f.Time.IsZero() {
		f.Time = time.Now()
	}
	f.State = k.record(f)
	action := k.decide(ctx, f)
	if ctx.Err() != nil {
		action = Abort
	}
	k.publish(Decision{Failure: f, Action: action})
	return action
}

func (k *ErrorKernel) record(f Failure) ErrorState {
	k.mu.Lock()
	defer k.mu.Unlock()
	r := k.records[f.Process]
	if r == nil {
		r = &errorRecord{recent: slidingWindow{limit: maxRecent}}
		k.records[f.Process] = r
	}
	r.failures++
	r.consecutive++
	r.lastErr = f.Err
	r.lastAt = f.Time
	r.recent.add(f.Time, k.window)
	return r.state(f.Time, k.window)
}

func (r *errorRecord) state(now time.Time, window time.Duration) ErrorState {
	return ErrorState{
		Failures:    r.failures,
		Recent:      r.recent.count(now, window),
		Consecutive: r.consecutive,
		LastErr:     r.lastErr,
		LastAt:      r.lastAt,
	}
}

// decide runs the policy, turning its panic into DefaultPolicy's answer.
func (k *ErrorKernel) decide(ctx context.Context, f Failure) (action Action) {
	defer func() {
		if v := recover(); v != nil {
			k.logger.Error("supervisor: error kernel policy panicked; using DefaultPolicy",
				"process", f.Process, "panic", v, "stack", string(debug.Stack()))
			action = DefaultPolicy(ctx, f)
		}
	}()
	action = k.policy(ctx, f)
	if action > Abort {
		k.logger.Error("supervisor: error kernel policy answered an unknown action; using Abort",
			"process", f.Process, "action", action)
		action = Abort
	}
	return action
}

func (k *ErrorKernel) publish(d Decision) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.history[k.next] = d
	k.next++
	if k.next == len(k.history) {
		k.next = 0
		k.full = true
	}
	for s := range k.subs {
		select {
		case s.ch <- d:
		default:
			k.dropped.Add(1)
		}
	}
}

// State returns the kernel's record of process; the zero ErrorState if it
// never failed. Recent counts the failures within the window before now.
func (k *ErrorKernel) State(process string) ErrorState {
	k.mu.Lock()
	defer k.mu.Unlock()
	r := k.records[process]
	if r == nil {
		return ErrorState{}
	}
	return r.state(time.Now(), k.window)
}

// Healthy resets process's Consecutive count: the process has run healthy.
// Supervisors call it once a process has been up for Options.HealthyAfter.
func (k *ErrorKernel) Healthy(process string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if r := k.records[process]; r != nil {
		r.consecutive = 0
	}
}

// Recent returns the last decisions (at most KernelOptions.History), newest
// last.
func (k *ErrorKernel) Recent() []Decision {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.full {
		return append([]Decision(nil), k.history[:k.next]...)
	}
	out := make([]Decision, 0, len(k.history))
	out = append(out, k.history[k.next:]...)
	return append(out, k.history[:k.next]...)
}

// Subscribe returns a channel that receives every decision made from now on,
// and a function that ends the subscription and closes the channel. The
// kernel never blocks on a subscriber: a decision that finds the channel's
// buffer full is dropped and counted in Dropped. A negative buffer is 0.
func (k *ErrorKernel) Subscribe(buffer int) (<-chan Decision, func()) {
	s := &subscription{ch: make(chan Decision, max(buffer, 0))}
	k.mu.Lock()
	k.subs[s] = struct{}{}
	k.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			k.mu.Lock()
			delete(k.subs, s)
			k.mu.Unlock()
			close(s.ch)
		})
	}
}

// Dropped returns how many decisions subscribers missed because their
// buffer was full.
func (k *ErrorKernel) Dropped() uint64 { return k.dropped.Load() }

// reporterKey is the context key under which a supervised process finds
// whom to report to.
type reporterKey struct{}

// reporter is what Report finds in the context of a supervised process,
// module worker, service worker or task: it sends the failure to the
// right kernel and acts on Kill and Abort before returning.
type reporter interface {
	report(ctx context.Context, err error, msg any) Action
}

// errNilReport stands for the nil error of a Report call.
var errNilReport = errors.New("supervisor: Report called with a nil error")

// Report sends err — raised while handling msg, which may be nil — to the
// kernel of the process whose context ctx is (a supervised process, module
// worker, service worker or task) and blocks until it replies. On Kill or
// Abort the process's context is already cancelled when Report returns:
// return promptly. If ctx is done, the kernel answers Abort and the process
// is left alone. Outside a supervised process Report logs err (to
// slog.Default()) and returns Continue; a nil err is reported as an error
// saying so.
func Report(ctx context.Context, err error, msg any) Action {
	if err == nil {
		err = errNilReport
	}
	if r, ok := ctx.Value(reporterKey{}).(reporter); ok {
		return r.report(ctx, err, msg)
	}
	slog.Default().Error("supervisor: failure reported outside a supervised process", "err", err, "message", msg)
	return Continue
}

// PanicError is a recovered panic: its value and the stack of the goroutine
// that panicked.
type PanicError struct {
	Value any
	Stack []byte
}

// Error returns "panic: " and the value.
func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// Unwrap returns Value if it is an error, so errors.Is sees through a panic.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// IsPanic reports whether err is or wraps a *PanicError, and returns it.
func IsPanic(err error) (*PanicError, bool) {
	var p *PanicError
	ok := errors.As(err, &p)
	return p, ok
}

// newPanicError makes a PanicError of a recovered value, with the current
// stack. Call it from the deferred function that recovered.
func newPanicError(v any) *PanicError {
	return &PanicError{Value: v, Stack: debug.Stack()}
}
