package supervisor_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/gosupervise/supervisor"
)

// An App prepares and starts its modules in dependency order and stops
// them in reverse.
func ExampleApp() {
	app := supervisor.NewApp(supervisor.AppOptions{Name: "shop", Logger: slog.New(slog.DiscardHandler)})
	for _, m := range []struct {
		name string
		deps []string
	}{{"api", []string{"store"}}, {"config", nil}, {"store", []string{"config"}}} {
		name := m.name
		_, err := app.Register(name, supervisor.ModuleFuncs{
			Prep:  func(ctx context.Context, m *supervisor.Module) error { fmt.Println("prep", name); return nil },
			Start: func(ctx context.Context, m *supervisor.Module) error { fmt.Println("start", name); return nil },
			Stop:  func(ctx context.Context, m *supervisor.Module) error { fmt.Println("stop", name); return nil },
		}, m.deps...)
		if err != nil {
			panic(err)
		}
	}
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	fmt.Println("api online:", app.Module("api").Online())
	if err := app.Shutdown(context.Background()); err != nil {
		panic(err)
	}
	// Output:
	// prep config
	// prep store
	// prep api
	// start config
	// start store
	// start api
	// api online: true
	// stop api
	// stop store
	// stop config
}

// A worker's failure goes to the App's kernel as a *ModuleError naming the
// module and the worker.
func ExampleModule_RunWorker() {
	app := supervisor.NewApp(supervisor.AppOptions{Logger: slog.New(slog.DiscardHandler)})
	decisions, cancel := app.Kernel().Subscribe(1)
	defer cancel()
	_, err := app.Register("mailer", supervisor.ModuleFuncs{
		Start: func(ctx context.Context, m *supervisor.Module) error {
			err := m.RunWorker("send", func(ctx context.Context) error {
				return errors.New("smtp: connection refused")
			})
			fmt.Println("worker returned:", err)
			return nil
		},
	})
	if err != nil {
		panic(err)
	}
	if err := app.Start(context.Background()); err != nil {
		panic(err)
	}
	d := <-decisions
	var me *supervisor.ModuleError
	fmt.Println(d.Failure.Process, errors.As(d.Failure.Err, &me), me.TaskType, d.Action)
	_ = app.Shutdown(context.Background())
	// Output:
	// worker returned: smtp: connection refused
	// mailer/send true worker abort
}
