package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor"
)

// The chaos test runs a thousand misbehaving processes — they fail, panic,
// exit cleanly and ignore their stop for a while — off a MapTable whose rows
// are put, deleted, stopped and started all the while, for ten virtual
// minutes, with mixed restart policies and one shared error kernel. It then
// checks the promises that matter most: every row that should run runs
// exactly once, and with its current value; every failure is decided by the
// kernel exactly once; restarts follow the restart policies; and nothing is
// left behind. A failure prints the seed that replays it.

const (
	chaosName        = "chaos"
	chaosRows        = 1000 // rows in the table when Run starts
	chaosKeySpace    = 1100 // keys the churn puts, deletes, stops and starts
	chaosDuration    = 10 * time.Minute
	chaosStopTimeout = 2 * time.Second
	// chaosMaxLife is the longest a run lives before it fails or exits on
	// its own.
	chaosMaxLife = time.Minute
	// chaosMaxLinger is the longest a stopped run ignores its stop: past
	// both stop timeouts, so some stops time out.
	chaosMaxLinger = 2*chaosStopTimeout + 2*time.Second
	// chaosSettle lets the last failure (after chaosMaxLife) go through its
	// backoff (30s at most) and restart, and lingering stops end.
	chaosSettle      = 3 * time.Minute
	chaosSeedEnv     = "CHAOS_SEED"
	chaosSameKeyEnv  = "CHAOS_SAME_KEY"
	chaosDefaultSeed = 1
)

func TestSupervisorUnderChaosRunsEveryLiveRowOnceAndDecidesEveryFailureOnce(t *testing.T) {
	seed := chaosSeed(t)
	synctest.Test(t, func(t *testing.T) {
		baseline := chaosBubbleGoroutines()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		h := newChaosHarness()
		discard := slog.New(slog.DiscardHandler)

		kernel := supervisor.NewErrorKernel(supervisor.KernelOptions{
			Policy: supervisor.AbortAfter(5, time.Minute, nil),
			Logger: discard,
		})
		decisions, unsubscribe := kernel.Subscribe(1 << 16)
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			for d := range decisions {
				h.decided(d)
			}
		}()

		table := supervisor.NewMapTable[int, supervisor.Runnable]()
		rows := rand.New(rand.NewPCG(seed, 1))
		for k := range chaosRows {
			h.allow(k, 1)
			table.Put(k, h.newRow(k, rows))
		}
		sup := supervisor.NewSupervisor(table, supervisor.Options{
			Name:        chaosName,
			Kernel:      kernel,
			StopTimeout: chaosStopTimeout,
			MaxRestarts: 0,
			Logger:      discard,
			OnEvent:     h.onEvent,
		})
		release := make(chan struct{})
		runErr := make(chan error, 1)
		go func() {
			runErr <- sup.Run(ctx, func(ctx context.Context) error {
				select {
				case <-release:
				case <-ctx.Done():
				}
				return nil
			})
		}()

		churned := make(chan struct{})
		go func() {
			defer close(churned)
			h.churn(ctx, table, sup, rand.New(rand.NewPCG(seed, 2)), time.Now().Add(chaosDuration))
		}()
		<-churned

		// Settle: no more churn; runs started from now on live until they
		// are stopped, and the ones already running end within chaosMaxLife.
		h.calm.Store(true)
		time.Sleep(chaosSettle)
		synctest.Wait()
		h.checkRunningSet(t, table, sup)
		h.checkRunningValues(t, table, sup)
		h.checkStarts(t)

		// Stop by returning from the callback, with Run's ctx still live:
		// whatever Run started must end with Run, not with its ctx.
		stopAt := time.Now()
		close(release)
		require.NoError(t, <-runErr)
		assert.LessOrEqual(t, time.Since(stopAt), 2*chaosStopTimeout,
			"Run waits for its processes at most both stop timeouts")
		time.Sleep(chaosMaxLinger) // the processes Run left behind return
		synctest.Wait()
		unsubscribe()
		<-drained

		assert.Zero(t, kernel.Dropped(), "the subscription dropped decisions")
		h.checkDecisions(t)
		h.checkNoneRunning(t)
		h.checkEventOrder(t)
		h.checkExercised(t)
		// Like runtime.NumGoroutine back at its baseline, but blind to the
		// goroutines of other tests.
		assert.Empty(t, chaosGoroutinesSince(baseline), "goroutines left in the bubble after Run returned")
	})
}

