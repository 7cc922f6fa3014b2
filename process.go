package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// want is what the supervisor wants of a process; the goroutine that runs
// the process reads it whenever the process ends or a wait is interrupted.
type want uint8

const (
	wantRun     want = iota // keep it running
	wantStop                // stop it for good (Stop, row deleted, shutdown)
	wantReplace             // stop it and start process.next (row put again)
	wantGroup               // stop it and leave it for a group restart
)

// Causes with which the supervisor cancels an attempt's context.
var (
	errForcedStop = errors.New("supervisor: forced stop")
	errKilled     = errors.New("supervisor: killed by the error kernel")
	errAttemptEnd = errors.New("supervisor: process returned")
)

// process is one row's process. Its fields are guarded by tree.mu; one
// goroutine at a time (running) runs it and handles its exits.
type process[K comparable, P Runnable] struct {
	key         K
	name        string // fmt.Sprint(key), for events
	failureName string // "<supervisor>/<key>", for the kernel
	value       P
	policy      RestartPolicy
	seq         uint64 // start order
	seenScan    uint64 // the last scan that saw its row

	state    ProcessState
	since    time.Time
	restarts int
	lastErr  error

	want       want
	next       P               // wantReplace: the value to start
	att        *attempt[K, P]  // the current run; nil between runs
	running    bool            // a goroutine runs the process
	done       chan struct{}   // closed when that goroutine ends
	wake       chan struct{}   // interrupts a backoff wait (capacity 1)
	oneShot    bool            // started by Start: a failed start is not retried
	queued     bool            // waits in the group restart queue
	parked     bool            // stopped for a group restart, waiting for it
	rejoin     bool            // the group restart passed it while it was stopping: restart it once it is down
	delay      time.Duration   // queued: the restart delay
	bo         backoff.BackOff // created at the first failure
	startTimer *time.Timer     // fails unready attempts; one per process
	deciding   bool            // its exit is with the kernel
	stopped    chan struct{}   // made by Stop: closed once the process has stopped (or its exit is with the kernel)
	unhealthy  bool            // failed since it last ran healthy
	events     []Event         // queued for delivery, in the order they happened
	draining   bool            // a goroutine is delivering events
}

// attempt is one run of a process: one call of Runnable.Run. It is the
// context the process runs with: Run's ctx made cancellable, carrying the
// attempt for Report.
type attempt[K comparable, P Runnable] struct {
	context.Context
	t      *tree[K, P]
	p      *process[K, P]
	cancel context.CancelCauseFunc
	direct bool // a RunnableFunc run by the supervisor: a stop cancels its ctx

	// guarded by tree.mu; the channels are made when first needed
	stop          chan struct{} // closed to ask for a graceful stop
	exited        chan struct{} // closed when the process has returned
	settled       chan struct{} // closed once ready, or once its failed start was handled
	stopAsked     bool
	ready         bool
	ended         bool // the process has returned
	isSettled     bool
	startErr      error     // why it ended before ready
	startDeadline time.Time // when an unready attempt fails its start
	decided       bool      // a Report got Kill or Abort: the exit is not reported again
	action        Action
	timers        []*time.Timer // stop and health timers, stopped when it ends
}

// Value finds the attempt for Report, and the rest in Run's ctx.
func (a *attempt[K, P]) Value(key any) any {
	if key == (reporterKey{}) {
		return a
	}
	return a.Context.Value(key)
}

// settledChan returns a channel closed once a is settled; t.mu held.
func (a *attempt[K, P]) settledChan() <-chan struct{} { return lazySignal(&a.settled, a.isSettled) }

// exitedChan returns a channel closed once the process has returned;
// t.mu held.
func (a *attempt[K, P]) exitedChan() <-chan struct{} { return lazySignal(&a.exited, a.ended) }

// lazySignal makes *ch on first use — closed if the event already happened —
// so that attempts nobody waits on allocate no channel.
func lazySignal(ch *chan struct{}, happened bool) <-chan struct{} {
	if *ch == nil {
		*ch = make(chan struct{})
		if happened {
			close(*ch)
		}
	}
	return *ch
}

