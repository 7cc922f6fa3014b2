// Cluster is a tour of package postgres: three nodes share one table of 30
// rows in PostgreSQL, each row's process runs on exactly one node at a
// time, and when a node dies its rows move to the others once its leases
// expire. Run it from the repository root with
//
//	go run ./examples/cluster                        # a throwaway cluster
//	go run ./examples/cluster -url postgres://...    # an existing server
//
// Without -url it uses $SUPERVISOR_TEST_DATABASE_URL, or else starts a
// throwaway PostgreSQL cluster from the server binaries on the machine
// (package pgtest) and removes it at the end.
//
// The three nodes, n1, n2 and n3, live in one process, but each has what a
// node on its own machine has: its own connection pool, its own
// postgres.Table and its own Supervisor running the rows the table gives
// it. n1 comes up alone and puts the 30 rows: it runs them all. Then n2
// and n3 join: n1 is over its fair share, stops 20 of its processes and
// releases their leases StopGrace later, and the newcomers claim them.
// The tour prints every row as it moves and, once every row runs exactly
// once, 10 on each node, the distribution. Then n2 crashes: its
// supervisor stops and its pool closes without a word to the others, so
// its leases are not released and must expire. The tour prints each of
// its rows as it moves to n1 or n3, the new distribution and the time the
// failover took against its bound, LeaseTTL + Renew. Every process
// reports where it runs to a tracker, which checks all along that no row
// ever runs on two nodes at once.
//
// The timings are short so that the tour takes seconds: a 3s lease, renewed
// every 300ms, and 1s for a node's processes to stop. Each run works under
// a prefix of its own, so runs against a shared server never meet, and it
// drops its own tables at the end. It exits 0 when every row ran exactly
// once all along; Ctrl-C stops it early, cleanly.
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/postgres"
	"github.com/gosupervise/supervisor/postgres/pgtest"
)

func main() {
	os.Exit(realMain())
}

// realMain is main with its exit code returned, so that the deferred
// clean-up runs before the program exits.
func realMain() int {
	url := flag.String("url", os.Getenv(pgtest.EnvURL),
		"PostgreSQL URL; default $"+pgtest.EnvURL+", else a throwaway cluster")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	if *url == "" {
		server, err := pgtest.Start(ctx)
		if errors.Is(err, pgtest.ErrNoServer) {
			fmt.Fprintln(os.Stderr, "cluster example: no PostgreSQL server:", pgtest.InstallHint)
			return 1
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "cluster example:", err)
			return 1
		}
		defer server.Close()
		*url = server.URL()
	}
	if err := run(ctx, os.Stdout, *url); err != nil {
		fmt.Fprintln(os.Stderr, "cluster example:", err)
		return 1
	}
	return 0
}

const (
	rowCount  = 30
	tableName = "jobs"

	// StopGrace + 2×Renew must stay below LeaseTTL: a node cut off from
	// the database stops its processes LeaseTTL − StopGrace − Renew after
	// its last renewal, before any of its leases can expire.
	leaseTTL  = 3 * time.Second
	renew     = 300 * time.Millisecond
	stopGrace = time.Second

	balanceTimeout = 20 * time.Second
	// failoverBound is how long the rows of a dead node take to move at
	// most: its leases expire LeaseTTL after its last renewal, and the
	// others claim them at their next renewal.
	failoverBound   = leaseTTL + renew
	failoverTimeout = failoverBound + 10*time.Second
)

// The node that puts the rows, the node that dies, and all three.
const (
	writer = "n1"
	victim = "n2"
)

var nodeNames = []string{"n1", "n2", "n3"}

