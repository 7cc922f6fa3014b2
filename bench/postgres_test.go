package bench_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/postgres"
	"github.com/gosupervise/supervisor/postgres/pgtest"
)

// Postgres: several nodes sharing one table (github.com/gosupervise/
// supervisor/postgres) against a real server: a throwaway cluster
// (pgtest) or SUPERVISOR_TEST_DATABASE_URL. Each node has a pool of its
// own whose connections count what they send (pgCounter): round trips,
// statements, rows written, pings and bytes on the wire, the LISTEN
// connection included (the Table opens it with a copy of the pool's
// connection configuration). Every run works under a Prefix of its own
// and drops its tables afterwards. See BENCHMARKS.md §8.

const (
	pgTableName    = "bench"
	pgDefaultRenew = postgres.DefaultRenew // the at-rest figures are normalised to it
	pgClaimSQL     = "WITH c AS"           // how the Table's claim statement begins
)

// pgFailoverOptions are the lease options of the failover benchmarks.
var pgFailoverOptions = postgres.Options{
	LeaseTTL: 3 * time.Second, Renew: 300 * time.Millisecond, StopGrace: time.Second}

// pgRestOptions are the at-rest benchmark's: the default LeaseTTL and
// StopGrace, Renew scaled down from 5s to 2s. Above one second, as at the
// default, the pool pings every connection it hands out, since each has
// been idle a whole Renew.
var pgRestOptions = postgres.Options{Renew: 2 * time.Second}

var pgRunID = fmt.Sprintf("%06x", rand.Int32N(1<<24))
var pgPrefixes atomic.Int64

// pgPrefix returns a Prefix no other run uses, on this server or another
// run's.
func pgPrefix() string {
	return fmt.Sprintf("bench%s_%d_", pgRunID, pgPrefixes.Add(1))
}

func pgDecode(_ string, data []byte) (string, error) { return string(data), nil }

// pgCounts is what a node's connections did.
type pgCounts struct {
	roundTrips  int64 // queries, batches and pings: one round trip each
	statements  int64 // queries and the statements in batches
	batches     int64 // batches: the Table sends one per renewal cycle
	claims      int64 // claim statements
	pings       int64 // liveness pings of the pool on handing out a connection
	rowsWritten int64 // rows inserted, updated or deleted (command tags)
	wireBytes   int64 // bytes read and written on every connection
}

func (c pgCounts) minus(o pgCounts) pgCounts {
	return pgCounts{c.roundTrips - o.roundTrips, c.statements - o.statements,
		c.batches - o.batches, c.claims - o.claims, c.pings - o.pings,
		c.rowsWritten - o.rowsWritten, c.wireBytes - o.wireBytes}
}

func (c pgCounts) plus(o pgCounts) pgCounts {
	return pgCounts{c.roundTrips + o.roundTrips, c.statements + o.statements,
		c.batches + o.batches, c.claims + o.claims, c.pings + o.pings,
		c.rowsWritten + o.rowsWritten, c.wireBytes + o.wireBytes}
}

// pgRates are pgCounts divided by something: per node and cycle, per call.
type pgRates struct {
	roundTrips, statements, batches, claims, pings, rowsWritten, wireBytes float64
}

func (c pgCounts) per(d float64) pgRates {
	return pgRates{float64(c.roundTrips) / d, float64(c.statements) / d, float64(c.batches) / d,
		float64(c.claims) / d, float64(c.pings) / d, float64(c.rowsWritten) / d, float64(c.wireBytes) / d}
}

// pgCounter is a pgx tracer, a dialer wrapper and a ShouldPing hook that
// count one node's traffic.
type pgCounter struct {
	roundTrips, statements, batches, claims, pings, rowsWritten, wireBytes atomic.Int64

	lastRenewal atomic.Int64 // unix ns: when the last batch that succeeded was sent
	lastClaim   atomic.Int64 // ns: how long the last claim statement took, rows read
}

func (c *pgCounter) counts() pgCounts {
	return pgCounts{c.roundTrips.Load(), c.statements.Load(), c.batches.Load(), c.claims.Load(),
		c.pings.Load(), c.rowsWritten.Load(), c.wireBytes.Load()}
}

// Queries and batches are counted when they end, with the statements and
// rows they carried, so that a window of time counts whole round trips.

type pgStartKey struct{}

type pgQueryStart struct {
	at    time.Time
	claim bool
}

