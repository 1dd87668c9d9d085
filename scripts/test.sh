#!/usr/bin/env bash
# The project's test command: every test target, in release mode because the
# simulator tests run hours of virtual AWS time and are slow unoptimised.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Emulator setup goes here (later issues): install and start moto
# (`moto_server -H 127.0.0.1 -p PORT`), export its endpoint for the
# end-to-end tests, and stop it on exit with a trap.

cargo test --release --all-targets
