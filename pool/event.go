package pool

import (
	"fmt"
	"strings"
	"time"
)

// EventKind says what happened to a worker.
type EventKind uint8

const (
	// EventWorkerStarted: a worker was spawned and completed its handshake.
	EventWorkerStarted EventKind = iota
	// EventWorkerStopped: a worker was stopped (replaced or destroyed) and
	// reaped.
	EventWorkerStopped
	// EventWorkerFailed: a worker died, broke the protocol or was killed
	// for ExecTimeout; Err says which. Its slot comes back after backoff.
	EventWorkerFailed
	// EventWorkerStderr: one line of a worker's standard error (Line).
	EventWorkerStderr
	// EventWorkerReplaced: a worker is being replaced; Reason says why.
	EventWorkerReplaced
)

var eventKindNames = [...]string{
	EventWorkerStarted:  "started",
	EventWorkerStopped:  "stopped",
	EventWorkerFailed:   "failed",
	EventWorkerStderr:   "stderr",
	EventWorkerReplaced: "replaced",
}

func (k EventKind) String() string {
	if int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Reasons of EventWorkerReplaced.
const (
	ReasonMaxExecutions = "max-executions"
	ReasonTTL           = "ttl"
	ReasonIdleTTL       = "idle-ttl"
	ReasonMaxMemory     = "max-memory"
	ReasonStopRequest   = "stop-request"
	ReasonExecTimeout   = "exec-timeout"
	ReasonCancelled     = "cancelled"
)

// Event is something that happened to a worker of a pool, passed to
// Config.OnEvent.
type Event struct {
	Kind   EventKind
	Pool   string // Config.Name
	Slot   int    // the worker's slot, 0..NumWorkers-1
	Pid    int
	Reason string // EventWorkerReplaced: one of the Reason constants
	Line   string // EventWorkerStderr: one line of the worker's stderr
	Err    error
	Time   time.Time
}

// String formats the event on one line, for example
// "pool/2 (pid 4242): replaced: max-executions".
func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%d", e.Pool, e.Slot)
	if e.Pid != 0 {
		fmt.Fprintf(&b, " (pid %d)", e.Pid)
	}
	b.WriteString(": ")
	b.WriteString(e.Kind.String())
	if e.Reason != "" {
		b.WriteString(": ")
		b.WriteString(e.Reason)
	}
	if e.Line != "" {
		b.WriteString(": ")
		b.WriteString(e.Line)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// State is a worker's state.
type State int64

const (
	// StateInactive: the slot has no worker (spawning, or backing off
	// after a failure).
	StateInactive State = iota
	// StateReady: the worker is idle and can take a job.
	StateReady
	// StateWorking: the worker runs a job.
	StateWorking
	// StateStopped: the worker is being stopped or replaced.
	StateStopped
	// StateErrored: the worker failed and is being replaced.
	StateErrored
)

var stateNames = [...]string{
	StateInactive: "inactive",
	StateReady:    "ready",
	StateWorking:  "working",
	StateStopped:  "stopped",
	StateErrored:  "errored",
}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", int64(s))
}

// WorkerInfo describes a pool's worker, as Pool.Workers reports it.
type WorkerInfo struct {
	Slot     int
	Pid      int // 0 while the slot has no worker
	State    State
	NumExecs uint64    // jobs this worker ran
	Created  time.Time // when it was spawned
	RSS      uint64    // resident memory in bytes (from /proc; 0 where unknown)
}
