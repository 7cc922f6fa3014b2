package pool_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gosupervise/supervisor/pool"
)

// testWorkerEnv selects the test worker's mode when set: "" serves jobs;
// "exit-at-start" exits 1 before the handshake; "no-handshake" never hands
// shake; "ignore-stop" serves but ignores stop frames and SIGTERM until
// killed; "crash-if-file" exits at start while the file in
// POOL_TEST_CRASH_FILE exists; "deaf" hands shake and closes its stdin.
const testWorkerEnv = "POOL_TEST_WORKER"

// Environment variables that change any mode of the test worker.
const (
	// spawnDirEnv names a directory where every worker registers at start:
	// the nth to start creates spawn-<n> holding its pid.
	spawnDirEnv = "POOL_TEST_SPAWN_DIR"
	// failSpawnEnv makes the worker registered as number n (in
	// spawnDirEnv) exit 1 before the handshake.
	failSpawnEnv = "POOL_TEST_FAIL_SPAWN"
	// quitSpawnEnv makes the worker registered as number n (in
	// spawnDirEnv) exit 0 right after its handshake.
	quitSpawnEnv = "POOL_TEST_QUIT_SPAWN"
	// startDelayEnv delays the handshake by this many milliseconds.
	startDelayEnv = "POOL_TEST_START_DELAY_MS"
	// ignoreLimitEnv makes the worker ignore the pool's payload limit, so
	// that it can send a reply the pool must refuse.
	ignoreLimitEnv = "POOL_TEST_IGNORE_LIMIT"
	// crashFileEnv names the file whose presence makes crash-if-file exit.
	crashFileEnv = "POOL_TEST_CRASH_FILE"
)

// op is a job for the test worker, sent as the request's Context.
type op struct {
	Op      string `json:"op"`                // see testHandler
	Ms      int    `json:"ms,omitempty"`      // sleep, alloc, stray-later: milliseconds
	Size    int    `json:"size,omitempty"`    // big: reply bytes; alloc: MiB held
	Message string `json:"message,omitempty"` // fail: the error; stderr, crash: the line; stop-once, stray-later: marker file; env: variable
	Record  string `json:"record,omitempty"`  // a file to which the worker appends its pid before it runs the op
}

func (o op) payload(body []byte) pool.Payload {
	ctx, err := json.Marshal(o)
	if err != nil {
		panic(err)
	}
	return pool.Payload{Context: ctx, Body: body}
}

// workerCmd returns a command function that starts this test binary as a
// worker in mode, with extra environment variables.
func workerCmd(mode string, env ...string) func() *exec.Cmd {
	return func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), testWorkerEnv+"="+mode, raceEnv())
		cmd.Env = append(cmd.Env, env...)
		return cmd
	}
}

// raceEnv keeps a worker built with -race from sleeping a second at exit
// (the race runtime's default), which would slow every stop down.
func raceEnv() string {
	return "GORACE=" + strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0")
}

var held [][]byte // memory the alloc op keeps, for MaxMemory

func testWorker(mode string) int {
	n, err := register()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 1
	}
	if n > 0 && os.Getenv(failSpawnEnv) == strconv.Itoa(n) {
		fmt.Fprintf(os.Stderr, "test worker: spawn %d fails\n", n)
		return 1
	}
	if n > 0 && os.Getenv(quitSpawnEnv) == strconv.Itoa(n) {
		// The end of the input right after the handshake: ServeConn
		// returns nil and the worker exits 0.
		err := pool.ServeConn(context.Background(), stdio{strings.NewReader(""), os.Stdout}, testHandler)
		if err != nil {
			fmt.Fprintln(os.Stderr, "test worker:", err)
			return 1
		}
		return 0
	}
	switch mode {
	case "exit-at-start":
		fmt.Fprintln(os.Stderr, "test worker: exiting at start")
		return 1
	case "no-handshake":
		time.Sleep(time.Hour)
		return 0
	case "crash-if-file":
		if _, err := os.Stat(os.Getenv(crashFileEnv)); err == nil {
			fmt.Fprintln(os.Stderr, "test worker: crash file present")
			return 2
		}
	case "ignore-stop":
		signal.Ignore(syscall.SIGTERM)
	case "deaf":
		// Stops listening, then hands shake and keeps its stdout open:
		// the pool cannot send it a request, and sees no end of stream.
		os.Stdin.Close()
		handshake := appendFrame(nil, 0x02, []byte(`{"pid":`+strconv.Itoa(os.Getpid())+`}`), nil)
		if _, err := os.Stdout.Write(handshake); err != nil {
			return 1
		}
		time.Sleep(time.Hour)
		return 0
	}
	if ms, err := strconv.Atoi(os.Getenv(startDelayEnv)); err == nil {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	if os.Getenv(ignoreLimitEnv) != "" {
		os.Unsetenv("SUPERVISOR_POOL_MAX_PAYLOAD")
	}
	err = pool.Serve(context.Background(), testHandler)
	if mode == "ignore-stop" {
		time.Sleep(time.Hour) // until SIGKILL
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "test worker:", err)
		return 1
	}
	return 0
}

// register records the worker's pid in spawnDirEnv, if set, and returns
// its number there: the nth worker to start is n (0 without spawnDirEnv).
func register() (int, error) {
	dir := os.Getenv(spawnDirEnv)
	if dir == "" {
		return 0, nil
	}
	pid := strconv.Itoa(os.Getpid())
	written := filepath.Join(dir, "pid-"+pid)
	if err := os.WriteFile(written, []byte(pid), 0o600); err != nil {
		return 0, fmt.Errorf("register: %w", err)
	}
	defer os.Remove(written)
	for n := 1; ; n++ {
		// A hard link appears whole and fails if the name exists: the
		// numbering is atomic across concurrent spawns.
		err := os.Link(written, filepath.Join(dir, "spawn-"+strconv.Itoa(n)))
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("register: %w", err)
		}
		return n, nil
	}
}

