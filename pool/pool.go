// Package pool runs jobs on a pool of external worker processes that speak
// a framed protocol over pipes or sockets (PROTOCOL.md).
//
// Each worker slot is a process of a supervisor.Supervisor: a worker that
// dies, breaks the protocol or runs past ExecTimeout is a failure that goes
// to the error kernel, and its slot comes back after backoff. Planned
// replacements (MaxExecutions, TTL, IdleTTL, MaxMemory, a worker's stop
// request, a cancelled job) happen at once, inside the slot, and never
// kill a busy worker. A crash-looping command degrades the pool — Execs
// wait and then get ErrNoFreeWorkers — but the pool never panics and never
// shrinks, and it recovers when the command works again.
//
// Quick start, with a worker written with Serve (or examples/pool/worker.py):
//
//	p, err := pool.NewPool(ctx, func() *exec.Cmd { return exec.Command("./worker") },
//		pool.NewPipeFactory(), pool.Config{NumWorkers: 4})
//	if err != nil {
//		return err
//	}
//	defer p.Destroy(context.Background())
//	reply, err := p.Exec(ctx, pool.Payload{Body: []byte("hello")})
package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/gosupervise/supervisor"
)

// Config configures a Pool. The zero value works: every field has a
// default, stated beside it.
type Config struct {
	Name            string        // events, logs, Failure.Process "<name>/<slot>"; default "pool"
	NumWorkers      int           // default runtime.NumCPU(); 1..1024
	MaxExecutions   uint64        // a worker is replaced after this many jobs; 0: never
	AllocateTimeout time.Duration // Exec's wait for a free worker; default 60s
	DestroyTimeout  time.Duration // graceful stop wait before SIGKILL; default 10s
	ExecTimeout     time.Duration // hard per-job limit: the worker is killed; 0: none
	TTL             time.Duration // soft: replaced after its current job once older; 0: none
	IdleTTL         time.Duration // soft: an idle worker is replaced; 0: none
	MaxMemory       uint64        // soft: RSS bytes; replaced after its current job; 0: none
	WatchInterval   time.Duration // soft-limit check period (and of output between jobs); default 1s
	MaxQueue        int           // Execs allowed to wait; more fail at once (ErrQueueFull); 0: unlimited
	MaxPayload      int           // largest Context+Body either way; default 64 MiB
	SpawnTimeout    time.Duration // start + handshake limit per worker; default 10s
	Kernel          *supervisor.ErrorKernel
	Logger          *slog.Logger
	OnEvent         func(Event)

	// Backoff gives the delays before a failed slot comes back; nil:
	// supervisor.DefaultBackoff (100ms, doubling, capped at 30s).
	Backoff func() backoff.BackOff
	// AbortDelay is how long a slot whose failure the kernel answered with
	// Abort waits before it comes back (the pool never shrinks); default
	// 30s, the longest delay of supervisor.DefaultBackoff.
	AbortDelay time.Duration
}

// Defaults of Config.
const (
	DefaultAllocateTimeout = 60 * time.Second
	DefaultDestroyTimeout  = 10 * time.Second
	DefaultWatchInterval   = time.Second
	DefaultMaxPayload      = defaultMaxPayload
	DefaultSpawnTimeout    = 10 * time.Second
	DefaultAbortDelay      = 30 * time.Second
	MaxWorkers             = 1024
)

