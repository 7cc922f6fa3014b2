package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/postgres"
	"github.com/gosupervise/supervisor/postgres/pgtest"
)

// The chaos test: chaosNodes nodes share about chaosRows rows for
// chaosDuration while nodes crash, leave, are cut off from the database
// and come back, and rows are put, put again and deleted at random. No
// row may ever run on two nodes at once, and once the cluster has healed
// every row runs exactly once, with its latest data, on the node that
// owns it.
const (
	chaosNodes    = 3
	chaosRows     = 200
	chaosDuration = time.Minute
	chaosTable    = "jobs"
	// chaosSeed seeds the disruptions; chaosSeedEnv overrides it. Timing
	// is real, so a seed does not replay a run exactly.
	chaosSeed    = 20260101
	chaosSeedEnv = "SUPERVISOR_CHAOS_SEED"
	// chaosScanInterval is the supervisors' table re-read period.
	chaosScanInterval = 2 * time.Second
	// chaosCloseBound is how soon Close must return, even on a closed pool.
	chaosCloseBound = 2 * time.Second
	// chaosRunBound is how soon a supervisor's Run must return once its
	// context is cancelled: both stop timeouts, and slack.
	chaosRunBound = 5 * time.Second
)

func TestChaosNodesCrashAndRowsChangeYetEveryRowRunsExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos test runs for a minute")
	}
	c := newChaosCluster(t, testURL(t), chaosSeedFromEnv(t))
	for _, n := range c.nodes {
		c.start(n)
	}
	c.putInitialRows()
	c.disrupt(chaosDuration)
	c.heal()
	c.settle()
	c.shutdown()
	c.report()
}

func chaosSeedFromEnv(t *testing.T) uint64 {
	seed := uint64(chaosSeed)
	if s := os.Getenv(chaosSeedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, chaosSeedEnv)
		seed = v
	}
	t.Logf("seed %d (%s sets another)", seed, chaosSeedEnv)
	return seed
}

// chaosJob is a row's process: it records itself as running from the
// moment Run is called until Run returns, so the recorder sees every run
// at its longest. Like real work it takes a while to stop: up to the
// supervisor's StopTimeout after a graceful stop, at once when forced.
type chaosJob struct {
	key, node, data string
	stopTakes       time.Duration
	rec             *chaosRecorder
}

func (j *chaosJob) Run(ctx context.Context, ready supervisor.Callback) error {
	run := j.rec.started(j.key, j.node, j.data)
	defer j.rec.stopped(run)
	err := ready(ctx)
	stopping := time.NewTimer(j.stopTakes)
	defer stopping.Stop()
	select {
	case <-stopping.C:
	case <-ctx.Done():
	}
	return err
}

// chaosRun is one run of a row's process.
type chaosRun struct {
	key, node, data string
	since           time.Time
	overlapped      bool // another run of the key went on at the same time
}

// chaosRecorder knows every process running on any node, and every time
// a row ran twice at once.
type chaosRecorder struct {
	begin time.Time
	log   *slog.Logger

	mu         sync.Mutex
	running    map[string][]*chaosRun // by key
	lastNode   map[string]string      // node of the key's latest run
	perNode    map[string]int         // runs going on, by node
	violations []string
	starts     int
	moves      int // starts on another node than the key's previous run
	maxPerNode int
}

func (r *chaosRecorder) at(tm time.Time) string {
	return tm.Sub(r.begin).Truncate(time.Millisecond).String()
}

func (r *chaosRecorder) started(key, node, data string) *chaosRun {
	now := time.Now()
	run := &chaosRun{key: key, node: node, data: data, since: now}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, other := range r.running[key] {
		where := "another node"
		if other.node == node {
			where = "the same node"
		}
		other.overlapped, run.overlapped = true, true
		v := fmt.Sprintf("double run of row %q: started on %s at %s while running on %s %s since %s",
			key, node, r.at(now), where, other.node, r.at(other.since))
		r.violations = append(r.violations, v)
		r.log.Error("chaos: " + v)
	}
	r.running[key] = append(r.running[key], run)
	if last := r.lastNode[key]; last != "" && last != node {
		r.moves++
	}
	r.lastNode[key] = node
	r.starts++
	r.perNode[node]++
	r.maxPerNode = max(r.maxPerNode, r.perNode[node])
	return run
}

