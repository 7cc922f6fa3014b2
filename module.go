package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// AppOptions configures an App. The zero value works: every zero field
// takes the default stated beside it.
type AppOptions struct {
	Name                    string        // in logs and the kernel's process names of control functions; default "app"
	Kernel                  *ErrorKernel  // nil: a private kernel with DefaultPolicy
	Logger                  *slog.Logger  // nil: slog.Default()
	Prep                    func() error  // runs before any module's prep
	StartTimeout            time.Duration // per module prep/start; default 2m
	StopTimeout             time.Duration // per module stop + its workers; default 1m
	MaxConcurrentMicroTasks int           // default 2×GOMAXPROCS, never below 2
	MediumPriorityMaxWait   time.Duration // default 3s
	LowPriorityMaxWait      time.Duration // default 15s
	MaxConcurrentTasks      int           // task queue slots; default 1 (serial)
	TaskSlotTimeout         time.Duration // a task running longer frees its slot; default 1m
	DefaultMaxDelay         time.Duration // Task.MaxDelay default; default 3m
	MinRepeatInterval       time.Duration // Task.Repeat floor; default 1m
	MaxServiceBackoff       time.Duration // cap of service worker delays; default 1m
}

// withDefaults fills the zero fields; negative ones fall back to their
// defaults with a logged warning (the options are read after NewApp, which
// has no error to return).
func (o AppOptions) withDefaults() AppOptions {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Name == "" {
		o.Name = "app"
	}
	durations := []struct {
		name  string
		value *time.Duration
		def   time.Duration
	}{
		{"StartTimeout", &o.StartTimeout, 2 * time.Minute},
		{"StopTimeout", &o.StopTimeout, time.Minute},
		{"MediumPriorityMaxWait", &o.MediumPriorityMaxWait, 3 * time.Second},
		{"LowPriorityMaxWait", &o.LowPriorityMaxWait, 15 * time.Second},
		{"TaskSlotTimeout", &o.TaskSlotTimeout, time.Minute},
		{"DefaultMaxDelay", &o.DefaultMaxDelay, 3 * time.Minute},
		{"MinRepeatInterval", &o.MinRepeatInterval, time.Minute},
		{"MaxServiceBackoff", &o.MaxServiceBackoff, time.Minute},
	}
	for _, d := range durations {
		if *d.value < 0 {
			o.Logger.Warn("supervisor: negative AppOptions."+d.name+", using the default", "app", o.Name, "value", *d.value)
			*d.value = 0
		}
		if *d.value == 0 {
			*d.value = d.def
		}
	}
	if o.MaxConcurrentTasks < 0 {
		o.Logger.Warn("supervisor: negative AppOptions.MaxConcurrentTasks, using the default", "app", o.Name, "value", o.MaxConcurrentTasks)
		o.MaxConcurrentTasks = 0
	}
	if o.MaxConcurrentTasks == 0 {
		o.MaxConcurrentTasks = 1
	}
	o.MaxConcurrentMicroTasks = microTaskLimit(o.MaxConcurrentMicroTasks)
	return o
}

// microTaskLimit is n, or 2×GOMAXPROCS when n is 0 or negative, never
// below 2.
func microTaskLimit(n int) int {
	if n <= 0 {
		n = 2 * runtime.GOMAXPROCS(0)
	}
	return max(n, 2)
}

// App is a program made of Modules: it prepares, starts and stops them in
// dependency order, runs their workers, tasks and microtasks, and sends
// every failure to one ErrorKernel. Two Apps in one process share nothing.
type App struct {
	opts   AppOptions
	kernel *ErrorKernel
	logger *slog.Logger

	lifecycle    sync.Mutex // serialises Start, ManageModules and Shutdown
	mu           sync.Mutex
	modules      []*Module // registration order
	byName       map[string]*Module
	started      bool // Start was called
	shuttingDown chan struct{}
	shutdownOnce sync.Once
	shutdownDone chan struct{}
	shutdownErr  error
	exitCode     int
	exitCodeSet  bool
	managed      bool
	notifying    int           // changed callbacks under way
	notified     chan struct{} // closed when notifying drops to 0; nil when nobody waits
	changed      func(*Module)
	startOrder   []*Module // dependency order, set by Start
	microLimit   int
	tasks        taskScheduler // task queue, slots and timer heap; see task.go

	micro microScheduler // see microtask.go
}

// NewApp returns an App with the given options.
func NewApp(o AppOptions) *App {
	o = o.withDefaults()
	kernel := o.Kernel
	if kernel == nil {
		kernel = NewErrorKernel(KernelOptions{Logger: o.Logger})
	}
	return &App{
		opts:         o,
		kernel:       kernel,
		logger:       o.Logger,
		byName:       map[string]*Module{},
		shuttingDown: make(chan struct{}),
		shutdownDone: make(chan struct{}),
		microLimit:   o.MaxConcurrentMicroTasks,
	}
}

