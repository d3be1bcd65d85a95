#!/usr/bin/env bash
# Creates .venv from requirements.lock (hash-checked) and makes sure the system tools the demo
# and the tests use (mosquitto, mosquitto-clients, socat; with --test also Chromium for the web
# dashboard's browser test, tmux for the terminal captures of `watch` and PostgreSQL's server
# binaries for the fleet tests) are present. Idempotent and quick when nothing changed: the venv
# is rebuilt only when the lock file or pyproject.toml change.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v socat >/dev/null 2>&1 || need+=(socat)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
  command -v tmux >/dev/null 2>&1 || need+=(tmux)
  # the fleet tests start their own server with initdb + pg_ctl (tests/support/postgres.py)
  command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
    || need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing ${need[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "bootstrap: please install: ${need[*]} (e.g. sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
stamp=.venv/.infusiond-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "bootstrap: creating .venv from requirements.lock" >&2
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "infusiond needs Python >= 3.11")'
rm -rf .venv
"$PY" -m venv .venv
quiet_pip() {  # this machine's pip config names extra indexes that may not exist; hide that noise
  .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
quiet_pip install -q --upgrade "pip>=24,<27"
quiet_pip install -q --require-hashes -r requirements.lock
# setuptools prints pages of deprecation notes while building the editable install: keep them
# out of the way and show them only if the install fails.
if ! quiet_pip install -q --no-deps -e . 2> .venv/install.log; then
  cat .venv/install.log >&2
  exit 1
fi
echo "$want" > "$stamp"
