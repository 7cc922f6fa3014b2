package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// listen keeps a connection of its own LISTENing on the prefix's channel,
// reconnecting with a growing delay (up to Renew) when it breaks. After
// every (re)connect it asks for a renewal cycle, which catches up on the
// notifications that may have been missed: rows put while nobody listened
// are claimed, and puts and deletes of held rows are noticed by their
// versions.
func (t *Table[P]) listen(ctx context.Context) {
	defer t.background.Done()
	const firstDelay = 100 * time.Millisecond
	delay := min(firstDelay, t.o.Renew)
	for {
		connected, err := t.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			delay = min(firstDelay, t.o.Renew)
		}
		t.log.Warn("postgres: listener connection lost; reconnecting", "err", err, "in", delay)
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		delay = min(2*delay, t.o.Renew)
	}
}

// listenOnce connects, listens and handles notifications until the
// connection breaks or ctx is done; connected reports whether LISTEN
// succeeded.
func (t *Table[P]) listenOnce(ctx context.Context) (connected bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, t.db.Config().ConnConfig.Copy())
	if err != nil {
		return false, err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), t.o.Renew)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, t.schema.listen); err != nil {
		return false, err
	}
	t.wakeUp()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true, err
		}
		t.notified(n.Payload)
	}
}

// notified applies one notification.
func (t *Table[P]) notified(payload string) {
	c, err := parseChange(payload)
	if err != nil {
		t.log.Warn("postgres: ignoring a notification", "err", err)
		return
	}
	if c.name != t.name {
		return
	}
	if c.op == opReleased {
		t.wakeUp() // rows are free: claim up to the fair share
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.held[c.key]
	if l == nil {
		// A claim under way may take the row at an older version: the
		// claim's announcement covers this change, so its lease starts
		// at this version, and a renewal does not announce it again.
		t.notifiedFree[c.key] = max(t.notifiedFree[c.key], c.version)
		t.announceLocked(c.key)
		if c.op == opPutFree {
			t.wakeUp()
		}
		return
	}
	if c.version <= l.version {
		return // a renewal saw this change first and announced it
	}
	l.version = c.version
	switch {
	case c.op == opDelete:
		// A row already being shed stays shed: it is released either way.
		if l.active() {
			l.releaseAt = time.Now().Add(t.o.StopGrace)
			l.deleted = true
			t.announceLocked(c.key)
		}
	case l.deleted:
		t.wakeUp() // put again while its process stops: a renewal confirms it
	case l.active():
		t.announceLocked(c.key)
	}
}
