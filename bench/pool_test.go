//go:build unix

package bench_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gosupervise/supervisor/pool"
)

// Pool: jobs on external worker processes. Every side runs the same worker
// program (bench/internal/poolworker: pool.Serve echoing each request),
// built once per benchmark run, over pipes, with 64-byte jobs. The peers
// ("raw" sides) speak the wire protocol by hand on the child's stdin and
// stdout with the least code that does it correctly — encode a frame,
// decode one and check its checksums — so they are the floor under any
// pool of such workers. The exception is the RoadRunner side of the
// parallel comparison (roadrunner_test.go): RoadRunner speaks its own
// protocol, so its workers are bench/internal/rrworker, the same echo in
// that protocol. See BENCHMARKS.md §7.

const (
	poolJobSize = 64
	poolWorkers = 4 // BenchmarkPoolParallel's workers
	poolCallers = 8 // BenchmarkPoolParallel's goroutines calling at once, whatever GOMAXPROCS
	poolCrashOp = `{"op":"crash"}`
)

// buildPoolWorker builds the benchmark worker, and the RoadRunner one
// beside it (see rrWorkerBeside), into a temporary directory that is
// removed when tb ends, and returns the path of ours.
func buildPoolWorker(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	out, err := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"./internal/poolworker", "./internal/rrworker").CombinedOutput()
	if err != nil {
		tb.Fatalf("building the pool workers: %v\n%s", err, out)
	}
	return filepath.Join(dir, "poolworker")
}

// poolRun is one side of a pool benchmark, started: jobs runs n jobs and
// returns how many were answered as they should be; stop ends the side
// and reaps its children.
type poolRun struct {
	jobs func(n int) (int, error)
	stop func() error
}

// poolSide names a side and starts it with the worker at the given path.
type poolSide struct {
	name  string
	start func(worker string) (poolRun, error)
}

// newBenchPool starts a pool of worker over pipes with a discard logger.
func newBenchPool(worker string, cfg pool.Config) (*pool.Pool, error) {
	cfg.Logger = discardLogger()
	return pool.NewPool(context.Background(), func() *exec.Cmd { return exec.Command(worker) },
		pool.NewPipeFactory(), cfg)
}

// destroy is a pool side's stop.
func destroy(p *pool.Pool) func() error {
	return func() error { return p.Destroy(context.Background()) }
}

// echoed checks that an Exec of a poolJobSize job came back echoed.
func echoed(reply pool.Payload, err error) error {
	if err != nil {
		return err
	}
	if len(reply.Body) != poolJobSize {
		return fmt.Errorf("reply body of %d bytes, want %d", len(reply.Body), poolJobSize)
	}
	return nil
}

// repeat runs job n times, one after another, until one fails.
func repeat(n int, job func() error) (int, error) {
	for done := range n {
		if err := job(); err != nil {
			return done, err
		}
	}
	return n, nil
}

