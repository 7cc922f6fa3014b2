package supervisor_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

type row struct {
	Key   string
	Value int
}

// rows walks tbl and returns every row in iteration order.
func rows(t testing.TB, tbl supervisor.Table[string, int]) []row {
	t.Helper()
	it, err := tbl.Iter(t.Context())
	require.NoError(t, err)
	defer it.Close()
	var got []row
	for it.Next() {
		k, v, err := it.Get(t.Context())
		require.NoError(t, err)
		got = append(got, row{k, v})
	}
	require.NoError(t, it.Err())
	return got
}

func TestMapTableIteratesInInsertionOrder(t *testing.T) {
	manyDeletes := func(tbl *supervisor.MapTable[string, int]) {
		// Enough deletes to force compaction: the survivors keep their order.
		for i := range 100 {
			tbl.Put(strconv.Itoa(i), i)
		}
		for i := range 100 {
			if i%10 != 7 {
				tbl.Delete(strconv.Itoa(i))
			}
		}
		tbl.Put("27", -27)
		tbl.Put("new", 1)
	}
	tests := []struct {
		name string
		ops  func(*supervisor.MapTable[string, int])
		want []row
	}{
		{
			name: "empty",
			ops:  func(*supervisor.MapTable[string, int]) {},
		},
		{
			name: "insertion order",
			ops: func(tbl *supervisor.MapTable[string, int]) {
				tbl.Put("c", 1)
				tbl.Put("a", 2)
				tbl.Put("b", 3)
			},
			want: []row{{"c", 1}, {"a", 2}, {"b", 3}},
		},
		{
			name: "re-put keeps its place",
			ops: func(tbl *supervisor.MapTable[string, int]) {
				tbl.Put("a", 1)
				tbl.Put("b", 2)
				tbl.Put("c", 3)
				tbl.Put("a", 10)
			},
			want: []row{{"a", 10}, {"b", 2}, {"c", 3}},
		},
		{
			name: "delete then put moves to the end",
			ops: func(tbl *supervisor.MapTable[string, int]) {
				tbl.Put("a", 1)
				tbl.Put("b", 2)
				tbl.Put("c", 3)
				tbl.Delete("a")
				tbl.Put("a", 4)
			},
			want: []row{{"b", 2}, {"c", 3}, {"a", 4}},
		},
		{
			name: "delete of a missing key changes nothing",
			ops: func(tbl *supervisor.MapTable[string, int]) {
				tbl.Put("a", 1)
				tbl.Delete("zzz")
			},
			want: []row{{"a", 1}},
		},
		{
			name: "delete everything",
			ops: func(tbl *supervisor.MapTable[string, int]) {
				for i := range 50 {
					tbl.Put(strconv.Itoa(i), i)
				}
				for i := range 50 {
					tbl.Delete(strconv.Itoa(i))
				}
			},
		},
		{
			name: "order survives compaction",
			ops:  manyDeletes,
			want: []row{
				{"7", 7}, {"17", 17}, {"27", -27}, {"37", 37}, {"47", 47},
				{"57", 57}, {"67", 67}, {"77", 77}, {"87", 87}, {"97", 97},
				{"new", 1},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tbl := supervisor.NewMapTable[string, int]()
			tc.ops(tbl)
			require.Equal(t, tc.want, rows(t, tbl))
			require.Equal(t, len(tc.want), tbl.Len())
			for _, r := range tc.want {
				v, err := tbl.Get(t.Context(), r.Key)
				require.NoError(t, err)
				require.Equal(t, r.Value, v)
			}
		})
	}
}

func TestMapTableZeroValueIsUsable(t *testing.T) {
	var tbl supervisor.MapTable[string, int]
	require.Equal(t, 0, tbl.Len())
	require.Empty(t, rows(t, &tbl))
	require.False(t, tbl.Delete("a"))
	tbl.Put("a", 1)
	require.Equal(t, []row{{"a", 1}}, rows(t, &tbl))
}

func TestMapTableDeleteReportsWhetherRowExisted(t *testing.T) {
	tbl := supervisor.NewMapTable[string, int]()
	tbl.Put("a", 1)
	require.True(t, tbl.Delete("a"))
	require.False(t, tbl.Delete("a"))
	require.Equal(t, 0, tbl.Len())
}

func TestMapTableGetMissingRowWrapsErrNotFound(t *testing.T) {
	tbl := supervisor.NewMapTable[string, int]()
	tbl.Put("present", 1)
	tbl.Put("deleted", 2)
	tbl.Delete("deleted")
	for _, key := range []string{"absent", "deleted"} {
		_, err := tbl.Get(t.Context(), key)
		require.ErrorIs(t, err, supervisor.ErrNotFound)
		require.ErrorContains(t, err, key)
	}
}

