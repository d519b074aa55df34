package shardmap

import (
	"context"
	"encoding/json"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/silo-db/silo"
)

// AuditFilter narrows ListAudit; empty fields match everything.
type AuditFilter struct {
	Action string
	Target string
	Actor  string
}

// ListAudit returns one page of audit entries matching f, newest first. It
// returns EINVALID for a bad limit or cursor.
func (s *Store) ListAudit(ctx context.Context, f AuditFilter, p silo.Page) (silo.List[silo.AuditEntry], error) {
	limit, after, err := page(p)
	if err != nil {
		return silo.List[silo.AuditEntry]{}, err
	}
	before := int64(1<<63 - 1)
	if after != "" {
		if before, err = strconv.ParseInt(after, 10, 64); err != nil {
			return silo.List[silo.AuditEntry]{}, silo.Errorf(silo.EINVALID, "cursor %q is not one this server returned", p.Cursor)
		}
	}
	rows, err := s.pool.Query(ctx, `
		SELECT id, at, actor, action, target, params, result, error, request_id
		FROM audit_log
		WHERE id < $1
		  AND ($2 = '' OR action = $2)
		  AND ($3 = '' OR target = $3)
		  AND ($4 = '' OR actor = $4)
		ORDER BY id DESC LIMIT $5`,
		before, f.Action, f.Target, f.Actor, limit+1)
	if err != nil {
		return silo.List[silo.AuditEntry]{}, CatalogError(err, "list audit entries")
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (silo.AuditEntry, error) {
		var e silo.AuditEntry
		var params []byte
		if err := r.Scan(&e.ID, &e.Time, &e.Actor, &e.Action, &e.Target, &params, &e.Result, &e.Error, &e.RequestID); err != nil {
			return e, err
		}
		return e, json.Unmarshal(params, &e.Params)
	})
	if err != nil {
		return silo.List[silo.AuditEntry]{}, CatalogError(err, "list audit entries")
	}
	return collectPage(items, limit, func(e silo.AuditEntry) string { return strconv.FormatInt(e.ID, 10) }), nil
}
