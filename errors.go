package supervisor

import "errors"

// Sentinel errors. Every error the package returns wraps one of these with
// context (the supervisor's name, the key, the option), so test them with
// errors.Is.
var (
	// ErrNotRunning is returned by Start, Stop and Get outside Run.
	ErrNotRunning = errors.New("supervisor: not running")
	// ErrAlreadyRunning is returned by a second concurrent Run.
	ErrAlreadyRunning = errors.New("supervisor: already running")
	// ErrProcessNotFound is returned for a key that has no process (or whose
	// process is being stopped for good).
	ErrProcessNotFound = errors.New("supervisor: process not found")
	// ErrProcessNotRunning is returned by Get while the process is starting,
	// backing off, or down for a sibling's group restart.
	ErrProcessNotRunning = errors.New("supervisor: process not running")
	// ErrProcessExists is returned by Start for a key whose process runs or
	// is starting.
	ErrProcessExists = errors.New("supervisor: process exists")
	// ErrNotFound is what tables wrap for a missing row.
	ErrNotFound = errors.New("supervisor: row not found")
	// ErrStopTimeout is returned by Stop when the process has not returned
	// after the graceful and the forced stop timeouts.
	ErrStopTimeout = errors.New("supervisor: stop timed out")
	// ErrTooManyRestarts is returned by Run when more than MaxRestarts
	// restarts happened within Period.
	ErrTooManyRestarts = errors.New("supervisor: too many restarts")
	// ErrAbort, returned by a process (wrapped or not), asks not to be
	// restarted: DefaultPolicy answers Abort to it.
	ErrAbort = errors.New("supervisor: abort")
	// ErrRestartNow, returned by a service worker, restarts it at once,
	// uncounted.
	ErrRestartNow = errors.New("supervisor: restart now")
	// ErrCleanExit, returned by a prep function, ends start-up without error.
	ErrCleanExit = errors.New("supervisor: clean exit")

	// ErrStartTimeout is the failure of a process that was not ready within
	// Options.StartTimeout.
	ErrStartTimeout = errors.New("supervisor: start timed out")
	// ErrInvalidOptions is wrapped by the error Run returns for a nil table
	// or an option out of range; the message names the option.
	ErrInvalidOptions = errors.New("supervisor: invalid options")
	// ErrNilProcess is the start failure of a row whose process value is nil.
	ErrNilProcess = errors.New("supervisor: nil process")
)
