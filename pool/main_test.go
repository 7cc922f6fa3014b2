package pool_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain doubles as the test worker: a child started with
// POOL_TEST_WORKER set runs testWorker instead of the tests.
func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(testWorkerEnv); ok {
		os.Exit(testWorker(mode))
	}
	goleak.VerifyTestMain(m)
}
