package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Callback is what a Runnable calls once it is ready. It returns when the
// process should stop gracefully; its ctx is done when the process failed
// or is forced to stop.
type Callback = func(ctx context.Context) error

// Runnable is a process a Supervisor runs.
//
// Run prepares the process, calls callback once it is ready, and returns
// after callback returned and the process shut down. Returning from
// callback asks for a graceful stop; cancelling ctx forces one. A process
// that fails while running cancels the context it passed to callback (so
// callback returns) and returns its error. An error before callback is a
// start failure.
//
// Run is called once per start, and the same value runs again after each
// restart: keep per-run state inside Run, never in the value between runs.
type Runnable interface {
	Run(ctx context.Context, callback Callback) error
}

// RunnableFunc adapts a serve-style function to Runnable: it is ready as
// soon as it has been called (its first line may not have run yet when
// Start returns), stopped by cancelling its ctx, and failed when it returns.
// A nil return while running is a clean exit; an error (or a panic, as
// *PanicError) is a failure. A function that fails before the supervisor
// saw it ready still counts as having been ready once.
type RunnableFunc func(ctx context.Context) error

// errStopRequested is the cause with which RunnableFunc cancels its
// function's context after a graceful stop.
var errStopRequested = errors.New("supervisor: stop requested")

// Run runs f in a goroutine of its own and calls callback at once on the
// calling goroutine; see RunnableFunc.
func (f RunnableFunc) Run(ctx context.Context, callback Callback) error {
	if f == nil {
		return ErrNilProcess
	}
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	var ferr error
	go func() {
		defer close(done)
		defer func() {
			if v := recover(); v != nil {
				ferr = newPanicError(v)
			}
			cancel(nil) // so callback returns: the function has ended
		}()
		ferr = f(fctx)
	}()
	cbErr := callback(fctx)
	cancel(errStopRequested)
	<-done
	if ferr == nil {
		return cbErr
	}
	if errors.Is(ferr, context.Canceled) && context.Cause(fctx) == errStopRequested {
		return cbErr // the function ended because we asked it to
	}
	return ferr
}

// ProcessState is where a supervised process is in its life.
type ProcessState uint8

const (
	// ProcessStarting: Run was called and the process is not ready yet.
	ProcessStarting ProcessState = iota
	// ProcessRunning: the process is ready.
	ProcessRunning
	// ProcessBackoff: the process waits to be restarted (after a failure,
	// or while down for a sibling's group restart).
	ProcessBackoff
	// ProcessStopping: the supervisor asked the process to stop.
	ProcessStopping
)

// String returns "starting", "running", "backoff" or "stopping".
func (s ProcessState) String() string {
	switch s {
	case ProcessStarting:
		return "starting"
	case ProcessRunning:
		return "running"
	case ProcessBackoff:
		return "backoff"
	case ProcessStopping:
		return "stopping"
	}
	return fmt.Sprintf("ProcessState(%d)", uint8(s))
}

// ProcessStatus is a snapshot of one supervised process.
type ProcessStatus[K comparable] struct {
	Key       K
	State     ProcessState
	Restarts  int       // restarts since the row was first started
	LastError error     // the latest failure, nil if none
	Since     time.Time // when State was entered
}

// Options configures a Supervisor. The zero value works: every zero field
// takes the default stated beside it. Negative durations and limits make
// Run return an error naming the field.
type Options struct {
	Name         string                 // in events, logs and Failure.Process; default "supervisor"
	Kernel       *ErrorKernel           // nil: a private kernel with DefaultPolicy
	Restart      RestartPolicy          // default for every process; default Permanent
	Strategy     Strategy               // OneForOne (default), OneForAll, RestForOne
	Backoff      func() backoff.BackOff // delays between restarts of one process; nil: DefaultBackoff
	HealthyAfter time.Duration          // up this long resets the process's backoff; default 30s
	MaxRestarts  int                    // with Period: more restarts than this within Period and
	Period       time.Duration          //   the supervisor gives up (ErrTooManyRestarts); 0: never
	ScanInterval time.Duration          // table re-read period; default 30s
	StartTimeout time.Duration          // readiness wait for a (re)start; default 1m
	StopTimeout  time.Duration          // graceful wait, then forced wait; default 10s
	Logger       *slog.Logger           // nil: slog.Default()
	OnEvent      func(Event)            // called for every Event; must not block
}

// OnEvent is called on the goroutine where the event happened, so it may
// be called concurrently; the events of one process arrive in order. It
// must not block, and it may call Status, Keys and Get.

// Supervisor keeps one process running per row of a Table, restarting the
// ones that fail as its error kernel decides. A *Supervisor is itself a
// Runnable, so supervisors nest into trees.
type Supervisor[K comparable, P Runnable] struct {
	table  Table[K, P]
	opts   Options
	kernel *ErrorKernel

	mu   sync.Mutex
	tree *tree[K, P] // the current Run's state; nil outside Run
}

