package background

import (
	"maps"
	"time"
)

// Progress is what a Progress call, or a whole run, came to.
type Progress string

const (
	// Completed: a run did all its work (its status may still be
	// StateIncomplete when items failed).
	Completed Progress = "completed"
	// Updated: the state was written.
	Updated Progress = "updated"
	// Merged: settings changed in the store during the run; the run's state
	// took them in (stored settings win, items keep their in-run status)
	// and was written.
	Merged Progress = "merged"
	// Aborted: errors past a limit, or the kernel, ended the run early.
	Aborted Progress = "aborted"
	// Conflict: another instance, or another claim, owns the state now;
	// this run writes nothing more.
	Conflict Progress = "conflict"
	// None: nothing was written (the progress frequency has not passed).
	None Progress = "none"
)

// ErrorAction is the answer to an error added with AddError or
// AddWorkError.
type ErrorAction string

const (
	// Continue: the error is within the limits; the run goes on.
	Continue ErrorAction = "continue"
	// Abort: the error is past a limit, or the kernel said so; the run
	// ends, aborted.
	Abort ErrorAction = "abort"
)

// RunState is the state of a run, or of one work item in it.
type RunState string

const (
	// StateNew: registered, not run yet.
	StateNew RunState = "new"
	// StateActive: running (or stalled: taken over after its slot).
	StateActive RunState = "active"
	// StateCompleted: done, without errors.
	StateCompleted RunState = "completed"
	// StateIncomplete: done, with errors recorded.
	StateIncomplete RunState = "incomplete"
	// StateAborted: ended early by an error past a limit, or the kernel.
	StateAborted RunState = "aborted"
)

// Params are the settings of a process or the parameters of a work item.
type Params struct {
	Ints    map[string]int64  `json:"ints,omitempty"`
	Strings map[string]string `json:"strings,omitempty"`
}

// Equal reports whether p and q hold the same values; a nil map equals an
// empty one.
func (p Params) Equal(q Params) bool {
	return maps.Equal(p.Ints, q.Ints) && maps.Equal(p.Strings, q.Strings)
}

// Clone returns a deep copy of p.
func (p Params) Clone() Params {
	return Params{Ints: maps.Clone(p.Ints), Strings: maps.Clone(p.Strings)}
}

// ErrorRecord is one recorded error.
type ErrorRecord struct {
	Time time.Time `json:"time"`
	Text string    `json:"text"`
}

// Status is the status of a run (State.Status) or of a work item in it
// (Work.Status).
type Status struct {
	State         RunState           `json:"state"`
	StartTime     time.Time          `json:"start_time"`
	ProgressTime  time.Time          `json:"progress_time"`
	FinishTime    time.Time          `json:"finish_time"`
	Errors        []ErrorRecord      `json:"errors,omitempty"` // the first MaxWorkErrors (item) / MaxTotalErrors (run)
	TotalErrors   int                `json:"total_errors"`     // keeps counting past the cap
	LastErrorTime time.Time          `json:"last_error_time"`
	Stats         map[string]float64 `json:"stats,omitempty"`
}

// Clone returns a deep copy of s.
func (s Status) Clone() Status {
	s.Errors = cloneSlice(s.Errors)
	s.Stats = maps.Clone(s.Stats)
	return s
}

// Work is a registered work item: its parameters and the status of its
// current or last run.
type Work struct {
	Params Params `json:"params"`
	Status Status `json:"status"`
}

// Clone returns a deep copy of w.
func (w *Work) Clone() *Work {
	if w == nil {
		return nil
	}
	return &Work{Params: w.Params.Clone(), Status: w.Status.Clone()}
}

// State is a process's state as a Store keeps it: its settings, its work
// items and the status of its current or last run. Every instance of the
// process reads and writes the same State.
type State struct {
	Name              string               `json:"name"`
	Instance          string               `json:"instance"`           // the owning instance
	Claim             int64                `json:"claim"`              // bumped by every claim: ownership is (Instance, Claim)
	ScheduleFrequency time.Duration        `json:"schedule_frequency"` // nanoseconds
	Settings          Params               `json:"settings"`
	SettingsTime      time.Time            `json:"settings_time"` // last change by Register/Unregister/UpdateSettings
	ActiveWork        map[string]*Work     `json:"active_work"`
	CleanupWork       map[string]time.Time `json:"cleanup_work"`
	DroppedWork       map[string]time.Time `json:"dropped_work"`
	Status            Status               `json:"status"`          // the current or last run
	AggregateStats    map[string]float64   `json:"aggregate_stats"` // summed over runs
}

// Clone returns a deep copy of s; Stores hand out and keep copies, so
// that no two readers share a map.
func (s *State) Clone() *State {
	if s == nil {
		return nil
	}
	c := *s
	c.Settings = s.Settings.Clone()
	c.Status = s.Status.Clone()
	c.CleanupWork = maps.Clone(s.CleanupWork)
	c.DroppedWork = maps.Clone(s.DroppedWork)
	c.AggregateStats = maps.Clone(s.AggregateStats)
	if s.ActiveWork != nil {
		c.ActiveWork = make(map[string]*Work, len(s.ActiveWork))
		for name, w := range s.ActiveWork {
			c.ActiveWork[name] = w.Clone()
		}
	}
	return &c
}

// fill makes every map of s non-nil, so a state read from a store that
// dropped empty maps can be written to.
func (s *State) fill() {
	if s.ActiveWork == nil {
		s.ActiveWork = map[string]*Work{}
	}
	for name, w := range s.ActiveWork {
		if w == nil {
			s.ActiveWork[name] = &Work{Status: Status{State: StateNew}}
		}
	}
	if s.CleanupWork == nil {
		s.CleanupWork = map[string]time.Time{}
	}
	if s.DroppedWork == nil {
		s.DroppedWork = map[string]time.Time{}
	}
	if s.AggregateStats == nil {
		s.AggregateStats = map[string]float64{}
	}
	if s.Status.Stats == nil {
		s.Status.Stats = map[string]float64{}
	}
}

func cloneSlice[T any](s []T) []T {
	if s == nil {
		return nil
	}
	return append(make([]T, 0, len(s)), s...)
}
