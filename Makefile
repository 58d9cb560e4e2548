# actix-endless: the two commands a newcomer needs are `make run` and `make test`.
CARGO ?= cargo
# Where the load generator comes from when it is missing (Debian's package).
WRK ?= wrk

.PHONY: run test unit integration lint fmt doc bench build clean

## Run the demo server on 127.0.0.1:8080; `kill -HUP $$(cat hello.pid)` upgrades it.
run:
	$(CARGO) run --example hello -- --bind 127.0.0.1:8080 --pid-file hello.pid

## Every test: lints, docs, unit tests, then the end-to-end tests with real processes.
test: lint doc unit integration

build:
	$(CARGO) build --workspace --all-targets

unit:
	$(CARGO) test -p actix-endless --all-targets --all-features
	$(CARGO) test -p actix-endless --doc --all-features

integration:
	@# The socket-activation test runs against systemd's real peer when it can be installed
	@# (it says SKIP otherwise); hand-passed descriptors are tested either way.
	@command -v systemd-socket-activate >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq systemd >/dev/null 2>&1; } || echo "systemd-socket-activate unavailable: its test will skip"
	@# Likewise the peer tests: Debian's nginx in front of a Unix socket, and supervisord.
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null 2>&1; } || echo "nginx unavailable: its test will skip"
	@command -v supervisord >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq supervisor >/dev/null 2>&1; } || echo "supervisord unavailable: its test will skip"
	@command -v systemfd >/dev/null 2>&1 || $(CARGO) install systemfd --locked --quiet || echo "systemfd unavailable: its test will skip"
	$(CARGO) build --examples -p actix-endless --all-features
	$(CARGO) test -p integration -- --test-threads=2

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

fmt:
	$(CARGO) fmt --all

doc:
	RUSTDOCFLAGS=-Dwarnings $(CARGO) doc --no-deps -p actix-endless --all-features

## Restart-under-load benchmark (release build, wrk); prints one table.
bench:
	@command -v $(WRK) >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	@# The nginx peer rows (binary upgrade): Debian's nginx; without it they show ERROR.
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null 2>&1; } || echo "nginx unavailable: its peer rows will fail"
	$(CARGO) build --release --examples -p actix-endless
	$(CARGO) build --release -p integration --bins
	$(CARGO) run --release -q -p integration --bin restart_bench -- $(BENCH_ARGS)

clean:
	$(CARGO) clean
