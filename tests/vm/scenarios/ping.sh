# Guest scenario: bring the VM port (eth1, MAC $VM_MAC) up with $VM_IP/$VM_PREFIX and ping each
# ARG over it; fails if a ping gets no reply. With VM_AWAIT_ECHO=N, then print
# "__await_echo__" and wait (up to 30 s) until N ICMP echo requests have arrived from outside,
# so the host can ping the guest back while it is still running.
set -euo pipefail
: "${VM_IP:?}" "${VM_PREFIX:?}"
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1  # no ND noise
ip link set eth1 up
ip addr add "$VM_IP/$VM_PREFIX" dev eth1
ip -br link show eth1
ip -br addr show eth1
for target in "$@"; do
  echo "ping $target"
  ping -c "${VM_PING_COUNT:-5}" -i 0.3 -W 2 "$target"
done
if [ -n "${VM_AWAIT_ECHO:-}" ]; then
  # Icmp InEchos from /proc/net/snmp (the header line names the columns).
  in_echos() { awk '/^Icmp:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c["InEchos"] }' /proc/net/snmp; }
  base=$(in_echos)
  echo "__await_echo__"
  for _ in $(seq 300); do
    [ $(( $(in_echos) - base )) -ge "$VM_AWAIT_ECHO" ] && { echo "got $(( $(in_echos) - base )) echo requests"; exit 0; }
    sleep 0.1
  done
  echo "only $(( $(in_echos) - base )) of $VM_AWAIT_ECHO echo requests arrived" >&2
  exit 1
fi
