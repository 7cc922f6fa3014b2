package supervisor

import (
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// RestartPolicy says when a process is restarted, as in Erlang/OTP. The
// zero value is Permanent.
type RestartPolicy uint8

const (
	// Permanent processes are always restarted: after a failure (as the
	// kernel decides) and after a clean exit (with backoff, no kernel).
	Permanent RestartPolicy = iota
	// Transient processes are restarted only after a failure; a clean exit
	// ends them.
	Transient
	// Temporary processes are never restarted. Their failures still go to
	// the kernel, whose default reply for them is Abort.
	Temporary
)

// String returns "permanent", "transient" or "temporary".
func (r RestartPolicy) String() string {
	switch r {
	case Permanent:
		return "permanent"
	case Transient:
		return "transient"
	case Temporary:
		return "temporary"
	}
	return fmt.Sprintf("RestartPolicy(%d)", uint8(r))
}

// Strategy says which processes restart with a failed one, as in
// Erlang/OTP. The zero value is OneForOne.
type Strategy uint8

const (
	// OneForOne restarts only the failed process.
	OneForOne Strategy = iota
	// OneForAll stops every other process (reverse start order) and
	// restarts all of them in start order.
	OneForAll
	// RestForOne does what OneForAll does, for the processes started after
	// the failed one.
	RestForOne
)

// String returns "one-for-one", "one-for-all" or "rest-for-one".
func (s Strategy) String() string {
	switch s {
	case OneForOne:
		return "one-for-one"
	case OneForAll:
		return "one-for-all"
	case RestForOne:
		return "rest-for-one"
	}
	return fmt.Sprintf("Strategy(%d)", uint8(s))
}

// DefaultBackoff returns the per-process restart delays used when
// Options.Backoff is nil: exponential from 100ms, ×2, ±50% jitter, capped at
// 30s (no delay is longer, jitter included), never giving up. Each call
// returns a new, independent BackOff.
func DefaultBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.Multiplier = 2
	b.RandomizationFactor = 0.5
	b.MaxInterval = 30 * time.Second
	b.MaxElapsedTime = 0
	b.Reset()
	return cappedBackOff{BackOff: b, max: b.MaxInterval}
}

// cappedBackOff bounds the delays of a BackOff, whose jitter may otherwise
// go past its maximum interval.
type cappedBackOff struct {
	backoff.BackOff
	max time.Duration
}

func (c cappedBackOff) NextBackOff() time.Duration {
	d := c.BackOff.NextBackOff()
	if d != backoff.Stop && d > c.max {
		return c.max
	}
	return d
}

// intensity counts restarts within a sliding period: OTP's restart
// intensity. The zero value (max 0) never gives up.
type intensity struct {
	max      int
	period   time.Duration
	restarts []time.Time
}

// add records a restart at now and reports whether the limit is exceeded:
// more than max restarts within period.
func (in *intensity) add(now time.Time) bool {
	if in.max <= 0 || in.period <= 0 {
		return false
	}
	cutoff := now.Add(-in.period)
	kept := in.restarts[:0]
	for _, t := range in.restarts {
		if t.After(cutoff) {
			kept = append(kept, t)
		}
	}
	in.restarts = append(kept, now)
	return len(in.restarts) > in.max
}

// Group restarts (OneForAll, RestForOne). A process that must restart under
// a group strategy leaves its goroutine and queues itself; one goroutine
// per Run takes the queue in order, so two failures never restart the same
// siblings at once. A sibling that failed while a group restart stopped it
// is restarted by that group restart: its own queued request is then stale.

// enqueueGroupLocked queues p for a group restart after delay; t.mu held.
func (t *tree[K, P]) enqueueGroupLocked(p *process[K, P], delay time.Duration) {
	t.setStateLocked(p, ProcessBackoff)
	p.running = false
	p.queued = true
	p.delay = delay
	t.groupQueue = append(t.groupQueue, p)
	select {
	case t.groupSignal <- struct{}{}:
	default:
	}
}

