package postgres_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/postgres"
)

// fast are the options of most tests: a node cut off loses its rows
// after LeaseTTL − StopGrace − Renew = 1.8s.
func fast(prefix, node string) postgres.Options {
	return postgres.Options{Node: node, Prefix: prefix,
		LeaseTTL: 3 * time.Second, Renew: 200 * time.Millisecond, StopGrace: time.Second}
}

func decodeString(_ string, data []byte) (string, error) { return string(data), nil }

// openTable opens a Table[string] closed at the test's end.
func openTable(t testing.TB, db *pgxpool.Pool, name string, o postgres.Options) *postgres.Table[string] {
	t.Helper()
	tbl, err := postgres.NewTable(context.Background(), db, name, decodeString, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tbl.Close() })
	return tbl
}

// collect reads keys from ch for d.
func collect(ch <-chan string, d time.Duration) []string {
	var keys []string
	timeout := time.After(d)
	for {
		select {
		case k, ok := <-ch:
			if !ok {
				return keys
			}
			keys = append(keys, k)
		case <-timeout:
			return keys
		}
	}
}

// waitKey reads ch until key comes, failing after d.
func waitKey(t testing.TB, ch <-chan string, key string, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case k := <-ch:
			if k == key {
				return
			}
		case <-timeout:
			t.Fatalf("key %q not announced within %v", key, d)
		}
	}
}

func TestNewTableRefusesBadInput(t *testing.T) {
	db := newPool(t, testURL(t))
	ctx := context.Background()
	prefix := testPrefix()
	cases := []struct {
		name  string
		table string
		o     postgres.Options
		want  error
	}{
		{"stop grace too long", "x", postgres.Options{Prefix: prefix, LeaseTTL: 10 * time.Second, Renew: 2 * time.Second, StopGrace: 6 * time.Second}, postgres.ErrInvalidOptions},
		{"defaults with short ttl", "x", postgres.Options{Prefix: prefix, LeaseTTL: 20 * time.Second}, postgres.ErrInvalidOptions},
		{"negative renew", "x", postgres.Options{Prefix: prefix, Renew: -time.Second}, postgres.ErrInvalidOptions},
		{"bad prefix", "x", postgres.Options{Prefix: "Bad-Prefix"}, postgres.ErrInvalidOptions},
		{"long prefix", "x", postgres.Options{Prefix: "p" + string(make([]byte, 45))}, postgres.ErrInvalidOptions},
		{"empty name", "", postgres.Options{Prefix: prefix}, postgres.ErrInvalidKey},
		{"NUL in name", "a\x00b", postgres.Options{Prefix: prefix}, postgres.ErrInvalidKey},
		{"bad node", "x", postgres.Options{Prefix: prefix, Node: "\xff"}, postgres.ErrInvalidOptions},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := postgres.NewTable(ctx, db, c.table, decodeString, c.o)
			require.ErrorIs(t, err, c.want)
		})
	}
	_, err := postgres.NewTable[string](ctx, db, "x", nil, postgres.Options{Prefix: prefix})
	require.ErrorIs(t, err, postgres.ErrInvalidOptions)
	_, err = postgres.NewTable(ctx, nil, "x", decodeString, postgres.Options{Prefix: prefix})
	require.ErrorIs(t, err, postgres.ErrInvalidOptions)
}

func TestNewTableCreatesSchemaAndDefaults(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	tbl := openTable(t, db, "jobs", postgres.Options{Prefix: prefix})
	require.NotEmpty(t, tbl.Node())
	require.Equal(t, "jobs", tbl.Name())
	for _, table := range []string{"tables", "rows", "nodes", "states"} {
		var exists bool
		require.NoError(t, db.QueryRow(context.Background(),
			`SELECT to_regclass($1) IS NOT NULL`, prefix+table).Scan(&exists))
		require.True(t, exists, prefix+table)
	}
	// A second table of the same prefix finds the schema in place.
	other := openTable(t, db, "jobs", postgres.Options{Prefix: prefix})
	require.NotEqual(t, tbl.Node(), other.Node(), "default node IDs are unique")
}