// withDefaults fills in the defaults and checks the rest.
func (c Config) withDefaults() (Config, error) {
	if c.Name == "" {
		c.Name = "pool"
	}
	if c.NumWorkers == 0 {
		c.NumWorkers = min(runtime.NumCPU(), MaxWorkers)
	}
	var errs []error
	if c.NumWorkers < 1 || c.NumWorkers > MaxWorkers {
		errs = append(errs, fmt.Errorf("NumWorkers %d not in 1..%d", c.NumWorkers, MaxWorkers))
	}
	for _, d := range []struct {
		name  string
		value *time.Duration
		def   time.Duration
	}{
		{"AllocateTimeout", &c.AllocateTimeout, DefaultAllocateTimeout},
		{"DestroyTimeout", &c.DestroyTimeout, DefaultDestroyTimeout},
		{"WatchInterval", &c.WatchInterval, DefaultWatchInterval},
		{"SpawnTimeout", &c.SpawnTimeout, DefaultSpawnTimeout},
		{"AbortDelay", &c.AbortDelay, DefaultAbortDelay},
		{"ExecTimeout", &c.ExecTimeout, 0},
		{"TTL", &c.TTL, 0},
		{"IdleTTL", &c.IdleTTL, 0},
	} {
		switch {
		case *d.value < 0:
			errs = append(errs, fmt.Errorf("%s %s is negative", d.name, *d.value))
		case *d.value == 0:
			*d.value = d.def
		}
	}
	if c.MaxQueue < 0 {
		errs = append(errs, fmt.Errorf("MaxQueue %d is negative", c.MaxQueue))
	}
	switch {
	case c.MaxPayload < 0:
		errs = append(errs, fmt.Errorf("MaxPayload %d is negative", c.MaxPayload))
	case c.MaxPayload == 0:
		c.MaxPayload = DefaultMaxPayload
	case c.MaxPayload > 1<<32-1:
		errs = append(errs, fmt.Errorf("MaxPayload %d is over the protocol's 4 GiB", c.MaxPayload))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("pool %q: invalid config: %w", c.Name, err)
	}
	return c, nil
}

// Pool runs jobs on a fixed number of worker processes.
type Pool struct {
	cfg     Config
	cmd     func() *exec.Cmd
	factory Factory
	slots   []*slot
	table   *supervisor.MapTable[int, supervisor.RunnableFunc]

	mu       sync.Mutex
	free     []*Worker // idle workers, most recently used last
	waiters  []*waiter // Execs waiting for a worker, oldest first
	spare    sync.Pool // of *waiter
	busy     int       // workers running a job
	stopping bool
	jobsDone chan struct{}       // closed when busy reaches 0 while stopping
	revivals map[int]*time.Timer // slots the kernel aborted, coming back

	stopRun      chan struct{} // closed by Destroy: the supervisor stops
	runDone      chan struct{} // closed when the supervisor's Run returned
	runErr       error
	watchDone    chan struct{}  // closed when the soft-limit watcher ended
	firstAdopted sync.WaitGroup // NewPool's workers, until their slots offer them
	destroyOnce  sync.Once
	destroyed    chan struct{}
	destroyErr   error
}

// slot is one place of a worker in the pool: a supervised process that
// keeps one worker at a time.
type slot struct {
	index   int
	name    string         // "<pool>/<index>"
	events  chan slotEvent // a worker handed back to the slot; one at a time
	first   *Worker        // spawned by NewPool, for the slot's first run
	current *Worker        // guarded by Pool.mu
}

// slotEvent hands a worker back to its slot: to be replaced (reason), or
// failed (failure).
type slotEvent struct {
	worker  *Worker
	reason  string
	failure error
}

// waiter is an Exec waiting for a worker; a nil worker means the pool
// stopped.
// waiter is an Exec waiting for a worker. Waiters are reused: the wait
// allocates nothing.
type waiter struct {
	granted chan *Worker // buffered: a grant never blocks
	timer   *time.Timer  // AllocateTimeout
}

