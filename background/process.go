package background

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/gosupervise/supervisor"
)

// Defaults of a Process.
const (
	DefaultInitialWait          = time.Minute      // before the first cycle
	DefaultMinScheduleFrequency = 15 * time.Minute // a lower frequency is raised to it
	MaxWorkErrors               = 10               // default errors kept per item; the next answers Abort
	MaxTotalErrors              = 25               // default errors kept per run; the next answers Abort

	// minFrequencyFloor is the lowest schedule frequency, whatever the
	// minimum: a zero one would make Run spin.
	minFrequencyFloor = time.Millisecond

	// lockWait bounds how long claims, progress writes, finishes and the
	// registration methods retry ErrLocked.
	lockWait = 30 * time.Second
)

// ErrRunning is returned by UpdateFlowControl while Run runs.
var ErrRunning = errors.New("background: the process is running")

// Worker does a process's work. Run calls its methods on Run's goroutine.
type Worker interface {
	// ProcessActiveWork processes one active item; nil completes it. An
	// error (a panic too) goes through AddWorkError.
	ProcessActiveWork(ctx context.Context, state *State, workName string, work *Work, p *Process) error
	// CleanupWork cleans up after an item that was unregistered; nil moves
	// it to DroppedWork, an error keeps it for the next run.
	CleanupWork(ctx context.Context, state *State, workName string, p *Process) error
	// Wait waits d, or until ctx is done; false makes Run return.
	Wait(ctx context.Context, d time.Duration) bool
}

// Option configures a Process.
type Option func(*options)

type options struct {
	instance                    string
	maxWorkErrors, maxRunErrors int
	kernel                      *supervisor.ErrorKernel
	logger                      *slog.Logger
}

// WithInstance sets the instance ID, which names the owner of a run in
// the store; default: random, per Process value. Two Process values with
// the same ID still fence each other: ownership is (Instance, Claim).
func WithInstance(id string) Option {
	return func(o *options) { o.instance = id }
}

// WithErrorLimits sets how many errors an item and a run may record; the
// error past a limit answers Abort. Default 10 per item, 25 per run;
// values below 1 keep the default.
func WithErrorLimits(work, total int) Option {
	return func(o *options) {
		if work > 0 {
			o.maxWorkErrors = work
		}
		if total > 0 {
			o.maxRunErrors = total
		}
	}
}

// WithKernel sends every error added to a run to k as a Failure of
// process "background/<name>" with the work name as its Message; a kernel
// Abort aborts the run. Default: none (errors only count against the
// limits, and are logged).
func WithKernel(k *supervisor.ErrorKernel) Option {
	return func(o *options) { o.kernel = k }
}

// WithLogger sets the logger; default slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// Process is batch work that runs at a schedule frequency over a set of
// registered work items, keeping its state in a Store shared by every
// instance of the service; exactly one instance owns each run. Its
// methods are safe for concurrent use, but a run's *State belongs to the
// run: Progress, AddError, AddWorkError, AddStats and AddWorkStats change
// it, and must not be called on it from two goroutines at once.
type Process struct {
	name            string
	worker          Worker
	store           Store
	defaultSettings Params
	instance        string
	maxWorkErrors   int
	maxRunErrors    int
	kernel          *supervisor.ErrorKernel
	logger          *slog.Logger

	mu                sync.Mutex
	frequency         time.Duration // as asked for; ScheduleFrequency raises it
	initialWait       time.Duration
	minFrequency      time.Duration
	progressFrequency time.Duration // 0: derived from the frequency
	running           bool
	run               *run // the run under way; nil between runs
}

// NewProcess returns a process named name (its state's name in store) that
// runs w's work every scheduleFrequency (raised to the minimum, 15m by
// default). defaultSettings are its settings until the store holds some.
// It does nothing until Run.
func NewProcess(name string, w Worker, store Store, scheduleFrequency time.Duration, defaultSettings Params, opts ...Option) *Process {
	o := options{maxWorkErrors: MaxWorkErrors, maxRunErrors: MaxTotalErrors}
	for _, opt := range opts {
		opt(&o)
	}
	if o.instance == "" {
		o.instance = randomInstance()
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	return &Process{
		name:            name,
		worker:          w,
		store:           store,
		defaultSettings: defaultSettings.Clone(),
		instance:        o.instance,
		maxWorkErrors:   o.maxWorkErrors,
		maxRunErrors:    o.maxRunErrors,
		kernel:          o.kernel,
		logger:          o.logger.With("process", name, "instance", o.instance),
		frequency:       scheduleFrequency,
		initialWait:     DefaultInitialWait,
		minFrequency:    DefaultMinScheduleFrequency,
	}
}

func randomInstance() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails
	return hex.EncodeToString(b[:])
}