// chaosSeed returns the seed of this run: CHAOS_SEED or a fixed default.
func chaosSeed(t *testing.T) uint64 {
	seed := uint64(chaosDefaultSeed)
	if s := os.Getenv(chaosSeedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "%s must be an unsigned integer", chaosSeedEnv)
		seed = v
	}
	t.Logf("chaos seed %d (rerun with %s=%d)", seed, chaosSeedEnv, seed)
	return seed
}

// chaosFailure is a failure a process caused: its exit error or the value
// of its panic. It does not wrap context.Canceled, so the supervisor must
// report it even when it ends a process that was asked to stop.
type chaosFailure struct {
	ID  uint64 // the run that failed
	Key int
}

func (f *chaosFailure) Error() string { return fmt.Sprintf("chaos failure %d of row %d", f.ID, f.Key) }

func chaosFailureOf(err error) (*chaosFailure, bool) {
	var f *chaosFailure
	ok := errors.As(err, &f)
	return f, ok
}

// chaosCause is what the harness knows of a failure it caused.
type chaosCause struct {
	key    int
	policy supervisor.RestartPolicy
	how    string
}

// chaosExit is how a row's latest run ended.
type chaosExit struct {
	policy supervisor.RestartPolicy
	how    string // "error", "panic", "clean exit", "stopped", "error on stop", "panic on stop"
}

// chaosHarness is what the processes, the churn, OnEvent and the kernel's
// subscriber record, and what the checks read.
type chaosHarness struct {
	start   time.Time
	calm    atomic.Bool                 // new runs no longer fail or exit on their own
	runs    atomic.Uint64               // run IDs
	running [chaosKeySpace]atomic.Int32 // runs of each row under way

	mu          sync.Mutex
	violations  []string // more than one run of a row at once
	unexpected  []string // errors Stop and Start must not return
	misordered  []string // restarts the restart policy or the event order forbid
	spurious    []string // stop timeouts of rows not stopping
	unallowed   []string // starts with no Put or Start for them
	caused      map[uint64]chaosCause
	decisions   map[uint64][]supervisor.Failure
	eventFailed map[uint64]int
	strays      []string                     // failures no process caused, events of no row
	last        map[int]supervisor.EventKind // but EventStopTimeout
	stopping    map[int]bool                 // EventStopping and no EventStopped since
	history     map[int][]string             // the latest events and changes of each row
	exits       map[int]chaosExit
	allowed     map[int]int // fresh starts a row may have: its first, and one per Put and Start
	fresh       map[int]int // EventStarting not right after EventRestarting
	stats       map[string]int
}

func newChaosHarness() *chaosHarness {
	return &chaosHarness{
		start:       time.Now(),
		caused:      map[uint64]chaosCause{},
		decisions:   map[uint64][]supervisor.Failure{},
		eventFailed: map[uint64]int{},
		last:        map[int]supervisor.EventKind{},
		stopping:    map[int]bool{},
		history:     map[int][]string{},
		exits:       map[int]chaosExit{},
		allowed:     map[int]int{},
		fresh:       map[int]int{},
		stats:       map[string]int{},
	}
}

// chaosProcess is a row's value. Each run draws its behaviour from a
// generator seeded by the row and the run's number, so a seed replays the
// same lives as far as the interleaving of goroutines allows.
type chaosProcess struct {
	h      *chaosHarness
	key    int
	seed   uint64
	crashy bool // fails within seconds, most of the time: the kernel aborts it
	policy supervisor.RestartPolicy
	runs   atomic.Uint64
}

// chaosPolicyProcess is a chaosProcess that overrides Options.Restart.
type chaosPolicyProcess struct{ *chaosProcess }

func (p chaosPolicyProcess) RestartPolicy() supervisor.RestartPolicy { return p.policy }

func (p *chaosProcess) String() string { return fmt.Sprintf("row %d value %x", p.key, p.seed) }