// run is the whole program; main only reads the flags, starts a
// throwaway cluster if need be and handles Ctrl-C, so that a test can run
// the tour.
func run(ctx context.Context, out io.Writer, url string) (err error) {
	con := newConsole(out)
	prefix := newPrefix()
	con.printf("main", "%d rows, 3 nodes, prefix %s; LeaseTTL %s, Renew %s, StopGrace %s",
		rowCount, prefix, leaseTTL, renew, stopGrace)
	tr := newTracker(con)

	// The tour prints what happens instead of logging it; a real program
	// keeps a logger (nil means slog.Default()).
	quiet := slog.New(slog.DiscardHandler)
	c := &cluster{con: con, tracker: tr, prefix: prefix, url: url, logger: quiet}
	defer func() { err = errors.Join(err, c.shutdown()) }()

	// n1 comes up alone and puts the rows: they are all its own.
	if err := c.join(ctx, writer); err != nil {
		return err
	}
	if err := c.fill(ctx); err != nil {
		return err
	}
	// n2 and n3 join: n1 sheds two thirds of its rows to them.
	if err := c.join(ctx, nodeNames[1:]...); err != nil {
		return err
	}
	if err := c.balance(ctx); err != nil {
		return err
	}
	if err := c.failover(ctx); err != nil {
		return err
	}
	if doubles := tr.doubleRuns(); len(doubles) > 0 {
		return fmt.Errorf("%d double runs: %s", len(doubles), strings.Join(doubles, "; "))
	}
	con.printf("main", "no row ever ran on two nodes at once")
	return nil
}

// newPrefix returns a table prefix no other run uses.
func newPrefix() string {
	var random [4]byte
	_, _ = rand.Read(random[:]) // crypto/rand.Read never fails
	return "cluster_" + hex.EncodeToString(random[:]) + "_"
}

// cluster is the tour's three nodes.
type cluster struct {
	con     *console
	tracker *tracker
	prefix  string
	url     string
	logger  *slog.Logger
	nodes   []*node
}

// node is what one machine of a real cluster has.
type node struct {
	name  string
	db    *pgxpool.Pool
	table *postgres.Table[*job]
	sup   *supervisor.Supervisor[string, *job]

	cancel  context.CancelFunc // stops the supervisor
	ready   chan struct{}      // closed once the supervisor has started its first rows
	done    chan struct{}      // closed once the supervisor's Run has returned
	runErr  error              // Run's error, read after done
	crashed bool               // its pool was closed under its table
}

