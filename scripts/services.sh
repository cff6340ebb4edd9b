#!/usr/bin/env bash
# Make sure the services the test suite talks to are up: PostgreSQL on
# 127.0.0.1:5432 (trust auth). Starts this machine's cluster if it is down; the
# tests create (and drop) their own databases.
set -euo pipefail

if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    for version in $(ls /etc/postgresql 2>/dev/null); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
  fi
  for _ in $(seq 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 1
  done
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "PostgreSQL is not reachable on 127.0.0.1:5432; the job tests need it" >&2
  exit 1
fi
