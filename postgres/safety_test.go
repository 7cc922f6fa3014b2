package postgres_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/postgres"
	"github.com/gosupervise/supervisor/postgres/pgtest"
)

// runRecorder records where every row's process runs and every moment a
// row ran on two nodes at once.
type runRecorder struct {
	mu         sync.Mutex
	running    map[string]string // key → node
	starts     int
	violations []string
}

func newRunRecorder() *runRecorder { return &runRecorder{running: map[string]string{}} }

func (r *runRecorder) start(key, node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if other, ok := r.running[key]; ok && other != node {
		r.violations = append(r.violations, fmt.Sprintf("%s started on %s while running on %s", key, node, other))
	}
	r.running[key] = node
	r.starts++
}

func (r *runRecorder) stop(key, node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running[key] == node {
		delete(r.running, key)
	}
}

// on returns the keys running on node, sorted.
func (r *runRecorder) on(node string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var keys []string
	for k, n := range r.running {
		if n == node {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

func (r *runRecorder) problems() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.violations)
}

// recordedJob runs until stopped, and then takes stopDelay to stop; it is
// recorded from its start to its return.
type recordedJob struct {
	key, node string
	rec       *runRecorder
	stopDelay time.Duration
}

func (j *recordedJob) Run(ctx context.Context, ready supervisor.Callback) error {
	j.rec.start(j.key, j.node)
	defer j.rec.stop(j.key, j.node)
	err := ready(ctx)
	time.Sleep(j.stopDelay)
	return err
}

// clusterNode is one node: a pool, a Table and a Supervisor running it.
type clusterNode struct {
	name  string
	db    *pgxpool.Pool
	table *postgres.Table[*recordedJob]
	stop  context.CancelFunc
	done  chan error
}

// startNode opens a node on url and runs its supervisor until the test
// ends; its jobs stop at once.
func startNode(t *testing.T, url string, o postgres.Options, rec *runRecorder) *clusterNode {
	t.Helper()
	return startSlowStopNode(t, url, o, rec, 0)
}

// startSlowStopNode is startNode with jobs that take stopDelay to stop.
func startSlowStopNode(t *testing.T, url string, o postgres.Options, rec *runRecorder, stopDelay time.Duration) *clusterNode {
	t.Helper()
	db, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	decode := func(key string, _ []byte) (*recordedJob, error) {
		return &recordedJob{key: key, node: o.Node, rec: rec, stopDelay: stopDelay}, nil
	}
	table, err := postgres.NewTable(context.Background(), db, "jobs", decode, o)
	require.NoError(t, err)
	sup := supervisor.NewSupervisor[string, *recordedJob](table, supervisor.Options{
		Name: o.Node, StopTimeout: o.StopGrace / 2, ScanInterval: o.Renew,
		Logger: slog.New(slog.DiscardHandler),
	})
	ctx, cancel := context.WithCancel(context.Background())
	n := &clusterNode{name: o.Node, db: db, table: table, stop: cancel, done: make(chan error, 1)}
	go func() {
		n.done <- sup.Run(ctx, func(ctx context.Context) error { <-ctx.Done(); return nil })
	}()
	t.Cleanup(n.shutdown)
	return n
}

// shutdown stops the supervisor, then closes the table and the pool.
func (n *clusterNode) shutdown() {
	n.stop()
	if n.done != nil {
		<-n.done
		n.done = nil
	}
	_ = n.table.Close()
	n.db.Close()
}

// hostPort returns the TCP address of url's server.
func hostPort(t *testing.T, url string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
}

// viaProxy returns url with its host and port replaced by addr's.
func viaProxy(t *testing.T, url, addr string) string {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	return fmt.Sprintf("postgres://%s@%s:%s/%s?sslmode=disable",
		cfg.ConnConfig.User, host, port, cfg.ConnConfig.Database)
}

func putRows(t *testing.T, table interface {
	Put(context.Context, string, []byte) error
}, n int) []string {
	t.Helper()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("row-%03d", i)
		require.NoError(t, table.Put(context.Background(), keys[i], nil))
	}
	return keys
}

func TestNodesShareRowsFairly(t *testing.T) {
	url := testURL(t)
	prefix := testPrefix()
	rec := newRunRecorder()
	nodes := []*clusterNode{
		startNode(t, url, fast(prefix, "a"), rec),
		startNode(t, url, fast(prefix, "b"), rec),
		startNode(t, url, fast(prefix, "c"), rec),
	}
	keys := putRows(t, nodes[0].table, 30)
	require.Eventually(t, func() bool {
		var all []string
		for _, n := range nodes {
			if len(rec.on(n.name)) != 10 {
				return false
			}
			all = append(all, rec.on(n.name)...)
		}
		slices.Sort(all)
		return slices.Equal(all, keys)
	}, 10*time.Second, 20*time.Millisecond, "ceil(30/3) = 10 rows run on each node")
	for _, n := range nodes {
		require.Equal(t, rec.on(n.name), n.table.Owned())
	}
	require.Empty(t, rec.problems())
}

