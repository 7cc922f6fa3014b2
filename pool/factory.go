package pool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Factory starts a worker process and connects to it. Implementations
// outside this package call NewWorker once the command has started.
type Factory interface {
	// SpawnWorker starts cmd, connects, and completes the handshake. On
	// failure it leaves no process behind.
	SpawnWorker(ctx context.Context, cmd *exec.Cmd) (*Worker, error)
}

// PipeFactory speaks to workers over their stdin and stdout. The zero
// value is ready; NewPipeFactory returns one.
type PipeFactory struct{}

// NewPipeFactory returns a Factory whose workers read requests from stdin
// and write replies to stdout.
func NewPipeFactory() *PipeFactory { return &PipeFactory{} }

// SpawnWorker starts cmd with pipes on its stdin and stdout and reads its
// handshake until ctx is done. cmd's Stdin and Stdout must be unset.
func (*PipeFactory) SpawnWorker(ctx context.Context, cmd *exec.Cmd) (*Worker, error) {
	if cmd.Stdin != nil || cmd.Stdout != nil {
		return nil, errors.New("pool: PipeFactory: the command's Stdin or Stdout is already set")
	}
	// os.Pipe ends, not cmd.StdinPipe and StdoutPipe: cmd.Wait would close
	// those while a job may still be reading the worker's last reply.
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pool: stdin pipe: %w", err)
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		_, _ = stdinR.Close(), stdinW.Close()
		return nil, fmt.Errorf("pool: stdout pipe: %w", err)
	}
	cmd.Stdin, cmd.Stdout = stdinR, stdoutW
	err = cmd.Start()
	_, _ = stdinR.Close(), stdoutW.Close() // the child has its own copies
	if err != nil {
		_, _ = stdinW.Close(), stdoutR.Close()
		return nil, fmt.Errorf("pool: start %s: %w", cmd.Path, err)
	}
	return NewWorker(ctx, cmd, pipeConn{stdout: stdoutR, stdin: stdinW})
}

// pipeConn is a worker's stdout and stdin as one connection.
type pipeConn struct {
	stdout *os.File
	stdin  *os.File
}

func (c pipeConn) Read(p []byte) (int, error)  { return c.stdout.Read(p) }
func (c pipeConn) Write(p []byte) (int, error) { return c.stdin.Write(p) }

// SyscallConn is stdout's: what the worker wrote and nobody read yet.
func (c pipeConn) SyscallConn() (syscall.RawConn, error) { return c.stdout.SyscallConn() }

func (c pipeConn) Close() error {
	return errors.Join(c.stdin.Close(), c.stdout.Close())
}

// defaultSocketTimeout is SocketFactory's connect wait when none is given.
const defaultSocketTimeout = 10 * time.Second

// SocketFactory has its workers dial back to a listener (unix or TCP) whose
// address it passes in SUPERVISOR_POOL_SOCKET; connections are matched to
// spawned processes by their handshake pid, so spawns may run
// concurrently. Several pools may share one SocketFactory.
type SocketFactory struct {
	ls      net.Listener
	timeout time.Duration

	mu        sync.Mutex
	pending   map[int]chan acceptedConn // spawned pid → its connection
	accepting bool                      // the accept loop runs
}

type acceptedConn struct {
	conn   net.Conn
	reader *bufio.Reader
}

// NewSocketFactory returns a Factory whose workers connect to ls (a
// *net.UnixListener or *net.TCPListener: it must support SetDeadline). A
// spawned worker must connect and complete its handshake within timeout
// (≤ 0: 10s). The factory accepts on ls only while a spawn waits; closing
// ls is the caller's business, after the pools using it are destroyed.
func NewSocketFactory(ls net.Listener, timeout time.Duration) *SocketFactory {
	if timeout <= 0 {
		timeout = defaultSocketTimeout
	}
	return &SocketFactory{ls: ls, timeout: timeout, pending: map[int]chan acceptedConn{}}
}

type deadliner interface{ SetDeadline(time.Time) error }

