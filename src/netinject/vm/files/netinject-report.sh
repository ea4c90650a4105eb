#!/bin/sh
# Prints in-guest facts to the serial console once boot has finished (netinject bench).
systemctl is-system-running --wait >/dev/null 2>&1
{
echo "=== NETINJECT-REPORT BEGIN ==="
echo "--- systemd-analyze"; systemd-analyze 2>&1
echo "--- blame"; systemd-analyze blame 2>&1 | head -n 12
echo "--- ip-addr"; ip -j addr
echo "--- ip-route"; ip -j route
echo "--- ip-link"; ip -j link
echo "--- resolv"; cat /etc/resolv.conf 2>&1
echo "--- hostname"; cat /etc/hostname 2>&1
echo "--- os-release"; cat /etc/os-release 2>&1
echo "--- interfaces-d"; head -n 40 /etc/network/interfaces.d/* 2>&1
echo "--- udev-rules"; cat /etc/udev/rules.d/70-persistent-net.rules 2>&1
echo "--- netinject-log"; cat /var/log/netinject.log 2>&1
echo "--- networking"; systemctl show -p ActiveState -p Result networking.service 2>&1
echo "--- unit-times"; systemctl show -p Id -p InactiveExitTimestampMonotonic   -p ActiveEnterTimestampMonotonic netinject.service systemd-udev-settle.service   ifupdown-pre.service networking.service cloud-init-local.service   glean-early.service glean@eth0.service systemd-networkd.service   NetworkManager.service netinject-announce.service systemd-networkd-wait-online.service   NetworkManager-wait-online.service 2>&1
if grep -q netinject.timeline /proc/cmdline; then
  echo "--- critical-chain"; systemd-analyze critical-chain --no-pager network.target 2>&1
  echo "--- journal-pid1"; journalctl -b _PID=1 -o short-monotonic --no-pager 2>&1 | tail -n 400
  echo "--- all-unit-times"
  systemctl show -p Id -p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic     '*.service' '*.target' '*.socket' '*.mount' 2>&1
fi
if grep -q netinject.probe-imports /proc/cmdline; then
  echo "--- import-costs"
  for m in os struct hashlib json re socket argparse encodings.utf_16_le; do
    /usr/bin/python3 -I -S -c "import time; t = time.perf_counter(); import $m; print('$m %.2f' % ((time.perf_counter() - t) * 1000))"
  done
fi
if grep -q netinject.bootchart /proc/cmdline; then
  # systemd-bootchart (started as init) stops sampling on SIGHUP and writes its SVG.
  pkill -HUP -x systemd-bootcha
  for _ in $(seq 1 300); do
    svg=$(ls /run/log/bootchart-*.svg 2>/dev/null | head -n 1)
    [ -n "$svg" ] && [ -s "$svg" ] && ! pgrep -x systemd-bootcha >/dev/null && break
    sleep 0.2
  done
  echo "--- bootchart"
  if [ -n "$svg" ]; then gzip -9 -c "$svg" | base64 -w 76; fi
fi
echo "=== NETINJECT-REPORT END ==="
} >/dev/ttyS0 2>&1
if grep -q netinject.poweroff /proc/cmdline; then systemctl poweroff; fi