func (c *pgCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, pgStartKey{}, pgQueryStart{time.Now(), strings.HasPrefix(d.SQL, pgClaimSQL)})
}

func (c *pgCounter) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	c.roundTrips.Add(1)
	c.statements.Add(1)
	c.written(d.CommandTag, d.Err)
	if start, ok := ctx.Value(pgStartKey{}).(pgQueryStart); ok && start.claim {
		c.claims.Add(1)
		if d.Err == nil {
			c.lastClaim.Store(int64(time.Since(start.at)))
		}
	}
}

func (c *pgCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return context.WithValue(ctx, pgStartKey{}, time.Now())
}

func (c *pgCounter) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	c.statements.Add(1)
	c.written(d.CommandTag, d.Err)
}

// TraceBatchEnd counts the batch. The Table sends one per renewal cycle
// (and one more from Close); the send time of the last one that
// succeeded bounds its leases: they expire LeaseTTL after it, or later.
func (c *pgCounter) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchEndData) {
	c.roundTrips.Add(1)
	c.batches.Add(1)
	if start, ok := ctx.Value(pgStartKey{}).(time.Time); ok && d.Err == nil {
		c.lastRenewal.Store(start.UnixNano())
	}
}

func (c *pgCounter) written(tag pgconn.CommandTag, err error) {
	if err == nil && (tag.Insert() || tag.Update() || tag.Delete()) {
		c.rowsWritten.Add(tag.RowsAffected())
	}
}

// shouldPing is pgxpool's default (ping a connection idle over a second),
// counted.
func (c *pgCounter) shouldPing(_ context.Context, p pgxpool.ShouldPingParams) bool {
	if p.IdleDuration > time.Second {
		c.roundTrips.Add(1)
		c.pings.Add(1)
		return true
	}
	return false
}

// pgCountingConn counts the bytes of one connection.
type pgCountingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *pgCountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *pgCountingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// pgNode is one node: a pool of its own, counted, and its Table once
// opened.
type pgNode struct {
	db    *pgxpool.Pool
	count *pgCounter
	table *postgres.Table[string]
}

// newPgNode opens a counted pool on url with one connection made.
func newPgNode(ctx context.Context, url string) (*pgNode, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	count := &pgCounter{}
	cfg.ConnConfig.Tracer = count
	dial := cfg.ConnConfig.DialFunc
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &pgCountingConn{Conn: conn, n: &count.wireBytes}, nil
	}
	cfg.ShouldPing = count.shouldPing
	db, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := db.Ping(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return &pgNode{db: db, count: count}, nil
}

// open opens the node's Table.
func (n *pgNode) open(ctx context.Context, name, prefix, node string, o postgres.Options) error {
	o.Prefix, o.Node, o.Logger = prefix, node, discardLogger()
	var err error
	n.table, err = postgres.NewTable(ctx, n.db, name, pgDecode, o)
	return err
}

// close closes the Table, if open, and the pool. The Table's error is
// not returned: a node made to crash has lost its pool before.
func (n *pgNode) close() {
	if n.table != nil {
		_ = n.table.Close()
	}
	n.db.Close()
}

// pgCluster is a run's nodes, named a, b, c… under one Prefix, sharing
// the table pgTableName.
type pgCluster struct {
	admin  *pgxpool.Pool // uncounted: puts rows, reads server statistics, drops the tables
	prefix string
	nodes  []*pgNode
}

// startPgCluster opens n nodes on an empty table. With stagger, it waits
// a random time up to stagger before each node after the first, so that
// the nodes' renewal cycles do not run in step, as they do not on
// machines started at different times.
func startPgCluster(ctx context.Context, url string, admin *pgxpool.Pool, n int, o postgres.Options,
	stagger time.Duration) (*pgCluster, error) {
	c := &pgCluster{admin: admin, prefix: pgPrefix()}
	for i := range n {
		if i > 0 && stagger > 0 {
			time.Sleep(rand.N(stagger))
		}
		node, err := newPgNode(ctx, url)
		if err == nil {
			c.nodes = append(c.nodes, node)
			err = node.open(ctx, pgTableName, c.prefix, string(rune('a'+i)), o)
		}
		if err != nil {
			return c, errors.Join(err, c.close(ctx))
		}
	}
	return c, nil
}

