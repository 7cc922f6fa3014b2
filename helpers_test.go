package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// Helpers shared by the test files of the package.

var errBoom = errors.New("boom")

// Events.

// recorder records every Event a supervisor delivers (pass its record to
// Options.OnEvent); the zero value is ready to use.
type recorder struct {
	mu     sync.Mutex
	events []supervisor.Event
}

func (r *recorder) record(e supervisor.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// all returns every event, in the order they were delivered.
func (r *recorder) all() []supervisor.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// allKinds returns the kinds of every event, in order.
func (r *recorder) allKinds() eventKinds {
	var kinds eventKinds
	for _, e := range r.all() {
		kinds = append(kinds, e.Kind)
	}
	return kinds
}

// about returns the events about process, in order.
func (r *recorder) about(process string) []supervisor.Event {
	return r.filter(func(e supervisor.Event) bool { return e.Process == process })
}

// kinds returns the kinds of the events about process, in order.
func (r *recorder) kinds(process string) []supervisor.EventKind {
	var kinds []supervisor.EventKind
	for _, e := range r.about(process) {
		kinds = append(kinds, e.Kind)
	}
	return kinds
}

// of returns the events of kind, about any process, in order.
func (r *recorder) of(kind supervisor.EventKind) []supervisor.Event {
	return r.filter(func(e supervisor.Event) bool { return e.Kind == kind })
}

// processes returns the processes of the events of kind, in order.
func (r *recorder) processes(kind supervisor.EventKind) []string {
	var names []string
	for _, e := range r.of(kind) {
		names = append(names, e.Process)
	}
	return names
}

// after returns the events recorded after the first one of kind, which
// must exist.
func (r *recorder) after(t *testing.T, kind supervisor.EventKind) *recorder {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.IndexFunc(r.events, func(e supervisor.Event) bool { return e.Kind == kind })
	require.GreaterOrEqual(t, i, 0, "no %v event", kind)
	return &recorder{events: slices.Clone(r.events[i+1:])}
}

func (r *recorder) filter(keep func(supervisor.Event) bool) []supervisor.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var events []supervisor.Event
	for _, e := range r.events {
		if keep(e) {
			events = append(events, e)
		}
	}
	return events
}

// eventKinds is a list of kinds that prints as names in failure messages.
type eventKinds []supervisor.EventKind

func (ks eventKinds) GoString() string {
	names := make([]string, len(ks))
	for i, k := range ks {
		names[i] = k.String()
	}
	return "[" + strings.Join(names, " ") + "]"
}

// Event sequences of one process.
var (
	kindsRunning = []supervisor.EventKind{supervisor.EventStarting, supervisor.EventReady}
	kindsStopped = []supervisor.EventKind{
		supervisor.EventStarting, supervisor.EventReady, supervisor.EventStopping, supervisor.EventStopped,
	}
	kindsRestarted = []supervisor.EventKind{
		supervisor.EventRestarting, supervisor.EventStarting, supervisor.EventReady,
	}
)

// Processes.

// serve serves until ctx is done.
func serve(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// blocking is ready at once and runs until its ctx is done.
func blocking() supervisor.Runnable { return supervisor.RunnableFunc(serve) }

// countingServe is a RunnableFunc that counts its runs in runs and serves.
func countingServe(runs *atomic.Int32) supervisor.RunnableFunc {
	return func(ctx context.Context) error {
		runs.Add(1)
		return serve(ctx)
	}
}

// exitAfter returns err after d, or ctx.Err() once ctx is done.
func exitAfter(ctx context.Context, d time.Duration, err error) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return err
	}
}

// failAfter is a life whose every run returns err after d.
func failAfter(d time.Duration, err error) func(ctx context.Context, run int) error {
	return func(ctx context.Context, _ int) error { return exitAfter(ctx, d, err) }
}