func (r *chaosRecorder) stopped(run *chaosRun) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	runs := r.running[run.key]
	if i := slices.Index(runs, run); i >= 0 {
		runs = slices.Delete(runs, i, i+1)
	}
	if len(runs) == 0 {
		delete(r.running, run.key)
	} else {
		r.running[run.key] = runs
	}
	r.perNode[run.node]--
	if run.overlapped {
		r.log.Error("chaos: a run of a row that ran twice at once stopped",
			"key", run.key, "node", run.node, "started", r.at(run.since), "stopped", r.at(now))
	}
}

// snapshot returns copies of the runs going on, by key.
func (r *chaosRecorder) snapshot() map[string][]chaosRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]chaosRun, len(r.running))
	for key, runs := range r.running {
		for _, run := range runs {
			out[key] = append(out[key], *run)
		}
	}
	return out
}

func (r *chaosRecorder) doubleRuns() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.violations)
}

// chaosNode is one of the cluster's node slots. Each time the slot starts
// it is a new incarnation with a node ID of its own, a pool, a Table and
// a supervisor; its pool always reaches the server through the slot's
// proxy, so the slot can be cut off from the database.
type chaosNode struct {
	slot        int
	incarnation int
	id          string
	proxy       *pgtest.Proxy
	pool        *pgxpool.Pool
	table       *postgres.Table[*chaosJob] // nil while the node is down
	stop        context.CancelFunc
	done        chan error    // the supervisor's Run result
	teardown    chan struct{} // closed when a crashed incarnation's Table is closed
	cut         bool
	cutSince    time.Time
	due         time.Time // when the node comes back up, or its cut ends
}

func (n *chaosNode) up() bool      { return n.table != nil }
func (n *chaosNode) healthy() bool { return n.up() && !n.cut }

// chaosStats counts what the chaos did.
type chaosStats struct {
	crashes, crashesWhileCut, cuts, longCuts, graceful int
	puts, putsAgain, reputs, deletes                   int
	longestCut, slowestClose                           time.Duration
	settledIn                                          time.Duration
}

// chaosCluster runs the nodes, the disruptions and the rows; only the
// test's goroutine touches it, but for the fields under mu.
type chaosCluster struct {
	t      *testing.T
	url    string
	target string // the server's host:port, behind every proxy
	prefix string
	opts   postgres.Options // of every node, Node aside
	rng    *rand.Rand
	rec    *chaosRecorder
	logs   *chaosLogs
	log    *slog.Logger
	nodes  []*chaosNode

	rows        map[string]string // the rows put and not deleted: key → data
	keys        []string          // rows' keys, for random picks
	gone        []string          // deleted keys, to put again
	nextKey     int
	nextVersion int

	stats chaosStats

	mu       sync.Mutex
	problems []string // slow closes, failed Runs
}

func newChaosCluster(t *testing.T, url string, seed uint64) *chaosCluster {
	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	if strings.HasPrefix(cfg.ConnConfig.Host, "/") {
		t.Skipf("the chaos test cuts nodes off with a TCP proxy; %s is a unix socket", cfg.ConnConfig.Host)
	}
	begin := time.Now()
	logs := &chaosLogs{begin: begin}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{ReplaceAttr: logs.elapsed}))
	c := &chaosCluster{
		t: t, url: url,
		target: net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))),
		prefix: testPrefix(),
		rng:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		logs:   logs, log: log,
		rec: &chaosRecorder{begin: begin, log: log, running: map[string][]*chaosRun{},
			lastNode: map[string]string{}, perNode: map[string]int{}},
		rows: map[string]string{},
	}
	c.opts = fast(c.prefix, "")
	c.opts.Logger = log
	t.Cleanup(c.dumpIfFailed) // registered first: runs last, once everything stopped
	t.Cleanup(c.cleanup)
	for i := range chaosNodes {
		proxy, err := pgtest.NewProxy(c.target)
		require.NoError(t, err)
		c.nodes = append(c.nodes, &chaosNode{slot: i + 1, proxy: proxy})
	}
	return c
}

// event writes one line of the test's own doing into the log.
func (c *chaosCluster) event(format string, args ...any) {
	c.log.Info("chaos: " + fmt.Sprintf(format, args...))
}

func (c *chaosCluster) problem(format string, args ...any) {
	p := fmt.Sprintf(format, args...)
	c.log.Error("chaos: " + p)
	c.mu.Lock()
	c.problems = append(c.problems, p)
	c.mu.Unlock()
}