// Kernel returns the App's error kernel.
func (a *App) Kernel() *ErrorKernel { return a.kernel }

// ModuleFuncs are a module's control functions; each is optional.
type ModuleFuncs struct {
	Prep  func(ctx context.Context, m *Module) error // check config; before any start
	Start func(ctx context.Context, m *Module) error // begin work; start workers/tasks
	Stop  func(ctx context.Context, m *Module) error // after the module's workers ended
}

// ModuleStatus is where a module is in its life. A module goes Dead →
// Preparing → Offline → Starting → Online → Stopping → Offline, and may
// start again from Offline. It is Dead only before its prep ran (a failed
// prep leaves it Dead with failure status Error).
type ModuleStatus uint8

const (
	StatusDead      ModuleStatus = iota // before its prep ran
	StatusPreparing                     // its prep runs
	StatusOffline                       // prepared, not running
	StatusStopping                      // its workers are being stopped, then its Stop runs
	StatusStarting                      // its Start runs
	StatusOnline                        // started
)

// String returns "dead", "preparing", "offline", "stopping", "starting" or
// "online".
func (s ModuleStatus) String() string {
	switch s {
	case StatusDead:
		return "dead"
	case StatusPreparing:
		return "preparing"
	case StatusOffline:
		return "offline"
	case StatusStopping:
		return "stopping"
	case StatusStarting:
		return "starting"
	case StatusOnline:
		return "online"
	}
	return fmt.Sprintf("ModuleStatus(%d)", uint8(s))
}

// FailureLevel is the severity of a module's failure status.
type FailureLevel uint8

const (
	FailureNone    FailureLevel = iota // no failure
	FailureHint                        // something to look at
	FailureWarning                     // degraded
	FailureError                       // broken
)

// String returns "none", "hint", "warning" or "error".
func (l FailureLevel) String() string {
	switch l {
	case FailureNone:
		return "none"
	case FailureHint:
		return "hint"
	case FailureWarning:
		return "warning"
	case FailureError:
		return "error"
	}
	return fmt.Sprintf("FailureLevel(%d)", uint8(l))
}

// Module is one part of an App, with its own context, workers, tasks,
// microtasks, failure status and events.
type Module struct {
	app  *App
	name string
	fns  ModuleFuncs
	deps []string

	// guarded by app.mu
	dependencies   []*Module
	status         ModuleStatus
	ctx            context.Context
	cancel         context.CancelFunc
	stopping       chan struct{} // closed when the module starts stopping
	startCompleted chan struct{} // closed when its start completed (or failed)
	enabled        bool
	upcoming       bool     // a bringUp will start it
	pendingHooks   []func() // hook runs triggered while upcoming
	failureLevel   FailureLevel
	failureID      string
	failureMsg     string
	events         map[string]*moduleEvent
	running        map[*unit]struct{} // workers, tasks and microtasks under way
	idle           chan struct{}      // closed when running becomes empty; nil when nobody waits

	micro *microModule // its microtask counts; guarded by app.micro.mu
}

// unit is one worker, task or microtask run, for the module's stop to wait
// for and to name when it does not end.
type unit struct {
	kind, name string
}

// Register adds a module named name, with control functions fns, that
// depends on the modules named deps (they need not be registered yet; Start
// checks them). An empty or duplicate name, or a Register after Start, is
// an error.
func (a *App) Register(name string, fns ModuleFuncs, deps ...string) (*Module, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case name == "":
		return nil, fmt.Errorf("supervisor: app %q: register: empty module name", a.opts.Name)
	case a.byName[name] != nil:
		return nil, fmt.Errorf("supervisor: app %q: register %q: duplicate module name", a.opts.Name, name)
	case a.started:
		return nil, fmt.Errorf("supervisor: app %q: register %q: the app has started", a.opts.Name, name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a module's context is live only while it runs
	m := &Module{
		app: a, name: name, fns: fns, deps: slices.Clone(deps),
		ctx: ctx, cancel: cancel,
		stopping:       make(chan struct{}),
		startCompleted: make(chan struct{}),
		enabled:        true,
		events:         map[string]*moduleEvent{},
		running:        map[*unit]struct{}{},
	}
	a.modules = append(a.modules, m)
	a.byName[name] = m
	return m, nil
}

// Module returns the module named name, or nil.
func (a *App) Module(name string) *Module {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.byName[name]
}

// Modules returns the modules in registration order.
func (a *App) Modules() []*Module {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.modules)
}

// Name returns the module's name.
func (m *Module) Name() string { return m.name }

// Ctx returns the module's context: live while the module is starting or
// online, cancelled when it stops.
func (m *Module) Ctx() context.Context {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	return m.ctx
}

