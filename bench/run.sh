#!/bin/bash
# make bench: each benchmark in a throwaway cluster; every figure is a ratio
# against plain PostgreSQL measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
# the same UTF-8 cluster whatever the caller's locale (a minimal Debian has none)
export LC_ALL=C.UTF-8 LANG=C.UTF-8
for b in bench/[0-9]*.sh; do
    echo "== $b"
    pg_virtualenv -t -o shared_preload_libraries=crmguard -o max_worker_processes=24 -o max_wal_size=4GB -o checkpoint_timeout=30min bash "$b"
done
