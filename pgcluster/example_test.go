package pgcluster_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo/pgcluster"
)

func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	parent, err := os.MkdirTemp("", "pgcluster-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(parent)
	// Run as root, the server runs as the postgres user, which must be able
	// to reach the cluster directory.
	if err := os.Chmod(parent, 0o755); err != nil {
		log.Fatal(err)
	}

	c, err := pgcluster.Start(ctx, pgcluster.Config{Dir: filepath.Join(parent, "dev"), Fast: true})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Stop(context.WithoutCancel(ctx))

	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(ctx)
	var user, walLevel string
	if err := conn.QueryRow(ctx, "SELECT current_user, current_setting('wal_level')").Scan(&user, &walLevel); err != nil {
		log.Fatal(err)
	}
	fmt.Println(user, walLevel)
	// Output: silo logical
}