// Name returns the process's name.
func (p *Process) Name() string { return p.name }

// Instance returns the process's instance ID.
func (p *Process) Instance() string { return p.instance }

// DefaultSettings returns a copy of the settings given to NewProcess.
func (p *Process) DefaultSettings() Params { return p.defaultSettings.Clone() }

// ScheduleFrequency returns the process's schedule frequency: the one given
// to NewProcess or UpdateSettings, raised to the minimum (and to 1ms). Runs
// follow the stored frequency, which another instance's UpdateSettings may
// have changed.
func (p *Process) ScheduleFrequency() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.raisedLocked(p.frequency)
}

// raisedLocked returns freq raised to the minimum schedule frequency, and
// to minFrequencyFloor.
func (p *Process) raisedLocked(freq time.Duration) time.Duration {
	return max(freq, p.minFrequency, minFrequencyFloor)
}

// progressFrequencyLocked returns the progress frequency for a run at
// freq: the one set with UpdateFlowControl, else min(freq/10, minimum/3).
func (p *Process) progressFrequencyLocked(freq time.Duration) time.Duration {
	if p.progressFrequency > 0 {
		return p.progressFrequency
	}
	if p.minFrequency > 0 {
		return min(freq/10, p.minFrequency/3)
	}
	return freq / 10
}

// UpdateFlowControl sets the wait before the first cycle (default 1m), the
// minimum schedule frequency (default 15m; 0: none) and the progress
// frequency (0, the default: min(frequency/10, minimum/3)). It fails with
// ErrRunning while Run runs, and for a negative duration.
func (p *Process) UpdateFlowControl(initialWait, minScheduleFrequency, progressFrequency time.Duration) error {
	if initialWait < 0 || minScheduleFrequency < 0 || progressFrequency < 0 {
		return fmt.Errorf("background: process %q: UpdateFlowControl(%s, %s, %s): negative duration", p.name, initialWait, minScheduleFrequency, progressFrequency)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		return fmt.Errorf("background: process %q: UpdateFlowControl: %w", p.name, ErrRunning)
	}
	p.initialWait = initialWait
	p.minFrequency = minScheduleFrequency
	p.progressFrequency = progressFrequency
	return nil
}

// RegisterWork registers a work item, or changes its parameters, and
// returns it. Registering an item again with equal params writes nothing
// and leaves SettingsTime alone; otherwise the item becomes active (out of
// cleanup and dropped) with a new status. With a nil tx it takes and
// commits a transaction of its own; with the caller's (from Lock on the
// process's store and name) it writes within it and leaves the commit to
// the caller.
func (p *Process) RegisterWork(workName string, params Params, tx Tx) (*Work, error) {
	if workName == "" {
		return nil, fmt.Errorf("background: process %q: RegisterWork: empty work name", p.name)
	}
	var work *Work
	err := p.update(tx, "RegisterWork", func(s *State, now time.Time) bool {
		if old, ok := s.ActiveWork[workName]; ok && old.Params.Equal(params) {
			work = old.Clone()
			return false
		}
		work = &Work{Params: params.Clone(), Status: Status{State: StateNew}}
		s.ActiveWork[workName] = work.Clone()
		delete(s.CleanupWork, workName)
		delete(s.DroppedWork, workName)
		return true
	})
	if err != nil {
		return nil, err
	}
	return work, nil
}

// UnregisterWork moves a work item to cleanup: the next run calls
// CleanupWork for it, then drops it. An unknown name is queued for cleanup
// too; one already in cleanup or dropped is left alone. An empty name is
// an error. tx as for RegisterWork.
func (p *Process) UnregisterWork(workName string, tx Tx) error {
	if workName == "" {
		return fmt.Errorf("background: process %q: UnregisterWork: empty work name", p.name)
	}
	return p.update(tx, "UnregisterWork", func(s *State, now time.Time) bool {
		_, cleanup := s.CleanupWork[workName]
		_, dropped := s.DroppedWork[workName]
		if cleanup || dropped {
			return false
		}
		delete(s.ActiveWork, workName)
		s.CleanupWork[workName] = now
		return true
	})
}