// open connects a node and opens its table and supervisor.
func (c *cluster) open(ctx context.Context, name string) (*node, error) {
	db, err := pgxpool.New(ctx, c.url)
	if err != nil {
		return nil, fmt.Errorf("node %s: connect: %w", name, err)
	}
	n := &node{name: name, db: db}
	c.nodes = append(c.nodes, n)
	// The supervisor decodes rows only after NewTable has returned, so
	// n.table is set by the time a job needs it.
	decode := func(key string, data []byte) (*job, error) {
		if len(data) == 0 {
			return nil, fmt.Errorf("row %s has no work", key)
		}
		return &job{key: key, work: string(data), node: n, tracker: c.tracker}, nil
	}
	n.table, err = postgres.NewTable(ctx, db, tableName, decode, postgres.Options{
		Node: name, Prefix: c.prefix, Logger: c.logger,
		LeaseTTL: leaseTTL, Renew: renew, StopGrace: stopGrace,
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	n.sup = supervisor.NewSupervisor(n.table, supervisor.Options{
		Name:        name,
		StopTimeout: stopGrace / 2, // StopGrace is twice the supervisor's StopTimeout
		Logger:      c.logger,
	})
	return n, nil
}

// start runs the node's supervisor until stop.
func (n *node) start(ctx context.Context) {
	ctx, n.cancel = context.WithCancel(ctx)
	n.ready, n.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(n.done)
		n.runErr = n.sup.Run(ctx, func(ctx context.Context) error {
			close(n.ready)
			<-ctx.Done()
			return nil
		})
	}()
}

func (n *node) awaitReady(ctx context.Context) error {
	select {
	case <-n.ready:
		return nil
	case <-n.done:
		return fmt.Errorf("node %s: supervisor: %w", n.name, n.runErr)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop stops the node's supervisor and waits until its processes have
// stopped.
func (n *node) stop() error {
	if n.cancel == nil {
		return nil
	}
	n.cancel()
	<-n.done
	n.cancel = nil
	if n.runErr != nil && !errors.Is(n.runErr, context.Canceled) {
		return fmt.Errorf("node %s: supervisor: %w", n.name, n.runErr)
	}
	return nil
}

func (c *cluster) node(name string) *node {
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	panic("no node " + name)
}

// join opens and starts the named nodes and waits until their
// supervisors run the rows their tables gave them.
func (c *cluster) join(ctx context.Context, names ...string) error {
	c.tracker.since(time.Now(), strings.Join(names, " and ")+" joined")
	var joined []*node
	for _, name := range names {
		n, err := c.open(ctx, name)
		if err != nil {
			return err
		}
		n.start(ctx)
		joined = append(joined, n)
	}
	for _, n := range joined {
		if err := n.awaitReady(ctx); err != nil {
			return err
		}
	}
	if len(names) == 1 {
		c.con.printf("main", "%s is up, with its own pool, table and supervisor", names[0])
	} else {
		c.con.printf("main", "%s are up, each with its own pool, table and supervisor", strings.Join(names, " and "))
	}
	return nil
}

// fill puts the rows from the writer and waits until it runs them all.
func (c *cluster) fill(ctx context.Context) error {
	start := time.Now()
	for i := 1; i <= rowCount; i++ {
		key := fmt.Sprintf("job-%02d", i)
		if err := c.node(writer).table.Put(ctx, key, fmt.Appendf(nil, "report batch %d", i)); err != nil {
			return err
		}
	}
	c.con.printf(writer, "put %d rows, job-01 … job-%02d", rowCount, rowCount)
	at, err := c.settle(ctx, c.nodes, rowCount, balanceTimeout)
	if err != nil {
		return fmt.Errorf("first rows: %w", err)
	}
	c.con.printf(writer, "runs all %d rows, %s after the first put", rowCount, secs(at.Sub(start)))
	return nil
}

// balance waits until every node runs its fair share: each node over it
// stops the rows it gives up and releases their leases StopGrace later,
// and the others claim them.
func (c *cluster) balance(ctx context.Context) error {
	share := (rowCount + len(c.nodes) - 1) / len(c.nodes)
	at, err := c.settle(ctx, c.nodes, share, balanceTimeout)
	if err != nil {
		return fmt.Errorf("balancing: %w", err)
	}
	c.con.printf("main", "every row runs exactly once, %d on each node, %s:", share, c.tracker.sinceEpoch(at))
	c.printDistribution(c.nodes)
	return nil
}

// failover crashes the victim and waits until its rows run on the others.
func (c *cluster) failover(ctx context.Context) error {
	dead := c.node(victim)
	var live []*node
	for _, n := range c.nodes {
		if n != dead {
			live = append(live, n)
		}
	}
	// A crash: the node's processes end and it says nothing to the
	// others. Table.Close would release its leases for the others to take
	// at once; without it they must expire.
	killed := time.Now()
	c.tracker.since(killed, "the crash")
	rows := len(dead.table.Owned())
	c.con.printf("main", "crashing %s with %d rows: its supervisor stops and its pool closes, "+
		"its leases are not released", victim, rows)
	if err := dead.stop(); err != nil {
		return err
	}
	dead.crashed = true
	dead.db.Close()

	share := (rowCount + len(live) - 1) / len(live)
	if _, err := c.settle(ctx, live, share, failoverTimeout); err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	first, last, moved := c.tracker.movesFrom(victim, killed)
	c.con.printf("main", "every row runs exactly once again, %d on each of %s and %s:", share, live[0].name, live[1].name)
	c.printDistribution(live)
	verdict := "within"
	if last > failoverBound {
		verdict = "over"
	}
	c.con.printf("main", "failover: %d rows of %s moved %s to %s after the crash, %s the bound LeaseTTL + Renew = %s",
		moved, victim, secs(first), secs(last), verdict, failoverBound)
	if moved != rows {
		return fmt.Errorf("failover: %d of %s's %d rows moved", moved, victim, rows)
	}

	// The dead node's table has been renewing into a closed pool all
	// along, which it takes for an unreachable database; closing it must
	// not hang, and its release fails: the leases had to expire.
	closeStart := time.Now()
	closeErr := dead.table.Close()
	c.con.printf(victim, "table closed in %s; its release failed, as it must: %v",
		time.Since(closeStart).Round(10*time.Microsecond), closeErr)
	return nil
}

// settle waits until the nodes each run share rows, every row runs
// exactly once, and each node's processes are the rows its table owns;
// then it waits two more renewals and checks that nothing moved. It
// returns when the nodes had settled.
func (c *cluster) settle(ctx context.Context, nodes []*node, share int, timeout time.Duration) (time.Time, error) {
	settled := func() error {
		running := c.tracker.byNode()
		total := 0
		for name, keys := range running {
			if !slices.ContainsFunc(nodes, func(n *node) bool { return n.name == name }) {
				return fmt.Errorf("%d rows still run on %s", len(keys), name)
			}
		}
		for _, n := range nodes {
			keys, owned := running[n.name], n.table.Owned()
			if !slices.Equal(keys, owned) {
				return fmt.Errorf("%s runs %d rows and owns %d", n.name, len(keys), len(owned))
			}
			if len(keys) != share {
				return fmt.Errorf("%s runs %d rows, not %d", n.name, len(keys), share)
			}
			total += len(keys)
		}
		if total != rowCount {
			return fmt.Errorf("%d rows run, not %d", total, rowCount)
		}
		return nil
	}
	if err := c.tracker.await(ctx, timeout, func() bool { return settled() == nil }); err != nil {
		if detail := settled(); detail != nil && ctx.Err() == nil {
			return time.Time{}, fmt.Errorf("%w: %w", err, detail)
		}
		return time.Time{}, err
	}
	at, moves := time.Now(), c.tracker.moveCount()
	timer := time.NewTimer(2 * renew)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	}
	if err := settled(); err != nil {
		return time.Time{}, fmt.Errorf("unsettled after two more renewals: %w", err)
	}
	if moved := c.tracker.moveCount() - moves; moved > 0 {
		return time.Time{}, fmt.Errorf("%d rows moved after the nodes had settled", moved)
	}
	return at, nil
}

func (c *cluster) printDistribution(nodes []*node) {
	running := c.tracker.byNode()
	for _, n := range nodes {
		c.con.printf(n.name, "runs %2d: %s", len(running[n.name]), strings.Join(running[n.name], " "))
	}
}

// shutdown stops every supervisor first, so that no process runs when
// its lease is released, then closes the tables, drops this run's tables
// in the database and closes the pools.
func (c *cluster) shutdown() error {
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.stop())
	}
	var opened *node // a node whose table was opened and whose pool is open
	for _, n := range c.nodes {
		if n.table == nil {
			continue
		}
		// A crashed node's table was closed after its pool: its error
		// is expected, and a second Close returns it again.
		if err := n.table.Close(); !n.crashed {
			errs = append(errs, err)
			opened = cmp.Or(opened, n)
		}
	}
	if opened != nil {
		errs = append(errs, c.dropTables(opened.db))
	}
	for _, n := range c.nodes {
		n.db.Close() // a second Close does nothing
	}
	err := errors.Join(errs...)
	if err == nil && opened != nil {
		c.con.printf("main", "shut down: supervisors stopped, tables closed and dropped, pools closed")
	}
	return err
}

