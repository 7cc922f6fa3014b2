package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gosupervise/supervisor"
)

// Table is a supervisor.Table[string, P] and a supervisor.Watcher[string]
// over rows that every node opening the same name shares. Each row is
// owned by one node at a time, under a lease renewed every Renew; Get,
// Iter and Owned see only this node's rows, and Watch announces the rows
// this node gains and loses besides every put and delete, so a Supervisor
// over the Table runs exactly this node's share of the rows.
//
// A Table is safe for concurrent use. It keeps no pool connection between
// operations; LISTEN holds a connection of its own, opened with the pool's
// configuration.
type Table[P any] struct {
	db     *pgxpool.Pool
	name   string
	decode func(key string, data []byte) (P, error)
	o      Options
	schema schema
	log    *slog.Logger

	mu           sync.Mutex
	held         map[string]*lease // leases this node holds, by key
	orphans      map[string]orphan // rows this node's ID owns in the database but this Table does not hold: it may claim them back
	retry        map[string]bool   // held rows whose Get failed: announced again after the next renewal
	notifiedFree map[string]int64  // versions notified, during the current cycle, of rows not held
	epoch        uint64            // bumped whenever every lease is given up at once
	deadline     time.Time         // the held rows are lost at this instant (monotonic clock)
	loss         *time.Timer       // fires at deadline
	watchers     map[*watcher]struct{}
	closed       bool

	wake       chan struct{}   // a cycle is wanted soon (capacity 1)
	done       <-chan struct{} // closed by Close: the Table's goroutines return
	cancel     context.CancelFunc
	background sync.WaitGroup // the renewal loop, the listener and the watchers
	closeOnce  sync.Once
	closeErr   error
}

var (
	_ supervisor.Table[string, any] = (*Table[any])(nil)
	_ supervisor.Watcher[string]    = (*Table[any])(nil)
)

// lease is this node's hold on one row.
type lease struct {
	fence   int64
	version int64
	// releaseAt is zero while the row is this node's to run. Otherwise the
	// row is being given up (shed, or deleted) and its process is
	// stopping: its lease is kept until releaseAt, StopGrace after that
	// began, then released.
	releaseAt time.Time
	deleted   bool // given up because the row was deleted: put again, it runs here again
}

func (l *lease) active() bool { return l.releaseAt.IsZero() }

