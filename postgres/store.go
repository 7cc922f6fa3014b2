package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gosupervise/supervisor/background"
)

// lockNotAvailable is the SQLSTATE of a NOWAIT lock that another
// transaction holds.
const lockNotAvailable = "55P03"

// rollbackTimeout bounds a ROLLBACK. A rollback the server does not answer
// in time closes the connection instead, which ends the transaction too.
const rollbackTimeout = 5 * time.Second

// Store is a background.Store on PostgreSQL: every Process, on any
// machine, that names the same state on a Store with the same Prefix on
// the same database shares that state, and its lock. States live in the
// table <Prefix>states as JSON, one row per name.
//
// A transaction (Tx) holds one connection of the pool from Lock until
// Commit or Rollback, and closing the pool waits for it: size the pool for
// the transactions open at once, plus what Tables on it need.
type Store struct {
	db     *pgxpool.Pool
	schema schema
	logger *slog.Logger
}

var _ background.Store = (*Store)(nil)

// NewStore returns a Store on db, creating the schema of o.Prefix if it is
// missing. Of o it uses Prefix (default "supervisor_") and Logger (default
// slog.Default()), but it checks all of it as NewTable does: options that
// a Table would refuse are an error wrapping ErrInvalidOptions here too.
func NewStore(ctx context.Context, db *pgxpool.Pool, o Options) (*Store, error) {
	if db == nil {
		return nil, fmt.Errorf("postgres: NewStore: %w: nil pool", ErrInvalidOptions)
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("postgres: NewStore: %w", err)
	}
	s := &Store{db: db, schema: newSchema(o.Prefix), logger: o.Logger}
	if err := s.schema.create(ctx, db); err != nil {
		return nil, fmt.Errorf("postgres: NewStore: %w", err)
	}
	return s, nil
}

// Lock starts a transaction holding the lock of the state named name, or
// returns an error wrapping background.ErrLocked at once if another
// transaction holds it. The name is a key of the states table: at most
// MaxKeyLen bytes of UTF-8 without NUL (else ErrInvalidKey).
//
// The state's row is inserted, if missing, by a statement of its own
// before the transaction starts, so that callers racing for a new name
// never wait on one another's insert; the transaction then takes the row
// with SELECT … FOR UPDATE NOWAIT. ctx is the transaction's: once it is
// done, the Tx's methods fail and Commit rolls back, as database/sql's
// transactions do.
func (s *Store) Lock(ctx context.Context, name string) (background.Tx, error) {
	if err := checkName("state name", name, MaxKeyLen); err != nil {
		return nil, fmt.Errorf("postgres: store: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("postgres: store: state %q: lock: %w", name, err)
	}
	_, err := s.db.Exec(ctx, `INSERT INTO `+s.schema.states+` (name) VALUES ($1) ON CONFLICT (name) DO NOTHING`, name)
	if err != nil {
		return nil, fmt.Errorf("postgres: store: state %q: insert: %w", name, err)
	}
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres: store: state %q: begin: %w", name, err)
	}
	var state []byte
	err = tx.QueryRow(ctx, `SELECT state FROM `+s.schema.states+` WHERE name = $1 FOR UPDATE NOWAIT`, name).Scan(&state)
	if err != nil {
		s.rollback(ctx, tx, name)
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == lockNotAvailable:
			return nil, fmt.Errorf("postgres: store: state %q: %w", name, background.ErrLocked)
		case errors.Is(err, pgx.ErrNoRows):
			return nil, fmt.Errorf("postgres: store: state %q: lock: the row was deleted after its insert", name)
		}
		return nil, fmt.Errorf("postgres: store: state %q: lock: %w", name, err)
	}
	return &storeTx{tx: tx, ctx: ctx, name: name, states: s.schema.states, state: state}, nil
}

// rollback ends a transaction Lock could not complete; its error is only
// logged, as the caller gets the reason the lock failed (and not at all
// when ctx is done: the connection was closed for it).
func (s *Store) rollback(ctx context.Context, tx pgx.Tx, name string) {
	if err := endRollback(ctx, tx); err != nil && ctx.Err() == nil {
		s.logger.Warn("postgres: store: rollback failed; the connection is closed instead", "state", name, "err", err)
	}
}

// endRollback rolls tx back even when ctx is done, within rollbackTimeout.
// On failure pgx closes the connection, which rolls back too.
func endRollback(ctx context.Context, tx pgx.Tx) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	return tx.Rollback(ctx)
}

