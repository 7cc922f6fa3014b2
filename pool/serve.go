package pool

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
)

// Handler handles one request in a worker and returns the reply. An error
// goes back to the caller of Pool.Exec as a JobError holding its message,
// and the worker stays in the pool. A reply whose Context is StopRequest
// asks the pool to replace this worker and run the job again on another.
// A panic is recovered and replied as an error saying so.
type Handler func(ctx context.Context, rqs Payload) (Payload, error)

// Serve makes the calling program a pool worker: it serves requests with h
// until the pool stops it (it returns nil) or ctx is done (it returns
// ctx.Err()). It speaks to the pool the way the pool's factory says:
// frames on stdin and stdout by default, or on a connection to the address
// in SUPERVISOR_POOL_SOCKET when that is set ("unix:<path>" or
// "tcp:<host:port>"; stdout is then free). See ServeConn for the rest.
//
// On stdin and stdout, stdout belongs to the protocol: anything else
// written to it — fmt.Println, a log writer on os.Stdout, a child process
// inheriting it — breaks the frame stream, and the pool kills and replaces
// the worker. Log to stderr: the pool captures it line by line. Serve
// closes stdin when it returns; when stdin is a pipe or a socket it is put
// in non-blocking mode so that ctx being done interrupts a pending read.
//
// A minimal worker:
//
//	func main() {
//		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
//		defer stop()
//		err := pool.Serve(ctx, func(ctx context.Context, rqs pool.Payload) (pool.Payload, error) {
//			return pool.Payload{Body: bytes.ToUpper(rqs.Body)}, nil
//		})
//		if err != nil && !errors.Is(err, context.Canceled) {
//			slog.Error("worker", "err", err)
//			os.Exit(1)
//		}
//	}
func Serve(ctx context.Context, h Handler) error {
	address := os.Getenv(envSocket)
	if address == "" {
		in, err := stdin()
		if err != nil {
			return err
		}
		defer in.Close()
		return ServeConn(ctx, stdio{in, os.Stdout}, h)
	}
	network, addr, _ := strings.Cut(address, ":")
	if network != "unix" && network != "tcp" {
		return fmt.Errorf("pool: %s=%q: want unix:<path> or tcp:<host:port>", envSocket, address)
	}
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, network, addr)
	if err != nil {
		return fmt.Errorf("pool: dialling the pool: %w", err)
	}
	defer conn.Close()
	return ServeConn(ctx, conn, h)
}

// ServeConn serves requests with h on rw, one at a time, as a pool worker
// (PROTOCOL.md). It first sends the handshake with this process's pid, then
// reads each request, calls h with ctx and writes its reply, until a stop
// frame or the end of rw's input (it returns nil), or until ctx is done (it
// returns ctx.Err(); if rw is an io.Closer it is closed then, so that a
// blocked read returns). A broken frame from the pool returns an error
// wrapping ErrProtocol, and a request over the size limit one wrapping
// ErrPayloadTooLarge too.
//
// The size limit is SUPERVISOR_POOL_MAX_PAYLOAD (decimal bytes of context
// plus body; default 64 MiB), which the pool sets to its Config.MaxPayload.
// A reply over it would be a protocol violation, so ServeConn replies with
// an error (a JobError at the caller) instead.
func ServeConn(ctx context.Context, rw io.ReadWriter, h Handler) error {
	if h == nil {
		return errors.New("pool: ServeConn: nil Handler")
	}
	maxPayload, err := maxPayloadFromEnv()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if closer, ok := rw.(io.Closer); ok {
		closed := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			closer.Close()
			close(closed)
		})
		defer func() {
			if !stop() {
				<-closed // the close started: let it finish before returning
			}
		}()
	}
	s := &server{r: bufio.NewReader(rw), w: frameWriter{w: rw}, h: h, maxPayload: maxPayload}
	err = s.serve(ctx)
	if err != nil && ctx.Err() != nil {
		return ctx.Err() // the error is that of the stream closed because of ctx
	}
	return err
}

// server is the state of one ServeConn.
type server struct {
	r          *bufio.Reader
	w          frameWriter
	h          Handler
	maxPayload int
}

