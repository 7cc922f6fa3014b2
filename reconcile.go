package supervisor

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// This file keeps the running processes equal to the table's rows: the
// first read, scans, watched changes, Start and Stop, and the final stop.

// watch subscribes to the table's changes, if it announces them. It is
// called before the first read, so no change after that read is missed.
func (t *tree[K, P]) watch(ctx context.Context) <-chan K {
	w, ok := t.table.(Watcher[K])
	if !ok {
		return nil
	}
	ch, err := w.Watch(ctx)
	if err != nil {
		t.tableError(fmt.Errorf("watch (falling back to scans): %w", err))
		return nil
	}
	return ch
}

// unwatch ends the watch and waits (at most StopTimeout) for the table to
// close its channel, so the table's goroutine does not outlive Run.
func (t *tree[K, P]) unwatch(stop context.CancelFunc, watch <-chan K) {
	stop()
	if watch == nil {
		return
	}
	timer := time.NewTimer(t.cfg.stopTimeout)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-watch:
			if !ok {
				return
			}
		case <-timer.C:
			t.tableError(errors.New("watch channel not closed after its context was cancelled"))
			return
		}
	}
}

// watchClosed reports a watch channel the table closed while Run goes on;
// it returns nil, the channel to select on from then.
func (t *tree[K, P]) watchClosed() <-chan K {
	if t.ctx.Err() == nil {
		t.tableError(errors.New("watch channel closed (falling back to scans)"))
	}
	return nil
}

// loop reconciles until callback returned, ctx is done or the supervisor
// gives up.
func (t *tree[K, P]) loop(watch <-chan K, callbackDone <-chan struct{}, cancelCallback context.CancelCauseFunc) {
	scans := time.NewTicker(t.cfg.scanInterval)
	defer scans.Stop()
	for {
		select {
		case <-callbackDone:
			return
		case <-t.ctx.Done():
			t.stopAll()
			return
		case <-t.gaveUp:
			t.stopAll()
			cancelCallback(ErrTooManyRestarts)
			return
		case <-scans.C:
			t.scan()
		case k, ok := <-watch:
			if !ok {
				watch = t.watchClosed()
				continue
			}
			t.reconcileKey(k)
		}
	}
}

// scan reads every row: it starts the rows that have no process (unless
// they ended for good) and, when the read was complete, stops the
// processes whose row is gone. It returns the first attempts it started.
// A row whose read failed counts as present. Rows are taken in batches, so
// a scan of an unchanged table takes the lock once per batch, and the rows
// seen are marked with the scan's number instead of collected in a set.
func (t *tree[K, P]) scan() []*attempt[K, P] {
	it, err := t.table.Iter(t.ctx)
	if err != nil {
		t.tableError(fmt.Errorf("iterate: %w", err))
		return nil
	}
	t.mu.Lock()
	t.scans++
	scan := t.scans
	t.mu.Unlock()
	var (
		started []*attempt[K, P]
		batch   = make([]scannedRow[K, P], 0, scanBatch)
	)
	for it.Next() {
		k, v, err := it.Get(t.ctx)
		if err != nil {
			t.tableError(fmt.Errorf("read row %v: %w", k, err))
		}
		batch = append(batch, scannedRow[K, P]{key: k, value: v, ok: err == nil})
		if len(batch) == scanBatch {
			started = t.applyScanned(scan, batch, started)
			batch = batch[:0]
		}
	}
	started = t.applyScanned(scan, batch, started)
	complete := true
	if err := it.Err(); err != nil {
		complete = false
		t.tableError(fmt.Errorf("iterate: %w", err))
	}
	if err := it.Close(); err != nil {
		t.tableError(fmt.Errorf("close iterator: %w", err))
	}
	if complete {
		t.dropMissing(scan)
	}
	return started
}

const scanBatch = 256

type scannedRow[K comparable, P Runnable] struct {
	key   K
	value P
	ok    bool // read without error
}

