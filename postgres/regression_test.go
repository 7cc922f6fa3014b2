package postgres_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/postgres"
	"github.com/gosupervise/supervisor/postgres/pgtest"
)

// These tests pin down interleavings that once went wrong.

// A Put that waits on a tombstone being purged inserts the row after the
// purge committed: its claim still gets a fence above the purged one's.
func TestClaimAfterAPurgeRacingAPutRaisesTheFenceAboveTheFloor(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	o := postgres.Options{Node: "a", Prefix: prefix, LeaseTTL: 60 * time.Second, Renew: 10 * time.Second, StopGrace: 20 * time.Second}
	a := openTable(t, db, "jobs", o)
	ctx := context.Background()
	// A released tombstone with fence 7, as a delete of a row claimed
	// seven times leaves it.
	_, err := db.Exec(ctx, `INSERT INTO `+prefix+`rows (name, key, data, version, deleted, owner, fence)
VALUES ('jobs', 'k', NULL, 9, true, NULL, 7)`)
	require.NoError(t, err)

	// The purge of a cycle, committed while the Put waits on its lock.
	tx, err := db.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `WITH p AS (
	DELETE FROM `+prefix+`rows WHERE name = $1 AND deleted AND (owner IS NULL OR lease_until < now())
	RETURNING fence
)
INSERT INTO `+prefix+`tables AS t (name, fence_floor) SELECT $1, max(fence) FROM p HAVING count(*) > 0
ON CONFLICT (name) DO UPDATE SET fence_floor = greatest(t.fence_floor, EXCLUDED.fence_floor)`, "jobs")
	require.NoError(t, err)
	putDone := make(chan error, 1)
	go func() { putDone <- a.Put(ctx, "k", []byte("again")) }()
	time.Sleep(300 * time.Millisecond) // the Put waits on the tombstone's row lock
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-putDone)

	require.Eventually(t, func() bool { _, ok := a.Fence("k"); return ok }, 3*time.Second, 10*time.Millisecond)
	f, _ := a.Fence("k")
	require.Greater(t, f, int64(7), "the claim of a row put again after its purge gets a fence above every earlier one")
}

// countingHandler counts the log records whose message holds substr.
type countingHandler struct {
	substr string
	n      *atomic.Int64
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.substr) {
		h.n.Add(1)
	}
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// A release that is due while renewals fail is retried, not in a loop.
func TestRenewalLoopDoesNotSpinWhileAReleaseIsDueAndRenewalsFail(t *testing.T) {
	url := testURL(t)
	db, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	var failures atomic.Int64
	o := fast(testPrefix(), "a")
	o.Logger = slog.New(countingHandler{"lease renewal failed", &failures})
	a, err := postgres.NewTable(context.Background(), db, "jobs", decodeString, o)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, a.Put(ctx, "k", []byte("1")))
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, 3*time.Second, 5*time.Millisecond)
	b := openTable(t, newPool(t, url), "jobs", fast(o.Prefix, "b"))
	_, err = b.Delete(ctx, "k")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(a.Owned()) == 0 }, time.Second, time.Millisecond)
	db.Close() // renewals fail at once from now on; the release is due StopGrace after the delete
	time.Sleep(2500 * time.Millisecond)
	_ = a.Close()
	t.Logf("renewal failures in 2.5s with Renew=%v: %d", o.Renew, failures.Load())
	require.Less(t, failures.Load(), int64(60), "at most a few retries per Renew")
}

// A renewal that reads a row just before a put must not announce the put
// again after its notification did.
func TestPutsRacingRenewalsAreAnnouncedOnce(t *testing.T) {
	db := newPool(t, testURL(t))
	a := openTable(t, db, "jobs", fast(testPrefix(), "a"))
	ctx := context.Background()
	require.NoError(t, a.Put(ctx, "k", []byte("0")))
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, 3*time.Second, 5*time.Millisecond)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch, err := a.Watch(wctx)
	require.NoError(t, err)
	var announced atomic.Int64
	got := make(chan struct{}, 1000)
	go func() {
		for range watch {
			announced.Add(1)
			got <- struct{}{}
		}
	}()
	puts := 0
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); {
		puts++
		require.NoError(t, a.Put(ctx, "k", []byte(strconv.Itoa(puts))))
		select {
		case <-got:
		case <-time.After(time.Second):
			t.Fatalf("put %d not announced", puts)
		}
		for len(got) > 0 {
			<-got
		}
	}
	time.Sleep(time.Second) // a few renewals more
	t.Logf("puts %d, announcements %d", puts, announced.Load())
	require.Equal(t, int64(puts), announced.Load(), "one announcement per put")
}

