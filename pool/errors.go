package pool

import (
	"errors"
	"fmt"
)

// Errors of Exec and NewPool; test them with errors.Is.
var (
	// ErrPoolStopped: the pool is destroyed or being destroyed, or Destroy
	// cut the job short.
	ErrPoolStopped = errors.New("pool: stopped")
	// ErrNoFreeWorkers: no worker became free within Config.AllocateTimeout.
	ErrNoFreeWorkers = errors.New("pool: no free workers")
	// ErrQueueFull: Config.MaxQueue Execs already wait for a worker.
	ErrQueueFull = errors.New("pool: queue full")
	// ErrPayloadTooLarge: a request or reply is over Config.MaxPayload.
	ErrPayloadTooLarge = errors.New("pool: payload too large")
	// ErrExecTimeout: a job ran past Config.ExecTimeout; its worker was
	// killed (wrapped by a *WorkerError).
	ErrExecTimeout = errors.New("pool: exec timeout")
	// ErrWorkerExited: the worker process ended (wrapped by a *WorkerError,
	// with its exit status).
	ErrWorkerExited = errors.New("pool: worker exited")
)

// StopRequest is the Context of a reply by which a worker asks to be
// replaced: the pool replaces it and runs the same job once more on another
// worker. The reply's Body is discarded.
const StopRequest = `{"stop":true}`

// Payload is a request or a reply. Context is small metadata (JSON by
// convention); Body is the data. Together they are at most
// Config.MaxPayload bytes.
type Payload struct {
	Context, Body []byte
}

// JobError is the error of a job whose handler failed: its message, as the
// worker sent it. The worker stays in the pool.
type JobError []byte

func (e JobError) Error() string { return "pool: job failed: " + string(e) }

// WorkerError is the error of a job whose worker died, broke the protocol,
// sent an oversize reply or ran past Config.ExecTimeout. The worker is
// replaced. Err says what happened (errors.Is with ErrWorkerExited,
// ErrProtocol, ErrPayloadTooLarge, ErrExecTimeout); Stderr is the tail of
// the worker's standard error.
type WorkerError struct {
	Pid    int
	Err    error
	Stderr string
}

func (e *WorkerError) Error() string {
	msg := fmt.Sprintf("pool: worker %d: %v", e.Pid, e.Err)
	if e.Stderr != "" {
		msg += "; stderr: " + e.Stderr
	}
	return msg
}

func (e *WorkerError) Unwrap() error { return e.Err }
