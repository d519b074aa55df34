# Silo's build. `make dev` runs Silo locally; `make test` runs every test
# against real PostgreSQL clusters that the tests start themselves.

GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build test dev lint bench generate clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/silo ./cmd/silo

# Runs as root too: the clusters then run as the postgres system user.
test: build
	@dir=$$(./bin/silo pg-bindir) && echo "PostgreSQL server binaries: $$dir" && \
	SILO_PG_BINDIR=$$dir $(GO) test -race -count=1 -timeout 9m ./...

dev: build
	./bin/silo dev $(DEV_ARGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Go benchmarks (ratios within one run), then provisioning against local
# control planes; docs/benchmarks.md records the figures.
bench: build
	@dir=$$(./bin/silo pg-bindir) && SILO_PG_BINDIR=$$dir $(GO) test -run '^$$' -bench . -benchtime 2s ./...
	./scripts/bench-provision.sh
	./scripts/bench-route.sh
	./scripts/bench-migrate.sh
	./scripts/bench-move.sh

# Regenerates api/api.gen.go from api/openapi.yaml.
generate:
	$(GO) generate ./api

clean:
	rm -rf bin
