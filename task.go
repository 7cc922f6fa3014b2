package supervisor

import (
	"container/heap"
	"context"
	"errors"
	"sync"
	"time"
)

// Task is a named piece of a module's work that runs on demand (Queue,
// Prioritize, StartASAP), at a time (Schedule) or repeatedly (Repeat),
// through the App's task queue. A task is in the queue at most once and
// never runs concurrently with itself. It runs only while its module is
// online, one task per free queue slot (AppOptions.MaxConcurrentTasks,
// default 1), prioritized tasks before normal ones. Each execution runs
// like a worker of the module: its context is cancelled when the module
// stops or the task is cancelled, Report works inside it, and a failure
// (an error or a panic) goes to the App's kernel as a *ModuleError for
// process "<module>/<task>". A repeating task keeps repeating after a
// failure; a kernel Abort cancels it. A task may queue or schedule itself
// from its own function. Every method returns at once.
type Task struct {
	m    *Module
	name string
	fn   func(context.Context, *Task) error

	// guarded by the App's taskScheduler.mu
	place       taskPlace     // the queue it is in; placeNone if none
	pending     taskPlace     // queued while running: where it goes once the run ended
	prev, next  *Task         // neighbours in its queue
	queuedAt    time.Time     // when it entered its queue, for MaxDelay
	scheduledAt time.Time     // zero: not scheduled
	maxDelay    time.Duration // 0: AppOptions.DefaultMaxDelay
	repeat      time.Duration // 0: not repeating
	flags       taskFlags
	stopRun     context.CancelCauseFunc // cancels the running execution's ctx
	wake        timerEntry              // the earlier of scheduledAt and the MaxDelay deadline
	slot        timerEntry              // TaskSlotTimeout of the execution holding a slot
}

// taskPlace is a position in the task queue, in rising priority.
type taskPlace uint8

const (
	placeNone   taskPlace = iota
	placeNormal           // end of the normal queue
	placePrio             // end of the prioritized queue
	placeASAP             // front of the prioritized queue
)

type taskFlags uint8

const (
	taskRunning         taskFlags = 1 << iota
	taskCanceled                  // for good
	taskSlotHeld                  // its running execution holds a queue slot
	taskOverdue                   // queued past its MaxDelay while its module was not online
	taskScheduledInRun            // scheduled by a call during its run: the run's end keeps that time
	taskRepeatScheduled           // scheduledAt is the next repeat
)

func (t *Task) has(f taskFlags) bool { return t.flags&f != 0 }

func (t *Task) set(f taskFlags, on bool) {
	if on {
		t.flags |= f
	} else {
		t.flags &^= f
	}
}

// errTaskCanceled is the cause of a cancelled execution's context.
var errTaskCanceled = errors.New("supervisor: task cancelled")

// NewTask returns a task of the module named name that runs fn. A nil fn
// makes every run fail with an error reported to the kernel. The task does
// nothing until it is queued, scheduled or set to repeat.
func (m *Module) NewTask(name string, fn func(context.Context, *Task) error) *Task {
	t := &Task{m: m, name: name, fn: fn}
	t.wake = timerEntry{index: -1, task: t}
	t.slot = timerEntry{index: -1, task: t}
	return t
}

// Queue puts the task at the end of the normal queue, unless it is queued
// already (it keeps its place). Queued while it runs, it enters the queue
// once the run ended.
func (t *Task) Queue() *Task { return t.enqueue(placeNormal, "Queue") }

// Prioritize puts the task at the end of the prioritized queue, ahead of
// every normal task; a task in the normal queue moves up, one in the
// prioritized queue keeps its place.
func (t *Task) Prioritize() *Task { return t.enqueue(placePrio, "Prioritize") }

// StartASAP puts the task at the front of the prioritized queue, moving it
// there if it is queued already.
func (t *Task) StartASAP() *Task { return t.enqueue(placeASAP, "StartASAP") }

func (t *Task) enqueue(place taskPlace, op string) *Task {
	s := t.scheduler()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse(t, op) {
		return t
	}
	s.enqueueLocked(t, place)
	s.dispatchLocked()
	s.rearmLocked()
	return t
}

