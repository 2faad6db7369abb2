#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS each (default 30) from the committed corpus;
# fails on the first crash (the crashing input is left in fuzz/artifacts/). The stable toolchain
# builds the targets with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd fuzz
export RUSTC_BOOTSTRAP=1
cargo fuzz build --features libfuzzer -O
passed=0
for target in $(cargo fuzz list); do
    echo "fuzzing $target for ${seconds}s"
    # A scratch copy: the run adds what it finds without touching the committed corpus.
    work="$(mktemp -d)"
    cp -r "corpus/$target/." "$work/"
    if ! cargo fuzz run "$target" --features libfuzzer -O "$work" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -3; then
        rm -rf "$work"
        echo "fuzz target $target crashed; see fuzz/artifacts/$target/"
        exit 1
    fi
    rm -rf "$work"
    passed=$((passed + 1))
done
echo "fuzz: $passed passed, 0 failed"
