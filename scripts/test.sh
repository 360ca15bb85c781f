#!/bin/bash
# make test: every suite in a throwaway cluster with crmguard preloaded.
# The summary is printed last, after pg_virtualenv's own messages.
set -uo pipefail
cd "$(dirname "$0")/.."
# the same UTF-8 cluster whatever the caller's locale (a minimal Debian has none)
export LC_ALL=C.UTF-8 LANG=C.UTF-8
summary=$(mktemp /tmp/crmguard-summary.XXXXXX)
chmod 666 "$summary"
pg_virtualenv -t \
    -o shared_preload_libraries=crmguard \
    -o max_worker_processes=24 \
    env CRMGUARD_SUMMARY="$summary" bash scripts/run-suites.sh "$@"
status=$?
if [ -s "$summary" ]; then
    line=$(cat "$summary")
else
    line="0 passed, 1 failed"
fi
rm -f "$summary"
echo "$line"
case "$line" in
    *" 0 failed") [ "$status" -eq 0 ] && exit 0 ;;
esac
exit 1