// Schedule makes the task start at `at` as with StartASAP, replacing an
// earlier schedule; a time not after now starts it at once; the zero time
// unschedules it. Scheduled by its own function, the time also replaces
// the task's next repeat.
func (t *Task) Schedule(at time.Time) *Task {
	return t.reschedule("Schedule", func(s *taskScheduler) {
		t.set(taskRepeatScheduled, false)
		t.scheduledAt = time.Time{}
		switch {
		case at.IsZero():
		case !at.After(time.Now()):
			s.enqueueLocked(t, placeASAP)
			s.dispatchLocked()
		default:
			t.scheduledAt = at
			t.set(taskScheduledInRun, t.has(taskRunning))
		}
	})
}

// reschedule applies change to the task under the scheduler's lock, unless
// the task or the App refuses op, then re-arms the task's deadlines.
func (t *Task) reschedule(op string, change func(s *taskScheduler)) *Task {
	s := t.scheduler()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse(t, op) {
		return t
	}
	change(s)
	s.setWakeLocked(t)
	s.rearmLocked()
	return t
}

// Repeat makes the task run one interval from now, then one interval after
// each of its runs ended (a failed run too). An interval below
// AppOptions.MinRepeatInterval (default 1m) is raised to it; 0 stops the
// repetition (and drops its pending run); a negative interval is logged
// and counts as 0.
func (t *Task) Repeat(interval time.Duration) *Task {
	a := t.m.app
	if interval < 0 {
		a.logger.Warn("supervisor: negative task repeat interval; repetition stopped",
			"app", a.opts.Name, "module", t.m.name, "task", t.name, "interval", interval)
		interval = 0
	}
	if interval > 0 {
		interval = max(interval, a.opts.MinRepeatInterval)
	}
	return t.reschedule("Repeat", func(*taskScheduler) {
		t.repeat = interval
		switch {
		case interval > 0:
			t.scheduledAt = time.Now().Add(interval)
			t.set(taskRepeatScheduled, true)
			t.set(taskScheduledInRun, t.has(taskRunning))
		case t.has(taskRepeatScheduled):
			t.scheduledAt = time.Time{}
			t.set(taskRepeatScheduled, false)
		}
	})
}

// MaxDelay sets how long the task may wait in the queue (default
// AppOptions.DefaultMaxDelay, 3m; 0 or negative restores it): queued
// longer, it starts at once, without waiting for a free slot, as soon as
// its module is online.
func (t *Task) MaxDelay(d time.Duration) *Task {
	return t.reschedule("MaxDelay", func(*taskScheduler) { t.maxDelay = max(d, 0) })
}

// Cancel cancels the task for good: it leaves the queue and its schedule,
// a running execution's context is cancelled, and later Queue, Schedule,
// Repeat and the like do nothing. An execution that returns the
// cancellation (context.Canceled) is not a failure.
func (t *Task) Cancel() {
	s := t.scheduler()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cancelLocked(t)
	s.rearmLocked()
}

func (t *Task) scheduler() *taskScheduler { return &t.m.app.tasks }

// taskScheduler is an App's task queue, its slots and its one timer heap
// for every task deadline (schedules, repeats, MaxDelay, TaskSlotTimeout).
// The heap is driven by one time.AfterFunc timer set to its earliest
// deadline, so a scheduled task costs neither a timer nor a goroutine.
// Its zero value is ready; the App it belongs to comes with each task.
type taskScheduler struct {
	mu      sync.Mutex
	normal  taskList
	prio    taskList
	busy    int // slots held
	timers  timerHeap
	seq     uint64      // ties in the heap go in scheduling order
	timer   *time.Timer // time.AfterFunc(fire); nil until the first deadline
	armedAt time.Time   // when timer fires; zero: stopped
	closed  bool        // the App shut down: its tasks are done with (see close)
}

// refuse reports (and logs at debug) why op on t does nothing: t is
// cancelled or the App shut down. s.mu held.
func (s *taskScheduler) refuse(t *Task, op string) bool {
	a := t.m.app
	why := ""
	switch {
	case t.has(taskCanceled):
		why = "the task is cancelled"
	case s.closedLocked(a):
		why = "the app is shutting down"
	default:
		return false
	}
	a.logger.Debug("supervisor: task "+op+" ignored: "+why, "app", a.opts.Name, "module", t.m.name, "task", t.name)
	return true
}

