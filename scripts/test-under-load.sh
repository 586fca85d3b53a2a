#!/usr/bin/env bash
# Runs the integration tests while every core is kept busy by a spinning process, to find
# tests that only pass on a quiet machine (timing assumptions, races with background work).
# Usage: scripts/test-under-load.sh [cargo test arguments…]
set -euo pipefail
cd "$(dirname "$0")/.."
spinners=()
for _ in $(seq "$(nproc)"); do
    sh -c 'while :; do :; done' &
    spinners+=("$!")
done
trap 'kill "${spinners[@]}" 2>/dev/null' EXIT
cargo test "$@"