// NewSupervisor returns a supervisor of the rows of t. Options are checked
// when Run starts.
func NewSupervisor[K comparable, P Runnable](t Table[K, P], o Options) *Supervisor[K, P] {
	kernel := o.Kernel
	if kernel == nil {
		kernel = NewErrorKernel(KernelOptions{Logger: o.Logger})
	}
	return &Supervisor[K, P]{table: t, opts: o, kernel: kernel}
}

// Run reads the table and starts every row concurrently. It calls callback
// once each of those processes is ready or has failed its start, or after
// StartTimeout. When callback returns, or ctx is cancelled, it stops every
// process concurrently (graceful, then forced after StopTimeout), waits for
// them, and returns callback's error. A nil callback waits for ctx.
// Changes a watched table announces while Run waits for the first starts
// are applied at once: a row deleted then stops without waiting for its
// slow siblings.
//
// When more than MaxRestarts restarts happen within Period, Run stops every
// process, cancels the context it passed to callback, waits for callback
// to return and returns an error wrapping ErrTooManyRestarts. A process
// that ignores its context past both stop timeouts is reported with
// EventStopTimeout and no longer waited for.
//
// A second concurrent Run returns ErrAlreadyRunning; after Run returned the
// supervisor can Run again, from a fresh read of the table.
func (s *Supervisor[K, P]) Run(ctx context.Context, callback Callback) error {
	cfg, err := s.config()
	if err != nil {
		return err
	}
	t, err := s.begin(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.end(t)
	if callback == nil {
		callback = func(ctx context.Context) error { <-ctx.Done(); return nil }
	}

	watchCtx, stopWatch := context.WithCancel(ctx)
	watch := t.watch(watchCtx)
	defer t.unwatch(stopWatch, watch)
	watch = t.awaitSettled(t.scan(), watch)
	if t.hasGivenUp() {
		t.stopAll()
		return s.errorf("%w", ErrTooManyRestarts)
	}
	if err := ctx.Err(); err != nil {
		t.stopAll()
		return err
	}

	cbCtx, cancelCallback := context.WithCancelCause(ctx)
	defer cancelCallback(nil)
	callbackDone := make(chan struct{})
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		t.loop(watch, callbackDone, cancelCallback)
	}()
	cbErr := callCallback(cbCtx, callback)
	close(callbackDone)
	<-loopDone
	t.stopAll()
	if t.hasGivenUp() {
		return s.errorf("%w", ErrTooManyRestarts)
	}
	return cbErr
}

func callCallback(ctx context.Context, callback Callback) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = newPanicError(v)
		}
	}()
	return callback(ctx)
}

func (s *Supervisor[K, P]) begin(ctx context.Context, cfg *config) (*tree[K, P], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tree != nil {
		return nil, s.errorf("%w", ErrAlreadyRunning)
	}
	s.tree = newTree(ctx, s, cfg)
	return s.tree, nil
}

func (s *Supervisor[K, P]) end(t *tree[K, P]) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tree == t {
		s.tree = nil
	}
}

// running returns the current Run's tree, or ErrNotRunning.
func (s *Supervisor[K, P]) running() (*tree[K, P], error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tree == nil {
		return nil, s.errorf("%w", ErrNotRunning)
	}
	return s.tree, nil
}

func (s *Supervisor[K, P]) errorf(format string, args ...any) error {
	return fmt.Errorf("supervisor %q: "+format, append([]any{s.name()}, args...)...)
}

func (s *Supervisor[K, P]) name() string {
	if s.opts.Name == "" {
		return "supervisor"
	}
	return s.opts.Name
}

// Start starts the process of row pk and blocks until it is ready,
// returning it, or returns its start error or ctx.Err(). It returns
// ErrNotRunning outside Run, ErrProcessExists if pk runs or is starting,
// and the table's error (wrapping ErrNotFound) if the row is missing. A
// failed Start leaves nothing running: the failure goes to the kernel, but
// the process is not restarted (a later scan may try the row again). The
// process's context derives from Run's, not from ctx.
func (s *Supervisor[K, P]) Start(ctx context.Context, pk K) (P, error) {
	var zero P
	t, err := s.running()
	if err != nil {
		return zero, err
	}
	if err := t.checkStartable(pk); err != nil {
		return zero, err
	}
	v, err := s.table.Get(ctx, pk)
	if err != nil {
		return zero, s.errorf("start %v: %w", pk, err)
	}
	a, err := t.startOne(pk, v)
	if err != nil {
		return zero, err
	}
	select {
	case <-a.settled:
	case <-ctx.Done():
		return zero, ctx.Err()
	}
	if !a.isReady() {
		return zero, s.errorf("start %v: %w", pk, a.startErr)
	}
	return v, nil
}

// Stop stops the process of pk for good: it asks for a graceful stop,
// forces one after StopTimeout or when ctx is done, and returns
// ErrStopTimeout if the process has still not returned after a further
// StopTimeout. The process stays stopped — scans do not restart it — until
// Start, or until its row is put again (watched tables) or disappears and
// comes back. Stop returns ErrNotRunning outside Run and
// ErrProcessNotFound if pk is not running (also for the loser of two
// concurrent Stops).
func (s *Supervisor[K, P]) Stop(ctx context.Context, pk K) error {
	t, err := s.running()
	if err != nil {
		return err
	}
	return t.stopOne(ctx, pk)
}

