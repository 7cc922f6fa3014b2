package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/gosupervise/supervisor/internal/spin"
)

// Microtasks are short pieces of work run under one App-wide concurrency
// limit (AppOptions.MaxConcurrentMicroTasks). High priority runs at once,
// even over the limit; medium and low priority wait for a free slot, medium
// before low and each in arrival order, but never longer than their max
// wait (AppOptions.MediumPriorityMaxWait, LowPriorityMaxWait).
//
// This is the hot path, so the scheduler avoids a goroutine and an
// allocation per microtask: waiting microtasks are values in ring queues,
// one keeper goroutine (alive only while something waits or idles) fires
// max waits and grants everything when shutdown begins, Start* microtasks
// run on parked worker goroutines that are reused, and a module's
// microtasks are counted here, registering one unit with the module (so its
// stop waits for them) per busy period instead of one per microtask.
//
// Lock order: microScheduler.mu, then App.mu (m.track, m.Ctx); never the
// other way round.

// microPriority is a microtask's priority.
type microPriority uint8

const (
	microMedium microPriority = iota // index of its queue
	microLow
	microHigh
)

// microIdleTimeout is how long a parked worker goroutine waits for work
// before it ends (between one and two times this).
const microIdleTimeout = 5 * time.Second

// RunMicroTask runs fn as a high-priority microtask of the module and
// returns its error (a panic as *PanicError). It starts at once, even when
// the App's limit is reached, and counts against it. fn gets the module's
// context. A failure goes to the App's kernel as "<module>/<name>"
// (Restart Temporary), reported after fn returned. After Shutdown began it
// returns an error wrapping ErrNotRunning and fn is not called.
func (m *Module) RunMicroTask(name string, fn func(context.Context) error) error {
	return m.app.micro.run(m, name, fn, microHigh)
}

// RunMediumPriorityMicroTask is RunMicroTask for a microtask that waits
// for a free slot, at most AppOptions.MediumPriorityMaxWait (default 3s),
// ahead of every low-priority one.
func (m *Module) RunMediumPriorityMicroTask(name string, fn func(context.Context) error) error {
	return m.app.micro.run(m, name, fn, microMedium)
}

// RunLowPriorityMicroTask is RunMicroTask for a microtask that waits for a
// free slot, at most AppOptions.LowPriorityMaxWait (default 15s), behind
// every medium-priority one.
func (m *Module) RunLowPriorityMicroTask(name string, fn func(context.Context) error) error {
	return m.app.micro.run(m, name, fn, microLow)
}

// StartMicroTask is RunMicroTask in a goroutine: it returns at once. After
// Shutdown began, fn is not called (a warning is logged).
func (m *Module) StartMicroTask(name string, fn func(context.Context) error) {
	m.app.micro.start(m, name, fn, microHigh)
}

// StartMediumPriorityMicroTask is RunMediumPriorityMicroTask in a
// goroutine: it returns at once.
func (m *Module) StartMediumPriorityMicroTask(name string, fn func(context.Context) error) {
	m.app.micro.start(m, name, fn, microMedium)
}

// StartLowPriorityMicroTask is RunLowPriorityMicroTask in a goroutine: it
// returns at once.
func (m *Module) StartLowPriorityMicroTask(name string, fn func(context.Context) error) {
	m.app.micro.start(m, name, fn, microLow)
}

// SetMaxConcurrentMicroTasks changes the App's microtask limit at once
// (default AppOptions.MaxConcurrentMicroTasks: 2×GOMAXPROCS); values below
// 2 become 2. Raising it grants waiting microtasks at once.
func (a *App) SetMaxConcurrentMicroTasks(n int) {
	n = max(n, 2)
	s := &a.micro
	s.mu.Lock()
	s.initLocked(a)
	s.limit = n
	s.grantLocked(false)
	s.mu.Unlock()
	a.mu.Lock()
	a.microLimit = n
	a.mu.Unlock()
}