func TestMapTableRefusesDoneContext(t *testing.T) {
	tbl := supervisor.NewMapTable[string, int]()
	tbl.Put("a", 1)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name string
		call func() error
	}{
		{"Get", func() error { _, err := tbl.Get(ctx, "a"); return err }},
		{"Iter", func() error { _, err := tbl.Iter(ctx); return err }},
		{"Watch", func() error { _, err := tbl.Watch(ctx); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, tc.call(), context.Canceled)
		})
	}
}

func TestMapTableIteratorEdgeCases(t *testing.T) {
	newIter := func(t *testing.T, keys ...string) supervisor.Iterator[string, int] {
		tbl := supervisor.NewMapTable[string, int]()
		for i, k := range keys {
			tbl.Put(k, i)
		}
		it, err := tbl.Iter(t.Context())
		require.NoError(t, err)
		t.Cleanup(func() { _ = it.Close() })
		return it
	}
	tests := []struct {
		name string
		run  func(t *testing.T, it supervisor.Iterator[string, int])
		keys []string
	}{
		{
			name: "Get before Next fails",
			keys: []string{"a"},
			run: func(t *testing.T, it supervisor.Iterator[string, int]) {
				_, _, err := it.Get(t.Context())
				require.Error(t, err)
			},
		},
		{
			name: "Get after the end fails",
			keys: []string{"a"},
			run: func(t *testing.T, it supervisor.Iterator[string, int]) {
				require.True(t, it.Next())
				require.False(t, it.Next())
				require.False(t, it.Next(), "Next stays false")
				_, _, err := it.Get(t.Context())
				require.Error(t, err)
				require.NoError(t, it.Err())
			},
		},
		{
			name: "empty table has no rows",
			run: func(t *testing.T, it supervisor.Iterator[string, int]) {
				require.False(t, it.Next())
				_, _, err := it.Get(t.Context())
				require.Error(t, err)
				require.NoError(t, it.Err())
			},
		},
		{
			name: "Close is idempotent and ends the walk",
			keys: []string{"a", "b"},
			run: func(t *testing.T, it supervisor.Iterator[string, int]) {
				require.True(t, it.Next())
				require.NoError(t, it.Close())
				require.NoError(t, it.Close())
				require.False(t, it.Next())
				_, _, err := it.Get(t.Context())
				require.Error(t, err)
			},
		},
		{
			name: "Get with a done context fails",
			keys: []string{"a"},
			run: func(t *testing.T, it supervisor.Iterator[string, int]) {
				ctx, cancel := context.WithCancel(t.Context())
				cancel()
				require.True(t, it.Next())
				_, _, err := it.Get(ctx)
				require.ErrorIs(t, err, context.Canceled)
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newIter(t, tc.keys...))
		})
	}
}

func TestMapTableIterIsUnaffectedByLaterChanges(t *testing.T) {
	tbl := supervisor.NewMapTable[string, int]()
	tbl.Put("a", 1)
	tbl.Put("b", 2)
	it, err := tbl.Iter(t.Context())
	require.NoError(t, err)
	defer it.Close()
	tbl.Delete("a")
	tbl.Put("b", 20)
	tbl.Put("c", 3)

	var got []row
	for it.Next() {
		k, v, err := it.Get(t.Context())
		require.NoError(t, err)
		got = append(got, row{k, v})
	}
	require.Equal(t, []row{{"a", 1}, {"b", 2}}, got)
}

// Run with -race: writers, readers and a watcher share one table.
func TestMapTableConcurrentUse(t *testing.T) {
	const writers, keysPerWriter, rounds = 4, 50, 20
	tbl := supervisor.NewMapTable[string, int]()
	ctx, cancel := context.WithCancel(t.Context())
	changes, err := tbl.Watch(ctx)
	require.NoError(t, err)
	watched := make(chan int)
	firstChange := make(chan struct{})
	go func() {
		n := 0
		for range changes {
			if n == 0 {
				close(firstChange)
			}
			n++
		}
		watched <- n
	}()

	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for r := range rounds {
				for k := range keysPerWriter {
					key := fmt.Sprintf("%d/%d", w, k)
					tbl.Put(key, r)
					if k%3 == 0 {
						tbl.Delete(key)
					}
				}
			}
		})
	}
	for range writers {
		wg.Go(func() {
			// assert, not require: FailNow belongs to the test goroutine.
			for range rounds {
				it, err := tbl.Iter(t.Context())
				if !assert.NoError(t, err) {
					return
				}
				seen := make(map[string]bool)
				for it.Next() {
					k, _, err := it.Get(t.Context())
					assert.NoError(t, err)
					assert.False(t, seen[k], "key %q twice in one walk", k)
					seen[k] = true
				}
				_ = it.Close()
				_, _ = tbl.Get(t.Context(), "0/1")
				_ = tbl.Len()
			}
		})
	}
	wg.Wait()
	<-firstChange // changes are delivered while the writers never blocked
	cancel()
	require.Positive(t, <-watched)

	wantLen := writers * (keysPerWriter - (keysPerWriter+2)/3)
	require.Equal(t, wantLen, tbl.Len())
	require.Len(t, rows(t, tbl), wantLen)
}