// dropTables drops the tables of this run's prefix, and nothing else.
func (c *cluster) dropTables(db *pgxpool.Pool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := db.Query(ctx, `SELECT tablename FROM pg_tables
WHERE schemaname = current_schema() AND starts_with(tablename, $1)`, c.prefix)
	if err != nil {
		return fmt.Errorf("list the tables of prefix %s: %w", c.prefix, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list the tables of prefix %s: %w", c.prefix, err)
	}
	for _, name := range names {
		if _, err := db.Exec(ctx, `DROP TABLE IF EXISTS `+pgx.Identifier{name}.Sanitize()); err != nil {
			return fmt.Errorf("drop table %s: %w", name, err)
		}
	}
	return nil
}

// job is the process of one row. Reporting where it runs is all it does
// here; a real job works between the start of the callback and its
// return, and fences its external writes with the row's fence, which
// every claim raises.
type job struct {
	key     string
	work    string // the row's data
	node    *node
	tracker *tracker
}

// Run reports the job to the tracker, calls callback at once (the job is
// ready) and reports it stopped when callback returns: when the
// supervisor asks it to stop, or its context ends.
func (j *job) Run(ctx context.Context, callback supervisor.Callback) error {
	fence, ok := j.node.table.Fence(j.key)
	if !ok {
		return fmt.Errorf("row %s: %s holds no lease on it", j.key, j.node.name)
	}
	j.tracker.started(j.key, j.node.name, j.work, fence)
	defer j.tracker.stopped(j.key, j.node.name)
	return callback(ctx)
}

// tracker is where every process reports where it runs: the view of the
// whole cluster that no node has. It prints every row that starts on
// another node than the last time, and every row that starts while it
// runs somewhere already — which must never happen.
type tracker struct {
	con     *console
	changed chan struct{} // capacity 1: a process started or stopped

	mu      sync.Mutex
	running map[string][]string // key → the nodes running it
	last    map[string]string   // key → the node it last started on
	moves   []move
	doubles []string
	epoch   time.Time // moves are timed from here
	what    string    // what happened at epoch
}

type move struct {
	key, from, to string
	at            time.Time
}

func newTracker(con *console) *tracker {
	return &tracker{con: con, changed: make(chan struct{}, 1),
		running: map[string][]string{}, last: map[string]string{}, epoch: time.Now(), what: "the start"}
}

// since times the moves that follow from t, when what happened.
func (t *tracker) since(at time.Time, what string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.epoch, t.what = at, what
}

// sinceEpoch says how long after the epoch at was: "1.234s after n2 and
// n3 joined".
func (t *tracker) sinceEpoch(at time.Time) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.sinceEpochLocked(at)
}

