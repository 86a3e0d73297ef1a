# make test: everything a fresh machine needs, then vet and the race-enabled tests.
# make bench: throughput and allocation figures against the raw clients.

GO ?= go
TEST_FLAGS ?= -race -count=1 -timeout 9m

.PHONY: test services vet bench fmt

test: services vet
	$(GO) test $(TEST_FLAGS) ./...

services:
	@bash scripts/services.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# Benchmarks named Benchmark<Thing>/{raw,queuekit,watermill} that report msgs/s
# are paired by internal/benchtable, which prints the ratios measured in this run.
# -p 1: one package at a time, so that no two benchmarks share the two cores;
# each figure is the median of BENCH_COUNT runs.
BENCH ?= .
BENCH_PKGS ?= ./...
BENCH_COUNT ?= 3
bench: services
	$(GO) test -p 1 -run '^$$' -bench '$(BENCH)' -benchmem -count $(BENCH_COUNT) $(BENCH_PKGS) | tee bench.out | $(GO) run ./internal/benchtable

fmt:
	gofmt -w $$(git ls-files '*.go')
