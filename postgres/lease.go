package postgres

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// This file keeps this node's leases: every Renew one cycle writes the
// heartbeat, renews the held leases, releases the rows given up, purges
// released tombstones and counts live nodes and rows (one batch, one round
// trip); then the node sheds rows over its fair share, or claims rows up
// to it. A timer declares every row lost when renewals stop succeeding.

// renewLoop runs a cycle every Renew, sooner when a release is due, and
// shortly after a wake (a free row was put, a node released rows, the
// listener reconnected).
func (t *Table[P]) renewLoop(ctx context.Context) {
	defer t.background.Done()
	timer := time.NewTimer(t.o.Renew)
	defer timer.Stop()
	minGap := t.o.Renew / 10 // wakes coalesce into at most one cycle per minGap
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
			timer.Reset(max(0, time.Until(last.Add(minGap))))
			continue
		case <-timer.C:
		}
		last = time.Now()
		err := t.cycle(ctx)
		next := t.untilNextCycle()
		if err != nil && ctx.Err() == nil {
			t.log.Warn("postgres: lease renewal failed", "err", err)
			// A due release stays due until a cycle succeeds: retry it,
			// but not in a loop.
			next = max(next, t.o.Renew/4)
		}
		timer.Reset(next)
	}
}

// wakeUp asks for a cycle soon, without blocking.
func (t *Table[P]) wakeUp() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// untilNextCycle is Renew, or less if a held row's release comes first.
func (t *Table[P]) untilNextCycle() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	next := t.o.Renew
	for _, l := range t.held {
		if !l.active() {
			next = min(next, max(0, time.Until(l.releaseAt)))
		}
	}
	return next
}

// renewed is one row of the renewal's answer.
type renewed struct {
	Key     string
	Fence   int64
	Version int64
	Deleted bool
}

// cycle renews, then sheds or claims. Its ctx ends at the loss deadline at
// the latest, so a hung query cannot outlive the leases it renews.
func (t *Table[P]) cycle(ctx context.Context) error {
	t.mu.Lock()
	epoch := t.epoch
	clear(t.notifiedFree) // what was notified before this cycle's claim, the claim reads
	var keys, releaseKeys []string
	var fences, releaseFences []int64
	var releaseOnlyDeleted []bool
	now := time.Now()
	for key, l := range t.held {
		// Every held lease is renewed, those due for release too: the
		// release of a deleted row that was put again is skipped, and its
		// lease must still be good.
		keys = append(keys, key)
		if !l.active() && !now.Before(l.releaseAt) {
			releaseKeys = append(releaseKeys, key)
			releaseFences = append(releaseFences, l.fence)
			releaseOnlyDeleted = append(releaseOnlyDeleted, l.deleted)
		}
		fences = append(fences, l.fence)
	}
	deadline := t.deadline
	t.mu.Unlock()

	limit := time.Now().Add(t.o.LeaseTTL)
	if len(keys) > 0 && deadline.After(time.Now()) {
		limit = deadline
	}
	ctx, cancel := context.WithDeadline(ctx, limit)
	defer cancel()

	ttl := t.o.LeaseTTL.Microseconds()
	sent := time.Now()
	batch := &pgx.Batch{}
	// The statements below join the rows with arrays of keys. A prepared
	// statement may switch to a generic plan after five runs, and before
	// the table has statistics that plan walks the whole array for every
	// row (seconds for 10k rows, past the loss deadline): every plan of
	// this transaction is made for its parameters.
	batch.Queue(`SELECT set_config('plan_cache_mode', 'force_custom_plan', true)`)
	// The heartbeat; heartbeats of nodes gone for 10 LeaseTTLs are dropped.
	batch.Queue(`WITH gone AS (
	DELETE FROM `+t.schema.nodes+` WHERE name = $1 AND heartbeat < now() - 10 * $3 * interval '1 microsecond'
)
INSERT INTO `+t.schema.nodes+` (name, node, heartbeat) VALUES ($1, $2, now())
ON CONFLICT (name, node) DO UPDATE SET heartbeat = now()`, t.name, t.o.Node, ttl)
	var renewedRows []renewed
	batch.Queue(`UPDATE `+t.schema.rows+` r SET lease_until = now() + $5 * interval '1 microsecond'
FROM unnest($3::text[], $4::bigint[]) AS h(key, fence)
WHERE r.name = $1 AND r.key = h.key AND r.owner = $2 AND r.fence = h.fence
RETURNING r.key, r.fence, r.version, r.deleted`, t.name, t.o.Node, keys, fences, ttl).
		Query(func(rows pgx.Rows) error {
			var err error
			renewedRows, err = pgx.CollectRows(rows, pgx.RowToStructByPos[renewed])
			return err
		})
	var released []string
	if len(releaseKeys) > 0 {
		batch.Queue(`UPDATE `+t.schema.rows+` r SET owner = NULL, lease_until = NULL
FROM unnest($3::text[], $4::bigint[], $5::bool[]) AS h(key, fence, only_deleted)
WHERE r.name = $1 AND r.key = h.key AND r.owner = $2 AND r.fence = h.fence AND (r.deleted OR NOT h.only_deleted)
RETURNING r.key`, t.name, t.o.Node, releaseKeys, releaseFences, releaseOnlyDeleted).
			Query(func(rows pgx.Rows) error {
				var err error
				released, err = pgx.CollectRows(rows, pgx.RowTo[string])
				return err
			})
		batch.Queue(`SELECT pg_notify($1, $2)`, t.schema.channel, change{op: opReleased, name: t.name}.payload())
	}
	// A tombstone nobody holds any more goes; the fence floor keeps the
	// fence of a row put again above every fence it had.
	batch.Queue(`WITH p AS (
	DELETE FROM `+t.schema.rows+` WHERE name = $1 AND deleted AND (owner IS NULL OR lease_until < now())
	RETURNING fence
)
INSERT INTO `+t.schema.tables+` AS t (name, fence_floor) SELECT $1, max(fence) FROM p HAVING count(*) > 0
ON CONFLICT (name) DO UPDATE SET fence_floor = greatest(t.fence_floor, EXCLUDED.fence_floor)`, t.name)
	var live, total int64
	batch.Queue(`SELECT
	(SELECT count(*) FROM `+t.schema.nodes+` WHERE name = $1 AND heartbeat > now() - $2 * interval '1 microsecond'),
	(SELECT count(*) FROM `+t.schema.rows+` WHERE name = $1 AND NOT deleted)`, t.name, ttl).
		QueryRow(func(row pgx.Row) error { return row.Scan(&live, &total) })
	if err := t.db.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("renew %d leases: %w", len(keys), err)
	}

	need, ok := t.renewedAt(sent, epoch, keys, renewedRows, released, share(total, live))
	if !ok || need == 0 {
		return nil
	}
	return t.claim(ctx, epoch, need)
}

