#!/usr/bin/env bash
# Run every test of twinlun: installs what the tests need (apt-get), then unit tests,
# integration tests against the real server (libiscsi tools, QEMU's iSCSI driver,
# raw PDUs), libiscsi's conformance suites, and the Linux guest test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

# Imports point down the layers (DESIGN.md); today's exceptions are listed.
scripts/check-layers.sh

# The guest (kernel + initramfs from Debian packages), cached under vm-images/out.
vm-images/build.sh

# The tests' build carries the fault hooks (`fault-injection`); `cargo run --release`
# does not.
cargo build --release --bins --features fault-injection
# tests/fuzz_live.rs sends mutated PDUs to the real server for this many seconds,
# from a new seed each run (named in any failure; TWINLUN_FUZZ_SEED=N replays one).
export TWINLUN_FUZZ_SECS="${TWINLUN_FUZZ_SECS:-60}"
# One test binary at a time keeps the guest and the conformance suite from starving
# each other on small machines; tests inside a binary still run in parallel.
summary="${CARGO_TARGET_DIR:-target}/tmp/whole-suite.txt"
rm -f "$summary"
status=0
cargo test --release --features fault-injection --no-fail-fast -- --test-threads=2 || status=$?
# libiscsi's whole suite, as tests/conformance.rs counted it (skips per test).
if [[ -f "$summary" ]]; then cat "$summary"; else echo "no whole-suite summary ($summary)"; fi
exit "$status"

