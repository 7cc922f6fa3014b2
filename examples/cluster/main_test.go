package main

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/gosupervise/supervisor/postgres/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The tour runs in real time against a real server, so the test checks
// what it printed: which rows moved where, and that the crashed node's
// rows moved only once its leases could have expired and soon enough.
func TestClusterTourMovesTheCrashedNodesRowsOnceTheirLeasesExpire(t *testing.T) {
	url := pgtest.URL(t) // skips, saying how to install the server, without one
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	require.NoError(t, run(ctx, &out, url), out.String())
	text := out.String()
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	require.NotContains(t, text, "DOUBLE")

	require.Contains(t, text, "n1     runs all 30 rows, ")
	balanced := indexOf(t, lines, regexp.MustCompile(`main   every row runs exactly once, 10 on each node, `))
	crash := indexOf(t, lines, regexp.MustCompile(`main   crashing n2 with 10 rows: `))
	again := indexOf(t, lines, regexp.MustCompile(`main   every row runs exactly once again, 15 on each of n1 and n3:$`))
	require.Equal(t, balanced+4, crash)

	// Before the crash every row runs on exactly one of the three nodes.
	before := distribution(t, lines[balanced+1:crash], "n1", "n2", "n3")
	for _, keys := range before {
		require.Len(t, keys, 10)
	}
	require.Len(t, union(t, before), rowCount)

	// n2's rows, and only those, moved to n1 or n3 after the crash, not
	// before its leases could expire and within LeaseTTL + Renew (with
	// some slack for a busy machine).
	moveLine := regexp.MustCompile(`move   row (job-\d\d): (n\d) → (n\d) (\d+\.\d{3})s after the crash \(fence (\d+)\)$`)
	var moved []string
	for _, l := range lines[crash+1 : again] {
		m := moveLine.FindStringSubmatch(l)
		require.NotNil(t, m, "a line between the crash and the end of the failover that is no move of n2's: %s", l)
		require.Equal(t, "n2", m[2])
		require.Contains(t, []string{"n1", "n3"}, m[3])
		after := seconds(t, m[4])
		require.GreaterOrEqual(t, after, leaseTTL-2*renew, "row %s moved before n2's lease could have expired", m[1])
		require.LessOrEqual(t, after, failoverBound+500*time.Millisecond, "row %s moved late", m[1])
		moved = append(moved, m[1])
	}
	slices.Sort(moved)
	require.Equal(t, before["n2"], moved)
	require.Regexp(t, `main   failover: 10 rows of n2 moved \d+\.\d{3}s to \d+\.\d{3}s after the crash, (within|over) the bound LeaseTTL \+ Renew = 3\.3s`, text)

	// After it, every row runs on exactly one of n1 and n3, each of
	// which kept its rows.
	after := distribution(t, lines[again+1:again+3], "n1", "n3")
	for node, keys := range after {
		require.Len(t, keys, 15)
		require.Subset(t, keys, before[node], "%s lost rows in the failover", node)
	}
	require.Len(t, union(t, after), rowCount)

	// Every claim raised the fence: a row's fence grows from move to move.
	fences := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)move   row (job-\d\d): .* \(fence (\d+)\)$`).FindAllStringSubmatch(text, -1) {
		fence, err := strconv.Atoi(m[2])
		require.NoError(t, err)
		require.Greater(t, fence, fences[m[1]], "row %s", m[1])
		fences[m[1]] = fence
	}

	require.Regexp(t, `n2     table closed in .*: closed pool`, text)
	require.Contains(t, text, "main   no row ever ran on two nodes at once")
	require.Contains(t, text, "main   shut down: supervisors stopped, tables closed and dropped, pools closed")

	// The run dropped its own tables.
	prefix := regexp.MustCompile(`prefix (cluster_[0-9a-f]{8}_);`).FindStringSubmatch(lines[0])
	require.NotNil(t, prefix, lines[0])
	db, err := pgxpool.New(ctx, url)
	require.NoError(t, err)
	defer db.Close()
	rows, err := db.Query(ctx, `SELECT tablename FROM pg_tables WHERE starts_with(tablename, $1)`, prefix[1])
	require.NoError(t, err)
	left, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Empty(t, left)
}

func TestClusterTourFailsCleanlyWithoutADatabase(t *testing.T) {
	// A loopback port that nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err = run(ctx, &bytes.Buffer{}, "postgres://postgres@"+addr+"/postgres?sslmode=disable&connect_timeout=5")
	require.ErrorContains(t, err, "node n1")
	require.NoError(t, ctx.Err(), "run did not give up by itself")
}

func TestTrackerReportsARowStartedWhileItRunsElsewhere(t *testing.T) {
	var out bytes.Buffer
	tr := newTracker(newConsole(&out))
	tr.started("job-01", "n1", "work", 1)
	tr.started("job-02", "n2", "work", 1)
	require.Empty(t, tr.doubleRuns())

	tr.started("job-01", "n3", "work", 2)
	require.Equal(t, []string{"row job-01 (work) started on n3 while it runs on n1"}, tr.doubleRuns())
	require.Contains(t, out.String(), "DOUBLE row job-01 (work) started on n3 while it runs on n1")
	require.Equal(t, map[string][]string{"n1": {"job-01"}, "n2": {"job-02"}, "n3": {"job-01"}}, tr.byNode())

	tr.stopped("job-01", "n1")
	tr.stopped("job-01", "n3")
	require.Equal(t, map[string][]string{"n2": {"job-02"}}, tr.byNode())
	// A row that starts again where it ran last is no move, and no double
	// run once it stopped there.
	tr.started("job-02", "n2", "work", 1)
	require.Len(t, tr.doubleRuns(), 2)
	tr.stopped("job-02", "n2")
	tr.stopped("job-02", "n2")
	tr.started("job-02", "n2", "work", 1)
	require.Len(t, tr.doubleRuns(), 2)
	require.Equal(t, 1, tr.moveCount())
}

// distribution reads the "<node> runs N: keys" lines of the nodes.
func distribution(t *testing.T, lines []string, nodes ...string) map[string][]string {
	t.Helper()
	require.Len(t, lines, len(nodes))
	got := map[string][]string{}
	for i, node := range nodes {
		m := regexp.MustCompile(`^\s*\d+\.\d{3}s  ` + node + ` +runs +(\d+): ([a-z0-9 -]+)$`).FindStringSubmatch(lines[i])
		require.NotNil(t, m, "not the distribution of %s: %s", node, lines[i])
		keys := strings.Fields(m[2])
		require.Equal(t, m[1], strconv.Itoa(len(keys)), lines[i])
		require.True(t, slices.IsSorted(keys), lines[i])
		got[node] = keys
	}
	return got
}

// union returns the distinct keys of every node, failing on a key that
// two nodes run.
func union(t *testing.T, byNode map[string][]string) map[string]bool {
	t.Helper()
	all := map[string]bool{}
	for _, keys := range byNode {
		for _, key := range keys {
			require.False(t, all[key], "row %s runs on two nodes", key)
			all[key] = true
		}
	}
	return all
}

func seconds(t *testing.T, s string) time.Duration {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	require.NoError(t, err)
	return time.Duration(f * float64(time.Second))
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
