#!/bin/bash
# make bench: each benchmark in a throwaway cluster; every figure is a ratio
# against plain PostgreSQL measured in the same run (or a rate), and at the
# end one table of every figure with its target and whether this run met it.
set -euo pipefail
cd "$(dirname "$0")/.."
# the same UTF-8 cluster whatever the caller's locale (a minimal Debian has none)
export LC_ALL=C.UTF-8 LANG=C.UTF-8
# crmguard-device and crmguard-relay are installed next to PostgreSQL's programs
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
export PATH="$PG_BIN:$PATH"
export CRMGUARD_BENCH_SUMMARY=$(mktemp /tmp/crmguard-bench.XXXXXX)
chmod 666 "$CRMGUARD_BENCH_SUMMARY"
for b in bench/[0-9]*.sh; do
    echo "== $b"
    pg_virtualenv -t -o shared_preload_libraries=crmguard -o max_worker_processes=24 -o max_wal_size=4GB -o checkpoint_timeout=30min bash "$b"
done
echo
echo "== every figure against its target (../shared/SPEC.md, Performance; issue 17)"
bash bench/table.sh "$CRMGUARD_BENCH_SUMMARY"
rm -f "$CRMGUARD_BENCH_SUMMARY"
