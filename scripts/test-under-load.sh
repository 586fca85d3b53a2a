#!/usr/bin/env bash
# Runs the README's test command while the machine is kept busy: stress-ng (Debian's, installed
# if missing) keeps every core and some memory traffic going, so tests that only pass on a
# quiet machine (a timing assumption, a race with background work) fail here instead of in CI.
# Usage: scripts/test-under-load.sh [ROUNDS] (default 1; each round is the whole suite)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-1}"

if ! command -v stress-ng >/dev/null; then
    sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    echo "installing stress-ng" >&2
    $sudo_if_needed apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -qq stress-ng >/dev/null
fi

scripts/test-deps.sh
# Build first, quietly: the load is for the tests, not the compiler.
cargo test --no-run -q
stress-ng --cpu "$(nproc)" --vm 1 --vm-bytes 256M --timeout 0 --quiet &
load=$!
trap 'kill "$load" 2>/dev/null; wait "$load" 2>/dev/null || true' EXIT
for round in $(seq "$rounds"); do
    echo "== round $round of $rounds, under load ==" >&2
    cargo test
done
