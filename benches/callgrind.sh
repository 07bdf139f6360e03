#!/usr/bin/env bash
# Instructions pgherd executes per transaction, counted by callgrind.
#
#   cargo build --release && bash benches/callgrind.sh [path/to/pgherd]
#
# With CALLGRIND_OUT=FILE the profile is kept there, for
# `callgrind_annotate --inclusive=yes FILE`. PROTOCOL=extended (or
# prepared) runs pgbench with that -M instead of simple; CLIENTS=N (1, 2, 4
# or 8; default 4) with that many clients, 4,000 transactions in all.
#
# CPU time on a shared 2-core machine moves by ±20% from run to run; an
# instruction count does not (±0.5% here on a quiet machine), so this is
# the number to compare two builds of pgherd with. One part still moves
# with the machine: how often the runtime sleeps and wakes (how many
# transactions share a wake-up) depends on timing, so a busy machine
# changes the total (seen: 6,339 against 6,671 for one build while a
# compile ran). The second figure, instructions spent polling the
# sessions' tasks (the runtime's sleeps left out), moves much less.
# It is not a comparison with pgbouncer: under
# valgrind everything runs ~50x slower, so work done per second (probes,
# timers) weighs more than in real time, and pgbouncer's per-second work
# weighs so much there that its count says nothing about its real cost.
#
# What it does: starts `pgherd demo` (a local primary and two standbys),
# loads pgbench's tables, runs a second pgherd (transaction mode, pool size
# 20, probes every 30 s) under callgrind with instrumentation off, warms
# it up with 1,200 transactions, then counts the user-space instructions of
# `pgbench -S -c 4 -t 1000` (4,000 transactions) and prints them per
# transaction. Needs valgrind and the PostgreSQL binaries.
set -euo pipefail

source "$(dirname "$0")/demo-cluster.sh"
pgherd=${1:-$here/target/release/pgherd}
demo_cluster_start "$pgherd" 'probe_interval = 30\n'

valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    --collect-atstart=yes --instr-atstart=no \
    "$pgherd" run -c "$work/pgherd.toml" >"$work/valgrind.log" 2>&1 &
measured_pid=$!
cleanup_pids+=("$measured_pid")
wait_listening "$port"
sleep 2
clients=${CLIENTS:-4}
case $clients in 1 | 2 | 4 | 8) ;; *) echo "CLIENTS must be 1, 2, 4 or 8" >&2; exit 2 ;; esac
pgbench() { "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U demo -S -M "${PROTOCOL:-simple}" -c "$clients" -n "$@" demo; }
pgbench -t $((1200 / clients)) >/dev/null 2>&1
callgrind_control -i on "$measured_pid" >/dev/null
pgbench -t $((4000 / clients)) 2>&1 | grep -E "processed|failed"
callgrind_control -d "$measured_pid" >/dev/null
callgrind_control -i off "$measured_pid" >/dev/null
[ -n "${CALLGRIND_OUT:-}" ] && cp "$work/cg.out.1" "$CALLGRIND_OUT"
total=$(awk '/^summary:/ {print $2; exit}' "$work/cg.out.1")
echo "pgherd user-space instructions: $total for 4000 transactions, $((total / 4000)) per transaction"
tasks=$(callgrind_annotate --inclusive=yes "$work/cg.out.1" 2>/dev/null \
    | awk '/current_thread::Context::run_task \[/ && !n++ { gsub(",", "", $1); print $1 }')
echo "of which polling tasks (the runtime's sleeps left out): $((tasks / 4000)) per transaction"
