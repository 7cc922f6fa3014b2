package background

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

var (
	// ErrLocked is returned by Store.Lock when another transaction holds
	// the state's lock.
	ErrLocked = errors.New("background: state locked")
	// ErrNotFound is returned by Tx.Read before the state's first write.
	ErrNotFound = errors.New("background: state not found")
	// ErrTxDone is returned by a Tx used after Commit or Rollback.
	ErrTxDone = errors.New("background: transaction already committed or rolled back")
)

// Store keeps the states of processes, shared by every instance of them:
// the memory store for one program (and tests), a database (the postgres
// module) for several machines.
type Store interface {
	// Lock starts a transaction holding the named state's lock; ErrLocked
	// at once when another transaction holds it.
	Lock(ctx context.Context, name string) (Tx, error)
}

// Tx is a transaction on one state, holding its lock until Commit or
// Rollback.
type Tx interface {
	// Read returns the state as this transaction sees it; ErrNotFound
	// before the first write.
	Read(ctx context.Context) (*State, error)
	// Write replaces the state; it is stored at Commit.
	Write(ctx context.Context, s *State) error
	// Commit stores what was written and releases the lock.
	Commit() error
	// Rollback discards what was written and releases the lock.
	Rollback() error
}

// MemoryStore is a Store in memory, for one program and for tests. States
// are deep-copied in and out: no two readers share a map. Its zero value
// is not ready; use NewMemoryStore.
type MemoryStore struct {
	mu     sync.Mutex
	states map[string]*State
	locked map[string]bool
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{states: map[string]*State{}, locked: map[string]bool{}}
}

// Lock starts a transaction on the named state, or answers ErrLocked at
// once if another transaction holds it; ctx's error if ctx is done.
func (m *MemoryStore) Lock(ctx context.Context, name string) (Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.locked[name] {
		return nil, fmt.Errorf("background: memory store: state %q: %w", name, ErrLocked)
	}
	m.locked[name] = true
	return &memoryTx{store: m, name: name}, nil
}

// memoryTx is a MemoryStore transaction. Its methods are for one
// goroutine at a time, as a database transaction's are.
type memoryTx struct {
	store   *MemoryStore
	name    string
	written *State // what Commit stores; nil: nothing written
	done    bool
}

func (t *memoryTx) Read(ctx context.Context) (*State, error) {
	if t.done {
		return nil, ErrTxDone
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if t.written != nil {
		return t.written.Clone(), nil
	}
	t.store.mu.Lock()
	defer t.store.mu.Unlock()
	s, ok := t.store.states[t.name]
	if !ok {
		return nil, fmt.Errorf("background: memory store: state %q: %w", t.name, ErrNotFound)
	}
	return s.Clone(), nil
}

func (t *memoryTx) Write(ctx context.Context, s *State) error {
	if t.done {
		return ErrTxDone
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("background: memory store: state %q: writing a nil state", t.name)
	}
	t.written = s.Clone()
	t.written.Name = t.name
	return nil
}

func (t *memoryTx) Commit() error {
	return t.end(true)
}

func (t *memoryTx) Rollback() error {
	return t.end(false)
}

func (t *memoryTx) end(commit bool) error {
	if t.done {
		return ErrTxDone
	}
	t.done = true
	t.store.mu.Lock()
	defer t.store.mu.Unlock()
	if commit && t.written != nil {
		t.store.states[t.name] = t.written
	}
	delete(t.store.locked, t.name)
	return nil
}
