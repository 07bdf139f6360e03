# Sourced by the profiling scripts (callgrind.sh, syscalls.sh): a local
# cluster from `pgherd demo` with pgbench's tables, and a pgherd
# configuration in front of it the way the benchmark runs pgherd
# (transaction mode, pool size 20). Not a script to run on its own.
#
# After `demo_cluster_start`: $work (a temporary directory, removed on
# exit), $bindir (PostgreSQL's programs), $primary_port and
# $work/pgherd.toml for a pgherd listening on $port. Processes the caller
# starts go into the `cleanup_pids` array: stopped (by PID) on exit.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d)
chmod 755 "$work"
demo_pid=""
cleanup_pids=()
demo_cluster_cleanup() {
    for pid in "${cleanup_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null || true
    [ -n "$demo_pid" ] && wait "$demo_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap demo_cluster_cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# demo_cluster_start PGHERD [EXTRA_GENERAL_LINES]
demo_cluster_start() {
    local pgherd=$1 extra=${2:-}
    local demo_port
    demo_port=$(free_port)
    "$pgherd" demo --port "$demo_port" >"$work/demo.log" 2>&1 &
    demo_pid=$!
    for _ in $(seq 1 120); do
        grep -q "pgherd demo is running" "$work/demo.log" && break
        sleep 0.5
    done
    grep -q "pgherd demo is running" "$work/demo.log" || { cat "$work/demo.log"; exit 1; }
    # "  primary  pg0  127.0.0.1:PORT" and the standbys, in node order.
    local nodes
    mapfile -t nodes < <(grep -E '^  (primary|standby) ' "$work/demo.log" | awk '{print $2, $3}')
    export PGPASSWORD=demo
    primary_port=${nodes[0]##*:}
    "$bindir/pgbench" -q -i -s 1 -h 127.0.0.1 -p "$primary_port" -U demo demo >/dev/null 2>&1

    port=$(free_port)
    {
        printf '[pgherd]\nlisten_addr = "127.0.0.1:%s"\nadmin_listen_addr = ""\n' "$port"
        printf 'probe_user = "postgres"\nprobe_password = "postgres"\n%b' "$extra"
        printf 'pool_mode = "transaction"\ndefault_pool_size = 20\n'
        local n name addr
        for n in "${nodes[@]}"; do
            name=${n%% *}
            addr=${n##* }
            printf '\n[[nodes]]\nname = "%s"\nhost = "127.0.0.1"\nport = %s\n' "$name" "${addr##*:}"
        done
        printf '\n[databases]\n"*" = {}\n\n[users]\ndemo = { password = "demo" }\n'
    } >"$work/pgherd.toml"
}

# wait_listening PORT: until something accepts PostgreSQL connections there.
wait_listening() {
    for _ in $(seq 1 120); do
        "$bindir/pg_isready" -q -h 127.0.0.1 -p "$1" && return 0
        sleep 0.5
    done
    echo "nothing answers on port $1" >&2
    exit 1
}