func TestPutFromAnyNodeRunsOnOneNode(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	a := openTable(t, db, "jobs", fast(prefix, "a"))
	b := openTable(t, db, "jobs", fast(prefix, "b"))
	ctx := context.Background()
	watchA, err := a.Watch(ctx)
	require.NoError(t, err)
	watchB, err := b.Watch(ctx)
	require.NoError(t, err)

	require.NoError(t, b.Put(ctx, "k1", []byte("v1")))
	require.Eventually(t, func() bool { return len(a.Owned())+len(b.Owned()) == 1 }, 3*time.Second, 10*time.Millisecond)
	owner, other, ownerWatch := a, b, watchA
	if len(b.Owned()) == 1 {
		owner, other, ownerWatch = b, a, watchB
	}
	waitKey(t, ownerWatch, "k1", time.Second)
	v, err := owner.Get(ctx, "k1")
	require.NoError(t, err)
	require.Equal(t, "v1", v)
	_, err = other.Get(ctx, "k1")
	require.ErrorIs(t, err, supervisor.ErrNotFound)
	fence, ok := owner.Fence("k1")
	require.True(t, ok)
	require.Equal(t, int64(1), fence, "first claim")
	_, ok = other.Fence("k1")
	require.False(t, ok)

	// A put over the row keeps its owner and fence and is announced to the owner.
	require.NoError(t, other.Put(ctx, "k1", []byte("v2")))
	waitKey(t, ownerWatch, "k1", time.Second)
	v, err = owner.Get(ctx, "k1")
	require.NoError(t, err)
	require.Equal(t, "v2", v)
	require.Equal(t, []string{"k1"}, owner.Owned())
	fence2, _ := owner.Fence("k1")
	require.Equal(t, fence, fence2)

	it, err := owner.Iter(ctx)
	require.NoError(t, err)
	require.True(t, it.Next())
	k, v, err := it.Get(ctx)
	require.NoError(t, err)
	require.Equal(t, "k1", k)
	require.Equal(t, "v2", v)
	require.False(t, it.Next())
	require.NoError(t, it.Err())
	require.NoError(t, it.Close())

	it, err = other.Iter(ctx)
	require.NoError(t, err)
	require.False(t, it.Next(), "Iter sees only this node's rows")
}

func TestDeleteStopsTheRowOnItsOwnerAtOnce(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	a := openTable(t, db, "jobs", fast(prefix, "a"))
	ctx := context.Background()
	watch, err := a.Watch(ctx)
	require.NoError(t, err)
	require.NoError(t, a.Put(ctx, "k", []byte("v")))
	waitKey(t, watch, "k", 3*time.Second)
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, time.Second, 5*time.Millisecond)

	ok, err := a.Delete(ctx, "k")
	require.NoError(t, err)
	require.True(t, ok)
	waitKey(t, watch, "k", time.Second)
	_, err = a.Get(ctx, "k")
	require.ErrorIs(t, err, supervisor.ErrNotFound)
	require.Empty(t, a.Owned())
	ok, err = a.Delete(ctx, "k")
	require.NoError(t, err)
	require.False(t, ok, "second delete")
	ok, err = a.Delete(ctx, "never")
	require.NoError(t, err)
	require.False(t, ok)
}

func TestRenewalsAnnounceNothing(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	a := openTable(t, db, "jobs", fast(prefix, "a"))
	ctx := context.Background()
	for _, k := range []string{"k1", "k2", "k3"} {
		require.NoError(t, a.Put(ctx, k, []byte(k)))
	}
	require.Eventually(t, func() bool { return len(a.Owned()) == 3 }, 3*time.Second, 5*time.Millisecond)
	watch, err := a.Watch(ctx)
	require.NoError(t, err)
	fences := map[string]int64{}
	for _, k := range a.Owned() {
		fences[k], _ = a.Fence(k)
	}
	// Ten renewals.
	require.Empty(t, collect(watch, 10*200*time.Millisecond))
	for _, k := range a.Owned() {
		f, _ := a.Fence(k)
		require.Equal(t, fences[k], f, "renewals keep the fence")
	}
}

