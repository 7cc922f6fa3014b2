package pool

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// pythonWorker is examples/pool/worker.py, started by a test, and the
// pool's end of its frame stream.
type pythonWorker struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	r      *bufio.Reader
	w      frameWriter
	stderr bytes.Buffer // read only after wait
}

// startPython starts the Python worker with frames on its stdin and stdout,
// unless env names a socket. Cleanup kills it if the test did not wait for
// it.
func startPython(t *testing.T, env ...string) *pythonWorker {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not on PATH: the Python worker cannot be tested")
	}
	p := &pythonWorker{t: t, cmd: exec.Command(python, "../examples/pool/worker.py")}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = &p.stderr
	p.stdin, err = p.cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := p.cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	require.NoError(t, stdout.(*os.File).SetReadDeadline(time.Now().Add(30*time.Second)))
	require.NoError(t, p.stdin.(*os.File).SetWriteDeadline(time.Now().Add(30*time.Second)))
	p.r, p.w = bufio.NewReader(stdout), frameWriter{w: p.stdin}
	return p
}

func (p *pythonWorker) requireHandshake(r *bufio.Reader) {
	p.t.Helper()
	handshake, err := readFrame(r, defaultMaxPayload)
	require.NoError(p.t, err)
	require.Equal(p.t, byte(flagControl), handshake.flags)
	require.Empty(p.t, handshake.body)
	pid, err := parseHandshake(handshake.context)
	require.NoError(p.t, err)
	require.Equal(p.t, p.cmd.Process.Pid, pid)
}

// wait waits for the worker to exit, at most 10s, and returns its status.
func (p *pythonWorker) wait() int {
	p.t.Helper()
	timer := time.AfterFunc(10*time.Second, func() { p.cmd.Process.Kill() })
	defer timer.Stop()
	p.cmd.Wait()
	return p.cmd.ProcessState.ExitCode()
}

func TestPythonWorkerHandshakesWithItsPid(t *testing.T) {
	p := startPython(t)
	p.requireHandshake(p.r)
	p.stdin.Close()
	require.Equal(t, 0, p.wait(), "the end of its input stops it; stderr: %s", &p.stderr)
}

func TestPythonWorkerServesRequests(t *testing.T) {
	p := startPython(t)
	p.requireHandshake(p.r)
	worker := `{"worker":"python","pid":` + strconv.Itoa(p.cmd.Process.Pid) + `}`
	big := pattern(10<<20+5, 'p')
	cases := []struct {
		name                  string
		context               string
		body                  []byte
		wantFlags             byte
		wantContext, wantBody string
	}{
		{"echo without context", "", []byte("plain"), 0, worker, "plain"},
		{"echo of nothing", `{"op":"echo"}`, nil, 0, worker, ""},
		{"echo of 10 MB", `{"op":"echo"}`, big, 0, worker, string(big)},
		{"upper", `{"op":"upper"}`, []byte("shout, please"), 0, worker, "SHOUT, PLEASE"},
		{"fail", `{"op":"fail","message":"disk full"}`, []byte("x"), flagError, "", "disk full"},
		{"unknown op", `{"op":"dance"}`, nil, flagError, "", "unknown op"},
		{"print does not corrupt the stream", `{"op":"print"}`, []byte("\xff\x53 after print"), 0, worker, "\xff\x53 after print"},
		{"sleep", `{"op":"sleep","seconds":0.05}`, []byte("rested"), 0, worker, "rested"},
		{"stop request", `{"op":"stop"}`, []byte("x"), 0, StopRequest, ""},
		{"echo after a stop request", "", []byte("still served"), 0, worker, "still served"},
	}
	for _, c := range cases {
		require.NoError(t, p.w.write(0, []byte(c.context), c.body), c.name)
		reply, err := readFrame(p.r, defaultMaxPayload)
		require.NoError(t, err, c.name)
		require.Equal(t, c.wantFlags, reply.flags, c.name)
		require.Equal(t, c.wantContext, string(reply.context), c.name)
		require.True(t, c.wantBody == string(reply.body), "%s: body of %d bytes differs", c.name, len(reply.body))
	}

	require.NoError(t, p.w.write(flagControl, []byte(stopControl), nil))
	require.Equal(t, 0, p.wait(), "a stop frame stops it")
	require.Contains(t, p.stderr.String(), "print() from the worker goes to stderr")
	require.Contains(t, p.stderr.String(), "so does a write to file descriptor 1")
}

func TestPythonWorkerExits(t *testing.T) {
	cases := []struct {
		name     string
		send     func(p *pythonWorker)
		wantCode int
	}{
		{"with 0 on a stop frame", func(p *pythonWorker) {
			p.w.write(flagControl, []byte(stopControl), nil)
		}, 0},
		{"with 0 at the end of its input", func(p *pythonWorker) { p.stdin.Close() }, 0},
		{"with 3 on crash, without replying", func(p *pythonWorker) {
			p.w.write(0, []byte(`{"op":"crash"}`), nil)
		}, 3},
		{"with 2 on a broken frame", func(p *pythonWorker) { p.stdin.Write([]byte("garbage that is not a frame")) }, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := startPython(t)
			p.requireHandshake(p.r)
			c.send(p)
			_, err := readFrame(p.r, defaultMaxPayload)
			require.Equal(t, io.EOF, err, "no reply")
			require.Equal(t, c.wantCode, p.wait(), "stderr: %s", &p.stderr)
		})
	}
}

func TestPythonWorkerDialsTheUnixSocketInItsEnvironment(t *testing.T) {
	ls, err := net.Listen("unix", t.TempDir()+"/pool.sock")
	require.NoError(t, err)
	defer ls.Close()
	p := startPython(t, envSocket+"=unix:"+ls.Addr().String(), envMaxPayload+"=1000")
	defer p.stdin.Close()

	require.NoError(t, ls.(*net.UnixListener).SetDeadline(time.Now().Add(10*time.Second)))
	conn, err := ls.Accept()
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	r, fw := bufio.NewReader(conn), frameWriter{w: conn}
	p.requireHandshake(r)

	require.NoError(t, fw.write(0, []byte(`{"op":"upper"}`), []byte("over a socket")))
	reply, err := readFrame(r, defaultMaxPayload)
	require.NoError(t, err)
	require.Equal(t, "OVER A SOCKET", string(reply.body))

	require.NoError(t, fw.write(0, nil, make([]byte, 1001)))
	require.Equal(t, 2, p.wait(), "a request over SUPERVISOR_POOL_MAX_PAYLOAD is a violation")
	require.Contains(t, p.stderr.String(), "over the limit 1000")
}