// microScheduler is an App's microtask scheduler; its zero value is ready
// (initLocked fills it on first use).
type microScheduler struct {
	mu      spin.Lock // a yielding lock: see BENCHMARKS.md §4 for why not sync.Mutex
	app     *App
	limit   int
	running int            // microtasks holding a slot (over the limit too)
	queues  [2]microQueue  // waiting: medium, low
	modules []*microModule // every module that ran a microtask
	idle    []*microWorker // parked workers, most recent last
	free    []*microWaiter // reusable wait records of Run* calls
	epoch   uint64         // keeper ticks, for retiring idle workers
	keeper  bool           // the keeper goroutine runs
	wakeAt  time.Time      // when the keeper wakes next
	tickAt  time.Time      // the keeper's next idle tick
	wake    chan struct{}  // tells the keeper to re-arm earlier
}

// microJob is one microtask. A Run* call waiting for a slot is queued as a
// job with only waiter set: it runs fn itself once granted.
type microJob struct {
	fn     func(context.Context) error
	ctx    context.Context
	mod    *microModule
	name   string
	slot   int // the microtask's entry in its module's names
	waiter *microWaiter
}

// microWaiter is a Run* call waiting for a slot; it is reused.
type microWaiter struct{ granted chan struct{} }

// microWorker is a goroutine running Start* microtasks, parked between them.
type microWorker struct {
	jobs  chan microJob // closed to retire it
	stamp uint64        // epoch when it parked
}

// microModule counts a module's microtasks (running and waiting). While
// there are any, or its context is live since there were, the module has
// one "microtask" unit tracked, so its stop waits for them.
type microModule struct {
	m       *Module
	count   int
	names   []string        // running and waiting microtasks by slot ("" free), for the stop's log
	free    []int           // free slots of names
	ctx     context.Context // the module's context when the unit was tracked
	ctxDone bool            // ctx was cancelled: untrack when count reaches 0
	untrack func()
}

func (s *microScheduler) initLocked(a *App) {
	if s.app == nil {
		s.app = a
		s.limit = a.opts.MaxConcurrentMicroTasks
		s.wake = make(chan struct{}, 1)
	}
}

// maxWait returns the longest a microtask of priority p waits for a slot.
func (s *microScheduler) maxWait(p microPriority) time.Duration {
	if p == microMedium {
		return s.app.opts.MediumPriorityMaxWait
	}
	return s.app.opts.LowPriorityMaxWait
}

// run is Run*MicroTask.
func (s *microScheduler) run(m *Module, name string, fn func(context.Context) error, p microPriority) error {
	a := m.app
	if a.IsShuttingDown() {
		return errNotRunningMicro(m, name)
	}
	s.mu.Lock()
	s.initLocked(a)
	mod, slot := s.enterLocked(m, name)
	ctx := s.ctxLocked(mod)
	var waiter *microWaiter
	if p == microHigh || s.running < s.limit || a.IsShuttingDown() {
		s.running++
		s.mu.Unlock()
	} else {
		waiter = s.waiterLocked()
		s.enqueueLocked(p, microJob{waiter: waiter})
		s.mu.Unlock()
		<-waiter.granted // the granter counted the slot
	}
	err := callMicroTask(ctx, m, name, fn)
	s.mu.Lock()
	s.running--
	s.grantLocked(false)
	if waiter != nil {
		s.free = append(s.free, waiter)
	}
	if err == nil {
		s.leaveLocked(mod, slot)
	}
	s.mu.Unlock()
	if err != nil {
		s.fail(ctx, mod, name, slot, err)
	}
	return err
}

// start is Start*MicroTask.
func (s *microScheduler) start(m *Module, name string, fn func(context.Context) error, p microPriority) {
	a := m.app
	if a.IsShuttingDown() {
		a.logger.Warn("supervisor: microtask started after shutdown began; not run", "app", a.opts.Name, "module", m.name, "microtask", name)
		return
	}
	s.mu.Lock()
	s.initLocked(a)
	mod, slot := s.enterLocked(m, name)
	j := microJob{fn: fn, ctx: s.ctxLocked(mod), mod: mod, name: name, slot: slot}
	if p != microHigh && s.running >= s.limit && !a.IsShuttingDown() {
		s.enqueueLocked(p, j)
		s.mu.Unlock()
		return
	}
	s.running++
	if w := s.unparkLocked(); w != nil {
		s.mu.Unlock()
		w.jobs <- j // outside the lock: the hot path's critical section stays short
		return
	}
	s.mu.Unlock()
	go s.work(&microWorker{jobs: make(chan microJob, 1)}, j)
}

