package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// schema names the tables and the channel of one Prefix. Every table name
// shares them: a row belongs to the table named in its first column.
//
//	<prefix>tables  one row per table name: the fence floor of purged rows
//	<prefix>rows    the rows: data, version, tombstone, owner, fence, lease
//	<prefix>nodes   one heartbeat per node and table name
//	<prefix>states  background states (Store), as JSON
//	<prefix>versions the sequence of row versions
type schema struct {
	tables, rows, nodes, states string // quoted identifiers
	nextVersion                 string // nextval of the versions sequence
	channel                     string // NOTIFY channel name, unquoted
	listen                      string // LISTEN statement
	prefix                      string
}

func newSchema(prefix string) schema {
	quote := func(s string) string { return pgx.Identifier{prefix + s}.Sanitize() }
	return schema{
		tables: quote("tables"),
		rows:   quote("rows"),
		nodes:  quote("nodes"),
		states: quote("states"),
		// Versions come from one sequence, so a row purged and put again
		// still gets versions above every one it had.
		nextVersion: `nextval('` + quote("versions") + `')`,
		channel:     prefix + "changes",
		listen:      "LISTEN " + quote("changes"),
		prefix:      prefix,
	}
}

// create makes the schema if it is missing. Nodes starting together
// serialise on a transaction-scoped advisory lock, since concurrent
// CREATE TABLE IF NOT EXISTS can still collide in the catalog.
func (s schema) create(ctx context.Context, db *pgxpool.Pool) error {
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, s.prefix+"schema"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
CREATE SEQUENCE IF NOT EXISTS `+pgx.Identifier{s.prefix + "versions"}.Sanitize()+`;
CREATE TABLE IF NOT EXISTS `+s.tables+` (
	name        text PRIMARY KEY,
	fence_floor bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS `+s.rows+` (
	name        text NOT NULL,
	key         text NOT NULL,
	data        bytea,
	version     bigint NOT NULL DEFAULT `+s.nextVersion+`,
	deleted     boolean NOT NULL DEFAULT false,
	owner       text,
	fence       bigint NOT NULL DEFAULT 0,
	lease_until timestamptz,
	PRIMARY KEY (name, key)
);
CREATE INDEX IF NOT EXISTS `+pgx.Identifier{s.prefix + "rows_owner"}.Sanitize()+` ON `+s.rows+` (name, owner);
CREATE INDEX IF NOT EXISTS `+pgx.Identifier{s.prefix + "rows_deleted"}.Sanitize()+` ON `+s.rows+` (name) WHERE deleted;
ALTER SEQUENCE `+pgx.Identifier{s.prefix + "versions"}.Sanitize()+` OWNED BY `+s.rows+`.version;
CREATE TABLE IF NOT EXISTS `+s.nodes+` (
	name      text NOT NULL,
	node      text NOT NULL,
	heartbeat timestamptz NOT NULL,
	PRIMARY KEY (name, node)
);
CREATE TABLE IF NOT EXISTS `+s.states+` (
	name  text PRIMARY KEY,
	state jsonb
)`)
		return err
	})
	if err != nil {
		return fmt.Errorf("postgres: create schema %q: %w", s.prefix, err)
	}
	return nil
}
