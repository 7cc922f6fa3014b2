package pool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"
)

// handshakeLimit bounds the handshake frame: a pid needs a few bytes.
const handshakeLimit = 4 << 10

// Worker is a started worker process and its connection, past the pid
// handshake. A Factory makes one with NewWorker; the pool runs jobs on it
// one at a time and stops it.
type Worker struct {
	cmd     *exec.Cmd
	conn    io.ReadWriteCloser
	reader  *bufio.Reader
	writer  frameWriter
	pid     int
	created time.Time

	// Set when the pool adopts the worker.
	slot     *slot
	stderr   *stderrLog    // nil when the command's stderr was not captured
	replies  chan frame    // the reply to the job under way
	dead     chan struct{} // closed once the process was reaped and err set
	err      *WorkerError  // why it ended; read after dead is closed
	busy     atomic.Bool   // a job is under way: a frame is expected
	numExecs atomic.Uint64

	killOnce  sync.Once
	killCause error // the first reason it was killed; written in killOnce

	// Guarded by Pool.mu.
	state     State
	idleSince time.Time
	retire    string // a soft limit it passed while busy: replace it after its job
}

// NewWorker wraps a started command and its connection: it reads the
// worker's handshake (its first frame, which must name cmd's pid) until ctx
// is done. On failure it kills and reaps the process and closes conn, so
// nothing is left behind. A Factory calls it after starting cmd.
func NewWorker(ctx context.Context, cmd *exec.Cmd, conn io.ReadWriteCloser) (*Worker, error) {
	if cmd == nil || cmd.Process == nil {
		if conn != nil {
			_ = conn.Close()
		}
		return nil, errors.New("pool: NewWorker: the command has not been started")
	}
	if conn == nil {
		abandon(cmd, nil)
		return nil, errors.New("pool: NewWorker: nil connection")
	}
	reader := bufio.NewReaderSize(conn, 64<<10)
	stop := context.AfterFunc(ctx, func() { _ = conn.Close(); killGroup(cmd.Process) })
	pid, err := readHandshake(reader)
	if !stop() {
		err = fmt.Errorf("pool: worker handshake: %w", context.Cause(ctx))
	}
	if err == nil && pid != cmd.Process.Pid {
		err = fmt.Errorf("%w: handshake from pid %d, but the spawned process is %d (a wrapper must exec the worker)", ErrProtocol, pid, cmd.Process.Pid)
	}
	if err != nil {
		abandon(cmd, conn)
		return nil, err
	}
	return newWorker(cmd, conn, reader), nil
}

// readHandshake reads the handshake frame and returns the pid it names.
func readHandshake(r *bufio.Reader) (int, error) {
	f, err := readFrame(r, handshakeLimit)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: the worker ended its stream before the handshake", ErrProtocol)
		}
		return 0, fmt.Errorf("pool: worker handshake: %w", err)
	}
	if f.flags != flagControl {
		return 0, fmt.Errorf("pool: worker handshake: %w: the first frame is not a control frame", ErrProtocol)
	}
	return parseHandshake(f.context)
}

func newWorker(cmd *exec.Cmd, conn io.ReadWriteCloser, reader *bufio.Reader) *Worker {
	return &Worker{
		cmd:     cmd,
		conn:    conn,
		reader:  reader,
		writer:  frameWriter{w: conn},
		pid:     cmd.Process.Pid,
		created: time.Now(),
		replies: make(chan frame, 1),
		dead:    make(chan struct{}),
	}
}

// abandon kills and reaps a process that never became a worker.
func abandon(cmd *exec.Cmd, conn io.Closer) {
	if conn != nil {
		_ = conn.Close()
	}
	killGroup(cmd.Process)
	_ = cmd.Wait()
}

// Pid returns the worker's process id.
func (w *Worker) Pid() int { return w.pid }

// start runs the worker's reader until the process ends. A frame when no
// job is under way, or a broken frame, is a protocol violation: the worker
// is killed. onDead runs once it has been reaped.
func (w *Worker) start(maxPayload int, onDead func(*Worker)) {
	go func() {
		err := w.read(maxPayload)
		w.kill(err) // the stream is over: make sure the process is too
		waitErr := w.cmd.Wait()
		_ = w.conn.Close()
		if w.stderr != nil {
			w.stderr.close()
		}
		w.err = w.failure(err, waitErr)
		close(w.dead)
		onDead(w)
	}()
}

// read delivers replies until the stream breaks or ends.
func (w *Worker) read(maxPayload int) error {
	for {
		f, err := readFrame(w.reader, maxPayload)
		if err != nil {
			return err
		}
		// The reply ends the job: a frame after it, before the next
		// request, is a violation, even one that arrived with the reply.
		if !w.busy.CompareAndSwap(true, false) {
			return fmt.Errorf("%w: a frame while no job was under way", ErrProtocol)
		}
		if f.flags&flagControl != 0 {
			return fmt.Errorf("%w: a control frame as a reply", ErrProtocol)
		}
		if w.reader.Buffered() > 0 {
			return fmt.Errorf("%w: more output after the reply", ErrProtocol)
		}
		w.replies <- f // buffered, and one reply per job: never blocks
	}
}