// newRow returns a row's value: a tenth crashy; six tenths Permanent by
// default, the rest Permanent, Transient or Temporary by their own say.
func (h *chaosHarness) newRow(key int, rng *rand.Rand) supervisor.Runnable {
	p := &chaosProcess{h: h, key: key, seed: rng.Uint64(), crashy: rng.IntN(10) == 0}
	switch r := rng.IntN(10); {
	case r < 6:
		return p
	case r < 7:
		p.policy = supervisor.Permanent
	case r < 9:
		p.policy = supervisor.Transient
	default:
		p.policy = supervisor.Temporary
	}
	return chaosPolicyProcess{p}
}

func (p *chaosProcess) Run(ctx context.Context, callback supervisor.Callback) error {
	return supervisor.RunnableFunc(p.serve).Run(ctx, callback)
}

// serve is one run: it lives until it fails or exits on its own, or until
// it is stopped.
func (p *chaosProcess) serve(ctx context.Context) error {
	h := p.h
	id := h.runs.Add(1)
	if n := h.running[p.key].Add(1); n > 1 {
		h.violate("row %d: %d runs at once at %v (run %d)", p.key, n, time.Since(h.start), id)
	}
	defer h.running[p.key].Add(-1)
	rng := rand.New(rand.NewPCG(p.seed, p.runs.Add(1)))
	if life, ok := p.lifetime(rng); ok {
		timer := time.NewTimer(life)
		defer timer.Stop()
		select {
		case <-timer.C:
			return p.exit(rng, id)
		case <-ctx.Done():
		}
	} else {
		<-ctx.Done()
	}
	return p.stopped(ctx, rng, id)
}

// lifetime says how long a run lives before it ends on its own, if it does.
func (p *chaosProcess) lifetime(rng *rand.Rand) (time.Duration, bool) {
	switch {
	case p.h.calm.Load():
		return 0, false
	case p.crashy:
		return time.Duration(rng.Int64N(int64(2 * time.Second))), true
	case rng.IntN(10) < 6:
		return 0, false
	}
	return time.Duration(rng.Int64N(int64(chaosMaxLife))), true
}

// exit ends a run on its own: an error, a panic or a clean exit.
func (p *chaosProcess) exit(rng *rand.Rand, id uint64) error {
	errs, panics := 4, 6
	if p.crashy {
		errs, panics = 7, 9
	}
	switch r := rng.IntN(10); {
	case r < errs:
		return p.h.cause(id, p, "error")
	case r < panics:
		panic(p.h.cause(id, p, "panic"))
	}
	p.h.ran(p, "clean exit")
	return nil
}

// stopped ends a run whose ctx is done: most return at once, some ignore
// the stop for a while (a few past both stop timeouts), and some fail on
// the way out.
func (p *chaosProcess) stopped(ctx context.Context, rng *rand.Rand, id uint64) error {
	p.h.ran(p, "stopped")
	switch r := rng.IntN(100); {
	case r < 70:
	case r < 95:
		p.h.count("lingered")
		time.Sleep(time.Duration(rng.Int64N(int64(2*chaosStopTimeout - 500*time.Millisecond))))
	default:
		p.h.count("lingered past both stop timeouts")
		long := 2*chaosStopTimeout + 500*time.Millisecond
		time.Sleep(long + time.Duration(rng.Int64N(int64(chaosMaxLinger-long))))
	}
	switch r := rng.IntN(10); {
	case r < 6:
		return ctx.Err()
	case r < 8:
		return nil
	case r < 9:
		return p.h.cause(id, p, "error on stop")
	}
	panic(p.h.cause(id, p, "panic on stop"))
}

// cause records the failure of run id and returns it.
func (h *chaosHarness) cause(id uint64, p *chaosProcess, how string) *chaosFailure {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.caused[id] = chaosCause{key: p.key, policy: p.policy, how: how}
	h.exits[p.key] = chaosExit{policy: p.policy, how: how}
	h.stats[how]++
	return &chaosFailure{ID: id, Key: p.key}
}

// ran records how a run ended, when it did not fail.
func (h *chaosHarness) ran(p *chaosProcess, how string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.exits[p.key] = chaosExit{policy: p.policy, how: how}
	h.stats[how]++
}