// A Get whose query hangs while the node declares its rows lost answers
// ErrNotFound, so the supervisor does not restart a lost row.
func TestGetOfARowLostWhileItsQueryRanIsNotFound(t *testing.T) {
	url := testURL(t)
	proxy, err := pgtest.NewProxy(hostPort(t, url))
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	a := openTable(t, newPool(t, viaProxy(t, url, proxy.Addr())), "jobs", fast(testPrefix(), "a"))
	ctx := context.Background()
	require.NoError(t, a.Put(ctx, "k", []byte("1")))
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, 3*time.Second, 5*time.Millisecond)
	proxy.Cut()
	defer proxy.Restore()
	var mu sync.Mutex
	var bad []error
	var wg sync.WaitGroup
	for range 60 { // a Get every 50ms for 3s, across the loss
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := a.Get(ctx, "k")
			if err != nil && !errors.Is(err, supervisor.ErrNotFound) && len(a.Owned()) == 0 {
				mu.Lock()
				bad = append(bad, err)
				mu.Unlock()
			}
		}()
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
	require.Empty(t, bad, "a Get that ended after the loss answered another error than ErrNotFound")
}

// A second Table under the same node ID (a restart with a fixed ID while
// the old one still stops) does not take the first one's live leases.
func TestSecondTableWithTheSameNodeIDLeavesTheFirstsLeases(t *testing.T) {
	url := testURL(t)
	o := postgres.Options{Node: "host1", Prefix: testPrefix(), LeaseTTL: 10 * time.Second, Renew: 2 * time.Second, StopGrace: 4 * time.Second}
	a := openTable(t, newPool(t, url), "jobs", o)
	ctx := context.Background()
	require.NoError(t, a.Put(ctx, "k", []byte("1")))
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, 3*time.Second, 5*time.Millisecond)
	b := openTable(t, newPool(t, url), "jobs", o)
	time.Sleep(2 * o.Renew)
	require.Equal(t, []string{"k"}, a.Owned())
	require.False(t, slices.Contains(b.Owned(), "k"), "two Tables run the same row at once")
}

// A supervisor drops an announced key whose Get failed: the Table
// announces it again after its next successful renewal, so the gained row
// starts (or the put is applied) without waiting for a scan.
func TestRowWhoseGetFailedIsAnnouncedAgainAfterTheNextRenewal(t *testing.T) {
	url := testURL(t)
	proxy, err := pgtest.NewProxy(hostPort(t, url))
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	o := fast(testPrefix(), "a")
	a := openTable(t, newPool(t, viaProxy(t, url, proxy.Addr())), "jobs", o)
	ctx := context.Background()
	require.NoError(t, a.Put(ctx, "k", []byte("1")))
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, 3*time.Second, 5*time.Millisecond)
	watch, err := a.Watch(ctx)
	require.NoError(t, err)
	collect(watch, 3*o.Renew) // the put's and the claim's announcements

	proxy.Cut()
	_, err = a.Get(ctx, "k")
	require.Error(t, err)
	require.NotErrorIs(t, err, supervisor.ErrNotFound, "a timeout, the row still held")
	proxy.Restore()
	waitKey(t, watch, "k", 5*o.Renew)
	require.Equal(t, []string{"k"}, a.Owned())
}