func (t *tracker) sinceEpochLocked(at time.Time) string {
	return secs(at.Sub(t.epoch)) + " after " + t.what
}

func (t *tracker) started(key, node, work string, fence int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if others := t.running[key]; len(others) > 0 {
		double := fmt.Sprintf("row %s (%s) started on %s while it runs on %s", key, work, node, strings.Join(others, " and "))
		t.doubles = append(t.doubles, double)
		t.con.printf("DOUBLE", "%s", double)
	}
	t.running[key] = append(t.running[key], node)
	if from := t.last[key]; from != "" && from != node {
		now := time.Now()
		t.moves = append(t.moves, move{key: key, from: from, to: node, at: now})
		t.con.printf("move", "row %s: %s → %s %s (fence %d)", key, from, node, t.sinceEpochLocked(now), fence)
	}
	t.last[key] = node
	t.signal()
}

func (t *tracker) stopped(key, node string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	nodes := t.running[key]
	if i := slices.Index(nodes, node); i >= 0 {
		nodes = slices.Delete(nodes, i, i+1)
	}
	if len(nodes) == 0 {
		delete(t.running, key)
	} else {
		t.running[key] = nodes
	}
	t.signal()
}

func (t *tracker) signal() {
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// byNode returns the sorted keys each node runs.
func (t *tracker) byNode() map[string][]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	byNode := map[string][]string{}
	for key, nodes := range t.running {
		for _, node := range nodes {
			byNode[node] = append(byNode[node], key)
		}
	}
	for _, keys := range byNode {
		slices.Sort(keys)
	}
	return byNode
}

func (t *tracker) moveCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.moves)
}

// movesFrom counts the moves away from node after since, and says when
// the first and the last came.
func (t *tracker) movesFrom(node string, since time.Time) (first, last time.Duration, n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range t.moves {
		if m.from != node || m.at.Before(since) {
			continue
		}
		after := m.at.Sub(since)
		if n == 0 {
			first = after
		}
		last = max(last, after)
		n++
	}
	return first, last, n
}

func (t *tracker) doubleRuns() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.doubles)
}

// await waits until cond holds, looking again whenever a process starts
// or stops and every 50ms (a table's ownership changes before the
// processes follow it).
func (t *tracker) await(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for !cond() {
		select {
		case <-t.changed:
		case <-poll.C:
		case <-deadline.C:
			return fmt.Errorf("not settled after %s", timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// secs formats d as seconds with milliseconds.
func secs(d time.Duration) string {
	return fmt.Sprintf("%.3fs", d.Seconds())
}

// console prints lines prefixed with the time since start. Processes
// report from their own goroutines, hence the mutex.
type console struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
}

func newConsole(out io.Writer) *console {
	return &console{out: out, start: time.Now()}
}

func (c *console) printf(tag, format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.out, "%6.3fs  %-6s %s\n", time.Since(c.start).Seconds(), tag, fmt.Sprintf(format, args...))
}