// failRuns is a life whose runs listed in exits (by run number) return
// their error (nil: a clean exit) after d; the other runs serve.
func failRuns(d time.Duration, exits map[int]error) func(ctx context.Context, run int) error {
	return func(ctx context.Context, run int) error {
		err, ok := exits[run]
		if !ok {
			return serve(ctx)
		}
		return exitAfter(ctx, d, err)
	}
}

// fakeProc is a process whose n-th run (from 1) is life(ctx, n), run as a
// RunnableFunc; a nil life serves until its ctx is done. It counts its
// runs and the runs still active, and records the ctx and start time of
// each run.
type fakeProc struct {
	life func(ctx context.Context, run int) error

	mu     sync.Mutex
	runs   int               // calls of Run
	active int               // runs that have not returned
	ctxs   []context.Context // the ctx of every run
	starts []time.Time       // when every run started
}

func (p *fakeProc) Run(ctx context.Context, callback supervisor.Callback) error {
	p.mu.Lock()
	p.runs++
	p.active++
	p.ctxs = append(p.ctxs, ctx)
	p.starts = append(p.starts, time.Now())
	run := p.runs
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.active--
		p.mu.Unlock()
	}()
	return supervisor.RunnableFunc(func(ctx context.Context) error {
		if p.life == nil {
			return serve(ctx)
		}
		return p.life(ctx, run)
	}).Run(ctx, callback)
}

// counts returns how many times the process was run and how many of those
// runs have not returned yet.
func (p *fakeProc) counts() (runs, active int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.runs, p.active
}

// contexts returns the ctx of every run so far.
func (p *fakeProc) contexts() []context.Context {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ctxs)
}

// startTimes returns when each run started.
func (p *fakeProc) startTimes() []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.starts)
}

// failingSiblings returns the processes a, b and c (to be started in that
// order) of which b fails once, 1s after its start.
func failingSiblings() map[string]*fakeProc {
	return map[string]*fakeProc{
		"a": {},
		"b": {life: failRuns(time.Second, map[int]error{1: errBoom})},
		"c": {},
	}
}

// service is a custom Runnable (not a RunnableFunc): its function gets the
// callback and decides when the process is ready.
type service func(ctx context.Context, callback supervisor.Callback) error

func (f service) Run(ctx context.Context, callback supervisor.Callback) error {
	return f(ctx, callback)
}

// withPolicy overrides Options.Restart for one process.
type withPolicy struct {
	supervisor.Runnable
	policy supervisor.RestartPolicy
}

func (p withPolicy) RestartPolicy() supervisor.RestartPolicy { return p.policy }

// Tables.

// scanOnly hides the Watcher of a MapTable: the supervisor sees its changes
// at scans only.
type scanOnly[K comparable, V any] struct {
	rows *supervisor.MapTable[K, V]
}

func (t scanOnly[K, V]) Get(ctx context.Context, key K) (V, error) {
	return t.rows.Get(ctx, key)
}

func (t scanOnly[K, V]) Iter(ctx context.Context) (supervisor.Iterator[K, V], error) {
	return t.rows.Iter(ctx)
}

// procTable returns a MapTable of procs, put in the order of keys.
func procTable(procs map[string]*fakeProc, keys ...string) *supervisor.MapTable[string, *fakeProc] {
	rows := supervisor.NewMapTable[string, *fakeProc]()
	for _, k := range keys {
		rows.Put(k, procs[k])
	}
	return rows
}

var errBrokenRow = errors.New("broken row")

// faultyTable is an unwatched table whose reads can be made to fail: a
// broken row's Get fails (in the iterator too), Iter can fail, and a walk
// can end early with an error after its first row.
type faultyTable struct {
	rows *supervisor.MapTable[string, *fakeProc]

	mu      sync.Mutex
	broken  map[string]bool
	iterErr error // Iter fails with it
	walkErr error // the walk ends with it after the first row
}

// newFaultyTable returns a faultyTable of rows, without faults.
func newFaultyTable(rows *supervisor.MapTable[string, *fakeProc]) *faultyTable {
	return &faultyTable{rows: rows, broken: map[string]bool{}}
}

// set changes the faults under the table's lock.
func (t *faultyTable) set(f func(t *faultyTable)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f(t)
}