// between returns a random duration in [lo, hi).
func (c *chaosCluster) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(c.rng.Int64N(int64(hi-lo)))
}

func (c *chaosCluster) decoder(node string) func(string, []byte) (*chaosJob, error) {
	return func(key string, data []byte) (*chaosJob, error) {
		stopTakes := rand.N(c.opts.StopGrace / 2)
		return &chaosJob{key: key, node: node, data: string(data), stopTakes: stopTakes, rec: c.rec}, nil
	}
}

// start brings a node slot up as a new incarnation.
func (c *chaosCluster) start(n *chaosNode) {
	t := c.t
	if n.cut {
		// A crashed node's pool may still be connecting through the cut:
		// its Close waits for that.
		c.restore(n)
	}
	if n.teardown != nil {
		select {
		case <-n.teardown:
		case <-time.After(chaosRunBound):
			t.Fatalf("%s: the crashed incarnation's pool and Table did not close within %v", n.id, chaosRunBound)
		}
		n.teardown = nil
	}
	n.incarnation++
	n.id = fmt.Sprintf("n%d.%d", n.slot, n.incarnation)
	cfg, err := pgxpool.ParseConfig(c.url)
	require.NoError(t, err)
	host, port, err := net.SplitHostPort(n.proxy.Addr())
	require.NoError(t, err)
	portNumber, err := strconv.ParseUint(port, 10, 16)
	require.NoError(t, err)
	cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Fallbacks = host, uint16(portNumber), nil

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	o := c.opts
	o.Node = n.id
	table, err := postgres.NewTable(ctx, pool, chaosTable, c.decoder(n.id), o)
	if err != nil {
		pool.Close()
		require.NoError(t, err, "%s: NewTable", n.id)
	}
	sup := supervisor.NewSupervisor[string, *chaosJob](table, supervisor.Options{
		Name: n.id, StopTimeout: o.StopGrace / 2, ScanInterval: chaosScanInterval, Logger: c.log,
	})
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(runCtx, nil) }()
	n.pool, n.table, n.stop, n.done = pool, table, stop, done
	c.event("start %s", n.id)
}

// stopSupervisor cancels the node's supervisor and waits for its Run.
func (c *chaosCluster) stopSupervisor(n *chaosNode) {
	n.stop()
	select {
	case err := <-n.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			c.problem("%s: supervisor Run returned %v", n.id, err)
		}
	case <-time.After(chaosRunBound):
		c.t.Fatalf("%s: supervisor Run did not return within %v of its cancel", n.id, chaosRunBound)
	}
}

// crash stops a node the hard way: its processes end with its supervisor,
// and its pool closes before its Table, so its leases are not released
// but expire. Closing the Table afterwards must still return promptly.
func (c *chaosCluster) crash(n *chaosNode, downFor time.Duration) {
	c.stats.crashes++
	if n.cut {
		c.stats.crashesWhileCut++
	}
	c.event("crash %s (cut %v, owns %d rows), down for %v", n.id, n.cut, len(n.table.Owned()), downFor)
	c.stopSupervisor(n)
	pool, table, id := n.pool, n.table, n.id
	n.pool, n.table, n.due = nil, nil, time.Now().Add(downFor)
	teardown := make(chan struct{})
	n.teardown = teardown
	go func() {
		defer close(teardown)
		began := time.Now()
		pool.Close()
		poolTook := time.Since(began)
		began = time.Now()
		err := table.Close()
		took := time.Since(began)
		c.event("%s: pool closed in %v; Close then took %v (%v)", id, poolTook, took, err)
		c.mu.Lock()
		c.stats.slowestClose = max(c.stats.slowestClose, took)
		c.mu.Unlock()
		if took > chaosCloseBound {
			c.problem("%s: Close on a closed pool took %v (bound %v)", id, took, chaosCloseBound)
		}
	}()
}

// leave stops a node the graceful way: supervisor first, then the Table,
// whose release lets the others take its rows at once.
func (c *chaosCluster) leave(n *chaosNode, downFor time.Duration) {
	c.stats.graceful++
	c.event("graceful stop of %s (owns %d rows), down for %v", n.id, len(n.table.Owned()), downFor)
	c.stopGracefully(n)
	n.due = time.Now().Add(downFor)
}

