// Background is a tour of package background: two instances of one
// scheduled process, "alpha" and "beta", share one store and take turns
// reindexing a few tables, one schedule slot (1s here) at a time. Run it
// from anywhere in the repository with
//
//	go run ./examples/background            # from the repository root
//	go run . -runs 5                        # from examples/background
//
// The instance that claims the first run stalls in its first item; once
// its slot is over, the other instance takes the run over, and the stalled
// one, when it wakes up, gets Conflict from its next Progress and writes
// nothing more. The tour prints every claim, every item processed, the
// stall, the conflict and the take-over as they happen, with the time
// since start; after -runs finished runs it stops both instances and
// prints what the store holds. Ctrl-C stops it early, cleanly.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gosupervise/supervisor/background"
)

func main() {
	runs := flag.Int("runs", 3, "finished runs before the tour stops both instances")
	every := flag.Duration("every", time.Second, "the schedule frequency: one slot, one run")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, tourConfig{runs: *runs, every: *every}); err != nil {
		fmt.Fprintln(os.Stderr, "background example:", err)
		stop()
		os.Exit(1)
	}
}

// tourConfig is what main passes to run.
type tourConfig struct {
	runs  int           // finished runs before the tour stops
	every time.Duration // the schedule frequency
}

const (
	processName = "reindex"
	stallItem   = "accounts" // the item the first run stalls in
	itemTime    = 50 * time.Millisecond
)

// items are the registered work items and their batch sizes.
var items = map[string]int64{"accounts": 100, "invoices": 250, "orders": 400, "products": 50}

// run is the whole program; main only reads the flags and handles Ctrl-C,
// so that a test can run the tour.
func run(ctx context.Context, out io.Writer, cfg tourConfig) error {
	if cfg.runs < 1 || cfg.every <= 0 {
		return fmt.Errorf("-runs must be at least 1 and -every positive (got %d, %s)", cfg.runs, cfg.every)
	}
	con := newConsole(out, cfg.every)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// One store for every instance. The MemoryStore serves one program; a
	// database store does the same across machines. The tour watches it
	// to print what each committed write meant: a claim, a take-over, a
	// finished run. Once cfg.runs runs have finished, it stops the tour.
	mem := background.NewMemoryStore()
	store := newWatchedStore(mem, con, cfg.runs, cancel)

	// The tour prints the events instead of logging them; a real program
	// keeps a logger (nil means slog.Default()).
	quiet := slog.New(slog.DiscardHandler)

	var procs []*background.Process
	for i, id := range []string{"alpha", "beta"} {
		w := &worker{con: con, tookOver: store.tookOver, stallCap: 10 * cfg.every}
		p := background.NewProcess(processName, w, store, cfg.every, background.Params{},
			background.WithInstance(id), background.WithLogger(quiet))
		// The defaults suit hourly work: a minute before the first cycle,
		// frequencies of at least 15 minutes. The tour runs in seconds:
		// alpha's first cycle comes 100ms after start and beta's 300ms,
		// so that alpha claims the first run; progress is written at
		// most every 20ms.
		if err := p.UpdateFlowControl(time.Duration(100+200*i)*time.Millisecond, 100*time.Millisecond, 20*time.Millisecond); err != nil {
			return err
		}
		procs = append(procs, p)
	}

	// Registering is done once, by any instance: the items live in the
	// store, not in the Process value.
	for _, name := range sortedKeys(items) {
		if _, err := procs[0].RegisterWork(name, background.Params{Ints: map[string]int64{"batch": items[name]}}, nil); err != nil {
			return err
		}
	}
	con.printf("main", "registered %s; schedule: every %s, two instances", strings.Join(sortedKeys(items), ", "), cfg.every)

	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() { p.Run(ctx) })
	}
	<-ctx.Done()
	// Run returns once the run under way, if any, has stopped where it
	// was: the tour never leaves a goroutine behind.
	wg.Wait()
	con.printf("main", "both instances stopped")
	return summary(con, mem)
}

// worker does the reindexing. Each instance has its own; Run calls it on
// that instance's goroutine.
type worker struct {
	con      *console
	tookOver <-chan struct{} // closed at the first take-over
	stallCap time.Duration   // the longest a stall lasts
}