// allow lets row k start n more times: it is being put or Started (or
// not, when Start failed).
func (h *chaosHarness) allow(k, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.allowed[k] += n
}

// did records what the churn did to row k.
func (h *chaosHarness) did(k int, what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stats["churn: "+what]++
	h.noteLocked(k, time.Now(), "churn: "+what)
}

// noteLocked adds a line to row k's history, which keeps the latest 24;
// h.mu held.
func (h *chaosHarness) noteLocked(k int, at time.Time, line string) {
	history := h.history[k]
	if len(history) == 24 {
		history = history[1:]
	}
	h.history[k] = append(history, fmt.Sprintf("%v %s", at.Sub(h.start), line))
}

func (h *chaosHarness) count(what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stats[what]++
}

func (h *chaosHarness) violate(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.violations = append(h.violations, fmt.Sprintf(format, args...))
}

func (h *chaosHarness) unexpect(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unexpected = append(h.unexpected, fmt.Sprintf(format, args...))
}

type (
	chaosTable      = supervisor.MapTable[int, supervisor.Runnable]
	chaosSupervisor = supervisor.Supervisor[int, supervisor.Runnable]
)

// churn puts and deletes random rows, and stops and starts their
// processes, at random intervals until until; it returns once its Stop and
// Start calls returned.
//
// A burst changes several rows in one instant, each a different key. Two
// changes of one key in one instant race with the reconciliation of the
// first, which may already read the second; what the supervisor does then
// depends on that race, not on the calls. CHAOS_SAME_KEY=1 makes a third of
// the instants change one key twice all the same, to explore that race.
func (h *chaosHarness) churn(ctx context.Context, table *chaosTable, sup *chaosSupervisor, rng *rand.Rand, until time.Time) {
	sameKey := os.Getenv(chaosSameKeyEnv) != ""
	var calls sync.WaitGroup
	defer calls.Wait()
	for {
		pause := 1 + time.Duration(rng.Int64N(int64(200*time.Millisecond)))
		if time.Now().Add(pause).After(until) {
			return
		}
		time.Sleep(pause)
		n := 1
		if rng.IntN(10) == 0 {
			n = 2 + rng.IntN(4)
		}
		keys := rng.Perm(chaosKeySpace)[:n]
		if sameKey && rng.IntN(3) == 0 {
			keys = []int{keys[0], keys[0]}
		}
		for _, k := range keys {
			switch r := rng.IntN(100); {
			case r < 80: // with deletes at 14%, the table keeps about 85% of the keys
				h.churnPut(table, k, rng)
			case r < 94:
				if table.Delete(k) {
					h.did(k, "delete")
				}
			case r < 97:
				calls.Go(func() { h.churnStop(ctx, sup, k) })
			default:
				calls.Go(func() { h.churnStart(ctx, sup, k) })
			}
		}
	}
}

func (h *chaosHarness) churnPut(table *chaosTable, k int, rng *rand.Rand) {
	if _, err := table.Get(context.Background(), k); err == nil {
		h.did(k, "put over a row")
	} else {
		h.did(k, "put a new row")
	}
	h.allow(k, 1)
	table.Put(k, h.newRow(k, rng))
}

// churnStop stops k's process for good. It may find none, or one that
// ignores its stop past both stop timeouts.
func (h *chaosHarness) churnStop(ctx context.Context, sup *chaosSupervisor, k int) {
	h.did(k, "Stop called")
	switch err := sup.Stop(ctx, k); {
	case err == nil:
		h.did(k, "stop")
	case errors.Is(err, supervisor.ErrProcessNotFound):
		h.did(k, "stop found no process")
	case errors.Is(err, supervisor.ErrStopTimeout):
		h.did(k, "stop timed out")
	default:
		h.unexpect("Stop(%d) at %v: %v", k, time.Since(h.start), err)
	}
}