// applyScanned marks the rows of batch as seen by scan and starts the ones
// that have no process and did not end for good.
func (t *tree[K, P]) applyScanned(scan uint64, batch []scannedRow[K, P], started []*attempt[K, P]) []*attempt[K, P] {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range batch {
		r := &batch[i]
		_, ended := t.ended[r.key]
		if ended {
			t.ended[r.key] = scan
		}
		if p := t.procs[r.key]; p != nil {
			p.seenScan = scan
			continue
		}
		if ended {
			continue
		}
		if r.ok && !t.stopping {
			a := t.spawnLocked(t.newProcessLocked(r.key, r.value))
			a.p.seenScan = scan
			started = append(started, a)
		}
	}
	return started
}

// dropMissing stops the processes whose row scan did not see and forgets
// the ended rows that are gone (so they start when they come back).
func (t *tree[K, P]) dropMissing(scan uint64) {
	var stopping []*process[K, P]
	t.mu.Lock()
	for k, seen := range t.ended {
		if seen != scan {
			delete(t.ended, k)
		}
	}
	for _, p := range t.procs {
		if p.seenScan != scan && p.want != wantStop {
			stopping = append(stopping, p)
		}
	}
	t.mu.Unlock()
	for _, p := range stopping {
		t.stopForGood(p)
	}
}

// reconcileKey applies a watched change of row k.
func (t *tree[K, P]) reconcileKey(k K) {
	v, err := t.table.Get(t.ctx, k)
	if err != nil && !errors.Is(err, ErrNotFound) {
		t.tableError(fmt.Errorf("read row %v: %w", k, err))
		return
	}
	t.mu.Lock()
	if t.stopping {
		t.mu.Unlock()
		return
	}
	delete(t.ended, k) // put again or deleted: no longer ended for good
	p := t.procs[k]
	switch {
	case err != nil && p == nil:
		t.mu.Unlock()
	case err != nil:
		t.mu.Unlock()
		t.stopForGood(p)
	case p == nil:
		t.spawnLocked(t.newProcessLocked(k, v))
		t.mu.Unlock()
	case !p.running: // down for a group restart: start the new value now
		t.resetLocked(p, v)
		t.spawnLocked(p)
		t.mu.Unlock()
	default:
		p.next = v
		t.requestStopTimedLocked(p, wantReplace)
	}
}

// stopForGood asks p to stop because its row is gone, without waiting.
func (t *tree[K, P]) stopForGood(p *process[K, P]) {
	t.mu.Lock()
	if p.want == wantStop || t.procs[p.key] != p {
		t.mu.Unlock()
		return
	}
	if !p.running {
		t.mu.Unlock()
		t.discard(p)
		return
	}
	t.requestStopTimedLocked(p, wantStop)
}

// requestStopTimedLocked asks p to stop, arming the timers that force it
// and report it if it does not; it unlocks t.mu.
func (t *tree[K, P]) requestStopTimedLocked(p *process[K, P], w want) {
	if t.requestStopLocked(p, w) {
		t.armStopTimersLocked(p.att)
	}
	t.unlockAndFlush(p)
}

// awaitSettled waits until each attempt is ready or has ended, for at most
// StartTimeout. Watched changes are applied meanwhile: a row deleted (or
// lost to another node) while a sibling is slow to start stops now, not
// after StartTimeout. It returns watch, or nil once watch was closed.
func (t *tree[K, P]) awaitSettled(started []*attempt[K, P], watch <-chan K) <-chan K {
	if len(started) == 0 {
		return watch
	}
	settled := make([]<-chan struct{}, len(started))
	t.mu.Lock()
	for i, a := range started {
		settled[i] = a.settledChan()
	}
	t.mu.Unlock()
	timer := time.NewTimer(t.cfg.startTimeout)
	defer timer.Stop()
	for _, ch := range settled {
		for waiting := true; waiting; {
			select {
			case <-ch:
				waiting = false
			case k, ok := <-watch:
				if !ok {
					watch = t.watchClosed()
					continue
				}
				t.reconcileKey(k)
			case <-timer.C:
				return watch
			case <-t.ctx.Done():
				return watch
			case <-t.gaveUp:
				return watch
			}
		}
	}
	return watch
}

// checkStartable returns ErrProcessExists if k has a process.
func (t *tree[K, P]) checkStartable(k K) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopping {
		return t.s.errorf("start %v: %w", k, ErrNotRunning)
	}
	if _, ok := t.procs[k]; ok {
		return t.s.errorf("start %v: %w", k, ErrProcessExists)
	}
	return nil
}