func (t *faultyTable) setBroken(key string, broken bool) {
	t.set(func(t *faultyTable) { t.broken[key] = broken })
}

func (t *faultyTable) isBroken(key string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.broken[key]
}

func (t *faultyTable) Get(ctx context.Context, key string) (*fakeProc, error) {
	if t.isBroken(key) {
		return nil, fmt.Errorf("get %s: %w", key, errBrokenRow)
	}
	return t.rows.Get(ctx, key)
}

func (t *faultyTable) Iter(ctx context.Context) (supervisor.Iterator[string, *fakeProc], error) {
	t.mu.Lock()
	iterErr, walkErr := t.iterErr, t.walkErr
	t.mu.Unlock()
	if iterErr != nil {
		return nil, iterErr
	}
	it, err := t.rows.Iter(ctx)
	if err != nil {
		return nil, err
	}
	return &faultyIterator{Iterator: it, table: t, walkErr: walkErr}, nil
}

type faultyIterator struct {
	supervisor.Iterator[string, *fakeProc]
	table   *faultyTable
	walkErr error
	seen    int
	cut     bool
}

func (it *faultyIterator) Next() bool {
	if it.walkErr != nil && it.seen == 1 {
		it.cut = true
		return false
	}
	it.seen++
	return it.Iterator.Next()
}

func (it *faultyIterator) Get(ctx context.Context) (string, *fakeProc, error) {
	k, v, err := it.Iterator.Get(ctx)
	if err == nil && it.table.isBroken(k) {
		return k, nil, fmt.Errorf("read %s: %w", k, errBrokenRow)
	}
	return k, v, err
}

func (it *faultyIterator) Err() error {
	if it.cut {
		return it.walkErr
	}
	return it.Iterator.Err()
}

// Options, kernels and backoff.

// quietLogger keeps the logs of supervisors and kernels out of the test
// output.
func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// quietOptions returns options that log nothing, named name (empty: the
// default), that record events into rec unless it is nil.
func quietOptions(name string, rec *recorder) supervisor.Options {
	o := supervisor.Options{Name: name, Logger: quietLogger()}
	if rec != nil {
		o.OnEvent = rec.record
	}
	return o
}

// quietKernel returns a kernel that logs nothing and decides by policy
// (nil: DefaultPolicy).
func quietKernel(policy supervisor.Policy) *supervisor.ErrorKernel {
	return supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quietLogger(), Policy: policy})
}

// always is a policy that always answers action.
func always(action supervisor.Action) supervisor.Policy {
	return func(context.Context, supervisor.Failure) supervisor.Action { return action }
}

// failureLog records the failures a policy was asked about.
type failureLog struct {
	mu       sync.Mutex
	failures []supervisor.Failure
}

// deciding returns a policy that records each failure, then answers what
// policy answers.
func (l *failureLog) deciding(policy supervisor.Policy) supervisor.Policy {
	return func(ctx context.Context, f supervisor.Failure) supervisor.Action {
		l.mu.Lock()
		l.failures = append(l.failures, f)
		l.mu.Unlock()
		return policy(ctx, f)
	}
}

// answer returns a policy that records each failure and answers action.
func (l *failureLog) answer(action supervisor.Action) supervisor.Policy {
	return l.deciding(always(action))
}

// all returns the failures recorded so far, in order.
func (l *failureLog) all() []supervisor.Failure {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.failures)
}

// constantBackoff makes every restart delay d, so delays are exact in
// virtual time.
func constantBackoff(d time.Duration) func() backoff.BackOff {
	return func() backoff.BackOff { return backoff.NewConstantBackOff(d) }
}

// Run.

// backgroundRun is a Supervisor's Run in the background of a synctest
// bubble. Its callback returns when shutdown is called (a graceful
// shutdown) or when its ctx is done.
type backgroundRun struct {
	cancel     context.CancelFunc
	finish     func() // makes the callback return
	called     chan struct{}
	callbackCx context.Context // the callback's ctx, once called is closed
	done       chan struct{}
	err        error     // Run's error, once done is closed
	returnedAt time.Time // when Run returned, once done is closed
}

