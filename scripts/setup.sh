#!/usr/bin/env bash
# Installs what netwarden needs on Debian/Ubuntu (as root): kernel tools from apt,
# a virtual environment in .venv with netwarden itself. --dev adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(nftables conntrack iptables iproute2 util-linux procps python3 python3-venv)
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
echo "setup: done; run .venv/bin/netwarden --help"
