#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build script: builds kvmconf's cargo-fuzz targets into $OUT with their
# seed corpora (<target>_seed_corpus.zip), the x86 dictionary and libFuzzer options.
cd "$SRC/kvmconf"
targets="guest_vs_interp guest_emulated_vs_native ioctl_sequence state_entry case_parser"
(cd fuzz && cargo fuzz build -O --debug-assertions)
build_dir="fuzz/target/x86_64-unknown-linux-gnu/release"
# Seed corpora: hand-written and generated cases, fixed byte strings for the Arbitrary targets.
CARGO_TARGET_DIR="$SRC/kvmconf/target" ci/fuzz-seed-corpus.sh 64
for t in $targets; do
  cp "$build_dir/$t" "$OUT/"
  (cd "fuzz/corpus/$t" && zip -q -r "$OUT/${t}_seed_corpus.zip" .)
  cp fuzz/x86.dict "$OUT/$t.dict"
  cat > "$OUT/$t.options" <<OPTS
[libfuzzer]
dict = $t.dict
timeout = 10
rss_limit_mb = 4096
OPTS
done
