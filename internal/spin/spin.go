// Package spin provides a lock for very short critical sections under
// heavy contention.
package spin

import (
	"runtime"
	"sync/atomic"
)

// maxBackoff bounds the yields between two attempts of a waiting Lock.
const maxBackoff = 16

// Lock is a mutual exclusion lock whose waiters yield the processor
// instead of sleeping. Under a sync.Mutex, hundreds of goroutines
// contending for a critical section of a few dozen nanoseconds push the
// mutex into starvation mode, where every Unlock hands the lock to a
// sleeping waiter and throughput falls to one goroutine switch per
// acquisition; a yielding waiter never sleeps, so the lock goes to
// whichever goroutine is running. Use it only around a few memory
// operations: a waiter burns its time slice while it waits.
//
// The zero value is an unlocked Lock.
type Lock struct{ state atomic.Uint32 }

// Lock locks l, yielding the processor while another goroutine holds it.
func (l *Lock) Lock() {
	backoff := 1
	for !l.state.CompareAndSwap(0, 1) {
		for range backoff {
			runtime.Gosched()
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// Unlock unlocks l. It is a run-time error (a panic) if l is not locked.
func (l *Lock) Unlock() {
	if !l.state.CompareAndSwap(1, 0) {
		panic("spin: unlock of unlocked lock")
	}
}
