package background_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/background"
)

// The tests in this file run several instances of one process on one
// store, each instance a Process value with its own instance ID, and check
// that exactly one of them owns each schedule slot. Every test runs in a
// synctest bubble, whose clock starts at 2000-01-01 00:00:00 UTC, so the
// slots of an hourly schedule start on the hour of the bubble's clock.

// instCommit is one write committed to the shared store.
type instCommit struct {
	At       time.Time
	Instance string
	Claim    int64
	State    background.RunState
	Start    time.Time
}

// instLock is one Lock call on the shared store.
type instLock struct {
	At       time.Time
	Instance string
}

// instRecorder wraps a MemoryStore shared by every instance of a test and
// records each instance's Lock calls and every committed write, in commit
// order.
type instRecorder struct {
	store *background.MemoryStore

	mu      sync.Mutex
	locks   []instLock
	commits []instCommit
}

func newInstRecorder() *instRecorder {
	return &instRecorder{store: background.NewMemoryStore()}
}

// view returns the store as the instance named instance uses it.
func (r *instRecorder) view(instance string) background.Store {
	return instStoreView{rec: r, instance: instance}
}

func (r *instRecorder) lockCalls() []instLock {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.locks)
}

func (r *instRecorder) commitLog() []instCommit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.commits)
}

type instStoreView struct {
	rec      *instRecorder
	instance string
}

func (v instStoreView) Lock(ctx context.Context, name string) (background.Tx, error) {
	v.rec.mu.Lock()
	v.rec.locks = append(v.rec.locks, instLock{At: time.Now(), Instance: v.instance})
	v.rec.mu.Unlock()
	tx, err := v.rec.store.Lock(ctx, name)
	if err != nil {
		return nil, err
	}
	return &instTx{Tx: tx, rec: v.rec}, nil
}

type instTx struct {
	background.Tx
	rec     *instRecorder
	written *background.State
}

func (t *instTx) Write(ctx context.Context, s *background.State) error {
	if err := t.Tx.Write(ctx, s); err != nil {
		return err
	}
	t.written = s.Clone()
	return nil
}

func (t *instTx) Commit() error {
	// The recorder's lock is held across the commit, so that the log is in
	// the order in which the writes reached the store.
	t.rec.mu.Lock()
	defer t.rec.mu.Unlock()
	if err := t.Tx.Commit(); err != nil {
		return err
	}
	if s := t.written; s != nil {
		t.rec.commits = append(t.rec.commits, instCommit{
			At: time.Now(), Instance: s.Instance, Claim: s.Claim, State: s.Status.State, Start: s.Status.StartTime,
		})
	}
	return nil
}

// instExec is one ProcessActiveWork call.
type instExec struct {
	Instance   string    // the Process's instance ID
	Owner      string    // state.Instance: the owner the run's state names
	Claim      int64     // state.Claim: the claim the run holds
	ClaimStart time.Time // state.Status.StartTime: when the run claimed its slot
	Slot       time.Time // the slot the call started in
	Item       string
	Start, End time.Time
	Err        error
}

// instProgress is the answer to a Progress call made by a worker.
type instProgress struct {
	Instance string
	Claim    int64
	At       time.Time
	Result   background.Progress
	Err      error
}

// instLog collects what the workers of a test did.
type instLog struct {
	mu       sync.Mutex
	execs    []instExec
	progress []instProgress
}

func (l *instLog) addExec(e instExec) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.execs = append(l.execs, e)
}

func (l *instLog) addProgress(pr instProgress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.progress = append(l.progress, pr)
}

func (l *instLog) allExecs() []instExec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.execs)
}

func (l *instLog) allProgress() []instProgress {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.progress)
}

// instProgressCall calls p.Progress from inside a run and logs its answer.
func (l *instLog) instProgressCall(p *background.Process, state *background.State) (background.Progress, error) {
	result, err := p.Progress(state)
	l.addProgress(instProgress{Instance: p.Instance(), Claim: state.Claim, At: time.Now(), Result: result, Err: err})
	return result, err
}