// churnStart starts k's process. It may find it running or its row gone.
func (h *chaosHarness) churnStart(ctx context.Context, sup *chaosSupervisor, k int) {
	h.did(k, "Start called")
	h.allow(k, 1)
	switch _, err := sup.Start(ctx, k); {
	case err == nil:
		h.did(k, "start")
	case errors.Is(err, supervisor.ErrProcessExists):
		h.allow(k, -1)
		h.did(k, "start found a process")
	case errors.Is(err, supervisor.ErrNotFound):
		h.allow(k, -1)
		h.did(k, "start found no row")
	default:
		h.unexpect("Start(%d) at %v: %v", k, time.Since(h.start), err)
	}
}

// onEvent records each row's latest events.
func (h *chaosHarness) onEvent(e supervisor.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stats["event "+e.Kind.String()]++
	key, err := strconv.Atoi(e.Process)
	if err != nil {
		h.strays = append(h.strays, "event of no row: "+e.String())
		return
	}
	h.noteLocked(key, e.Time, e.String())
	if e.Kind == supervisor.EventStopTimeout {
		// A stop timeout tells of a run still stopping; it does not change
		// the row's state.
		if !h.stopping[key] {
			h.spurious = append(h.spurious, fmt.Sprintf("row %d: stop timeout with no stop under way; its latest events:\n\t%s",
				key, strings.Join(h.history[key], "\n\t")))
		}
		return
	}
	prev, seen := h.last[key]
	h.last[key] = e.Kind
	switch e.Kind {
	case supervisor.EventStopping:
		h.stopping[key] = true
	case supervisor.EventStopped, supervisor.EventAborted, supervisor.EventStarting:
		h.stopping[key] = false
	}
	switch e.Kind {
	case supervisor.EventStarting:
		if !seen || prev != supervisor.EventRestarting {
			h.startedLocked(key)
		}
	case supervisor.EventRestarting:
		h.checkRestartLocked(key, prev, seen)
	case supervisor.EventFailed:
		if f, ok := chaosFailureOf(e.Err); ok {
			h.eventFailed[f.ID]++
		} else {
			h.strays = append(h.strays, "failure no process caused: "+e.String())
		}
	}
}

// startedLocked counts a fresh start of row key, which must have been
// allowed by a Put or a Start; h.mu held.
func (h *chaosHarness) startedLocked(key int) {
	h.fresh[key]++
	if h.fresh[key] > h.allowed[key] {
		h.unallowed = append(h.unallowed, fmt.Sprintf("row %d: start %d, put or Started %d times; its latest events:\n\t%s",
			key, h.fresh[key], h.allowed[key], strings.Join(h.history[key], "\n\t")))
	}
}

// checkRestartLocked checks that row key restarts after a backoff, and
// only as its latest run's restart policy allows; h.mu held.
func (h *chaosHarness) checkRestartLocked(key int, prev supervisor.EventKind, seen bool) {
	exit := h.exits[key]
	var why string
	switch {
	case !seen || prev != supervisor.EventBackoff:
		why = "not after a backoff"
	case exit.how == "stopped" || exit.how == "error on stop" || exit.how == "panic on stop":
		why = "its run was asked to stop"
	case exit.policy == supervisor.Temporary:
		why = "temporary"
	case exit.policy == supervisor.Transient && exit.how == "clean exit":
		why = "transient, after a clean exit"
	default:
		return
	}
	h.misordered = append(h.misordered, fmt.Sprintf("row %d restarted (%s) after %s; its latest events:\n\t%s",
		key, why, exit.how, strings.Join(h.history[key], "\n\t")))
}

// decided records one of the kernel's decisions.
func (h *chaosHarness) decided(d supervisor.Decision) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, ok := chaosFailureOf(d.Failure.Err)
	if !ok {
		h.strays = append(h.strays, fmt.Sprintf("decision on a failure no process caused: %s: %v", d.Failure.Process, d.Failure.Err))
		return
	}
	h.decisions[f.ID] = append(h.decisions[f.ID], d.Failure)
}

