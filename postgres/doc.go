// Package postgres lets several machines share one supervisor table: each
// row's process runs on exactly one node at a time, a node that dies loses
// its rows to the others within the lease time, and a node cut off from
// the database stops its rows before anyone else can take them.
// PostgreSQL does the coordinating — row leases in database time, claims
// with FOR UPDATE SKIP LOCKED, LISTEN/NOTIFY — so there is no consensus
// protocol of our own to trust.
//
// It is its own module (github.com/gosupervise/supervisor/postgres), so
// that the supervisor module needs no database driver.
//
// # Quick start
//
// Every node opens the same table and runs a Supervisor over it:
//
//	db, err := pgxpool.New(ctx, "postgres://...")
//	...
//	table, err := postgres.NewTable(ctx, db, "jobs",
//		func(key string, data []byte) (*Job, error) { return parseJob(key, data) },
//		postgres.Options{}) // LeaseTTL 45s, Renew 5s, StopGrace 20s
//	...
//	defer table.Close()
//	sup := supervisor.NewSupervisor[string, *Job](table, supervisor.Options{StopTimeout: 10 * time.Second})
//	err = sup.Run(ctx, func(ctx context.Context) error { <-ctx.Done(); return nil })
//
// and any node adds or removes work with table.Put(ctx, key, data) and
// table.Delete(ctx, key). Stop the supervisor before Close.
//
// # Ownership
//
// Every Renew a node writes its heartbeat, renews its leases (in database
// time: now() + LeaseTTL) and claims free or expired rows up to its fair
// share, ceil(rows / live nodes), where a node is live while its heartbeat
// is newer than LeaseTTL. A claim raises the row's fence; Fence(key) gives
// it to a process that wants to fence its external writes. A node over
// its share (a node joined) stops announcing its extra rows, so its
// supervisor stops them, and releases them StopGrace later. Put and
// Delete NOTIFY every node: a new row is claimed at once, a put over an
// owned row makes its owner's supervisor replace the process, a deleted
// row stops on its owner at once. Watch announces puts, deletes and rows
// gained and lost — never a renewal that changes nothing, so no process is
// ever restarted by a renewal. (One exception, on purpose: a row whose Get
// failed is announced once more after the next renewal, since a supervisor
// drops a key it could not read.)
//
// # Safety
//
// A node that cannot renew (database unreachable, too slow, pool closed)
// declares every row lost at (send time of its last successful renewal) +
// LeaseTTL − StopGrace − Renew, by its own monotonic clock. Its processes
// then have StopGrace to stop, and are gone before the leases it wrote can
// expire in database time — whatever the skew between the machines'
// clocks, since each side measures only its own durations. NewTable
// refuses options where StopGrace + 2×Renew ≥ LeaseTTL. Set StopGrace to
// twice the supervisor's StopTimeout (its graceful plus its forced wait).
// Get and Iter give a query at most Renew, and answer at once for rows
// the node does not hold, so a supervisor reading a Table never hangs on
// a database that stopped answering. A shed or deleted row's StopGrace
// counts from the moment the Table gives it up, and a supervisor applies
// announced keys one at a time — on a slow database each read of a row
// the node still runs can take up to Renew — so leave StopGrace room for
// that beyond the processes' own stop time.
//
// A deleted row stays as a tombstone, with its owner's lease, until the
// owner has released it (StopGrace after it saw the delete): put again
// meanwhile, it comes back to the same node, never to a second one while
// the old process stops. Released tombstones are purged; the table
// remembers the highest fence they had, so a row put again later still
// gets a fence above every earlier one.
//
// # Schema
//
// NewTable and NewStore create, if missing, four tables named after
// Options.Prefix (default "supervisor_"): <prefix>tables, <prefix>rows,
// <prefix>nodes and <prefix>states, and the sequence <prefix>versions
// (owned by the rows table), and use the NOTIFY channel <prefix>changes.
// Every table name of a prefix shares them. Keys are at most MaxKeyLen
// (1000) bytes, as a NOTIFY payload is limited.
//
// # Connections
//
// A Table keeps no pool connection between operations; its LISTEN runs
// on a connection of its own, opened with the pool's configuration, and
// after a reconnect it catches up from the table, since notifications may
// have been missed meanwhile. A Store transaction holds one pool
// connection until Commit or Rollback.
//
// # Tests
//
// The package's tests need a PostgreSQL server: package pgtest starts a
// throwaway cluster from the server binaries on the machine (Debian:
// apt-get install postgresql), or SUPERVISOR_TEST_DATABASE_URL names one.
// Without either they skip, saying so.
package postgres
