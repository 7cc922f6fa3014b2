package supervisor

import (
	"fmt"
	"strings"
	"time"
)

// EventKind says what happened to a supervised process.
type EventKind uint8

const (
	// EventStarting: a process is being started (first start or restart).
	EventStarting EventKind = iota
	// EventReady: the process called its callback.
	EventReady
	// EventFailed: the process failed (exited with an error, panicked,
	// failed its start or reported a failure); Action is the kernel's reply.
	EventFailed
	// EventBackoff: the process restarts after Delay.
	EventBackoff
	// EventRestarting: the process is about to be started again.
	EventRestarting
	// EventAborted: the kernel answered Abort; the process stays stopped.
	EventAborted
	// EventStopping: the supervisor asked the process to stop.
	EventStopping
	// EventStopped: the process ended; Err holds a non-nil exit error of a
	// stopped process.
	EventStopped
	// EventStopTimeout: the process did not return within its graceful and
	// forced stop timeouts; the supervisor no longer waits for it.
	EventStopTimeout
	// EventTooManyRestarts: the restart intensity was exceeded; the
	// supervisor gives up.
	EventTooManyRestarts
	// EventTableError: reading the table failed (Iter, a row, Watch).
	EventTableError
)

var eventKindNames = [...]string{
	EventStarting:        "starting",
	EventReady:           "ready",
	EventFailed:          "failed",
	EventBackoff:         "backoff",
	EventRestarting:      "restarting",
	EventAborted:         "aborted",
	EventStopping:        "stopping",
	EventStopped:         "stopped",
	EventStopTimeout:     "stop-timeout",
	EventTooManyRestarts: "too-many-restarts",
	EventTableError:      "table-error",
}

// String returns the kind's name, such as "starting" or "stop-timeout".
func (k EventKind) String() string {
	if int(k) < len(eventKindNames) {
		return eventKindNames[k]
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event is one step in the life of a supervised process, delivered to
// Options.OnEvent.
type Event struct {
	Kind       EventKind
	Supervisor string        // Options.Name
	Process    string        // fmt.Sprint(key); empty for supervisor-wide events
	Err        error         // the failure, exit error or table error
	Action     Action        // EventFailed: the kernel's reply
	Delay      time.Duration // EventBackoff: wait before the restart
	Time       time.Time
}

// String formats the event on one line, for example
// "workers/db: failed (kill): connection refused".
func (e Event) String() string {
	var b strings.Builder
	b.WriteString(e.Supervisor)
	if e.Process != "" {
		b.WriteByte('/')
		b.WriteString(e.Process)
	}
	b.WriteString(": ")
	b.WriteString(e.Kind.String())
	switch e.Kind {
	case EventFailed:
		fmt.Fprintf(&b, " (%s)", e.Action)
	case EventBackoff:
		fmt.Fprintf(&b, " %v", e.Delay)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}