// NewTable opens the table name shared by every node that opens it with
// the same Prefix: it creates the schema if missing, writes this node's
// heartbeat and claims its first rows before it returns, then renews and
// claims every Renew until Close. decode turns a row's data into the P the
// supervisor runs; it is called by Get and by the iterator's Get.
//
// NewTable refuses a nil pool or decode and options where StopGrace +
// 2×Renew ≥ LeaseTTL (ErrInvalidOptions), and an invalid name — empty,
// over MaxNameLen bytes, not UTF-8, a NUL byte (ErrInvalidKey).
//
// Options.Node must be unique among the Tables open on the name at any one
// time — per running Table, not per machine: the default is. A node whose
// ID is reused while the old Table still runs would share its heartbeat;
// it does not take the old Table's leases, only rows the old one left
// behind expire to it as to any node.
func NewTable[P any](ctx context.Context, db *pgxpool.Pool, name string,
	decode func(key string, data []byte) (P, error), o Options) (*Table[P], error) {
	if db == nil || decode == nil {
		return nil, fmt.Errorf("%w: nil pool or decode", ErrInvalidOptions)
	}
	if err := checkName("table name", name, MaxNameLen); err != nil {
		return nil, err
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	t := &Table[P]{
		db: db, name: name, decode: decode, o: o,
		schema:       newSchema(o.Prefix),
		log:          o.Logger.With("table", name, "node", o.Node),
		held:         map[string]*lease{},
		orphans:      map[string]orphan{},
		retry:        map[string]bool{},
		notifiedFree: map[string]int64{},
		watchers:     map[*watcher]struct{}{},
		wake:         make(chan struct{}, 1),
	}
	if err := t.schema.create(ctx, db); err != nil {
		return nil, err
	}
	t.loss = time.AfterFunc(time.Hour, t.lossDue)
	t.loss.Stop()
	if err := t.cycle(ctx); err != nil {
		// Best effort: a heartbeat left behind would count as a live node
		// and shrink the others' shares until it expires.
		t.mu.Lock()
		keys, fences := t.giveUpLocked()
		t.mu.Unlock()
		return nil, errors.Join(fmt.Errorf("postgres: table %q: first renewal: %w", name, err), t.release(keys, fences))
	}
	runCtx, cancel := context.WithCancel(context.Background())
	t.cancel, t.done = cancel, runCtx.Done()
	t.background.Add(2)
	go t.renewLoop(runCtx)
	go t.listen(runCtx)
	return t, nil
}

// Name returns the table's name.
func (t *Table[P]) Name() string { return t.name }

// Node returns this node's ID (Options.Node, or the default made for it).
func (t *Table[P]) Node() string { return t.o.Node }

func (t *Table[P]) errorf(key, format string, args ...any) error {
	return fmt.Errorf("postgres: table %q: row %q: "+format, append([]any{t.name, key}, args...)...)
}

func (t *Table[P]) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// Put stores a row from any node and notifies every node. A new row is
// claimed by a node with room in its share; a put over an existing row
// keeps its owner and fence, and the owner's supervisor replaces the
// process (its Watch announces the key). Keys are at most MaxKeyLen bytes
// of UTF-8 without NUL (ErrInvalidKey).
func (t *Table[P]) Put(ctx context.Context, key string, data []byte) error {
	if err := checkName("key", key, MaxKeyLen); err != nil {
		return err
	}
	if t.isClosed() {
		return t.errorf(key, "put: %w", ErrClosed)
	}
	if data == nil {
		data = []byte{} // NULL data marks a deleted row
	}
	_, err := t.db.Exec(ctx, `
WITH up AS (
	INSERT INTO `+t.schema.rows+` AS r (name, key, data) VALUES ($1, $2, $3)
	ON CONFLICT (name, key) DO UPDATE SET data = EXCLUDED.data, version = `+t.schema.nextVersion+`, deleted = false
	RETURNING r.version, r.owner
)
SELECT pg_notify($4, CASE WHEN owner IS NULL THEN 'n' ELSE 'p' END || ' ' || version || ' ' || $5) FROM up`,
		t.name, key, data, t.schema.channel, payloadTail(t.name, key))
	if err != nil {
		return t.errorf(key, "put: %w", err)
	}
	return nil
}

// Delete removes a row from any node and notifies every node; it reports
// whether the row existed. The row's process stops on its owner at once;
// the owner keeps the row's lease until StopGrace has passed, so the row,
// if put again meanwhile, cannot start on another node before the old
// process has stopped. A deleted row stays as a tombstone until then, so
// its fence keeps rising if it is put again.
func (t *Table[P]) Delete(ctx context.Context, key string) (bool, error) {
	if err := checkName("key", key, MaxKeyLen); err != nil {
		return false, err
	}
	if t.isClosed() {
		return false, t.errorf(key, "delete: %w", ErrClosed)
	}
	tag, err := t.db.Exec(ctx, `
WITH d AS (
	UPDATE `+t.schema.rows+` SET deleted = true, data = NULL, version = `+t.schema.nextVersion+`
	WHERE name = $1 AND key = $2 AND NOT deleted
	RETURNING version
)
SELECT pg_notify($3, 'd ' || version || ' ' || $4) FROM d`,
		t.name, key, t.schema.channel, payloadTail(t.name, key))
	if err != nil {
		return false, t.errorf(key, "delete: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// Get returns the row key if this node owns it, read from the database;
// an error wrapping supervisor.ErrNotFound if the row does not exist or
// another node owns it (or this node is giving it up). It answers
// ErrNotFound without a query for rows this node does not hold, so a node
// cut off from the database still stops the rows it lost. The query gets
// at most Renew: a supervisor reading its table never hangs on a
// database that stopped answering.
func (t *Table[P]) Get(ctx context.Context, key string) (P, error) {
	var zero P
	fence, err := t.heldFence(key)
	if err != nil {
		return zero, err
	}
	ctx, cancel := context.WithTimeout(ctx, t.o.Renew)
	defer cancel()
	var data []byte
	err = t.db.QueryRow(ctx, `SELECT data FROM `+t.schema.rows+`
WHERE name = $1 AND key = $2 AND owner = $3 AND fence = $4 AND NOT deleted`,
		t.name, key, t.o.Node, fence).Scan(&data)
	// The row may have been lost while the query ran (a query that timed
	// out on an unreachable database, too): then it is not found.
	if again, herr := t.heldFence(key); herr != nil || again != fence {
		return zero, t.errorf(key, "lost by node %q: %w", t.o.Node, supervisor.ErrNotFound)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return zero, t.errorf(key, "deleted or not owned by node %q: %w", t.o.Node, supervisor.ErrNotFound)
	}
	if err != nil {
		t.retryAnnounce(key)
		return zero, t.errorf(key, "get: %w", err)
	}
	return t.decodeRow(key, data)
}

// retryAnnounce has key announced again after the next successful
// renewal: a supervisor drops an announced key whose Get failed, and would
// otherwise leave a gained row unstarted, or a put unapplied, until its
// next scan.
func (t *Table[P]) retryAnnounce(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.retry[key] = true
}

// heldFence returns the fence of a row this node runs, or an error
// wrapping ErrNotFound (or ErrClosed).
func (t *Table[P]) heldFence(key string) (int64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return 0, t.errorf(key, "get: %w", ErrClosed)
	}
	if l := t.held[key]; l != nil && l.active() {
		return l.fence, nil
	}
	return 0, t.errorf(key, "not owned by node %q: %w", t.o.Node, supervisor.ErrNotFound)
}

func (t *Table[P]) decodeRow(key string, data []byte) (P, error) {
	v, err := t.decode(key, data)
	if err != nil {
		return v, t.errorf(key, "decode: %w", err)
	}
	return v, nil
}

// Iter returns this node's rows in key order, read in one query of at
// most Renew; the connection is back in the pool before Iter returns.
func (t *Table[P]) Iter(ctx context.Context) (supervisor.Iterator[string, P], error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, fmt.Errorf("postgres: table %q: iter: %w", t.name, ErrClosed)
	}
	keys := make([]string, 0, len(t.held))
	fences := make([]int64, 0, len(t.held))
	for key, l := range t.held {
		if l.active() {
			keys = append(keys, key)
			fences = append(fences, l.fence)
		}
	}
	t.mu.Unlock()
	if len(keys) == 0 {
		// Nothing to read: a node that lost its rows to an unreachable
		// database answers at once, and its supervisor stops them.
		return &iterator[P]{table: t}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, t.o.Renew)
	defer cancel()
	// An unnamed statement: planned for its parameters every time, as a
	// generic plan of a join with an array can walk the array per row.
	rows, err := t.db.Query(ctx, `SELECT r.key, r.data FROM `+t.schema.rows+` r
JOIN unnest($3::text[], $4::bigint[]) AS h(key, fence) ON r.key = h.key AND r.fence = h.fence
WHERE r.name = $1 AND r.owner = $2 AND NOT r.deleted ORDER BY r.key`,
		pgx.QueryExecModeExec, t.name, t.o.Node, keys, fences)
	if err != nil {
		return nil, fmt.Errorf("postgres: table %q: iter: %w", t.name, err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rawRow])
	if err != nil {
		return nil, fmt.Errorf("postgres: table %q: iter: %w", t.name, err)
	}
	// Rows lost while the query ran are not this node's any more.
	t.mu.Lock()
	found = slices.DeleteFunc(found, func(r rawRow) bool {
		l := t.held[r.Key]
		return l == nil || !l.active()
	})
	t.mu.Unlock()
	return &iterator[P]{table: t, rows: found}, nil
}

type rawRow struct {
	Key  string
	Data []byte
}

// iterator walks rows read by Iter; it holds no connection.
type iterator[P any] struct {
	table *Table[P]
	rows  []rawRow
	next  int
}

func (it *iterator[P]) Next() bool {
	if it.next >= len(it.rows) {
		return false
	}
	it.next++
	return true
}

func (it *iterator[P]) Get(context.Context) (string, P, error) {
	if it.next == 0 || it.next > len(it.rows) {
		var zero P
		return "", zero, fmt.Errorf("postgres: table %q: iterator Get without a row", it.table.name)
	}
	r := it.rows[it.next-1]
	v, err := it.table.decodeRow(r.Key, r.Data)
	return r.Key, v, err
}

func (it *iterator[P]) Err() error   { return nil }
func (it *iterator[P]) Close() error { return nil }

// Owned returns the keys of the rows this node runs, sorted: held and not
// being given up.
func (t *Table[P]) Owned() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	keys := make([]string, 0, len(t.held))
	for key, l := range t.held {
		if l.active() {
			keys = append(keys, key)
		}
	}
	slices.Sort(keys)
	return keys
}

// Fence returns the row's fence — its claim counter, raised by every
// claim — while this node holds the row's lease, including while the row
// is shed or deleted and its process stops, so a process can fence its
// last external writes. false once the lease is released, and from the
// moment this node declared its rows lost because it could not renew.
func (t *Table[P]) Fence(key string) (int64, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.held[key]; l != nil {
		return l.fence, true
	}
	return 0, false
}

// Close stops renewing, releases every lease this Table holds (and those
// it lost but may still own, matched by fence: never another Table's
// under the same node ID) and deletes its heartbeat, then tells the other
// nodes, which claim the rows at once.
// Stop the supervisor that runs the rows first: their processes may still
// be running when the leases go. Close ends every Watch channel and waits
// for the Table's goroutines; it returns the release's error (the leases
// then expire after LeaseTTL). Later calls return the first call's result.
func (t *Table[P]) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		t.closed = true
		keys, fences := t.giveUpLocked()
		t.mu.Unlock()
		t.cancel()
		t.background.Wait()
		t.closeErr = t.release(keys, fences)
	})
	return t.closeErr
}

