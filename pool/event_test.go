package pool_test

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/pool"
)

func TestEventStringNamesTheWorkerAndWhatHappened(t *testing.T) {
	for _, tc := range []struct {
		event pool.Event
		want  string
	}{
		{pool.Event{Kind: pool.EventWorkerReplaced, Pool: "pool", Slot: 2, Pid: 4242, Reason: pool.ReasonMaxExecutions},
			"pool/2 (pid 4242): replaced: max-executions"},
		{pool.Event{Kind: pool.EventWorkerStarted, Pool: "img", Slot: 0, Pid: 7}, "img/0 (pid 7): started"},
		{pool.Event{Kind: pool.EventWorkerStopped, Pool: "img", Slot: 1, Pid: 7}, "img/1 (pid 7): stopped"},
		{pool.Event{Kind: pool.EventWorkerStderr, Pool: "img", Slot: 1, Pid: 7, Line: "warning: low disk"},
			"img/1 (pid 7): stderr: warning: low disk"},
		{pool.Event{Kind: pool.EventWorkerFailed, Pool: "img", Slot: 3, Err: errors.New("exit status 3")},
			"img/3: failed: exit status 3"},
	} {
		require.Equal(t, tc.want, tc.event.String())
	}
}

func TestKindsAndStatesHaveNames(t *testing.T) {
	kinds := map[pool.EventKind]string{
		pool.EventWorkerStarted:  "started",
		pool.EventWorkerStopped:  "stopped",
		pool.EventWorkerFailed:   "failed",
		pool.EventWorkerStderr:   "stderr",
		pool.EventWorkerReplaced: "replaced",
		pool.EventKind(99):       "EventKind(99)",
	}
	for kind, name := range kinds {
		require.Equal(t, name, kind.String())
	}
	states := map[pool.State]string{
		pool.StateInactive: "inactive",
		pool.StateReady:    "ready",
		pool.StateWorking:  "working",
		pool.StateStopped:  "stopped",
		pool.StateErrored:  "errored",
		pool.State(-1):     "State(-1)",
		pool.State(42):     "State(42)",
	}
	for state, name := range states {
		require.Equal(t, name, state.String())
	}
}

func TestWorkerErrorSaysWhichWorkerAndWhy(t *testing.T) {
	err := error(&pool.WorkerError{Pid: 4242, Err: pool.ErrExecTimeout, Stderr: "stuck"})
	require.ErrorIs(t, err, pool.ErrExecTimeout)
	require.Contains(t, err.Error(), "4242")
	require.Contains(t, err.Error(), pool.ErrExecTimeout.Error())
	require.Contains(t, err.Error(), "stuck")
	require.Contains(t, pool.JobError("no such user").Error(), "no such user")
}
