# libcluster_srv: `make demo` runs a local cluster formed from DNS SRV; `make test` runs every check;
# `make chaos` soaks the strategy in partial DNS faults and pod churn for CHAOS_SECONDS.
# Both install what is missing first (Debian packages; Rust is expected on the machine).

SHELL := /bin/bash
DEBS := elixir erlang-dev erlang-nox bind9 bind9-dnsutils nftables
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(HOME)/.cargo/bin:/usr/sbin:$(PATH)

.PHONY: setup build test chaos demo bench fuzz fuzz-corpus clean check-no-leftovers

setup:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "==> installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@command -v cargo >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs"; exit 1; }

build: setup
	mix compile

# kubernetes-validate (PyPI) checks the example manifests; it lives in a venv of its own.
VENV := _build/venv
K8S_VALIDATE := $(VENV)/bin/kubernetes-validate
K8S_VERSION := 1.37.0

$(K8S_VALIDATE):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0

test: setup $(K8S_VALIDATE)
	$(K8S_VALIDATE) --strict --quiet -k $(K8S_VERSION) examples/kubernetes/*.yaml
	cargo fmt --all -- --check
	cargo clippy --all-targets --all-features -- -D warnings
	cargo test
	FUZZ_SECONDS=3 cargo test --lib fuzz_for_a_while -- --ignored
	mix format --check-formatted
	MIX_ENV=prod mix compile --warnings-as-errors
	MIX_ENV=dev mix compile --warnings-as-errors
	MIX_ENV=test mix compile --warnings-as-errors
	CLUSTER_SRV_RUN=$(RUN) RUST_BACKTRACE=0 mix test
	CLUSTER_SRV_RUN=$(RUN) CHAOS_SECONDS=60 CHAOS_SEED=$(CHAOS_TEST_SEED) mix test --only chaos
	@$(MAKE) --no-print-directory check-no-leftovers RUN=$(RUN)

# The chaos soak (test/chaos/chaos_test.exs): pods under partial DNS faults, BIND restarts and
# churn for CHAOS_SECONDS of faults, then a quiet phase; it prints its seed first, and
# CHAOS_SEED=<seed> replays a run's schedule. `make test` runs 60 s of it with a fixed seed.
CHAOS_SECONDS ?= 600
CHAOS_SEED ?=
CHAOS_TEST_SEED := 1
# The leftovers are checked whatever the soak found.
chaos: setup
	CLUSTER_SRV_RUN=$(RUN) CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_SEED=$(CHAOS_SEED) mix test --only chaos; \
	status=$$?; $(MAKE) --no-print-directory check-no-leftovers RUN=$(RUN) && exit $$status

# The harness must leave no pod VM, no named, no network namespace and no /etc/netns entry
# behind. Every process a run starts carries its run id in its command line (see
# Watchdog.tmp_dir/1), and every namespace the last 8 characters of it (see Netns.run_tag/0);
# give exiting processes a moment.
# Expanded once: with `?=` every $(RUN) would run `date` again, and the check would look for
# another run's leftovers.
ifndef RUN
RUN := $(shell date +%s%N)
endif
check-no-leftovers:
	@tag=$$(printf '%s' '$(RUN)' | tr 'A-Z' 'a-z' | tr -cd 'a-z0-9' | tail -c 8); \
	left() { pgrep -af '[c]luster_srv_[a-z]*_$(RUN)_'; \
	  ip netns list 2>/dev/null | awk '{print "namespace " $$1}' | grep " csrv-$$tag-"; \
	  ls -d /etc/netns/csrv-$$tag-* 2>/dev/null; }; \
	for i in $$(seq 50); do [ -z "$$(left)" ] && exit 0; sleep 0.1; done; \
	echo "left behind by the tests:"; left; exit 1

demo: setup
	mix run demo/demo.exs

# Measures and reports; it asserts nothing, and CI does not run it. BENCH_QUICK=1 for a short run,
# BENCH_ONLY=<section>,... for some sections only (see bench/README.md).
bench: setup
	@command -v gnuplot >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends gnuplot-nox; }
	mix run bench/bench.exs

# Mutates the hostile corpus for FUZZ_SECONDS (default 60), in release. FUZZ_SEED replays a run.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) cargo test --release --lib fuzz -- --include-ignored --nocapture

# Writes the hostile test server's answers as the fuzzing corpus.
fuzz-corpus: setup
	mix run -e 'ClusterSRV.Harness.HostileDNS.write_corpus!("native/cluster_srv/fuzz/corpus")'

clean:
	mix clean
	rm -rf _build target