func (t *tree[K, P]) groupRestarter() {
	defer close(t.groupDone)
	for {
		select {
		case <-t.shutdown:
			return
		case <-t.groupSignal:
		}
		for {
			t.mu.Lock()
			if len(t.groupQueue) == 0 || t.stopping {
				t.mu.Unlock()
				break
			}
			p := t.groupQueue[0]
			t.groupQueue = t.groupQueue[1:]
			t.mu.Unlock()
			t.groupRestart(p)
		}
	}
}

// groupRestart stops failed's siblings in reverse start order, waits
// failed's delay and starts them all again in start order, each after the
// one before it is ready.
func (t *tree[K, P]) groupRestart(failed *process[K, P]) {
	t.mu.Lock()
	if !failed.queued || t.procs[failed.key] != failed {
		t.mu.Unlock()
		return // restarted or removed meanwhile
	}
	members := t.groupMembersLocked(failed)
	delay := failed.delay
	t.mu.Unlock()

	for i := len(members) - 1; i >= 0; i-- {
		if !t.stopForGroup(members[i]) {
			return
		}
	}
	if delay > 0 {
		t.event(failed, Event{Kind: EventBackoff, Delay: delay})
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-t.shutdown:
			timer.Stop()
			return
		}
	}
	for _, p := range members {
		settled := t.restartMember(p)
		if settled == nil {
			continue
		}
		select {
		case <-settled:
		case <-t.shutdown:
			return
		}
	}
}

// groupMembersLocked returns failed and the siblings that restart with it,
// in start order; t.mu held.
func (t *tree[K, P]) groupMembersLocked(failed *process[K, P]) []*process[K, P] {
	var members []*process[K, P]
	for _, p := range t.inStartOrderLocked() {
		switch {
		case p == failed:
		case p.want != wantRun:
			continue // being stopped or replaced anyway
		case t.cfg.strategy == RestForOne && p.seq < failed.seq:
			continue
		}
		members = append(members, p)
	}
	return members
}

// stopForGroup stops a running sibling and waits for it (at most both stop
// timeouts); it reports false when the supervisor shuts down meanwhile.
func (t *tree[K, P]) stopForGroup(p *process[K, P]) bool {
	t.mu.Lock()
	if !p.running || p.want != wantRun {
		t.mu.Unlock()
		return true
	}
	t.requestStopLocked(p, wantGroup)
	a := p.att
	var returned <-chan struct{}
	if a != nil {
		returned = a.exitedChan()
	}
	t.unlockAndFlush(p)
	if a != nil { // else it has returned and its exit is with the kernel
		_ = t.awaitStop(t.ctx, p, a, returned) // a timeout is reported with EventStopTimeout
	}
	return !t.isStopping()
}

// restartMember starts p again as part of a group restart, unless it was
// stopped, replaced or removed meanwhile, or its row is gone. It returns
// a channel closed once the new attempt is ready or failed its start.
func (t *tree[K, P]) restartMember(p *process[K, P]) <-chan struct{} {
	v, err := t.table.Get(t.ctx, p.key)
	if err != nil && !errors.Is(err, ErrNotFound) {
		t.tableError(fmt.Errorf("read row %v before restart (restarting the previous value): %w", p.name, err))
	}
	t.mu.Lock()
	if t.stopping || t.procs[p.key] != p || p.want == wantStop {
		t.mu.Unlock()
		return nil
	}
	if p.running { // not down yet: it restarts itself once it is
		if p.want == wantGroup {
			p.rejoin = true
		}
		t.mu.Unlock()
		return nil
	}
	switch {
	case errors.Is(err, ErrNotFound):
		t.mu.Unlock()
		t.discard(p)
		return nil
	case err == nil:
		p.value = v
	}
	p.want = wantRun
	p.restarts++
	t.queueLocked(p, Event{Kind: EventRestarting})
	settled := t.spawnLocked(p).settledChan()
	t.mu.Unlock()
	return settled
}