// NewPool spawns cfg.NumWorkers workers of cmd with f, all at once, and
// returns when every one completed its handshake. If one fails, the others
// are stopped and the error is returned: no process is left behind. ctx
// bounds the start-up only; the pool runs until Destroy. cmd is called for
// every spawn and must return a new, unstarted command each time.
func NewPool(ctx context.Context, cmd func() *exec.Cmd, f Factory, cfg Config) (*Pool, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cmd == nil || f == nil {
		return nil, fmt.Errorf("pool %q: NewPool needs a command function and a factory", cfg.Name)
	}
	p := &Pool{
		cfg:       cfg,
		cmd:       cmd,
		factory:   f,
		table:     supervisor.NewMapTable[int, supervisor.RunnableFunc](),
		revivals:  map[int]*time.Timer{},
		stopRun:   make(chan struct{}),
		runDone:   make(chan struct{}),
		watchDone: make(chan struct{}),
		destroyed: make(chan struct{}),
	}
	p.slots = make([]*slot, cfg.NumWorkers)
	for i := range p.slots {
		p.slots[i] = &slot{index: i, name: cfg.Name + "/" + strconv.Itoa(i), events: make(chan slotEvent, 1)}
	}
	if err := p.spawnAll(ctx); err != nil {
		return nil, err
	}
	for _, s := range p.slots {
		p.table.Put(s.index, func(ctx context.Context) error { return p.runSlot(ctx, s) })
	}
	sup := supervisor.NewSupervisor(p.table, supervisor.Options{
		Name:        cfg.Name,
		Kernel:      cfg.Kernel,
		Backoff:     cfg.Backoff,
		StopTimeout: cfg.DestroyTimeout + 5*time.Second, // a slot's stop waits DestroyTimeout for its worker
		Logger:      cfg.Logger,
		OnEvent:     p.supervisorEvent,
	})
	p.firstAdopted.Add(len(p.slots))
	ready := make(chan struct{})
	go func() {
		defer close(p.runDone)
		p.runErr = sup.Run(context.Background(), func(context.Context) error {
			close(ready)
			<-p.stopRun
			return nil
		})
	}()
	<-ready
	p.firstAdopted.Wait() // every worker takes jobs when NewPool returns
	go p.watch()
	return p, nil
}

// spawnAll spawns every slot's first worker concurrently; on a failure it
// stops the ones that started.
func (p *Pool) spawnAll(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(p.slots))
	for i, s := range p.slots {
		wg.Go(func() { s.first, errs[i] = p.spawn(ctx, s) })
	}
	wg.Wait()
	err := errors.Join(errs...)
	if err == nil {
		return nil
	}
	for _, s := range p.slots {
		if s.first != nil {
			s.first.stop(p.cfg.DestroyTimeout)
			s.first = nil
		}
	}
	return fmt.Errorf("pool %q: starting workers: %w", p.cfg.Name, err)
}

// spawn starts a worker for slot s, within SpawnTimeout.
func (p *Pool) spawn(ctx context.Context, s *slot) (*Worker, error) {
	cmd := p.cmd()
	if cmd == nil {
		return nil, fmt.Errorf("pool %q: slot %d: the command function returned nil", p.cfg.Name, s.index)
	}
	cmd.Env = append(cmd.Environ(), envMaxPayload+"="+strconv.Itoa(p.cfg.MaxPayload))
	ownProcessGroup(cmd)
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = time.Second // a grandchild holding its stderr cannot stall a reap
	}
	var stderr *stderrLog
	if cmd.Stderr == nil {
		stderr = &stderrLog{}
		stderr.line = func(line string) {
			p.emit(Event{Kind: EventWorkerStderr, Slot: s.index, Pid: int(stderr.pid.Load()), Line: line})
		}
		cmd.Stderr = stderr
	}
	ctx, cancel := context.WithTimeoutCause(ctx, p.cfg.SpawnTimeout,
		fmt.Errorf("pool %q: slot %d: no handshake within SpawnTimeout %s", p.cfg.Name, s.index, p.cfg.SpawnTimeout))
	defer cancel()
	w, err := p.factory.SpawnWorker(ctx, cmd)
	if err == nil && w == nil {
		err = errors.New("the factory returned no worker")
	}
	if err != nil {
		if cmd.Process != nil && cmd.ProcessState == nil {
			abandon(cmd, nil) // a factory that left it running
		}
		return nil, fmt.Errorf("pool %q: slot %d: spawn: %w", p.cfg.Name, s.index, err)
	}
	w.slot = s
	if stderr != nil {
		stderr.pid.Store(int64(w.pid))
		w.stderr = stderr
	}
	w.start(p.cfg.MaxPayload, p.workerDied)
	return w, nil
}

