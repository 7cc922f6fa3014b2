package main

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The tour runs real processes in real time, so the test checks what each
// step printed, not when, and that every worker it started is gone.
func TestPoolTourRunsEveryStepAndLeavesNoWorkerBehind(t *testing.T) {
	python := findPython(t.Context())
	for _, tc := range []struct {
		name   string
		python string
		pools  []string
		absent []string
	}{
		{"python and go", python, []string{"python", "go"}, nil},
		{"without python", "", []string{"go"}, []string{"python/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.python == "" && len(tc.pools) == 2 {
				t.Skip("python3 is not on PATH")
			}
			var out bytes.Buffer
			require.NoError(t, run(t.Context(), &out, tourConfig{duration: 300 * time.Millisecond, python: tc.python}))
			text := out.String()

			if tc.python == "" {
				require.Contains(t, text, "main    python3 not found on PATH: skipping the Python pool")
			}
			for _, name := range tc.pools {
				tag := fmt.Sprintf("%-7s ", name) // the console's column
				for _, want := range []string{
					tag + `{"op":"echo"} "hello" -> reply "hello", context {"worker":"` + name + `","pid":`,
					tag + `{"op":"upper"} "hello" -> reply "HELLO"`,
					tag + `{"op":"fail","message":"no such user"} "" -> JobError "no such user"`,
					tag + `{"op":"stop"} "" -> WorkerError: `,
					tag + `{"op":"crash"} "" -> WorkerError: `,
					tag + `{"op":"sleep","seconds":5} "zzz" -> WorkerError: `,
					tag + "destroyed: every worker stopped and reaped",
				} {
					require.Contains(t, text, want)
				}
				event := `event   ` + name + `/\d \(pid \d+\): `
				for _, want := range []string{
					event + `started`,
					event + `stderr: `,
					event + `replaced: stop-request`,
					event + `failed: .*exit status 3`,
					event + `failed: .*signal: killed`,
					event + `stopped`,
					tag + `\d+ replies, \d+ failed jobs in 300ms`,
				} {
					require.Regexp(t, want, text)
				}
			}
			for _, s := range tc.absent {
				require.NotContains(t, text, s)
			}
			require.Contains(t, text, "main    done")

			started := regexp.MustCompile(`\(pid (\d+)\): started`).FindAllStringSubmatch(text, -1)
			require.NotEmpty(t, started)
			for _, m := range started {
				pid, err := strconv.Atoi(m[1])
				require.NoError(t, err)
				require.True(t, errors.Is(syscall.Kill(pid, 0), syscall.ESRCH), "worker %d is still there", pid)
			}
		})
	}
}