// checkRunningSet checks, once everything settled, that the supervisor
// runs exactly the rows that have not ended for good — those whose latest
// event is EventAborted or EventStopped while the row is still there — and
// each of them exactly once.
func (h *chaosHarness) checkRunningSet(t *testing.T, table *chaosTable, sup *chaosSupervisor) {
	t.Helper()
	keys := sup.Keys()
	statuses := sup.Status()
	rows := chaosTableKeys(t, table)

	h.mu.Lock()
	defer h.mu.Unlock()
	var want []int
	ended := map[supervisor.EventKind]int{}
	for _, k := range rows {
		switch kind := h.last[k]; kind {
		case supervisor.EventAborted, supervisor.EventStopped:
			ended[kind]++
		default:
			want = append(want, k)
		}
	}
	missing, extra := chaosDiff(want, keys)
	for _, k := range append(slices.Clone(missing), extra...)[:min(10, len(missing)+len(extra))] {
		t.Logf("row %d, latest events:\n\t%s", k, strings.Join(h.history[k], "\n\t"))
	}
	assert.Empty(t, missing, "rows neither running nor ended for good")
	assert.Empty(t, extra, "processes running without a row that should run")
	assert.Len(t, keys, len(want), "Keys lists each row once")

	var notRunning []string
	for _, s := range statuses {
		if s.State != supervisor.ProcessRunning {
			notRunning = append(notRunning, fmt.Sprintf("row %d: %v", s.Key, s.State))
		}
	}
	assert.Empty(t, notRunning, "settled processes not running")
	assert.Len(t, statuses, len(keys), "Status lists every process of Keys and no other")
	h.checkRunsLocked(t, want)
	t.Logf("settled after %v: %d rows, %d running, %d aborted, %d stopped for good",
		time.Since(h.start), len(rows), len(keys), ended[supervisor.EventAborted], ended[supervisor.EventStopped])
}

// checkRunsLocked checks that the rows of want have one run each and the
// others none, and that no row ever had two; h.mu held.
func (h *chaosHarness) checkRunsLocked(t *testing.T, want []int) {
	t.Helper()
	wantRunning := map[int]bool{}
	for _, k := range want {
		wantRunning[k] = true
	}
	var runs []string
	for k := range h.running {
		n, want := h.running[k].Load(), int32(0)
		if wantRunning[k] {
			want = 1
		}
		if n != want {
			runs = append(runs, fmt.Sprintf("row %d: %d runs, want %d", k, n, want))
		}
	}
	assert.Empty(t, chaosFirst(runs), "runs of the rows that should run, and of no other")
	assert.Empty(t, h.violations, "rows run more than once at a time")
}

// checkRunningValues checks that each running process runs its row's
// current value: a put row replaced its process, a restart read it again.
func (h *chaosHarness) checkRunningValues(t *testing.T, table *chaosTable, sup *chaosSupervisor) {
	t.Helper()
	var stale []string
	for _, k := range sup.Keys() {
		running, err := sup.Get(t.Context(), k)
		row, rowErr := table.Get(t.Context(), k)
		if err != nil || rowErr != nil || running != row {
			stale = append(stale, fmt.Sprintf("row %d: Get: %v, %v; the row: %v, %v", k, running, err, row, rowErr))
		}
	}
	assert.Empty(t, chaosFirst(stale), "%d processes that do not run their row's current value", len(stale))
}

// checkStarts checks that no row started afresh more often than it was put
// or Started: a scan must not revive a row that ended for good.
func (h *chaosHarness) checkStarts(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	var starts []string
	for k, n := range h.fresh {
		if n > h.allowed[k] {
			starts = append(starts, fmt.Sprintf("row %d: started %d times, put or Started %d times", k, n, h.allowed[k]))
		}
	}
	slices.Sort(starts)
	assert.Empty(t, chaosFirst(starts), "rows started (not restarted) more often than put or Started")
	assert.Empty(t, chaosFirst(h.unallowed), "%d starts with no Put or Start for them", len(h.unallowed))
}

// checkEventOrder checks that every restart followed a backoff and its
// restart policy, and every stop timeout a stop still under way.
func (h *chaosHarness) checkEventOrder(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Empty(t, chaosFirst(h.misordered), "%d restarts the policy forbids", len(h.misordered))
	assert.Empty(t, chaosFirst(h.spurious), "%d EventStopTimeout of a row whose process was not stopping", len(h.spurious))
}

