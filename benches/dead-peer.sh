#!/usr/bin/env bash
# How long Linux keeps a TCP connection whose peer vanished (its interface
# taken down: no FIN, no RST) with pgherd's tcp_* options, idle and with
# data in flight. Values are config/pgherd.toml's scaled down tenfold
# (keepidle 3 s, keepintvl 1 s, keepcnt 3, user timeout 3 s), so a run
# takes seconds. Measures the kernel mechanism pgherd relies on, on a veth
# pair into a network namespace of its own; not pgherd itself.
#
#   sudo bash benches/dead-peer.sh      # needs root (ip netns)
set -euo pipefail
ns=pgherd-deadpeer-$$
cleanup() {
    ip link del "veth-$$" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
ip link add "veth-$$" type veth peer name peer0
ip link set peer0 netns "$ns"
ip addr add 10.222.0.1/24 dev "veth-$$"
ip link set "veth-$$" up
ip netns exec "$ns" ip addr add 10.222.0.2/24 dev peer0

client=$(mktemp)
trap 'rm -f "$client"; cleanup' EXIT
cat >"$client" <<'PY'
import socket, subprocess, sys, time
ns, mode, user_timeout_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 3)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
if user_timeout_ms:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
s.connect(("10.222.0.2", 5555))
subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "peer0", "down"], check=True)
t0 = time.time()
if mode == "in-flight":
    s.send(b"x" * 1000)
try:
    s.recv(10)
    print(f"{mode:9} user_timeout={user_timeout_ms}ms: recv returned after {time.time() - t0:.1f} s")
except OSError as e:
    print(f"{mode:9} user_timeout={user_timeout_ms}ms: dropped after {time.time() - t0:.1f} s ({e.strerror})")
PY
for run in "idle 0" "idle 3000" "in-flight 3000" "in-flight 0"; do
    ip netns exec "$ns" ip link set peer0 up
    sleep 0.3
    ip netns exec "$ns" python3 -c "
import socket, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('10.222.0.2', 5555)); l.listen(1); c, _ = l.accept(); time.sleep(40)" &
    server=$!
    sleep 0.5
    # shellcheck disable=SC2086
    timeout 30 python3 "$client" "$ns" $run || echo "${run}: still connected after 30 s"
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
done