// runSlot is slot s's supervised process: it keeps one worker at a time in
// the pool, replaces it when a job or the watcher hands it back for a
// planned reason, and fails — to the kernel, then backoff — when it dies.
func (p *Pool) runSlot(ctx context.Context, s *slot) error {
	select {
	case <-s.events: // a hand-back left over from a run that ended
	default:
	}
	w, first := s.first, s.first != nil
	s.first = nil
	if w == nil {
		var err error
		if w, err = p.spawn(ctx, s); err != nil {
			if ctx.Err() != nil {
				return nil // the pool is stopping
			}
			return err
		}
	}
	for {
		p.emit(Event{Kind: EventWorkerStarted, Slot: s.index, Pid: w.pid})
		p.adopt(s, w)
		if first {
			p.firstAdopted.Done()
			first = false
		}
		select {
		case ev := <-s.events:
			if ev.failure != nil {
				p.emit(Event{Kind: EventWorkerFailed, Slot: s.index, Pid: w.pid, Err: ev.failure})
				if errors.Is(ev.failure, ErrExecTimeout) {
					p.emit(Event{Kind: EventWorkerReplaced, Slot: s.index, Pid: w.pid, Reason: ReasonExecTimeout, Err: ev.failure})
				}
				w.stop(p.cfg.DestroyTimeout)
				p.disown(s)
				return ev.failure
			}
			p.emit(Event{Kind: EventWorkerReplaced, Slot: s.index, Pid: w.pid, Reason: ev.reason})
			p.stopWorker(s, w)
			var err error
			if w, err = p.spawn(ctx, s); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		case <-ctx.Done():
			if p.withdraw(w) == StateWorking {
				<-w.dead // cut by Destroy: its Exec hands it back
			}
			p.stopWorker(s, w)
			return nil
		}
	}
}

// stopWorker stops w gracefully and says so.
func (p *Pool) stopWorker(s *slot, w *Worker) {
	w.stop(p.cfg.DestroyTimeout)
	p.disown(s)
	p.emit(Event{Kind: EventWorkerStopped, Slot: s.index, Pid: w.pid})
}

// adopt makes w its slot's current worker and offers it for jobs.
func (p *Pool) adopt(s *slot, w *Worker) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.current = w
	select {
	case <-w.dead:
		// It died before it was adopted: workerDied found it in no state
		// it acts on, so its slot learns of it here.
		p.handBackLocked(w, slotEvent{failure: w.err})
	default:
		p.offerLocked(w)
	}
}

// disown marks slot s as having no worker.
func (p *Pool) disown(s *slot) {
	p.mu.Lock()
	s.current = nil
	p.mu.Unlock()
}

// offerLocked gives w to the oldest waiting Exec, or puts it in the free
// list.
func (p *Pool) offerLocked(w *Worker) {
	if len(p.waiters) > 0 && !p.stopping {
		wt := p.waiters[0]
		p.waiters[0] = nil
		p.waiters = p.waiters[1:]
		w.state = StateWorking
		w.sawIdle = false // straight from its last job
		p.busy++
		wt.granted <- w // buffered: never blocks
		return
	}
	w.state = StateReady
	w.idleSince = time.Now()
	p.free = append(p.free, w)
}

// withdraw takes w out of the pool for its slot to stop it, and returns
// the state it was in; a worker under a job is killed (Destroy's ctx
// expired).
func (p *Pool) withdraw(w *Worker) State {
	p.mu.Lock()
	defer p.mu.Unlock()
	state := w.state
	switch state {
	case StateReady:
		p.removeFreeLocked(w)
	case StateWorking:
		w.kill(fmt.Errorf("pool %q: %w", p.cfg.Name, ErrPoolStopped))
	}
	w.state = StateStopped
	return state
}

func (p *Pool) removeFreeLocked(w *Worker) {
	if i := slices.Index(p.free, w); i >= 0 {
		p.free = slices.Delete(p.free, i, i+1)
	}
}

// handBackLocked takes an idle or finished worker out of the pool and
// hands it to its slot.
func (p *Pool) handBackLocked(w *Worker, ev slotEvent) {
	if ev.failure != nil {
		w.state = StateErrored
	} else {
		w.state = StateStopped
	}
	ev.worker = w
	select {
	case w.slot.events <- ev:
	default: // its slot is already handling this worker
	}
}

