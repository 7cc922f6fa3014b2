package background_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/gosupervise/supervisor/background"
)

// The chaos test runs three instances of an hourly process on one store
// for 48 virtual hours while a seeded plan stalls and crashes them, then
// checks from the commit log and the workers' log that each slot had one
// owner, that no item was lost, and that the stored state ends consistent.

const (
	chaosFreq  = time.Hour
	chaosSlots = 48
	chaosName  = "chaos"
)

// chaosItems are the registered items and how long each takes; a run
// takes 16 minutes.
var (
	chaosItems    = []string{"a", "b", "c", "d", "e", "f"}
	chaosItemTime = map[string]time.Duration{
		"a": 2 * time.Minute, "b": 3 * time.Minute, "c": 2 * time.Minute,
		"d": 4 * time.Minute, "e": 3 * time.Minute, "f": 2 * time.Minute,
	}
	chaosIDs = []string{"i1", "i2", "i3"}
)

type chaosKind int

const (
	chaosNormal     chaosKind = iota
	chaosStall                // the slot's owner stalls in one item for more than the rest of its slot
	chaosCrashOwner           // the slot's owner is stopped (its Run ctx cancelled) mid-run, then restarted
	chaosCrashIdle            // an instance that does not own the slot is stopped, then restarted
)

func (k chaosKind) String() string {
	return [...]string{"normal", "stall", "crash-owner", "crash-idle"}[k]
}

// chaosEvent is what the plan does to a slot.
type chaosEvent struct {
	kind  chaosKind
	item  string        // stall: the item the owner stalls in
	stall time.Duration // stall: how long, from the item's start
	at    time.Duration // crash: when, from the slot's start
	down  time.Duration // crash: how long the instance stays down
	pick  int           // crash-idle: which of the two other instances
}

func (ev chaosEvent) String() string {
	switch ev.kind {
	case chaosStall:
		return fmt.Sprintf("stall in %q for %s", ev.item, ev.stall.Round(time.Second))
	case chaosCrashOwner, chaosCrashIdle:
		return fmt.Sprintf("%s at +%s, down %s", ev.kind, ev.at.Round(time.Second), ev.down.Round(time.Second))
	}
	return ev.kind.String()
}

// chaosNewPlan draws the events of each slot from rng. Slots 0, 1 and the
// last three run undisturbed, so the first and last runs are plain ones.
// A stall or an owner crash is always followed by an undisturbed slot: its
// owner takes the run over and does every item, and every instance is up
// again by then. The timings keep each event inside its slot:
//   - a stall lasts 65m to 100m from the item's start, so the owner wakes
//     after the next slot was claimed (by 1h00m30s: the jitter is at most
//     30s) and before the slot after it starts;
//   - an owner crash comes 1m to 14m into the slot, while the 16-minute run
//     works, and the instance is back (initial wait included) by 55m;
//   - an idle crash comes 1m to 45m into the slot and the instance is back
//     by 56m, so its first cycle falls in the same slot, which it must skip.
func chaosNewPlan(rng *rand.Rand) []chaosEvent {
	plan := make([]chaosEvent, chaosSlots)
	for s := 2; s < chaosSlots-3; s++ {
		switch rng.IntN(10) {
		case 0, 1:
			plan[s] = chaosEvent{kind: chaosStall, item: chaosItems[rng.IntN(len(chaosItems))], stall: 65*time.Minute + chaosDuration(rng, 35*time.Minute)}
			s++
		case 2, 3:
			plan[s] = chaosEvent{kind: chaosCrashOwner, at: time.Minute + chaosDuration(rng, 13*time.Minute), down: time.Minute + chaosDuration(rng, 39*time.Minute)}
			s++
		case 4, 5:
			plan[s] = chaosEvent{kind: chaosCrashIdle, at: time.Minute + chaosDuration(rng, 44*time.Minute), down: time.Minute + chaosDuration(rng, 9*time.Minute), pick: rng.IntN(2)}
		}
	}
	return plan
}

// chaosDuration draws a duration in [0, d) from rng.
func chaosDuration(rng *rand.Rand, d time.Duration) time.Duration {
	return time.Duration(rng.Int64N(int64(d)))
}

// chaosNewWorker returns the Worker of every instance: each item takes its
// time (cut short by a cancelled ctx), except the item the plan stalls,
// which sleeps deaf to ctx and then calls Progress, as a worker would that
// had been paused with its machine.
func chaosNewWorker(log *instLog, epoch time.Time, plan []chaosEvent) *instWorker {
	w := &instWorker{log: log}
	w.process = func(ctx context.Context, state *background.State, name string, p *background.Process) error {
		slot := int(state.Status.StartTime.Sub(epoch) / chaosFreq)
		if ev := plan[slot]; ev.kind == chaosStall && ev.item == name {
			time.Sleep(ev.stall)
			_, _ = log.instProgressCall(p, state)
			return nil
		}
		return instSleep(ctx, chaosItemTime[name])
	}
	return w
}