// Status returns the module's status.
func (m *Module) Status() ModuleStatus {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	return m.status
}

// Online reports whether the module is online.
func (m *Module) Online() bool { return m.Status() == StatusOnline }

// OnlineSoon reports whether the module is starting or online.
func (m *Module) OnlineSoon() bool {
	s := m.Status()
	return s == StatusStarting || s == StatusOnline
}

// IsStopping reports whether the module is stopping.
func (m *Module) IsStopping() bool { return m.Status() == StatusStopping }

// Stopping returns a channel closed when the module starts stopping; it is
// re-armed when the module starts again.
func (m *Module) Stopping() <-chan struct{} {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	return m.stopping
}

// StartCompleted returns a channel closed when the module's start has
// completed (successfully or not); it is re-armed when the module starts
// again.
func (m *Module) StartCompleted() <-chan struct{} {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	return m.startCompleted
}

// Dependencies returns the modules this one depends on (linked by Start).
func (m *Module) Dependencies() []*Module {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	return slices.Clone(m.dependencies)
}

// Start links the dependencies (an unknown name or a cycle is an error
// naming the modules, and nothing starts), runs AppOptions.Prep, then every
// module's prep in dependency order, then every start in dependency order
// (ties in registration order). A failed start (an error, a panic or
// StartTimeout) stops the modules already started in reverse order, does
// not call the failed module's Stop, sets its failure status Error
// "<module>:start-failed" and returns an error naming it. ErrCleanExit
// from a prep ends start-up without error: Start returns it.
func (a *App) Start(ctx context.Context) error {
	a.mu.Lock()
	if a.started || a.IsShuttingDown() {
		a.mu.Unlock()
		return fmt.Errorf("supervisor: app %q: start: already started or shut down", a.opts.Name)
	}
	a.started = true
	order, err := a.linkLocked()
	if err != nil {
		a.mu.Unlock()
		return err
	}
	a.startOrder = order
	managed := a.managed
	a.mu.Unlock()

	if prep := a.opts.Prep; prep != nil {
		if err := a.control(ctx, "app", "prep", func(context.Context) error { return prep() }); err != nil {
			if errors.Is(err, ErrCleanExit) {
				return err
			}
			return fmt.Errorf("supervisor: app %q: prep: %w", a.opts.Name, err)
		}
	}
	wanted := order
	if managed {
		wanted = a.wantedModules()
	}
	// A Shutdown that began meanwhile wins; one that begins during bringUp
	// ends it (see bringUp) and stops what it started.
	a.lifecycle.Lock()
	defer a.lifecycle.Unlock()
	if a.IsShuttingDown() {
		return fmt.Errorf("supervisor: app %q: start: the app is shutting down: %w", a.opts.Name, ErrNotRunning)
	}
	return a.bringUp(ctx, wanted)
}

// bringUp preps and starts the given modules (in dependency order) that
// are not running yet; on a failure it stops the ones it started.
func (a *App) bringUp(ctx context.Context, modules []*Module) error {
	for _, m := range modules {
		if err := m.prep(ctx); err != nil {
			return err
		}
	}
	a.mu.Lock()
	for _, m := range modules {
		m.upcoming = m.status == StatusOffline
	}
	a.mu.Unlock()
	defer func() { // the modules left unstarted drop their pending hooks
		a.mu.Lock()
		for _, m := range modules {
			m.upcoming, m.pendingHooks = false, nil
		}
		a.mu.Unlock()
	}()
	var started []*Module
	for _, m := range modules {
		if m.Status() != StatusOffline {
			continue
		}
		err := error(nil)
		if a.IsShuttingDown() {
			err = fmt.Errorf("supervisor: app %q: start of module %q: the app is shutting down: %w", a.opts.Name, m.name, ErrNotRunning)
		} else {
			err = m.start(ctx)
		}
		if err != nil {
			for i := len(started) - 1; i >= 0; i-- {
				if stopErr := started[i].stop(); stopErr != nil {
					a.logger.Error("supervisor: stopping module after a failed start", "app", a.opts.Name, "module", started[i].name, "err", stopErr)
				}
			}
			return err
		}
		started = append(started, m)
	}
	return nil
}

