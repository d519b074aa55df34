package migrations

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
	"github.com/silo-db/silo/shardmap"
)

// driftConcurrency bounds the tenant databases inspected at once, and
// driftMaxLines the differences listed per tenant.
const (
	driftConcurrency = 8
	driftMaxLines    = 50
)

// templateDB is the template database the provisioner keeps on every shard.
const templateDB = "silo_template"

// Drift fingerprints each active shard's template and every active
// tenant, and lists the tenants that differ from their shard's template.
// A tenant that cannot be reached is listed with its error. Each tenant is
// read as its own role, so nothing in its database (a view in place of the
// version table) runs with more rights than the tenant's; a suspended
// tenant's role cannot log in, so suspended tenants are not checked.
func (r *Runner) Drift(ctx context.Context) (*silo.DriftReport, error) {
	rows, err := r.cfg.Catalog.Query(ctx, `
		SELECT t.id, t.shard, t.database_name, t.schema_version FROM tenants t
		WHERE t.state = 'active' ORDER BY t.shard, t.id`)
	if err != nil {
		return nil, shardmap.CatalogError(err, "tenant migrations")
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
		return nil, shardmap.CatalogError(err, "tenant migrations")
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
		fp, v, err := r.fingerprint(ctx, shard, nil)
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
			got, _, err := r.fingerprint(ctx, t.shard, &silo.Tenant{ID: t.id, Shard: t.shard, Database: t.db})
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

// fingerprint returns the schema fingerprint and version of a tenant's
// database, read as the tenant's own role, or of the shard's template
// (Silo's own, which no tenant reaches) as the shard's admin when t is nil.
func (r *Runner) fingerprint(ctx context.Context, shard string, t *silo.Tenant) (Fingerprint, int64, error) {
	var cfg *pgx.ConnConfig
	var err error
	db := templateDB
	if t != nil {
		db = t.Database
		cfg, err = r.cfg.Dialer.TenantConfig(ctx, t, shard)
	} else {
		cfg, err = r.cfg.Dialer.AdminConfig(ctx, shard, templateDB)
	}
	if err != nil {
		return Fingerprint{}, 0, err
	}
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