// chaosLife is one Run of one instance, from its start to its crash or the
// end of the test.
type chaosLife struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// chaosCrash is a crash the plan carried out.
type chaosCrash struct {
	slot     int
	instance string
	at       time.Time
	claim    int64 // the stored claim at the crash
	commits  int   // how many writes were committed before it
}

// TestChaosInstancesStallCrashAndRestart runs three instances for 48 hourly
// slots under a seeded plan of stalls, owner crashes and idle crashes, each
// crashed instance restarting as a new Process value with its ID, then
// checks the invariants listed at chaosCheck. Every Run must return once
// the test cancels them: the test waits for each, synctest.Test fails on a
// goroutine left blocked in the bubble, and the package's TestMain checks
// for leaked goroutines.
func TestChaosInstancesStallCrashAndRestart(t *testing.T) {
	plan := chaosNewPlan(rand.New(rand.NewPCG(2000, 48)))
	counts := map[chaosKind]int{}
	for s, ev := range plan {
		counts[ev.kind]++
		if ev.kind != chaosNormal {
			t.Logf("slot %2d: %s", s, ev)
		}
	}
	// The seed is fixed; this only guards against a plan with nothing in it.
	require.GreaterOrEqual(t, counts[chaosStall], 3)
	require.GreaterOrEqual(t, counts[chaosCrashOwner], 3)
	require.GreaterOrEqual(t, counts[chaosCrashIdle], 2)

	synctest.Test(t, func(t *testing.T) {
		epoch := time.Now()
		require.Equal(t, epoch, epoch.Truncate(chaosFreq), "slots start at the bubble's start")
		rec := newInstRecorder()
		log := &instLog{}
		worker := chaosNewWorker(log, epoch, plan)

		root, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		lives := map[string]*chaosLife{}
		started := 0
		start := func(id string) {
			// A restart is a new Process value with the same instance ID,
			// as a restarted program would make.
			p := background.NewProcess(chaosName, worker, rec.view(id), chaosFreq, background.Params{},
				background.WithInstance(id), background.WithLogger(instDiscard))
			// Progress every minute: every item (2m or more) ends with a
			// write, so a run that wrote after its crash would show.
			require.NoError(t, p.UpdateFlowControl(time.Minute, time.Minute, time.Minute))
			ctx, stop := context.WithCancel(root)
			life := &chaosLife{cancel: stop, done: make(chan struct{})}
			lives[id] = life
			started++
			wg.Go(func() {
				defer close(life.done)
				p.Run(ctx)
			})
		}
		setup := background.NewProcess(chaosName, worker, rec.view("setup"), chaosFreq, background.Params{}, background.WithLogger(instDiscard))
		instRegister(t, setup, chaosItems...)
		for _, id := range chaosIDs {
			start(id)
		}

		var crashes []chaosCrash
		for s, ev := range plan {
			if ev.kind != chaosCrashOwner && ev.kind != chaosCrashIdle {
				continue
			}
			instSleepUntil(epoch.Add(time.Duration(s)*chaosFreq + ev.at))
			st := instRead(t, rec.store, chaosName)
			require.Equal(t, epoch.Add(time.Duration(s)*chaosFreq), st.Status.StartTime.Truncate(chaosFreq), "slot %d was claimed", s)
			target := st.Instance
			if ev.kind == chaosCrashOwner {
				require.Equal(t, background.StateActive, st.Status.State, "slot %d: the owner works when it crashes", s)
			} else {
				others := slices.DeleteFunc(slices.Clone(chaosIDs), func(id string) bool { return id == st.Instance })
				target = others[ev.pick]
			}
			// Every other goroutine is blocked (instSleepUntil waited for
			// it), so every commit from here on comes after the crash.
			crashes = append(crashes, chaosCrash{slot: s, instance: target, at: time.Now(), claim: st.Claim, commits: len(rec.commitLog())})
			lives[target].cancel()
			<-lives[target].done
			time.Sleep(ev.down)
			start(target)
		}
		// Every instance stops between runs: slot 47's run is done by
		// 47h17m.
		instSleepUntil(epoch.Add(chaosSlots*chaosFreq - 15*time.Minute))
		cancel()
		wg.Wait()
		for id, life := range lives {
			select {
			case <-life.done:
			default:
				require.Failf(t, "Run did not return", "instance %s", id)
			}
		}
		require.Equal(t, len(chaosIDs)+len(crashes), started)

		chaosCheck(t, epoch, plan, crashes, rec, log)
	})
}

