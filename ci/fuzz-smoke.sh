#!/usr/bin/env bash
# Fuzzing smoke test: builds every cargo-fuzz target (`cargo +nightly fuzz build`), runs each for
# SECONDS (default 20) on its seed corpus, then runs `kvmconf fuzz` briefly on every target.
#
# A libFuzzer run continues past findings (-fork=1 -ignore_crashes=1); findings are listed (crash
# inputs in fuzz/artifacts/<target>/, case files in artifacts/cases/) but only a build failure,
# a harness panic or harness error, or a finding file that a known deviation explains (replayed
# with `kvmconf repro` at the end) makes this script fail: new differences between KVM and the
# reference are findings to triage, not CI breakage. It also fails when the KVM-side signal does
# not show up as libFuzzer coverage (the `signal check`, below the build). Without a nightly toolchain the cargo-fuzz part
# is skipped with the reason; without /dev/kvm only case_parser runs.
#
# Usage: ci/fuzz-smoke.sh [SECONDS]
# KVMCONF_FUZZ_BUILD_FLAGS: extra `cargo fuzz build/run` flags (e.g. "-s none" to build without
# AddressSanitizer: faster to build and run; .ci/run uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
root="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
have_kvm=0
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then have_kvm=1; fi
targets=(case_parser guest_vs_interp guest_emulated_vs_native state_entry ioctl_sequence)
status=0

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "SKIP: cargo-fuzz part: no nightly toolchain (rustup toolchain install nightly)"
else
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
  fi
  read -r -a fflags <<<"${KVMCONF_FUZZ_BUILD_FLAGS:-}"
  (cd fuzz && CARGO_TARGET_DIR="$root/fuzz/target" cargo +nightly fuzz build ${fflags[@]+"${fflags[@]}"})
  ci/fuzz-seed-corpus.sh 16 >/dev/null
  export KVMCONF_FUZZ_CASES="$root/artifacts/cases"
  if [ "$have_kvm" = 1 ]; then
    # The KVM-side signal must become libFuzzer coverage: the same inputs (hand-written cases with
    # many different exits, all agreeing with the interpreter so nothing crashes) must give more
    # edges (cov:) and features (ft:) with the signal fed than with it off (KVMCONF_FUZZ_SIGNAL=off).
    # If the 1024 arms of fuzz/src/signal.rs were merged by the optimiser, cov would not move.
    sigdir="$(mktemp -d)"
    cp cases/corpus/seed_hello.toml cases/corpus/exceptions/*.toml cases/corpus/io/*.toml \
      cases/corpus/div/*.toml "$sigdir/"
    bin="$root/fuzz/target/x86_64-unknown-linux-gnu/release/guest_vs_interp"
    inited() { KVMCONF_FUZZ_SIGNAL="$1" "$bin" -runs=0 "$sigdir" 2>&1 | grep -a 'INITED' | tail -1; }
    on="$(inited on)"; off="$(inited off)"
    rm -rf "$sigdir"
    num() { echo "$1" | grep -oE " $2: [0-9]+" | grep -oE '[0-9]+'; }
    cov_on="$(num "$on" cov)"; cov_off="$(num "$off" cov)"; ft_on="$(num "$on" ft)"; ft_off="$(num "$off" ft)"
    if [ -z "$cov_on" ] || [ -z "$cov_off" ]; then
      echo "signal check: inconclusive: no INITED line (an input crashed: a finding on this host?)"
      echo "  on:  ${on:-none}"; echo "  off: ${off:-none}"
    elif [ "$(( cov_on - cov_off ))" -ge 5 ] && [ "$ft_on" -gt "$ft_off" ]; then
      echo "signal check: KVM-side signal is coverage: cov $cov_off -> $cov_on, ft $ft_off -> $ft_on (off -> on)"
    else
      echo "signal check FAILED: the KVM-side signal adds no coverage: cov $cov_off -> $cov_on, ft $ft_off -> $ft_on"
      status=1
    fi
  fi
  for t in "${targets[@]}"; do
    if [ "$t" != case_parser ] && [ "$have_kvm" = 0 ]; then
      echo "SKIP: $t: requirement not met: /dev/kvm unavailable"
      continue
    fi
    log="$(mktemp)"
    set +e
    (cd fuzz && CARGO_TARGET_DIR="$root/fuzz/target" cargo +nightly fuzz run ${fflags[@]+"${fflags[@]}"} "$t" "corpus/$t" -- \
      -max_total_time="$secs" -dict=x86.dict -fork=1 -ignore_crashes=1 -ignore_timeouts=1 \
      -ignore_ooms=1 -rss_limit_mb=4096 -timeout=10) >"$log" 2>&1
    rc=$?
    set -e
    execs="$(grep -aoE 'stat::number_of_executed_units: [0-9]+' "$log" | tail -1 | awk '{print $2}' || true)"
    [ -n "$execs" ] || execs="$(grep -aoE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)"
    crashes="$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)"
    echo "cargo-fuzz $t: exit $rc, ~${execs:-0} execs in ${secs}s, crash inputs in fuzz/artifacts/$t: $crashes"
    # In fork mode each child logs to fuzz-<n>.log; findings also leave case files.
    cat fuzz/fuzz-*.log "$log" 2>/dev/null | grep -a 'kvmconf finding' | sed 's/^/  /' | sort -u | head -5 || true
    rm -f fuzz/fuzz-*.log
    if grep -aq 'harness error' "$log"; then
      echo "  harness error:"; grep -a 'harness error' "$log" | head -3 | sed 's/^/    /'
      status=1
    fi
    if [ "$rc" != 0 ] && ! grep -aq 'kvmconf finding\|INFO: exiting\|Done [0-9]* runs\|fuzz: *exiting' "$log"; then
      echo "  unexpected libFuzzer failure:"; tail -20 "$log" | sed 's/^/    /'
      status=1
    fi
    rm -f "$log"
  done
fi

cargo build -q --release -p kvmconf
# Every finding file the cargo-fuzz targets wrote is replayed under its oracle: a known deviation
# among them means a target crashed on what the oracle should have recognised (it fails the
# smoke); any other is a finding to triage, listed.
if [ -n "${KVMCONF_FUZZ_CASES:-}" ] && [ -d "$KVMCONF_FUZZ_CASES" ]; then
  for f in "$KVMCONF_FUZZ_CASES"/*.toml; do
    [ -e "$f" ] || continue
    r="$("$CARGO_TARGET_DIR/release/kvmconf" repro "$f" 2>/dev/null | grep -a '^RESULT' || true)"
    case "$r" in
      *"known deviation"*) echo "cargo-fuzz crashed on a known deviation: $f: $r"; status=1 ;;
      *) echo "cargo-fuzz finding to triage: $f: ${r:-no RESULT line}" ;;
    esac
  done
fi
for t in case_parser guest_vs_interp guest_emulated_vs_native state_entry ioctl_sequence; do
  if [ "$t" != case_parser ] && [ "$have_kvm" = 0 ]; then
    echo "SKIP: kvmconf fuzz --target $t: requirement not met: /dev/kvm unavailable"
    continue
  fi
  set +e
  out="$("$CARGO_TARGET_DIR/release/kvmconf" fuzz --target "$t" --duration "$(( secs / 2 > 2 ? secs / 2 : 2 ))" \
    --jobs 2 --seed 1 --stats-every 0 --artifacts "$root/artifacts" 2>/dev/null)"
  set -e
  echo "$out" | grep -E '^(fuzz|resources|error)' | sed "s/^/kvmconf fuzz: /" || true
  if ! echo "$out" | grep -q 'panics 0; harness errors 0'; then
    echo "  harness panics or errors in kvmconf fuzz --target $t"
    status=1
  fi
done
exit "$status"
