package supervisor

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Table is the source of the rows a supervisor runs: one process per row.
// Implementations may be backed by memory, a database or a remote service,
// which is why both methods take a context and return an error.
type Table[K comparable, V any] interface {
	// Get returns the row for key; a missing row is an error wrapping
	// ErrNotFound.
	Get(ctx context.Context, key K) (V, error)
	// Iter returns an iterator over all rows. Close it when done.
	Iter(ctx context.Context) (Iterator[K, V], error)
}

// Iterator walks the rows of a Table, like sql.Rows: call Next before each
// Get, check Err after the last Next, and Close when done. It makes no
// snapshot promise: rows changed during the walk may or may not be seen.
type Iterator[K comparable, V any] interface {
	// Next advances to the next row and reports whether there is one.
	Next() bool
	// Get returns the current row. An error for one row does not end the
	// walk: the caller may skip it and call Next again.
	Get(ctx context.Context) (K, V, error)
	// Err returns the error, if any, that ended the walk early.
	Err() error
	// Close releases the iterator. It is idempotent.
	Close() error
}

// Watcher is implemented by tables that announce changes.
type Watcher[K comparable] interface {
	// Watch delivers the keys of rows put or deleted after it was called until
	// ctx is done, then closes the channel. A slow reader never blocks writers:
	// pending keys are coalesced.
	Watch(ctx context.Context) (<-chan K, error)
}

// MapTable is the embedded default Table: safe for concurrent use, it
// iterates in insertion order (a re-put keeps its place; a delete then put
// moves the key to the end) and implements Watcher. Put, Delete and Get are
// O(1); Iter copies the rows once. The zero value is an empty table ready to
// use; a MapTable must not be copied after first use.
type MapTable[K comparable, V any] struct {
	mu       sync.RWMutex
	index    map[K]int      // key -> position in rows
	rows     []mapRow[K, V] // insertion order, with tombstones
	live     int            // rows not deleted
	watchers map[*mapWatcher[K]]struct{}
}

type mapRow[K comparable, V any] struct {
	key     K
	value   V
	deleted bool
}

// minCompaction keeps small tables from compacting on every other delete.
const minCompaction = 32

var (
	_ Table[string, int] = (*MapTable[string, int])(nil)
	_ Watcher[string]    = (*MapTable[string, int])(nil)
)

// NewMapTable returns an empty MapTable.
func NewMapTable[K comparable, V any]() *MapTable[K, V] {
	return &MapTable[K, V]{index: make(map[K]int)}
}

// Put sets the row for key and notifies every watcher. A new key goes to the
// end of the iteration order; an existing key keeps its place. Put never
// blocks on watchers.
func (t *MapTable[K, V]) Put(key K, v V) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i, ok := t.index[key]; ok {
		t.rows[i].value = v
	} else {
		if t.index == nil {
			t.index = make(map[K]int)
		}
		t.index[key] = len(t.rows)
		t.rows = append(t.rows, mapRow[K, V]{key: key, value: v})
		t.live++
	}
	t.notify(key)
}

// Delete removes the row for key, notifies every watcher and reports whether
// the row existed. Deleting a missing key notifies nobody. Delete never
// blocks on watchers.
func (t *MapTable[K, V]) Delete(key K) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ok := t.index[key]
	if !ok {
		return false
	}
	delete(t.index, key)
	t.rows[i] = mapRow[K, V]{deleted: true} // drop the value for the GC
	t.live--
	t.compactIfSparse()
	t.notify(key)
	return true
}

// compactIfSparse drops tombstones once they outnumber the live rows, so a
// delete costs O(1) amortised and the rows slice stays within twice the live
// count. Callers hold t.mu for writing.
func (t *MapTable[K, V]) compactIfSparse() {
	dead := len(t.rows) - t.live
	if dead < minCompaction || dead <= t.live {
		return
	}
	kept := t.rows[:0]
	for _, r := range t.rows {
		if !r.deleted {
			t.index[r.key] = len(kept)
			kept = append(kept, r)
		}
	}
	clear(t.rows[len(kept):])
	t.rows = kept
}

// Len returns the number of rows.
func (t *MapTable[K, V]) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.live
}

// Get returns the row for key, or an error wrapping ErrNotFound that names
// the key. It returns ctx.Err() if ctx is done.
func (t *MapTable[K, V]) Get(ctx context.Context, key K) (V, error) {
	var zero V
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	i, ok := t.index[key]
	if !ok {
		return zero, fmt.Errorf("%w: %v", ErrNotFound, key)
	}
	return t.rows[i].value, nil
}

