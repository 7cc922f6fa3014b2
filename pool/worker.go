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
//
// A job reads its reply on the goroutine that called Exec: a worker has
// no reader of its own. Its death is found by a goroutine that waits for
// the process, and output it writes while no job is under way by the next
// job, before its request is sent.
type Worker struct {
	cmd     *exec.Cmd
	conn    io.ReadWriteCloser
	reader  *bufio.Reader
	writer  frameWriter
	pending func() (int, error) // bytes waiting on conn; nil when conn cannot tell
	pid     int
	created time.Time

	// Set when the pool adopts the worker.
	slot       *slot
	stderr     *stderrLog // nil when the command's stderr was not captured
	maxPayload int
	dead       chan struct{} // closed once the process was reaped and err set
	err        *WorkerError  // why it ended; read after dead is closed
	numExecs   atomic.Uint64

	mu        sync.Mutex
	killed    bool
	killCause error // the first reason it was killed
	reaped    bool  // its pid may belong to another process: signal nothing
	closeOnce sync.Once

	// Guarded by Pool.mu.
	state     State
	idleSince time.Time
	sawIdle   bool   // it waited idle for idleOutputGap or more before its job
	retire    string // a soft limit it passed while busy: replace it after its job
}

// NewWorker wraps a started command and its connection: it reads the
// worker's handshake (its first frame, which must name cmd's pid) until ctx
// is done. On failure it kills and reaps the process and closes conn, so
// nothing is left behind. A Factory calls it after starting cmd.
//
// conn must stay open until the pool closes it: a pipe from
// exec.Cmd.StdoutPipe does not (cmd.Wait closes it, and a reply written
// just before the worker exits can be lost); give the command the ends of
// os.Pipe pairs instead, as PipeFactory does. If conn (or, for a pair of
// pipes, the type that joins them) implements syscall.Conn, the pool finds
// output the worker wrote between jobs before it sends the next request.
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
	reader := bufio.NewReaderSize(conn, readBufferSize)
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

// readBufferSize is the size of a worker's read buffer: a larger reply is
// read through it in pieces.
const readBufferSize = 16 << 10

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
		pending: pendingBytes(conn),
		pid:     cmd.Process.Pid,
		created: time.Now(),
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

// start waits for the worker's process in a goroutine of its own: once it
// has exited, whatever is left of its process group is killed, it is
// reaped, and onDead runs.
func (w *Worker) start(maxPayload int, onDead func(*Worker)) {
	w.maxPayload = maxPayload
	go func() {
		exited := awaitExit(w.pid) // not reaped yet: its group id is still its own
		w.mu.Lock()
		if exited {
			killGroup(w.cmd.Process)
		}
		w.reaped = true
		w.mu.Unlock()
		waitErr := w.cmd.Wait()
		if w.stderr != nil {
			w.stderr.close()
		}
		w.err = w.failure(waitErr)
		close(w.dead)
		onDead(w)
	}()
}

// failure builds the WorkerError that says why the worker ended: the
// reason it was killed for, else its exit.
func (w *Worker) failure(waitErr error) *WorkerError {
	w.mu.Lock()
	err := w.killCause
	w.mu.Unlock()
	if err == nil || errors.Is(err, io.EOF) {
		if waitErr == nil {
			waitErr = errors.New("exit status 0")
		}
		err = fmt.Errorf("%w: %v", ErrWorkerExited, waitErr)
	}
	return w.errorFor(err)
}

// errorFor returns a WorkerError for err with the tail of the worker's
// stderr.
func (w *Worker) errorFor(err error) *WorkerError {
	werr := &WorkerError{Pid: w.pid, Err: err}
	if w.stderr != nil {
		werr.Stderr = w.stderr.tail()
	}
	return werr
}

// kill SIGKILLs the worker's process group, unless it was reaped, and
// closes its connection, which ends a read or write under way; the first
// cause is kept for its WorkerError.
func (w *Worker) kill(cause error) (first bool) {
	w.mu.Lock()
	if !w.killed {
		first = true
		w.killed = true
		w.killCause = cause
		if !w.reaped {
			killGroup(w.cmd.Process)
		}
	}
	w.mu.Unlock()
	w.closeConn()
	return first
}

func (w *Worker) closeConn() {
	w.closeOnce.Do(func() { _ = w.conn.Close() })
}