// share is ceil(rows / live nodes); this node is live, having just
// written its heartbeat.
func share(rows, live int64) int {
	live = max(live, 1)
	return int((rows + live - 1) / live)
}

// renewedAt applies a successful renewal sent at sent: it moves the loss
// deadline, drops released leases, notices rows deleted, put or taken,
// and sheds rows over the fair share. It returns how many rows to claim,
// and false if the renewal came too late to count (every row was lost in
// the meantime).
func (t *Table[P]) renewedAt(sent time.Time, epoch uint64, sentKeys []string,
	rows []renewed, released []string, fair int) (int, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.epoch != epoch || t.closed {
		return 0, false
	}
	deadline := sent.Add(t.o.LeaseTTL - t.o.StopGrace - t.o.Renew)
	if !time.Now().Before(deadline) {
		t.loseAllLocked("renewal answered after the loss deadline")
		return 0, false
	}
	t.deadline = deadline
	t.loss.Reset(time.Until(deadline))

	var changed []string
	for _, key := range released {
		delete(t.held, key)
	}
	now := time.Now()
	found := make(map[string]bool, len(rows))
	for _, r := range rows {
		found[r.Key] = true
		l := t.held[r.Key]
		if l == nil || l.fence != r.Fence {
			continue
		}
		switch {
		case r.Deleted && !l.deleted:
			// A delete whose notification did not come (yet). A row
			// already being shed stays shed: it is released either way.
			if l.active() {
				changed = append(changed, r.Key)
				l.releaseAt = now.Add(t.o.StopGrace)
				l.deleted = true
			}
		case !r.Deleted && l.deleted:
			// Put again while the old process stopped: this node runs it again.
			l.deleted, l.releaseAt = false, time.Time{}
			changed = append(changed, r.Key)
		case r.Version > l.version && l.active():
			changed = append(changed, r.Key) // a put whose notification did not come (yet)
		}
		// A notification may have brought a newer version than this
		// renewal read: versions only move forward.
		l.version = max(l.version, r.Version)
	}
	for _, key := range sentKeys {
		if l := t.held[key]; l != nil && !found[key] {
			// Taken by another node, or changed behind this node's back:
			// not this node's any more.
			t.log.Warn("postgres: lease of a row not renewed; giving it up", "key", key, "fence", l.fence)
			delete(t.held, key)
			changed = append(changed, key)
		}
	}
	for key := range t.retry {
		if l := t.held[key]; l != nil && l.active() {
			changed = append(changed, key)
		}
	}
	clear(t.retry)
	changed = append(changed, t.shedLocked(fair, now)...)
	t.announceLocked(changed...)

	active := 0
	for _, l := range t.held {
		if l.active() {
			active++
		}
	}
	return max(0, fair-active), true
}