// workerDied runs when a worker's process has been reaped. An idle worker
// goes back to its slot as a failure; a busy one is its Exec's business.
func (p *Pool) workerDied(w *Worker) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w.state == StateReady {
		p.removeFreeLocked(w)
		p.handBackLocked(w, slotEvent{failure: w.err})
	}
}

// Exec runs one job on a free worker and returns its reply. It waits at
// most AllocateTimeout for a free worker (ErrNoFreeWorkers), fails at once
// when MaxQueue Execs already wait (ErrQueueFull), after Destroy
// (ErrPoolStopped), or for a request over MaxPayload (ErrPayloadTooLarge,
// before anything is sent). A handler's error is a JobError; a worker that
// dies, breaks the protocol, replies over MaxPayload or runs past
// ExecTimeout gives a *WorkerError and is replaced. If ctx is done while
// the job runs, the worker is killed and replaced and Exec returns ctx's
// error. A job is run at most once, except after a StopRequest reply: then
// it runs once more on another worker.
func (p *Pool) Exec(ctx context.Context, rqs Payload) (Payload, error) {
	if size := len(rqs.Context) + len(rqs.Body); size > p.cfg.MaxPayload {
		return Payload{}, fmt.Errorf("pool %q: a request of %d bytes, limit %d: %w", p.cfg.Name, size, p.cfg.MaxPayload, ErrPayloadTooLarge)
	}
	stopRequested := false
	for {
		w, err := p.allocate(ctx)
		if err != nil {
			return Payload{}, err
		}
		res := w.exec(ctx, rqs, p.cfg.ExecTimeout)
		if res.replace == ReasonStopRequest && stopRequested {
			res.err = &WorkerError{Pid: w.pid, Err: fmt.Errorf("%w: a second stop request for the same job", ErrProtocol)}
		}
		p.finish(w, res)
		switch {
		case res.unsent: // the worker broke the protocol between jobs
			continue
		case res.replace == ReasonStopRequest && !stopRequested:
			stopRequested = true
			continue
		}
		return res.reply, res.err
	}
}

// allocate takes a free worker, waiting for one at most AllocateTimeout.
func (p *Pool) allocate(ctx context.Context) (*Worker, error) {
	p.mu.Lock()
	if p.stopping {
		p.mu.Unlock()
		return nil, p.errStopped()
	}
	if n := len(p.free); n > 0 {
		w := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		w.state = StateWorking
		w.sawIdle = time.Since(w.idleSince) >= idleOutputGap
		p.busy++
		p.mu.Unlock()
		return w, nil
	}
	if p.cfg.MaxQueue > 0 && len(p.waiters) >= p.cfg.MaxQueue {
		p.mu.Unlock()
		return nil, fmt.Errorf("pool %q: %d Execs already wait: %w", p.cfg.Name, p.cfg.MaxQueue, ErrQueueFull)
	}
	wt, _ := p.spare.Get().(*waiter)
	if wt == nil {
		wt = &waiter{granted: make(chan *Worker, 1), timer: time.NewTimer(p.cfg.AllocateTimeout)}
	} else {
		wt.timer.Reset(p.cfg.AllocateTimeout)
	}
	p.waiters = append(p.waiters, wt)
	p.mu.Unlock()

	// Once it returns, wt is in no list and its channel is empty.
	defer p.spare.Put(wt)
	defer wt.timer.Stop()
	var err error
	select {
	case w := <-wt.granted:
		if w == nil {
			return nil, p.errStopped()
		}
		return w, nil
	case <-wt.timer.C:
		err = fmt.Errorf("pool %q: no worker free within %s: %w", p.cfg.Name, p.cfg.AllocateTimeout, ErrNoFreeWorkers)
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.mu.Lock()
	if i := slices.Index(p.waiters, wt); i >= 0 {
		p.waiters = slices.Delete(p.waiters, i, i+1)
		p.mu.Unlock()
		return nil, err
	}
	p.mu.Unlock()
	if w := <-wt.granted; w != nil { // granted at that instant: give it back
		p.finish(w, jobResult{})
	}
	return nil, err
}

func (p *Pool) errStopped() error {
	return fmt.Errorf("pool %q: %w", p.cfg.Name, ErrPoolStopped)
}

// finish takes a worker back from a job: to the next job, or to its slot
// when it failed, asked to stop, or passed a soft limit.
func (p *Pool) finish(w *Worker, res jobResult) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy--
	if p.busy == 0 && p.jobsDone != nil {
		close(p.jobsDone)
		p.jobsDone = nil
	}
	if w.state != StateWorking {
		return // withdrawn by its slot: the pool is stopping
	}
	reason := res.replace
	if reason == "" && res.failure == nil {
		reason = p.softLimitLocked(w)
	}
	if reason == "" && res.failure == nil {
		p.offerLocked(w)
		return
	}
	p.handBackLocked(w, slotEvent{reason: reason, failure: res.failure})
}