// instWorker is the Worker of every instance: it logs each item it
// processes and does the item's work with process (by default two minutes
// that a cancelled ctx cuts short).
type instWorker struct {
	log     *instLog
	process func(ctx context.Context, state *background.State, name string, p *background.Process) error
}

func (w *instWorker) ProcessActiveWork(ctx context.Context, state *background.State, name string, _ *background.Work, p *background.Process) error {
	now := time.Now()
	e := instExec{
		Instance:   p.Instance(),
		Owner:      state.Instance,
		Claim:      state.Claim,
		ClaimStart: state.Status.StartTime,
		Slot:       now.Truncate(state.ScheduleFrequency),
		Item:       name,
		Start:      now,
	}
	if w.process != nil {
		e.Err = w.process(ctx, state, name, p)
	} else {
		e.Err = instSleep(ctx, 2*time.Minute)
	}
	e.End = time.Now()
	w.log.addExec(e)
	return e.Err
}

func (w *instWorker) CleanupWork(context.Context, *background.State, string, *background.Process) error {
	return nil
}

func (w *instWorker) Wait(ctx context.Context, d time.Duration) bool {
	return instSleep(ctx, d) == nil
}

// instSleep waits d, or until ctx is done.
func instSleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// instSleepUntil sleeps until at, then lets every goroutine of the bubble
// finish what it does at that instant.
func instSleepUntil(at time.Time) {
	time.Sleep(time.Until(at))
	synctest.Wait()
}

// instRead returns the stored state of the process name.
func instRead(t *testing.T, store background.Store, name string) *background.State {
	t.Helper()
	for {
		tx, err := store.Lock(context.Background(), name)
		if errors.Is(err, background.ErrLocked) {
			time.Sleep(time.Millisecond) // a run writes at this very instant
			continue
		}
		require.NoError(t, err)
		s, err := tx.Read(context.Background())
		require.NoError(t, tx.Rollback())
		require.NoError(t, err)
		return s
	}
}

// instDiscard is a logger for the many Process values of these tests.
var instDiscard = slog.New(slog.DiscardHandler)

// instNewProcess returns an hourly process named name on rec's store, as
// the instance id, with the given initial wait and the default progress
// frequency (5m).
func instNewProcess(t *testing.T, rec *instRecorder, name, id string, w background.Worker, initialWait time.Duration) *background.Process {
	t.Helper()
	p := background.NewProcess(name, w, rec.view(id), time.Hour, background.Params{},
		background.WithInstance(id), background.WithLogger(instDiscard))
	require.NoError(t, p.UpdateFlowControl(initialWait, background.DefaultMinScheduleFrequency, 0))
	return p
}

func instRegister(t *testing.T, p *background.Process, items ...string) {
	t.Helper()
	for _, item := range items {
		_, err := p.RegisterWork(item, background.Params{}, nil)
		require.NoError(t, err)
	}
}

// instRequireFencedCommits checks the commit log: claims only grow, by one
// at a time, each claim is written first with an active status, and every
// write of a claim names the instance that made it. So a claim that was
// superseded never wrote again.
func instRequireFencedCommits(t *testing.T, commits []instCommit) (claimAt map[int64]time.Time, claimOwner map[int64]string) {
	t.Helper()
	claimAt, claimOwner = map[int64]time.Time{}, map[int64]string{}
	var current int64
	for i, c := range commits {
		switch {
		case c.Claim < current:
			require.Failf(t, "a superseded claim wrote", "commit %d at %s: instance %q claim %d after claim %d", i, c.At, c.Instance, c.Claim, current)
		case c.Claim > current:
			require.Equal(t, current+1, c.Claim, "commit %d at %s: claims go up by one", i, c.At)
			require.Equal(t, background.StateActive, c.State, "commit %d at %s: a claim starts an active run", i, c.At)
			require.Equal(t, c.At, c.Start, "commit %d: a claim starts its run when it is written", i)
			current = c.Claim
			claimAt[current], claimOwner[current] = c.At, c.Instance
		case current > 0:
			require.Equal(t, claimOwner[current], c.Instance, "commit %d at %s: claim %d written by another instance", i, c.At, current)
		}
	}
	return claimAt, claimOwner
}