// startRun runs sup until the test stops it (or ends), and lets the bubble
// settle before returning; Run's first start may still be under way.
func startRun[K comparable, P supervisor.Runnable](t *testing.T, sup *supervisor.Supervisor[K, P]) *backgroundRun {
	ctx, cancel := context.WithCancel(context.Background())
	finish := make(chan struct{})
	r := &backgroundRun{
		cancel: cancel,
		finish: sync.OnceFunc(func() { close(finish) }),
		called: make(chan struct{}),
		done:   make(chan struct{}),
	}
	go func() {
		defer close(r.done)
		r.err = sup.Run(ctx, func(ctx context.Context) error {
			r.callbackCx = ctx
			close(r.called)
			select {
			case <-finish:
			case <-ctx.Done():
			}
			return nil
		})
		r.returnedAt = time.Now()
	}()
	t.Cleanup(func() { _ = r.stop() })
	synctest.Wait()
	return r
}

// startRunReady is startRun that also waits for Run to call its callback,
// failing the test if Run returns first.
func startRunReady[K comparable, P supervisor.Runnable](t *testing.T, sup *supervisor.Supervisor[K, P]) *backgroundRun {
	t.Helper()
	r := startRun(t, sup)
	select {
	case <-r.called:
	case <-r.done:
		require.FailNow(t, "Run returned before calling its callback", "%v", r.err)
	}
	// Let the events of the start be delivered: their order relative to
	// the callback is checked by
	// TestSupervisorCleanLifeEventsStayInOrderWithASlowLogger.
	synctest.Wait()
	return r
}

// stop cancels Run's ctx and returns Run's error.
func (r *backgroundRun) stop() error {
	r.cancel()
	return r.wait()
}

// shutdown makes Run's callback return and returns Run's error.
func (r *backgroundRun) shutdown() error {
	r.finish()
	return r.wait()
}

// wait returns Run's error once it returned.
func (r *backgroundRun) wait() error {
	<-r.done
	return r.err
}

// returned reports whether Run has returned, without waiting.
func (r *backgroundRun) returned() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// callbackCtx returns the ctx Run passed to its callback, nil if Run
// returned without calling it.
func (r *backgroundRun) callbackCtx() context.Context {
	select {
	case <-r.called:
	case <-r.done:
	}
	select {
	case <-r.called: // closed before done if at all
		return r.callbackCx
	default:
		return nil
	}
}

// Status.

// findStatus returns the status of key, and whether there is one.
func findStatus[K comparable](statuses []supervisor.ProcessStatus[K], key K) (supervisor.ProcessStatus[K], bool) {
	for _, st := range statuses {
		if st.Key == key {
			return st, true
		}
	}
	return supervisor.ProcessStatus[K]{}, false
}

// requireStatus returns the status of key, failing the test if it is
// absent.
func requireStatus[K comparable](t *testing.T, statuses []supervisor.ProcessStatus[K], key K) supervisor.ProcessStatus[K] {
	t.Helper()
	st, ok := findStatus(statuses, key)
	if !ok {
		require.FailNow(t, "no status for key", "%v in %v", key, statuses)
	}
	return st
}

// statusKeys returns the keys of statuses, in order.
func statusKeys[K comparable](statuses []supervisor.ProcessStatus[K]) []K {
	var keys []K
	for _, st := range statuses {
		keys = append(keys, st.Key)
	}
	return keys
}

// Strings.

// stringCase is a value and the String it must have.
type stringCase[T fmt.Stringer] struct {
	value T
	want  string
}

// requireStrings checks the String of each value, in a subtest named after
// the string it must have.
func requireStrings[T fmt.Stringer](t *testing.T, cases []stringCase[T]) {
	for _, tt := range cases {
		t.Run(tt.want, func(t *testing.T) {
			require.Equal(t, tt.want, tt.value.String())
		})
	}
}