// shedLocked gives up the rows over the fair share: they stop being
// announced as this node's now and are released StopGrace later, once
// their processes have stopped. It gives up the greatest keys.
func (t *Table[P]) shedLocked(fair int, now time.Time) []string {
	var active []string
	for key, l := range t.held {
		if l.active() {
			active = append(active, key)
		}
	}
	if len(active) <= fair {
		return nil
	}
	slices.Sort(active)
	shed := active[fair:]
	for _, key := range shed {
		t.held[key].releaseAt = now.Add(t.o.StopGrace)
	}
	t.log.Info("postgres: shedding rows over the fair share", "rows", len(shed), "share", fair)
	return shed
}

type claimed struct {
	Key     string
	Fence   int64
	Version int64
}

// claim takes up to need free or expired rows, skipping rows another
// node is claiming (FOR UPDATE SKIP LOCKED), and rows this node's ID
// still owns from before a loss (its orphans, matched by fence, so that
// another Table under the same ID keeps its own). Each claim raises the
// fence above both the row's and the table's fence floor.
func (t *Table[P]) claim(ctx context.Context, epoch uint64, need int) error {
	t.mu.Lock()
	var orphanKeys []string
	var orphanFences []int64
	for key, o := range t.orphans {
		if time.Since(o.since) > t.o.LeaseTTL {
			delete(t.orphans, key) // its lease has expired: claimable as any other
			continue
		}
		orphanKeys = append(orphanKeys, key)
		orphanFences = append(orphanFences, o.fence)
	}
	t.mu.Unlock()
	// An unnamed statement: planned for its parameters every time (see cycle).
	rows, err := t.db.Query(ctx, `WITH c AS (
	SELECT key FROM `+t.schema.rows+`
	WHERE name = $1 AND NOT deleted
	  AND (owner IS NULL OR lease_until IS NULL OR lease_until < now()
	       OR (owner = $2 AND (key, fence) IN (SELECT * FROM unnest($3::text[], $4::bigint[]))))
	ORDER BY key LIMIT $5
	FOR UPDATE SKIP LOCKED
)
UPDATE `+t.schema.rows+` r SET owner = $2, lease_until = now() + $6 * interval '1 microsecond',
	fence = greatest(r.fence, coalesce((SELECT fence_floor FROM `+t.schema.tables+` WHERE name = $1), 0)) + 1
FROM c WHERE r.name = $1 AND r.key = c.key
RETURNING r.key, r.fence, r.version`, pgx.QueryExecModeExec, t.name, t.o.Node, orphanKeys, orphanFences, need, t.o.LeaseTTL.Microseconds())
	if err != nil {
		return fmt.Errorf("claim %d rows: %w", need, err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[claimed])
	if err != nil {
		return fmt.Errorf("claim %d rows: %w", need, err)
	}
	if len(got) == 0 {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.epoch != epoch || t.closed || !time.Now().Before(t.deadline) {
		// Lost meanwhile, or too late: the rows are this node's orphans
		// now, claimed back by a later cycle or expiring to any node.
		for _, c := range got {
			t.orphans[c.Key] = orphan{fence: c.Fence, since: time.Now()}
		}
		return nil
	}
	keys := make([]string, 0, len(got))
	for _, c := range got {
		t.held[c.Key] = &lease{fence: c.Fence, version: max(c.Version, t.notifiedFree[c.Key])}
		delete(t.orphans, c.Key)
		keys = append(keys, c.Key)
	}
	t.log.Info("postgres: claimed rows", "rows", len(keys))
	t.announceLocked(keys...)
	return nil
}

// orphan is a row this node's ID owns in the database, with a lease that
// may still be good, that this Table does not hold.
type orphan struct {
	fence int64
	since time.Time
}

// lossDue runs at the loss deadline: unless a renewal moved it, every
// row is lost.
func (t *Table[P]) lossDue() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || time.Now().Before(t.deadline) {
		return
	}
	t.loseAllLocked("no successful renewal in time")
}

// loseAllLocked declares every held row lost: their processes stop now,
// StopGrace before the earliest another node can claim them.
func (t *Table[P]) loseAllLocked(why string) {
	t.epoch++ // a cycle under way cannot adopt what it renews or claims
	if len(t.held) == 0 {
		return
	}
	keys := make([]string, 0, len(t.held))
	now := time.Now()
	for key, l := range t.held {
		keys = append(keys, key)
		t.orphans[key] = orphan{fence: l.fence, since: now}
	}
	t.held = map[string]*lease{}
	t.log.Error("postgres: database unreachable or too slow; stopping every row of this node",
		"rows", len(keys), "why", why, "deadline", t.deadline)
	t.announceLocked(keys...)
}