// UpdateSettings replaces the stored settings and, if scheduleFrequency is
// positive, the schedule frequency (raised to the minimum) of the store
// and of this Process value. Running instances take the change in at their
// next progress write (Merged). tx as for RegisterWork; with the caller's
// tx, this Process value takes the new frequency when the call returns,
// even if the caller rolls back.
func (p *Process) UpdateSettings(scheduleFrequency time.Duration, settings Params, tx Tx) error {
	err := p.update(tx, "UpdateSettings", func(s *State, now time.Time) bool {
		s.Settings = settings.Clone()
		if scheduleFrequency > 0 {
			p.mu.Lock()
			s.ScheduleFrequency = p.raisedLocked(scheduleFrequency)
			p.mu.Unlock()
		}
		return true
	})
	if err == nil && scheduleFrequency > 0 {
		p.mu.Lock()
		p.frequency = scheduleFrequency
		p.mu.Unlock()
	}
	return err
}

// update reads the state in tx (or a transaction of its own), lets change
// edit it, and writes it if change says so, moving SettingsTime forward.
func (p *Process) update(tx Tx, op string, change func(s *State, now time.Time) bool) (err error) {
	ctx := context.Background()
	own := tx == nil
	if own {
		if tx, err = p.lock(ctx); err != nil {
			return fmt.Errorf("background: process %q: %s: %w", p.name, op, err)
		}
		defer func() {
			if err != nil {
				_ = tx.Rollback()
			}
		}()
	}
	s, err := p.read(ctx, tx)
	if err != nil {
		return fmt.Errorf("background: process %q: %s: %w", p.name, op, err)
	}
	// The change's stamp: its SettingsTime, and the queue time of an item
	// it sends to cleanup, by which a run's merge tells whether it knew of
	// that.
	stamp := settingsTime(s, time.Now())
	if !change(s, stamp) {
		if own {
			return tx.Rollback()
		}
		return nil
	}
	s.SettingsTime = stamp
	if err = tx.Write(ctx, s); err != nil {
		return fmt.Errorf("background: process %q: %s: %w", p.name, op, err)
	}
	if own {
		if err = tx.Commit(); err != nil {
			return fmt.Errorf("background: process %q: %s: %w", p.name, op, err)
		}
	}
	return nil
}

// settingsTime returns the SettingsTime of a change to s at now: now, or
// 1ns past the previous one and past the start of the run under way, so
// every change moves it forward and a run that started before it is
// never taken for one that saw it.
func settingsTime(s *State, now time.Time) time.Time {
	floor := s.SettingsTime
	if s.Status.StartTime.After(floor) {
		floor = s.Status.StartTime
	}
	if !now.After(floor) {
		return floor.Add(time.Nanosecond)
	}
	return now
}

// lock starts a transaction on the process's state, retrying ErrLocked
// with growing pauses for up to lockWait.
func (p *Process) lock(ctx context.Context) (Tx, error) {
	deadline := time.Now().Add(lockWait)
	pause := 10 * time.Millisecond
	for {
		tx, err := p.store.Lock(ctx, p.name)
		if err == nil {
			return tx, nil
		}
		if !errors.Is(err, ErrLocked) || !time.Now().Before(deadline) {
			return nil, err
		}
		t := time.NewTimer(min(pause, time.Until(deadline)))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
		pause = min(2*pause, time.Second)
	}
}

// read reads the state in tx; before the first write, a new state with the
// default settings and the process's frequency.
func (p *Process) read(ctx context.Context, tx Tx) (*State, error) {
	s, err := tx.Read(ctx)
	if errors.Is(err, ErrNotFound) {
		p.mu.Lock()
		freq := p.raisedLocked(p.frequency)
		p.mu.Unlock()
		s = &State{ // SettingsTime zero: no change yet
			Name:              p.name,
			ScheduleFrequency: freq,
			Settings:          p.defaultSettings.Clone(),
		}
		err = nil
	}
	if err != nil {
		return nil, err
	}
	if s.ScheduleFrequency <= 0 {
		p.mu.Lock()
		s.ScheduleFrequency = p.raisedLocked(p.frequency)
		p.mu.Unlock()
	}
	s.Name = p.name
	s.fill()
	return s, nil
}
