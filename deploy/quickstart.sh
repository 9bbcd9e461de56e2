#!/bin/bash
# deploy/quickstart.sh: try spice-broker on one Debian 12 machine in a minute.
# Installs the build and demo dependencies, builds the broker, starts a demo
# QEMU guest with SPICE on 127.0.0.1, starts spice-broker on its embedded
# store (no etcd), registers a demo token and prints how to connect. Ctrl-C
# stops everything it started (by PID) and removes its state directory.
#
#   deploy/quickstart.sh [--port 5999] [--token demo-token] [--no-install]
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=5999
TOKEN=demo-token
INSTALL=1
while [ $# -gt 0 ]; do
  case $1 in
    --port) PORT=$2; shift 2 ;;
    --token) TOKEN=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ "$INSTALL" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "quickstart: run as root to install packages (or pass --no-install)" >&2; exit 1
  fi
  echo "== installing packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends gcc meson ninja-build pkg-config \
    libevent-dev libssl-dev libspice-protocol-dev libcmocka-dev libjansson-dev \
    libprotobuf-c-dev protobuf-c-compiler libzstd-dev libcurl4-openssl-dev libsystemd-dev \
    spice-html5 qemu-system-x86 nasm >/dev/null
fi

echo "== building"
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null

STATE=$(mktemp -d /tmp/spice-broker-quickstart.XXXXXX)
QEMU_PID= BROKER_PID=
cleanup() {
  trap - EXIT INT TERM
  echo; echo "== stopping"
  for pid in $BROKER_PID $QEMU_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $BROKER_PID $QEMU_PID; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$STATE"
}
trap cleanup EXIT INT TERM

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SPICE_PORT=$(free_port)
WEB_PORT=${WEB_PORT:-6082}

echo "== starting a demo QEMU guest (SPICE on 127.0.0.1:$SPICE_PORT)"
GUEST=()
if [ -f build/tests/guest/guest.img ]; then
  GUEST=(-drive "file=build/tests/guest/guest.img,format=raw,if=floppy,readonly=on")
fi
qemu-system-x86_64 -machine pc,accel=tcg -m 64 -nodefaults -vga qxl -display none \
  -device usb-ehci -device usb-tablet \
  -spice "port=$SPICE_PORT,addr=127.0.0.1,seamless-migration=on,disable-ticketing=on" \
  "${GUEST[@]}" >"$STATE/qemu.log" 2>&1 &
QEMU_PID=$!

echo "== starting spice-broker on 127.0.0.1:$PORT (embedded store in $STATE/store)"
build/broker/spice-broker --listen "127.0.0.1:$PORT" --admin "unix:$STATE/admin.sock" \
  --web-listen "127.0.0.1:$WEB_PORT" \
  --store "embedded:$STATE/store" --log-level info 2>"$STATE/broker.log" &
BROKER_PID=$!
for _ in $(seq 50); do [ -S "$STATE/admin.sock" ] && break; sleep 0.1; done
if ! kill -0 "$BROKER_PID" 2>/dev/null; then cat "$STATE/broker.log" >&2; exit 1; fi
build/broker/spice-brokerctl --admin "unix:$STATE/admin.sock" token add "$TOKEN" \
  --host 127.0.0.1 --port "$SPICE_PORT"

cat <<MSG

spice-broker is running. Connect with the token as the SPICE password:

    remote-viewer spice://127.0.0.1:$PORT        (password: $TOKEN)
    remote-viewer "spice://127.0.0.1:$PORT?password=$TOKEN"

or in a browser (spice-html5, as Nova's console link):

    http://127.0.0.1:$WEB_PORT/spice_auto.html?token=$TOKEN

Look at it:
    build/broker/spice-brokerctl --admin unix:$STATE/admin.sock session list
    tail -f $STATE/broker.log

Press Ctrl-C to stop the broker and the guest.
MSG
wait "$BROKER_PID" || true