// TestInstancesRunEachSlotOnceByOneOwner runs two instances of a process
// over ten hourly slots: each slot's items are processed exactly once, all
// by the one instance that claimed the slot, while both instances try
// every slot.
func TestInstancesRunEachSlotOnceByOneOwner(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const slots = 10
		epoch := time.Now()
		rec := newInstRecorder()
		log := &instLog{}
		ids := []string{"A", "B"}
		procs := make([]*background.Process, len(ids))
		for i, id := range ids {
			procs[i] = instNewProcess(t, rec, "shared", id, &instWorker{log: log}, time.Minute)
		}
		items := []string{"a", "b", "c"}
		instRegister(t, procs[0], items...)

		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		for _, p := range procs {
			wg.Go(func() { p.Run(ctx) })
		}
		// Slot 9's run is done by half past nine; slot 10 never starts.
		instSleepUntil(epoch.Add((slots-1)*time.Hour + 30*time.Minute))
		cancel()
		wg.Wait()

		type slotItem struct {
			slot int
			item string
		}
		done := map[slotItem]int{}
		owners := make([]map[string]bool, slots)
		for i := range owners {
			owners[i] = map[string]bool{}
		}
		for _, e := range log.allExecs() {
			require.NoError(t, e.Err, "%+v", e)
			require.Equal(t, e.Instance, e.Owner, "the run's state names its own instance as the owner")
			slot := int(e.Slot.Sub(epoch) / time.Hour)
			require.Less(t, slot, slots)
			done[slotItem{slot, e.Item}]++
			owners[slot][e.Instance] = true
		}
		for slot := range slots {
			for _, item := range items {
				require.Equal(t, 1, done[slotItem{slot, item}], "slot %d, item %q: processed exactly once", slot, item)
			}
			require.Len(t, owners[slot], 1, "slot %d: the items of a slot are processed by one instance", slot)
		}

		// Both instances ran a cycle in every slot: each locked the store
		// to claim it, and one of them found it taken.
		tried := map[string]map[int]bool{}
		for _, l := range rec.lockCalls() {
			if tried[l.Instance] == nil {
				tried[l.Instance] = map[int]bool{}
			}
			tried[l.Instance][int(l.At.Sub(epoch)/time.Hour)] = true
		}
		for _, id := range ids {
			for slot := range slots {
				require.True(t, tried[id][slot], "instance %s did not try slot %d", id, slot)
			}
		}

		claimAt, claimOwner := instRequireFencedCommits(t, rec.commitLog())
		require.Len(t, claimAt, slots, "one claim per slot")
		for c, at := range claimAt {
			slot := int(at.Sub(epoch) / time.Hour)
			require.Equal(t, int(c-1), slot, "claim %d was made in slot %d", c, slot)
			require.True(t, owners[slot][claimOwner[c]], "slot %d was processed by the instance that claimed it", slot)
		}
		final := instRead(t, rec.store, "shared")
		require.Equal(t, int64(slots), final.Claim)
		require.Equal(t, background.StateCompleted, final.Status.State)
		require.Equal(t, float64(slots), final.AggregateStats["runs"])
	})
}

