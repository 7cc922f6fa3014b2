package postgres_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/gosupervise/supervisor/postgres/pgtest"
)

// One throwaway cluster serves every test of the package; each test works
// under its own Prefix, so tests never see each other's rows.
var (
	clusterOnce sync.Once
	cluster     *pgtest.Server
	clusterURL  string
	clusterErr  error
	prefixes    atomic.Int64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		_ = cluster.Close()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testURL returns the database URL for the package's tests:
// SUPERVISOR_TEST_DATABASE_URL, or the package's throwaway cluster; it
// skips the test (saying how to install the server) without either.
func testURL(t testing.TB) string {
	t.Helper()
	clusterOnce.Do(func() {
		if clusterURL = os.Getenv(pgtest.EnvURL); clusterURL != "" {
			return
		}
		cluster, clusterErr = pgtest.Start(context.Background())
		if clusterErr == nil {
			clusterURL = cluster.URL()
		}
	})
	if clusterErr != nil {
		t.Skip(clusterErr)
	}
	return clusterURL
}

// runID keeps the prefixes of two runs on one server apart.
var runID = fmt.Sprintf("%06x", rand.Int32N(1<<24))

// testPrefix returns a Prefix no other test uses.
func testPrefix() string {
	return fmt.Sprintf("t%s_%d_", runID, prefixes.Add(1))
}

// newPool opens a pool on url, closed at the test's end.
func newPool(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	db, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}
