package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
)

// StartAll starts one cluster per config, concurrently (initdb is the slow
// part, and each runs on its own). It returns the clusters in the order of
// cfgs; when some fail, the slice holds nil for those, the others are
// started (the caller stops them), and the error joins every failure, each
// naming its directory. ctx bounds every start.
func StartAll(ctx context.Context, cfgs ...Config) ([]*Cluster, error) {
	clusters := make([]*Cluster, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i, cfg := range cfgs {
		wg.Go(func() {
			clusters[i], errs[i] = Start(ctx, cfg)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("start the %s cluster: %w", filepath.Base(cfg.Dir), errs[i])
			}
		})
	}
	wg.Wait()
	return clusters, errors.Join(errs...)
}