// tree is the state of one Run.
type tree[K comparable, P Runnable] struct {
	s     *Supervisor[K, P]
	cfg   *config
	table Table[K, P]
	ctx   context.Context

	// reportCtx is Run's ctx, cancelled when stopAll begins: exits are
	// reported with it.
	reportCtx     context.Context
	cancelReports context.CancelFunc

	mu          sync.Mutex
	procs       map[K]*process[K, P]
	ended       map[K]uint64 // ended for good (scans skip them), with the last scan that saw them
	scans       uint64       // scans begun
	seq         uint64
	stopping    bool
	intensity   intensity
	groupQueue  []*process[K, P]
	groupSignal chan struct{}
	groupDone   chan struct{}
	lives       map[chan struct{}]*process[K, P] // goroutines running processes, by done channel

	shutdown chan struct{} // closed when stopAll begins
	gaveUp   chan struct{} // closed when the intensity was exceeded
	giveUp   sync.Once
	stopOnce sync.Once
}

func newTree[K comparable, P Runnable](ctx context.Context, s *Supervisor[K, P], cfg *config) *tree[K, P] {
	t := &tree[K, P]{
		s: s, cfg: cfg, table: s.table, ctx: ctx,
		procs:       map[K]*process[K, P]{},
		lives:       map[chan struct{}]*process[K, P]{},
		ended:       map[K]uint64{},
		intensity:   intensity{max: cfg.maxRestarts, period: cfg.period},
		groupSignal: make(chan struct{}, 1),
		shutdown:    make(chan struct{}),
		gaveUp:      make(chan struct{}),
	}
	t.reportCtx, t.cancelReports = context.WithCancel(ctx)
	if cfg.strategy != OneForOne {
		t.groupDone = make(chan struct{})
		go t.groupRestarter()
	}
	return t
}

// newProcessLocked adds a process for row k; t.mu held.
func (t *tree[K, P]) newProcessLocked(k K, v P) *process[K, P] {
	name := fmt.Sprint(k)
	p := &process[K, P]{key: k, name: name, failureName: t.cfg.name + "/" + name, wake: make(chan struct{}, 1)}
	t.resetLocked(p, v)
	t.procs[k] = p
	return p
}

// resetLocked makes p a fresh process of v at the end of the start order.
func (t *tree[K, P]) resetLocked(p *process[K, P], v P) {
	t.seq++
	p.seq = t.seq
	p.seenScan = t.scans // a scan under way may have passed its row already
	p.value = v
	p.policy = t.cfg.restart
	if rp, ok := any(v).(interface{ RestartPolicy() RestartPolicy }); ok && !isNil(v) {
		if r := rp.RestartPolicy(); r <= Temporary {
			p.policy = r
		} else {
			t.cfg.logger.Warn("supervisor: unknown restart policy; using the default",
				"supervisor", t.cfg.name, "process", p.name, "policy", r)
		}
	}
	p.want = wantRun
	p.restarts = 0
	p.lastErr = nil
	p.bo = nil
	p.unhealthy = false
	p.oneShot = false
}

// spawnLocked starts the goroutine that runs p; t.mu held.
func (t *tree[K, P]) spawnLocked(p *process[K, P]) *attempt[K, P] {
	a := t.newAttemptLocked(p)
	p.running = true
	p.queued = false
	p.parked = false
	p.done = make(chan struct{})
	t.lives[p.done] = p
	go t.live(p, a, p.done)
	return a
}

func (t *tree[K, P]) newAttemptLocked(p *process[K, P]) *attempt[K, P] {
	a := &attempt[K, P]{t: t, p: p}
	a.Context, a.cancel = context.WithCancelCause(t.ctx)
	if _, a.direct = any(p.value).(RunnableFunc); !a.direct {
		a.stop = make(chan struct{})
	}
	p.att = a
	t.transitionLocked(p, ProcessStarting, EventStarting)
	return a
}

func (t *tree[K, P]) setStateLocked(p *process[K, P], s ProcessState) {
	p.state = s
	p.since = time.Now()
}

// transitionLocked enters state s and queues an event of kind at the same
// instant; t.mu held.
func (t *tree[K, P]) transitionLocked(p *process[K, P], s ProcessState, kind EventKind) {
	t.setStateLocked(p, s)
	p.events = append(p.events, Event{Kind: kind, Supervisor: t.cfg.name, Process: p.name, Time: p.since})
}

// live runs p until it ends for good or leaves it to a group restart.
func (t *tree[K, P]) live(p *process[K, P], a *attempt[K, P], done chan struct{}) {
	defer func() {
		t.mu.Lock()
		delete(t.lives, done)
		t.mu.Unlock()
		close(done)
	}()
	for a != nil {
		err := t.runAttempt(p, a)
		a = t.afterExit(p, a, err)
	}
}

