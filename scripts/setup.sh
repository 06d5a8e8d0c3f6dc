#!/usr/bin/env bash
# Installs what netwarden needs on Debian/Ubuntu (as root): kernel tools from apt,
# a virtual environment in .venv with netwarden itself. --dev adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc, libc6-dev and python3-dev build the monitor's C module (netwarden runs without it,
# several times slower on hosts with thousands of sockets).
apt_packages=(nftables conntrack iptables iproute2 util-linux procps python3 python3-venv
  gcc libc6-dev python3-dev)
# clamav-daemon: the tests start their own clamd with signatures they write.
# chromium, chromium-driver: the dashboard's tests drive a real headless browser.
dev_packages=(curl openssl clamav-daemon chromium chromium-driver)
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

# The distribution's Python by default: a venv made from a Python in root's home (as
# pyenv installs it) cannot be run by any other user. PYTHON=... chooses another.
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python=/usr/bin/python3
  else
    python=python3
  fi
fi
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
.venv/bin/python -c "import netwarden.inspect._dlpscan" 2>/dev/null ||
  echo "setup: the DLP C module did not build; DLP works without it, slower" >&2
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null &&
  ! setpriv --reuid=65534 --regid=65534 --clear-groups .venv/bin/python -c pass 2>/dev/null; then
  echo "setup: note: other users cannot run .venv/bin/netwarden (its Python, or this" \
    "directory, is not readable by them); remove .venv and run setup again with" \
    "PYTHON=/usr/bin/python3 from a directory they can read" >&2
fi
echo "setup: done; run .venv/bin/netwarden --help"
