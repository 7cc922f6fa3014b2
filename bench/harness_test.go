package bench_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/gosupervise/supervisor"
)

// hooks let one measurement body serve both a benchmark (which resets and
// stops its timer around the measured part) and a quick smoke test.
type hooks struct {
	start func() // the measured part begins
	stop  func() // the measured part ended
}

func benchHooks(b *testing.B) hooks {
	return hooks{start: b.ResetTimer, stop: b.StopTimer}
}

func noHooks() hooks {
	return hooks{start: func() {}, stop: func() {}}
}

func discardLogger() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}

// runSupervisor runs s with callback under a context that is cancelled
// once Run returned, as a program would.
func runSupervisor(s interface {
	Run(context.Context, supervisor.Callback) error
}, callback supervisor.Callback) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	return s.Run(ctx, callback)
}
