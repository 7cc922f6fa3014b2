//go:build unix

package bench_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/roadrunner-server/pool/ipc/pipe"
	"github.com/roadrunner-server/pool/payload"
	rrpool "github.com/roadrunner-server/pool/pool"
	"github.com/roadrunner-server/pool/pool/static_pool"
	"go.uber.org/zap"
)

// rrWorkerBeside is the path of the RoadRunner worker
// (bench/internal/rrworker), which buildPoolWorker builds beside ours.
func rrWorkerBeside(worker string) string {
	return filepath.Join(filepath.Dir(worker), "rrworker")
}

// poolParallelRoadRunner: Execs from poolCallers goroutines on a
// RoadRunner static pool of poolWorkers workers over pipes, each the
// RoadRunner worker that echoes its requests. Without a supervisor
// config the pool takes RoadRunner's fast Exec path, with no per-job
// timeout, as ours has none either.
func poolParallelRoadRunner(worker string) (poolRun, error) {
	rrWorker := rrWorkerBeside(worker)
	log := zap.NewNop()
	p, err := static_pool.NewPool(context.Background(),
		func([]string) *exec.Cmd { return exec.Command(rrWorker) },
		pipe.NewPipeFactory(log),
		&rrpool.Config{
			NumWorkers:      poolWorkers,
			AllocateTimeout: time.Minute,
			DestroyTimeout:  10 * time.Second,
		},
		log)
	if err != nil {
		return poolRun{}, err
	}
	ctx := context.Background()
	// RoadRunner refuses an empty payload; the job is only read, so the
	// callers share it.
	job := &payload.Payload{Body: make([]byte, poolJobSize)}
	return poolRun{
		jobs: func(n int) (int, error) {
			// The stop channel only cancels streamed replies; these are not.
			return callConcurrently(n, func() error { return rrEchoed(p.Exec(ctx, job, nil)) })
		},
		stop: func() error {
			// Destroy reports nothing: it stops the workers, killing those
			// that have not exited within DestroyTimeout.
			p.Destroy(ctx)
			return nil
		},
	}, nil
}

// rrEchoed checks that a RoadRunner Exec of a poolJobSize job came back
// echoed: one result on the channel Exec returned.
func rrEchoed(results chan *static_pool.PExec, err error) error {
	if err != nil {
		return err
	}
	result, ok := <-results
	switch {
	case !ok:
		return errors.New("no result")
	case result.Error() != nil:
		return result.Error()
	case len(result.Body()) != poolJobSize:
		return fmt.Errorf("reply body of %d bytes, want %d", len(result.Body()), poolJobSize)
	}
	return nil
}
