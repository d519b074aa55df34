package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// sealedSecretsVersion is the catalog migration that seals shard DSNs
// (00007_sealed_secrets.sql): a reseal needs the catalog at it or later.
const sealedSecretsVersion = 7

// secretKeys reads --secret-key and --secret-key-previous into a key ring
// (for the provisioner and the router, which build their own Sealer from
// it) and a Sealer over it.
func secretKeys(current string, previous []string) ([]byte, *shardmap.Sealer, error) {
	if current == "" {
		return nil, nil, fmt.Errorf("--secret-key (or SILO_SECRET_KEY) is required: 64 hex characters, e.g. from `openssl rand -hex 32`")
	}
	if _, err := shardmap.ParseSecretKey(current); err != nil {
		return nil, nil, fmt.Errorf("--secret-key: %v", err)
	}
	ring, err := shardmap.ParseKeyRing(current, previous)
	if err != nil {
		return nil, nil, fmt.Errorf("--secret-key-previous: %v", err)
	}
	sealer, err := shardmap.NewSealer(ring)
	if err != nil {
		return nil, nil, fmt.Errorf("--secret-key-previous: %v", err)
	}
	return ring, sealer, nil
}

func newSecretsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secrets",
		Short: "Look after the secrets sealed in the catalog",
	}
	cmd.AddCommand(newSecretsResealCmd(g))
	return cmd
}

// resealOutput is what `silo secrets reseal -o json` prints.
type resealOutput struct {
	KeyID           string      `json:"keyId"`
	TenantPasswords resealCount `json:"tenantPasswords"`
	ShardDSNs       resealCount `json:"shardDsns"`
	Failures        []string    `json:"failures"`
}

type resealCount struct {
	Moved   int `json:"moved"`
	Current int `json:"current"`
	Failed  int `json:"failed"`
}

func newSecretsResealCmd(g *globals) *cobra.Command {
	var catalogDSN, secretKey string
	var previous []string
	var batch int
	cmd := &cobra.Command{
		Use:   "reseal",
		Short: "Seal every tenant password and shard DSN in the catalog under the current secret key",
		Long: "Seal every secret in the catalog (tenant passwords, shard DSNs) again under --secret-key,\n" +
			"opening each with that key or one of --secret-key-previous. Secrets already under the\n" +
			"current key are left alone, so it can run again at any time, also while servers run.\n" +
			"It talks to the catalog directly, with the servers' settings: run it where they run.\n" +
			"After a reseal that moved everything and failed nothing, the previous keys can go.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if catalogDSN == "" {
				return fmt.Errorf("--catalog-dsn (or SILO_CATALOG_DSN) is required")
			}
			_, sealer, err := secretKeys(secretKey, previous)
			if err != nil {
				return err
			}
			log, err := newLogger(g.stderr, "warn")
			if err != nil {
				return err
			}
			ctx := silo.WithActor(cmd.Context(), silo.Actor{Name: "cli"})
			pool, err := shardmap.OpenCatalog(ctx, catalogDSN, 2, 5*time.Second, 30*time.Second)
			if err != nil {
				return err
			}
			defer pool.Close()
			if err := checkCatalogVersion(ctx, pool); err != nil {
				return err
			}
			store, err := shardmap.New(shardmap.Config{Pool: pool, Logger: log, Sealer: sealer})
			if err != nil {
				return err
			}
			res, rerr := store.Reseal(ctx, batch)
			if err := printReseal(g, res); err != nil {
				return err
			}
			if rerr != nil {
				return fmt.Errorf("the reseal stopped: %w (what it did is above; run it again to finish)", rerr)
			}
			if failed := res.TenantPasswords.Failed + res.ShardDSNs.Failed; failed > 0 {
				return fmt.Errorf("%d secrets did not open with these keys and were left as they were: keep the previous keys until they do", failed)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&catalogDSN, "catalog-dsn", "", "PostgreSQL connection string of the catalog database")
	f.StringVar(&secretKey, "secret-key", "", "the current secret key, which every secret is sealed under afterwards")
	f.StringSliceVar(&previous, "secret-key-previous", nil, "earlier secret keys, comma-separated, which open what they sealed")
	f.IntVar(&batch, "batch-size", shardmap.DefaultResealBatch, "rows read, and locked, at once")
	envNames(cmd, map[string]string{"catalog-dsn": "SILO_CATALOG_DSN", "secret-key": "SILO_SECRET_KEY",
		"secret-key-previous": "SILO_SECRET_KEY_PREVIOUS"})
	return cmd
}

// checkCatalogVersion refuses a catalog that is not a Silo catalog, or not
// yet upgraded to sealed DSNs.
func checkCatalogVersion(ctx context.Context, pool *pgxpool.Pool) error {
	var v int64
	err := pool.QueryRow(ctx, `SELECT coalesce(max(version_id), 0) FROM silo_catalog_migrations WHERE is_applied`).Scan(&v)
	if err != nil {
		return fmt.Errorf("this database is not a Silo catalog: %v", err)
	}
	if v < sealedSecretsVersion {
		return fmt.Errorf("the catalog is at version %d, before sealed shard DSNs (%d): start `silo serve` of this version first, which upgrades it", v, sealedSecretsVersion)
	}
	return nil
}

func printReseal(g *globals, res shardmap.ResealResult) error {
	count := func(c shardmap.ResealCount) resealCount { return resealCount{c.Moved, c.Current, c.Failed} }
	if g.output == "json" {
		out := resealOutput{KeyID: res.KeyID, TenantPasswords: count(res.TenantPasswords),
			ShardDSNs: count(res.ShardDSNs), Failures: res.Failures}
		if out.Failures == nil {
			out.Failures = []string{}
		}
		return g.printJSON(out)
	}
	row := func(kind string, c shardmap.ResealCount) []string {
		return []string{kind, strconv.Itoa(c.Moved), strconv.Itoa(c.Current), strconv.Itoa(c.Failed)}
	}
	if err := g.printTable([]string{"SECRETS", "MOVED", "CURRENT", "FAILED"}, [][]string{
		row("tenant passwords", res.TenantPasswords), row("shard DSNs", res.ShardDSNs),
	}); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "\nCurrent key: %s.\n", res.KeyID)
	for _, f := range res.Failures {
		fmt.Fprintf(g.stdout, "  did not open: %s\n", oneLine(f))
	}
	return nil
}
