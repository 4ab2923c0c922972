#!/usr/bin/env bash
# Install PostgreSQL (Debian's postgresql package) for the shared-registry tests, if it is not installed yet.
# Needs root or sudo and apt-get; without them it says so and returns 0: those tests then skip, saying why.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_postgres.sh: no apt-get here; install PostgreSQL yourself to run tests/test_registry_pg.py" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_postgres.sh: not root and no sudo; run 'apt-get install -y postgresql' as root" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The tests start servers of their own (benchmarks/postgres_harness.py); the package's default cluster is not used.
if ! { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql; }; then
    echo "install_postgres.sh: apt-get could not install postgresql; tests/test_registry_pg.py will be skipped" >&2
    exit 0
fi
echo "install_postgres.sh: installed $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
