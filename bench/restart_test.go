package bench_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/gosupervise/supervisor"
	"github.com/thejerf/suture/v4"
)

// Restart latency: one process that fails as soon as it runs, restarted
// without any delay, n times. Both sides count runs with the same atomic
// counter and close the same kind of channel when the count is reached.

var errRestartBench = errors.New("bench: fail at once")

// restartCounter counts runs. The first run signals first and waits for
// begin, so that every one of the n restarts happens after the benchmark
// timer was reset; run n+1 (the first run plus n restarts) closes reached.
type restartCounter struct {
	runs    atomic.Int64
	target  int64
	first   chan struct{}
	begin   chan struct{}
	reached chan struct{}
}

func newRestartCounter(n int) *restartCounter {
	return &restartCounter{
		target: int64(n) + 1,
		first:  make(chan struct{}), begin: make(chan struct{}), reached: make(chan struct{}),
	}
}

func (c *restartCounter) run() {
	switch c.runs.Add(1) {
	case 1:
		close(c.first)
		<-c.begin
		if c.target == 1 {
			close(c.reached)
		}
	case c.target:
		close(c.reached)
	}
}

// measure waits for the first run, starts the measurement, lets the
// restarts go and stops the measurement once they are done.
func (c *restartCounter) measure(h hooks) {
	<-c.first
	h.start()
	close(c.begin)
	<-c.reached
	h.stop()
}

// restartsSupervisor measures n restarts under this library's Supervisor:
// default policy (an exit gets Kill), zero backoff.
func restartsSupervisor(n int, h hooks) (int64, error) {
	return restartsSupervisorWith(n, h, supervisor.KernelOptions{Logger: discardLogger()})
}

// restartsSupervisorShortWindow is restartsSupervisor with a kernel whose
// KernelOptions.Window is 1ns, so that its per-process failure record
// never holds more than one failure time. It is a diagnostic, not the
// compared configuration: it isolates the cost of that record.
func restartsSupervisorShortWindow(n int, h hooks) (int64, error) {
	return restartsSupervisorWith(n, h, supervisor.KernelOptions{Logger: discardLogger(), Window: time.Nanosecond})
}

func restartsSupervisorWith(n int, h hooks, ko supervisor.KernelOptions) (int64, error) {
	c := newRestartCounter(n)
	table := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
	table.Put("failing", func(context.Context) error {
		c.run()
		return errRestartBench
	})
	s := supervisor.NewSupervisor(table, supervisor.Options{
		Backoff: func() backoff.BackOff { return &backoff.ZeroBackOff{} },
		Logger:  discardLogger(),
		Kernel:  supervisor.NewErrorKernel(ko),
	})
	err := runSupervisor(s, func(context.Context) error {
		c.measure(h)
		return nil
	})
	return c.runs.Load(), err
}

// failingService is a suture.Service that fails as soon as it runs.
type failingService struct{ c *restartCounter }

func (s failingService) Serve(context.Context) error {
	s.c.run()
	return errRestartBench
}

func (failingService) String() string { return "failing" }

// sutureNoBackoffSpec never pauses: the failure count decays within a
// millisecond and would have to pass 1e9 to trigger FailureBackoff.
func sutureNoBackoffSpec() suture.Spec {
	return suture.Spec{
		EventHook:        func(suture.Event) {},
		FailureThreshold: 1e9,
		FailureDecay:     0.001,
		FailureBackoff:   time.Nanosecond,
		Timeout:          10 * time.Second,
	}
}

// restartsSuture measures n restarts under suture.
func restartsSuture(n int, h hooks) (int64, error) {
	c := newRestartCounter(n)
	s := suture.New("bench", sutureNoBackoffSpec())
	s.Add(failingService{c})
	ctx, cancel := context.WithCancel(context.Background())
	errc := s.ServeBackground(ctx)
	c.measure(h)
	cancel()
	err := <-errc
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return c.runs.Load(), err
}

func BenchmarkRestart(b *testing.B) {
	for _, bc := range []struct {
		name string
		run  func(int, hooks) (int64, error)
	}{
		{"supervisor", restartsSupervisor},
		{"suture", restartsSuture},
		{"supervisor-window1ns", restartsSupervisorShortWindow},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			if _, err := bc.run(b.N, benchHooks(b)); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func TestRestartBenchmarksCountEveryRestart(t *testing.T) {
	const n = 200
	for name, run := range map[string]func(int, hooks) (int64, error){
		"supervisor": restartsSupervisor,
		"suture":     restartsSuture,
		"window1ns":  restartsSupervisorShortWindow,
	} {
		t.Run(name, func(t *testing.T) {
			runs, err := run(n, noHooks())
			if err != nil {
				t.Fatal(err)
			}
			if runs < n+1 {
				t.Fatalf("runs = %d, want at least %d", runs, n+1)
			}
		})
	}
}
