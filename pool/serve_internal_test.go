package pool

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// servePeer is the pool's end of a ServeConn running on a net.Pipe.
type servePeer struct {
	t      *testing.T
	conn   net.Conn
	r      *bufio.Reader
	w      frameWriter
	served chan error // ServeConn's result
}

// startServeConn runs ServeConn(ctx, ..., h) against an in-process peer and
// reads its handshake. Cleanup closes both ends and waits for ServeConn.
func startServeConn(t *testing.T, ctx context.Context, h Handler) *servePeer {
	t.Helper()
	poolEnd, workerEnd := net.Pipe()
	p := &servePeer{t: t, conn: poolEnd, r: bufio.NewReader(poolEnd), w: frameWriter{w: poolEnd}, served: make(chan error, 1)}
	go func() { p.served <- ServeConn(ctx, workerEnd, h) }()
	t.Cleanup(func() {
		poolEnd.Close()
		workerEnd.Close()
		select {
		case <-p.served:
		case <-time.After(5 * time.Second):
			t.Error("ServeConn did not return after its stream was closed")
		}
	})
	require.NoError(t, poolEnd.SetDeadline(time.Now().Add(10*time.Second)))
	handshake := p.read()
	require.Equal(t, byte(flagControl), handshake.flags)
	require.Empty(t, handshake.body)
	pid, err := parseHandshake(handshake.context)
	require.NoError(t, err)
	require.Equal(t, os.Getpid(), pid)
	return p
}

func (p *servePeer) read() frame {
	p.t.Helper()
	f, err := readFrame(p.r, defaultMaxPayload)
	require.NoError(p.t, err)
	return f
}

func (p *servePeer) send(flags byte, context, body string) {
	p.t.Helper()
	require.NoError(p.t, p.w.write(flags, []byte(context), []byte(body)))
}

// sendInBackground writes raw bytes without waiting for the worker to read
// them all (a net.Pipe write blocks until then); it ends when the pipe is
// closed at cleanup.
func (p *servePeer) sendInBackground(raw []byte) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.conn.Write(raw)
	}()
	p.t.Cleanup(func() { <-done }) // runs after the pipe is closed
}

// result waits for ServeConn to return.
func (p *servePeer) result() error {
	p.t.Helper()
	select {
	case err := <-p.served:
		p.served <- err // for cleanup
		return err
	case <-time.After(5 * time.Second):
		p.t.Fatal("ServeConn did not return")
		return nil
	}
}

type ctxKey struct{}

// testHandler switches on the request context.
func testHandler(ctx context.Context, rqs Payload) (Payload, error) {
	switch string(rqs.Context) {
	case "fail":
		return Payload{}, errors.New("no such user")
	case "panic":
		panic("index out of range [7]")
	case "stop":
		return Payload{Context: []byte(StopRequest), Body: []byte("discarded")}, nil
	case "oversize":
		return Payload{Body: make([]byte, defaultMaxPayload+1)}, nil
	case "ctx":
		return Payload{Context: []byte(fmt.Sprint(ctx.Value(ctxKey{})))}, nil
	}
	return Payload{Context: []byte("echo"), Body: rqs.Body}, nil
}

func TestServeConnHandshakesWithItsOwnPid(t *testing.T) {
	startServeConn(t, t.Context(), testHandler) // checks the handshake
}

func TestServeConnRepliesToEachRequestAndSurvivesFailures(t *testing.T) {
	ctx := context.WithValue(t.Context(), ctxKey{}, "serve's ctx")
	p := startServeConn(t, ctx, testHandler)
	cases := []struct {
		name                  string
		context, body         string
		wantFlags             byte
		wantContext, wantBody string
	}{
		{"echo", "", "hello", 0, "echo", "hello"},
		{"empty echo", "", "", 0, "echo", ""},
		{"handler error", "fail", "x", flagError, "", "no such user"},
		{"echo after an error", "", "still here", 0, "echo", "still here"},
		{"handler panic", "panic", "x", flagError, "", "handler panicked: index out of range [7]"},
		{"echo after a panic", "", "still here", 0, "echo", "still here"},
		{"stop request", "stop", "", 0, StopRequest, "discarded"},
		{"oversize reply", "oversize", "", flagError, "", fmt.Sprintf("pool: payload too large: a reply of %d bytes (context 0, body %[1]d), limit %d", defaultMaxPayload+1, defaultMaxPayload)},
		{"handler gets serve's ctx", "ctx", "", 0, "serve's ctx", ""},
	}
	for _, c := range cases {
		p.send(0, c.context, c.body)
		reply := p.read()
		require.Equal(t, c.wantFlags, reply.flags, c.name)
		require.Equal(t, c.wantContext, string(reply.context), c.name)
		require.Equal(t, c.wantBody, string(reply.body), c.name)
	}
}

