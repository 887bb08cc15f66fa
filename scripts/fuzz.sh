#!/usr/bin/env bash
# Fuzzes every parser that takes input from outside a process (see
# fuzz/fuzz_targets/), each target for a fixed time, from the seed corpus in
# fuzz/corpus/TARGET, and prints executions and findings per target.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 120 s, every target)
#   scripts/fuzz.sh --smoke                              (what the test suite runs: 3 s each)
#
# A finding (crash, hang over 5 s, more than 512 MiB, a leak) is kept in
# fuzz/artifacts/TARGET/ and makes the command fail. New inputs go to a
# scratch corpus, so the repository's seeds stay as they are.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_apt gcc libc6-dev
need_rust
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz@0.13.2
cd "$ROOT/fuzz"

seconds=120
if [ "${1:-}" = "--smoke" ]; then
    seconds=3
    shift
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

# One stable toolchain: let it take the sanitizer flags cargo-fuzz passes.
export RUSTC_BOOTSTRAP=1
echo "==> building ${#targets[@]} fuzz targets"
cargo fuzz build -O >/dev/null

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
printf '%-22s %12s %10s %s\n' target executions exec/s findings
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "artifacts/$t"
    before=$(find "artifacts/$t" -type f | wc -l)
    log="$scratch/$t.log"
    cargo fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=5 -rss_limit_mb=512 -malloc_limit_mb=512 \
        -print_final_stats=1 >"$log" 2>&1 || true
    runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -1)
    rate=$(grep -Eo 'exec/s: [0-9]+' "$log" | grep -Eo '[0-9]+' | tail -1)
    after=$(find "artifacts/$t" -type f | wc -l)
    found=$((after - before))
    if [ -z "$runs" ] || [ "$found" -gt 0 ]; then
        failed=1
        printf '%-22s %12s %10s %s\n' "$t" "${runs:-?}" "${rate:-?}" "$found (see fuzz/artifacts/$t)"
        tail -30 "$log" >&2
    else
        printf '%-22s %12s %10s %s\n' "$t" "$runs" "${rate:-?}" 0
    fi
done
exit $failed