// ProcessActiveWork reindexes one table. In the first run (claim 1) it
// stalls in stallItem, and then asks Progress whether the run is still
// its own.
func (w *worker) ProcessActiveWork(ctx context.Context, state *background.State, name string, work *background.Work, p *background.Process) error {
	tag := p.Instance()
	if state.Claim == 1 && name == stallItem {
		// A stall is a slow query, a long pause, a lost network: here the
		// worker sleeps until another instance has taken the run over, so
		// that the tour shows the same on any machine.
		w.con.printf(tag, "claim %d: %s: stalls past its slot", state.Claim, name)
		start := time.Now()
		timer := time.NewTimer(w.stallCap)
		defer timer.Stop()
		select {
		case <-w.tookOver:
		case <-timer.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		w.con.printf(tag, "claim %d: %s: wakes up after %s", state.Claim, name, time.Since(start).Round(time.Millisecond))
		// Progress writes the run's state if it still owns it. It does
		// not: Conflict, and the run ends without another write. Run
		// itself calls Progress after every item; a long item calls it
		// between units of work.
		progress, err := p.Progress(state)
		w.con.printf(tag, "claim %d: Progress: %s: %v", state.Claim, progress, err)
		if progress == background.Conflict {
			return err
		}
	}
	if !sleep(ctx, itemTime) {
		return ctx.Err()
	}
	rows := work.Params.Ints["batch"]
	p.AddWorkStats(float64(rows), "rows", name, state)
	w.con.printf(tag, "claim %d: reindexed %s (%d rows)", state.Claim, name, rows)
	return nil
}

// CleanupWork would drop an unregistered table's index; the tour
// unregisters none.
func (w *worker) CleanupWork(ctx context.Context, state *background.State, name string, p *background.Process) error {
	return nil
}

// Wait waits between cycles; false, once ctx is done, makes Run return.
func (w *worker) Wait(ctx context.Context, d time.Duration) bool {
	return sleep(ctx, d)
}

// sleep waits d and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// watchedStore passes everything to a Store and prints what each
// committed write of the run's ownership or status changed.
type watchedStore struct {
	background.Store
	con      *console
	runs     int    // finished runs before stop
	stop     func() // stops the tour
	tookOver chan struct{}

	mu       sync.Mutex
	last     *background.State // the last committed state
	finished int
}

func newWatchedStore(s background.Store, con *console, runs int, stop func()) *watchedStore {
	return &watchedStore{Store: s, con: con, runs: runs, stop: stop, tookOver: make(chan struct{})}
}

func (s *watchedStore) Lock(ctx context.Context, name string) (background.Tx, error) {
	tx, err := s.Store.Lock(ctx, name)
	if err != nil {
		return nil, err
	}
	return &watchedTx{Tx: tx, store: s}, nil
}

type watchedTx struct {
	background.Tx
	store   *watchedStore
	written *background.State
}

func (t *watchedTx) Write(ctx context.Context, s *background.State) error {
	if err := t.Tx.Write(ctx, s); err != nil {
		return err
	}
	t.written = s.Clone()
	return nil
}

func (t *watchedTx) Commit() error {
	// The lock is held across the commit, so that the writes are compared
	// in the order in which they reached the store.
	s := t.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := t.Tx.Commit(); err != nil {
		return err
	}
	if t.written != nil {
		s.committed(s.last, t.written)
		s.last = t.written
	}
	return nil
}

// committed prints what the write of now over old meant.
func (s *watchedStore) committed(old, now *background.State) {
	st := now.Status
	switch {
	case old == nil || now.Claim == old.Claim && st.State == old.Status.State:
		// A registration, or a run's progress: nothing to tell.
	case now.Claim != old.Claim && old.Status.State == background.StateActive:
		// The previous run never finished, and its last progress is older
		// than this slot: its owner stalled (or died).
		s.con.printf("store", "claim %d: %s takes over claim %d of %s in slot %d (its last progress: %s)",
			now.Claim, now.Instance, old.Claim, old.Instance, s.con.slot(st.StartTime), s.con.at(old.Status.ProgressTime))
		select {
		case <-s.tookOver:
		default:
			close(s.tookOver)
		}
	case now.Claim != old.Claim:
		s.con.printf("store", "claim %d: %s claims slot %d", now.Claim, now.Instance, s.con.slot(st.StartTime))
	case old.Status.State == background.StateActive:
		s.finished++
		s.con.printf("store", "claim %d: %s finished its run: %s, %d items, %d errors, in %s",
			now.Claim, now.Instance, st.State, len(now.ActiveWork), st.TotalErrors, st.FinishTime.Sub(st.StartTime).Round(time.Millisecond))
		if s.finished == s.runs {
			s.stop()
		}
	}
}

// summary prints what the store holds.
func summary(con *console, store background.Store) error {
	// The tour's ctx is done by now; the store is read with a fresh one.
	tx, err := store.Lock(context.Background(), processName)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	s, err := tx.Read(context.Background())
	if errors.Is(err, background.ErrNotFound) {
		con.printf("summary", "no run yet")
		return nil
	}
	if err != nil {
		return err
	}
	st := s.Status
	con.printf("summary", "last run: claim %d by %s, %s, started %s, finished %s",
		s.Claim, s.Instance, st.State, con.at(st.StartTime), con.at(st.FinishTime))
	for _, name := range sortedKeys(s.ActiveWork) {
		ws := s.ActiveWork[name].Status
		con.printf("summary", "item %-9s %-10s finished %s, %v rows", name, ws.State, con.at(ws.FinishTime), ws.Stats["rows"])
	}
	var stats []string
	for _, k := range sortedKeys(s.AggregateStats) {
		if k == "duration" {
			stats = append(stats, fmt.Sprintf("%s=%.3fs", k, s.AggregateStats[k]))
			continue
		}
		stats = append(stats, fmt.Sprintf("%s=%v", k, s.AggregateStats[k]))
	}
	con.printf("summary", "aggregate stats: %s", strings.Join(stats, " "))
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// console prints lines prefixed with the time since start. The instances
// print from their own goroutines, hence the mutex.
type console struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
	every time.Duration
}

func newConsole(out io.Writer, every time.Duration) *console {
	return &console{out: out, start: time.Now(), every: every}
}

func (c *console) printf(tag, format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(c.out, "%6.3fs  %-7s %s\n", time.Since(c.start).Seconds(), tag, fmt.Sprintf(format, args...))
}

// at says when t was, relative to the start.
func (c *console) at(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return fmt.Sprintf("%.3fs", t.Sub(c.start).Seconds())
}

// slot numbers the schedule slot that t is in: slot 0 is the one the tour
// started in. Slots start on multiples of the frequency of the wall clock.
func (c *console) slot(t time.Time) int64 {
	return int64(t.Truncate(c.every).Sub(c.start.Truncate(c.every)) / c.every)
}