// failure builds the WorkerError that says why the worker ended: the
// reason it was killed for, else its read error, else its exit.
func (w *Worker) failure(readErr, waitErr error) *WorkerError {
	err := w.killCause
	if err == nil || errors.Is(err, io.EOF) {
		if waitErr == nil {
			waitErr = errors.New("exit status 0")
		}
		err = fmt.Errorf("%w: %v", ErrWorkerExited, waitErr)
	}
	werr := &WorkerError{Pid: w.pid, Err: err}
	if w.stderr != nil {
		werr.Stderr = w.stderr.tail()
	}
	return werr
}

// kill SIGKILLs the worker's process group; the first cause is kept for
// its WorkerError.
func (w *Worker) kill(cause error) {
	w.killOnce.Do(func() {
		w.killCause = cause
		killGroup(w.cmd.Process)
	})
}

// jobResult is what a job on a worker came to.
type jobResult struct {
	reply   Payload
	err     error  // for the caller
	replace string // a planned replacement's reason
	failure error  // a *WorkerError for the kernel: the slot fails
}

// exec runs one job on the worker, killing it if ctx is done or the job
// runs past timeout (0: none) first.
func (w *Worker) exec(ctx context.Context, rqs Payload, timeout time.Duration) jobResult {
	w.numExecs.Add(1)
	w.busy.Store(true)
	jobCtx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		jobCtx, cancel = context.WithTimeoutCause(ctx, timeout, ErrExecTimeout)
		defer cancel()
	}
	stop := func() bool { return true }
	if jobCtx.Done() != nil {
		stop = context.AfterFunc(jobCtx, func() { w.kill(context.Cause(jobCtx)) })
	}
	var reply frame
	replied := false
	if err := w.writer.write(0, rqs.Context, rqs.Body); err != nil {
		w.kill(fmt.Errorf("%w: writing the request: %w", ErrWorkerExited, err))
	} else {
		select {
		case reply = <-w.replies:
			replied = true
		case <-w.dead:
		}
	}
	// The reader cleared busy when it delivered the reply; without one
	// the worker is dead or dying and busy no longer matters.
	cut := !stop()
	switch {
	case cut:
		<-w.dead
		return w.cutResult(ctx)
	case !replied:
		<-w.dead // a failed write killed it: wait for its error
		return jobResult{err: w.err, failure: w.err}
	case reply.flags&flagError != 0:
		return jobResult{err: JobError(reply.body)}
	case string(reply.context) == StopRequest:
		return jobResult{replace: ReasonStopRequest}
	}
	return jobResult{reply: Payload{Context: reply.context, Body: reply.body}}
}

// cutResult is the result of a job whose worker was killed because the
// caller's ctx was done, ExecTimeout passed, or Destroy cut it.
func (w *Worker) cutResult(ctx context.Context) jobResult {
	switch {
	case errors.Is(w.killCause, ErrExecTimeout):
		return jobResult{err: w.err, failure: w.err}
	case errors.Is(w.killCause, ErrPoolStopped):
		return jobResult{err: fmt.Errorf("pool: job cut short, worker %d killed: %w", w.pid, ErrPoolStopped), replace: ReasonCancelled}
	case ctx.Err() != nil:
		return jobResult{err: ctx.Err(), replace: ReasonCancelled}
	}
	return jobResult{err: w.err, failure: w.err} // it died on its own first
}

// stop asks the worker to exit with a stop frame and SIGKILLs its group
// if it has not within timeout; it returns once the worker was reaped.
func (w *Worker) stop(timeout time.Duration) {
	select {
	case <-w.dead:
		return
	default:
	}
	force := time.AfterFunc(timeout, func() {
		w.kill(fmt.Errorf("%w: did not stop within %s of the stop frame", ErrWorkerExited, timeout))
	})
	defer force.Stop()
	if err := w.writer.write(flagControl, []byte(stopControl), nil); err != nil {
		w.kill(fmt.Errorf("%w: writing the stop frame: %w", ErrWorkerExited, err))
	}
	<-w.dead
}

// stderrLog splits a worker's stderr into lines, passes each on, and keeps
// the last stderrTailBytes for WorkerError.
type stderrLog struct {
	mu      sync.Mutex
	partial []byte
	last    []byte
	line    func(string)
	pid     atomic.Int64 // for the events; 0 until the handshake
}

const (
	stderrTailBytes = 4 << 10
	stderrLineLimit = 16 << 10 // a longer line is passed on in pieces
)

func (l *stderrLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	l.keep(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.partial = append(l.partial, p...)
			if len(l.partial) >= stderrLineLimit {
				l.flushLocked()
			}
			break
		}
		l.partial = append(l.partial, p[:i]...)
		l.flushLocked()
		p = p[i+1:]
	}
	return n, nil
}

// keep appends p to the tail, keeping its last stderrTailBytes.
func (l *stderrLog) keep(p []byte) {
	if len(p) >= stderrTailBytes {
		l.last = append(l.last[:0], p[len(p)-stderrTailBytes:]...)
		return
	}
	if over := len(l.last) + len(p) - stderrTailBytes; over > 0 {
		l.last = append(l.last[:0], l.last[over:]...)
	}
	l.last = append(l.last, p...)
}

func (l *stderrLog) flushLocked() {
	line := string(bytes.TrimSuffix(l.partial, []byte{'\r'}))
	l.partial = l.partial[:0]
	l.line(line)
}

// close passes on a last line without a newline.
func (l *stderrLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.flushLocked()
	}
}

// tail returns the last stderrTailBytes of stderr, trimmed.
func (l *stderrLog) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(bytes.TrimSpace(l.last))
}
