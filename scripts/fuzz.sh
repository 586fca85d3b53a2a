#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60): socket frames and handshakes, client
# messages and management requests, Capsule.toml, modules in the sandbox, workspace paths.
# Installs what it needs when missing: a nightly toolchain (rustup) and cargo-fuzz (crates.io).
# Corpora grow under fuzz/corpus/<target> (the seeds there are committed); a crash is saved
# under fuzz/artifacts/<target> and ends the run with its path. Not part of `cargo test`.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET…]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(frames messages manifest sandbox paths)

# grep without -q reads all the list: one that leaves early can make rustup fail on SIGPIPE.
rustup toolchain list | grep '^nightly' >/dev/null || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

for target in "${targets[@]}"; do
    echo "== fuzz $target for ${seconds}s ==" >&2
    mkdir -p "fuzz/corpus/$target"
    # A scratch copy of the seeds: what the run adds stays out of the committed corpus.
    work="$(mktemp -d)"
    cp -R "fuzz/corpus/$target/." "$work/"
    cargo +nightly fuzz run "$target" "$work" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 2>&1 \
        | grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written)' || true
    if compgen -G "fuzz/artifacts/$target/*" >/dev/null; then
        echo "fuzz $target: a crash was found: $(ls fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    rm -rf "$work"
done
