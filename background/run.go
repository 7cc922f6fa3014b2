package background

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"time"

	"github.com/gosupervise/supervisor"
)

// ErrConflict is returned by Progress once another instance, or another
// claim, owns the state: the run writes nothing more.
var ErrConflict = errors.New("background: the state is owned by another run")

// ErrNoRun is returned by Progress outside a run of this Process.
var ErrNoRun = errors.New("background: no run under way")

// maxJitter caps the random delay added to each cycle's start.
const maxJitter = 30 * time.Second

// run is the bookkeeping of the run under way.
type run struct {
	ctx               context.Context
	claim             int64
	settingsTime      time.Time // the stored SettingsTime the run last took in
	lastWrite         time.Time
	progressFrequency time.Duration
	conflict          bool
	aborted           bool
}

// Run runs the process until ctx is done or the worker's Wait answers
// false: the first cycle after Wait(initial wait), each later one after
// Wait until the next multiple of the stored schedule frequency plus a
// jitter of at most min(30s, frequency/10). A cycle claims the slot under
// the store's lock (unless another instance ran it or runs it), processes
// the active items in name order, then the cleanup items, writing progress
// after each, and finishes with the run's status. A run whose ctx ends
// stops where it is and writes nothing more; another instance takes it
// over after its slot. Run returns at once if it is already running.
func (p *Process) Run(ctx context.Context) {
	p.mu.Lock()
	if p.running {
		p.mu.Unlock()
		p.logger.Error("background: Run called while the process is running")
		return
	}
	p.running = true
	initialWait := p.initialWait
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.running = false
		p.mu.Unlock()
	}()

	if !p.worker.Wait(ctx, initialWait) {
		return
	}
	for ctx.Err() == nil {
		freq := p.cycle(ctx)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		next := now.Truncate(freq).Add(freq)
		if !p.worker.Wait(ctx, next.Sub(now)+jitter(freq)) {
			return
		}
	}
}

func jitter(freq time.Duration) time.Duration {
	return rand.N(min(maxJitter, freq/10) + 1)
}

// cycle runs one cycle and returns the schedule frequency it found.
func (p *Process) cycle(ctx context.Context) time.Duration {
	state, freq, err := p.claim(ctx)
	if err != nil {
		if ctx.Err() == nil {
			p.logger.Warn("background: claim failed; the slot is skipped", "err", err)
		}
		return freq
	}
	if state == nil {
		return freq // another instance has this slot
	}
	defer func() {
		p.mu.Lock()
		p.run = nil
		p.mu.Unlock()
	}()
	result := p.work(ctx, state)
	if result == Conflict || ctx.Err() != nil {
		p.logger.Info("background: run ended without finishing", "result", result, "err", ctx.Err())
		return freq
	}
	return p.finish(ctx, state, result)
}

// claim takes the current slot if no other run has it: it returns the
// claimed state, or nil when the slot is skipped, and the stored schedule
// frequency.
func (p *Process) claim(ctx context.Context) (*State, time.Duration, error) {
	p.mu.Lock()
	freq := p.raisedLocked(p.frequency)
	p.mu.Unlock()
	tx, err := p.lock(ctx)
	if err != nil {
		return nil, freq, err
	}
	defer func() { _ = tx.Rollback() }() // after Commit: ErrTxDone, ignored
	state, err := p.read(ctx, tx)
	if err != nil {
		return nil, freq, err
	}
	p.mu.Lock()
	freq = p.raisedLocked(state.ScheduleFrequency)
	progressFrequency := p.progressFrequencyLocked(freq)
	p.mu.Unlock()

	now := time.Now()
	slotStart := now.Truncate(freq)
	st := state.Status
	if !st.ProgressTime.Before(slotStart) && (st.State == StateActive || !st.StartTime.Before(state.SettingsTime)) {
		return nil, freq, nil // running elsewhere, or already run since the last settings change
	}
	state.Instance = p.instance
	state.Claim++
	state.Status = Status{State: StateActive, StartTime: now, ProgressTime: now, Stats: map[string]float64{}}
	if err := tx.Write(ctx, state); err != nil {
		return nil, freq, err
	}
	if err := tx.Commit(); err != nil {
		return nil, freq, err
	}
	p.mu.Lock()
	p.run = &run{
		ctx:               ctx,
		claim:             state.Claim,
		settingsTime:      state.SettingsTime,
		lastWrite:         now,
		progressFrequency: progressFrequency,
	}
	p.mu.Unlock()
	p.logger.Info("background: run claimed", "claim", state.Claim, "slot", slotStart)
	return state, freq, nil
}