func errNotRunningMicro(m *Module, name string) error {
	return fmt.Errorf("supervisor: module %q: microtask %q: app shutting down: %w", m.name, name, ErrNotRunning)
}

// callMicroTask runs fn, turning a panic into a *PanicError.
func callMicroTask(ctx context.Context, m *Module, name string, fn func(context.Context) error) (err error) {
	if fn == nil {
		return fmt.Errorf("microtask %q of module %q: nil function", name, m.name)
	}
	defer func() {
		if v := recover(); v != nil {
			err = newPanicError(v)
		}
	}()
	return fn(ctx)
}

// fail reports a microtask's failure to the kernel (unless it is the
// module's stop cancelling it), then ends the microtask's count: the
// module's stop waits for the report too.
func (s *microScheduler) fail(ctx context.Context, mod *microModule, name string, slot int, err error) {
	restartNow := errors.Is(err, ErrRestartNow) // not a failure, as for workers
	if !restartNow && (!errors.Is(err, context.Canceled) || ctx.Err() == nil) {
		a, m := s.app, mod.m
		a.kernel.Report(context.Background(), Failure{
			Process: m.name + "/" + name,
			Err:     a.moduleError(m.name, name, "microtask", err),
			Exited:  true,
			Restart: Temporary,
		})
	}
	s.mu.Lock()
	s.leaveLocked(mod, slot)
	s.mu.Unlock()
}

// Module accounting.

// enterLocked counts a new microtask of m, tracking the module's unit when
// it has none.
func (s *microScheduler) enterLocked(m *Module, name string) (*microModule, int) {
	mod := m.micro
	if mod == nil {
		mod = &microModule{m: m}
		m.micro = mod
		s.modules = append(s.modules, mod)
	}
	mod.count++
	slot := len(mod.names)
	if n := len(mod.free); n > 0 {
		slot = mod.free[n-1]
		mod.free = mod.free[:n-1]
		mod.names[slot] = name
	} else {
		mod.names = append(mod.names, name)
	}
	if mod.untrack == nil {
		mod.untrack = m.track("microtask", "microtasks")
		mod.ctx = m.Ctx()
		if mod.ctx.Err() != nil {
			mod.ctxDone = true
		} else {
			ctx := mod.ctx
			context.AfterFunc(ctx, func() { s.moduleCtxDone(mod, ctx) })
		}
	}
	return mod, slot
}

// ctxLocked returns the module's context for a new microtask: the
// snapshot while it is live (a live snapshot is still the module's
// context: the module replaces it only after cancelling it), else a fresh
// look.
func (s *microScheduler) ctxLocked(mod *microModule) context.Context {
	if !mod.ctxDone {
		return mod.ctx
	}
	return mod.m.Ctx()
}

// leaveLocked ends a microtask's count.
func (s *microScheduler) leaveLocked(mod *microModule, slot int) {
	mod.count--
	mod.names[slot] = ""
	mod.free = append(mod.free, slot)
	if mod.count == 0 && mod.ctxDone {
		s.untrackLocked(mod)
	}
}

func (s *microScheduler) untrackLocked(mod *microModule) {
	mod.untrack()
	mod.untrack, mod.ctx, mod.ctxDone = nil, nil, false
}

// moduleCtxDone runs when the module's context (snapshot ctx) is
// cancelled: the module stops, so its unit goes once its microtasks ended.
func (s *microScheduler) moduleCtxDone(mod *microModule, ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if mod.ctx != ctx {
		return
	}
	mod.ctxDone = true
	if mod.count == 0 {
		s.untrackLocked(mod)
	}
}

// Waiting and granting.

// microQueue is a FIFO ring of waiting microtasks. Entries of one queue
// share one max wait, so their deadlines ascend.
type microQueue struct {
	entries []microEntry
	head, n int
}

// microQueueKeep is the largest ring an empty queue keeps.
const microQueueKeep = 4096

type microEntry struct {
	job      microJob
	deadline time.Time
}