// linkLocked resolves every module's dependencies and returns the modules
// in dependency order, ties in registration order; a.mu held.
func (a *App) linkLocked() ([]*Module, error) {
	for _, m := range a.modules {
		m.dependencies = m.dependencies[:0]
		for _, d := range m.deps {
			dep := a.byName[d]
			if dep == nil {
				return nil, fmt.Errorf("supervisor: app %q: module %q depends on unknown module %q", a.opts.Name, m.name, d)
			}
			m.dependencies = append(m.dependencies, dep)
		}
	}
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[*Module]int{}
	var order []*Module
	var visit func(m *Module, path []string) error
	visit = func(m *Module, path []string) error {
		switch state[m] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("supervisor: app %q: dependency cycle: %s", a.opts.Name, strings.Join(append(path, m.name), " -> "))
		}
		state[m] = visiting
		for _, d := range m.dependencies {
			if err := visit(d, append(path, m.name)); err != nil {
				return err
			}
		}
		state[m] = done
		order = append(order, m)
		return nil
	}
	for _, m := range a.modules {
		if err := visit(m, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// control runs a control function (prep, start, stop) of module with a
// StartTimeout/StopTimeout-bounded context, turning a panic into a
// *ModuleError failure reported to the kernel.
func (a *App) control(ctx context.Context, module, kind string, fn func(context.Context) error) error {
	timeout := a.opts.StartTimeout
	if kind == "stop" {
		timeout = a.opts.StopTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				errc <- newPanicError(v)
			}
		}()
		errc <- fn(cctx)
	}()
	var err error
	select {
	case err = <-errc:
	case <-cctx.Done():
	}
	if err == nil && cctx.Err() != nil { // timed out, whether or not fn returned at that instant
		err = fmt.Errorf("%s of module %q: %w (%v)", kind, module, context.Cause(cctx), timeout)
	}
	if err != nil && !errors.Is(err, ErrCleanExit) {
		me := a.moduleError(module, kind, "module-control", err)
		a.kernel.Report(context.WithoutCancel(ctx), Failure{Process: module + "/" + kind, Err: me, Exited: true, Restart: Temporary})
		return me
	}
	return err
}

// callControl runs the module's control function fn (prep, start or stop),
// if it has one.
func (m *Module) callControl(ctx context.Context, kind string, fn func(context.Context, *Module) error) error {
	if fn == nil {
		return nil
	}
	return m.app.control(ctx, m.name, kind, func(ctx context.Context) error { return fn(ctx, m) })
}

func (m *Module) prep(ctx context.Context) error {
	a := m.app
	a.mu.Lock()
	if m.status != StatusDead {
		a.mu.Unlock()
		return nil
	}
	m.status = StatusPreparing
	a.mu.Unlock()
	err := m.callControl(ctx, "prep", m.fns.Prep)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		m.status = StatusDead
		if errors.Is(err, ErrCleanExit) {
			return err
		}
		m.setFailureLocked(FailureError, m.name+":prep-failed", err.Error())
		return fmt.Errorf("supervisor: app %q: prep of module %q: %w", a.opts.Name, m.name, err)
	}
	m.status = StatusOffline
	return nil
}

func (m *Module) start(ctx context.Context) error {
	a := m.app
	a.mu.Lock()
	if m.status != StatusOffline {
		a.mu.Unlock()
		return nil
	}
	m.status = StatusStarting
	m.ctx, m.cancel = context.WithCancel(context.WithoutCancel(ctx))
	m.stopping = make(chan struct{})
	completed := m.startCompleted
	a.mu.Unlock()
	err := m.callControl(ctx, "start", m.fns.Start)
	a.mu.Lock()
	m.upcoming = false
	pending := m.pendingHooks
	m.pendingHooks = nil
	if err != nil {
		m.cancel()
		m.status = StatusOffline
		m.setFailureLocked(FailureError, m.name+":start-failed", err.Error())
		close(completed)
		m.startCompleted = make(chan struct{})
		a.mu.Unlock()
		close(m.stopping) // ends service worker backoffs; workers see "stopping"
		m.awaitUnits()    // what the failed start began
		return fmt.Errorf("supervisor: app %q: start of module %q: %w", a.opts.Name, m.name, err)
	}
	m.status = StatusOnline
	close(completed)
	a.mu.Unlock()
	a.tasks.moduleOnline(m)
	for _, run := range pending {
		run()
	}
	a.notifyChanged(m)
	return nil
}

// stop cancels the module's context, waits for its workers, tasks and
// microtasks (StopTimeout, then logs what is still running), and calls
// its Stop.
func (m *Module) stop() error {
	a := m.app
	a.mu.Lock()
	if m.status != StatusOnline {
		a.mu.Unlock()
		return nil
	}
	m.status = StatusStopping
	close(m.stopping)
	m.cancel()
	a.mu.Unlock()
	m.awaitUnits()
	err := m.callControl(context.Background(), "stop", m.fns.Stop)
	a.mu.Lock()
	m.status = StatusOffline
	m.clearFailureLocked()
	m.startCompleted = make(chan struct{})
	a.mu.Unlock()
	a.notifyChanged(m)
	if err != nil {
		return fmt.Errorf("supervisor: app %q: stop of module %q: %w", a.opts.Name, m.name, err)
	}
	return nil
}

