#!/bin/bash
# make demo: a throwaway cluster with crmguard preloaded, the demo CRM, and
# the narrated scenario of every capability that has landed.
set -euo pipefail
cd "$(dirname "$0")/.."
# the same UTF-8 cluster whatever the caller's locale (a minimal Debian has none)
export LC_ALL=C.UTF-8 LANG=C.UTF-8
exec pg_virtualenv -t \
    -o shared_preload_libraries=crmguard \
    -o max_worker_processes=24 \
    bash examples/demo.sh
