package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The tour runs in real time, with slots on the wall clock, so the test
// checks which events it printed and in which order, not when: on a busy
// machine a run may start late in its slot, or an instance may be taken
// over once more, and the tour still shows the same story.
func TestBackgroundTourTakesOverTheStalledRunAndProcessesEveryItem(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, run(ctx, &out, tourConfig{runs: 2, every: time.Second}))
	require.NoError(t, ctx.Err(), "the tour did not finish its runs in time:\n%s", out.String())
	text := out.String()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")

	// The first run is claimed, stalls in accounts, is taken over, and its
	// owner gets Conflict from Progress after the take-over. (On a busy
	// machine the take-over may come before the stalled worker prints.)
	claim1 := regexp.MustCompile(`store   claim 1: (alpha|beta) claims slot \d+$`)
	first := indexOf(t, lines, claim1)
	stalled := claim1.FindStringSubmatch(lines[first])[1]
	stall := indexOf(t, lines, regexp.MustCompile(`^\s*\d+\.\d{3}s  `+stalled+` +claim 1: accounts: stalls past its slot$`))
	takeOver := indexOf(t, lines, regexp.MustCompile(`store   claim \d+: (alpha|beta) takes over claim 1 of `+stalled+` in slot \d+ \(its last progress: \d+\.\d{3}s\)$`))
	conflict := indexOf(t, lines, regexp.MustCompile(stalled+` +claim 1: Progress: conflict: .*instance "`+stalled+`" claim 1: owned by instance "(alpha|beta)" claim \d+: .*the state is owned by another run$`))
	require.Less(t, first, stall)
	require.Less(t, first, takeOver)
	require.Less(t, takeOver, conflict)
	require.NotContains(t, text, "claim 1: reindexed", "the stalled run goes no further")
	require.NotRegexp(t, `claim 1: \w+ finished its run`, text)

	// Every item was reindexed by a run that finished, and the store says
	// so.
	finished := regexp.MustCompile(`store   claim (\d+): (alpha|beta) finished its run: completed, 4 items, 0 errors, in `).FindAllStringSubmatch(text, -1)
	require.Len(t, finished, 2)
	for _, item := range []string{"accounts", "invoices", "orders", "products"} {
		require.Contains(t, text, "claim "+finished[0][1]+": reindexed "+item)
		require.Regexp(t, `summary item `+item+` +completed +finished \d+\.\d{3}s, \d+ rows`, text)
	}
	require.Regexp(t, `summary last run: claim \d+ by (alpha|beta), completed, `, text)
	require.Regexp(t, `(?m)summary aggregate stats: .*runs=2 .*state\.completed=2 work\.rows=1600$`, text)
	require.Contains(t, text, "main    both instances stopped")
}

func TestBackgroundTourRejectsABadConfig(t *testing.T) {
	require.Error(t, run(t.Context(), &bytes.Buffer{}, tourConfig{runs: 0, every: time.Second}))
	require.Error(t, run(t.Context(), &bytes.Buffer{}, tourConfig{runs: 1, every: 0}))
}

// indexOf returns the index of the one line that matches re.
func indexOf(t *testing.T, lines []string, re *regexp.Regexp) int {
	t.Helper()
	found := -1
	for i, l := range lines {
		if re.MatchString(l) {
			require.Equal(t, -1, found, "two lines match %s:\n%s\n%s", re, lines[max(found, 0)], l)
			found = i
		}
	}
	require.NotEqual(t, -1, found, "no line matches %s in:\n%s", re, strings.Join(lines, "\n"))
	return found
}