// instStallTakeover runs an owner that stalls inside its first item for
// an hour and a half, and a second instance that takes the run over in the
// next slot. idA and idB are their instance IDs, which may be equal.
func instStallTakeover(t *testing.T, idA, idB string) {
	synctest.Test(t, func(t *testing.T) {
		epoch := time.Now()
		rec := newInstRecorder()
		log := &instLog{}
		stallA := &instWorker{log: log, process: func(ctx context.Context, state *background.State, name string, p *background.Process) error {
			if state.Claim == 1 && name == "a" {
				time.Sleep(90 * time.Minute) // stalled: deaf to ctx as well
				_, _ = log.instProgressCall(p, state)
				return nil
			}
			return instSleep(ctx, 2*time.Minute)
		}}
		// A claims slot 0 at 00:01; B's first cycle comes at 00:02, within
		// A's slot, so B finds the run active and skips it.
		a := instNewProcess(t, rec, "stall", idA, stallA, time.Minute)
		b := instNewProcess(t, rec, "stall", idB, &instWorker{log: log}, 2*time.Minute)
		instRegister(t, a, "a", "b", "c")

		ctxA, cancelA := context.WithCancel(t.Context())
		ctxB, cancelB := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancelA()
		defer cancelB()
		wg.Go(func() { a.Run(ctxA) })
		wg.Go(func() { b.Run(ctxB) })

		instSleepUntil(epoch.Add(50 * time.Minute))
		s := instRead(t, rec.store, "stall")
		require.Equal(t, idA, s.Instance, "B must not take over within A's slot")
		require.Equal(t, int64(1), s.Claim)
		require.Equal(t, background.StateActive, s.Status.State)

		// B claimed slot 1 (by 01:00:30) and finished it (by 01:07); A is
		// still asleep.
		instSleepUntil(epoch.Add(90 * time.Minute))
		require.Empty(t, log.allProgress(), "A is still stalled")
		beforeWake := instRead(t, rec.store, "stall")
		require.Equal(t, idB, beforeWake.Instance)
		require.Equal(t, int64(2), beforeWake.Claim, "B's claim bumps the claim")
		require.Equal(t, background.StateCompleted, beforeWake.Status.State)
		require.Equal(t, epoch.Add(time.Hour), beforeWake.Status.StartTime.Truncate(time.Hour), "B claimed slot 1")
		for name, w := range beforeWake.ActiveWork {
			require.Equal(t, background.StateCompleted, w.Status.State, "item %q", name)
		}
		commitsBeforeWake := len(rec.commitLog())

		// A wakes at 01:31: its Progress answers Conflict, its run ends,
		// and it writes nothing: the stored state is B's.
		instSleepUntil(epoch.Add(105 * time.Minute))
		stalled := log.allProgress()
		require.Len(t, stalled, 1)
		require.Equal(t, idA, stalled[0].Instance)
		require.Equal(t, int64(1), stalled[0].Claim)
		require.Equal(t, background.Conflict, stalled[0].Result)
		require.ErrorIs(t, stalled[0].Err, background.ErrConflict)
		require.Equal(t, beforeWake, instRead(t, rec.store, "stall"), "the stalled owner wrote after it lost the run")
		require.Len(t, rec.commitLog(), commitsBeforeWake, "the stalled owner committed after it lost the run")
		cancelA()
		cancelB()
		wg.Wait()

		var aItems, bItems []string
		for _, e := range log.allExecs() {
			require.NoError(t, e.Err)
			switch e.Claim {
			case 1:
				require.Equal(t, epoch, e.Slot)
				aItems = append(aItems, e.Item)
			case 2:
				require.Equal(t, epoch.Add(time.Hour), e.Slot)
				bItems = append(bItems, e.Item)
			default:
				require.Failf(t, "unexpected claim", "%+v", e)
			}
		}
		require.Equal(t, []string{"a"}, aItems, "the stalled owner starts no item after its stall")
		require.Equal(t, []string{"a", "b", "c"}, bItems, "the new owner processes every item")
		claimAt, claimOwner := instRequireFencedCommits(t, rec.commitLog())
		require.Len(t, claimAt, 2)
		require.Equal(t, idA, claimOwner[1])
		require.Equal(t, idB, claimOwner[2])
	})
}

// TestInstanceStalledOwnerIsTakenOverAfterItsSlot: an owner that stalls
// past its slot loses the run to the instance that claims the next slot,
// finds out at its next Progress (Conflict) and writes nothing more.
func TestInstanceStalledOwnerIsTakenOverAfterItsSlot(t *testing.T) {
	instStallTakeover(t, "A", "B")
}

