GO        ?= go
FUZZTIME  ?= 50000x
# Backend for `make run` instead of throwaway clusters, e.g. BACKEND=postgres://me:pw@db:5432/app
BACKEND   ?=

.PHONY: build run test vet unit fuzz clean

build:
	$(GO) build -o bin/asyncgate ./cmd/asyncgate
	$(GO) build -o bin/asyncgate-dev ./internal/cmd/asyncgate-dev

run: build
	./bin/asyncgate-dev $(if $(BACKEND),-backend '$(BACKEND)') $(ARGS)

test: vet unit fuzz deploy-check

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 15m ./...
	ASYNCGATE_TEST_LOOP_DRIVER=goroutine $(GO) test -race -count=1 -timeout 10m ./gateway
	ASYNCGATE_TEST_POOL_MODE=transaction $(GO) test -race -count=1 -timeout 10m ./gateway

# A short run of every fuzz target, counted in executions: a duration races Go 1.26's fuzzing
# coordinator at its deadline (go.dev/issue/75804) and fails with no crasher. `make fuzz
# FUZZTIME=10m` for a real session.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecoder$$' -fuzztime $(FUZZTIME) ./wire
	$(GO) test -run '^$$' -fuzz '^FuzzParseStartup$$' -fuzztime $(FUZZTIME) ./wire
	$(GO) test -run '^$$' -fuzz '^FuzzExchangeNext$$' -fuzztime $(FUZZTIME) ./gateway/auth
	$(GO) test -run '^$$' -fuzz '^FuzzSCRAMClientFirst$$' -fuzztime $(FUZZTIME) ./gateway/auth
	$(GO) test -run '^$$' -fuzz '^FuzzParseUserlist$$' -fuzztime $(FUZZTIME) ./gateway/auth
	$(GO) test -run '^$$' -fuzz '^FuzzClassify$$' -fuzztime $(FUZZTIME) ./gateway/sqlclass
	$(GO) test -run '^$$' -fuzz '^FuzzSQLText$$' -fuzztime $(FUZZTIME) ./pool/mysql

clean:
	rm -rf bin

# docker-compose.yml validates (`config`) with whichever compose is installed: the v2 plugin
# (docker compose) or Debian's docker-compose; without either it says so and passes.
.PHONY: deploy-check
deploy-check:
	@if docker compose version >/dev/null 2>&1; then docker compose -f docker-compose.yml config -q && echo "docker-compose.yml: valid (docker compose)"; \
	elif command -v docker-compose >/dev/null 2>&1; then docker-compose -f docker-compose.yml config -q && echo "docker-compose.yml: valid (docker-compose)"; \
	else echo "deploy-check: no docker compose or docker-compose installed; docker-compose.yml not validated"; fi

# asyncgate against PgBouncer and direct PostgreSQL on a throwaway cluster (benchmarks/suite);
# writes benchmarks/results/DATE-HOST[-quick].md with JSON and plots. Not part of test or CI:
# `make bench` takes 6–9 minutes, `make bench-quick` about 2. Needs root (installs PgBouncer
# when missing, runs it as the postgres user). BENCH_FLAGS passes flags to the suite, e.g.
# `make bench-quick BENCH_FLAGS='-cases 5 -hedge-delays 2ms,5ms,10ms'` for the hedging case alone
# with fixed hedge delays besides auto.
BENCH_FLAGS ?=
.PHONY: bench bench-quick
bench bench-quick:
	$(GO) build -o bin/asyncgate ./cmd/asyncgate
	$(GO) build -o bin/asyncgate-bench ./cmd/asyncgate-bench
	$(GO) build -o bin/pgcluster ./internal/pgtest/cmd/pgcluster
	$(GO) build -o bin/bench-suite ./benchmarks/suite
	./bin/bench-suite $(if $(filter bench-quick,$@),-quick) $(BENCH_FLAGS)
	$(if $(filter bench,$@),benchmarks/scripts/batch-compare.sh $(BATCH_FLAGS))

# Batching (--batch) against asyncgate without it, PgBouncer and direct PostgreSQL with pgbench
# -S, 400 clients, pools of 4 and 20, simple and prepared, twice (about 8 minutes; `make bench`
# runs it after the suite). BATCH_FLAGS passes options, e.g. BATCH_FLAGS='-R 1 -T 10'.
BATCH_FLAGS ?=
.PHONY: bench-batch
bench-batch:
	benchmarks/scripts/batch-compare.sh $(BATCH_FLAGS)
