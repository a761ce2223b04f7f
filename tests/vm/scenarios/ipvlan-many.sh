# Guest scenario: $VM_MANY (default 100) containers attached at once with the ipvlan binding on
# one VM port (eth1: $VM_MAC, $VM_IP/$VM_PREFIX), each an IP-only pair on the VM's port; the
# backend as tests/vm/lib.sh chooses (Neutron when $VM_OS_AUTH_URL is set). Asserts: every
# attach succeeds with its own address and every container then reaches $VM_HOST_IP (no pair was
# lost); every detach, all at once, succeeds. Prints "__attached__ NETNS IP" per container,
# "__attached_all__", "__detached_all__", "__timing__ attach|detach|ping <ms> ms" and "__ok__".
set -euo pipefail
: "${VM_IP:?}" "${VM_PREFIX:?}" "${VM_NET:?}" "${VM_HOST_IP:?}"
N=${VM_MANY:-100}
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip link set lo up
ip link set eth1 up
ip addr add "$VM_IP/$VM_PREFIX" dev eth1
ping -c 2 -W 2 "$VM_HOST_IP" >/dev/null && echo "the VM's own port works"
mkdir -p /var/run/netns /tmp/many
for i in $(seq "$N"); do ip netns add "c$i"; done
. /scenario/lib.sh
courier_daemon ipvlan
# The jobs started since the last wait_all (a bare `wait` would wait for the daemon too).
pids=()
wait_all() { wait "${pids[@]}" || true; pids=(); }  # each job records its own failure

t=$(now_ms)
for i in $(seq "$N"); do
  ( courier attach --netns "/var/run/netns/c$i" --network "$VM_NET" --binding ipvlan --json \
      > "/tmp/many/a$i" 2>&1 || touch "/tmp/many/a$i.failed" ) &
  pids+=($!)
done
wait_all
echo "__timing__ attach $(( $(now_ms) - t )) ms for $N at once"
failed=$(ls /tmp/many | grep -c '\.failed$' || true)
if [ "$failed" -gt 0 ]; then
  echo "UNEXPECTED: $failed of $N attaches failed, e.g.:"
  cat "/tmp/many/$(ls /tmp/many | grep '\.failed$' | head -1 | sed 's/\.failed$//')"
  tail -20 /tmp/courier.log; exit 1
fi
for i in $(seq "$N"); do
  a=$(tr -d ' \n' < "/tmp/many/a$i" | sed -n 's/.*"ips":\["\([0-9.]*\)\/.*/\1/p')
  [ -n "$a" ] || { echo "no address for c$i: $(cat "/tmp/many/a$i")"; exit 1; }
  echo "__attached__ c$i $a"
  echo "$a" >> /tmp/many/ips
done
distinct=$(sort -u /tmp/many/ips | wc -l)
[ "$distinct" = "$N" ] || { echo "UNEXPECTED: $distinct distinct addresses for $N containers"; exit 1; }
echo "__attached_all__"

# Every pair is in effect: each container reaches the peer (all at once, 3 tries each).
t=$(now_ms)
for i in $(seq "$N"); do
  ( for _ in 1 2 3; do
      ip netns exec "c$i" ping -c 1 -W 2 "$VM_HOST_IP" >/dev/null 2>&1 && { touch "/tmp/many/p$i"; break; }
    done ) &
  pids+=($!)
done
wait_all
reached=$(ls /tmp/many | grep -c '^p' || true)
echo "__timing__ ping $(( $(now_ms) - t )) ms"
if [ "$reached" != "$N" ]; then
  echo "UNEXPECTED: only $reached of $N containers reach the peer; not:"
  for i in $(seq "$N"); do [ -e "/tmp/many/p$i" ] || echo -n " c$i"; done; echo
  exit 1
fi
echo "every container reaches the peer"

t=$(now_ms)
for i in $(seq "$N"); do
  ( courier detach --netns "/var/run/netns/c$i" > "/tmp/many/d$i" 2>&1 || touch "/tmp/many/d$i.failed" ) &
  pids+=($!)
done
wait_all
echo "__timing__ detach $(( $(now_ms) - t )) ms for $N at once"
failed=$(ls /tmp/many | grep -c '^d.*\.failed$' || true)
if [ "$failed" -gt 0 ]; then
  echo "UNEXPECTED: $failed of $N detaches failed"; tail -20 /tmp/courier.log; exit 1
fi
left=$(courier --json attachments | grep -c '"ifname"' || true)
[ "$left" = 0 ] || { echo "UNEXPECTED: $left attachments left"; exit 1; }
echo "__detached_all__"
echo "__ok__"