func (q *microQueue) push(e microEntry) {
	if q.n == len(q.entries) {
		grown := make([]microEntry, max(16, 2*len(q.entries)))
		for i := range q.n {
			grown[i] = q.entries[(q.head+i)%len(q.entries)]
		}
		q.entries, q.head = grown, 0
	}
	q.entries[(q.head+q.n)%len(q.entries)] = e
	q.n++
}

func (q *microQueue) front() *microEntry { return &q.entries[q.head] }

func (q *microQueue) pop() microJob {
	e := &q.entries[q.head]
	j := e.job
	*e = microEntry{}
	q.head = (q.head + 1) % len(q.entries)
	q.n--
	return j
}

// trimLocked lets the queues' rings and the modules' name slots go when
// a burst grew them past microQueueKeep and it is over. The keeper calls
// it once per idle tick, so rings in steady use are kept.
func (s *microScheduler) trimLocked() {
	for i := range s.queues {
		if q := &s.queues[i]; q.n == 0 && len(q.entries) > microQueueKeep {
			q.entries, q.head = nil, 0
		}
	}
	for _, mod := range s.modules {
		if mod.count == 0 && len(mod.names) > microQueueKeep {
			mod.names, mod.free = nil, nil
		}
	}
}

// enqueueLocked queues j to wait for a slot and makes sure the keeper
// wakes by its deadline.
func (s *microScheduler) enqueueLocked(p microPriority, j microJob) {
	deadline := time.Now().Add(s.maxWait(p))
	s.queues[p].push(microEntry{job: j, deadline: deadline})
	switch {
	case !s.keeper:
		s.startKeeperLocked()
	case deadline.Before(s.wakeAt):
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *microScheduler) waiterLocked() *microWaiter {
	if n := len(s.free); n > 0 {
		w := s.free[n-1]
		s.free[n-1] = nil
		s.free = s.free[:n-1]
		return w
	}
	return &microWaiter{granted: make(chan struct{}, 1)}
}

// grantLocked gives free slots to waiting microtasks, medium first, each
// queue in order. A worker (self) takes the first job itself.
func (s *microScheduler) grantLocked(self bool) (mine microJob, ok bool) {
	for s.running < s.limit {
		var q *microQueue
		switch {
		case s.queues[microMedium].n > 0:
			q = &s.queues[microMedium]
		case s.queues[microLow].n > 0:
			q = &s.queues[microLow]
		default:
			return mine, ok
		}
		j := q.pop()
		if self && !ok && j.waiter == nil {
			s.running++
			mine, ok = j, true
			continue
		}
		s.grantJobLocked(j)
	}
	return mine, ok
}

// grantJobLocked gives a slot to j, over the limit if need be.
func (s *microScheduler) grantJobLocked(j microJob) {
	s.running++
	if j.waiter != nil {
		j.waiter.granted <- struct{}{}
		return
	}
	s.dispatchLocked(j)
}

// dispatchLocked runs j, which holds a slot, on a parked worker or a new
// one.
func (s *microScheduler) dispatchLocked(j microJob) {
	if w := s.unparkLocked(); w != nil {
		w.jobs <- j // buffered and empty: a parked worker holds no job
		return
	}
	go s.work(&microWorker{jobs: make(chan microJob, 1)}, j)
}

// unparkLocked takes the most recently parked worker, or returns nil; the
// caller gives it a job.
func (s *microScheduler) unparkLocked() *microWorker {
	n := len(s.idle)
	if n == 0 {
		return nil
	}
	w := s.idle[n-1]
	s.idle[n-1] = nil
	s.idle = s.idle[:n-1]
	return w
}

// work runs j and then the jobs it is given, until it has been parked
// for microIdleTimeout or shutdown began.
func (s *microScheduler) work(w *microWorker, j microJob) {
	for {
		err := callMicroTask(j.ctx, j.mod.m, j.name, j.fn)
		s.mu.Lock()
		s.running--
		if err != nil {
			s.grantLocked(false)
			s.mu.Unlock()
			s.fail(j.ctx, j.mod, j.name, j.slot, err)
			s.mu.Lock()
		} else {
			s.leaveLocked(j.mod, j.slot)
		}
		next, ok := s.grantLocked(true)
		if ok {
			s.mu.Unlock()
			j = next
			continue
		}
		if j, ok = s.parkLocked(w); !ok {
			return
		}
	}
}

// parkLocked parks the worker until it is given a job (ok) or retired;
// it unlocks s.mu. A parked worker waits on its own channel only: the
// keeper, which runs while any worker is parked, retires them all when
// shutdown begins, so no shared channel is locked on this path.
func (s *microScheduler) parkLocked(w *microWorker) (microJob, bool) {
	if s.app.IsShuttingDown() {
		s.mu.Unlock()
		return microJob{}, false
	}
	w.stamp = s.epoch
	s.idle = append(s.idle, w)
	if !s.keeper {
		s.startKeeperLocked()
	}
	s.mu.Unlock()
	j, ok := <-w.jobs
	return j, ok
}

// The keeper.

func (s *microScheduler) startKeeperLocked() {
	s.keeper = true
	go s.keep()
}

// keep grants waiting microtasks whose max wait passed, grants all of them
// when shutdown begins, and retires workers parked for a whole
// microIdleTimeout tick. It ends when nothing waits and nothing is parked.
func (s *microScheduler) keep() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	shuttingDown := s.app.ShuttingDown()
	for {
		s.mu.Lock()
		next, ok := s.keepLocked()
		if !ok {
			s.keeper, s.wakeAt, s.tickAt = false, time.Time{}, time.Time{}
			s.mu.Unlock()
			return
		}
		s.wakeAt = next
		s.mu.Unlock()
		timer.Reset(time.Until(next))
		select {
		case <-timer.C:
		case <-s.wake:
		case <-shuttingDown:
		}
	}
}