// softLimitLocked returns the soft limit a worker that just finished a job
// passed, if any.
func (p *Pool) softLimitLocked(w *Worker) string {
	switch {
	case p.cfg.MaxExecutions > 0 && w.numExecs.Load() >= p.cfg.MaxExecutions:
		return ReasonMaxExecutions
	case p.cfg.TTL > 0 && time.Since(w.created) >= p.cfg.TTL:
		return ReasonTTL
	}
	return w.retire // MaxMemory, marked by the watcher while it worked
}

// watch enforces TTL, IdleTTL and MaxMemory every WatchInterval until the
// pool stops: idle workers past a limit go back to their slots at once,
// busy ones past MaxMemory are marked to go after their job. Idle workers
// that wrote output between jobs fail.
func (p *Pool) watch() {
	defer close(p.watchDone)
	ticker := time.NewTicker(p.cfg.WatchInterval)
	defer ticker.Stop()
	for {
		select {
		case <-p.stopRun:
			return
		case <-ticker.C:
			p.check()
		}
	}
}

// check replaces the workers past a soft limit, and the idle ones that
// wrote output nobody asked for.
func (p *Pool) check() {
	rss := map[*Worker]uint64{}
	if p.cfg.MaxMemory > 0 {
		for _, w := range p.currentWorkers() {
			rss[w] = residentBytes(w.pid) // /proc is read outside the lock
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return
	}
	now := time.Now()
	for _, s := range p.slots {
		w := s.current
		if w == nil || (w.state != StateReady && w.state != StateWorking) {
			continue
		}
		if w.state == StateReady {
			if err := w.unrequested(true); err != nil {
				p.removeFreeLocked(w)
				w.kill(err)
				p.handBackLocked(w, slotEvent{failure: w.errorFor(err)})
				continue
			}
		}
		reason := ""
		switch {
		case p.cfg.MaxMemory > 0 && rss[w] > p.cfg.MaxMemory:
			reason = ReasonMaxMemory
		case p.cfg.TTL > 0 && now.Sub(w.created) >= p.cfg.TTL:
			reason = ReasonTTL
		case p.cfg.IdleTTL > 0 && w.state == StateReady && now.Sub(w.idleSince) >= p.cfg.IdleTTL:
			reason = ReasonIdleTTL
		}
		switch {
		case reason == "":
		case w.state == StateReady:
			p.removeFreeLocked(w)
			p.handBackLocked(w, slotEvent{reason: reason})
		case reason == ReasonMaxMemory:
			w.retire = reason // soft: never a busy worker
		}
	}
}

// currentWorkers returns the slots' workers.
func (p *Pool) currentWorkers() []*Worker {
	p.mu.Lock()
	defer p.mu.Unlock()
	workers := make([]*Worker, 0, len(p.slots))
	for _, s := range p.slots {
		if s.current != nil {
			workers = append(workers, s.current)
		}
	}
	return workers
}

// supervisorEvent brings back, after AbortDelay, a slot the kernel
// aborted: the pool never shrinks.
func (p *Pool) supervisorEvent(e supervisor.Event) {
	if e.Kind != supervisor.EventAborted {
		return
	}
	index, err := strconv.Atoi(e.Process)
	if err != nil || index < 0 || index >= len(p.slots) {
		return
	}
	p.cfg.Logger.Warn("pool: the kernel aborted a worker slot; it comes back later",
		"pool", p.cfg.Name, "slot", index, "after", p.cfg.AbortDelay, "err", e.Err)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopping {
		return
	}
	if t := p.revivals[index]; t != nil {
		t.Stop()
	}
	s := p.slots[index]
	p.revivals[index] = time.AfterFunc(p.cfg.AbortDelay, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.stopping {
			return
		}
		delete(p.revivals, index)
		p.table.Put(index, func(ctx context.Context) error { return p.runSlot(ctx, s) })
	})
}

