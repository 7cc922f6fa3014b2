// Package background runs scheduled, persisted batch work: a Process
// works through a set of registered work items at a schedule frequency,
// keeps its state in a Store shared by every instance of the service, and
// lets exactly one instance own each run.
//
// Each cycle claims the current schedule slot under the store's lock,
// unless another instance runs it or already ran it; ownership is the pair
// (Instance, Claim), so a stalled owner is taken over after its slot and
// finds out at its next Progress (Conflict), after which it writes nothing.
// Errors count against per-item and per-run limits (10 and 25 by default)
// and can go to a supervisor.ErrorKernel, whose Abort aborts the run.
// Settings changed while a run works are merged into it at its next
// progress write.
//
// A run should end within its slot. At the next slot boundary, an active
// run whose last progress write is older than the boundary counts as
// stalled: the first instance to cycle in the new slot (at the boundary
// plus a jitter of at most min(30s, frequency/10), which may be none)
// takes it over from the first item, and the old owner gets Conflict at
// its next write — until then it may still work on items the new owner
// works on too.
//
// Quick start:
//
//	store := background.NewMemoryStore() // or postgres.NewStore, for several machines
//	p := background.NewProcess("reindex", worker, store, time.Hour, background.Params{})
//	if _, err := p.RegisterWork("users", background.Params{Ints: map[string]int64{"batch": 500}}, nil); err != nil {
//		return err
//	}
//	go p.Run(ctx) // first cycle after a minute, then every hour on the hour, plus jitter
//
// where worker implements Worker: ProcessActiveWork for each item,
// CleanupWork for unregistered ones, and Wait between cycles.
//
// The package reads time only from package time and starts no goroutine
// of its own, so a Process runs inside a testing/synctest bubble.
package background