// closedLocked reports whether the App is shutting down: its tasks start
// no more. Shutdown closes the scheduler just after it began.
func (s *taskScheduler) closedLocked(a *App) bool {
	return s.closed || a.IsShuttingDown()
}

// close is called by Shutdown once it began, before it stops the modules:
// it stops the timer and drops every deadline, so no timer outlives the
// App, and makes every later call do nothing. Tasks still queued stay so.
// Never called with the App's mu held (s.mu comes first).
func (s *taskScheduler) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, e := range s.timers {
		e.index = -1
	}
	s.timers = nil
	if s.timer != nil {
		s.timer.Stop()
	}
	s.armedAt = time.Time{}
}

// moduleOnline is called by a module's start as soon as the module is
// online (after its status changed, without the App's mu held): it starts
// m's tasks that passed their MaxDelay meanwhile, then m's queued tasks
// while slots are free. Tasks of a module that is not online simply stay
// queued until then: nothing waits or polls for them.
func (s *taskScheduler) moduleOnline(m *Module) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closedLocked(m.app) {
		return
	}
	s.startOverdueLocked(m)
	s.dispatchLocked()
	s.rearmLocked()
}

// enqueueLocked queues t at place (see Queue, Prioritize, StartASAP).
func (s *taskScheduler) enqueueLocked(t *Task, place taskPlace) {
	switch {
	case t.has(taskRunning):
		t.pending = max(t.pending, place)
		return
	case t.place == placeNone:
		t.queuedAt = time.Now()
	case place == placeASAP || (place == placePrio && t.place == placeNormal):
		s.list(t.place).remove(t)
	default:
		return // keeps its place
	}
	if place == placeASAP {
		s.prio.pushFront(t)
		t.place = placePrio
	} else {
		s.list(place).pushBack(t)
		t.place = place
	}
	s.setWakeLocked(t)
}

func (s *taskScheduler) list(place taskPlace) *taskList {
	if place == placeNormal {
		return &s.normal
	}
	return &s.prio
}

func (s *taskScheduler) unqueueLocked(t *Task) {
	if t.place != placeNone {
		s.list(t.place).remove(t)
		t.place = placeNone
		t.queuedAt = time.Time{}
		t.set(taskOverdue, false)
	}
}

func (s *taskScheduler) cancelLocked(t *Task) {
	if t.has(taskCanceled) {
		return
	}
	t.set(taskCanceled, true)
	s.unqueueLocked(t)
	t.scheduledAt, t.repeat, t.pending = time.Time{}, 0, placeNone
	s.setWakeLocked(t)
	if t.stopRun != nil {
		t.stopRun(errTaskCanceled)
	}
}

// dispatchLocked starts queued tasks of online modules while slots are
// free, prioritized first.
func (s *taskScheduler) dispatchLocked() {
	for {
		t, untrack := s.nextRunnableLocked()
		if t == nil {
			return
		}
		s.startLocked(t, untrack, true)
	}
}

// nextRunnableLocked returns the first queued task whose module is online,
// already tracked as a run of its module, if a slot is free. Tasks of
// modules not online stay queued; moduleOnline dispatches them.
func (s *taskScheduler) nextRunnableLocked() (*Task, func()) {
	for _, l := range []*taskList{&s.prio, &s.normal} {
		for t := l.head; t != nil; t = t.next {
			if s.closed || s.busy >= t.m.app.opts.MaxConcurrentTasks {
				return nil, nil
			}
			if untrack := s.trackIfOnlineLocked(t); untrack != nil {
				return t, untrack
			}
		}
	}
	return nil, nil
}

// trackIfOnlineLocked registers a run of t with its module if the module
// is online (checked again after tracking, so that a module stop beginning
// meanwhile waits for the run); nil if it is not. A module that is not
// online yet calls moduleOnline once it is, after its status changed, so
// a task that found it not online is never forgotten.
func (s *taskScheduler) trackIfOnlineLocked(t *Task) func() {
	if s.closedLocked(t.m.app) || !t.m.Online() {
		return nil
	}
	untrack := t.m.track("task", t.name)
	if t.m.Online() {
		return untrack
	}
	untrack()
	return nil
}

