#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/fuzz_targets/, what each does: src/fuzzing.rs)
# with libFuzzer through cargo fuzz, each from its checked-in corpus
# (fuzz/corpus/<target>) and the crashes fixed so far
# (fuzz/regressions/<target>). New inputs go to a scratch directory, so the
# checkout is left as it was; a crash stops the run, names the input, and
# says how to keep it as a regression test.
#
#   scripts/fuzz.sh [TARGET...]        every target when none is named
#   FUZZ_SECONDS=20   time per target (the default; `make test` runs this)
#   FUZZ_RUNS=N       N executions per target instead (the long run:
#                     FUZZ_RUNS=10000000, about 40 minutes on one core)
#   FUZZ_WORK=dir     where new inputs and crashes go (default: a temp dir,
#                     removed afterwards unless something crashed)
#
# Built with optimizations and debug assertions (overflow checks), without
# a sanitizer: the crate has no unsafe code of its own, and a sanitizer
# build is several times slower. The build lives in the cache
# ($MESH_CACHE/fuzz-target), so fresh clones rebuild only the mesh crate.
# cargo fuzz needs nightly flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/e2e/scripts/versions.sh"
"$repo/e2e/scripts/tools.sh" cargo-fuzz
export PATH="$MESH_CACHE/cargo-fuzz/bin:$PATH" RUSTC_BOOTSTRAP=1
flags=(-s none -O -a --target-dir "$MESH_CACHE/fuzz-target")

cd "$repo/fuzz"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
cargo fuzz build "${flags[@]}"
bin="$MESH_CACHE/fuzz-target/$(rustc -vV | awk '/^host:/ { print $2 }')/release"

work=${FUZZ_WORK:-$(mktemp -d /tmp/mesh-fuzz.XXXXXX)}
limit=(-max_total_time="${FUZZ_SECONDS:-20}")
[ -z "${FUZZ_RUNS:-}" ] || limit=(-runs="$FUZZ_RUNS")
printf '%-18s %12s %10s %8s\n' target executions "exec/s" "rss MB"
for target in "${targets[@]}"; do
  mkdir -p "$work/$target" "$work/crashes/$target"
  seeds=(corpus/"$target")
  [ -d regressions/"$target" ] && seeds+=(regressions/"$target")
  log="$work/$target.log"
  # -timeout: an input that takes 10 s is a hang. -rss_limit_mb: a leak.
  # The binary built above, run directly: `cargo fuzz run` would build
  # again, from whatever the sources are by then.
  if ! "$bin/$target" "$work/$target" "${seeds[@]}" \
      "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$work/crashes/$target/" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target failed; the input is in $work/crashes/$target/." >&2
    echo "fuzz: fix it, then keep it as a regression test: cp $work/crashes/$target/* $repo/fuzz/regressions/$target/" >&2
    exit 1
  fi
  stat() { awk -v k="stat::$1:" '$1 == k { print $2 }' "$log"; }
  printf '%-18s %12s %10s %8s\n' "$target" "$(stat number_of_executed_units)" \
    "$(stat average_exec_per_sec)" "$(stat peak_rss_mb)"
done
[ -n "${FUZZ_WORK:-}" ] || rm -rf "$work"
