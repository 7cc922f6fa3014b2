package supervisor

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// A burst that queues many microtasks grows the scheduler's rings; once
// it is over they are let go at the keeper's next idle tick, so a
// burst's memory is not held for good.
func TestMicroTaskBurstMemoryIsReleased(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		app := NewApp(AppOptions{MaxConcurrentMicroTasks: 2})
		m, err := app.Register("m", ModuleFuncs{})
		require.NoError(t, err)
		require.NoError(t, app.Start(t.Context()))
		defer func() { require.NoError(t, app.Shutdown(context.Background())) }()

		release := make(chan struct{})
		var wg sync.WaitGroup
		const burst = 3 * microQueueKeep
		wg.Add(burst)
		for range burst {
			m.StartMediumPriorityMicroTask("burst", func(context.Context) error {
				<-release
				wg.Done()
				return nil
			})
		}
		s := &app.micro
		// snapshot reads the rings' state under the scheduler's lock.
		snapshot := func() (waiting, ring int, slots []string) {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.queues[microMedium].n, len(s.queues[microMedium].entries), m.micro.names
		}
		waiting, ring, _ := snapshot()
		require.Equal(t, burst-2, waiting)
		require.Greater(t, ring, microQueueKeep)

		close(release)
		wg.Wait()
		synctest.Wait()
		_, ring, slots := snapshot()
		require.Greater(t, ring, microQueueKeep, "the ring goes at an idle tick, not at once")
		require.Greater(t, len(slots), microQueueKeep)

		time.Sleep(2 * microIdleTimeout)
		synctest.Wait()
		_, ring, slots = snapshot()
		require.Zero(t, ring, "queue ring kept after the burst")
		require.Nil(t, slots, "module slots kept after the burst")
	})
}