// runAttempt runs p once, failing the start after StartTimeout. A
// RunnableFunc runs on this goroutine, with RunnableFunc.Run's semantics:
// ready at once, stopped by cancelling its context.
func (t *tree[K, P]) runAttempt(p *process[K, P], a *attempt[K, P]) error {
	t.flush(p)
	if isNil(p.value) {
		return fmt.Errorf("row %v: %w", p.name, ErrNilProcess)
	}
	if f, ok := any(p.value).(RunnableFunc); ok {
		a.markReady()
		return callFunc(a, f)
	}
	t.armStartTimer(p, a)
	err := callRun(a, p.value, a.callback)
	if !a.isReady() && context.Cause(a) == ErrStartTimeout {
		return fmt.Errorf("%w after %v", ErrStartTimeout, t.cfg.startTimeout)
	}
	return err
}

func callRun[P Runnable](ctx context.Context, p P, callback Callback) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = newPanicError(v)
		}
	}()
	return p.Run(ctx, callback)
}

func callFunc(ctx context.Context, f RunnableFunc) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = newPanicError(v)
		}
	}()
	return f(ctx)
}

// armStartTimer fails a's start after StartTimeout. Each process keeps one
// timer for all its attempts; a firing meant for an earlier attempt is
// recognised by its deadline.
func (t *tree[K, P]) armStartTimer(p *process[K, P], a *attempt[K, P]) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if a.ready {
		return
	}
	a.startDeadline = time.Now().Add(t.cfg.startTimeout)
	if p.startTimer == nil {
		p.startTimer = time.AfterFunc(t.cfg.startTimeout, func() { t.startTimedOut(p) })
	} else {
		p.startTimer.Reset(t.cfg.startTimeout)
	}
}

func (t *tree[K, P]) startTimedOut(p *process[K, P]) {
	t.mu.Lock()
	defer t.mu.Unlock() // markReady decides under it too: ready or timed out, never both
	a := p.att
	if a != nil && !a.ready && !a.startDeadline.IsZero() && !time.Now().Before(a.startDeadline) {
		a.cancel(ErrStartTimeout)
	}
}

// callback is what the process calls when it is ready: it marks it
// running and waits for a stop.
func (a *attempt[K, P]) callback(ctx context.Context) error {
	a.markReady()
	select {
	case <-ctx.Done():
	case <-a.stop:
	case <-a.Done():
	}
	return nil
}

func (a *attempt[K, P]) markReady() {
	t, p := a.t, a.p
	t.mu.Lock()
	if a.ready || a.ended || a.Err() != nil {
		t.mu.Unlock()
		return
	}
	a.ready = true
	if p.startTimer != nil {
		p.startTimer.Stop()
	}
	a.settleLocked()
	p.oneShot = false
	if p.unhealthy {
		a.timers = append(a.timers, time.AfterFunc(t.cfg.healthyAfter, func() { t.markHealthy(a) }))
	}
	if a.stopAsked {
		t.queueLocked(p, Event{Kind: EventReady})
	} else {
		t.transitionLocked(p, ProcessRunning, EventReady)
	}
	t.unlockAndFlush(p)
}

// markHealthy resets the backoff and the kernel's Consecutive count of a
// process that has been up for HealthyAfter.
func (t *tree[K, P]) markHealthy(a *attempt[K, P]) {
	p := a.p
	t.mu.Lock()
	if p.att != a || a.ended {
		t.mu.Unlock()
		return
	}
	p.unhealthy = false
	if p.bo != nil {
		p.bo.Reset()
	}
	t.mu.Unlock()
	t.cfg.kernel.Healthy(p.failureName)
}

func (a *attempt[K, P]) isReady() bool {
	a.t.mu.Lock()
	defer a.t.mu.Unlock()
	return a.ready
}

// report is Report from inside the process: the failure goes to the
// kernel and Kill or Abort cancel the process before Report returns.
func (a *attempt[K, P]) report(ctx context.Context, err error, msg any) Action {
	t, p := a.t, a.p
	action := t.cfg.kernel.Report(ctx, Failure{
		Process: p.failureName, Err: err, Message: msg, Restart: p.policy,
	})
	if ctx.Err() != nil {
		return action // answered because ctx ended: not acted upon
	}
	t.mu.Lock()
	p.lastErr = err
	p.unhealthy = true
	act := action != Continue && !a.ended
	if act && (!a.decided || action > a.action) {
		a.decided, a.action = true, action
	}
	t.queueLocked(p, Event{Kind: EventFailed, Err: err, Action: action})
	t.unlockAndFlush(p)
	if act {
		a.cancel(errKilled)
	}
	return action
}