// startOne starts row k for Start: a failed start is not retried.
func (t *tree[K, P]) startOne(k K, v P) (*attempt[K, P], error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopping {
		return nil, t.s.errorf("start %v: %w", k, ErrNotRunning)
	}
	if _, ok := t.procs[k]; ok {
		return nil, t.s.errorf("start %v: %w", k, ErrProcessExists)
	}
	delete(t.ended, k)
	p := t.newProcessLocked(k, v)
	p.oneShot = true
	a := t.spawnLocked(p)
	a.settledChan()
	return a, nil
}

// stopOne is Stop.
func (t *tree[K, P]) stopOne(ctx context.Context, k K) error {
	t.mu.Lock()
	p := t.procs[k]
	if t.stopping {
		t.mu.Unlock()
		return t.s.errorf("stop %v: %w", k, ErrNotRunning)
	}
	if p == nil || p.want == wantStop {
		t.mu.Unlock()
		return t.s.errorf("stop %v: %w", k, ErrProcessNotFound)
	}
	t.ended[k] = t.scans
	if !p.running {
		p.want = wantStop
		if !p.parked {
			t.queueLocked(p, Event{Kind: EventStopping})
		}
		t.mu.Unlock()
		t.discard(p)
		return nil
	}
	t.requestStopLocked(p, wantStop)
	a, deciding := p.att, p.deciding
	if p.stopped == nil {
		p.stopped = make(chan struct{})
	}
	stopped := p.stopped
	t.unlockAndFlush(p)
	if deciding {
		return nil // it has returned; it ends once the kernel answered
	}
	if err := t.awaitStop(ctx, p, a, stopped); err != nil {
		return t.s.errorf("stop %v: %w", k, err)
	}
	return nil
}

// stopAll stops every process concurrently — graceful for StopTimeout,
// then forced for another — and waits for them; the ones still running
// after that are reported with EventStopTimeout and left behind. Nothing
// starts after stopAll began.
func (t *tree[K, P]) stopAll() {
	t.stopOnce.Do(func() {
		t.cancelReports()
		t.mu.Lock()
		t.stopping = true
		close(t.shutdown)
		procs := t.inStartOrderLocked()
		for i := len(procs) - 1; i >= 0; i-- {
			p := procs[i]
			if p.running {
				t.requestStopLocked(p, wantStop)
				continue
			}
			t.removeLocked(p) // waiting for a group restart
			if !p.parked {
				t.queueLocked(p, Event{Kind: EventStopped})
			}
		}
		// Wait for every goroutine, including those of processes that
		// already ended and are delivering their last events.
		waits := make([]stopWait[K, P], 0, len(t.lives))
		for done, p := range t.lives {
			w := stopWait[K, P]{p: p, done: done}
			if p.done == done {
				w.a = p.att
			}
			waits = append(waits, w)
		}
		t.mu.Unlock()
		for _, p := range procs {
			t.flush(p)
		}
		if t.groupDone != nil {
			<-t.groupDone
		}
		t.awaitAll(waits)
	})
}

// stopWait is a process stopAll waits for.
type stopWait[K comparable, P Runnable] struct {
	p    *process[K, P]
	a    *attempt[K, P] // nil while backing off
	done chan struct{}
}

// awaitAll waits for the goroutines of the stopped processes: for
// StopTimeout, then forces every one still running and waits another
// StopTimeout, then reports the rest with EventStopTimeout.
func (t *tree[K, P]) awaitAll(waits []stopWait[K, P]) {
	timer := time.NewTimer(t.cfg.stopTimeout)
	defer timer.Stop()
	const graceful, forced, expired = 0, 1, 2
	phase := graceful
	for _, w := range waits {
		for phase != expired {
			select {
			case <-w.done:
			case <-timer.C:
				phase++
				if phase == forced {
					for _, q := range waits {
						if q.a != nil {
							q.a.cancel(errForcedStop)
						}
					}
					timer.Reset(t.cfg.stopTimeout)
				}
				continue
			}
			break
		}
		select {
		case <-w.done:
		default:
			t.stopTimedOut(w.p)
		}
	}
}