// stopGracefully stops the supervisor, then closes the Table and the pool.
func (c *chaosCluster) stopGracefully(n *chaosNode) {
	c.stopSupervisor(n)
	began := time.Now()
	require.NoError(c.t, n.table.Close(), "%s: Close", n.id)
	if took := time.Since(began); took > chaosCloseBound {
		c.problem("%s: graceful Close took %v (bound %v)", n.id, took, chaosCloseBound)
	}
	n.pool.Close()
	n.pool, n.table = nil, nil
}

// cutOff holds back every byte between a node and the server; its
// supervisor keeps running and must stop the node's rows on its own.
func (c *chaosCluster) cutOff(n *chaosNode, cutFor time.Duration) {
	c.stats.cuts++
	if cutFor > c.opts.LeaseTTL {
		c.stats.longCuts++
	}
	c.event("cut %s off (owns %d rows) for %v", n.id, len(n.table.Owned()), cutFor)
	n.proxy.Cut()
	n.cut, n.cutSince, n.due = true, time.Now(), time.Now().Add(cutFor)
}

func (c *chaosCluster) restore(n *chaosNode) {
	n.proxy.Restore()
	n.cut = false
	took := time.Since(n.cutSince)
	c.stats.longestCut = max(c.stats.longestCut, took)
	owned := -1
	if n.up() {
		owned = len(n.table.Owned())
	}
	c.event("restore %s after %v (owns %d rows)", n.id, took, owned)
}

// healthyNode returns a random node that is up and not cut off.
func (c *chaosCluster) healthyNode() *chaosNode {
	var healthy []*chaosNode
	for _, n := range c.nodes {
		if n.healthy() {
			healthy = append(healthy, n)
		}
	}
	require.NotEmpty(c.t, healthy, "one node is always up and connected")
	return healthy[c.rng.IntN(len(healthy))]
}

func (c *chaosCluster) putInitialRows() {
	for range chaosRows {
		c.putNew(c.healthyNode())
	}
	c.event("%d rows put", chaosRows)
}

func (c *chaosCluster) put(n *chaosNode, key string) {
	c.nextVersion++
	data := fmt.Sprintf("%s/v%d", key, c.nextVersion)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(c.t, n.table.Put(ctx, key, []byte(data)), "put %q through %s", key, n.id)
	if _, ok := c.rows[key]; !ok {
		c.keys = append(c.keys, key)
	}
	c.rows[key] = data
}

func (c *chaosCluster) putNew(n *chaosNode) {
	if len(c.gone) > 0 && c.rng.IntN(2) == 0 {
		i := c.rng.IntN(len(c.gone))
		key := c.gone[i]
		c.gone = slices.Delete(c.gone, i, i+1)
		c.stats.putsAgain++
		c.put(n, key)
		return
	}
	c.stats.puts++
	c.put(n, fmt.Sprintf("row-%04d", c.nextKey))
	c.nextKey++
}

func (c *chaosCluster) delete(n *chaosNode) {
	i := c.rng.IntN(len(c.keys))
	key := c.keys[i]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ok, err := n.table.Delete(ctx, key)
	require.NoError(c.t, err, "delete %q through %s", key, n.id)
	require.True(c.t, ok, "delete %q through %s: the row exists", key, n.id)
	c.keys = slices.Delete(c.keys, i, i+1)
	delete(c.rows, key)
	c.gone = append(c.gone, key)
	c.stats.deletes++
}

// changeRow puts a row again (its owner replaces the process), deletes
// one or puts a new one, keeping about chaosRows rows.
func (c *chaosCluster) changeRow() {
	n := c.healthyNode()
	r := c.rng.IntN(100)
	switch {
	case len(c.keys) == 0:
		c.putNew(n)
	case r < 35:
		c.stats.reputs++
		c.put(n, c.keys[c.rng.IntN(len(c.keys))])
	case len(c.keys) > chaosRows && r < 75, len(c.keys) > chaosRows/2 && r < 55:
		c.delete(n)
	default:
		c.putNew(n)
	}
}

