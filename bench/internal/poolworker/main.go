// Poolworker is the worker process of the pool benchmarks
// (bench/pool_test.go): a pool.Serve worker over stdin and stdout that
// echoes every request, context and body, and exits with status 3 without
// replying to a request whose context is exactly {"op":"crash"}.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/gosupervise/supervisor/pool"
)

// crashOp is compared byte for byte rather than parsed, so that the echo
// path costs no JSON decoding.
const crashOp = `{"op":"crash"}`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err := pool.Serve(ctx, func(_ context.Context, rqs pool.Payload) (pool.Payload, error) {
		if string(rqs.Context) == crashOp {
			os.Exit(3)
		}
		return rqs, nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "poolworker:", err) // stdout carries the frames
		stop()
		os.Exit(1)
	}
}
