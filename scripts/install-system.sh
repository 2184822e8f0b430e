#!/bin/sh
# Installs the system packages pgagent-watch needs, where they are missing:
# the PostgreSQL server binaries, the pgAgent daemon and its extension,
# Chromium for the browser tests, and Redis for the multi-instance tests.
# Debian and Ubuntu only; other systems: see the README.
set -e
need=""
have_pg_server() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}
have_pg_server || need="$need postgresql"
command -v pgagent >/dev/null 2>&1 || need="$need pgagent"
command -v chromium >/dev/null 2>&1 || need="$need chromium chromium-driver"
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v python3 >/dev/null 2>&1 || need="$need python3 python3-venv"
[ -z "$need" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing:$need; install them with your system's package manager" >&2
    exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing system packages:$need"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $need >/dev/null
