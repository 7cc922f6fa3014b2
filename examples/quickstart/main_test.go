package main

import (
	"bytes"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The tour runs in virtual time, so its timestamps are exact. Lines printed
// at the same instant by different goroutines may come in any order, so the
// test checks each goroutine's lines in order rather than the whole output.
func TestQuickstartTourPrintsItsEventsAndStopsEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var out bytes.Buffer
		require.NoError(t, run(t.Context(), &out))
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")

		require.Equal(t, []string{
			" 0.000s  event   quickstart/flaky: starting",
			" 0.000s  event   quickstart/flaky: ready",
			" 0.100s  event   quickstart/flaky: failed (kill): connection reset (run 1)",
			" 0.100s  event   quickstart/flaky: backoff 200ms",
			" 0.300s  event   quickstart/flaky: restarting",
			" 0.300s  event   quickstart/flaky: starting",
			" 0.300s  event   quickstart/flaky: ready",
			" 0.400s  event   quickstart/flaky: failed (kill): panic: flaky: assignment to entry in nil map",
			" 0.400s  event   quickstart/flaky: backoff 200ms",
			" 0.600s  event   quickstart/flaky: restarting",
			" 0.600s  event   quickstart/flaky: starting",
			" 0.600s  event   quickstart/flaky: ready",
			" 0.700s  event   quickstart/flaky: failed (kill): connection reset (run 3)",
			" 0.700s  event   quickstart/flaky: backoff 200ms",
			" 0.900s  event   quickstart/flaky: restarting",
			" 0.900s  event   quickstart/flaky: starting",
			" 0.900s  event   quickstart/flaky: ready",
			" 1.000s  event   quickstart/flaky: failed (abort): connection reset (run 4)",
			" 1.000s  event   quickstart/flaky: aborted: connection reset (run 4)",
		}, quickstartLinesWith(lines, "quickstart/flaky:"))

		require.Equal(t, []string{
			" 0.000s  event   quickstart/orders: starting",
			" 0.000s  event   quickstart/orders: ready",
			" 0.200s  orders  shipped order-1",
			" 0.400s  orders  shipped order-2",
			" 0.600s  event   quickstart/orders: failed (continue): invalid address",
			" 0.600s  orders  order-3 rejected; the kernel says continue",
			" 0.800s  orders  shipped order-4",
			" 1.700s  event   quickstart/orders: stopping",
			" 1.700s  event   quickstart/orders: stopped",
		}, quickstartLinesWith(lines, "quickstart/orders:", "  orders  "))

		require.Equal(t, []string{
			" 0.000s  main    running: [cache flaky orders]",
			" 0.500s  main    put row mailer",
			" 1.200s  main    delete row cache",
		}, quickstartLinesWith(lines, "  main    "))

		require.Equal(t, []string{
			" 0.500s  event   quickstart/mailer: starting",
			" 0.500s  event   quickstart/mailer: ready",
			" 1.700s  event   quickstart/mailer: stopping",
			" 1.700s  event   quickstart/mailer: stopped",
		}, quickstartLinesWith(lines, "quickstart/mailer:"))

		require.Equal(t, []string{
			" 0.000s  event   quickstart/cache: starting",
			" 0.000s  event   quickstart/cache: ready",
			" 1.200s  event   quickstart/cache: stopping",
			" 1.200s  event   quickstart/cache: stopped",
		}, quickstartLinesWith(lines, "quickstart/cache:"))

		var status []string
		for _, l := range lines {
			if strings.Contains(l, "  status  ") {
				status = append(status, l)
			}
		}
		require.Equal(t, []string{
			" 1.700s  status  orders  running  restarts=0 last error: invalid address",
			" 1.700s  status  mailer  running  restarts=0 last error: <nil>",
		}, status, "the status lists the live processes in start order")

		require.Equal(t, []string{
			" 1.700s  kernel  quickstart/flaky failed: connection reset (run 1) -> kill (failure 1)",
			" 1.700s  kernel  quickstart/flaky failed: panic: flaky: assignment to entry in nil map -> kill (failure 2)",
			" 1.700s  kernel  quickstart/orders failed while handling order-3: invalid address -> continue (failure 1)",
			" 1.700s  kernel  quickstart/flaky failed: connection reset (run 3) -> kill (failure 3)",
			" 1.700s  kernel  quickstart/flaky failed: connection reset (run 4) -> abort (failure 4)",
		}, lines[len(lines)-5:], "the kernel's decisions, oldest first, end the output")
	})
}

// quickstartLinesWith returns the event and progress lines that contain
// one of substrs, in output order; the final status and kernel printouts
// are left out.
func quickstartLinesWith(lines []string, substrs ...string) []string {
	var out []string
	for _, l := range lines {
		if strings.Contains(l, "  status  ") || strings.Contains(l, "  kernel  ") {
			continue
		}
		for _, s := range substrs {
			if strings.Contains(l, s) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}