// keepLocked does the keeper's rounds and returns when it should next
// wake (false: it is not needed).
func (s *microScheduler) keepLocked() (time.Time, bool) {
	if s.app.IsShuttingDown() {
		for _, q := range []*microQueue{&s.queues[microMedium], &s.queues[microLow]} {
			for q.n > 0 {
				s.grantJobLocked(q.pop())
			}
		}
		s.retireLocked(len(s.idle))
		return time.Time{}, false
	}
	now := time.Now()
	var next time.Time
	for _, q := range []*microQueue{&s.queues[microMedium], &s.queues[microLow]} {
		for q.n > 0 && !q.front().deadline.After(now) {
			s.grantJobLocked(q.pop())
		}
		if q.n > 0 && (next.IsZero() || q.front().deadline.Before(next)) {
			next = q.front().deadline
		}
	}
	if len(s.idle) == 0 {
		s.tickAt = time.Time{}
	} else {
		if s.tickAt.IsZero() {
			s.tickAt = now.Add(microIdleTimeout)
		} else if !now.Before(s.tickAt) {
			s.retireIdleLocked()
			s.trimLocked()
			s.tickAt = now.Add(microIdleTimeout)
		}
		if len(s.idle) > 0 && (next.IsZero() || s.tickAt.Before(next)) {
			next = s.tickAt
		}
	}
	return next, !next.IsZero()
}

// retireIdleLocked starts a new epoch and retires the workers parked
// before the previous one: they idled a whole tick.
func (s *microScheduler) retireIdleLocked() {
	s.epoch++
	retired := 0
	for _, w := range s.idle {
		if w.stamp+1 >= s.epoch {
			break // the stack's older workers are at the bottom
		}
		retired++
	}
	s.retireLocked(retired)
}

// retireLocked retires the n workers parked longest.
func (s *microScheduler) retireLocked(n int) {
	for _, w := range s.idle[:n] {
		close(w.jobs)
	}
	kept := copy(s.idle, s.idle[n:])
	clear(s.idle[kept:])
	s.idle = s.idle[:kept]
}

// countOf returns how many microtasks of m run or wait.
func (s *microScheduler) countOf(m *Module) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.micro != nil {
		return m.micro.count
	}
	return 0
}

// runningNames returns the names of m's microtasks that run or wait, one
// entry per microtask, for the log of a module stop that timed out.
func (s *microScheduler) runningNames(m *Module) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	mod := m.micro
	if mod == nil {
		return nil
	}
	var names []string
	for i, name := range mod.names {
		if !slices.Contains(mod.free, i) {
			names = append(names, "microtask "+name)
		}
	}
	return names
}