// awaitUnits waits for the module's workers, tasks and microtasks, at most
// StopTimeout, then logs each one still running.
func (m *Module) awaitUnits() {
	a := m.app
	if !a.awaitIdle(func() bool { return len(m.running) > 0 }, &m.idle) {
		names := a.micro.runningNames(m) // the scheduler's lock comes before a.mu
		a.mu.Lock()
		for u := range m.running {
			if u.kind != "microtask" { // microtasks are named one by one above
				names = append(names, u.kind+" "+u.name)
			}
		}
		a.mu.Unlock()
		sort.Strings(names)
		a.logger.Error("supervisor: module stop timed out; still running", "app", a.opts.Name, "module", m.name,
			"timeout", a.opts.StopTimeout, "running", strings.Join(names, ", "))
	}
}

// awaitIdle waits, at most StopTimeout, until busy (read under a.mu) is
// false, and reports whether it is. *idle is the channel the side that
// makes busy false closes (see signalIdleLocked); it is made here when
// first needed.
func (a *App) awaitIdle(busy func() bool, idle *chan struct{}) bool {
	a.mu.Lock()
	if !busy() {
		a.mu.Unlock()
		return true
	}
	if *idle == nil {
		*idle = make(chan struct{})
	}
	done := *idle
	a.mu.Unlock()
	timer := time.NewTimer(a.opts.StopTimeout)
	defer timer.Stop()
	select {
	case <-done:
		return true
	case <-timer.C:
		return false
	}
}

// signalIdleLocked wakes an awaitIdle on *idle, if any; a.mu held.
func signalIdleLocked(idle *chan struct{}) {
	if *idle != nil {
		close(*idle)
		*idle = nil
	}
}

// track registers a worker, task or microtask run of the module; call
// the returned function when it ends.
func (m *Module) track(kind, name string) func() {
	u := &unit{kind: kind, name: name}
	a := m.app
	a.mu.Lock()
	m.running[u] = struct{}{}
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		delete(m.running, u)
		if len(m.running) == 0 {
			signalIdleLocked(&m.idle)
		}
		a.mu.Unlock()
	}
}

