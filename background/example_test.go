package background_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/gosupervise/supervisor/background"
)

// reindexer is a Worker that reindexes one table per work item. Its Wait
// lets Run through once: Run waits before the first cycle and after each
// one, so the second Wait, answering false, ends Run after one cycle. A
// real Worker's Wait sleeps d, or until ctx is done.
type reindexer struct {
	waits int
}

func (r *reindexer) ProcessActiveWork(ctx context.Context, state *background.State, name string, work *background.Work, p *background.Process) error {
	rows := work.Params.Ints["batch"]
	p.AddWorkStats(float64(rows), "rows", name, state)
	fmt.Printf("reindexed %s (%d rows) as %s\n", name, rows, p.Instance())
	return nil
}

func (r *reindexer) CleanupWork(ctx context.Context, state *background.State, name string, p *background.Process) error {
	return nil // would drop the index of a table no longer registered
}

func (r *reindexer) Wait(ctx context.Context, d time.Duration) bool {
	r.waits++
	return r.waits == 1
}

// A process with two work items, run for one cycle. Every instance of a
// service creates the same Process over the same Store; the first to
// claim a schedule slot runs it.
func ExampleNewProcess() {
	store := background.NewMemoryStore()
	p := background.NewProcess("reindex", &reindexer{}, store, time.Hour, background.Params{},
		background.WithInstance("alpha"), background.WithLogger(slog.New(slog.DiscardHandler)))
	// No wait before the first cycle and no minimum frequency: the
	// defaults (a minute, 15 minutes) suit a service, not an example.
	if err := p.UpdateFlowControl(0, 0, 0); err != nil {
		fmt.Println(err)
		return
	}
	for name, batch := range map[string]int64{"users": 500, "orders": 200} {
		if _, err := p.RegisterWork(name, background.Params{Ints: map[string]int64{"batch": batch}}, nil); err != nil {
			fmt.Println(err)
			return
		}
	}

	p.Run(context.Background()) // items in name order; returns when Wait answers false

	tx, err := store.Lock(context.Background(), "reindex")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tx.Rollback()
	state, err := tx.Read(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("run: claim %d by %s, %s\n", state.Claim, state.Instance, state.Status.State)
	for _, name := range []string{"orders", "users"} {
		fmt.Printf("%s: %s\n", name, state.ActiveWork[name].Status.State)
	}
	fmt.Println("runs:", state.AggregateStats["runs"], "rows:", state.AggregateStats["work.rows"])
	// Output:
	// reindexed orders (200 rows) as alpha
	// reindexed users (500 rows) as alpha
	// run: claim 1 by alpha, completed
	// orders: completed
	// users: completed
	// runs: 1 rows: 700
}

// A transaction holds the state's lock until Commit or Rollback; another
// Lock meanwhile fails at once with ErrLocked, and the Process retries it
// for a while.
func ExampleMemoryStore() {
	ctx := context.Background()
	store := background.NewMemoryStore()

	tx, err := store.Lock(ctx, "reindex")
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = tx.Read(ctx)
	fmt.Println("before the first write:", errors.Is(err, background.ErrNotFound))
	if err := tx.Write(ctx, &background.State{Settings: background.Params{Strings: map[string]string{"mode": "full"}}}); err != nil {
		fmt.Println(err)
		return
	}
	if err := tx.Commit(); err != nil {
		fmt.Println(err)
		return
	}

	tx, err = store.Lock(ctx, "reindex")
	if err != nil {
		fmt.Println(err)
		return
	}
	_, err = store.Lock(ctx, "reindex")
	fmt.Println("while locked:", errors.Is(err, background.ErrLocked))
	state, err := tx.Read(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(state.Name, state.Settings.Strings["mode"])
	if err := tx.Rollback(); err != nil {
		fmt.Println(err)
		return
	}
	tx, err = store.Lock(ctx, "reindex")
	fmt.Println("after Rollback:", err)
	if err == nil {
		_ = tx.Rollback()
	}
	// Output:
	// before the first write: true
	// while locked: true
	// reindex full
	// after Rollback: <nil>
}