// jobResult is what a job on a worker came to.
type jobResult struct {
	reply   Payload
	err     error  // for the caller
	replace string // a planned replacement's reason
	failure error  // a *WorkerError for the kernel: the slot fails
	unsent  bool   // the request was not sent: the job may run elsewhere
}

// exec runs one job on the worker, killing it if ctx is done or the job
// runs past timeout (0: none) first.
func (w *Worker) exec(ctx context.Context, rqs Payload, timeout time.Duration) jobResult {
	if err := w.unrequested(w.sawIdle); err != nil {
		w.kill(err)
		<-w.dead
		werr := w.errorFor(err)
		return jobResult{err: werr, failure: werr, unsent: true}
	}
	w.numExecs.Add(1)
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
	err := w.writer.write(0, rqs.Context, rqs.Body)
	if err != nil {
		err = fmt.Errorf("%w: writing the request: %w", ErrWorkerExited, err)
	} else if reply, err = readFrame(w.reader, w.maxPayload); err == nil {
		err = w.checkReply(reply)
	}
	// Cut: the job's ctx killed the worker, or Destroy did, and ended the
	// read or write with the connection.
	if !stop() || (err != nil && !w.kill(err)) {
		<-w.dead
		return w.cutResult(ctx)
	}
	switch {
	case err != nil:
		<-w.dead
		werr := w.err // it ended its stream: say how it exited
		if !errors.Is(err, io.EOF) {
			werr = w.errorFor(err)
		}
		return jobResult{err: werr, failure: werr}
	case reply.flags&flagError != 0:
		return jobResult{err: JobError(reply.body)}
	case string(reply.context) == StopRequest:
		return jobResult{replace: ReasonStopRequest}
	}
	return jobResult{reply: Payload{Context: reply.context, Body: reply.body}}
}

// idleOutputGap is how long a worker must have waited idle before its
// next job for that job to look for output on its connection first (a
// system call). Output written within it is read by the job, as if written
// during the job: a WorkerError.
const idleOutputGap = time.Millisecond

// unrequested returns a protocol violation if the worker wrote anything
// since its last reply: bytes read with the reply, and with onConn those
// waiting on its connection too.
func (w *Worker) unrequested(onConn bool) error {
	n := w.reader.Buffered()
	if n == 0 && onConn && w.pending != nil {
		n, _ = w.pending() // an error is the write's to find
	}
	if n > 0 {
		return fmt.Errorf("%w: %d bytes of output while no job was under way", ErrProtocol, n)
	}
	return nil
}

// checkReply returns a protocol violation for a frame that cannot be a
// reply, or one with more output behind it.
func (w *Worker) checkReply(f frame) error {
	if f.flags&flagControl != 0 {
		return fmt.Errorf("%w: a control frame as a reply", ErrProtocol)
	}
	if w.reader.Buffered() > 0 {
		return fmt.Errorf("%w: more output after the reply", ErrProtocol)
	}
	return nil
}

// cutResult is the result of a job whose worker was killed because the
// caller's ctx was done, ExecTimeout passed, or Destroy cut it.
func (w *Worker) cutResult(ctx context.Context) jobResult {
	w.mu.Lock()
	cause := w.killCause
	w.mu.Unlock()
	switch {
	case errors.Is(cause, ErrExecTimeout):
		werr := w.errorFor(cause)
		return jobResult{err: werr, failure: werr}
	case errors.Is(cause, ErrPoolStopped):
		return jobResult{err: fmt.Errorf("pool: job cut short, worker %d killed: %w", w.pid, ErrPoolStopped), replace: ReasonCancelled}
	case ctx.Err() != nil:
		return jobResult{err: ctx.Err(), replace: ReasonCancelled}
	}
	return jobResult{err: w.err, failure: w.err} // it died on its own first
}

// stop asks the worker to exit with a stop frame and SIGKILLs its group
// if it has not within timeout; it returns once the worker was reaped and
// its connection closed.
func (w *Worker) stop(timeout time.Duration) {
	defer w.closeConn()
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
	stderrTailBytes  = 4 << 10
	stderrLineLimit  = 16 << 10 // a longer line is passed on in pieces
	stderrCopyBuffer = 2 << 10
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

// ReadFrom copies the worker's stderr through a small buffer: the copy
// os/exec makes for a writer that is not a file would take 32 KiB for
// every worker.
func (l *stderrLog) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, stderrCopyBuffer)
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			_, _ = l.Write(buf[:n])
			total += int64(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
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