func TestServeConnEchoesLargeBodies(t *testing.T) {
	p := startServeConn(t, t.Context(), testHandler)
	body := pattern(10<<20+3, 'z')
	go p.w.write(0, nil, body) // net.Pipe: the write ends as the worker reads it
	reply := p.read()
	require.True(t, bytes.Equal(body, reply.body))
}

func TestServeConnReturnsNil(t *testing.T) {
	cases := []struct {
		name string
		end  func(p *servePeer)
	}{
		{"on a stop frame", func(p *servePeer) { p.send(flagControl, stopControl, "") }},
		{"on a stop frame with other JSON spacing", func(p *servePeer) { p.send(flagControl, `{ "stop": true }`, "") }},
		{"at the end of its input", func(p *servePeer) { p.conn.Close() }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			called := false
			p := startServeConn(t, t.Context(), func(context.Context, Payload) (Payload, error) {
				called = true
				return Payload{}, nil
			})
			c.end(p)
			require.NoError(t, p.result())
			require.False(t, called)
		})
	}
}

func TestServeConnReturnsPromptlyWhenCancelled(t *testing.T) {
	cases := []struct {
		name string
		busy bool
	}{
		{"while waiting for a request", false},
		{"while the handler runs", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			running := make(chan struct{})
			p := startServeConn(t, ctx, func(ctx context.Context, rqs Payload) (Payload, error) {
				close(running)
				<-ctx.Done()
				return rqs, nil
			})
			if c.busy {
				p.send(0, "", "work")
				<-running
			}
			start := time.Now()
			cancel()
			require.ErrorIs(t, p.result(), context.Canceled)
			require.Less(t, time.Since(start), time.Second)
			_, err := readFrame(p.r, defaultMaxPayload)
			require.Error(t, err, "no reply after cancellation: the stream is closed")
		})
	}
}

func TestServeConnRejectsABrokenStreamFromThePool(t *testing.T) {
	valid := appendFrame(nil, 0, nil, []byte("hello"))
	corrupt := bytes.Clone(valid)
	corrupt[len(corrupt)-1] ^= 1
	cases := []struct {
		name    string
		raw     []byte
		wantErr error
	}{
		{"stray text", []byte("hello\n"), ErrProtocol},
		{"corrupt payload", corrupt, ErrProtocol},
		{"unknown version", rawHeader(9, 0, 0, 0, nil), ErrProtocol},
		{"error flag on a request", appendFrame(nil, flagError, nil, []byte("?")), ErrProtocol},
		{"unknown control frame", appendFrame(nil, flagControl, []byte(`{"pause":true}`), nil), ErrProtocol},
		{"control frame that is not JSON", appendFrame(nil, flagControl, []byte(`stop`), nil), ErrProtocol},
		{"request over the limit", rawHeader(frameVersion, 0, 0, 1<<20+1, nil), ErrPayloadTooLarge},
		{"request over the limit is a violation", rawHeader(frameVersion, 0, 0, 1<<20+1, nil), ErrProtocol},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(envMaxPayload, strconv.Itoa(1<<20))
			p := startServeConn(t, t.Context(), testHandler)
			p.sendInBackground(c.raw)
			require.ErrorIs(t, p.result(), c.wantErr)
		})
	}
}

func TestServeConnRefusesBadSetup(t *testing.T) {
	var stream bytes.Buffer
	require.ErrorContains(t, ServeConn(t.Context(), &stream, nil), "nil Handler")
	for _, limit := range []string{"", "0", "-1", "64MiB", "1e6"} {
		t.Setenv(envMaxPayload, limit)
		require.ErrorContains(t, ServeConn(t.Context(), &stream, testHandler), envMaxPayload, "limit %q", limit)
	}
	require.Zero(t, stream.Len(), "nothing is sent before the setup is checked")
}