// disruptNode crashes, cuts off or stops one node, always leaving one up
// and connected. Cuts last from well under the loss deadline to well over
// the lease TTL.
func (c *chaosCluster) disruptNode() {
	var healthy, cut []*chaosNode
	for _, n := range c.nodes {
		switch {
		case n.healthy():
			healthy = append(healthy, n)
		case n.up():
			cut = append(cut, n)
		}
	}
	r := c.rng.IntN(100)
	switch {
	case r < 15 && len(cut) > 0:
		c.crash(cut[c.rng.IntN(len(cut))], c.between(300*time.Millisecond, 5*time.Second))
	case len(healthy) < 2:
	case r < 55:
		c.cutOff(healthy[c.rng.IntN(len(healthy))], c.between(200*time.Millisecond, 7*time.Second))
	case r < 85:
		c.crash(healthy[c.rng.IntN(len(healthy))], c.between(300*time.Millisecond, 5*time.Second))
	default:
		c.leave(healthy[c.rng.IntN(len(healthy))], c.between(300*time.Millisecond, 4*time.Second))
	}
}

// disrupt runs the chaos for d: a row change every few tens of
// milliseconds, a node disrupted every second or so, nodes back up and
// cuts restored when due.
func (c *chaosCluster) disrupt(d time.Duration) {
	end := time.Now().Add(d)
	nextNodeEvent := time.Now().Add(c.between(500*time.Millisecond, 2*time.Second))
	for time.Now().Before(end) {
		time.Sleep(c.between(5*time.Millisecond, 40*time.Millisecond))
		now := time.Now()
		for _, n := range c.nodes {
			switch {
			case !n.up() && !now.Before(n.due):
				c.start(n)
			case n.up() && n.cut && !now.Before(n.due):
				c.restore(n)
			}
		}
		if !now.Before(nextNodeEvent) {
			c.disruptNode()
			nextNodeEvent = now.Add(c.between(300*time.Millisecond, 2*time.Second))
		}
		c.changeRow()
	}
}

// heal restores every cut and brings every node back up.
func (c *chaosCluster) heal() {
	c.event("healing: %d rows", len(c.rows))
	for _, n := range c.nodes {
		switch {
		case !n.up():
			c.start(n)
		case n.cut:
			c.restore(n)
		}
	}
}

// check compares the cluster with the rows put and not deleted: each runs
// exactly once, with its latest data, on the node whose Owned lists it,
// and the live nodes' Owned partition the rows.
func (c *chaosCluster) check() []string {
	var problems []string
	owner := map[string]string{}
	for _, n := range c.nodes {
		for _, key := range n.table.Owned() {
			if other, dup := owner[key]; dup {
				problems = append(problems, fmt.Sprintf("row %q owned by %s and %s", key, other, n.id))
			}
			owner[key] = n.id
			if _, ok := c.rows[key]; !ok {
				problems = append(problems, fmt.Sprintf("deleted row %q owned by %s", key, n.id))
			}
		}
	}
	running := c.rec.snapshot()
	for _, key := range slices.Sorted(maps.Keys(c.rows)) {
		runs := running[key]
		switch {
		case len(runs) == 0:
			problems = append(problems, fmt.Sprintf("row %q runs nowhere (owned by %q)", key, owner[key]))
		case len(runs) > 1:
			problems = append(problems, fmt.Sprintf("row %q runs %d times: %v", key, len(runs), runs))
		case runs[0].data != c.rows[key]:
			problems = append(problems, fmt.Sprintf("row %q runs data %q on %s, want %q",
				key, runs[0].data, runs[0].node, c.rows[key]))
		case runs[0].node != owner[key]:
			problems = append(problems, fmt.Sprintf("row %q runs on %s, owned by %q", key, runs[0].node, owner[key]))
		}
	}
	for key, runs := range running {
		if _, ok := c.rows[key]; !ok {
			problems = append(problems, fmt.Sprintf("deleted row %q still runs: %v", key, runs))
		}
	}
	return problems
}

// settle waits for the healed cluster to run every row exactly once: the
// last leases of crashed nodes expire within LeaseTTL, the rows shed to
// the nodes that came back move after StopGrace, and each step waits for
// a renewal. Then it checks that nothing moves any more.
func (c *chaosCluster) settle() {
	bound := c.opts.LeaseTTL + c.opts.StopGrace + 5*c.opts.Renew
	began := time.Now()
	problems := c.check()
	for len(problems) > 0 && time.Since(began) < bound {
		time.Sleep(20 * time.Millisecond)
		problems = c.check()
	}
	c.stats.settledIn = time.Since(began)
	if len(problems) > 0 {
		c.t.Errorf("not settled %v after healing (%d problems):\n%s",
			bound, len(problems), strings.Join(chaosFirst(problems, 30), "\n"))
		return
	}
	c.event("settled in %v", c.stats.settledIn)
	time.Sleep(5 * c.opts.Renew)
	if problems := c.check(); len(problems) > 0 {
		c.t.Errorf("settled, then moved again (%d problems):\n%s",
			len(problems), strings.Join(chaosFirst(problems, 30), "\n"))
	}
}