// checkDecisions checks that the kernel decided every failure the
// processes caused exactly once, about the right process, and nothing
// else; and that each was reported with one EventFailed.
func (h *chaosHarness) checkDecisions(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	var missing, twice, wrong, events, unknown []string
	for id, c := range h.caused {
		got := h.decisions[id]
		switch {
		case len(got) == 0:
			missing = append(missing, fmt.Sprintf("failure %d (%s of row %d, %v)", id, c.how, c.key, c.policy))
		case len(got) > 1:
			twice = append(twice, fmt.Sprintf("failure %d (%s of row %d): decided %d times", id, c.how, c.key, len(got)))
		}
		for _, f := range got {
			if f.Process != chaosName+"/"+strconv.Itoa(c.key) || !f.Exited || f.Restart != c.policy {
				wrong = append(wrong, fmt.Sprintf("failure %d (%s of row %d, %v): decided as %s exited=%v %v",
					id, c.how, c.key, c.policy, f.Process, f.Exited, f.Restart))
			}
		}
		if n := h.eventFailed[id]; n != 1 {
			events = append(events, fmt.Sprintf("failure %d (%s of row %d): %d EventFailed", id, c.how, c.key, n))
		}
	}
	for id := range h.decisions {
		if _, ok := h.caused[id]; !ok {
			unknown = append(unknown, fmt.Sprintf("failure %d", id))
		}
	}
	for _, list := range [][]string{missing, twice, wrong, events, unknown} {
		slices.Sort(list)
	}
	assert.Empty(t, chaosFirst(missing), "%d failures the kernel never decided", len(missing))
	assert.Empty(t, chaosFirst(twice), "%d failures decided more than once", len(twice))
	assert.Empty(t, chaosFirst(wrong), "%d failures decided about the wrong process", len(wrong))
	assert.Empty(t, chaosFirst(events), "%d failures without exactly one EventFailed", len(events))
	assert.Empty(t, chaosFirst(unknown), "%d decisions of failures never caused", len(unknown))
	assert.Empty(t, chaosFirst(h.strays), "%d failures or events of no chaos process", len(h.strays))
}

// checkNoneRunning checks that no run is left once Run returned and the
// processes it left behind ended.
func (h *chaosHarness) checkNoneRunning(t *testing.T) {
	t.Helper()
	var runs []string
	for k := range h.running {
		if n := h.running[k].Load(); n != 0 {
			runs = append(runs, fmt.Sprintf("row %d: %d runs", k, n))
		}
	}
	assert.Empty(t, runs, "runs left after Run returned")
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Empty(t, h.violations, "rows run more than once at a time")
	assert.Empty(t, h.unexpected, "errors Stop and Start must not return")
}

// checkExercised fails a chaos that missed a kind of trouble, which would
// make the other checks vacuous.
func (h *chaosHarness) checkExercised(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, what := range []string{
		"error", "panic", "clean exit", "error on stop", "panic on stop",
		"lingered", "lingered past both stop timeouts",
		"churn: put a new row", "churn: put over a row", "churn: delete",
		"churn: stop", "churn: stop found no process", "churn: start", "churn: start found a process",
		"event " + supervisor.EventAborted.String(), "event " + supervisor.EventStopTimeout.String(),
		"event " + supervisor.EventBackoff.String(), "event " + supervisor.EventStopped.String(),
	} {
		assert.Positive(t, h.stats[what], "the chaos never caused %q", what)
	}
	t.Logf("%d runs; %s", h.runs.Load(), chaosStats(h.stats))
}