// afterExit handles the end of attempt a and returns the next attempt of
// p, or nil when p's goroutine should end.
func (t *tree[K, P]) afterExit(p *process[K, P], a *attempt[K, P], err error) *attempt[K, P] {
	defer t.settle(a)
	t.mu.Lock()
	a.ended = true
	if a.exited != nil {
		close(a.exited)
	}
	if !a.ready {
		a.startErr = err
		if a.startErr == nil {
			a.startErr = errors.New("process returned before it was ready")
		}
	}
	if p.startTimer != nil {
		p.startTimer.Stop()
	}
	for _, tm := range a.timers {
		tm.Stop()
	}
	p.att = nil
	if !a.stopAsked && t.ctx.Err() != nil { // Run's ctx forced the stop
		t.transitionLocked(p, ProcessStopping, EventStopping)
	}
	w, decided, action, wasReady := p.want, a.decided, a.action, a.ready
	t.mu.Unlock()
	a.cancel(errAttemptEnd)

	if w != wantRun || t.ctx.Err() != nil {
		return t.afterStop(p, err, decided)
	}
	switch {
	case decided:
	case err == nil && p.policy != Permanent:
		return t.end(p, EventStopped, nil, true)
	case err == nil:
		action = Kill // a clean exit of a permanent process: backoff, no kernel
	default:
		action = t.reportExit(p, err)
	}
	return t.restart(p, a, action, err, wasReady)
}

// settleLocked marks a as settled: ready, or failed and handled; t.mu
// held.
func (a *attempt[K, P]) settleLocked() {
	if !a.isSettled {
		a.isSettled = true
		if a.settled != nil {
			close(a.settled)
		}
	}
}

// settle marks a failed start as handled, so Start and Run's first start
// see its outcome only once the kernel decided and the process was
// removed or scheduled for a restart.
func (t *tree[K, P]) settle(a *attempt[K, P]) {
	t.mu.Lock()
	defer t.mu.Unlock()
	a.settleLocked()
}

// afterStop handles the exit of a process the supervisor asked to stop.
// A failure on the way out still goes to the kernel (its answer changes
// nothing).
func (t *tree[K, P]) afterStop(p *process[K, P], err error, decided bool) *attempt[K, P] {
	if t.isStopExit(err) {
		err = nil
	} else if !decided {
		t.reportExit(p, err)
	}
	t.mu.Lock()
	if p.want == wantGroup && !t.stopping {
		t.queueLocked(p, Event{Kind: EventStopped, Err: err})
		next := t.parkLocked(p)
		t.unlockAndFlush(p)
		return next
	}
	t.mu.Unlock()
	return t.end(p, EventStopped, err, false)
}

// parkLocked leaves p down for the group restart under way, or starts it
// again at once when that restart has already passed it (p returned late);
// t.mu held. A Temporary sibling is not restarted: it ends for good.
func (t *tree[K, P]) parkLocked(p *process[K, P]) *attempt[K, P] {
	switch {
	case p.policy == Temporary:
		t.ended[p.key] = t.scans
		t.removeLocked(p)
	case p.rejoin:
		p.rejoin = false
		p.want = wantRun
		p.restarts++
		t.queueLocked(p, Event{Kind: EventRestarting})
		return t.newAttemptLocked(p)
	default:
		t.setStateLocked(p, ProcessBackoff)
		p.parked = true
	}
	p.running = false
	return nil
}

// replaceLocked turns p into a fresh process of the value its row was put
// with and returns its first attempt; t.mu held.
func (t *tree[K, P]) replaceLocked(p *process[K, P]) *attempt[K, P] {
	t.resetLocked(p, p.next)
	var zero P
	p.next = zero
	return t.newAttemptLocked(p)
}

// isStopExit reports whether err is how a process says it stopped because
// it was asked to.
func (t *tree[K, P]) isStopExit(err error) bool {
	return err == nil || errors.Is(err, context.Canceled) || errors.Is(err, errForcedStop) ||
		errors.Is(err, errStopRequested) || (t.ctx.Err() != nil && errors.Is(err, t.ctx.Err()))
}