// serve sends the handshake, then answers requests until a stop frame or
// the end of the input.
func (s *server) serve(ctx context.Context) error {
	if err := s.w.write(flagControl, handshakeContext(os.Getpid()), nil); err != nil {
		return fmt.Errorf("pool: sending the handshake: %w", err)
	}
	for {
		f, err := readFrame(s.r, s.maxPayload)
		switch {
		case err == io.EOF:
			return nil
		case errors.Is(err, ErrPayloadTooLarge):
			return fmt.Errorf("%w: request: %w", ErrProtocol, err)
		case err != nil:
			return fmt.Errorf("pool: reading a request: %w", err)
		case f.flags == flagControl && isStopControl(f.context):
			return nil
		case f.flags != 0:
			return fmt.Errorf("%w: unexpected frame from the pool (flags %#02x, context %q)", ErrProtocol, f.flags, f.context)
		}
		reply, err := s.call(ctx, Payload{Context: f.context, Body: f.body})
		if ctx.Err() != nil {
			return ctx.Err() // the pool has given up on this job; so does the worker
		}
		if err != nil {
			err = s.w.write(flagError, nil, s.errorMessage(err))
		} else {
			err = s.w.write(0, reply.Context, reply.Body)
		}
		if err != nil {
			return fmt.Errorf("pool: writing a reply: %w", err)
		}
	}
}

// call runs the handler, turning a panic into an error and an oversize
// reply into an error, so the worker survives both.
func (s *server) call(ctx context.Context, rqs Payload) (reply Payload, err error) {
	defer func() {
		if v := recover(); v != nil {
			slog.Default().Error("pool: handler panicked", "panic", v, "stack", string(debug.Stack()))
			reply, err = Payload{}, fmt.Errorf("handler panicked: %v", v)
		}
	}()
	reply, err = s.h(ctx, rqs)
	if err == nil && len(reply.Context)+len(reply.Body) > s.maxPayload {
		return Payload{}, fmt.Errorf("%w: a reply of %d bytes (context %d, body %d), limit %d",
			ErrPayloadTooLarge, len(reply.Context)+len(reply.Body), len(reply.Context), len(reply.Body), s.maxPayload)
	}
	return reply, err
}

// errorMessage is the body of an error reply: the error's message, cut to
// the size limit.
func (s *server) errorMessage(err error) []byte {
	msg := err.Error()
	return []byte(msg[:min(len(msg), s.maxPayload)])
}

// isStopControl reports whether a control frame's context is the JSON
// object {"stop":true}.
func isStopControl(context []byte) bool {
	if string(context) == stopControl {
		return true
	}
	var fields map[string]json.RawMessage
	return json.Unmarshal(context, &fields) == nil && string(fields["stop"]) == "true"
}

// maxPayloadFromEnv returns the size limit the pool set, or the default.
func maxPayloadFromEnv() (int, error) {
	value, ok := os.LookupEnv(envMaxPayload)
	if !ok {
		return defaultMaxPayload, nil
	}
	limit, err := strconv.Atoi(value)
	if err != nil || limit <= 0 {
		return 0, fmt.Errorf("pool: %s=%q: want a positive number of bytes", envMaxPayload, value)
	}
	return limit, nil
}

// stdio is the stream of a pipe worker: requests on stdin, replies on
// stdout. Closing it closes stdin only.
type stdio struct {
	io.ReadCloser
	io.Writer
}

// stdin returns standard input, reopened through the runtime's poller
// when it is a pipe or a socket so that closing it interrupts a blocked
// read: os.Stdin, opened in blocking mode, cannot be interrupted.
func stdin() (*os.File, error) {
	info, err := os.Stdin.Stat()
	if err != nil || info.Mode()&(fs.ModeNamedPipe|fs.ModeSocket) == 0 {
		return os.Stdin, nil
	}
	if err := syscall.SetNonblock(syscall.Stdin, true); err != nil {
		return nil, fmt.Errorf("pool: stdin: %w", err)
	}
	return os.NewFile(uintptr(syscall.Stdin), "/dev/stdin"), nil
}