func TestTableKeepsNoPoolConnectionBorrowed(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	a := openTable(t, db, "jobs", fast(prefix, "a"))
	ctx := context.Background()
	for i := range 20 {
		require.NoError(t, a.Put(ctx, string(rune('a'+i)), nil))
	}
	require.Eventually(t, func() bool { return len(a.Owned()) == 20 }, 3*time.Second, 5*time.Millisecond)
	it, err := a.Iter(ctx)
	require.NoError(t, err)
	require.Equal(t, int32(0), db.Stat().AcquiredConns(), "Iter holds no connection")
	n := 0
	for it.Next() {
		n++
	}
	require.Equal(t, 20, n)
	deadline := time.Now().Add(time.Second)
	busy := 0
	for time.Now().Before(deadline) {
		if db.Stat().AcquiredConns() > 0 {
			busy++
		}
		time.Sleep(time.Millisecond)
	}
	require.Less(t, busy, 200, "connections are borrowed only while a statement runs")
	require.NoError(t, a.Close())
	require.Equal(t, int32(0), db.Stat().AcquiredConns())
}

func TestCloseReleasesEveryLeaseForOthersAtOnce(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	o := fast(prefix, "a")
	o.Renew, o.LeaseTTL = time.Second, 5*time.Second // the others claim on the release notice, not their renewal
	a := openTable(t, db, "jobs", o)
	ctx := context.Background()
	for i := range 10 {
		require.NoError(t, a.Put(ctx, string(rune('a'+i)), nil))
	}
	require.Eventually(t, func() bool { return len(a.Owned()) == 10 }, 3*time.Second, 5*time.Millisecond)
	o.Node = "b"
	b := openTable(t, db, "jobs", o)
	require.Empty(t, b.Owned(), "b's first cycle saw a's heartbeat... and no free row")
	start := time.Now()
	require.NoError(t, a.Close())
	require.Eventually(t, func() bool { return len(b.Owned()) == 10 }, 3*time.Second, 5*time.Millisecond)
	require.Less(t, time.Since(start), o.Renew, "claimed on a's release notice")
	var heartbeats int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FROM `+prefix+`nodes WHERE node = 'a'`).Scan(&heartbeats))
	require.Zero(t, heartbeats, "Close deletes the node's heartbeat")
	_, err := a.Get(ctx, "a")
	require.ErrorIs(t, err, postgres.ErrClosed)
	require.ErrorIs(t, a.Put(ctx, "z", nil), postgres.ErrClosed)
	_, err = a.Watch(ctx)
	require.ErrorIs(t, err, postgres.ErrClosed)
	require.NoError(t, a.Close(), "second Close")
	for _, k := range b.Owned() {
		f, ok := b.Fence(k)
		require.True(t, ok)
		require.Equal(t, int64(2), f, "every claim raises the fence")
	}
}

func TestKeysAreChecked(t *testing.T) {
	db := newPool(t, testURL(t))
	a := openTable(t, db, "jobs", fast(testPrefix(), "a"))
	ctx := context.Background()
	long := string(slices.Repeat([]byte("k"), postgres.MaxKeyLen+1))
	for _, key := range []string{"", long, "\xff", "a\x00"} {
		require.ErrorIs(t, a.Put(ctx, key, nil), postgres.ErrInvalidKey)
		_, err := a.Delete(ctx, key)
		require.ErrorIs(t, err, postgres.ErrInvalidKey)
	}
	require.NoError(t, a.Put(ctx, long[:postgres.MaxKeyLen], []byte("max")))
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, 3*time.Second, 5*time.Millisecond)
	v, err := a.Get(ctx, long[:postgres.MaxKeyLen])
	require.NoError(t, err)
	require.Equal(t, "max", v)
}

func TestDeletedRowKeepsItsOwnerUntilStopGraceAndItsFenceKeepsRising(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	a := openTable(t, db, "jobs", fast(prefix, "a"))
	ctx := context.Background()
	require.NoError(t, a.Put(ctx, "k", []byte("1")))
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, 3*time.Second, 5*time.Millisecond)
	b := openTable(t, db, "jobs", fast(prefix, "b"))
	first, _ := a.Fence("k")

	// Deleted and put again at once: a still holds the lease (its process
	// may still be stopping), so the row comes back to a, not to b.
	_, err := b.Delete(ctx, "k")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(a.Owned()) == 0 }, time.Second, 5*time.Millisecond)
	f, held := a.Fence("k")
	require.True(t, held, "the lease is kept while the process stops")
	require.Equal(t, first, f)
	require.NoError(t, b.Put(ctx, "k", []byte("2")))
	require.Eventually(t, func() bool { return slices.Equal(a.Owned(), []string{"k"}) }, time.Second, 5*time.Millisecond)
	require.Empty(t, b.Owned())
	v, err := a.Get(ctx, "k")
	require.NoError(t, err)
	require.Equal(t, "2", v)

	// Deleted for good: released after StopGrace, its tombstone purged;
	// put again, its next claim still gets a higher fence.
	_, err = b.Delete(ctx, "k")
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, held := a.Fence("k"); return !held }, 3*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		var n int
		_ = db.QueryRow(ctx, `SELECT count(*) FROM `+prefix+`rows WHERE key = 'k'`).Scan(&n)
		return n == 0
	}, 2*time.Second, 10*time.Millisecond, "the released tombstone is purged")
	require.NoError(t, b.Put(ctx, "k", []byte("3")))
	var owner *postgres.Table[string]
	require.Eventually(t, func() bool {
		for _, tbl := range []*postgres.Table[string]{a, b} {
			if len(tbl.Owned()) == 1 {
				owner = tbl
				return true
			}
		}
		return false
	}, 3*time.Second, 5*time.Millisecond)
	again, _ := owner.Fence("k")
	require.Greater(t, again, first, "a row put again after its purge gets a fence above every earlier one")
}

func TestLiveNodesAreThoseWithAHeartbeatNewerThanLeaseTTL(t *testing.T) {
	db := newPool(t, testURL(t))
	prefix := testPrefix()
	o := fast(prefix, "a")
	a := openTable(t, db, "jobs", o)
	ctx := context.Background()
	for i := range 10 {
		require.NoError(t, a.Put(ctx, string(rune('a'+i)), nil))
	}
	require.Eventually(t, func() bool { return len(a.Owned()) == 10 }, 3*time.Second, 5*time.Millisecond)

	// A node whose heartbeat is older than LeaseTTL does not count; one
	// gone for 10 LeaseTTLs is dropped.
	_, err := db.Exec(ctx, `INSERT INTO `+prefix+`nodes (name, node, heartbeat) VALUES
		('jobs', 'stale', now() - interval '5 seconds'), ('jobs', 'gone', now() - interval '31 seconds')`)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var n int
		_ = db.QueryRow(ctx, `SELECT count(*) FROM `+prefix+`nodes WHERE node = 'gone'`).Scan(&n)
		return n == 0
	}, 2*time.Second, 10*time.Millisecond)
	require.Len(t, a.Owned(), 10, "a stale heartbeat takes no share")

	// A live one does: a sheds down to ceil(10/2).
	_, err = db.Exec(ctx, `INSERT INTO `+prefix+`nodes (name, node, heartbeat) VALUES ('jobs', 'ghost', now() + interval '1 hour')`)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(a.Owned()) == 5 }, 2*time.Second, 10*time.Millisecond)
	require.Equal(t, []string{"a", "b", "c", "d", "e"}, a.Owned(), "the greatest keys are shed")
}