func TestJoiningNodeGetsItsShareAfterStopGrace(t *testing.T) {
	url := testURL(t)
	prefix := testPrefix()
	rec := newRunRecorder()
	a := startNode(t, url, fast(prefix, "a"), rec)
	putRows(t, a.table, 20)
	require.Eventually(t, func() bool { return len(rec.on("a")) == 20 }, 5*time.Second, 10*time.Millisecond)
	watch, err := a.table.Watch(context.Background())
	require.NoError(t, err)

	joined := time.Now()
	b := startNode(t, url, fast(prefix, "b"), rec)
	shed := collect(watch, 5*200*time.Millisecond)
	require.Len(t, shed, 10, "a sheds the rows over its new share at its next renewal")
	require.Eventually(t, func() bool { return len(rec.on("b")) == 10 && len(rec.on("a")) == 10 },
		5*time.Second, 10*time.Millisecond)
	require.GreaterOrEqual(t, time.Since(joined), time.Second, "shed rows are released StopGrace later")
	require.Equal(t, a.table.Owned(), rec.on("a"))
	require.Equal(t, b.table.Owned(), rec.on("b"))
	require.Empty(t, rec.problems())
}

func TestCrashedNodesRowsMoveWithinLeaseTTLPlusRenew(t *testing.T) {
	url := testURL(t)
	prefix := testPrefix()
	rec := newRunRecorder()
	o := fast(prefix, "a")
	a := startNode(t, url, o, rec)
	o.Node = "b"
	b := startNode(t, url, o, rec)
	o.Node = "c"
	c := startNode(t, url, o, rec)
	keys := putRows(t, a.table, 30)
	require.Eventually(t, func() bool {
		return len(rec.on("a")) == 10 && len(rec.on("b")) == 10 && len(rec.on("c")) == 10
	}, 10*time.Second, 10*time.Millisecond)
	fences := map[string]int64{}
	for _, k := range b.table.Owned() {
		fences[k], _ = b.table.Fence(k)
	}

	// b crashes: its database connections go and it never renews again.
	crashed := time.Now()
	b.db.Close()
	b.stop()
	require.Eventually(t, func() bool { return len(rec.on("a")) == 15 && len(rec.on("c")) == 15 },
		2*(o.LeaseTTL+o.Renew), 10*time.Millisecond)
	took := time.Since(crashed)
	t.Logf("failover of 10 rows: %v (LeaseTTL + Renew = %v)", took, o.LeaseTTL+o.Renew)
	require.LessOrEqual(t, took, o.LeaseTTL+o.Renew+500*time.Millisecond, "rows move within LeaseTTL + Renew")
	require.GreaterOrEqual(t, took, o.LeaseTTL-o.Renew, "not before b's leases expired")
	running := append(rec.on("a"), rec.on("c")...)
	slices.Sort(running)
	require.Equal(t, keys, running, "every row runs once, on a or c")
	for k, f := range fences {
		owner := a.table
		if slices.Contains(c.table.Owned(), k) {
			owner = c.table
		}
		got, ok := owner.Fence(k)
		require.True(t, ok)
		require.Equal(t, f+1, got, "the claim raised %s's fence", k)
	}
	closed := time.Now()
	require.Error(t, b.table.Close(), "releasing needs the closed pool")
	require.Less(t, time.Since(closed), 2*o.Renew, "Close does not hang on a closed pool")
	require.Empty(t, rec.problems(), "no row ran on two nodes at once")
}