// close closes every node and drops the Prefix's tables.
func (c *pgCluster) close(ctx context.Context) error {
	for _, n := range c.nodes {
		n.close()
	}
	return dropPgPrefix(ctx, c.admin, c.prefix)
}

func dropPgPrefix(ctx context.Context, admin *pgxpool.Pool, prefix string) error {
	var names []string
	for _, t := range []string{"tables", "rows", "nodes", "states"} {
		names = append(names, pgx.Identifier{prefix + t}.Sanitize())
	}
	_, err := admin.Exec(ctx, `DROP TABLE IF EXISTS `+strings.Join(names, ", "))
	return err
}

// insertPgRows writes rows rows of table name straight into the Prefix's
// table of rows (one statement, no notification: nodes find them at their
// next renewal), keys row-000001…, 64 bytes of data each.
func insertPgRows(ctx context.Context, admin *pgxpool.Pool, prefix, name string, rows int) error {
	_, err := admin.Exec(ctx, `INSERT INTO `+pgx.Identifier{prefix + "rows"}.Sanitize()+` (name, key, data)
SELECT $1, 'row-' || lpad(i::text, 6, '0'), convert_to(repeat('x', 64), 'UTF8') FROM generate_series(1, $2::int) AS i`,
		name, rows)
	return err
}

// owners maps every key owned by the given nodes to how many of them own
// it.
func owners(nodes []*pgNode) map[string]int {
	owned := map[string]int{}
	for _, n := range nodes {
		for _, key := range n.table.Owned() {
			owned[key]++
		}
	}
	return owned
}

