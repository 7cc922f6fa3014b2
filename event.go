package supervisor

import (
	"context"
	"fmt"
	"log/slog"
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

// Events of one process are queued under t.mu, in the same critical
// section as the change they describe, and delivered after it by whichever
// goroutine finds the queue idle: a process's events arrive in the order
// they happened, and OnEvent never runs under the supervisor's lock.

// queueLocked stamps e as an event of p and queues it; t.mu held. Call
// flush(p) after unlocking.
func (t *tree[K, P]) queueLocked(p *process[K, P], e Event) {
	e.Supervisor = t.cfg.name
	e.Process = p.name
	e.Time = time.Now()
	p.events = append(p.events, e)
}

// flush delivers p's queued events unless another goroutine is at it.
func (t *tree[K, P]) flush(p *process[K, P]) {
	t.mu.Lock()
	t.unlockAndFlush(p)
}

// unlockAndFlush unlocks t.mu, then delivers p's queued events unless
// another goroutine is at it.
func (t *tree[K, P]) unlockAndFlush(p *process[K, P]) {
	if p.draining || len(p.events) == 0 {
		t.mu.Unlock()
		return
	}
	p.draining = true
	for len(p.events) > 0 {
		batch := p.events
		p.events = nil
		t.mu.Unlock()
		for i := range batch {
			t.emit(&batch[i])
		}
		clear(batch)
		t.mu.Lock()
		if p.events == nil {
			p.events = batch[:0] // reuse: a restart queues several events
		}
	}
	p.draining = false
	t.mu.Unlock()
}

// event delivers e about p (nil: the supervisor itself); never call it
// with t.mu held.
func (t *tree[K, P]) event(p *process[K, P], e Event) {
	if p == nil {
		e.Supervisor = t.cfg.name
		e.Time = time.Now()
		t.emit(&e)
		return
	}
	t.mu.Lock()
	t.queueLocked(p, e)
	t.unlockAndFlush(p)
}

func (t *tree[K, P]) emit(e *Event) {
	if level := logLevel(e); t.cfg.logger.Enabled(context.Background(), level) {
		t.log(e, level)
	}
	if t.cfg.onEvent != nil {
		t.deliver(*e)
	}
}

func (t *tree[K, P]) deliver(e Event) {
	defer func() {
		if v := recover(); v != nil {
			t.cfg.logger.Error("supervisor: OnEvent panicked", "supervisor", t.cfg.name, "event", e.String(), "panic", v)
		}
	}()
	t.cfg.onEvent(e)
}

// logLevel is the level an event is logged at: failures and backoffs warn,
// what needs an operator is an error, the rest is debug.
func logLevel(e *Event) slog.Level {
	switch e.Kind {
	case EventFailed, EventBackoff:
		return slog.LevelWarn
	case EventAborted, EventStopTimeout, EventTooManyRestarts, EventTableError:
		return slog.LevelError
	case EventStopped:
		if e.Err != nil {
			return slog.LevelWarn
		}
	}
	return slog.LevelDebug
}

func (t *tree[K, P]) log(e *Event, level slog.Level) {
	attrs := []slog.Attr{slog.String("supervisor", e.Supervisor), slog.String("event", e.Kind.String())}
	if e.Process != "" {
		attrs = append(attrs, slog.String("process", e.Process))
	}
	if e.Err != nil {
		attrs = append(attrs, slog.Any("err", e.Err))
		if pe, ok := IsPanic(e.Err); ok {
			attrs = append(attrs, slog.String("stack", string(pe.Stack)))
		}
	}
	switch e.Kind {
	case EventFailed:
		attrs = append(attrs, slog.String("action", e.Action.String()))
	case EventBackoff:
		attrs = append(attrs, slog.Duration("delay", e.Delay))
	}
	t.cfg.logger.LogAttrs(context.Background(), level, "supervisor: "+e.Kind.String(), attrs...)
}

func (t *tree[K, P]) tableError(err error) {
	t.event(nil, Event{Kind: EventTableError, Err: err})
}