func TestCutOffNodeStopsItsRowsBeforeAnyOtherNodeRunsThem(t *testing.T) {
	url := testURL(t)
	proxy, err := pgtest.NewProxy(hostPort(t, url))
	require.NoError(t, err)
	t.Cleanup(func() { _ = proxy.Close() })
	prefix := testPrefix()
	rec := newRunRecorder()
	o := fast(prefix, "a")
	a := startNode(t, viaProxy(t, url, proxy.Addr()), o, rec)
	o.Node = "b"
	b := startNode(t, url, o, rec)
	keys := putRows(t, b.table, 20)
	require.Eventually(t, func() bool { return len(rec.on("a")) == 10 && len(rec.on("b")) == 10 },
		10*time.Second, 10*time.Millisecond)

	// a is cut off while its supervisor keeps running.
	cut := time.Now()
	proxy.Cut()
	require.Eventually(t, func() bool { return len(rec.on("a")) == 0 }, o.LeaseTTL, 5*time.Millisecond)
	stopped := time.Since(cut)
	// Lost at (last renewal sent) + LeaseTTL − StopGrace − Renew; the last
	// renewal was sent at most a Renew before the cut.
	require.LessOrEqual(t, stopped, o.LeaseTTL-o.StopGrace, "a declares its rows lost LeaseTTL − StopGrace − Renew after its last renewal")
	require.GreaterOrEqual(t, stopped, o.LeaseTTL-o.StopGrace-2*o.Renew-100*time.Millisecond, "not before")
	require.Empty(t, a.table.Owned())
	require.Eventually(t, func() bool { return slices.Equal(rec.on("b"), keys) }, 2*o.LeaseTTL, 10*time.Millisecond)
	t.Logf("cut off: a stopped its rows after %v, b runs all of them after %v", stopped, time.Since(cut))
	require.Empty(t, rec.problems(), "no row ran on two nodes at once")

	// Back on the network, a gets its share again.
	proxy.Restore()
	require.Eventually(t, func() bool { return len(rec.on("a")) == 10 && len(rec.on("b")) == 10 },
		10*time.Second, 10*time.Millisecond)
	require.Empty(t, rec.problems())
}

func TestClosedPoolCountsAsUnreachable(t *testing.T) {
	url := testURL(t)
	db, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	o := fast(testPrefix(), "a")
	a, err := postgres.NewTable(context.Background(), db, "jobs", decodeString, o)
	require.NoError(t, err)
	watch, err := a.Watch(context.Background())
	require.NoError(t, err)
	keys := putRows(t, a, 5)
	require.Eventually(t, func() bool { return len(a.Owned()) == 5 }, 3*time.Second, 5*time.Millisecond)
	// Drain the announcements of the puts and claims.
	announced := collect(watch, 300*time.Millisecond)
	slices.Sort(announced)
	require.Equal(t, keys, slices.Compact(announced))

	closed := time.Now()
	db.Close()
	var lost []string
	for len(lost) < len(keys) && time.Since(closed) < o.LeaseTTL {
		lost = append(lost, collect(watch, 10*time.Millisecond)...)
	}
	slices.Sort(lost)
	require.Equal(t, keys, lost, "every row announced lost")
	require.Empty(t, a.Owned())
	require.Less(t, time.Since(closed), o.LeaseTTL, "lost before the leases expire")
	_, err = a.Get(context.Background(), keys[0])
	require.ErrorIs(t, err, supervisor.ErrNotFound)
	_, ok := a.Fence(keys[0])
	require.False(t, ok)
	start := time.Now()
	require.Error(t, a.Close())
	require.Less(t, time.Since(start), 2*o.Renew)
}

func TestListenerResynchronisesAfterReconnect(t *testing.T) {
	url := testURL(t)
	db := newPool(t, url)
	prefix := testPrefix()
	// Renewals are slow here: what arrives within a second came from the
	// resynchronisation after the listener reconnected.
	o := postgres.Options{Node: "a", Prefix: prefix, LeaseTTL: 20 * time.Second, Renew: 4 * time.Second, StopGrace: 5 * time.Second}
	a := openTable(t, db, "jobs", o)
	require.NoError(t, a.Put(context.Background(), "old", []byte("1")))
	require.Eventually(t, func() bool { return len(a.Owned()) == 1 }, time.Second, 5*time.Millisecond, "claimed on the put's notification")
	watch, err := a.Watch(context.Background())
	require.NoError(t, err)

	var pids []int32
	require.NoError(t, pgx.BeginFunc(context.Background(), db, func(tx pgx.Tx) error {
		rows, err := tx.Query(context.Background(), `SELECT pid FROM pg_stat_activity WHERE query = $1`,
			`LISTEN "`+prefix+`changes"`)
		if err != nil {
			return err
		}
		pids, err = pgx.CollectRows(rows, pgx.RowTo[int32])
		return err
	}))
	require.Len(t, pids, 1, "one listening connection")
	_, err = db.Exec(context.Background(), `SELECT pg_terminate_backend($1)`, pids[0])
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var n int
		_ = db.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, pids[0]).Scan(&n)
		return n == 0
	}, time.Second, time.Millisecond)
	// Nobody listens: these notifications are lost.
	require.NoError(t, a.Put(context.Background(), "old", []byte("2")))
	require.NoError(t, a.Put(context.Background(), "new", []byte("1")))

	got := collect(watch, time.Second)
	require.Contains(t, got, "old", "a put missed by the listener is announced after the reconnect")
	require.Equal(t, []string{"new", "old"}, a.Owned(), "a row put while nobody listened is claimed after the reconnect")
	v, err := a.Get(context.Background(), "old")
	require.NoError(t, err)
	require.Equal(t, "2", v)
}