// work processes the active items the run found at its start, then the
// cleanup items, and says how it ended: Completed, Aborted or Conflict.
func (p *Process) work(ctx context.Context, state *State) Progress {
	active := sortedKeys(state.ActiveWork)
	cleanup := sortedKeys(state.CleanupWork)
	for _, name := range active {
		work, ok := state.ActiveWork[name]
		if !ok {
			continue // removed by a merge: it is in cleanup now
		}
		if ctx.Err() != nil {
			return Aborted
		}
		work.Status = Status{State: StateActive, StartTime: time.Now(), Stats: map[string]float64{}}
		err := p.processItem(ctx, state, name, work)
		if err != nil && ctx.Err() != nil {
			return Aborted // stopped, not failed: the run ends here, unwritten
		}
		work.Status.FinishTime = time.Now()
		switch {
		case err == nil: // the worker's word, even after errors it added itself
			work.Status.State = StateCompleted
		case p.AddWorkError(err, name, state) == Abort: // the run is aborted too
			work.Status.State = StateAborted
		default:
			work.Status.State = StateIncomplete
		}
		if result, stop := p.afterItem(state); stop {
			return result
		}
	}
	for _, name := range cleanup {
		if _, ok := state.CleanupWork[name]; !ok {
			continue // back among the active items through a merge
		}
		if ctx.Err() != nil {
			return Aborted
		}
		if err := p.cleanupItem(ctx, state, name); err != nil {
			if ctx.Err() != nil {
				return Aborted
			}
			p.addError(fmt.Errorf("cleanup of %q: %w", name, err), name, nil, state)
		} else if _, active := state.ActiveWork[name]; !active {
			delete(state.CleanupWork, name)
			state.DroppedWork[name] = time.Now()
		}
		if result, stop := p.afterItem(state); stop {
			return result
		}
	}
	return Completed
}

// afterItem writes progress after an item and says whether the run must
// stop: on a conflict, or once it was aborted.
func (p *Process) afterItem(state *State) (Progress, bool) {
	if progress, _ := p.Progress(state); progress == Conflict {
		return Conflict, true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.run.conflict:
		return Conflict, true
	case p.run.aborted:
		return Aborted, true
	}
	return "", false
}

func (p *Process) processItem(ctx context.Context, state *State, name string, work *Work) (err error) {
	defer recoverPanic(&err)
	return p.worker.ProcessActiveWork(ctx, state, name, work, p)
}

func (p *Process) cleanupItem(ctx context.Context, state *State, name string) (err error) {
	defer recoverPanic(&err)
	return p.worker.CleanupWork(ctx, state, name, p)
}

// recoverPanic turns a panic of the worker into a *supervisor.PanicError.
func recoverPanic(err *error) {
	if v := recover(); v != nil {
		*err = &supervisor.PanicError{Value: v, Stack: debug.Stack()}
	}
}

func (p *Process) abort() {
	p.mu.Lock()
	if p.run != nil {
		p.run.aborted = true
	}
	p.mu.Unlock()
}

// finish writes the run's final status under the lock, with the ownership
// check and a merge, and returns the stored schedule frequency.
func (p *Process) finish(ctx context.Context, state *State, result Progress) time.Duration {
	now := time.Now()
	st := &state.Status
	switch {
	case result == Aborted:
		st.State = StateAborted
	case st.TotalErrors > 0:
		st.State = StateIncomplete
	default:
		st.State = StateCompleted
	}
	st.FinishTime = now
	st.Stats["runs"]++
	st.Stats["errors"] += float64(st.TotalErrors)
	st.Stats["duration"] += now.Sub(st.StartTime).Seconds()
	st.Stats["state."+string(st.State)]++
	for k, v := range st.Stats {
		state.AggregateStats[k] += v
	}
	p.mu.Lock()
	r := p.run
	p.mu.Unlock()
	progress, err := p.write(r, state)
	p.mu.Lock()
	freq := p.raisedLocked(state.ScheduleFrequency)
	p.mu.Unlock()
	if err != nil {
		p.logger.Warn("background: the run's final status was not written", "progress", progress, "err", err)
		return freq
	}
	p.logger.Info("background: run finished", "state", st.State, "errors", st.TotalErrors, "items", len(state.ActiveWork))
	return freq
}

