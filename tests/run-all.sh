#!/usr/bin/env bash
# Runs every test of Skein: the README's single test command.
#
# 1. Creates the Python venv for the OpenTelemetry SDK test (tests/.venv, or $SKEIN_TEST_VENV)
#    if it is missing or tests/python/requirements.txt changed since it was made.
# 2. Builds, in one cargo invocation, the collector binary the end-to-end tests run and every
#    test target. Selecting bins and tests together makes cargo resolve features exactly as
#    `cargo test --workspace` does; `cargo build -p skein-collector` alone would resolve
#    some shared dependencies (syn, tower, hyper-util, getrandom, ...) with other features
#    and the test run would compile much of the graph a second time.
# 3. Runs `cargo test --workspace`: every unit test and the end-to-end test binary.
#
# Extra arguments go to `cargo test` (e.g. `tests/run-all.sh -- python_sdk`). Works from any
# directory and is safe to run again.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv="${SKEIN_TEST_VENV:-$root/tests/.venv}"
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
requirements="$root/tests/python/requirements.txt"
stamp="$venv/.skein-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    echo "run-all: setting up the Python venv in $venv"
    python3 -m venv --clear "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$requirements"
    echo "$want" >"$stamp"
fi

echo "run-all: building skein-collector and the tests"
cargo build --workspace --bins --tests

echo "run-all: running every test"
cargo test --workspace "$@"
