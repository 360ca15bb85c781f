#!/bin/bash
# make test SANITIZE=1: the regression, isolation, pgTAP and Python client suites
# against a crmguard built with AddressSanitizer and UBSan (make SANITIZE=1), in a
# throwaway cluster whose postmaster has the sanitizer runtime preloaded.  Any
# sanitizer report fails the run, whatever the suites said.
#   scripts/sanitize.sh            the module is already built and installed (make test SANITIZE=1)
#   scripts/sanitize.sh --build    build and install it first into $PG_BIN's installation
#   ... [suite...]                 only these of regress, isolation, pgtap, python
set -uo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C.UTF-8 LANG=C.UTF-8
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
start=$(date +%s)

if [ "${1:-}" = "--build" ]; then
    shift
    make -s SANITIZE=1 PG_CONFIG="$PG_BIN/pg_config" all install >/dev/null || { echo "build failed"; exit 1; }
fi
if ! grep -q __asan_init "$("$PG_BIN/pg_config" --pkglibdir)/crmguard.so"; then
    echo "the installed crmguard.so is not built with the sanitizers (make SANITIZE=1)"
    exit 1
fi

# The runtimes the module was linked with, preloaded into the postmaster.  They go
# after the server's other shared libraries (libc excepted, so that the runtime's
# malloc and string interceptors still come first): the loader initialises
# libraries preloaded later first, and ASan must be initialised before the
# constructors of gnutls and p11-kit allocate (else glibc's locale locks deadlock
# at the first setlocale or exit, GCC 12 and glibc 2.36 alike)
libasan=$(readlink -f "$(${CC:-gcc} -print-file-name=libasan.so)")
libubsan=$(readlink -f "$(${CC:-gcc} -print-file-name=libubsan.so)")
[ -f "$libasan" ] && [ -f "$libubsan" ] || { echo "no libasan/libubsan for ${CC:-gcc}"; exit 1; }
server_libs=$(ldd "$PG_BIN/postgres" "$PG_BIN/pg_ctl" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' \
    | grep -v -e '/libc\.so' | awk '!seen[$0]++' | tr '\n' ' ')
preload="$server_libs$libasan $libubsan"

# cluster, socket and sanitizer reports in one private directory, no TCP port
work=$(mktemp -d /tmp/crmguard-sanitize.XXXXXX)
chmod 755 "$work"
mkdir "$work/reports"
runas=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$work" "$work/reports"
    runas=(runuser -u postgres --)
fi
"${runas[@]}" "$PG_BIN/initdb" -D "$work/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null \
    || { echo "initdb failed"; exit 1; }

# detect_leaks=0: memory contexts are released wholesale at backend exit, not freed;
# verify_asan_link_order=0: the runtime is not the first library preloaded (above)
asan_options="detect_leaks=0:verify_asan_link_order=0:log_path=$work/reports/asan:halt_on_error=1:abort_on_error=0"
ubsan_options="print_stacktrace=1:halt_on_error=1:log_path=$work/reports/ubsan"
"${runas[@]}" env LD_PRELOAD="$preload" ASAN_OPTIONS="$asan_options" UBSAN_OPTIONS="$ubsan_options" \
    "$PG_BIN/pg_ctl" -D "$work/data" -l "$work/server.log" -w \
    -o "-c listen_addresses='' -k $work -p 5432 -c shared_preload_libraries=crmguard -c max_worker_processes=24" \
    start >/dev/null || { tail "$work/server.log"; exit 1; }

# the runtime must really be in the server, not only in the module's dependencies
postmaster=$(head -1 "$work/data/postmaster.pid")
if ! grep -q "$libasan" "/proc/$postmaster/maps"; then
    echo "the postmaster has no $libasan loaded"
    "${runas[@]}" "$PG_BIN/pg_ctl" -D "$work/data" -m immediate stop >/dev/null
    exit 1
fi

summary=$work/summary
suites_start=$(date +%s)
# the programs the suites run (crmguard-device, built with the sanitizers too) are
# one-shot: like the server's memory contexts, what they hold is released at exit
ASAN_OPTIONS=detect_leaks=0 PGHOST=$work PGPORT=5432 PGUSER=postgres PGDATABASE=postgres PG_BIN=$PG_BIN CRMGUARD_SUMMARY=$summary \
    bash scripts/run-suites.sh ${*:-regress isolation pgtap python}
status=$?
# a backend a sanitizer stopped leaves the server in crash recovery: stop it anyway
"${runas[@]}" "$PG_BIN/pg_ctl" -D "$work/data" -m fast -w -t 120 stop >/dev/null ||
    "${runas[@]}" "$PG_BIN/pg_ctl" -D "$work/data" -m immediate -w stop >/dev/null

# every report the runtimes wrote, and any that reached the server log instead
# (UBSan's handlers inside libasan write to stderr whatever UBSAN_OPTIONS says)
reports=$(find "$work/reports" -type f | sort)
nreports=$(echo -n "$reports" | grep -c .)
for f in $reports; do
    echo "--- $f"
    cat "$f"
done
inlog=$(grep -cE 'ERROR: AddressSanitizer|runtime error:' "$work/server.log")
[ "$inlog" -gt 0 ] && grep -E -A30 'ERROR: AddressSanitizer|runtime error:' "$work/server.log"
crashes=$(grep -cE 'terminated by signal|was terminated by' "$work/server.log")

line=$(cat "$summary" 2>/dev/null || echo "0 passed, 1 failed")
echo "sanitizer: $nreports report files, $inlog reports in the server log, $crashes backends killed by a signal;" \
     "suites $(( $(date +%s) - suites_start )) s, $(( $(date +%s) - start )) s in all"
echo "$line"
rm -rf "$work"
[ "$status" -eq 0 ] && [ "$nreports" -eq 0 ] && [ "$inlog" -eq 0 ] && [ "$crashes" -eq 0 ]