func chaosStats(stats map[string]int) string {
	var parts []string
	for what, n := range stats {
		parts = append(parts, fmt.Sprintf("%s: %d", what, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}

func chaosTableKeys(t *testing.T, table *chaosTable) []int {
	t.Helper()
	ctx := t.Context()
	it, err := table.Iter(ctx)
	require.NoError(t, err)
	defer it.Close()
	var keys []int
	for it.Next() {
		k, _, err := it.Get(ctx)
		require.NoError(t, err)
		keys = append(keys, k)
	}
	require.NoError(t, it.Err())
	return keys
}

// chaosDiff returns the keys of want missing from got, and those of got not
// in want.
func chaosDiff(want, got []int) (missing, extra []int) {
	in := func(keys []int) map[int]bool {
		set := map[int]bool{}
		for _, k := range keys {
			set[k] = true
		}
		return set
	}
	wantSet, gotSet := in(want), in(got)
	for _, k := range want {
		if !gotSet[k] {
			missing = append(missing, k)
		}
	}
	for _, k := range got {
		if !wantSet[k] {
			extra = append(extra, k)
		}
	}
	return missing, extra
}

// chaosFirst keeps the first lines of a long list of findings.
func chaosFirst(list []string) []string {
	return list[:min(len(list), 20)]
}

var (
	chaosGoroutineHeader = regexp.MustCompile(`^goroutine (\d+) \[([^\]]*)\]`)
	chaosBubble          = regexp.MustCompile(`synctest bubble (\d+)`)
)

// chaosBubbleGoroutines returns the stacks of the goroutines of the
// caller's synctest bubble, by goroutine ID. Unlike runtime.NumGoroutine,
// it does not see goroutines of other tests.
func chaosBubbleGoroutines() map[string]string {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	stacks := strings.Split(string(buf), "\n\n")
	bubbleOf := func(stack string) string {
		header := chaosGoroutineHeader.FindStringSubmatch(stack)
		if header == nil {
			return ""
		}
		if b := chaosBubble.FindStringSubmatch(header[2]); b != nil {
			return b[1]
		}
		return ""
	}
	mine := bubbleOf(stacks[0]) // the caller's own stack comes first
	out := map[string]string{}
	for _, s := range stacks {
		if b := bubbleOf(s); b != "" && b == mine {
			out[chaosGoroutineHeader.FindStringSubmatch(s)[1]] = s
		}
	}
	return out
}

// chaosGoroutinesSince returns the stacks of the bubble's goroutines that
// were not in baseline.
func chaosGoroutinesSince(baseline map[string]string) []string {
	var extra []string
	for id, stack := range chaosBubbleGoroutines() {
		if _, ok := baseline[id]; !ok {
			extra = append(extra, stack)
		}
	}
	slices.Sort(extra)
	return extra
}

// The chaos test found that a Stop whose process is replaced by a Put while
// it stops waited for the replacement too; this is its smallest case.
func TestChaosStopReturnsWhenItsProcessReturnsEvenIfTheRowIsPutMeanwhile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const linger = time.Second // the stopped process returns this long after its stop
		table := supervisor.NewMapTable[string, supervisor.Runnable]()
		table.Put("a", supervisor.RunnableFunc(func(ctx context.Context) error {
			<-ctx.Done()
			time.Sleep(linger)
			return nil
		}))
		var (
			mu    sync.Mutex
			kinds []supervisor.EventKind
		)
		sup := supervisor.NewSupervisor(table, supervisor.Options{
			StopTimeout: chaosStopTimeout,
			Logger:      slog.New(slog.DiscardHandler),
			OnEvent: func(e supervisor.Event) {
				mu.Lock()
				defer mu.Unlock()
				kinds = append(kinds, e.Kind)
			},
		})
		ctx, cancel := context.WithCancel(t.Context())
		runErr := make(chan error, 1)
		go func() { runErr <- sup.Run(ctx, nil) }()
		synctest.Wait()

		start := time.Now()
		stopErr := make(chan error, 1)
		go func() { stopErr <- sup.Stop(t.Context(), "a") }()
		time.Sleep(linger / 2)
		table.Put("a", supervisor.RunnableFunc(func(ctx context.Context) error {
			<-ctx.Done()
			return nil
		}))
		require.NoError(t, <-stopErr)
		require.Equal(t, linger, time.Since(start), "Stop returns when the process it stopped returned")

		time.Sleep(2 * chaosStopTimeout)
		synctest.Wait()
		mu.Lock()
		require.Equal(t, []supervisor.EventKind{
			supervisor.EventStarting, supervisor.EventReady, // the first value
			supervisor.EventStopping, supervisor.EventStopped,
			supervisor.EventStarting, supervisor.EventReady, // the value put while it stopped
		}, kinds)
		mu.Unlock()
		cancel()
		require.NoError(t, <-runErr)
	})
}