// A node holding 10k rows of a table without statistics yet keeps them:
// its renewals stay fast after the fifth, when a prepared statement may
// switch to a generic plan, which walked the key array for every row.
func TestNodeHoldingTenThousandRowsOfAFreshTableKeepsThem(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	var lost atomic.Int64
	o := fast(prefix, "a")
	o.Logger = slog.New(countingHandler{"stopping every row", &lost})
	schema := openTable(t, db, "schema", o) // creates the tables
	require.NoError(t, schema.Close())
	ctx := context.Background()
	_, err := db.Exec(ctx, `INSERT INTO `+prefix+`rows (name, key, data)
SELECT 'jobs', 'row-' || i, '' FROM generate_series(1, 10000) AS i`)
	require.NoError(t, err)
	a := openTable(t, db, "jobs", o)
	require.Len(t, a.Owned(), 10000, "claimed on start")
	for range 20 { // 4s: about 20 renewals
		time.Sleep(200 * time.Millisecond)
		require.Len(t, a.Owned(), 10000)
	}
	start := time.Now()
	for range 8 {
		it, err := a.Iter(ctx)
		require.NoError(t, err)
		n := 0
		for it.Next() {
			n++
		}
		require.Equal(t, 10000, n)
	}
	t.Logf("8 Iters of 10k rows: %v", time.Since(start))
	require.Zero(t, lost.Load(), "the node never declared its rows lost")
}

// Close releases only what its own Table holds: a second Table under the
// same node ID closing must not free the first one's rows for a third
// node while the first still runs them.
func TestCloseOfASecondTableUnderTheSameNodeIDLeavesTheFirstsRows(t *testing.T) {
	url := testURL(t)
	o := postgres.Options{Node: "host1", Prefix: testPrefix(), LeaseTTL: 10 * time.Second, Renew: 2 * time.Second, StopGrace: 4 * time.Second}
	rec := newRunRecorder()
	a := startSlowStopNode(t, url, o, rec, 500*time.Millisecond).table
	ctx := context.Background()
	for _, k := range []string{"k0", "k1", "k2", "k3"} {
		require.NoError(t, a.Put(ctx, k, []byte("1")))
	}
	require.Eventually(t, func() bool { return len(rec.on("host1")) == 4 }, 5*time.Second, 5*time.Millisecond)
	other := o
	other.Node = "other"
	startSlowStopNode(t, url, other, rec, 500*time.Millisecond) // live, holding nothing: its share is 2
	b := openTable(t, newPool(t, url), "jobs", o)
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, b.Close())
	time.Sleep(3 * time.Second)
	require.Empty(t, rec.problems(), "a row ran on two nodes at once")
}

// A row deleted, purged and put again while a claim is under way keeps
// versions above every earlier one: a put after the claim is announced.
func TestPutAfterAClaimOfARowPurgedAndPutAgainIsAnnounced(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	o := postgres.Options{Node: "a", Prefix: prefix, LeaseTTL: 10 * time.Second, Renew: time.Second, StopGrace: 2 * time.Second}
	a := openTable(t, db, "jobs", o)
	ctx := context.Background()
	require.NoError(t, a.Put(ctx, "h", []byte("held")))
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, 3*time.Second, 5*time.Millisecond)
	watch, err := a.Watch(ctx)
	require.NoError(t, err)

	// Hold the lock of a's row, so that its next cycle waits in its renewal.
	tx, err := db.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT 1 FROM `+prefix+`rows WHERE name = 'jobs' AND key = 'h' FOR UPDATE`)
	require.NoError(t, err)
	time.Sleep(o.Renew + 300*time.Millisecond)
	// Meanwhile k is put a few times, deleted, purged (as another node's
	// cycle does) and put again.
	for i := range 5 {
		require.NoError(t, a.Put(ctx, "k", []byte("old"+strconv.Itoa(i))))
	}
	_, err = a.Delete(ctx, "k")
	require.NoError(t, err)
	_, err = db.Exec(ctx, `DELETE FROM `+prefix+`rows WHERE name = 'jobs' AND key = 'k' AND deleted AND owner IS NULL`)
	require.NoError(t, err)
	require.NoError(t, a.Put(ctx, "k", []byte("new")))
	time.Sleep(100 * time.Millisecond) // the notifications arrive
	require.NoError(t, tx.Commit(ctx))
	require.Eventually(t, func() bool { return len(a.Owned()) == 2 }, 3*time.Second, 5*time.Millisecond)
	collect(watch, 300*time.Millisecond)

	require.NoError(t, a.Put(ctx, "k", []byte("newer")))
	require.Contains(t, collect(watch, 3*o.Renew), "k", "the put after the claim is announced")
	v, err := a.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "newer", v)
}