// emit logs e and passes it to Config.OnEvent.
func (p *Pool) emit(e Event) {
	e.Pool = p.cfg.Name
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	switch e.Kind {
	case EventWorkerFailed:
		p.cfg.Logger.Error("pool: worker failed", "pool", e.Pool, "slot", e.Slot, "pid", e.Pid, "err", e.Err)
	case EventWorkerReplaced:
		p.cfg.Logger.Info("pool: worker replaced", "pool", e.Pool, "slot", e.Slot, "pid", e.Pid, "reason", e.Reason)
	case EventWorkerStderr:
		p.cfg.Logger.Debug("pool: worker stderr", "pool", e.Pool, "slot", e.Slot, "pid", e.Pid, "line", e.Line)
	default:
		p.cfg.Logger.Debug("pool: worker "+e.Kind.String(), "pool", e.Pool, "slot", e.Slot, "pid", e.Pid)
	}
	if p.cfg.OnEvent != nil {
		p.cfg.OnEvent(e)
	}
}

// Workers reports every slot's worker: pid, state, jobs run, age and
// resident memory. A slot without a worker (spawning or backing off) is
// StateInactive with Pid 0.
func (p *Pool) Workers() []WorkerInfo {
	p.mu.Lock()
	infos := make([]WorkerInfo, len(p.slots))
	for i, s := range p.slots {
		infos[i] = WorkerInfo{Slot: i, State: StateInactive}
		if w := s.current; w != nil {
			infos[i] = WorkerInfo{Slot: i, Pid: w.pid, State: w.state, NumExecs: w.numExecs.Load(), Created: w.created}
		}
	}
	p.mu.Unlock()
	for i := range infos {
		if infos[i].Pid != 0 {
			infos[i].RSS = residentBytes(infos[i].Pid)
		}
	}
	return infos
}

// Destroy stops the pool. New and waiting Execs get ErrPoolStopped at
// once; jobs under way finish — unless ctx is done first: then their
// workers are killed, those Execs get an error wrapping ErrPoolStopped,
// and Destroy returns ctx's error. Each worker then gets a stop frame, and
// SIGKILL to its process group after DestroyTimeout; Destroy returns once
// every child was reaped. A second Destroy waits for the first and returns
// its result.
func (p *Pool) Destroy(ctx context.Context) error {
	p.destroyOnce.Do(func() {
		p.destroyErr = p.destroy(ctx)
		close(p.destroyed)
	})
	<-p.destroyed
	return p.destroyErr
}

func (p *Pool) destroy(ctx context.Context) error {
	p.mu.Lock()
	p.stopping = true
	for _, wt := range p.waiters {
		wt.granted <- nil
	}
	p.waiters = nil
	for _, t := range p.revivals {
		t.Stop()
	}
	jobsDone := make(chan struct{})
	if p.busy == 0 {
		close(jobsDone)
	} else {
		p.jobsDone = jobsDone
	}
	p.mu.Unlock()

	var err error
	select {
	case <-jobsDone:
	case <-ctx.Done():
		err = fmt.Errorf("pool %q: destroy: jobs cut short: %w", p.cfg.Name, ctx.Err())
	}
	close(p.stopRun) // the slots stop their workers, killing the ones still busy
	<-p.runDone
	<-p.watchDone
	if p.runErr != nil {
		err = errors.Join(err, fmt.Errorf("pool %q: %w", p.cfg.Name, p.runErr))
	}
	return err
}