// callConcurrently runs job n times in total from poolCallers goroutines
// and returns how many runs succeeded.
func callConcurrently(n int, job func() error) (int, error) {
	var claimed, done atomic.Int64
	errs := make([]error, poolCallers)
	var wg sync.WaitGroup
	for i := range poolCallers {
		wg.Go(func() {
			for claimed.Add(1) <= int64(n) {
				if err := job(); err != nil {
					errs[i] = err
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	return int(done.Load()), errors.Join(errs...)
}

// poolSerialSupervisor: Execs one after another on a pool of one worker.
func poolSerialSupervisor(worker string) (poolRun, error) {
	p, err := newBenchPool(worker, pool.Config{NumWorkers: 1})
	if err != nil {
		return poolRun{}, err
	}
	ctx := context.Background()
	job := pool.Payload{Body: make([]byte, poolJobSize)}
	return poolRun{
		jobs: func(n int) (int, error) { return repeat(n, func() error { return echoed(p.Exec(ctx, job)) }) },
		stop: destroy(p),
	}, nil
}

// poolSerialRaw: round trips one after another on one child started by
// hand.
func poolSerialRaw(worker string) (poolRun, error) {
	w, err := startRawWorker(worker)
	if err != nil {
		return poolRun{}, err
	}
	body := make([]byte, poolJobSize)
	return poolRun{
		jobs: func(n int) (int, error) { return repeat(n, func() error { return w.echo(body) }) },
		stop: w.stop,
	}, nil
}

// poolSerialRawReader is poolSerialRaw in the shape of the pool's worker:
// a goroutine of its own reads the replies and hands each to the caller
// over a channel. It is a diagnostic, not a peer: it isolates the cost of
// that hand-off.
func poolSerialRawReader(worker string) (poolRun, error) {
	w, err := startRawWorker(worker)
	if err != nil {
		return poolRun{}, err
	}
	replies := make(chan error)
	go func() {
		for {
			flags, _, body, err := w.read()
			switch {
			case err == nil && flags != 0:
				err = fmt.Errorf("reply flags %#x: %q", flags, body)
			case err == nil && len(body) != poolJobSize:
				err = fmt.Errorf("reply body of %d bytes, want %d", len(body), poolJobSize)
			}
			replies <- err
			if err != nil {
				return // io.EOF once the worker stopped
			}
		}
	}()
	body := make([]byte, poolJobSize)
	failed := false
	return poolRun{
		jobs: func(n int) (int, error) {
			return repeat(n, func() error {
				err := w.write(0, nil, body)
				if err == nil {
					err = <-replies
				}
				failed = failed || err != nil
				return err
			})
		},
		stop: func() error {
			kill := time.AfterFunc(rawStopTimeout, func() { _ = w.cmd.Process.Kill() })
			defer kill.Stop()
			err := w.write(rawFlagControl, []byte(`{"stop":true}`), nil)
			if err != nil || failed {
				_ = w.cmd.Process.Kill()
			}
			if !failed {
				<-replies // the reader's io.EOF; after a failure it has already ended
			}
			return errors.Join(err, w.cmd.Wait())
		},
	}, nil
}

// poolParallelSupervisor: Execs from poolCallers goroutines on a pool of
// poolWorkers workers.
func poolParallelSupervisor(worker string) (poolRun, error) {
	p, err := newBenchPool(worker, pool.Config{NumWorkers: poolWorkers})
	if err != nil {
		return poolRun{}, err
	}
	ctx := context.Background()
	job := pool.Payload{Body: make([]byte, poolJobSize)}
	return poolRun{
		jobs: func(n int) (int, error) { return callConcurrently(n, func() error { return echoed(p.Exec(ctx, job)) }) },
		stop: destroy(p),
	}, nil
}

// poolParallelFreeList: round trips from poolCallers goroutines on
// poolWorkers children started by hand and kept in a buffered channel:
// take one, round trip, put it back.
func poolParallelFreeList(worker string) (poolRun, error) {
	free := make(chan *rawWorker, poolWorkers)
	stop := func() error {
		var err error
		for range len(free) {
			err = errors.Join(err, (<-free).stop())
		}
		return err
	}
	for range poolWorkers {
		w, err := startRawWorker(worker)
		if err != nil {
			return poolRun{}, errors.Join(err, stop())
		}
		free <- w
	}
	body := make([]byte, poolJobSize)
	return poolRun{
		jobs: func(n int) (int, error) {
			return callConcurrently(n, func() error {
				w := <-free
				err := w.echo(body)
				free <- w
				return err
			})
		},
		stop: stop,
	}, nil
}

// poolMaxExecutions1Supervisor: Execs one after another on a pool of one
// worker that is replaced after every job. The replacement happens after
// Exec returned, so jobs ends when the last one's replacement has started:
// n jobs are n round trips and n replacements, as on the peer's side.
func poolMaxExecutions1Supervisor(worker string) (poolRun, error) {
	var started atomic.Int64
	startedSignal := make(chan struct{}, 1)
	p, err := newBenchPool(worker, pool.Config{
		NumWorkers:    1,
		MaxExecutions: 1,
		OnEvent: func(e pool.Event) {
			if e.Kind == pool.EventWorkerStarted {
				started.Add(1)
				select {
				case startedSignal <- struct{}{}:
				default:
				}
			}
		},
	})
	if err != nil {
		return poolRun{}, err
	}
	ctx := context.Background()
	job := pool.Payload{Body: make([]byte, poolJobSize)}
	return poolRun{
		jobs: func(n int) (int, error) {
			target := started.Load() + int64(n)
			done, err := repeat(n, func() error { return echoed(p.Exec(ctx, job)) })
			for err == nil && started.Load() < target {
				<-startedSignal
			}
			return done, err
		},
		stop: destroy(p),
	}, nil
}

// poolSpawnExecExit, n times by hand: start a child, read its handshake,
// one round trip, a stop frame, wait for its exit.
func poolSpawnExecExit(worker string) (poolRun, error) {
	body := make([]byte, poolJobSize)
	return poolRun{
		jobs: func(n int) (int, error) {
			return repeat(n, func() error {
				w, err := startRawWorker(worker)
				if err != nil {
					return err
				}
				return errors.Join(w.echo(body), w.stop())
			})
		},
		stop: func() error { return nil },
	}, nil
}

// poolCrashReplaceSupervisor, n times: a job that makes the worker exit
// without replying, then a job that must succeed on its replacement.
// Backoff is zero so that the restart is not the default 100ms wait.
func poolCrashReplaceSupervisor(worker string) (poolRun, error) {
	p, err := newBenchPool(worker, pool.Config{
		NumWorkers: 1,
		Backoff:    func() backoff.BackOff { return &backoff.ZeroBackOff{} },
	})
	if err != nil {
		return poolRun{}, err
	}
	ctx := context.Background()
	crash := pool.Payload{Context: []byte(poolCrashOp)}
	job := pool.Payload{Body: make([]byte, poolJobSize)}
	return poolRun{
		jobs: func(n int) (int, error) {
			return repeat(n, func() error {
				var workerErr *pool.WorkerError
				if _, err := p.Exec(ctx, crash); !errors.As(err, &workerErr) {
					return fmt.Errorf("crash job: got %v, want a *pool.WorkerError", err)
				}
				return echoed(p.Exec(ctx, job))
			})
		},
		stop: destroy(p),
	}, nil
}

// poolCrashReplaceRaw, n times by hand: a job that makes the child exit,
// its reaping, a new child, its handshake, a round trip.
func poolCrashReplaceRaw(worker string) (poolRun, error) {
	w, err := startRawWorker(worker)
	if err != nil {
		return poolRun{}, err
	}
	body := make([]byte, poolJobSize)
	return poolRun{
		jobs: func(n int) (int, error) {
			return repeat(n, func() error {
				if err := w.crash(); err != nil {
					return err
				}
				next, err := startRawWorker(worker)
				if err != nil {
					w = nil
					return err
				}
				w = next
				return w.echo(body)
			})
		},
		stop: func() error {
			if w == nil {
				return nil
			}
			return w.stop()
		},
	}, nil
}

// The four comparisons: ours first, then the peers, then diagnostics.
var (
	poolSerialSides = []poolSide{
		{"supervisor", poolSerialSupervisor},
		{"raw", poolSerialRaw},
		{"raw-reader-goroutine", poolSerialRawReader},
	}
	poolParallelSides = []poolSide{
		{"supervisor", poolParallelSupervisor},
		{"freelist", poolParallelFreeList},
		{"roadrunner", poolParallelRoadRunner},
	}
	poolMaxExecutions1Sides = []poolSide{
		{"supervisor", poolMaxExecutions1Supervisor},
		{"spawn-exec-exit", poolSpawnExecExit},
	}
	poolCrashReplaceSides = []poolSide{
		{"supervisor", poolCrashReplaceSupervisor},
		{"raw", poolCrashReplaceRaw},
	}
)

// benchmarkPool builds the worker and runs each side as a sub-benchmark
// of b.N jobs, reporting its allocations and CPU time besides its wall
// time.
func benchmarkPool(b *testing.B, sides []poolSide) {
	worker := buildPoolWorker(b)
	for _, side := range sides {
		b.Run(side.name, func(b *testing.B) {
			b.ReportAllocs()
			run, err := side.start(worker)
			if err != nil {
				b.Fatal(err)
			}
			// CPU time of this process (the callers' side; the workers
			// are other processes) moves less than wall time with the
			// load of a shared machine.
			cpuStart := cpuTime()
			b.ResetTimer()
			_, err = run.jobs(b.N)
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpuStart).Nanoseconds())/float64(b.N), "cpu-ns/op")
			if err = errors.Join(err, run.stop()); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func BenchmarkPoolSerial(b *testing.B)         { benchmarkPool(b, poolSerialSides) }
func BenchmarkPoolParallel(b *testing.B)       { benchmarkPool(b, poolParallelSides) }
func BenchmarkPoolMaxExecutions1(b *testing.B) { benchmarkPool(b, poolMaxExecutions1Sides) }
func BenchmarkPoolCrashReplace(b *testing.B)   { benchmarkPool(b, poolCrashReplaceSides) }

// BenchmarkPoolPaired runs ours and the peer of each comparison in
// alternating blocks of jobs (ours first in odd blocks, the peer first in
// even ones), both started once, so that the load of a shared machine
// falls on both alike. b.N is the number of jobs of each side; it reports
// each side's wall and CPU time per job and their ratios (ours / peer).
func BenchmarkPoolPaired(b *testing.B) {
	worker := buildPoolWorker(b)
	for _, pair := range []struct {
		name  string
		sides []poolSide
		block int // jobs per block: tens of milliseconds
	}{
		{"serial", poolSerialSides[:2], 2000},
		{"parallel", poolParallelSides[:2], 2000},
		{"parallel-roadrunner", []poolSide{poolParallelSides[0], poolParallelSides[2]}, 2000},
		{"max-executions-1", poolMaxExecutions1Sides, 10},
		{"crash-replace", poolCrashReplaceSides, 10},
	} {
		b.Run(pair.name, func(b *testing.B) {
			runs := make([]poolRun, len(pair.sides))
			var err error
			for i, side := range pair.sides {
				if runs[i], err = side.start(worker); err != nil {
					break
				}
			}
			var wall, cpu [2]time.Duration
			for done, block := 0, 0; err == nil && done < b.N; block++ {
				k := min(pair.block, b.N-done)
				for turn := range 2 {
					i := (turn + block) % 2
					wallStart, cpuStart := time.Now(), cpuTime()
					_, err = runs[i].jobs(k)
					wall[i] += time.Since(wallStart)
					cpu[i] += cpuTime() - cpuStart
					if err != nil {
						break
					}
				}
				done += k
			}
			// Stopping is not a job, and RoadRunner's Destroy takes a second:
			// timed, it would hold b.N at 1.
			b.StopTimer()
			for _, run := range runs {
				if run.stop != nil {
					err = errors.Join(err, run.stop())
				}
			}
			if err != nil {
				b.Fatal(err)
			}
			n := float64(b.N)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(wall[0].Nanoseconds())/n, "ours-ns/op")
			b.ReportMetric(float64(wall[1].Nanoseconds())/n, "peer-ns/op")
			b.ReportMetric(wall[0].Seconds()/wall[1].Seconds(), "ratio")
			b.ReportMetric(cpu[0].Seconds()/cpu[1].Seconds(), "cpu-ratio")
		})
	}
}

func TestPoolHarnessesAnswerEveryJob(t *testing.T) {
	worker := buildPoolWorker(t)
	for _, tc := range []struct {
		name  string
		sides []poolSide
		n     int
	}{
		{"serial", poolSerialSides, 100},
		{"parallel", poolParallelSides, 100},
		{"max-executions-1", poolMaxExecutions1Sides, 5},
		{"crash-replace", poolCrashReplaceSides, 5},
	} {
		for _, side := range tc.sides {
			t.Run(tc.name+"/"+side.name, func(t *testing.T) {
				run, err := side.start(worker)
				if err != nil {
					t.Fatal(err)
				}
				done, err := run.jobs(tc.n)
				done2, err2 := run.jobs(tc.n) // a side runs several blocks in BenchmarkPoolPaired
				if err := errors.Join(err, err2, run.stop()); err != nil {
					t.Fatal(err)
				}
				if done+done2 != 2*tc.n {
					t.Fatalf("%d of %d jobs answered", done+done2, 2*tc.n)
				}
			})
		}
	}
}

// The raw sides' half of the wire protocol (pool/frame.go): a 20-byte
// header — magic 0xFF 0x53, version 1, flags, context and body lengths
// (u32 big-endian), CRC-32 (IEEE) of context then body, CRC-32 of header
// bytes 0..15 — then the context and the body.
const (
	rawHeaderSize  = 20
	rawFlagControl = 0x02
	rawMaxPayload  = 64 << 20
	rawStopTimeout = 10 * time.Second // then the child is killed
)

// rawWorker is a worker child started by hand, spoken to on its stdin and
// stdout from one goroutine at a time.
type rawWorker struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	// Buffers reused from frame to frame; the headers are fields so that
	// they are not allocated per frame, and two so that one goroutine may
	// read while another writes.
	readHeader  [rawHeaderSize]byte
	writeHeader [rawHeaderSize]byte
	out         []byte // the frame being written
	in          []byte // the payload of the last frame read
}

// startRawWorker starts worker with pipes and reads its handshake, a
// control frame naming its pid.
func startRawWorker(worker string) (*rawWorker, error) {
	cmd := exec.Command(worker)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &rawWorker{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout)}
	flags, context, _, err := w.read()
	want := strconv.AppendInt([]byte(`{"pid":`), int64(cmd.Process.Pid), 10)
	if err == nil && (flags != rawFlagControl || string(context) != string(append(want, '}'))) {
		err = fmt.Errorf("handshake: flags %#x, context %q", flags, context)
	}
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	return w, nil
}

// echo sends body as a request and checks that it comes back.
func (w *rawWorker) echo(body []byte) error {
	if err := w.write(0, nil, body); err != nil {
		return err
	}
	flags, _, reply, err := w.read()
	switch {
	case err != nil:
		return err
	case flags != 0:
		return fmt.Errorf("reply flags %#x: %q", flags, reply)
	case len(reply) != len(body):
		return fmt.Errorf("reply body of %d bytes, want %d", len(reply), len(body))
	}
	return nil
}

// crash sends the crash job and reaps the child, which must exit with
// status 3 without replying.
func (w *rawWorker) crash() error {
	if err := w.write(0, []byte(poolCrashOp), nil); err != nil {
		return err
	}
	if _, _, _, err := w.read(); err != io.EOF {
		return fmt.Errorf("crash job: read %v, want io.EOF", err)
	}
	var exit *exec.ExitError
	if err := w.cmd.Wait(); !errors.As(err, &exit) || exit.ExitCode() != 3 {
		return fmt.Errorf("crash job: exit %v, want status 3", err)
	}
	return nil
}

// stop sends the stop frame and reaps the child, killing it if it has not
// exited within rawStopTimeout.
func (w *rawWorker) stop() error {
	kill := time.AfterFunc(rawStopTimeout, func() { _ = w.cmd.Process.Kill() })
	defer kill.Stop()
	err := w.write(rawFlagControl, []byte(`{"stop":true}`), nil)
	return errors.Join(err, w.cmd.Wait())
}

// write writes one frame in one write.
func (w *rawWorker) write(flags byte, context, body []byte) error {
	h := w.writeHeader[:]
	h[0], h[1], h[2], h[3] = 0xFF, 0x53, 1, flags
	binary.BigEndian.PutUint32(h[4:], uint32(len(context)))
	binary.BigEndian.PutUint32(h[8:], uint32(len(body)))
	binary.BigEndian.PutUint32(h[12:], crc32.Update(crc32.ChecksumIEEE(context), crc32.IEEETable, body))
	binary.BigEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:16]))
	w.out = append(append(append(w.out[:0], h...), context...), body...)
	_, err := w.stdin.Write(w.out)
	return err
}

