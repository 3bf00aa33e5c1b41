# libcluster_srv: `make demo` runs a local cluster formed from DNS SRV; `make test` runs every check.
# Both install what is missing first (Debian packages; Rust is expected on the machine).

SHELL := /bin/bash
DEBS := elixir erlang-dev erlang-nox bind9 bind9-dnsutils
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(HOME)/.cargo/bin:/usr/sbin:$(PATH)

.PHONY: setup build test demo clean

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

test: setup
	cargo fmt --all -- --check
	cargo clippy --all-targets --all-features -- -D warnings
	cargo test
	mix format --check-formatted
	MIX_ENV=prod mix compile --warnings-as-errors
	MIX_ENV=test mix compile --warnings-as-errors
	mix test

demo: setup
	mix run demo/records.exs

clean:
	mix clean
	rm -rf _build target