// startLocked takes t out of the queue and runs it, holding a slot if
// withSlot.
func (s *taskScheduler) startLocked(t *Task, untrack func(), withSlot bool) {
	s.unqueueLocked(t)
	t.set(taskRunning, true)
	if withSlot {
		s.busy++
		t.set(taskSlotHeld, true)
		t.slot.when = time.Now().Add(t.m.app.opts.TaskSlotTimeout)
		s.pushLocked(&t.slot)
	}
	s.setWakeLocked(t)
	go s.execute(t, untrack)
}

// execute runs one execution of t as a worker of its module.
func (s *taskScheduler) execute(t *Task, untrack func()) {
	defer untrack()
	var body func(context.Context) error
	if t.fn != nil {
		body = func(ctx context.Context) error { return s.run(ctx, t) }
	}
	r := t.m.runWorker(nil, "task", t.name, Transient, body)
	s.finished(t, r)
}

// run calls t's function with a context that Cancel cancels.
func (s *taskScheduler) run(ctx context.Context, t *Task) error {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	s.mu.Lock()
	t.stopRun = stop
	canceled := t.has(taskCanceled)
	s.mu.Unlock()
	if canceled {
		return nil
	}
	err := t.fn(ctx, t)
	if err != nil && context.Cause(ctx) == errTaskCanceled && (errors.Is(err, context.Canceled) || errors.Is(err, errTaskCanceled)) {
		return nil
	}
	return err
}

// finished records the end of t's run: it frees the slot, cancels t after
// a kernel Abort, schedules its next repeat, queues it again if that was
// asked during the run, and starts what can start.
func (s *taskScheduler) finished(t *Task, r workerResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t.set(taskRunning, false)
	t.stopRun = nil
	if t.has(taskSlotHeld) {
		s.releaseSlotLocked(t)
	}
	if r.action == Abort && !r.stopping {
		s.cancelLocked(t)
	}
	if s.closedLocked(t.m.app) {
		return
	}
	if t.repeat > 0 && !t.has(taskScheduledInRun) {
		t.scheduledAt = time.Now().Add(t.repeat)
		t.set(taskRepeatScheduled, true)
	}
	t.set(taskScheduledInRun, false)
	if place := t.pending; place != placeNone && !t.has(taskCanceled) {
		t.pending = placeNone
		s.enqueueLocked(t, place)
	}
	s.setWakeLocked(t)
	s.dispatchLocked()
	s.rearmLocked()
}

func (s *taskScheduler) releaseSlotLocked(t *Task) {
	t.set(taskSlotHeld, false)
	s.removeLocked(&t.slot)
	s.busy--
}

// startOverdueLocked starts, without slots, the tasks of m that passed
// their MaxDelay while m was not online.
func (s *taskScheduler) startOverdueLocked(m *Module) {
	for _, l := range []*taskList{&s.prio, &s.normal} {
		for t := l.head; t != nil; {
			next := t.next
			if t.m == m && t.has(taskOverdue) {
				s.startNowLocked(t)
			}
			t = next
		}
	}
}

// startNowLocked starts queued t at once, without a slot (MaxDelay), if
// its module is online; otherwise t is overdue and starts so once it is.
func (s *taskScheduler) startNowLocked(t *Task) {
	if untrack := s.trackIfOnlineLocked(t); untrack != nil {
		s.startLocked(t, untrack, false)
		return
	}
	t.set(taskOverdue, true)
}

// Timer heap.

// timerEntry is one deadline in the heap: a task's wake-up or its slot
// timeout.
type timerEntry struct {
	when  time.Time
	seq   uint64
	index int // in the heap; -1 when not in it
	task  *Task
}

type timerHeap []*timerEntry

func (h timerHeap) Len() int { return len(h) }

func (h timerHeap) Less(i, j int) bool {
	if h[i].when.Equal(h[j].when) {
		return h[i].seq < h[j].seq
	}
	return h[i].when.Before(h[j].when)
}

func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}

