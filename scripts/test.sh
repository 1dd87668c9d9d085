#!/usr/bin/env bash
# The project's test command: every test target, in release mode because the
# simulator tests run hours of virtual AWS time and are slow unoptimised.
#
# The end-to-end tests (tests/e2e_moto.rs) need the moto AWS emulator: it is
# installed here, once, into the project-local .venv (pinned version). Each
# test starts its own `moto_server -H 127.0.0.1 -p <free port>` and stops it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

MOTO_VERSION=5.2.5
if [[ ! -x .venv/bin/moto_server ]]; then
    echo "== installing moto[server]==${MOTO_VERSION} into .venv"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==${MOTO_VERSION}"
fi

# --no-fail-fast: one failing suite must not hide the others. The output is
# kept to close with one total over every suite.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --all-targets --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "fanout: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