// Get returns the running process of pk. It returns ErrProcessNotRunning
// while the process is starting, backing off, or down for a sibling's
// group restart, ErrProcessNotFound if there is no process (also while it
// is being stopped for good), and ErrNotRunning outside Run.
func (s *Supervisor[K, P]) Get(ctx context.Context, pk K) (P, error) {
	var zero P
	t, err := s.running()
	if err != nil {
		return zero, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.procs[pk]
	switch {
	case p == nil || p.want == wantStop:
		return zero, s.errorf("get %v: %w", pk, ErrProcessNotFound)
	case p.state != ProcessRunning || p.want != wantRun:
		return zero, s.errorf("get %v: %w", pk, ErrProcessNotRunning)
	}
	return p.value, nil
}

// Keys returns the keys of the supervised processes in start order,
// without the ones being stopped for good. Outside Run it returns nil.
func (s *Supervisor[K, P]) Keys() []K {
	t, err := s.running()
	if err != nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var keys []K
	for _, p := range t.inStartOrderLocked() {
		if p.want != wantStop {
			keys = append(keys, p.key)
		}
	}
	return keys
}

// Status returns a snapshot of every supervised process, in start order,
// including the ones being stopped. Outside Run it returns nil.
func (s *Supervisor[K, P]) Status() []ProcessStatus[K] {
	t, err := s.running()
	if err != nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	procs := t.inStartOrderLocked()
	out := make([]ProcessStatus[K], 0, len(procs))
	for _, p := range procs {
		out = append(out, ProcessStatus[K]{
			Key: p.key, State: p.state, Restarts: p.restarts, LastError: p.lastErr, Since: p.since,
		})
	}
	return out
}

// config is Options with defaults applied, checked once per Run.
type config struct {
	name         string
	kernel       *ErrorKernel
	restart      RestartPolicy
	strategy     Strategy
	newBackoff   func() backoff.BackOff
	healthyAfter time.Duration
	maxRestarts  int
	period       time.Duration
	scanInterval time.Duration
	startTimeout time.Duration
	stopTimeout  time.Duration
	logger       *slog.Logger
	onEvent      func(Event)
}

func (s *Supervisor[K, P]) config() (*config, error) {
	o := s.opts
	if isNil(s.table) {
		return nil, s.errorf("%w: nil table", ErrInvalidOptions)
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{
		{"HealthyAfter", o.HealthyAfter}, {"Period", o.Period}, {"ScanInterval", o.ScanInterval},
		{"StartTimeout", o.StartTimeout}, {"StopTimeout", o.StopTimeout},
	} {
		if d.value < 0 {
			return nil, s.errorf("%w: Options.%s is negative (%v)", ErrInvalidOptions, d.name, d.value)
		}
	}
	switch {
	case o.MaxRestarts < 0:
		return nil, s.errorf("%w: Options.MaxRestarts is negative (%d)", ErrInvalidOptions, o.MaxRestarts)
	case o.Restart > Temporary:
		return nil, s.errorf("%w: Options.Restart is unknown (%v)", ErrInvalidOptions, o.Restart)
	case o.Strategy > RestForOne:
		return nil, s.errorf("%w: Options.Strategy is unknown (%v)", ErrInvalidOptions, o.Strategy)
	}
	c := &config{
		name:         s.name(),
		kernel:       s.kernel,
		restart:      o.Restart,
		strategy:     o.Strategy,
		newBackoff:   o.Backoff,
		healthyAfter: orDefault(o.HealthyAfter, 30*time.Second),
		maxRestarts:  o.MaxRestarts,
		period:       o.Period,
		scanInterval: orDefault(o.ScanInterval, 30*time.Second),
		startTimeout: orDefault(o.StartTimeout, time.Minute),
		stopTimeout:  orDefault(o.StopTimeout, 10*time.Second),
		logger:       o.Logger,
		onEvent:      o.OnEvent,
	}
	if c.newBackoff == nil {
		c.newBackoff = DefaultBackoff
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	if (o.MaxRestarts > 0) != (o.Period > 0) {
		c.logger.Warn("supervisor: restart intensity needs both Options.MaxRestarts and Options.Period; it is off",
			"supervisor", c.name, "max_restarts", o.MaxRestarts, "period", o.Period)
	}
	return c, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// isNil reports whether v is nil, including a typed nil pointer, func, map,
// channel or slice inside an interface.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Func, reflect.Map, reflect.Chan, reflect.Slice, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

// inStartOrderLocked returns the processes sorted by start order; t.mu held.
func (t *tree[K, P]) inStartOrderLocked() []*process[K, P] {
	procs := make([]*process[K, P], 0, len(t.procs))
	for _, p := range t.procs {
		procs = append(procs, p)
	}
	slices.SortFunc(procs, func(a, b *process[K, P]) int { return compareSeq(a.seq, b.seq) })
	return procs
}

func compareSeq(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