// giveUpLocked stops the loss timer and empties held and orphans,
// returning the (key, fence) pairs to release; t.mu is held.
func (t *Table[P]) giveUpLocked() (keys []string, fences []int64) {
	t.loss.Stop()
	for key, l := range t.held {
		keys, fences = append(keys, key), append(fences, l.fence)
	}
	for key, o := range t.orphans {
		keys, fences = append(keys, key), append(fences, o.fence)
	}
	t.held, t.orphans = map[string]*lease{}, map[string]orphan{}
	t.epoch++
	return keys, fences
}

// release gives up the leases (key, fence) in the database and deletes
// the heartbeat; rows claimed by an answer that never came expire.
func (t *Table[P]) release(keys []string, fences []int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), t.o.Renew)
	defer cancel()
	batch := &pgx.Batch{}
	batch.Queue(`UPDATE `+t.schema.rows+` r SET owner = NULL, lease_until = NULL
FROM unnest($3::text[], $4::bigint[]) AS h(key, fence)
WHERE r.name = $1 AND r.key = h.key AND r.owner = $2 AND r.fence = h.fence`,
		t.name, t.o.Node, keys, fences)
	batch.Queue(`DELETE FROM `+t.schema.nodes+` WHERE name = $1 AND node = $2`, t.name, t.o.Node)
	batch.Queue(`SELECT pg_notify($1, $2)`, t.schema.channel, change{op: opReleased, name: t.name}.payload())
	if err := t.db.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("postgres: table %q: close: release leases of node %q: %w", t.name, t.o.Node, err)
	}
	return nil
}