// Progress writes the run's state to the store if the progress frequency
// has passed since its last write (else None). Under the lock it checks
// that this run still owns the state — if another instance or claim does,
// Conflict and ErrConflict, and the run writes nothing more — and merges
// settings changed since the run last read them (Merged: stored settings,
// params and frequency win, items keep their in-run status, removed items
// go to cleanup, new ones join and run in the next cycle); else Updated.
// Workers may call it between units of work; Run calls it after every
// item.
func (p *Process) Progress(state *State) (Progress, error) {
	p.mu.Lock()
	r := p.run
	var due bool
	if r != nil {
		due = time.Since(r.lastWrite) >= r.progressFrequency
	}
	p.mu.Unlock()
	switch {
	case r == nil:
		return None, fmt.Errorf("background: process %q: Progress: %w", p.name, ErrNoRun)
	case !due:
		return None, nil
	}
	return p.write(r, state)
}

// write writes state as the run's, under the lock, with the ownership
// check and a merge.
func (p *Process) write(r *run, state *State) (Progress, error) {
	p.mu.Lock()
	ctx, conflict, claim, settingsTime := r.ctx, r.conflict, r.claim, r.settingsTime
	p.mu.Unlock()
	if conflict {
		return Conflict, fmt.Errorf("background: process %q: %w", p.name, ErrConflict)
	}
	if state.Instance != p.instance || state.Claim != claim {
		return None, fmt.Errorf("background: process %q: Progress: the state given is claim %d of instance %q, not this run's (claim %d of %q)",
			p.name, state.Claim, state.Instance, claim, p.instance)
	}
	tx, err := p.lock(ctx)
	if err != nil {
		return None, fmt.Errorf("background: process %q: progress: %w", p.name, err)
	}
	defer func() { _ = tx.Rollback() }()
	stored, err := p.read(ctx, tx)
	if err != nil {
		return None, fmt.Errorf("background: process %q: progress: %w", p.name, err)
	}
	if stored.Instance != p.instance || stored.Claim != claim {
		p.mu.Lock()
		r.conflict = true
		p.mu.Unlock()
		p.logger.Warn("background: the run lost the state", "owner", stored.Instance, "claim", stored.Claim, "our_claim", claim)
		return Conflict, fmt.Errorf("background: process %q: instance %q claim %d: owned by instance %q claim %d: %w",
			p.name, p.instance, claim, stored.Instance, stored.Claim, ErrConflict)
	}
	progress := Updated
	if !stored.SettingsTime.Equal(settingsTime) {
		merge(state, stored, settingsTime, time.Now())
		progress = Merged
	}
	now := time.Now()
	state.Status.ProgressTime = now
	if err := tx.Write(ctx, state); err != nil {
		return None, fmt.Errorf("background: process %q: progress: %w", p.name, err)
	}
	if err := tx.Commit(); err != nil {
		return None, fmt.Errorf("background: process %q: progress: %w", p.name, err)
	}
	p.mu.Lock()
	r.lastWrite = now
	r.settingsTime = state.SettingsTime
	if progress == Merged { // the frequency may have changed with the settings
		r.progressFrequency = p.progressFrequencyLocked(p.raisedLocked(state.ScheduleFrequency))
	}
	p.mu.Unlock()
	return progress, nil
}