// TestInstancesWithTheSameIDFenceEachOther: two Process values with the
// same instance ID are still two owners, told apart by their claims.
func TestInstancesWithTheSameIDFenceEachOther(t *testing.T) {
	instStallTakeover(t, "same", "same")
}

// TestInstanceOwnerKeepsItsSlotWhileWritingProgress: a run longer than the
// progress frequency, writing progress regularly, keeps its slot: the other
// instances' cycles within the slot skip it, and each of its progress
// writes is accepted. An item registered during the run moves SettingsTime
// past the run's start, so the run no longer counts as having run since
// the last settings change: the other instances must skip it because it is
// still active.
func TestInstanceOwnerKeepsItsSlotWhileWritingProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		epoch := time.Now()
		rec := newInstRecorder()
		log := &instLog{}
		// Item "a" works for 40 minutes in 5-minute steps, writing progress
		// after each; "b" and "c" take two minutes.
		steady := &instWorker{log: log, process: func(ctx context.Context, state *background.State, name string, p *background.Process) error {
			if name != "a" {
				return instSleep(ctx, 2*time.Minute)
			}
			for range 8 {
				if err := instSleep(ctx, 5*time.Minute); err != nil {
					return err
				}
				if _, err := log.instProgressCall(p, state); err != nil {
					return err
				}
			}
			return nil
		}}
		a := instNewProcess(t, rec, "steady", "A", steady, time.Minute)
		// B and C start their first cycles at 00:20 and 00:35, while A works.
		b := instNewProcess(t, rec, "steady", "B", &instWorker{log: log}, 20*time.Minute)
		c := instNewProcess(t, rec, "steady", "C", &instWorker{log: log}, 35*time.Minute)
		instRegister(t, a, "a", "b", "c")

		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		for _, p := range []*background.Process{a, b, c} {
			wg.Go(func() { p.Run(ctx) })
		}

		instSleepUntil(epoch.Add(10 * time.Minute))
		instRegister(t, b, "d")
		for _, at := range []time.Duration{19 * time.Minute, 34 * time.Minute} {
			instSleepUntil(epoch.Add(at))
			s := instRead(t, rec.store, "steady")
			require.Equal(t, "A", s.Instance)
			require.Equal(t, background.StateActive, s.Status.State)
			require.GreaterOrEqual(t, s.Status.ProgressTime, epoch.Add(at-5*time.Minute), "A writes progress every 5 minutes")
		}
		instSleepUntil(epoch.Add(50 * time.Minute))
		cancel()
		wg.Wait()

		progress := log.allProgress()
		require.Len(t, progress, 8)
		for i, pr := range progress {
			require.NoError(t, pr.Err)
			want := background.Updated
			if i == 1 { // 00:11, the first write after "d" was registered
				want = background.Merged
			}
			require.Equal(t, want, pr.Result, "progress write %d at %s", i, pr.At)
		}
		var items []string
		for _, e := range log.allExecs() {
			require.NoError(t, e.Err)
			require.Equal(t, "A", e.Instance)
			items = append(items, e.Item)
		}
		require.Equal(t, []string{"a", "b", "c"}, items, "an item that joins through a merge waits for the next run")

		tried := map[string][]time.Duration{}
		for _, l := range rec.lockCalls() {
			tried[l.Instance] = append(tried[l.Instance], l.At.Sub(epoch))
		}
		require.Contains(t, tried["B"], 20*time.Minute, "B tried to claim the slot")
		require.Contains(t, tried["C"], 35*time.Minute, "C tried to claim the slot")
		claimAt, claimOwner := instRequireFencedCommits(t, rec.commitLog())
		require.Equal(t, map[int64]string{1: "A"}, claimOwner, "only A claimed slot 0")
		require.Len(t, claimAt, 1)
		s := instRead(t, rec.store, "steady")
		require.Equal(t, "A", s.Instance)
		require.Equal(t, int64(1), s.Claim)
		require.Equal(t, background.StateCompleted, s.Status.State)
		require.Equal(t, background.StateNew, s.ActiveWork["d"].Status.State)
	})
}
