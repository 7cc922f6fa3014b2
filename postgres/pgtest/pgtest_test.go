package pgtest_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/gosupervise/supervisor/postgres/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestURLServesQueries(t *testing.T) {
	url := pgtest.URL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT 1 + 1").Scan(&n))
	require.Equal(t, 2, n)
}

func TestStartServesTCPAndSocket(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster")
	}
	ctx := context.Background()
	s, err := pgtest.Start(ctx)
	if err != nil {
		t.Skip(err)
	}
	defer s.Close()
	for _, url := range []string{s.URL(), s.SocketURL()} {
		conn, err := pgx.Connect(ctx, url)
		require.NoError(t, err, url)
		var v string
		require.NoError(t, conn.QueryRow(ctx, "SHOW server_version").Scan(&v))
		require.NotEmpty(t, v)
		require.NoError(t, conn.Close(ctx))
	}
	require.NoError(t, s.Close())
}