// drain returns the keys ch delivers until the watcher has nothing pending.
// Call it inside a synctest bubble.
func drain[K comparable](ch <-chan K) (keys []K, closed bool) {
	for {
		synctest.Wait() // the forwarder is now blocked: sending, or idle
		select {
		case k, ok := <-ch:
			if !ok {
				return keys, true
			}
			keys = append(keys, k)
		default:
			return keys, false
		}
	}
}

func TestMapTableWatchDeliversPutAndDeletedKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := supervisor.NewMapTable[string, int]()
		tbl.Put("before", 1) // precedes Watch: not delivered
		tbl.Put("old", 1)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		changes, err := tbl.Watch(ctx)
		require.NoError(t, err)

		tbl.Put("new", 1)
		require.True(t, tbl.Delete("old"))
		require.False(t, tbl.Delete("missing"))
		tbl.Put("before", 2)

		got, closed := drain(changes)
		require.False(t, closed)
		require.Equal(t, []string{"new", "old", "before"}, got)
	})
}

func TestMapTableWatchCoalescesPendingKeys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := supervisor.NewMapTable[string, int]()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		changes, err := tbl.Watch(ctx)
		require.NoError(t, err)

		// Nobody reads while 10,000 puts of 3 keys happen: the writers must
		// finish anyway (a blocked writer would deadlock the bubble).
		keys := []string{"a", "b", "c"}
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Go(func() {
				for i := range 2500 {
					tbl.Put(keys[(w+i)%len(keys)], i)
				}
			})
		}
		wg.Wait()

		got, _ := drain(changes)
		counts := make(map[string]int)
		for _, k := range got {
			counts[k]++
		}
		require.Len(t, counts, len(keys))
		for _, k := range keys {
			// One copy may be in flight while the key is queued again.
			require.LessOrEqual(t, counts[k], 2, "key %q", k)
		}
	})
}

func TestMapTableWatchClosesChannelWhenContextDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := supervisor.NewMapTable[string, int]()
		ctx, cancel := context.WithCancel(t.Context())
		changes, err := tbl.Watch(ctx)
		require.NoError(t, err)
		tbl.Put("unread", 1) // the forwarder is blocked sending it

		cancel()
		got, closed := drain(changes)
		require.True(t, closed, "channel closed once ctx is done")
		require.Empty(t, got, "nothing delivered after ctx is done")

		// The watcher is gone: writers still work and nothing is queued.
		tbl.Put("after", 1)
		require.True(t, tbl.Delete("after"))
		// synctest.Test fails if the forwarder goroutine is still around.
	})
}

func TestMapTableWatchersAreIndependent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tbl := supervisor.NewMapTable[string, int]()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		slow, err := tbl.Watch(ctx)
		require.NoError(t, err)
		fastCtx, stopFast := context.WithCancel(ctx)
		fast, err := tbl.Watch(fastCtx)
		require.NoError(t, err)

		tbl.Put("a", 1)
		got, _ := drain(fast)
		require.Equal(t, []string{"a"}, got)

		stopFast()
		_, closed := drain(fast)
		require.True(t, closed)

		tbl.Put("b", 1)
		got, closed = drain(slow)
		require.False(t, closed)
		require.Equal(t, []string{"a", "b"}, got)
	})
}

func ExampleMapTable() {
	ctx := context.Background()
	tbl := supervisor.NewMapTable[string, int]()
	tbl.Put("web", 2)
	tbl.Put("worker", 4)
	tbl.Put("web", 3) // keeps its place

	it, err := tbl.Iter(ctx)
	if err != nil {
		panic(err)
	}
	defer it.Close()
	for it.Next() {
		name, replicas, err := it.Get(ctx)
		if err != nil {
			continue // a bad row never stops the others
		}
		fmt.Println(name, replicas)
	}

	_, err = tbl.Get(ctx, "cron")
	fmt.Println(err)
	// Output:
	// web 3
	// worker 4
	// supervisor: row not found: cron
}

func BenchmarkMapTableScan100k(b *testing.B) {
	const n = 100_000
	tbl := supervisor.NewMapTable[int, string]()
	for i := range n {
		tbl.Put(i, "row")
	}
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		it, err := tbl.Iter(ctx)
		if err != nil {
			b.Fatal(err)
		}
		sum := 0
		for it.Next() {
			k, v, err := it.Get(ctx)
			if err != nil {
				b.Fatal(err)
			}
			sum += k + len(v)
		}
		_ = it.Close()
		if sum == 0 {
			b.Fatal("no rows")
		}
	}
}

// Delete must not shift the rows behind it: ns/op stays flat as the table
// grows.
func BenchmarkMapTableDeleteAndPut100k(b *testing.B) {
	const n = 100_000
	tbl := supervisor.NewMapTable[int, string]()
	for i := range n {
		tbl.Put(i, "row")
	}
	i := 0
	for b.Loop() {
		tbl.Delete(i % n)
		tbl.Put(i%n, "row")
		i++
	}
}
