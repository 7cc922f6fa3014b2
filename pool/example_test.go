package pool_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/gosupervise/supervisor/pool"
)

// A pool of two workers over pipes. The worker here is this test program
// started again in worker mode; in a real program cmd starts the worker
// executable (see Serve, or examples/pool/worker.py).
func ExampleNewPool() {
	ctx := context.Background()
	cmd := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), testWorkerEnv+"=")
		return cmd
	}
	p, err := pool.NewPool(ctx, cmd, pool.NewPipeFactory(), pool.Config{
		NumWorkers: 2,
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer p.Destroy(ctx)

	reply, err := p.Exec(ctx, pool.Payload{Body: []byte("hello")})
	fmt.Println(string(reply.Body), err)

	_, err = p.Exec(ctx, op{Op: "fail", Message: "no such user"}.payload(nil))
	var jobErr pool.JobError
	fmt.Println(errors.As(err, &jobErr), string(jobErr))
	// Output:
	// hello <nil>
	// true no such user
}

// A worker program: Serve answers the pool's requests until the pool
// stops it.
func ExampleServe() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err := pool.Serve(ctx, func(ctx context.Context, rqs pool.Payload) (pool.Payload, error) {
		if len(rqs.Body) == 0 {
			return pool.Payload{}, errors.New("empty request") // a JobError at the caller
		}
		return pool.Payload{Body: bytes.ToUpper(rqs.Body)}, nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "worker:", err) // stderr: stdout carries the frames
		os.Exit(1)
	}
}
