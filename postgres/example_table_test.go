package postgres_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/gosupervise/supervisor"
	"github.com/gosupervise/supervisor/postgres"
)

// job is what a row's data describes; it runs until stopped.
type job struct{ key, command string }

func (j *job) Run(ctx context.Context, ready supervisor.Callback) error {
	fmt.Println("running", j.key, j.command)
	return ready(ctx)
}

// Every node runs this: it shares the rows of the table "jobs" with the
// other nodes on the same database, running its share of them.
func ExampleNewTable() {
	ctx := context.Background()
	db, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	table, err := postgres.NewTable(ctx, db, "jobs",
		func(key string, data []byte) (*job, error) { return &job{key: key, command: string(data)}, nil },
		postgres.Options{StopGrace: 20 * time.Second}) // twice the StopTimeout below
	if err != nil {
		log.Fatal(err)
	}
	defer table.Close() // after the supervisor has stopped

	// Any node adds work; the node with room in its share runs it.
	if err := table.Put(ctx, "report", []byte("make report")); err != nil {
		log.Fatal(err)
	}
	sup := supervisor.NewSupervisor[string, *job](table, supervisor.Options{Name: table.Node(), StopTimeout: 10 * time.Second})
	runCtx, stop := context.WithTimeout(ctx, time.Minute)
	defer stop()
	err = sup.Run(runCtx, func(ctx context.Context) error { <-ctx.Done(); return nil })
	fmt.Println("supervisor stopped:", err)
}
