package background_test

import (
	"bytes"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/background"
)

// logBuffer is a writer safe for the handler's concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestWithLoggerGetsTheRunsClaimsErrorsAndFinish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &logBuffer{}
		w := &runWorker{Cycles: 1, Process: func(it runItem) error {
			if it.Name == "b" {
				return errors.New("b broke")
			}
			return nil
		}}
		p := background.NewProcess("logged", w, background.NewMemoryStore(), time.Hour, background.Params{},
			background.WithInstance("i1"), background.WithLogger(slog.New(slog.NewTextHandler(logs, nil))))
		runRegister(t, p, "a", "b")
		p.Run(t.Context())

		out := logs.String()
		for _, want := range []string{
			"process=logged", "instance=i1", // every line names both
			"run claimed", "claim=1",
			"background: error", "work=b", `err="b broke"`,
			"run finished", "state=incomplete",
		} {
			require.Contains(t, out, want)
		}
	})
}