// Shutdown stops the modules in reverse dependency order: for each, cancel
// its context, wait for its workers, tasks and microtasks (up to
// StopTimeout), then call its Stop. Stop errors are joined and returned;
// none stops the rest. A second Shutdown does nothing, logs that it was
// called again, and returns the first one's result once it completed.
func (a *App) Shutdown(ctx context.Context) error {
	first := false
	a.shutdownOnce.Do(func() {
		first = true
		close(a.shuttingDown)
	})
	if !first {
		a.logger.Info("supervisor: shutdown already called", "app", a.opts.Name)
		select {
		case <-a.shutdownDone:
			return a.shutdownErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	a.tasks.close()
	a.lifecycle.Lock()
	a.mu.Lock()
	order := slices.Clone(a.startOrder)
	a.mu.Unlock()
	var errs []error
	for i := len(order) - 1; i >= 0; i-- {
		if err := order[i].stop(); err != nil {
			errs = append(errs, err)
		}
	}
	a.lifecycle.Unlock()
	a.awaitNotifications()
	a.shutdownErr = errors.Join(errs...)
	close(a.shutdownDone)
	return a.shutdownErr
}

// ShuttingDown returns a channel closed when Shutdown begins.
func (a *App) ShuttingDown() <-chan struct{} { return a.shuttingDown }

// IsShuttingDown reports whether Shutdown has begun.
func (a *App) IsShuttingDown() bool {
	select {
	case <-a.shuttingDown:
		return true
	default:
		return false
	}
}

// SetExitStatusCode sets the code Run returns.
func (a *App) SetExitStatusCode(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.exitCode, a.exitCodeSet = n, true
}

// GetExitStatusCode blocks until the shutdown completed, then returns the
// exit code.
func (a *App) GetExitStatusCode() int {
	<-a.shutdownDone
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.exitCode
}

// Run starts the App, waits for ctx, SIGINT/SIGTERM or Shutdown, shuts it
// down and returns the exit code: 0 when clean (also after ErrCleanExit),
// 1 after a start error unless a code was set. Run installs signal
// handlers, so it is not for testing/synctest bubbles: tests use Start and
// Shutdown.
func (a *App) Run(ctx context.Context) int {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)
	if err := a.Start(context.WithoutCancel(ctx)); err != nil {
		if !errors.Is(err, ErrCleanExit) {
			a.logger.Error("supervisor: app start failed", "app", a.opts.Name, "err", err)
			a.mu.Lock()
			if !a.exitCodeSet {
				a.exitCode = 1
			}
			a.mu.Unlock()
		}
		_ = a.Shutdown(context.WithoutCancel(ctx))
		return a.GetExitStatusCode()
	}
	select {
	case <-ctx.Done():
	case sig := <-signals:
		a.logger.Info("supervisor: signal received, shutting down", "app", a.opts.Name, "signal", sig.String())
	case <-a.shuttingDown:
	}
	if err := a.Shutdown(context.WithoutCancel(ctx)); err != nil {
		a.logger.Error("supervisor: shutdown", "app", a.opts.Name, "err", err)
	}
	return a.GetExitStatusCode()
}

// ModuleError is the error value of a failure of module code: a panic
// (Severity "panic", with the stack), an error (Severity "error") or a
// note (Severity "info"). TaskType is "worker", "service-worker", "task",
// "microtask" or "module-control". It wraps the original error, so
// errors.Is and IsPanic see through it.
type ModuleError struct {
	Message    string
	ModuleName string
	TaskName   string
	TaskType   string
	Severity   string
	PanicValue any
	StackTrace string
	err        error
}

// Error returns the message; ModuleName, TaskName and TaskType say where
// it happened (Failure.Process names them too).
func (e *ModuleError) Error() string { return e.Message }

// Unwrap returns the original error.
func (e *ModuleError) Unwrap() error { return e.err }

// moduleError wraps err (a *PanicError for panics) as a *ModuleError.
func (a *App) moduleError(module, task, taskType string, err error) *ModuleError {
	var me *ModuleError
	if errors.As(err, &me) {
		return me
	}
	me = &ModuleError{Message: err.Error(), ModuleName: module, TaskName: task, TaskType: taskType, Severity: "error", err: err}
	if pe, ok := IsPanic(err); ok {
		me.Severity = "panic"
		me.PanicValue = pe.Value
		me.StackTrace = string(pe.Stack)
	}
	return me
}

// NewErrorMessage returns a ModuleError of severity "error" for err raised
// by the module's task taskName.
func (m *Module) NewErrorMessage(taskName string, err error) *ModuleError {
	if err == nil {
		err = errors.New("nil error")
	}
	return &ModuleError{Message: err.Error(), ModuleName: m.name, TaskName: taskName, TaskType: "module-control", Severity: "error", err: err}
}

// NewInfoMessage returns a ModuleError of severity "info".
func (m *Module) NewInfoMessage(message string) *ModuleError {
	return &ModuleError{Message: message, ModuleName: m.name, TaskType: "module-control", Severity: "info"}
}

// NewPanicError returns a ModuleError of severity "panic" for panicValue,
// recovered in the module's task taskName of type taskType, with the
// current stack.
func (m *Module) NewPanicError(taskName, taskType string, panicValue any) *ModuleError {
	pe := &PanicError{Value: panicValue, Stack: debug.Stack()}
	return &ModuleError{
		Message: pe.Error(), ModuleName: m.name, TaskName: taskName, TaskType: taskType, Severity: "panic",
		PanicValue: panicValue, StackTrace: string(pe.Stack), err: pe,
	}
}

// Failure status: one slot per module.

// Hint sets the module's failure status to a hint, unless id is already
// the current one.
func (m *Module) Hint(id, msg string) { m.setFailure(FailureHint, id, msg) }

// Warning sets the module's failure status to a warning, unless id is
// already the current one.
func (m *Module) Warning(id, msg string) { m.setFailure(FailureWarning, id, msg) }

// Error sets the module's failure status to an error, unless id is already
// the current one.
func (m *Module) Error(id, msg string) { m.setFailure(FailureError, id, msg) }

// Resolve clears the failure status if its ID is id; "" clears any.
func (m *Module) Resolve(id string) {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	if id == "" || id == m.failureID {
		m.clearFailureLocked()
	}
}

// FailureStatus returns the module's failure level, ID and message.
func (m *Module) FailureStatus() (FailureLevel, string, string) {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	return m.failureLevel, m.failureID, m.failureMsg
}

func (m *Module) setFailure(level FailureLevel, id, msg string) {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	m.setFailureLocked(level, id, msg)
}

func (m *Module) setFailureLocked(level FailureLevel, id, msg string) {
	if id == m.failureID && m.failureLevel != FailureNone {
		return
	}
	m.failureLevel, m.failureID, m.failureMsg = level, id, msg
}

func (m *Module) clearFailureLocked() {
	m.failureLevel, m.failureID, m.failureMsg = FailureNone, "", ""
}

// Events and hooks.

type moduleEvent struct {
	hooks []eventHook
}

type eventHook struct {
	owner       *Module
	description string
	fn          func(context.Context, any) error
}

// RegisterEvent declares an event the module triggers (typically in its
// Prep), so other modules can hook it.
func (m *Module) RegisterEvent(event string) {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	if m.events[event] == nil {
		m.events[event] = &moduleEvent{}
	}
}

// RegisterEventHook runs fn, as a worker of m, each time module triggers
// event. The module and its event must be registered already, so hooks are
// registered in the Prep of a module that depends on the source.
func (m *Module) RegisterEventHook(module, event, description string, fn func(context.Context, any) error) error {
	a := m.app
	a.mu.Lock()
	defer a.mu.Unlock()
	source := a.byName[module]
	switch {
	case source == nil:
		return fmt.Errorf("supervisor: module %q: hook %q: unknown module %q", m.name, description, module)
	case source.events[event] == nil:
		return fmt.Errorf("supervisor: module %q: hook %q: module %q has no event %q", m.name, description, module, event)
	case fn == nil:
		return fmt.Errorf("supervisor: module %q: hook %q: nil function", m.name, description)
	}
	ev := source.events[event]
	ev.hooks = append(ev.hooks, eventHook{owner: m, description: description, fn: fn})
	return nil
}

// TriggerEvent runs the hooks of the module's event with data. It never
// blocks: each hook runs as a worker of its module once both modules are
// online; a hook whose module is stopping (or offline) is dropped.
func (m *Module) TriggerEvent(event string, data any) {
	a := m.app
	a.mu.Lock()
	ev := m.events[event]
	var hooks []eventHook
	if ev != nil {
		hooks = slices.Clone(ev.hooks)
	}
	a.mu.Unlock()
	if ev == nil {
		a.logger.Warn("supervisor: trigger of an unregistered event", "app", a.opts.Name, "module", m.name, "event", event)
		return
	}
	for _, h := range hooks {
		m.runHook(event, h, data)
	}
}

// runHook starts the hook as a worker of its module, after both modules'
// starts completed; it is dropped if either is not online then.
func (m *Module) runHook(event string, h eventHook, data any) {
	a := m.app
	a.mu.Lock()
	if h.owner.upcoming && h.owner.status == StatusOffline {
		h.owner.pendingHooks = append(h.owner.pendingHooks, func() { m.runHook(event, h, data) })
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()
	if !h.owner.OnlineSoon() || !m.OnlineSoon() {
		return
	}
	sourceStarted, ownerStarted := m.StartCompleted(), h.owner.StartCompleted()
	h.owner.StartWorker("hook "+h.description, func(ctx context.Context) error {
		for _, started := range []<-chan struct{}{sourceStarted, ownerStarted} {
			select {
			case <-started:
			case <-ctx.Done():
				return nil
			}
		}
		if !m.Online() || !h.owner.Online() {
			return nil
		}
		return h.fn(ctx, data)
	})
}

// InjectEvent triggers targetModule's targetEvent with data, as if that
// module had triggered it; sourceEvent names the cause in logs. The target
// module and event must exist.
func (m *Module) InjectEvent(sourceEvent, targetModule, targetEvent string, data any) error {
	a := m.app
	a.mu.Lock()
	target := a.byName[targetModule]
	ok := target != nil && target.events[targetEvent] != nil
	a.mu.Unlock()
	if !ok {
		return fmt.Errorf("supervisor: module %q: inject %q: no event %q in module %q", m.name, sourceEvent, targetEvent, targetModule)
	}
	a.logger.Debug("supervisor: event injected", "app", a.opts.Name, "from", m.name+"/"+sourceEvent, "to", targetModule+"/"+targetEvent)
	target.TriggerEvent(targetEvent, data)
	return nil
}

// Module management.

// EnableModuleManagement makes Start and ManageModules run only the
// enabled modules and their dependencies, and calls changed (on its own
// goroutine, never under the App's locks) whenever a module's status
// changed. It reports false if management was already enabled.
func (a *App) EnableModuleManagement(changed func(*Module)) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.managed {
		return false
	}
	a.managed, a.changed = true, changed
	return true
}

func (a *App) notifyChanged(m *Module) {
	a.mu.Lock()
	changed := a.changed
	if changed != nil {
		a.notifying++
	}
	a.mu.Unlock()
	if changed == nil {
		return
	}
	go func() {
		defer func() {
			if v := recover(); v != nil {
				a.logger.Error("supervisor: module change callback panicked", "app", a.opts.Name, "module", m.name, "panic", v)
			}
			a.mu.Lock()
			if a.notifying--; a.notifying == 0 {
				signalIdleLocked(&a.notified)
			}
			a.mu.Unlock()
		}()
		changed(m)
	}()
}

// awaitNotifications waits (at most StopTimeout) for the changed callbacks
// under way, so none outlives Shutdown.
func (a *App) awaitNotifications() {
	if !a.awaitIdle(func() bool { return a.notifying > 0 }, &a.notified) {
		a.logger.Error("supervisor: module change callback still running after shutdown", "app", a.opts.Name, "timeout", a.opts.StopTimeout)
	}
}

// Enable enables the module and reports whether that changed anything.
func (m *Module) Enable() bool { return m.SetEnabled(true) }

// Disable disables the module and reports whether that changed anything.
func (m *Module) Disable() bool { return m.SetEnabled(false) }

// SetEnabled sets whether the module is enabled (default true) and reports
// whether that changed anything. Call ManageModules to act on it.
func (m *Module) SetEnabled(enabled bool) bool {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	changed := m.enabled != enabled
	m.enabled = enabled
	return changed
}

// Enabled reports whether the module is enabled.
func (m *Module) Enabled() bool {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	return m.enabled
}

// EnabledAsDependency reports whether an enabled module depends on this
// one, directly or not.
func (m *Module) EnabledAsDependency() bool {
	m.app.mu.Lock()
	defer m.app.mu.Unlock()
	return m.app.dependedOnLocked(m)
}

// neededLocked returns the enabled modules and their dependencies.
func (a *App) neededLocked() map[*Module]bool {
	needed := map[*Module]bool{}
	var mark func(m *Module)
	mark = func(m *Module) {
		if needed[m] {
			return
		}
		needed[m] = true
		for _, d := range m.dependencies {
			mark(d)
		}
	}
	for _, m := range a.modules {
		if m.enabled {
			mark(m)
		}
	}
	return needed
}

// dependedOnLocked reports whether an enabled module depends on m.
func (a *App) dependedOnLocked(m *Module) bool {
	for _, other := range a.modules {
		if other != m && other.enabled && a.dependsLocked(other, m) {
			return true
		}
	}
	return false
}

func (a *App) dependsLocked(m, on *Module) bool {
	for _, name := range m.deps { // by name: known before Start links them
		d := a.byName[name]
		if d == on || d != nil && d != m && a.dependsLocked(d, on) {
			return true
		}
	}
	return false
}

// wantedModules returns the modules management wants running, in
// dependency order.
func (a *App) wantedModules() []*Module {
	a.mu.Lock()
	defer a.mu.Unlock()
	needed := a.neededLocked()
	var wanted []*Module
	for _, m := range a.startOrder {
		if needed[m] {
			wanted = append(wanted, m)
		}
	}
	return wanted
}

// ManageModules starts exactly the enabled modules and their dependencies
// and stops the others, dependents before their dependencies, so a shared
// dependency stops only after its last enabled dependent. It needs module
// management enabled and the App started.
func (a *App) ManageModules() error {
	a.mu.Lock()
	managed, started, order := a.managed, a.started, slices.Clone(a.startOrder)
	a.mu.Unlock()
	switch {
	case !managed:
		return fmt.Errorf("supervisor: app %q: module management is not enabled", a.opts.Name)
	case !started || a.IsShuttingDown():
		return fmt.Errorf("supervisor: app %q: manage modules: %w", a.opts.Name, ErrNotRunning)
	}
	a.lifecycle.Lock()
	defer a.lifecycle.Unlock()
	if a.IsShuttingDown() {
		return fmt.Errorf("supervisor: app %q: manage modules: %w", a.opts.Name, ErrNotRunning)
	}
	wanted := a.wantedModules()
	isWanted := map[*Module]bool{}
	for _, m := range wanted {
		isWanted[m] = true
	}
	var errs []error
	for i := len(order) - 1; i >= 0; i-- {
		if m := order[i]; !isWanted[m] {
			if err := m.stop(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := a.bringUp(context.Background(), wanted); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ModuleSnapshot is the state of one module in an AppStatus.
type ModuleSnapshot struct {
	Name           string
	Status         ModuleStatus
	FailureLevel   FailureLevel
	FailureID      string
	FailureMessage string
	Enabled        bool
	Workers        int // workers and service workers under way
	Tasks          int // task executions under way
	MicroTasks     int // microtasks under way
}

// AppStatus is a snapshot of an App.
type AppStatus struct {
	Name         string
	ShuttingDown bool
	Modules      []ModuleSnapshot // registration order
}

// Status returns a snapshot of every module: status, failure status and
// the counts of running workers, tasks and microtasks.
func (a *App) Status() AppStatus {
	st := AppStatus{Name: a.opts.Name, ShuttingDown: a.IsShuttingDown()}
	micro := map[*Module]int{}
	for _, m := range a.Modules() { // the scheduler's lock comes before a.mu
		micro[m] = a.micro.countOf(m)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range a.modules {
		ms := ModuleSnapshot{
			Name: m.name, Status: m.status, FailureLevel: m.failureLevel, FailureID: m.failureID,
			FailureMessage: m.failureMsg, Enabled: m.enabled, MicroTasks: micro[m],
		}
		for u := range m.running {
			switch u.kind {
			case "worker", "service-worker":
				ms.Workers++
			case "task":
				ms.Tasks++
			}
		}
		st.Modules = append(st.Modules, ms)
	}
	return st
}
