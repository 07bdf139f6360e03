#!/usr/bin/env bash
# Renders pgherd's stats page in a real headless browser against a running
# demo cluster and saves a screenshot. Not part of `cargo test` (it needs
# Debian's chromium: apt-get install -y chromium).
#
#   bash tests/stats-page-screenshot.sh [OUT.png]
#
# It starts `pgherd demo` on a free port, promotes a standby while the
# primary still runs (so the page has a split brain, a fenced node and events
# to show), takes the screenshot, and stops the demo by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-stats-page.png}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 1; }

cargo build --release -q -p pgherd
log=$(mktemp)
./target/release/pgherd demo --port 0 >"$log" 2>/dev/null &
demo=$!
trap 'kill -INT $demo 2>/dev/null; wait $demo 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 100); do grep -q "Press Ctrl-C" "$log" && break; sleep 0.2; done
admin=$(grep -o 'http://127.0.0.1:[0-9]*/metrics' "$log" | head -1 | sed 's|/metrics||')
standby=$(awk '/standby  pg1/ {split($3, a, ":"); print a[2]}' "$log")
port=$(grep -o 'psql -h 127.0.0.1 -p [0-9]*' "$log" | head -1 | awk '{print $NF}')

# Some traffic for the pools table, a drained node and a disabled database
# through the admin console, then a split brain for the events.
PGPASSWORD=demo psql -h 127.0.0.1 -p "$port" -U demo demo -Atc 'SELECT 1' >/dev/null
PGPASSWORD=demo psql -h 127.0.0.1 -p "$port" -U demo pgbouncer -c 'DISABLE demo' >/dev/null
curl -fsS -u demo:demo -X POST "$admin/api/v1/nodes/pg2/drain" >/dev/null
PGPASSWORD=postgres psql -h 127.0.0.1 -p "$standby" -U postgres -Atc 'SELECT pg_promote()' >/dev/null
sleep 2

profile=$(mktemp -d)
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --window-size=1100,900 --hide-scrollbars \
    --screenshot="$(realpath -m "$out")" "$admin/" 2>/dev/null
rm -rf "$profile"
echo "screenshot of $admin/ saved to $out"