// waitUntil polls cond every millisecond until it holds, or fails after
// timeout.
func waitUntil(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %v: %w", what, timeout, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// pgFailover is one failover measurement.
type pgFailover struct {
	moved        int           // rows of the node that went, all now on the others
	elapsed      time.Duration // crash (or Close called) → every one of its rows owned by another node
	sinceRenewal time.Duration // its last successful renewal sent → the same instant (crash only)
	closeTook    time.Duration // how long Close took (graceful only)
}

// runPgFailover starts nodes nodes sharing rows rows (rows a multiple of
// nodes), staggered by up to a Renew, waits until each owns its share, waits a random part of a Renew
// so that the crash falls anywhere in the last node's renewal period, then
// takes that node away — graceful: Table.Close; otherwise its pool is
// closed under its open Table, so it can renew nothing and its leases
// must expire — and times until the other nodes own every one of its rows.
func runPgFailover(ctx context.Context, url string, admin *pgxpool.Pool, nodes, rows int,
	o postgres.Options, graceful bool) (f pgFailover, err error) {
	c, err := startPgCluster(ctx, url, admin, nodes, o, o.Renew)
	if err != nil {
		return f, err
	}
	defer func() { err = errors.Join(err, c.close(ctx)) }()
	if err = insertPgRows(ctx, admin, c.prefix, pgTableName, rows); err != nil {
		return f, err
	}
	share := rows / nodes
	err = waitUntil(ctx, 10*o.Renew+o.LeaseTTL, "every node owning its share", func() bool {
		for _, n := range c.nodes {
			if len(n.table.Owned()) != share {
				return false
			}
		}
		return true
	})
	if err != nil {
		return f, err
	}
	time.Sleep(rand.N(o.Renew))

	victim, survivors := c.nodes[nodes-1], c.nodes[:nodes-1]
	keys := victim.table.Owned()
	start := time.Now()
	if graceful {
		err = victim.table.Close()
		f.closeTook = time.Since(start)
		if err != nil {
			return f, err
		}
	} else {
		victim.db.Close()
	}
	var owned map[string]int
	err = waitUntil(ctx, 3*(o.LeaseTTL+o.Renew), "the rows of the node that went moving", func() bool {
		owned = owners(survivors)
		for _, key := range keys {
			if owned[key] == 0 {
				return false
			}
		}
		return true
	})
	end := time.Now()
	if err != nil {
		return f, err
	}
	f.moved, f.elapsed = len(keys), end.Sub(start)
	if !graceful {
		f.sinceRenewal = end.Sub(time.Unix(0, victim.count.lastRenewal.Load()))
	}
	if len(owned) != rows {
		return f, fmt.Errorf("the other nodes own %d rows, want %d", len(owned), rows)
	}
	for key, n := range owned {
		if n > 1 {
			return f, fmt.Errorf("row %s owned by %d nodes", key, n)
		}
	}
	return f, nil
}

// pgClaim is one claim-throughput measurement.
type pgClaim struct {
	newTable  time.Duration // NewTable on a fresh node → it owns every row
	claimStmt time.Duration // the Table's claim statement alone, rows read (0 if not seen)
	baseline  time.Duration // one UPDATE … RETURNING of as many rows, rows read
}

// runPgClaim puts rows rows under two table names of a fresh Prefix,
// then, in the given order, opens a Table on a fresh node (NewTable claims
// its share, every row, before it returns) and updates the other name's
// rows with one UPDATE … RETURNING the claim's columns on a pool of its
// own. Both pools have a connection made before the clock starts.
func runPgClaim(ctx context.Context, url string, admin *pgxpool.Pool, rows int, oursFirst bool) (cl pgClaim, err error) {
	prefix := pgPrefix()
	defer func() { err = errors.Join(err, dropPgPrefix(ctx, admin, prefix)) }()
	setup, err := postgres.NewTable(ctx, admin, "setup", pgDecode,
		postgres.Options{Prefix: prefix, Node: "setup", Logger: discardLogger()})
	if err != nil {
		return cl, err
	}
	if err = setup.Close(); err != nil {
		return cl, err
	}
	for _, name := range []string{"claim", "baseline"} {
		if err = insertPgRows(ctx, admin, prefix, name, rows); err != nil {
			return cl, err
		}
	}
	if _, err = admin.Exec(ctx, `ANALYZE `+pgx.Identifier{prefix + "rows"}.Sanitize()); err != nil {
		return cl, err
	}
	ours := func() error {
		n, err := newPgNode(ctx, url)
		if err != nil {
			return err
		}
		defer n.close()
		start := time.Now()
		if err := n.open(ctx, "claim", prefix, "fresh", postgres.Options{}); err != nil {
			return err
		}
		err = waitUntil(ctx, time.Minute, "the fresh node owning every row", func() bool {
			return len(n.table.Owned()) == rows
		})
		cl.newTable = time.Since(start)
		cl.claimStmt = time.Duration(n.count.lastClaim.Load())
		return err
	}
	baseline := func() error {
		db, err := pgxpool.New(ctx, url)
		if err != nil {
			return err
		}
		defer db.Close()
		if err := db.Ping(ctx); err != nil {
			return err
		}
		start := time.Now()
		rs, err := db.Query(ctx, `UPDATE `+pgx.Identifier{prefix + "rows"}.Sanitize()+` r
SET owner = $2, fence = r.fence + 1, lease_until = now() + $3 * interval '1 microsecond'
WHERE r.name = $1 AND NOT r.deleted
RETURNING r.key, r.fence, r.version`, "baseline", "plain", postgres.DefaultLeaseTTL.Microseconds())
		if err != nil {
			return err
		}
		got, err := pgx.CollectRows(rs, pgx.RowToStructByPos[claimedRow])
		cl.baseline = time.Since(start)
		if err == nil && len(got) != rows {
			err = fmt.Errorf("baseline updated %d rows, want %d", len(got), rows)
		}
		return err
	}
	sides := []func() error{ours, baseline}
	if !oursFirst {
		slices.Reverse(sides)
	}
	for _, side := range sides {
		if err = side(); err != nil {
			return cl, err
		}
	}
	return cl, nil
}

// claimedRow is what a claim reads back of each row.
type claimedRow struct {
	Key            string
	Fence, Version int64
}

// pgRest is one at-rest measurement, per node (the mean of the nodes).
type pgRest struct {
	window    time.Duration
	cycles    float64 // renewal cycles of a node in the window
	perCycle  pgRates // a node's traffic per renewal cycle
	owned     float64 // rows a node owns
	xact      float64 // transactions the server counted per cycle per node (pg_stat_database)
	walBytes  float64 // WAL written per cycle per node
	serverCPU float64 // ms of server CPU per cycle per node; < 0 when not measured
	iter      pgRates // one Iter of a node's rows: its traffic
	iterTook  time.Duration
}

// runPgRest starts nodes nodes, puts rows rows and waits until every row
// is owned. Analyzed (fresh false), it then runs ANALYZE on the table of
// rows, as autovacuum does soon after rows are put, and waits two more
// renewals of every node. Fresh, autovacuum is off for the table from the
// start, so the server plans without statistics as it does on a new table
// before its first automatic ANALYZE, and it waits six more renewals, so
// that PostgreSQL has moved the Table's prepared statements to generic
// plans (it tries five custom plans first). Then it counts what the nodes
// and the server do over cycles×Renew of nothing happening, and times one
// Iter of each node's rows (a supervisor's scan, every ScanInterval).
// Ownership must not change meanwhile.
func runPgRest(ctx context.Context, url string, admin *pgxpool.Pool, nodes, rows, cycles int,
	o postgres.Options, fresh bool) (r pgRest, err error) {
	c, err := startPgCluster(ctx, url, admin, nodes, o, 0)
	if err != nil {
		return r, err
	}
	defer func() { err = errors.Join(err, c.close(ctx)) }()
	rowsTable := pgx.Identifier{c.prefix + "rows"}.Sanitize()
	if fresh {
		if _, err = admin.Exec(ctx, `ALTER TABLE `+rowsTable+` SET (autovacuum_enabled = false)`); err != nil {
			return r, err
		}
	}
	if err = insertPgRows(ctx, admin, c.prefix, pgTableName, rows); err != nil {
		return r, err
	}
	err = waitUntil(ctx, 10*o.Renew+time.Minute, "every row owned", func() bool {
		return len(owners(c.nodes)) == rows
	})
	if err != nil {
		return r, err
	}
	settle := int64(6)
	if !fresh {
		settle = 2
		if _, err = admin.Exec(ctx, `ANALYZE `+rowsTable); err != nil {
			return r, err
		}
	}
	counts := make([]pgCounts, nodes)
	for i, n := range c.nodes {
		counts[i] = n.count.counts()
	}
	err = waitUntil(ctx, time.Duration(settle+2)*(o.Renew+30*time.Second), "renewals to settle", func() bool {
		for i, n := range c.nodes {
			if n.count.batches.Load()-counts[i].batches < settle {
				return false
			}
		}
		return true
	})
	if err != nil {
		return r, err
	}

	before := owners(c.nodes)
	for i, n := range c.nodes {
		counts[i] = n.count.counts()
	}
	server0, err := readPgServer(ctx, admin)
	if err != nil {
		return r, err
	}
	start := time.Now()
	time.Sleep(time.Duration(cycles) * o.Renew)
	server1, err := readPgServer(ctx, admin)
	r.window = time.Since(start)
	if err != nil {
		return r, err
	}
	var total pgCounts
	for i, n := range c.nodes {
		total = total.plus(n.count.counts().minus(counts[i]))
	}
	if after := owners(c.nodes); !maps.Equal(before, after) || len(after) != rows {
		return r, fmt.Errorf("ownership changed while at rest: %d rows owned before, %d after", len(before), len(after))
	}

	k := float64(nodes)
	r.cycles = float64(total.batches) / k
	if r.cycles == 0 {
		return r, errors.New("no renewal in the window")
	}
	r.perCycle = total.per(k * r.cycles)
	r.owned = float64(rows) / k
	r.xact = float64(server1.xact-server0.xact) / k / r.cycles
	r.walBytes = float64(server1.wal-server0.wal) / k / r.cycles
	r.serverCPU = -1
	if server0.cpu >= 0 && server1.cpu >= 0 {
		r.serverCPU = float64((server1.cpu - server0.cpu).Milliseconds()) / k / r.cycles
	}

	var iter pgCounts
	for _, n := range c.nodes {
		counts, took, err := timePgIter(ctx, n)
		if err != nil {
			return r, err
		}
		iter, r.iterTook = iter.plus(counts), r.iterTook+took
	}
	r.iterTook /= time.Duration(nodes)
	r.iter = iter.per(k)
	return r, nil
}

// timePgIter reads every row of a node through Iter and returns the
// traffic and time it took. A renewal cycle of the node's that ran
// meanwhile would be counted with it, so it tries again until none did.
func timePgIter(ctx context.Context, n *pgNode) (pgCounts, time.Duration, error) {
	for range 20 {
		before, start := n.count.counts(), time.Now()
		it, err := n.table.Iter(ctx)
		if err != nil {
			return pgCounts{}, 0, err
		}
		seen := 0
		for it.Next() {
			if _, _, err := it.Get(ctx); err != nil {
				return pgCounts{}, 0, err
			}
			seen++
		}
		took, counts := time.Since(start), n.count.counts().minus(before)
		if owned := len(n.table.Owned()); seen != owned {
			return pgCounts{}, 0, fmt.Errorf("Iter gave %d rows, the node owns %d", seen, owned)
		}
		if counts.batches == 0 && counts.claims == 0 {
			return counts, took, nil
		}
	}
	return pgCounts{}, 0, errors.New("every Iter ran alongside a renewal")
}

// pgServer is what the server says about itself.
type pgServer struct {
	xact int64         // transactions committed and rolled back in this database
	wal  int64         // WAL position, bytes
	cpu  time.Duration // CPU of the whole cluster (postmaster and its children); < 0 if unknown
}

func readPgServer(ctx context.Context, admin *pgxpool.Pool) (s pgServer, err error) {
	var pid int
	err = admin.QueryRow(ctx, `SELECT
	(SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()),
	pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
	pg_backend_pid()`).Scan(&s.xact, &s.wal, &pid)
	s.cpu = clusterCPU(pid)
	return s, err
}

// clusterCPU is the CPU time of the server that runs backend: its
// postmaster's, its reaped children's and its live children's, read from
// /proc. It is -1 when the server is not a throwaway cluster on this Linux
// machine (SUPERVISOR_TEST_DATABASE_URL may name a server elsewhere).
func clusterCPU(backend int) time.Duration {
	if runtime.GOOS != "linux" || os.Getenv(pgtest.EnvURL) != "" {
		return -1
	}
	stat, err := readProcStat(strconv.Itoa(backend))
	if err != nil {
		return -1
	}
	postmaster := stat.ppid
	stat, err = readProcStat(strconv.Itoa(postmaster))
	if err != nil {
		return -1
	}
	ticks := stat.utime + stat.stime + stat.cutime + stat.cstime
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		if child, err := readProcStat(filepath.Base(dir)); err == nil && child.ppid == postmaster {
			ticks += child.utime + child.stime
		}
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
}

type procStat struct{ ppid, utime, stime, cutime, cstime int }

// readProcStat reads /proc/<pid>/stat. Its fields are numbered from 1,
// the command (2) in parentheses; after the closing one come state (3),
// ppid (4), …, utime (14), stime, cutime and cstime (17).
func readProcStat(pid string) (procStat, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return procStat{}, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%s/stat: no command", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	field := func(n int) int {
		if n-3 >= len(fields) {
			err = fmt.Errorf("/proc/%s/stat: %d fields", pid, len(fields)+2)
			return 0
		}
		v, convErr := strconv.Atoi(fields[n-3])
		if convErr != nil {
			err = fmt.Errorf("/proc/%s/stat: field %d: %w", pid, n, convErr)
		}
		return v
	}
	s := procStat{ppid: field(4), utime: field(14), stime: field(15), cutime: field(16), cstime: field(17)}
	return s, err
}

