# Guest scenario: the courier binary runs in the guest, and the host's OVN NB answers over TCP
# at $VM_NB_REMOTE (tcp:10.0.2.2:6641 = the host's 127.0.0.1:6641 through QEMU user networking):
# an OVSDB JSON-RPC list_dbs must name OVN_Northbound.
set -euo pipefail
courier --version
addr=${VM_NB_REMOTE#tcp:}
host=${addr%:*} port=${addr##*:}
req='{"id":1,"method":"list_dbs","params":[]}'
# busybox nc: hold stdin open (sleep) so the reply can arrive before the connection closes.
reply=$( { printf '%s' "$req"; sleep 1; } | timeout 10 nc "$host" "$port" | head -c 4096 || true)
echo "list_dbs at $VM_NB_REMOTE: $reply"
case $reply in *'"OVN_Northbound"'*) echo "NB answers" ;; *) echo "no NB answer" >&2; exit 1 ;; esac
