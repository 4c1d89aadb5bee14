#!/usr/bin/env bash
# Writes the seed corpora of the cargo-fuzz targets into fuzz/corpus/<target>/ (git-ignored):
# the hand-written case files of cases/corpus/ (TOML and JSON: every deviation reproducer, so the
# smoke runs each through the cargo-fuzz targets) and generated cases (the fixed-seed generator, one
# JSON case a file) for the guest and parser targets, and deterministic byte strings for the
# Arbitrary-driven targets (state_entry, ioctl_sequence).
# Usage: ci/fuzz-seed-corpus.sh [GENERATED_PER_MODE]   (default 64)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-64}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
gen_dir="$(mktemp -d)"
trap 'rm -rf "$gen_dir"' EXIT
cargo run -q -p kvmconf-guests --example gen_diff -- write real16 1 "$n" > "$gen_dir/real16.jsonl"
cargo run -q -p kvmconf-guests --example gen_diff -- write prot32 2 "$n" > "$gen_dir/prot32.jsonl"
cargo run -q -p kvmconf-guests --example gen_diff -- write long64 3 "$n" > "$gen_dir/long64.jsonl"
cargo run -q -p kvmconf-guests --example gen_diff -- write long64 4 "$n" cpl3 > "$gen_dir/long64-cpl3.jsonl"
for t in guest_vs_interp guest_emulated_vs_native case_parser; do
  d="fuzz/corpus/$t"
  mkdir -p "$d"
  find cases/corpus \( -name '*.toml' -o -name '*.json' \) | while read -r f; do
    cp "$f" "$d/seed-$(basename "$(dirname "$f")")-$(basename "$f")"
  done
  for f in "$gen_dir"/*.jsonl; do
    split -l 1 -d -a 4 --additional-suffix=.json "$f" "$d/gen-$(basename "$f" .jsonl)-"
  done
done
# Arbitrary-driven targets: fixed pseudo-random byte strings (same on every run).
python3 - <<'PY'
import os, random
for t, k, size in (("state_entry", 64, 96), ("ioctl_sequence", 64, 384)):
    d = f"fuzz/corpus/{t}"
    os.makedirs(d, exist_ok=True)
    r = random.Random(t)
    for i in range(k):
        with open(f"{d}/seed-{i:03}", "wb") as f:
            f.write(bytes(r.getrandbits(8) for _ in range(size)))
PY
for t in guest_vs_interp guest_emulated_vs_native case_parser state_entry ioctl_sequence; do
  echo "fuzz/corpus/$t: $(ls "fuzz/corpus/$t" | wc -l) inputs"
done