// pgBench opens the benchmark's server (one throwaway cluster per
// benchmark function, or SUPERVISOR_TEST_DATABASE_URL; skipped with the
// install hint without either) and an admin pool on it.
func pgBench(tb testing.TB) (string, *pgxpool.Pool) {
	tb.Helper()
	url := pgtest.URL(tb)
	admin, err := pgxpool.New(context.Background(), url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(admin.Close)
	return url, admin
}

// reportSpread reports the median, minimum and maximum of ds divided by
// unit as name, name-min and name-max.
func reportSpread(b *testing.B, ds []time.Duration, unit time.Duration, name string) {
	slices.Sort(ds)
	ratio := func(d time.Duration) float64 { return d.Seconds() / unit.Seconds() }
	b.ReportMetric(ratio(ds[len(ds)/2]), name)
	b.ReportMetric(ratio(ds[0]), name+"-min")
	b.ReportMetric(ratio(ds[len(ds)-1]), name+"-max")
}

func median(ds []time.Duration) time.Duration {
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// BenchmarkPostgresFailover: b.N crashes, each of one of 3 nodes sharing
// 300 rows (LeaseTTL 3s, Renew 300ms, StopGrace 1s). It reports the time
// from the crash, and from the crashed node's last renewal, until the
// other two own every one of its rows, as ratios to LeaseTTL + Renew:
// median, min and max over the b.N runs.
func BenchmarkPostgresFailover(b *testing.B) {
	url, admin := pgBench(b)
	o := pgFailoverOptions
	var elapsed, sinceRenewal []time.Duration
	for range b.N {
		f, err := runPgFailover(context.Background(), url, admin, 3, 300, o, false)
		if err != nil {
			b.Fatal(err)
		}
		elapsed, sinceRenewal = append(elapsed, f.elapsed), append(sinceRenewal, f.sinceRenewal)
	}
	b.ReportMetric(0, "ns/op")
	bound := o.LeaseTTL + o.Renew
	reportSpread(b, elapsed, bound, "failover/ttl+renew")
	reportSpread(b, sinceRenewal, bound, "since-renewal/ttl+renew")
	b.ReportMetric(float64(median(elapsed).Milliseconds()), "failover-ms")
}

// BenchmarkPostgresGracefulHandover: b.N times, one of 3 nodes sharing 300
// rows closes its Table; the time from the call of Close until the other
// two own every one of its rows, as a ratio to Renew (300ms), and how
// long Close itself took.
func BenchmarkPostgresGracefulHandover(b *testing.B) {
	url, admin := pgBench(b)
	o := pgFailoverOptions
	var elapsed, closeTook []time.Duration
	for range b.N {
		f, err := runPgFailover(context.Background(), url, admin, 3, 300, o, true)
		if err != nil {
			b.Fatal(err)
		}
		elapsed, closeTook = append(elapsed, f.elapsed), append(closeTook, f.closeTook)
	}
	b.ReportMetric(0, "ns/op")
	reportSpread(b, elapsed, o.Renew, "handover/renew")
	b.ReportMetric(float64(median(elapsed).Microseconds())/1000, "handover-ms")
	b.ReportMetric(float64(median(closeTook).Microseconds())/1000, "close-ms")
}

// BenchmarkPostgresClaim10k: b.N times, a fresh node opens a table of 10k
// rows nobody owns and claims them all; against one UPDATE … RETURNING of
// 10k rows on the same server, the two alternating which goes first.
// Medians: rows/s of each, and the time ratio ours / baseline, of
// NewTable as a whole and of the claim statement alone.
func BenchmarkPostgresClaim10k(b *testing.B) {
	const rows = 10_000
	url, admin := pgBench(b)
	var ours, stmt, base []time.Duration
	for i := range b.N {
		cl, err := runPgClaim(context.Background(), url, admin, rows, i%2 == 0)
		if err != nil {
			b.Fatal(err)
		}
		ours, stmt, base = append(ours, cl.newTable), append(stmt, cl.claimStmt), append(base, cl.baseline)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rows/median(ours).Seconds(), "rows/s")
	b.ReportMetric(rows/median(base).Seconds(), "baseline-rows/s")
	b.ReportMetric(median(ours).Seconds()/median(base).Seconds(), "newtable/baseline")
	b.ReportMetric(median(stmt).Seconds()/median(base).Seconds(), "claim-stmt/baseline")
}

// BenchmarkPostgresAtRest: b.N times, 3 nodes sharing 10k rows with
// Renew 2s (LeaseTTL and StopGrace default) do nothing for 10 Renews; on
// a table the server has statistics for (analyzed) and on one it has none
// for (fresh-table). Per node and renewal cycle: round trips, statements,
// claims, pings, rows written, bytes on the wire; the server's
// transactions, WAL bytes and CPU time; the queries and statements per
// second per node at the default Renew (5s); and the cost of one Iter of
// a node's rows. The numbers are the middle run's by server CPU, whose
// minimum and maximum over the runs are reported too.
func BenchmarkPostgresAtRest(b *testing.B) {
	for _, fresh := range []bool{false, true} {
		name := "analyzed"
		if fresh {
			name = "fresh-table"
		}
		b.Run(name, func(b *testing.B) {
			url, admin := pgBench(b)
			var rs []pgRest
			for range b.N {
				r, err := runPgRest(context.Background(), url, admin, 3, 10_000, 10, pgRestOptions, fresh)
				if err != nil {
					b.Fatal(err)
				}
				rs = append(rs, r)
			}
			slices.SortFunc(rs, func(x, y pgRest) int { return cmp.Compare(x.serverCPU, y.serverCPU) })
			reportPgRest(b, rs[len(rs)/2])
			if rs[0].serverCPU >= 0 {
				b.ReportMetric(rs[0].serverCPU, "server-cpu-ms/cycle/node-min")
				b.ReportMetric(rs[len(rs)-1].serverCPU, "server-cpu-ms/cycle/node-max")
			}
		})
	}
}

func reportPgRest(b *testing.B, r pgRest) {
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(r.cycles, "cycles/node")
	b.ReportMetric(r.window.Seconds()/r.cycles, "s/cycle")
	b.ReportMetric(r.owned, "rows/node")
	b.ReportMetric(r.perCycle.roundTrips, "roundtrips/cycle/node")
	b.ReportMetric(r.perCycle.statements, "stmts/cycle/node")
	b.ReportMetric(r.perCycle.claims, "claims/cycle/node")
	b.ReportMetric(r.perCycle.pings, "pings/cycle/node")
	b.ReportMetric(r.perCycle.roundTrips/pgDefaultRenew.Seconds(), "queries/s/node@renew5s")
	b.ReportMetric(r.perCycle.statements/pgDefaultRenew.Seconds(), "stmts/s/node@renew5s")
	b.ReportMetric(r.perCycle.rowsWritten, "rows-written/cycle/node")
	b.ReportMetric(r.perCycle.wireBytes/1024, "wire-KiB/cycle/node")
	b.ReportMetric(r.xact, "server-xact/cycle/node")
	b.ReportMetric(r.walBytes/1024, "WAL-KiB/cycle/node")
	if r.serverCPU >= 0 {
		b.ReportMetric(r.serverCPU, "server-cpu-ms/cycle/node")
	}
	b.ReportMetric(float64(r.iterTook.Microseconds())/1000, "iter-ms")
	b.ReportMetric(r.iter.wireBytes/1024, "iter-wire-KiB")
}

// TestPostgresHarnesses runs every scenario once at a tiny size on one
// server, checking that each measures what it says.
func TestPostgresHarnesses(t *testing.T) {
	url, admin := pgBench(t)
	ctx := context.Background()
	tiny := postgres.Options{LeaseTTL: time.Second, Renew: 100 * time.Millisecond, StopGrace: 500 * time.Millisecond}

	t.Run("failover", func(t *testing.T) {
		f, err := runPgFailover(ctx, url, admin, 3, 30, tiny, false)
		require.NoError(t, err)
		require.Equal(t, 10, f.moved)
		// The leases must have expired first: LeaseTTL after the last
		// renewal at the earliest.
		require.GreaterOrEqual(t, f.sinceRenewal, tiny.LeaseTTL)
	})
	t.Run("graceful", func(t *testing.T) {
		f, err := runPgFailover(ctx, url, admin, 3, 30, tiny, true)
		require.NoError(t, err)
		require.Equal(t, 10, f.moved)
		require.Less(t, f.elapsed, tiny.LeaseTTL, "a closed node's rows move without waiting for its leases")
		require.Positive(t, f.closeTook)
	})
	t.Run("claim", func(t *testing.T) {
		for _, oursFirst := range []bool{true, false} {
			cl, err := runPgClaim(ctx, url, admin, 300, oursFirst)
			require.NoError(t, err)
			require.Positive(t, cl.newTable)
			require.Positive(t, cl.claimStmt, "the claim statement was seen")
			require.LessOrEqual(t, cl.claimStmt, cl.newTable)
			require.Positive(t, cl.baseline)
		}
	})
	for _, fresh := range []bool{false, true} {
		t.Run(fmt.Sprintf("at rest/fresh=%v", fresh), func(t *testing.T) {
			const nodes, rows, cycles = 3, 100, 5
			r, err := runPgRest(ctx, url, admin, nodes, rows, cycles, tiny, fresh)
			require.NoError(t, err)
			// A cycle lasts Renew plus its own time: at most one per Renew.
			require.LessOrEqual(t, r.cycles, float64(cycles+1))
			require.GreaterOrEqual(t, r.cycles, float64(cycles)/2)
			// One batch per cycle; each writes the heartbeat and renews
			// every lease the node holds (34, 34 and 32 rows).
			require.InDelta(t, 1, r.perCycle.batches, 0.01)
			require.Greater(t, r.perCycle.statements, r.perCycle.roundTrips, "a batch carries several statements")
			require.InDelta(t, r.owned+1, r.perCycle.rowsWritten, 1)
			require.Zero(t, r.perCycle.pings, "Renew under a second: no connection idles long enough to be pinged")
			require.Positive(t, r.perCycle.wireBytes)
			require.Positive(t, r.walBytes)
			require.Positive(t, r.iterTook)
			require.InDelta(t, 1, r.iter.statements, 0.01, "Iter reads a node's rows in one query")
		})
	}
}
