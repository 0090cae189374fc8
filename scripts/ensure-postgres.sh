#!/usr/bin/env bash
# tests/test_postgres.py starts its own throwaway PostgreSQL server; this makes sure the binaries exist.
set -euo pipefail
if command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing the PostgreSQL server (Debian package postgresql) for the storage tests"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
    || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
else
  echo "note: no PostgreSQL server here and no root to install it: tests/test_postgres.py will skip" >&2
fi