// reportExit sends the failure of an exited process to the kernel with
// Run's context (the process's own is done), which stopAll cancels so that
// no decision holds up a shutdown.
func (t *tree[K, P]) reportExit(p *process[K, P], err error) Action {
	t.mu.Lock()
	p.deciding = true
	stopped := p.takeStopped()
	t.mu.Unlock()
	if stopped != nil {
		close(stopped) // a Stop need not wait for the kernel
	}
	action := t.cfg.kernel.Report(t.reportCtx, Failure{
		Process: p.failureName, Err: err, Exited: true, Restart: p.policy,
	})
	t.mu.Lock()
	p.deciding = false
	p.lastErr = err
	p.unhealthy = true
	t.queueLocked(p, Event{Kind: EventFailed, Err: err, Action: action})
	t.unlockAndFlush(p)
	return action
}

// restart acts on the kernel's answer to p's exit.
func (t *tree[K, P]) restart(p *process[K, P], a *attempt[K, P], action Action, err error, wasReady bool) *attempt[K, P] {
	switch {
	case t.reportCtx.Err() != nil: // decided because the supervisor is stopping
		return t.end(p, EventStopped, nil, false)
	case action == Abort:
		return t.end(p, EventAborted, err, true)
	case p.policy == Temporary:
		return t.end(p, EventStopped, nil, true)
	}
	t.mu.Lock()
	if p.want == wantGroup && !t.stopping { // a sibling's group restart took it
		next := t.parkLocked(p)
		t.unlockAndFlush(p)
		return next
	}
	if p.want != wantRun || t.stopping { // stopped or put again since it exited
		t.mu.Unlock()
		return t.end(p, EventStopped, nil, false) // stopped, or put again
	}
	if p.oneShot && !wasReady { // a failed Start leaves nothing running
		t.mu.Unlock()
		return t.end(p, EventStopped, nil, false)
	}
	var delay time.Duration
	if action == Kill {
		p.unhealthy = true
		if p.bo == nil {
			p.bo = t.cfg.newBackoff()
		}
		if delay = p.bo.NextBackOff(); delay == backoff.Stop {
			t.mu.Unlock()
			return t.end(p, EventAborted, err, true)
		}
		if t.intensity.max > 0 && t.intensity.add(p.since) {
			t.removeLocked(p)
			p.running = false
			t.mu.Unlock()
			t.exceeded(p, err)
			return nil
		}
	}
	if t.cfg.strategy != OneForOne {
		t.enqueueGroupLocked(p, delay)
		t.mu.Unlock()
		return nil
	}
	t.setStateLocked(p, ProcessBackoff)
	if delay > 0 {
		p.events = append(p.events, Event{Kind: EventBackoff, Supervisor: t.cfg.name, Process: p.name, Time: p.since, Delay: delay})
	}
	a.settleLocked()
	t.unlockAndFlush(p)
	if delay > 0 && !t.sleep(p, delay) {
		return t.end(p, EventStopped, nil, false) // stopped, or put again
	}
	return t.restartAttempt(p)
}

// sleep waits d unless p's want changes or the supervisor shuts down;
// it reports whether the whole delay passed.
func (t *tree[K, P]) sleep(p *process[K, P], d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
			return true
		case <-t.shutdown:
			return false
		case <-t.ctx.Done():
			return false
		case <-p.wake:
			t.mu.Lock()
			w := p.want
			t.mu.Unlock()
			if w != wantRun {
				return false
			}
		}
	}
}

// restartAttempt reads p's row again and starts its next attempt, unless
// the row is gone.
func (t *tree[K, P]) restartAttempt(p *process[K, P]) *attempt[K, P] {
	v, err := t.table.Get(t.ctx, p.key)
	switch {
	case errors.Is(err, ErrNotFound):
		return t.end(p, EventStopped, nil, false)
	case err != nil:
		t.tableError(fmt.Errorf("read row %v before restart (restarting the previous value): %w", p.name, err))
	}
	t.mu.Lock()
	if p.want != wantRun || t.stopping {
		t.mu.Unlock()
		return t.end(p, EventStopped, nil, false) // stopped, or put again
	}
	if err == nil {
		p.value = v
	}
	p.restarts++
	t.queueLocked(p, Event{Kind: EventRestarting})
	a := t.newAttemptLocked(p)
	t.mu.Unlock()
	return a
}