func (h *timerHeap) Push(x any) {
	e := x.(*timerEntry)
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *timerHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.index = -1
	return e
}

func (s *taskScheduler) pushLocked(e *timerEntry) {
	s.seq++
	e.seq = s.seq
	heap.Push(&s.timers, e)
}

func (s *taskScheduler) removeLocked(e *timerEntry) {
	if e.index >= 0 {
		heap.Remove(&s.timers, e.index)
	}
}

// wakeAt is when t needs attention: the earlier of its schedule and its
// MaxDelay deadline; zero if neither.
func (t *Task) wakeAt() time.Time {
	at := t.scheduledAt
	if t.place != placeNone && !t.has(taskOverdue) {
		delay := t.maxDelay
		if delay == 0 {
			delay = t.m.app.opts.DefaultMaxDelay
		}
		if deadline := t.queuedAt.Add(delay); at.IsZero() || deadline.Before(at) {
			at = deadline
		}
	}
	return at
}

// setWakeLocked puts t's wake-up in the heap at wakeAt, or takes it out.
// The caller rearms the timer.
func (s *taskScheduler) setWakeLocked(t *Task) {
	at := t.wakeAt()
	e := &t.wake
	switch {
	case at.IsZero() || s.closed:
		s.removeLocked(e)
	case e.index < 0:
		e.when = at
		s.pushLocked(e)
	case !e.when.Equal(at):
		e.when = at
		s.seq++
		e.seq = s.seq
		heap.Fix(&s.timers, e.index)
	}
}

// rearmLocked sets the timer to the heap's earliest deadline, or stops it.
func (s *taskScheduler) rearmLocked() {
	if len(s.timers) == 0 {
		if !s.armedAt.IsZero() {
			s.timer.Stop()
			s.armedAt = time.Time{}
		}
		return
	}
	next := s.timers[0].when
	if next.Equal(s.armedAt) {
		return
	}
	s.armedAt = next
	if s.timer == nil {
		s.timer = time.AfterFunc(time.Until(next), s.fire)
		return
	}
	s.timer.Reset(time.Until(next))
}

// fire handles every deadline that passed: a freed slot, a scheduled or
// repeating task that starts as with StartASAP (several in the order of
// their times), a task queued past its MaxDelay that starts at once.
func (s *taskScheduler) fire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.armedAt = time.Time{}
	if len(s.timers) == 0 || s.closedLocked(s.timers[0].task.m.app) {
		return
	}
	now := time.Now()
	var due []*Task
	for len(s.timers) > 0 && !s.timers[0].when.After(now) {
		e := heap.Pop(&s.timers).(*timerEntry)
		t := e.task
		if e == &t.slot {
			t.set(taskSlotHeld, false)
			s.busy--
			continue
		}
		if !t.scheduledAt.IsZero() && !t.scheduledAt.After(now) {
			t.scheduledAt = time.Time{}
			t.set(taskRepeatScheduled, false)
			due = append(due, t)
		}
		if t.place != placeNone && !t.has(taskOverdue) && !t.wakeAt().After(now) {
			s.startNowLocked(t)
		}
		s.setWakeLocked(t)
	}
	for i := len(due) - 1; i >= 0; i-- { // each goes to the front: the latest first
		if !due[i].has(taskCanceled) {
			s.enqueueLocked(due[i], placeASAP)
		}
	}
	s.dispatchLocked()
	s.rearmLocked()
}

// taskList is a queue of tasks, linked through the tasks themselves.
type taskList struct{ head, tail *Task }

func (l *taskList) pushBack(t *Task) {
	t.prev, t.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = t
	} else {
		l.head = t
	}
	l.tail = t
}

func (l *taskList) pushFront(t *Task) {
	t.prev, t.next = nil, l.head
	if l.head != nil {
		l.head.prev = t
	} else {
		l.tail = t
	}
	l.head = t
}

func (l *taskList) remove(t *Task) {
	if t.prev != nil {
		t.prev.next = t.next
	} else {
		l.head = t.next
	}
	if t.next != nil {
		t.next.prev = t.prev
	} else {
		l.tail = t.prev
	}
	t.prev, t.next = nil, nil
}