func chaosFirst(lines []string, n int) []string {
	if len(lines) > n {
		return append(lines[:n:n], fmt.Sprintf("... and %d more", len(lines)-n))
	}
	return lines
}

// shutdown stops every node gracefully and checks that no process is
// left running.
func (c *chaosCluster) shutdown() {
	for _, n := range c.nodes {
		if n.up() {
			c.event("final stop of %s (owns %d rows)", n.id, len(n.table.Owned()))
			c.stopGracefully(n)
		}
	}
	c.cleanup()
	require.Empty(c.t, c.rec.snapshot(), "processes still running after every node stopped")
}

// cleanup stops whatever still runs; it is also the test's cleanup when
// it fails early.
func (c *chaosCluster) cleanup() {
	for _, n := range c.nodes {
		if n.up() {
			n.stop()
			select {
			case <-n.done:
			case <-time.After(chaosRunBound):
				c.t.Errorf("%s: supervisor Run did not return within %v", n.id, chaosRunBound)
			}
			_ = n.table.Close()
			n.pool.Close()
			n.pool, n.table = nil, nil
		}
		if n.teardown != nil {
			<-n.teardown
			n.teardown = nil
		}
		if n.proxy != nil {
			_ = n.proxy.Close()
			n.proxy = nil
		}
	}
}

func (c *chaosCluster) report() {
	t, s := c.t, c.stats
	r := c.rec
	r.mu.Lock()
	starts, moves, maxPerNode := r.starts, r.moves, r.maxPerNode
	r.mu.Unlock()
	t.Logf("chaos: %d crashes (%d of cut-off nodes), %d cuts (%d longer than LeaseTTL, longest %v), %d graceful restarts",
		s.crashes, s.crashesWhileCut, s.cuts, s.longCuts, s.longestCut.Truncate(time.Millisecond), s.graceful)
	t.Logf("chaos: %d new rows put, %d deleted rows put again, %d re-puts, %d deletes; %d rows at the end",
		s.puts, s.putsAgain, s.reputs, s.deletes, len(c.rows))
	t.Logf("chaos: %d process starts, %d failovers (a row started on another node than its previous run), "+
		"at most %d rows running on one node", starts, moves, maxPerNode)
	t.Logf("chaos: settled %v after healing; slowest Close on a closed pool %v",
		s.settledIn.Truncate(time.Millisecond), s.slowestClose.Truncate(time.Microsecond))
	if v := r.doubleRuns(); len(v) > 0 {
		t.Errorf("%d double runs:\n%s", len(v), strings.Join(chaosFirst(v, 30), "\n"))
	}
	c.mu.Lock()
	problems := slices.Clone(c.problems)
	c.mu.Unlock()
	if len(problems) > 0 {
		t.Errorf("%d problems:\n%s", len(problems), strings.Join(chaosFirst(problems, 30), "\n"))
	}
}

// dumpIfFailed writes the whole log — the library's and the test's own
// events, on one clock — to a file when the test failed.
func (c *chaosCluster) dumpIfFailed() {
	if !c.t.Failed() {
		return
	}
	f, err := os.CreateTemp("", "postgres-chaos-*.log")
	if err != nil {
		c.t.Logf("chaos: cannot write the log: %v", err)
		return
	}
	defer func() { _ = f.Close() }()
	c.logs.mu.Lock()
	_, err = f.Write(c.logs.buf)
	c.logs.mu.Unlock()
	if err != nil {
		c.t.Logf("chaos: cannot write the log: %v", err)
		return
	}
	c.t.Logf("chaos: the library's and the test's log is in %s", f.Name())
}

// chaosLogs keeps every log line in memory, timed from the test's start.
type chaosLogs struct {
	begin time.Time
	mu    sync.Mutex
	buf   []byte
}

func (l *chaosLogs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	return len(p), nil
}

func (l *chaosLogs) elapsed(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 {
		return slog.String("t", a.Value.Time().Sub(l.begin).Truncate(time.Microsecond).String())
	}
	return a
}
