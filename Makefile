# make test: everything a fresh machine needs, then vet, staticcheck and the race-enabled tests.
# make test-long: the conformance suites' fault properties with 100 connection cuts each.
# make bench: throughput and allocation figures against the raw clients.

GO ?= go
TEST_FLAGS ?= -race -count=1 -timeout 9m
# staticcheck, pinned, run through the module proxy (no install step).
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: test test-long services vet bench fmt

test: services vet
	@echo "== go test $(TEST_FLAGS) ./... (every package; the slow ones are the conformance suites against real brokers)"
	$(GO) test $(TEST_FLAGS) ./...

test-long: services
	@echo "== conformance fault properties, long mode (100 cuts each)"
	QUEUEKIT_CONFORMANCE_LONG=1 $(GO) test -race -count=1 -timeout 60m -run 'TestConformance' ./adapters/...

services:
	@echo "== services: starting what the tests need (scripts/services.sh)"
	@bash scripts/services.sh

vet:
	@echo "== gofmt"
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	@echo "== go vet ./... (compiles every package: the first run on a fresh machine downloads and builds the SDKs)"
	$(GO) vet ./...
	@echo "== staticcheck ./..."
	$(GO) run $(STATICCHECK) ./...

# Benchmarks named Benchmark<Thing>/{raw,queuekit,watermill} that report msgs/s
# are paired by internal/benchtable, which prints the ratios measured in this run.
# -p 1: one package at a time, so that no two benchmarks share the two cores;
# each figure is the median of BENCH_COUNT runs. The runs are rounds of the
# whole selection (go test -count 1, BENCH_COUNT times), not -count: with
# -count every raw run comes before every queuekit run, so whatever else
# slowed the machine for a minute fell on one side of a ratio; in rounds
# the two sides alternate. Five rounds (about 25 minutes on 2 cores): on shared
# VMs single rounds of a row differ by up to 2x (SQS, whose Node.js emulator
# takes most of the CPU, by 0.78-1.14 in one run of three), and the median of
# three still moved a row across 0.9 from run to run.
BENCH ?= .
BENCH_PKGS ?= ./...
BENCH_COUNT ?= 5
# The date, the machine's cores and its load before and after go into
# bench.out with the figures, for the README's table.
bench: services
	@{ echo "bench: started $$(date -u '+%Y-%m-%d %H:%M UTC'), $$(nproc) cores, load $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	  for round in $$(seq $(BENCH_COUNT)); do \
	    $(GO) test -p 1 -run '^$$' -bench '$(BENCH)' -benchmem -count 1 $(BENCH_PKGS) || exit 1; \
	  done; \
	  echo "bench: ended $$(date -u '+%Y-%m-%d %H:%M UTC'), load $$(cut -d' ' -f1-3 /proc/loadavg)"; } | tee bench.out | $(GO) run ./internal/benchtable

fmt:
	gofmt -w $$(git ls-files '*.go')
