#!/usr/bin/env bash
# Fails when a stopped cluster left anything behind: a process naming its
# state folder, a network namespace or link with its prefix, a route into
# it, a mount under its state folder, or an iptables rule on the host.
#
#   check-clean.sh STATE_DIR PREFIX
set -uo pipefail
dir=$1 prefix=$2
left=()
pgrep -f -- "$dir/" >/dev/null && left+=("processes: $(pgrep -fa -- "$dir/" | head -3)")
ip netns list 2>/dev/null | grep -q "^$prefix-" && left+=("network namespaces: $(ip netns list | grep "^$prefix-" | head -3)")
ip link show "$prefix-host" >/dev/null 2>&1 && left+=("link $prefix-host")
ip route | grep -q "$prefix-host" && left+=("routes via $prefix-host")
grep -q -- "$dir" /proc/mounts && left+=("mounts under $dir")
[ -e "$dir" ] && left+=("state folder $dir")
if command -v iptables-save >/dev/null && iptables-save 2>/dev/null | grep -qiE 'KUBE-|mesh'; then
  left+=("iptables rules on the host")
fi
if [ ${#left[@]} -gt 0 ]; then
  printf '[check-clean] left behind: %s\n' "${left[@]}" >&2
  exit 1
fi
echo "[check-clean] nothing left behind"