// SpawnWorker starts cmd and waits for its connection and handshake,
// until the factory's timeout passes or ctx is done.
func (f *SocketFactory) SpawnWorker(ctx context.Context, cmd *exec.Cmd) (*Worker, error) {
	if f == nil || f.ls == nil {
		return nil, errors.New("pool: SocketFactory without a listener")
	}
	if _, ok := f.ls.(deadliner); !ok {
		return nil, fmt.Errorf("pool: SocketFactory: listener %T does not support SetDeadline", f.ls)
	}
	addr := f.ls.Addr()
	cmd.Env = append(cmd.Environ(), envSocket+"="+addr.Network()+":"+addr.String())
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pool: start %s: %w", cmd.Path, err)
	}
	pid := cmd.Process.Pid
	accepted := f.expect(pid)
	defer f.forget(pid)
	timer := time.NewTimer(f.timeout)
	defer timer.Stop()
	select {
	case c := <-accepted:
		if c.conn == nil {
			abandon(cmd, nil)
			return nil, fmt.Errorf("pool: accepting worker connections on %s: %w", addr, net.ErrClosed)
		}
		return newWorker(cmd, c.conn, c.reader), nil
	case <-timer.C:
		f.forget(pid)
		abandonConnecting(cmd, accepted)
		return nil, fmt.Errorf("pool: worker %d did not connect to %s and hand shake within %s", pid, addr, f.timeout)
	case <-ctx.Done():
		f.forget(pid)
		abandonConnecting(cmd, accepted)
		return nil, fmt.Errorf("pool: waiting for worker %d to connect: %w", pid, context.Cause(ctx))
	}
}

// abandonConnecting abandons a spawn given up on, closing its connection
// if it arrived at that instant.
func abandonConnecting(cmd *exec.Cmd, accepted chan acceptedConn) {
	var conn io.Closer
	select {
	case c := <-accepted:
		if c.conn != nil {
			conn = c.conn
		}
	default:
	}
	abandon(cmd, conn)
}

// expect registers a spawned pid and makes sure the accept loop runs.
func (f *SocketFactory) expect(pid int) chan acceptedConn {
	ch := make(chan acceptedConn, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending[pid] = ch
	if !f.accepting {
		f.accepting = true
		_ = f.ls.(deadliner).SetDeadline(time.Time{})
		go f.accept()
	}
	return ch
}

// forget unregisters pid; the last one out stops the accept loop.
func (f *SocketFactory) forget(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pending, pid)
	if len(f.pending) == 0 {
		_ = f.ls.(deadliner).SetDeadline(time.Now()) // wakes Accept
	}
}

// accept accepts connections while spawns wait, each handshaking on its
// own goroutine (bounded by the timeout) so a slow one holds up no other.
func (f *SocketFactory) accept() {
	var handshakes sync.WaitGroup
	defer handshakes.Wait()
	for {
		conn, err := f.ls.Accept()
		if err != nil {
			f.mu.Lock()
			var timeout net.Error
			switch {
			case len(f.pending) == 0:
				f.accepting = false
				f.mu.Unlock()
				return
			case errors.As(err, &timeout) && timeout.Timeout():
				_ = f.ls.(deadliner).SetDeadline(time.Time{}) // a spawn came in as the last left
				f.mu.Unlock()
				continue
			}
			for pid, ch := range f.pending { // the listener is gone: fail every waiting spawn
				ch <- acceptedConn{}
				delete(f.pending, pid)
			}
			f.accepting = false
			f.mu.Unlock()
			return
		}
		handshakes.Go(func() { f.handshake(conn) })
	}
}

// handshake reads a connection's handshake and hands it to the spawn
// waiting for its pid; an unknown or broken one is closed.
func (f *SocketFactory) handshake(conn net.Conn) {
	_ = conn.SetDeadline(time.Now().Add(f.timeout))
	reader := bufio.NewReaderSize(conn, readBufferSize)
	pid, err := readHandshake(reader)
	_ = conn.SetDeadline(time.Time{})
	if err != nil {
		_ = conn.Close()
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	ch, ok := f.pending[pid]
	if !ok {
		_ = conn.Close()
		return
	}
	delete(f.pending, pid) // one connection per spawn
	// Sent under the lock, so a spawn that gives up (forget, then a look
	// at its channel) either gets it to close or is never sent it.
	ch <- acceptedConn{conn: conn, reader: reader}
}
