#!/usr/bin/env bash
# Installs what netwarden needs on Debian/Ubuntu (as root): kernel tools from apt,
# a virtual environment in .venv with netwarden itself. --dev adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc, libc6-dev and python3-dev build the monitor's C module (netwarden runs without it,
# several times slower on hosts with thousands of sockets).
apt_packages=(nftables conntrack iptables iproute2 util-linux procps python3 python3-venv
  gcc libc6-dev python3-dev)
dev_packages=(curl)
dev=0
[ "${1:-}" = "--dev" ] && dev=1
[ $dev -eq 1 ] && apt_packages+=("${dev_packages[@]}")

missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ $dev -eq 1 ]; then
  .venv/bin/python -m pip install -q -e ".[dev]"
else
  .venv/bin/python -m pip install -q -e .
fi
# An editable install compiles nothing; byte-compile now, so that no command pays for it
# (where PYTHONDONTWRITEBYTECODE is set, each run would otherwise compile every module).
.venv/bin/python -m compileall -q src >/dev/null
.venv/bin/python -c "import netwarden.platform.linux._native" 2>/dev/null ||
  echo "setup: the C module did not build; netwarden works without it, slower" >&2
echo "setup: done; run .venv/bin/netwarden --help"
