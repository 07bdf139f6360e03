#!/usr/bin/env bash
# What the kernel does for pgherd and for pgbouncer per transaction: system
# calls (all, and the four a proxy's loop makes), context switches, CPU
# time and its kernel share, measured by `perf stat` on each proxy's PID.
#
#   cargo build --release && bash benches/syscalls.sh [path/to/pgherd]
#
# CLIENTS=N (default 16), PROTOCOL=simple|extended, SECONDS_EACH (default
# 5) and REPS (default 2; each repetition runs pgherd then pgbouncer, the
# next pgbouncer then pgherd) change the run. Needs perf (linux-perf), the
# PostgreSQL binaries and pgbouncer; run as root (perf's tracepoints, and
# pgbouncer then runs as user postgres as it refuses root).
#
# Why this exists: at 1 and 16 clients pgherd's CPU and latency ratios
# against pgbouncer sit at 1.00 ± 0.03 from run to run. This shows why:
# both make the same system calls per transaction and sleep as often, and
# ~90% of either's CPU time is the kernel's (loopback TCP and waking the
# peer), so user-space work — where the two differ — is a few percent of
# the total. CPU time here is noisy like any; the two counts are not.
#
# The cluster and pgherd's configuration are benches/demo-cluster.sh's;
# pgbouncer gets the same pool (transaction mode, pool size 20). Both run
# in sessions of their own, as in the benchmark.
set -euo pipefail

source "$(dirname "$0")/demo-cluster.sh"
pgherd=${1:-$here/target/release/pgherd}
clients=${CLIENTS:-16}
seconds=${SECONDS_EACH:-5}
reps=${REPS:-2}
pgbouncer=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 2; }
[ -x "$pgbouncer" ] || { echo "needs pgbouncer (apt-get install pgbouncer)" >&2; exit 2; }

demo_cluster_start "$pgherd"
setsid "$pgherd" run -c "$work/pgherd.toml" >"$work/pgherd.log" 2>&1 &
pgherd_pid=$!
cleanup_pids+=("$pgherd_pid")

bouncer_port=$(free_port)
cat >"$work/pgbouncer.ini" <<INI
[databases]
demo = host=127.0.0.1 port=$primary_port dbname=demo
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = md5
auth_file = $work/userlist.txt
logfile = $work/pgbouncer.log
pidfile = $work/pgbouncer.pid
pool_mode = transaction
default_pool_size = 20
max_client_conn = 1000
INI
echo '"demo" "demo"' >"$work/userlist.txt"
chown -R postgres "$work"
# setsid execs runuser, which forks pgbouncer: its PID is in the pidfile.
setsid runuser -u postgres -- "$pgbouncer" -q "$work/pgbouncer.ini" &
wait_listening "$bouncer_port"
wait_listening "$port"
bouncer_pid=$(cat "$work/pgbouncer.pid")
cleanup_pids+=("$bouncer_pid")

pgbench() {
    "$bindir/pgbench" -h 127.0.0.1 -p "$1" -U demo -S -M "${PROTOCOL:-simple}" \
        -c "$clients" -j 2 -n -T "$2" demo 2>&1
}
pgbench "$port" 2 >/dev/null
pgbench "$bouncer_port" 2 >/dev/null

# measure NAME PID PORT: one pgbench run with perf counting on PID.
measure() {
    local name=$1 pid=$2 p=$3 ticks_before ticks_after out
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,task-clock \
        -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto \
        -e syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl \
        -p "$pid" -o "$work/stat.txt" -- sleep $((seconds + 1)) &
    local perf_pid=$!
    sleep 0.2
    # utime and stime (fields 14 and 15), for the kernel's share.
    ticks_before=$(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(pgbench "$p" "$seconds")
    ticks_after=$(awk '{print $14, $15}' "/proc/$pid/stat")
    wait "$perf_pid"
    local tx tps
    tx=$(awk '/actually processed/ {print $6}' <<<"$out")
    tps=$(awk '/^tps/ {printf "%.0f", $3}' <<<"$out")
    awk -F, -v name="$name" -v tx="$tx" -v tps="$tps" \
        -v before="$ticks_before" -v after="$ticks_after" '
        NF > 2 { v[$3] = $1 }
        END {
            split(before, b, " "); split(after, a, " ")
            user = a[1] - b[1]; sys = a[2] - b[2]
            printf "| %s | %d | %.2f | %.2f / %.2f / %.2f / %.2f | %.3f | %.1f | %.0f%% |\n",
                name, tps, v["raw_syscalls:sys_enter"] / tx,
                v["syscalls:sys_enter_recvfrom"] / tx, v["syscalls:sys_enter_sendto"] / tx,
                v["syscalls:sys_enter_epoll_wait"] / tx, v["syscalls:sys_enter_epoll_ctl"] / tx,
                v["context-switches"] / tx, v["task-clock"] * 1000 / tx,
                100 * sys / (user + sys)
        }' "$work/stat.txt"
}

echo "pgbench -S -M ${PROTOCOL:-simple} -c $clients, ${seconds} s per run:"
echo
echo "| proxy | TPS | system calls/tx | of which recv / send / epoll_wait / epoll_ctl | context switches/tx | CPU µs/tx | kernel share |"
echo "|---|---|---|---|---|---|---|"
for rep in $(seq 1 "$reps"); do
    if [ $((rep % 2)) -eq 1 ]; then
        measure pgherd "$pgherd_pid" "$port"
        measure pgbouncer "$bouncer_pid" "$bouncer_port"
    else
        measure pgbouncer "$bouncer_pid" "$bouncer_port"
        measure pgherd "$pgherd_pid" "$port"
    fi
done