// merge takes the settings changes of stored into the run's state: stored
// settings, frequency and item params win; items keep their in-run
// status; items no longer registered go to cleanup; new ones join. since
// is the SettingsTime the run last took in: an item queued for cleanup
// after it (its queue time is the change's SettingsTime) is cleaned up
// again even if the run dropped it.
func merge(state, stored *State, since, now time.Time) {
	for name, work := range state.ActiveWork {
		if s, ok := stored.ActiveWork[name]; ok {
			work.Params = s.Params.Clone()
			continue
		}
		delete(state.ActiveWork, name)
		if _, ok := state.CleanupWork[name]; !ok {
			state.CleanupWork[name] = now
		}
	}
	for name, work := range stored.ActiveWork {
		if _, ok := state.ActiveWork[name]; !ok {
			state.ActiveWork[name] = work.Clone()
		}
	}
	for name, t := range stored.CleanupWork {
		if _, active := state.ActiveWork[name]; active {
			continue
		}
		// Cleaned up by this run, and queued before the run last read the
		// settings: it stays dropped.
		if _, dropped := state.DroppedWork[name]; dropped && !t.After(since) {
			continue
		}
		state.CleanupWork[name] = t
		delete(state.DroppedWork, name)
	}
	for name := range state.CleanupWork {
		if _, active := state.ActiveWork[name]; active {
			delete(state.CleanupWork, name) // registered again
		}
	}
	for name, t := range stored.DroppedWork {
		_, active := state.ActiveWork[name]
		_, cleanup := state.CleanupWork[name]
		if !active && !cleanup {
			state.DroppedWork[name] = t
		}
	}
	for name := range state.DroppedWork {
		_, active := state.ActiveWork[name]
		_, cleanup := state.CleanupWork[name]
		if active || cleanup {
			delete(state.DroppedWork, name)
		}
	}
	state.Settings = stored.Settings.Clone()
	state.ScheduleFrequency = stored.ScheduleFrequency
	state.SettingsTime = stored.SettingsTime
}

// AddError records err in workStatus (nil: none) and in the run's status,
// and answers Abort when it is past a limit (the item's, default 10, or
// the run's, default 25; totals keep counting) or the kernel answers
// Abort; else Continue. With a kernel (WithKernel) it reports err as a
// Failure of "background/<name>".
func (p *Process) AddError(err error, workStatus *Status, state *State) ErrorAction {
	name := ""
	if workStatus != nil {
		for n, w := range state.ActiveWork {
			if &w.Status == workStatus {
				name = n
				break
			}
		}
	}
	return p.addError(err, name, workStatus, state)
}

// AddWorkError records err for the active item workName (the run only, if
// there is no such item) as AddError does.
func (p *Process) AddWorkError(err error, workName string, state *State) ErrorAction {
	var status *Status
	if w, ok := state.ActiveWork[workName]; ok {
		status = &w.Status
	}
	return p.addError(err, workName, status, state)
}

func (p *Process) addError(err error, workName string, workStatus *Status, state *State) ErrorAction {
	if err == nil {
		err = errors.New("nil error")
	}
	now := time.Now()
	action := Continue
	record := ErrorRecord{Time: now, Text: err.Error()}
	if workStatus != nil && !workStatus.record(record, p.maxWorkErrors) {
		action = Abort
	}
	if !state.Status.record(record, p.maxRunErrors) {
		action = Abort
	}
	if p.kernel != nil {
		ctx := context.Background()
		p.mu.Lock()
		if p.run != nil {
			ctx = p.run.ctx
		}
		p.mu.Unlock()
		if p.kernel.Report(ctx, supervisor.Failure{Process: "background/" + p.name, Err: err, Message: workName, Time: now}) == supervisor.Abort {
			action = Abort
		}
	}
	p.logger.Warn("background: error", "work", workName, "err", err, "action", action)
	if action == Abort {
		p.abort()
	}
	return action
}

// record counts an error in s and keeps it if s holds fewer than limit;
// false: it was past the limit.
func (s *Status) record(r ErrorRecord, limit int) bool {
	s.TotalErrors++
	s.LastErrorTime = r.Time
	if len(s.Errors) >= limit {
		return false
	}
	s.Errors = append(s.Errors, r)
	return true
}

// AddStats adds count to the run's statistic name.
func (p *Process) AddStats(count float64, name string, state *State) {
	if state.Status.Stats == nil {
		state.Status.Stats = map[string]float64{}
	}
	state.Status.Stats[name] += count
}

// AddWorkStats adds count to the statistic stat of the active item
// workName, and to the run's statistic "work.<stat>".
func (p *Process) AddWorkStats(count float64, stat, workName string, state *State) {
	if w, ok := state.ActiveWork[workName]; ok {
		if w.Status.Stats == nil {
			w.Status.Stats = map[string]float64{}
		}
		w.Status.Stats[stat] += count
	}
	p.AddStats(count, "work."+stat, state)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
