package postgres

import (
	"context"
	"fmt"
	"sync"
)

// watcher queues the keys announced to one Watch channel. A key already
// queued is not queued twice, so a slow reader never blocks the Table.
type watcher struct {
	mu      sync.Mutex
	pending []string
	queued  map[string]bool
	signal  chan struct{} // capacity 1: keys are pending
}

func (w *watcher) add(keys []string) {
	w.mu.Lock()
	for _, key := range keys {
		if !w.queued[key] {
			w.queued[key] = true
			w.pending = append(w.pending, key)
		}
	}
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

func (w *watcher) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	keys := w.pending
	w.pending = nil
	clear(w.queued)
	return keys
}

// Watch returns a channel of the keys of rows put or deleted (by any
// node), gained (claimed by this node) or lost (shed, taken, or given up
// when the database could not be reached) after Watch was called. Lease
// renewals that change nothing announce nothing, so a supervisor never
// restarts a process for a renewal — except that a row whose Get failed is
// announced once more after the next successful renewal, as a supervisor
// drops a key it could not read. Pending keys are coalesced. The
// channel is closed when ctx is done or the Table is closed.
func (t *Table[P]) Watch(ctx context.Context) (<-chan string, error) {
	w := &watcher{queued: map[string]bool{}, signal: make(chan struct{}, 1)}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, fmt.Errorf("postgres: table %q: watch: %w", t.name, ErrClosed)
	}
	t.watchers[w] = struct{}{}
	t.background.Add(1)
	t.mu.Unlock()
	out := make(chan string)
	go func() {
		defer t.background.Done()
		defer close(out)
		defer func() {
			t.mu.Lock()
			delete(t.watchers, w)
			t.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.done:
				return
			case <-w.signal:
			}
			for _, key := range w.take() {
				select {
				case out <- key:
				case <-ctx.Done():
					return
				case <-t.done:
					return
				}
			}
		}
	}()
	return out, nil
}

// announceLocked queues keys on every watcher; t.mu is held.
func (t *Table[P]) announceLocked(keys ...string) {
	if len(keys) == 0 {
		return
	}
	for w := range t.watchers {
		w.add(keys)
	}
}
