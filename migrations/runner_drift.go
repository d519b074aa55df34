package migrations

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

// driftConcurrency bounds the tenant databases inspected at once, and
// driftMaxLines the differences listed per tenant.
const (
	driftConcurrency = 8
	driftMaxLines    = 50
)

// templateDB is the template database the provisioner keeps on every shard.
const templateDB = "silo_template"

// Drift fingerprints each active shard's template and every active and
// suspended tenant, and lists the tenants that differ from their shard's
// template. A tenant that cannot be reached is listed with its error.
func (r *Runner) Drift(ctx context.Context) (*silo.DriftReport, error) {
	rows, err := r.cfg.Catalog.Query(ctx, `
		SELECT t.id, t.shard, t.database_name, t.schema_version FROM tenants t
		WHERE t.state IN ('active', 'suspended') ORDER BY t.shard, t.id`)
	if err != nil {
		return nil, catalogError(err)
	}
	type tenant struct {
		id, shard, db string
		version       int64
	}
	tenants, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (tenant, error) {
		var t tenant
		return t, row.Scan(&t.id, &t.shard, &t.db, &t.version)
	})
	if err != nil {
		return nil, catalogError(err)
	}
	report := &silo.DriftReport{Checked: len(tenants)}
	templates := map[string]Fingerprint{}
	var shards []string
	for _, t := range tenants {
		if _, ok := templates[t.shard]; !ok {
			templates[t.shard] = Fingerprint{}
			shards = append(shards, t.shard)
		}
	}
	for _, shard := range shards {
		tf := silo.TemplateFingerprint{Shard: shard}
		fp, v, err := r.fingerprint(ctx, shard, templateDB)
		if err != nil {
			tf.Error = err.Error()
		} else {
			tf.Fingerprint, tf.Version = fp.Hash, v
			templates[shard] = fp
		}
		report.Templates = append(report.Templates, tf)
	}
	templateVersion := map[string]int64{}
	for _, tf := range report.Templates {
		templateVersion[tf.Shard] = tf.Version
	}

	drifted := make([]*silo.SchemaDrift, len(tenants))
	sem := make(chan struct{}, driftConcurrency)
	var wg sync.WaitGroup
	for i, t := range tenants {
		want := templates[t.shard]
		if want.Hash == "" {
			drifted[i] = &silo.SchemaDrift{TenantID: t.id, Shard: t.shard, Version: t.version,
				Error: "its shard's template could not be inspected"}
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil, silo.WrapError(ctx.Err(), silo.ETIMEOUT, "drift check cut short after %d tenants", i)
		}
		wg.Go(func() {
			defer func() { <-sem }()
			got, _, err := r.fingerprint(ctx, t.shard, t.db)
			d := &silo.SchemaDrift{TenantID: t.id, Shard: t.shard, Version: t.version, TemplateVersion: templateVersion[t.shard]}
			switch {
			case err != nil:
				d.Error = err.Error()
			case got.Hash == want.Hash:
				return
			default:
				d.Missing, d.Extra = DiffFingerprints(want, got)
				d.Missing, d.Extra = d.Missing[:min(len(d.Missing), driftMaxLines)], d.Extra[:min(len(d.Extra), driftMaxLines)]
			}
			drifted[i] = d
		})
	}
	wg.Wait()
	for _, d := range drifted {
		if d != nil {
			report.Drifted = append(report.Drifted, *d)
		}
	}
	return report, nil
}

// fingerprint connects to a database on a shard as the shard's admin and
// returns its schema fingerprint and version.
func (r *Runner) fingerprint(ctx context.Context, shard, db string) (Fingerprint, int64, error) {
	dsn, err := r.cfg.Store.ShardDSN(ctx, shard)
	if err != nil {
		return Fingerprint{}, 0, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return Fingerprint{}, 0, fmt.Errorf("shard %q has an invalid DSN", shard)
	}
	cfg.Database = db
	cfg.ConnectTimeout = r.cfg.ConnectTimeout
	// The same search_path everywhere, so that expressions print alike.
	cfg.RuntimeParams["search_path"] = "public"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return Fingerprint{}, 0, fmt.Errorf("connect to %s on shard %q: %w", db, shard, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	fp, err := SchemaFingerprint(ctx, conn)
	if err != nil {
		return Fingerprint{}, 0, err
	}
	v, err := TenantVersion(ctx, conn)
	return fp, v, err
}
