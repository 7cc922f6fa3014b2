package postgres_test

import (
	"context"
	"log"
	"os"
	"os/signal"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gosupervise/supervisor/background"
	"github.com/gosupervise/supervisor/postgres"
)

// reportWorker builds one nightly report per work item.
type reportWorker struct{}

func (reportWorker) ProcessActiveWork(ctx context.Context, state *background.State, name string, work *background.Work, p *background.Process) error {
	log.Printf("report %s for region %s, built by %s", name, work.Params.Strings["region"], p.Instance())
	return nil
}

func (reportWorker) CleanupWork(ctx context.Context, state *background.State, name string, p *background.Process) error {
	return nil // would delete the reports of an item no longer registered
}

func (reportWorker) Wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Every instance of a service, on every machine, runs the same process on
// a Store over the same database: the instance that claims a schedule
// slot first runs it, and the others skip it.
func ExampleNewStore() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	db, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	// Closed after Run returns: a Store transaction holds a connection
	// while it is open, and closing the pool waits for it.
	defer db.Close()
	// Tables supervisor_*, created if missing.
	store, err := postgres.NewStore(ctx, db, postgres.Options{})
	if err != nil {
		log.Fatal(err)
	}

	p := background.NewProcess("nightly-reports", reportWorker{}, store, 24*time.Hour, background.Params{})
	// Registering is idempotent: every instance may do it at start.
	for _, region := range []string{"emea", "apac"} {
		params := background.Params{Strings: map[string]string{"region": region}}
		if _, err := p.RegisterWork("sales-"+region, params, nil); err != nil {
			log.Fatal(err)
		}
	}
	p.Run(ctx) // until interrupted
}
