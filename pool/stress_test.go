package pool_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/pool"
)

// TestPoolAnswersEveryJobWhileWorkersAreKilledAtRandom runs many callers
// against a pool whose workers are killed every few milliseconds: every
// Exec returns, every answer is the right one, every error is a worker's
// failure or a wait that ran out, and no process is left after Destroy.
func TestPoolAnswersEveryJobWhileWorkersAreKilledAtRandom(t *testing.T) {
	const (
		callers = 8
		jobs    = 40
	)
	dir, env := spawnDir(t)
	p, err := pool.NewPool(t.Context(), workerCmd("", env), pool.NewPipeFactory(), pool.Config{
		NumWorkers:      4,
		Backoff:         constantBackoff(10 * time.Millisecond),
		AllocateTimeout: time.Second,
		Logger:          quietLogger(),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Destroy(context.Background()) }) // if the test fails early

	type outcome struct {
		body  string
		reply pool.Payload
		err   error
	}
	outcomes := make(chan outcome, callers*jobs)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for j := range jobs {
				// A job of a few milliseconds, so that kills land on busy
				// workers too.
				body := fmt.Sprintf("caller %d job %d %x", c, j, rand.Uint64())
				reply, err := p.Exec(t.Context(), op{Op: "sleep", Ms: 1 + rand.IntN(5)}.payload([]byte(body)))
				outcomes <- outcome{body, reply, err}
			}
		})
	}
	callersDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(callersDone)
	}()

	var kills atomic.Int64
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		for {
			select {
			case <-callersDone:
				return
			case <-time.After(time.Duration(2+rand.IntN(8)) * time.Millisecond):
			}
			workers := p.Workers()
			if w := workers[rand.IntN(len(workers))]; w.Pid != 0 {
				if syscall.Kill(w.Pid, syscall.SIGKILL) == nil {
					kills.Add(1)
				}
			}
		}
	}()

	select {
	case <-callersDone:
	case <-time.After(40 * time.Second):
		t.Fatal("an Exec did not return")
	}
	<-killerDone
	close(outcomes)

	var succeeded, workerErrors, noFree int
	for o := range outcomes {
		var werr *pool.WorkerError
		switch {
		case o.err == nil:
			require.Equal(t, o.body, string(o.reply.Body), "a caller got another job's answer")
			succeeded++
		case errors.As(o.err, &werr):
			workerErrors++
		case errors.Is(o.err, pool.ErrNoFreeWorkers):
			noFree++
		default:
			t.Fatalf("an Exec failed with %v", o.err)
		}
	}
	t.Logf("%d kills: %d answers, %d worker errors, %d without a free worker", kills.Load(), succeeded, workerErrors, noFree)
	require.Positive(t, kills.Load())
	require.Positive(t, succeeded)

	require.NoError(t, p.Destroy(context.Background()))
	requireGone(t, spawnedPids(t, dir))
}