// storeTx is a Store transaction. Its methods serialise on mu: the
// connection under it carries one statement at a time.
type storeTx struct {
	tx     pgx.Tx
	ctx    context.Context // Lock's: the transaction's lifetime
	name   string
	states string // the states table, quoted

	mu    sync.Mutex
	state []byte // the state as this transaction sees it, JSON; nil: never written
	err   error  // the first failed statement: the transaction is lost
	done  bool
}

// Read returns the state as this transaction sees it: the row read under
// the lock (which nobody else can change while it is held), or what this
// transaction wrote. ErrNotFound before the state's first write.
func (t *storeTx) Read(ctx context.Context) (*background.State, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.usable(ctx); err != nil {
		return nil, fmt.Errorf("postgres: store: state %q: read: %w", t.name, err)
	}
	if t.state == nil || string(t.state) == "null" {
		return nil, fmt.Errorf("postgres: store: state %q: %w", t.name, background.ErrNotFound)
	}
	var s background.State
	if err := json.Unmarshal(t.state, &s); err != nil {
		return nil, fmt.Errorf("postgres: store: state %q: decode: %w", t.name, err)
	}
	return &s, nil
}

// Write replaces the state within the transaction, with s's Name set to
// the locked name (s itself is left alone); Commit makes it visible.
func (t *storeTx) Write(ctx context.Context, s *background.State) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.usable(ctx); err != nil {
		return fmt.Errorf("postgres: store: state %q: write: %w", t.name, err)
	}
	if s == nil {
		return fmt.Errorf("postgres: store: state %q: writing a nil state", t.name)
	}
	named := *s // a shallow copy: encoding reads it only
	named.Name = t.name
	state, err := json.Marshal(&named)
	if err != nil {
		return fmt.Errorf("postgres: store: state %q: encode: %w", t.name, err)
	}
	tag, err := t.tx.Exec(ctx, `UPDATE `+t.states+` SET state = $2 WHERE name = $1`, t.name, string(state))
	if err == nil && tag.RowsAffected() != 1 {
		err = fmt.Errorf("%d rows updated, want 1", tag.RowsAffected())
	}
	if err != nil {
		t.err = err
		return fmt.Errorf("postgres: store: state %q: write: %w", t.name, err)
	}
	t.state = state
	return nil
}

// lost says why the transaction can no longer commit, if it cannot: a
// statement failed, or Lock's ctx is done.
func (t *storeTx) lost() error {
	switch {
	case t.err != nil:
		return fmt.Errorf("the transaction failed: %w", t.err)
	case t.ctx.Err() != nil:
		return fmt.Errorf("the transaction's context: %w", context.Cause(t.ctx))
	}
	return nil
}

// usable says why the transaction cannot take a statement, if it cannot.
func (t *storeTx) usable(ctx context.Context) error {
	if t.done {
		return background.ErrTxDone
	}
	if err := t.lost(); err != nil {
		return err
	}
	switch {
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case t.tx.Conn().IsClosed():
		return errors.New("the connection is closed")
	}
	return nil
}

// Commit stores what was written and releases the lock. It fails, and
// rolls back, when the transaction failed before or Lock's ctx is done.
func (t *storeTx) Commit() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return fmt.Errorf("postgres: store: state %q: commit: %w", t.name, background.ErrTxDone)
	}
	t.done = true
	if lost := t.lost(); lost != nil {
		// Rolled back here rather than by closing the connection, so the
		// lock is free when Commit returns.
		_ = endRollback(t.ctx, t.tx)
		return fmt.Errorf("postgres: store: state %q: commit: %w", t.name, lost)
	}
	if err := t.tx.Commit(t.ctx); err != nil {
		return fmt.Errorf("postgres: store: state %q: commit: %w", t.name, err)
	}
	return nil
}

// Rollback discards what was written and releases the lock, even after
// Lock's ctx is done. An error means that the server did not confirm the
// rollback; the connection is closed then, which discards the transaction
// as well.
func (t *storeTx) Rollback() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return fmt.Errorf("postgres: store: state %q: rollback: %w", t.name, background.ErrTxDone)
	}
	t.done = true
	if err := endRollback(t.ctx, t.tx); err != nil {
		return fmt.Errorf("postgres: store: state %q: rollback: %w", t.name, err)
	}
	return nil
}
