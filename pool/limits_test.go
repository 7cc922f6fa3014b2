package pool_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/pool"
)

// TestSoftLimitsReplaceWorkersWithoutKillingBusyOnes runs, for each soft
// limit, a job that is still running when its worker passes the limit:
// the job completes, and only then is the worker replaced — at once, not
// as a failure.
func TestSoftLimitsReplaceWorkersWithoutKillingBusyOnes(t *testing.T) {
	const watch = 20 * time.Millisecond
	for _, tc := range []struct {
		name   string
		cfg    pool.Config
		jobs   []op // the last one passes the limit while it runs
		reason string
	}{
		{
			name:   "MaxExecutions",
			cfg:    pool.Config{MaxExecutions: 2},
			jobs:   []op{{Op: "sleep", Ms: 10}, {Op: "sleep", Ms: 300}},
			reason: pool.ReasonMaxExecutions,
		},
		{
			name:   "TTL",
			cfg:    pool.Config{TTL: 200 * time.Millisecond, WatchInterval: watch},
			jobs:   []op{{Op: "sleep", Ms: 600}},
			reason: pool.ReasonTTL,
		},
		{
			name:   "IdleTTL",
			cfg:    pool.Config{IdleTTL: 200 * time.Millisecond, WatchInterval: watch},
			jobs:   []op{{Op: "sleep", Ms: 600}},
			reason: pool.ReasonIdleTTL,
		},
		{
			name:   "MaxMemory",
			cfg:    pool.Config{MaxMemory: 48 << 20, WatchInterval: watch},
			jobs:   []op{{Op: "alloc", Size: 64, Ms: 600}},
			reason: pool.ReasonMaxMemory,
		},
		{
			name: "all at once",
			cfg: pool.Config{MaxExecutions: 1, TTL: 100 * time.Millisecond, IdleTTL: 100 * time.Millisecond,
				MaxMemory: 48 << 20, WatchInterval: watch},
			jobs:   []op{{Op: "alloc", Size: 64, Ms: 600}},
			reason: pool.ReasonMaxExecutions,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{Logger: quietLogger()})
			events := &eventLog{}
			cfg := tc.cfg
			cfg.Name = "soft"
			cfg.NumWorkers = 1
			cfg.Kernel = kernel
			cfg.Backoff = constantBackoff(time.Minute) // a failure would show
			cfg.AllocateTimeout = 5 * time.Second
			cfg.OnEvent = events.add
			p := newTestPool(t, cfg, "")
			pid := onlyWorker(t, p).Pid

			for _, job := range tc.jobs {
				reply, err := p.Exec(t.Context(), job.payload([]byte("done")))
				require.NoError(t, err, "op %s", job.Op)
				require.NotEmpty(t, reply.Body)
			}

			next := awaitReplacement(t, p, 0, pid)
			require.Equal(t, []string{tc.reason}, events.replaced(pid))
			require.True(t, pidGone(pid), "the old worker was stopped and reaped")
			require.NotEqual(t, pid, execPid(t, p))
			require.NotZero(t, next.Pid)
			require.Empty(t, events.of(pool.EventWorkerFailed))
			require.Zero(t, kernel.State("soft/0").Failures, "a planned replacement is not a failure")
		})
	}
}
