#!/usr/bin/env bash
# Builds the example capsules for wasm32-unknown-unknown and puts each module beside its
# Capsule.toml. With --check, fails if a committed module differs from what its source
# builds to (CI runs this).
#
# Reproducible: cargo hashes the location of path dependencies into symbol names, so the
# sources are copied to one fixed directory and built there; paths that still differ
# between machines (the cargo home) are remapped; the release profile has one codegen unit
# and no debug info; Cargo.lock pins every dependency. Same rustc version, same bytes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
stage="${ASTRID_CAPSULE_BUILD_DIR:-/tmp/astrid-capsule-build}"
capsules=(hello kv-counter file-tool http-fetch hostile orchestrator llm-offline llm-openai tools-fs tools-shell)

check=false
[[ "${1:-}" == "--check" ]] && check=true

# The main crate (for the shared wire types) and the examples, minus build output.
rm -rf "$stage/repo"
mkdir -p "$stage/repo/capsules-examples" "$stage/target"
cp -R "$root/Cargo.toml" "$root/src" "$root/benches" "$root/tests" "$stage/repo/"
cp -R "$here/.cargo" "$stage/repo/capsules-examples/"
for entry in "$here"/*; do
    name="$(basename "$entry")"
    [[ "$name" == target ]] || cp -R "$entry" "$stage/repo/capsules-examples/"
done

export CARGO_TARGET_DIR="$stage/target"
# Given as config, not RUSTFLAGS (which would replace them): cargo joins these to the flags
# of capsules-examples/.cargo/config.toml (the capsules' stack size).
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
remaps="[\"--remap-path-prefix=$stage/repo=/astrid\", \"--remap-path-prefix=$stage/target=/target\", \"--remap-path-prefix=$cargo_home=/cargo\"]"
(cd "$stage/repo/capsules-examples" &&
    cargo build --release --locked --target wasm32-unknown-unknown --config "target.wasm32-unknown-unknown.rustflags=$remaps")
# A lock file cargo had to update is a source change too.
cmp -s "$stage/repo/capsules-examples/Cargo.lock" "$here/Cargo.lock" || { echo "Cargo.lock is out of date" >&2; exit 1; }

status=0
for capsule in "${capsules[@]}"; do
    built="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/${capsule//-/_}.wasm"
    committed="$here/$capsule/$capsule.wasm"
    if $check; then
        if cmp -s "$built" "$committed"; then
            echo "ok: $capsule/$capsule.wasm matches its source"
        else
            echo "MISMATCH: $capsule/$capsule.wasm is not what $capsule/src builds to; run capsules-examples/build.sh" >&2
            status=1
        fi
    else
        cp "$built" "$committed"
        echo "built $capsule/$capsule.wasm ($(wc -c <"$committed") bytes)"
    fi
done
exit $status