// chaosCheck checks what the chaos test recorded. The invariants:
//
// Fencing (from the commit log, in commit order): claims only grow, by one
// at a time; every write of a claim names the instance that made it; so no
// run writes once the next claim is committed. There is exactly one claim
// per slot, claim c in slot c-1: a slot has one owner of record, and no
// slot goes unclaimed while instances are up.
//
// (a) One owner per slot: every ProcessActiveWork call belongs to the claim
// its run holds (state.Claim, state.Instance = the calling Process's
// instance), starts in that claim's slot, and starts before the next claim
// is committed, so the items of a slot are processed by one instance only.
// The one exception allowed, and required, is the item a stalled owner was
// in when it was taken over: it started before the take-over and finishes
// after it, processed by the old owner while the new one processes it too.
// Exactly the stall slots have one such item, none more: the old owner's
// Progress after it answers Conflict and it starts no further item.
//
// (b) No item lost: a claim processes items in name order, each at most
// once. An undisturbed slot (normal, idle crash) completes all six items
// and writes a completed final status. A crashed owner completed the items
// before the crash, was cut short in one, and wrote nothing after the crash
// nor a final status; a stalled owner completed the items before the stall
// and the stalled one, and wrote no final status. As the slot after a
// disturbed one is undisturbed, every two consecutive slots complete every
// item.
//
// (c) The stored state at the end is the last run's: completed, owned by the
// last claim, every item completed in the last slot and none in cleanup or
// dropped; the aggregate stats count exactly the runs that finished.
func chaosCheck(t *testing.T, epoch time.Time, plan []chaosEvent, crashes []chaosCrash, rec *instRecorder, log *instLog) {
	commits := rec.commitLog()
	claimAt, claimOwner := instRequireFencedCommits(t, commits)
	slotOf := func(at time.Time) int { return int(at.Sub(epoch) / chaosFreq) }
	require.Len(t, claimAt, chaosSlots, "one claim per slot")
	for c, at := range claimAt {
		require.Equal(t, int(c-1), slotOf(at), "claim %d is slot %d's", c, c-1)
	}
	claimOf := func(slot int) int64 { return int64(slot + 1) }

	finished := map[int64]bool{} // claims that wrote a final status
	lastCommit := map[int64]time.Time{}
	for _, c := range commits {
		lastCommit[c.Claim] = c.At
		if c.State == background.StateCompleted {
			finished[c.Claim] = true
		}
		require.NotContains(t, []background.RunState{background.StateAborted, background.StateIncomplete}, c.State, "%+v", c)
	}

	// (a) and the gathering for (b).
	execs := map[int64][]instExec{}
	slotInstances := make([]map[string]bool, chaosSlots)
	for i := range slotInstances {
		slotInstances[i] = map[string]bool{}
	}
	late := map[int64][]instExec{} // calls still running when their claim was superseded
	for _, e := range log.allExecs() {
		require.Equal(t, e.Instance, e.Owner, "%+v", e)
		require.Equal(t, claimOwner[e.Claim], e.Instance, "the call runs for the instance of its claim: %+v", e)
		require.Equal(t, claimAt[e.Claim], e.ClaimStart, "%+v", e)
		require.Equal(t, int(e.Claim-1), slotOf(e.Start), "a call starts in its claim's slot: %+v", e)
		if next, ok := claimAt[e.Claim+1]; ok {
			require.True(t, e.Start.Before(next), "claim %d started item %q at %s, after claim %d took over at %s", e.Claim, e.Item, e.Start, e.Claim+1, next)
			if e.End.After(next) {
				late[e.Claim] = append(late[e.Claim], e)
			}
		}
		execs[e.Claim] = append(execs[e.Claim], e)
		slotInstances[slotOf(e.Start)][e.Instance] = true
	}
	for s := range chaosSlots {
		require.Len(t, slotInstances[s], 1, "slot %d: its items are processed by one instance", s)
	}

	crashOf := map[int]chaosCrash{}
	for _, cr := range crashes {
		crashOf[cr.slot] = cr
	}
	stallConflicts := map[int64]instProgress{}
	for _, pr := range log.allProgress() {
		_, dup := stallConflicts[pr.Claim]
		require.False(t, dup, "one Progress call per stall: %+v", pr)
		stallConflicts[pr.Claim] = pr
	}

	completed := make([][]string, chaosSlots)
	for s, ev := range plan {
		c := claimOf(s)
		started := []string{}
		completed[s] = []string{}
		for _, e := range execs[c] {
			started = append(started, e.Item)
			if e.Err == nil {
				completed[s] = append(completed[s], e.Item)
			}
		}
		require.Equal(t, chaosItems[:len(started)], started, "slot %d (%s): items start in name order, once each", s, ev.kind)
		switch ev.kind {
		case chaosNormal, chaosCrashIdle:
			require.Equal(t, chaosItems, completed[s], "slot %d (%s): every item completed", s, ev.kind)
			require.True(t, finished[c], "slot %d (%s): the run finished", s, ev.kind)
			require.Empty(t, late[c], "slot %d (%s)", s, ev.kind)
			if ev.kind == chaosCrashIdle {
				require.NotEqual(t, claimOwner[c], crashOf[s].instance, "slot %d: the idle crash hit a non-owner", s)
			}
		case chaosCrashOwner:
			cr := crashOf[s]
			require.Equal(t, c, cr.claim, "slot %d: the crash hit the slot's run", s)
			require.Equal(t, claimOwner[c], cr.instance)
			last := execs[c][len(execs[c])-1]
			require.ErrorIs(t, last.Err, context.Canceled, "slot %d: the crash cut an item short", s)
			require.Equal(t, cr.at, last.End)
			require.Equal(t, started[:len(started)-1], completed[s], "slot %d: the items before the crash completed", s)
			require.False(t, finished[c], "slot %d: a crashed run writes no final status", s)
			for _, after := range commits[cr.commits:] {
				require.NotEqual(t, c, after.Claim, "slot %d: claim %d wrote at %s, after its crash at %s", s, c, after.At, cr.at)
			}
			require.Empty(t, late[c], "slot %d: a crashed run is over before the take-over", s)
		case chaosStall:
			require.Equal(t, ev.item, started[len(started)-1], "slot %d: the owner starts nothing after its stall", s)
			require.Equal(t, started, completed[s], "slot %d: the stalled item finishes, late", s)
			require.Len(t, late[c], 1, "slot %d: the stalled item is the one processed after the take-over", s)
			require.Equal(t, ev.item, late[c][0].Item)
			pr, ok := stallConflicts[c]
			require.True(t, ok, "slot %d: the stalled owner called Progress", s)
			require.Equal(t, background.Conflict, pr.Result, "slot %d", s)
			require.ErrorIs(t, pr.Err, background.ErrConflict, "slot %d", s)
			require.False(t, finished[c], "slot %d: a stalled run that lost its claim writes no final status", s)
			require.True(t, lastCommit[c].Before(claimAt[c+1]), "slot %d", s)
		}
	}
	require.Len(t, stallConflicts, len(slices.DeleteFunc(slices.Clone(plan), func(ev chaosEvent) bool { return ev.kind != chaosStall })))
	for s := range chaosSlots - 1 {
		both := append(slices.Clone(completed[s]), completed[s+1]...)
		for _, item := range chaosItems {
			require.Contains(t, both, item, "slots %d and %d: item %q was lost", s, s+1, item)
		}
	}

	// (c) The final state.
	final := instRead(t, rec.store, chaosName)
	lastClaim := claimOf(chaosSlots - 1)
	require.Equal(t, lastClaim, final.Claim)
	require.Equal(t, claimOwner[lastClaim], final.Instance)
	require.Equal(t, background.StateCompleted, final.Status.State, "every instance stopped between runs")
	require.Zero(t, final.Status.TotalErrors)
	require.ElementsMatch(t, chaosItems, chaosKeys(final.ActiveWork))
	for name, w := range final.ActiveWork {
		require.Equal(t, background.StateCompleted, w.Status.State, "item %q", name)
		require.Equal(t, chaosSlots-1, slotOf(w.Status.FinishTime), "item %q was completed by the last run", name)
		require.NotContains(t, final.CleanupWork, name)
		require.NotContains(t, final.DroppedWork, name)
	}
	require.Empty(t, final.CleanupWork)
	require.Empty(t, final.DroppedWork)
	runs := float64(len(finished))
	require.Equal(t, runs, final.AggregateStats["runs"], "the aggregate counts every finished run once")
	require.Equal(t, runs, final.AggregateStats["state.completed"])
	require.Zero(t, final.AggregateStats["errors"], "errors of runs that never finished are not aggregated")
	require.Equal(t, float64(chaosSlots-chaosCountDisturbed(plan)), runs)
}

func chaosCountDisturbed(plan []chaosEvent) int {
	n := 0
	for _, ev := range plan {
		if ev.kind == chaosStall || ev.kind == chaosCrashOwner {
			n++
		}
	}
	return n
}

func chaosKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}