// Iter returns an iterator over a snapshot of the rows in insertion order,
// taken under the lock so writers wait only for one copy. It returns
// ctx.Err() if ctx is done.
func (t *MapTable[K, V]) Iter(ctx context.Context) (Iterator[K, V], error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	snapshot := make([]mapRow[K, V], 0, t.live)
	for _, r := range t.rows {
		if !r.deleted {
			snapshot = append(snapshot, r)
		}
	}
	return &mapIterator[K, V]{rows: snapshot, pos: -1}, nil
}

// mapIterator walks a snapshot; Next and Get do not allocate.
type mapIterator[K comparable, V any] struct {
	rows   []mapRow[K, V]
	pos    int // current row; -1 before the first Next
	closed bool
}

func (it *mapIterator[K, V]) Next() bool {
	if it.closed || it.pos >= len(it.rows) {
		return false
	}
	it.pos++
	return it.pos < len(it.rows)
}

func (it *mapIterator[K, V]) Get(ctx context.Context) (K, V, error) {
	var (
		key   K
		value V
	)
	switch {
	case it.closed:
		return key, value, errors.New("supervisor: table iterator is closed")
	case it.pos < 0:
		return key, value, errors.New("supervisor: table iterator Get called before Next")
	case it.pos >= len(it.rows):
		return key, value, errors.New("supervisor: table iterator Get called after the last row")
	}
	if err := ctx.Err(); err != nil {
		return key, value, err
	}
	r := &it.rows[it.pos]
	return r.key, r.value, nil
}

// Err is always nil: a walk over a snapshot cannot fail.
func (it *mapIterator[K, V]) Err() error { return nil }

func (it *mapIterator[K, V]) Close() error {
	it.closed = true
	it.rows = nil // release the snapshot even if the iterator is kept
	return nil
}

// Watch delivers the keys of rows put or deleted after it was called, until
// ctx is done; then it closes the channel. Each call has its own pending set:
// a key changed again before the reader takes it is delivered once, so
// writers never wait for a slow reader and the pending set never holds more
// than one entry per key. Keys are delivered in the order they first became
// pending. Watch returns ctx.Err() if ctx is already done.
func (t *MapTable[K, V]) Watch(ctx context.Context) (<-chan K, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &mapWatcher[K]{
		queued: make(map[K]struct{}),
		wake:   make(chan struct{}, 1),
	}
	out := make(chan K)
	t.mu.Lock()
	if t.watchers == nil {
		t.watchers = make(map[*mapWatcher[K]]struct{})
	}
	t.watchers[w] = struct{}{}
	t.mu.Unlock()

	go func() {
		defer close(out)
		defer t.unwatch(w)
		w.forward(ctx, out)
	}()
	return out, nil
}

func (t *MapTable[K, V]) unwatch(w *mapWatcher[K]) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.watchers, w)
}

// notify queues key for every watcher. Callers hold t.mu for writing, so a
// watcher sees changes in the order they were made.
func (t *MapTable[K, V]) notify(key K) {
	for w := range t.watchers {
		w.add(key)
	}
}

// mapWatcher is one Watch call: the keys its reader has yet to take, and a
// wake-up signal for its forwarding goroutine.
type mapWatcher[K comparable] struct {
	mu      sync.Mutex
	pending []K // FIFO of distinct keys
	queued  map[K]struct{}
	wake    chan struct{} // capacity 1: a signal is never lost, never waited on
}

// add queues key unless it is already pending. It never blocks.
func (w *mapWatcher[K]) add(key K) {
	w.mu.Lock()
	if _, ok := w.queued[key]; !ok {
		w.queued[key] = struct{}{}
		w.pending = append(w.pending, key)
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default: // a wake-up is already pending
	}
}

// next takes the oldest pending key. Taking it before the send means a key
// changed while its send waits is queued again rather than lost.
func (w *mapWatcher[K]) next() (K, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var zero K
	if len(w.pending) == 0 {
		return zero, false
	}
	key := w.pending[0]
	w.pending[0] = zero
	w.pending = w.pending[1:]
	delete(w.queued, key)
	return key, true
}

// forward sends pending keys to out until ctx is done.
func (w *mapWatcher[K]) forward(ctx context.Context, out chan<- K) {
	for ctx.Err() == nil { // select picks at random; stop promptly once done
		key, ok := w.next()
		if !ok {
			select {
			case <-w.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case out <- key:
		case <-ctx.Done():
			return
		}
	}
}