// appendLine appends a line to a file.
func appendLine(name, line string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(line + "\n")
	return errors.Join(err, f.Close())
}

// appendFrame appends a frame to dst, encoded as PROTOCOL.md says.
func appendFrame(dst []byte, flags byte, context, body []byte) []byte {
	var header [20]byte
	header[0], header[1], header[2], header[3] = 0xFF, 0x53, 1, flags
	binary.BigEndian.PutUint32(header[4:], uint32(len(context)))
	binary.BigEndian.PutUint32(header[8:], uint32(len(body)))
	payload := append(slices.Clone(context), body...)
	binary.BigEndian.PutUint32(header[12:], crc32.ChecksumIEEE(payload))
	binary.BigEndian.PutUint32(header[16:], crc32.ChecksumIEEE(header[:16]))
	return append(append(dst, header[:]...), payload...)
}

// stdio is a stream of a worker made of a reader and a writer.
type stdio struct {
	io.Reader
	io.Writer
}

// testHandler runs one op: echo (the default), pid, fail, crash, stray,
// stray-later, sleep, hang, stop, stop-once, big, alloc, stderr, env,
// extra-replies, child.
func testHandler(ctx context.Context, rqs pool.Payload) (pool.Payload, error) {
	var o op
	if len(rqs.Context) > 0 {
		if err := json.Unmarshal(rqs.Context, &o); err != nil {
			return pool.Payload{}, fmt.Errorf("bad op: %w", err)
		}
	}
	if o.Record != "" {
		if err := appendLine(o.Record, strconv.Itoa(os.Getpid())); err != nil {
			return pool.Payload{}, err
		}
	}
	switch o.Op {
	case "", "echo":
		return pool.Payload{Context: []byte(`{"echo":true}`), Body: rqs.Body}, nil
	case "pid":
		return pool.Payload{Body: []byte(strconv.Itoa(os.Getpid()))}, nil
	case "fail":
		return pool.Payload{}, errors.New(o.Message)
	case "crash":
		if o.Message != "" {
			fmt.Fprintln(os.Stderr, o.Message)
		}
		fmt.Fprintln(os.Stderr, "test worker: crashing on request")
		os.Exit(3)
	case "stray":
		os.Stdout.WriteString("hello from a stray print\n")
		return pool.Payload{Body: rqs.Body}, nil
	case "stray-later":
		// Replies, then prints to stdout while idle.
		go func() {
			time.Sleep(time.Duration(o.Ms) * time.Millisecond)
			os.Stdout.WriteString("hello from a late stray print\n")
			if o.Message != "" {
				_ = os.WriteFile(o.Message, nil, 0o600) // it has printed
			}
		}()
		return pool.Payload{Body: rqs.Body}, nil
	case "sleep":
		time.Sleep(time.Duration(o.Ms) * time.Millisecond)
		return pool.Payload{Body: rqs.Body}, nil
	case "hang":
		time.Sleep(time.Hour) // until killed; a bare select{} would be a deadlock crash
	case "stop":
		return pool.Payload{Context: []byte(pool.StopRequest), Body: []byte("ignored")}, nil
	case "stop-once":
		// The first worker to see the marker file absent creates it and
		// asks to be replaced; any other answers with its pid.
		f, err := os.OpenFile(o.Message, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return pool.Payload{Body: []byte(strconv.Itoa(os.Getpid()))}, nil
		}
		_, err = f.WriteString(strconv.Itoa(os.Getpid()))
		if err = errors.Join(err, f.Close()); err != nil {
			return pool.Payload{}, err
		}
		return pool.Payload{Context: []byte(pool.StopRequest), Body: []byte("ignored")}, nil
	case "big":
		return pool.Payload{Body: bytes.Repeat([]byte{'x'}, o.Size)}, nil
	case "alloc":
		chunk := bytes.Repeat([]byte{1}, o.Size<<20) // touched, so resident
		held = append(held, chunk)
		time.Sleep(time.Duration(o.Ms) * time.Millisecond)
		return pool.Payload{Body: []byte("allocated")}, nil
	case "stderr":
		fmt.Fprintln(os.Stderr, o.Message)
		return pool.Payload{Body: rqs.Body}, nil
	case "env":
		return pool.Payload{Body: []byte(os.Getenv(o.Message))}, nil
	case "child":
		// A child that outlives the worker unless its process group is
		// killed; its output goes nowhere, so it holds no pipe of the pool.
		child := exec.Command("sleep", "3600")
		if err := child.Start(); err != nil {
			return pool.Payload{}, err
		}
		go child.Wait()
		return pool.Payload{Body: []byte(strconv.Itoa(child.Process.Pid))}, nil
	case "extra-replies":
		// Two well-formed replies the pool did not ask for, in one write
		// ahead of the real one, which comes after Ms.
		extra := appendFrame(nil, 0, nil, []byte("stale-1"))
		extra = appendFrame(extra, 0, nil, []byte("stale-2"))
		os.Stdout.Write(extra)
		time.Sleep(time.Duration(o.Ms) * time.Millisecond)
		return pool.Payload{Body: []byte("real")}, nil
	}
	return pool.Payload{}, fmt.Errorf("unknown op %q", o.Op)
}
