package spin_test

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/gosupervise/supervisor/internal/spin"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLockExcludesConcurrentHolders(t *testing.T) {
	var (
		l       spin.Lock
		wg      sync.WaitGroup
		counter int // a data race, caught by -race, if Lock does not exclude
		inside  int
	)
	for range 64 {
		wg.Go(func() {
			for range 1000 {
				l.Lock()
				inside++
				require.Equal(t, 1, inside, "two holders at once")
				counter++
				inside--
				l.Unlock()
			}
		})
	}
	wg.Wait()
	require.Equal(t, 64*1000, counter)
}

func TestUnlockOfUnlockedLockPanics(t *testing.T) {
	var l spin.Lock
	require.PanicsWithValue(t, "spin: unlock of unlocked lock", l.Unlock)
	var held int
	l.Lock()
	held++
	l.Unlock()
	require.Equal(t, 1, held)
	require.Panics(t, l.Unlock)
}
