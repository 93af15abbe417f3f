# recsys: the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /bin/bash
GO ?= go
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
VENV_LATEST := .venv-latest
VPY_LATEST := $(VENV_LATEST)/bin/python
BIN := bin/recsys
# VCS stamping (the revision in recsys_build_info) even where GOFLAGS turns it off;
# BUILDVCS=false builds outside a git checkout that go cannot read.
BUILDVCS ?= auto
GENERATED := recsys/v1/recsys.pb.go recsys/v1/recsys_grpc.pb.go recsys/v1/recsys.pb.gw.go recsys/v1/openapi.json

.PHONY: all build run serve-sample test test-go test-py chromium test-client-latest venv-latest notebooks test-kafka kafka-jars vet proto proto-check bench bench-flight bench-kafka bench-restart soak fuzz fuzz-short venv clean

all: build

build:
	$(GO) build -buildvcs=$(BUILDVCS) -o $(BIN) ./cmd/recsys

## run: build and serve on embedded defaults (./data) with the synthetic demo stream.
run: build
	$(BIN) serve --demo

## serve-sample: serve the Taobao users sample (sorted by time on the way in, event clock) from ./data-sample, for the notebooks.
SAMPLE ?= ../shared/data/taobao/UserBehavior-users-84k.csv.gz
serve-sample: build
	$(BIN) serve --data.dir ./data-sample --load $(SAMPLE)

## venv: the Python environment of the tests and of `make proto` (pinned; with the client, editable).
venv: $(VENV)/.stamp
$(VENV)/.stamp: tests/requirements.txt clients/python/pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

## venv-latest: a second environment with the newest pandas and pyarrow, for the client's tests.
venv-latest: $(VENV_LATEST)/.stamp
$(VENV_LATEST)/.stamp: tests/requirements-latest.txt clients/python/pyproject.toml
	$(PY) -m venv $(VENV_LATEST)
	$(VPY_LATEST) -m pip install --quiet --disable-pip-version-check -r tests/requirements-latest.txt
	touch $@

## proto: regenerate the Go, gateway and OpenAPI code from proto/ (pinned tools).
proto: venv
	PYTHON=$(VPY) proto/gen.sh

## proto-check: fail when regenerating would change the committed code.
proto-check: venv
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	OUT=$$tmp PYTHON=$(VPY) proto/gen.sh && \
	for f in $(GENERATED); do \
	  diff -u proto/$$f $$tmp/$$f >/dev/null || { echo "proto: proto/$$f is stale; run make proto"; diff -u proto/$$f $$tmp/$$f | head -20; exit 1; }; \
	done && echo "proto: generated code is up to date"

vet:
	$(GO) vet ./...
	@fmt=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.')); [ -z "$$fmt" ] || { echo "gofmt needed: $$fmt"; exit 1; }

## test: everything: vet, generated-code check, Go tests with -race, a short fuzz run, Python end-to-end tests
## (and the client's again with the newest pandas and pyarrow), Kafka tests on a real broker.
test: vet proto-check test-go fuzz-short test-py test-client-latest test-kafka

test-go:
	$(GO) test -race -count=1 ./...

## chromium: Debian's chromium for the web console's browser tests (installed with apt-get when missing).
chromium:
	@scripts/chromium.sh >/dev/null

test-py: build venv chromium
	RECSYS_BIN=$(abspath $(BIN)) $(VPY) -m pytest -q tests --ignore-glob='tests/test_kafka*'

## test-client-latest: with the newest pandas and pyarrow, the Python client's tests (tests/test_client.py) and
## the raw pyarrow Flight tests (spines and DoPut tables as pandas and pyarrow make them, every int64 time).
test-client-latest: build venv-latest
	RECSYS_BIN=$(abspath $(BIN)) $(VPY_LATEST) -m pytest -q tests/test_client.py tests/test_exchange.py tests/test_times.py

## kafka-jars: the pinned Apache Kafka jars (Maven Central, cached in ~/.cache/recsys).
kafka-jars:
	scripts/kafka/broker.sh jars >/dev/null

## test-kafka: the end-to-end Kafka tests (a real single-node KRaft broker, the crash test).
test-kafka: build venv kafka-jars
	RECSYS_BIN=$(abspath $(BIN)) $(VPY) -m pytest -q tests/test_kafka.py tests/test_kafka_crash.py

## notebooks: execute the three notebooks headless (nbclient) against a server loaded with the Taobao sample.
notebooks: build venv
	RECSYS_BIN=$(abspath $(BIN)) $(VPY) -m pytest -q tests/test_notebooks.py

## bench: ingest events/s (1 M generated events), features:get and recommendation latency, the prequential
## evaluation on the whole Taobao users sample, Go micro-benchmarks, the Kafka path.
bench: build
	$(BIN) bench --events 1000000
	$(BIN) eval --format taobao ../shared/data/taobao/UserBehavior-users-84k.csv.gz
	$(GO) test -run '^$$' -bench . -benchtime 2s ./featurestore/... ./updater/...
	$(MAKE) bench-kafka
	$(MAKE) bench-restart

## bench-restart: SIGKILL a server holding the state of 1 M events, start it again: seconds to /readyz and to every event applied.
bench-restart: build
	RECSYS_BIN=$(abspath $(BIN)) python3 scripts/bench_restart.py --events 1000000

## bench-kafka: the Kafka update path on a real broker: events/s, freshness p50/p99 at 20 k events/s, lag.
bench-kafka: build kafka-jars
	@dir=$$(mktemp -d) && trap 'scripts/kafka/broker.sh stop $$dir; rm -rf $$dir' EXIT && \
	addr=$$(scripts/kafka/broker.sh start $$dir) && \
	$(BIN) kafka bench --kafka.brokers $$addr

## bench-flight: DoGet (against its ceiling: the same batches from a trivial Go Flight server) and point-in-time-join throughput into pyarrow (1 M rows).
bench-flight: build venv
	RECSYS_BIN=$(abspath $(BIN)) $(VPY) tests/bench_flight.py

## soak: 10 M events over 30 simulated days with a 7-day TTL; bytes on disk, RSS, heap and the day's events/s per day.
soak: build
	$(BIN) bench --soak

# Every decoder of outside input, as PACKAGE:TARGET.
FUZZ_TARGETS := ./updater:FuzzDecodeJSONEvent ./updater:FuzzDecodeTaobaoCSV ./updater:FuzzDecodeIngestRequest \
	./updater:FuzzProtoEvent ./featurestore:FuzzParseDefinitions ./featurestore:FuzzUserRecordDecode \
	./featurestore:FuzzItemRecordDecode ./featurestore/models:FuzzModelRecordDecode ./serving:FuzzFlightQuery \
	./updater/kafka:FuzzKafkaRecord

## fuzz-short: a few seconds of fuzzing per target (part of make test).
fuzz-short:
	GO=$(GO) scripts/fuzz.sh 3s $(FUZZ_TARGETS)

## fuzz: a longer fuzz run of every decoder of outside input.
fuzz:
	GO=$(GO) scripts/fuzz.sh 60s $(FUZZ_TARGETS)

clean:
	rm -rf bin .bin