func TestServeConnReturnsAtOnceWhenCancelledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var stream bytes.Buffer
	require.ErrorIs(t, ServeConn(ctx, &stream, testHandler), context.Canceled)
	require.Zero(t, stream.Len())
}

// serveProcessEnv makes this test binary, started by the tests below, run
// Serve in TestServeProcess instead of testing.
const serveProcessEnv = "POOL_TEST_SERVE_PROCESS"

// TestServeProcess is the body of a worker process for the Serve tests; it
// is skipped in a normal run. Its exit status: 0 when Serve returned nil,
// 4 when ctx's deadline ended it, 1 otherwise.
func TestServeProcess(t *testing.T) {
	timeout, ok := os.LookupEnv(serveProcessEnv)
	if !ok {
		t.Skip("runs only as the worker process of the Serve tests")
	}
	ctx := context.Background()
	if d, err := time.ParseDuration(timeout); err == nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	err := Serve(ctx, testHandler)
	switch {
	case err == nil:
		os.Exit(0)
	case errors.Is(err, context.DeadlineExceeded):
		os.Exit(4)
	}
	fmt.Fprintln(os.Stderr, "serve:", err)
	os.Exit(1)
}

// serveProcess starts TestServeProcess in a child process with frames on
// its stdin and stdout (or on a socket, per env).
func serveProcess(t *testing.T, timeout string, env ...string) (cmd *exec.Cmd, stdin io.WriteCloser, stdout *bufio.Reader) {
	t.Helper()
	cmd = exec.Command(os.Args[0], "-test.run=^TestServeProcess$")
	cmd.Env = append(os.Environ(), append([]string{serveProcessEnv + "=" + timeout}, env...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	require.NoError(t, out.(*os.File).SetReadDeadline(time.Now().Add(30*time.Second)))
	return cmd, stdin, bufio.NewReader(out)
}

// exitCode waits for cmd, at most 10s, and returns its exit status.
func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	timer := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()
	cmd.Wait()
	return cmd.ProcessState.ExitCode()
}

func TestServeSpeaksFramesOnStdinAndStdout(t *testing.T) {
	cmd, stdin, stdout := serveProcess(t, "")
	handshake, err := readFrame(stdout, defaultMaxPayload)
	require.NoError(t, err)
	pid, err := parseHandshake(handshake.context)
	require.NoError(t, err)
	require.Equal(t, cmd.Process.Pid, pid)

	fw := frameWriter{w: stdin}
	require.NoError(t, fw.write(0, nil, []byte("over a pipe")))
	reply, err := readFrame(stdout, defaultMaxPayload)
	require.NoError(t, err)
	require.Equal(t, "over a pipe", string(reply.body))

	require.NoError(t, fw.write(flagControl, []byte(stopControl), nil))
	require.Equal(t, 0, exitCode(t, cmd))
}

func TestServeReturnsWhenCancelledWhileReadingStdin(t *testing.T) {
	cmd, stdin, stdout := serveProcess(t, "300ms")
	defer stdin.Close() // kept open: Serve is blocked reading it
	_, err := readFrame(stdout, defaultMaxPayload)
	require.NoError(t, err)
	start := time.Now()
	require.Equal(t, 4, exitCode(t, cmd), "Serve returned ctx's error")
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestServeDialsTheSocketInItsEnvironment(t *testing.T) {
	ls, err := net.Listen("unix", t.TempDir()+"/pool.sock")
	require.NoError(t, err)
	defer ls.Close()
	cmd, stdin, _ := serveProcess(t, "", envSocket+"=unix:"+ls.Addr().String())
	defer stdin.Close()

	require.NoError(t, ls.(*net.UnixListener).SetDeadline(time.Now().Add(10*time.Second)))
	conn, err := ls.Accept()
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	r := bufio.NewReader(conn)
	handshake, err := readFrame(r, defaultMaxPayload)
	require.NoError(t, err)
	pid, err := parseHandshake(handshake.context)
	require.NoError(t, err)
	require.Equal(t, cmd.Process.Pid, pid)

	fw := frameWriter{w: conn}
	require.NoError(t, fw.write(0, nil, []byte("over a socket")))
	reply, err := readFrame(r, defaultMaxPayload)
	require.NoError(t, err)
	require.Equal(t, "over a socket", string(reply.body))

	require.NoError(t, fw.write(flagControl, []byte(stopControl), nil))
	require.Equal(t, 0, exitCode(t, cmd))
}
