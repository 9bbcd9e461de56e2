#!/bin/bash
# tests/run.sh: install the test dependencies, build spice-broker twice (a
# normal -Werror build and an ASan+UBSan build), and run every meson test
# suite: unit (cmocka), fuzz (corpus replays), integration (real QEMU and
# spice-gtk through the broker). With clang present, the libFuzzer targets
# also get a short run. .ci/run calls exactly this.
#
#   tests/run.sh            everything
#   SKIP_APT=1 tests/run.sh skip the apt-get step (packages already there)
#   SUITES="unit fuzz" tests/run.sh   only these suites
#   FUZZ_SECONDS=0 tests/run.sh       no libFuzzer runs
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PACKAGES=(gcc clang libclang-rt-14-dev meson ninja-build pkg-config
  libevent-dev libssl-dev libspice-protocol-dev libcmocka-dev libjansson-dev
  libprotobuf-c-dev protobuf-c-compiler libzstd-dev libcurl4-openssl-dev libsystemd-dev
  qemu-system-x86 python3-gi gir1.2-spiceclientglib-2.0 nasm etcd-server
  spice-html5 chromium python3-keystone python3-nova haproxy iproute2)

if [ -z "${SKIP_APT:-}" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing test dependencies"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # etcd-server's postinst would start a system etcd on 2379 where it can
    # (the tests start their own, on free ports): deny service starts during
    # the install with a policy-rc.d, unless the machine has one already.
    # Keystone and Nova come as their Python packages only (no keystone,
    # nova-api, nova-common: those pull systemd, uwsgi and dbconfig-common
    # and ask debconf questions); tests/integration/openstack.py runs them.
    own_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
      chmod 755 /usr/sbin/policy-rc.d
      own_policy=1
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    if [ -n "$own_policy" ]; then
      rm -f /usr/sbin/policy-rc.d
      trap - EXIT
    fi
  else
    echo "== not root: assuming the dependencies are installed (${PACKAGES[*]})"
  fi
fi

SUITES=${SUITES:-unit fuzz integration}
FUZZ_SECONDS=${FUZZ_SECONDS:-4}
suite_args=()
for s in $SUITES; do suite_args+=(--suite "$s"); done

status=0
declare -A summary

run_suites() { # build-dir label [meson test arguments...]
  local dir=$1 label=$2
  shift 2
  echo "== $label: meson test ${suite_args[*]} $*"
  if ! meson test -C "$dir" --print-errorlogs "${suite_args[@]}" "$@"; then
    status=1
  fi
  summary[$label]=$(/usr/bin/python3 - "$dir/meson-logs/testlog.json" <<'PY'
import json, sys
ok = fail = skip = 0
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    if r in ("OK", "EXPECTEDFAIL"): ok += 1
    elif r == "SKIP": skip += 1
    else: fail += 1
print(f"{ok} {fail} {skip}")
PY
)
}

echo "== build: gcc, -Werror"
meson setup build --reconfigure -Dwerror=true >/dev/null 2>&1 || meson setup build -Dwerror=true >/dev/null
ninja -C build
run_suites build gcc

echo "== build: gcc, ASan+UBSan"
meson setup build-asan --reconfigure -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false >/dev/null 2>&1 ||
  meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
ninja -C build-asan
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# The sanitizer pass leaves out the tests in suite 'gcc-only' (no broker code
# the others do not run too: see tests/integration/meson.build), so that the
# whole run stays within CI's 30 minutes on 2 cores.
run_suites build-asan asan --no-suite gcc-only

if [ "$FUZZ_SECONDS" != 0 ] && command -v clang >/dev/null; then
  echo "== build: clang, libFuzzer targets (${FUZZ_SECONDS}s each)"
  CC=clang meson setup build-fuzz --reconfigure -Dfuzzing=true -Db_sanitize=address,undefined -Db_lundef=false >/dev/null 2>&1 ||
    CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
  # only the fuzz targets: the rest of the tree is built and tested twice above
  ninja -C build-fuzz $(ninja -C build-fuzz -t targets all | grep -Eo '^tests/fuzz/fuzz-[a-z]+:' |
                        tr -d :)
  fz_ok=0 fz_fail=0
  for f in build-fuzz/tests/fuzz/fuzz-*; do
    case $f in *-replay|*.p) continue ;; esac
    [ -f "$f" ] && [ -x "$f" ] || continue
    name=$(basename "$f")
    work=$(mktemp -d)
    if "$f" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 "$work" \
         "$ROOT/tests/fuzz/corpus/$name" >"$work.log" 2>&1; then
      fz_ok=$((fz_ok + 1)); echo "fuzz $name: ok ($(grep -c '' "$work.log") log lines)"
    else
      fz_fail=$((fz_fail + 1)); status=1; echo "fuzz $name: FAILED"; tail -40 "$work.log"
    fi
    rm -rf "$work" "$work.log"
  done
  summary[libfuzzer]="$fz_ok $fz_fail 0"
fi

tp=0 tf=0 ts=0
for k in "${!summary[@]}"; do
  read -r p f s <<<"${summary[$k]}"
  echo "$k: $p passed, $f failed, $s skipped"
  tp=$((tp + p)); tf=$((tf + f)); ts=$((ts + s))
done
echo "total: $tp passed, $tf failed, $ts skipped"
exit $status
