package bench_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gosupervise/supervisor"
)

// Report round trip: a running process reports a failure and waits for the
// kernel's answer (DefaultPolicy: Continue for a failure reported while
// running), n times. The peer is the smallest possible round trip between
// two goroutines: a send on an unbuffered channel and a reply on another.

var errReportBench = errors.New("bench: reported failure")

// reportsSupervisor measures n supervisor.Report calls from inside a
// supervised RunnableFunc and returns how many answered Continue.
func reportsSupervisor(n int, h hooks) (int, error) {
	return reportsSupervisorWith(n, h, supervisor.KernelOptions{Logger: discardLogger()})
}

// reportsSupervisorShortWindow is reportsSupervisor with
// KernelOptions.Window = 1ns; a diagnostic (see restartsSupervisorShortWindow).
func reportsSupervisorShortWindow(n int, h hooks) (int, error) {
	return reportsSupervisorWith(n, h, supervisor.KernelOptions{Logger: discardLogger(), Window: time.Nanosecond})
}

func reportsSupervisorWith(n int, h hooks, ko supervisor.KernelOptions) (int, error) {
	begin, done := make(chan struct{}), make(chan struct{})
	continued := 0
	table := supervisor.NewMapTable[string, supervisor.RunnableFunc]()
	table.Put("reporter", func(ctx context.Context) error {
		<-begin
		for range n {
			if supervisor.Report(ctx, errReportBench, nil) == supervisor.Continue {
				continued++
			}
		}
		close(done)
		<-ctx.Done()
		return nil
	})
	s := supervisor.NewSupervisor(table, supervisor.Options{
		Kernel: supervisor.NewErrorKernel(ko),
		Logger: discardLogger(),
	})
	err := runSupervisor(s, func(context.Context) error {
		h.start()
		close(begin)
		<-done
		h.stop()
		return nil
	})
	if err == nil && continued != n {
		err = fmt.Errorf("%d of %d reports answered Continue", continued, n)
	}
	return continued, err
}

// reportsChannelPingPong measures n round trips between two goroutines:
// the error goes over an unbuffered channel, the answer comes back over
// another.
func reportsChannelPingPong(n int, h hooks) (int, error) {
	requests := make(chan error)
	replies := make(chan supervisor.Action)
	go func() {
		defer close(replies)
		for range requests {
			replies <- supervisor.Continue
		}
	}()
	continued := 0
	h.start()
	for range n {
		requests <- errReportBench
		if <-replies == supervisor.Continue {
			continued++
		}
	}
	h.stop()
	close(requests)
	<-replies // closed when the replier ended
	return continued, nil
}

func BenchmarkReport(b *testing.B) {
	for _, bc := range []struct {
		name string
		run  func(int, hooks) (int, error)
	}{
		{"supervisor", reportsSupervisor},
		{"chan-pingpong", reportsChannelPingPong},
		{"supervisor-window1ns", reportsSupervisorShortWindow},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			if _, err := bc.run(b.N, benchHooks(b)); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func TestReportBenchmarksAnswerContinue(t *testing.T) {
	const n = 200
	for name, run := range map[string]func(int, hooks) (int, error){
		"supervisor":    reportsSupervisor,
		"chan-pingpong": reportsChannelPingPong,
		"window1ns":     reportsSupervisorShortWindow,
	} {
		t.Run(name, func(t *testing.T) {
			continued, err := run(n, noHooks())
			if err != nil {
				t.Fatal(err)
			}
			if continued != n {
				t.Fatalf("continued = %d, want %d", continued, n)
			}
		})
	}
}