// read reads one frame and checks it; the context and body it returns are
// valid until the next read. The end of the stream before a frame is
// io.EOF.
func (w *rawWorker) read() (flags byte, context, body []byte, err error) {
	h := w.readHeader[:]
	if _, err := io.ReadFull(w.stdout, h); err != nil {
		return 0, nil, nil, err
	}
	if h[0] != 0xFF || h[1] != 0x53 || h[2] != 1 || binary.BigEndian.Uint32(h[16:]) != crc32.ChecksumIEEE(h[:16]) {
		return 0, nil, nil, fmt.Errorf("bad frame header % x", h)
	}
	contextLen := int(binary.BigEndian.Uint32(h[4:]))
	size := contextLen + int(binary.BigEndian.Uint32(h[8:]))
	if size > rawMaxPayload {
		return 0, nil, nil, fmt.Errorf("frame of %d bytes", size)
	}
	w.in = slices.Grow(w.in[:0], size)[:size]
	if _, err := io.ReadFull(w.stdout, w.in); err != nil {
		return 0, nil, nil, fmt.Errorf("frame payload: %w", err)
	}
	if binary.BigEndian.Uint32(h[12:]) != crc32.ChecksumIEEE(w.in) {
		return 0, nil, nil, errors.New("corrupt frame payload")
	}
	return h[3], w.in[:contextLen], w.in[contextLen:], nil
}