// end ends p with an event of kind, unless its row was put again
// meanwhile: then it returns the first attempt of the new value. An end
// for good makes scans skip the row until it is put again or comes back.
func (t *tree[K, P]) end(p *process[K, P], kind EventKind, err error, forGood bool) *attempt[K, P] {
	t.mu.Lock()
	t.queueLocked(p, Event{Kind: kind, Err: err})
	stopped := p.takeStopped()
	var next *attempt[K, P]
	if p.want == wantReplace && !t.stopping {
		next = t.replaceLocked(p)
	} else {
		if forGood && p.want == wantRun && t.procs[p.key] == p {
			t.ended[p.key] = t.scans
		}
		t.removeLocked(p)
		p.running = false
	}
	t.unlockAndFlush(p)
	if stopped != nil {
		close(stopped) // after the events: Stop returns once they are delivered
	}
	return next
}

// takeStopped hands over the channel a Stop waits on; t.mu held.
func (p *process[K, P]) takeStopped() chan struct{} {
	ch := p.stopped
	p.stopped = nil
	return ch
}

// discard ends p, which has no goroutine (it waits for a group restart).
// A parked process has had its EventStopped already.
func (t *tree[K, P]) discard(p *process[K, P]) {
	t.mu.Lock()
	if !p.parked {
		t.queueLocked(p, Event{Kind: EventStopped})
	}
	t.removeLocked(p)
	t.unlockAndFlush(p)
}

func (t *tree[K, P]) removeLocked(p *process[K, P]) {
	if t.procs[p.key] == p {
		delete(t.procs, p.key)
	}
	p.queued = false
}

// exceeded gives up: the restart intensity was exceeded.
func (t *tree[K, P]) exceeded(p *process[K, P], err error) {
	t.giveUp.Do(func() {
		t.event(p, Event{Kind: EventTooManyRestarts, Err: err})
		close(t.gaveUp)
	})
}

func (t *tree[K, P]) isStopping() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stopping
}

func (t *tree[K, P]) hasGivenUp() bool {
	select {
	case <-t.gaveUp:
		return true
	default:
		return false
	}
}

// requestStopLocked asks p to stop because of w and reports whether it
// queued an EventStopping (flush p after unlocking); t.mu held. A process
// with no attempt (backing off) is woken.
func (t *tree[K, P]) requestStopLocked(p *process[K, P], w want) bool {
	p.want = w
	select {
	case p.wake <- struct{}{}:
	default:
	}
	a := p.att
	if a == nil { // backing off, or its exit is with the kernel
		if p.state != ProcessStopping {
			t.transitionLocked(p, ProcessStopping, EventStopping)
		}
		return false
	}
	if a.stopAsked {
		return false
	}
	a.stopAsked = true
	if a.direct {
		a.cancel(errStopRequested)
	} else {
		close(a.stop)
	}
	t.transitionLocked(p, ProcessStopping, EventStopping)
	return true
}

// armStopTimersLocked forces the stop of a after StopTimeout and reports
// it with EventStopTimeout after another; for stops nobody waits for.
func (t *tree[K, P]) armStopTimersLocked(a *attempt[K, P]) {
	d := t.cfg.stopTimeout
	a.timers = append(a.timers,
		time.AfterFunc(d, func() { a.cancel(errForcedStop) }),
		time.AfterFunc(2*d, func() { t.stopTimedOut(a.p) }))
}

func (t *tree[K, P]) stopTimedOut(p *process[K, P]) {
	t.event(p, Event{Kind: EventStopTimeout, Err: fmt.Errorf("%w: still running %v after the graceful and forced stop",
		ErrStopTimeout, 2*t.cfg.stopTimeout)})
}

// awaitStop waits for wait (the process's return, or its goroutine's end)
// after a stop request: graceful for StopTimeout or until ctx is done,
// then forced for another StopTimeout.
func (t *tree[K, P]) awaitStop(ctx context.Context, p *process[K, P], a *attempt[K, P], wait <-chan struct{}) error {
	timer := time.NewTimer(t.cfg.stopTimeout)
	defer timer.Stop()
	select {
	case <-wait:
		return nil
	case <-ctx.Done():
	case <-timer.C:
	}
	if a != nil {
		a.cancel(errForcedStop)
	}
	timer.Reset(t.cfg.stopTimeout)
	select {
	case <-wait:
		return nil
	case <-timer.C:
		t.stopTimedOut(p)
		return fmt.Errorf("%s: %w", p.failureName, ErrStopTimeout)
	}
}
