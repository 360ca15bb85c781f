#!/bin/bash
# Run pg_regress, isolation, pgTAP, Python client and Perl TAP suites against the cluster
# pg_virtualenv started, then print one summary line: "N passed, N failed".
# Arguments name the suites to run (regress isolation pgtap python tap); none = all.
set -uo pipefail
cd "$(dirname "$0")/.."
# the same UTF-8 cluster whatever the caller's locale (a minimal Debian has none)
export LC_ALL=C.UTF-8 LANG=C.UTF-8

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGXS_DIR=$(dirname "$("$PG_BIN/pg_config" --pgxs)")/..
export PATH="$PG_BIN:$PATH"
work=$(mktemp -d /tmp/crmguard-test.XXXXXX)
chmod 755 "$work"
passed=0
failed=0
suites=" ${*:-regress isolation pgtap python tap} "
want() { [[ "$suites" == *" $1 "* ]]; }

# pg_regress prints "test name ... ok" or "... FAILED" per test
count_regress() {
    local log=$1 ok bad
    ok=$(grep -cE '\.\.\. ok( |$)' "$log")
    bad=$(grep -cE '\.\.\. (FAILED|failed)' "$log")
    passed=$((passed + ok))
    failed=$((failed + bad))
}

# TAP: "ok N" / "not ok N"; a script that died early counts as one failure
count_tap() {
    local log=$1 status=$2 ok bad
    ok=$(grep -cE '^\s*ok [0-9]+' "$log")
    bad=$(grep -cE '^\s*not ok [0-9]+' "$log")
    if [ "$status" -ne 0 ] && [ "$bad" -eq 0 ]; then
        bad=1
    fi
    passed=$((passed + ok))
    failed=$((failed + bad))
}

if want regress; then
echo "== pg_regress"
"$PGXS_DIR/test/regress/pg_regress" --inputdir=. --outputdir="$work/regress" \
    --bindir="$PG_BIN" --dbname=crmguard_regress --load-extension=crmguard --schedule=test/schedule 2>&1 | tee "$work/regress.log"
count_regress "$work/regress.log"
[ -f "$work/regress/regression.diffs" ] && cat "$work/regress/regression.diffs"
fi

if want isolation; then
echo "== isolation"
specs=$(cd test/isolation/specs && ls *.spec | sed 's/\.spec$//' | sort | tr '\n' ' ')
"$PGXS_DIR/test/isolation/pg_isolation_regress" --inputdir=test/isolation \
    --outputdir="$work/isolation" --bindir="$PG_BIN" --dbname=crmguard_isolation \
    --load-extension=crmguard $specs 2>&1 | tee "$work/isolation.log"
count_regress "$work/isolation.log"
[ -f "$work/isolation/regression.diffs" ] && cat "$work/isolation/regression.diffs"
fi

if want pgtap; then
echo "== pgTAP"
dropdb --if-exists crmguard_tap >/dev/null 2>&1
createdb crmguard_tap
psql -X -q -d crmguard_tap -c 'CREATE EXTENSION pgtap' -c 'CREATE EXTENSION crmguard'
pg_prove -v -d crmguard_tap test/pgtap/*.sql > "$work/pgtap.log" 2>&1
status=$?
cat "$work/pgtap.log"
count_tap "$work/pgtap.log" $status
fi

if want python; then
echo "== Python client"
# what an application does, through psycopg2 (Debian's python3, not another one on PATH)
/usr/bin/python3 test/python/client.py > "$work/python.log" 2>&1
status=$?
cat "$work/python.log"
count_tap "$work/python.log" $status
fi

if want tap; then
echo "== Perl TAP"
# initdb refuses to run as root: run the clusters as postgres
cp -r test/t "$work/t"
src=$(pwd)   # the relay tests start test/relay/http_provider.py from here
chown -R postgres:postgres "$work" 2>/dev/null || true
runas=()
[ "$(id -u)" -eq 0 ] && runas=(runuser -u postgres --)
(cd "$work" && "${runas[@]}" env PATH="$PATH" TESTDIR="$work" CRMGUARD_SRC="$src" \
    PG_REGRESS="$PGXS_DIR/test/regress/pg_regress" \
    prove -v -I "$PGXS_DIR/test/perl" t/*.pl) > "$work/tap.log" 2>&1
status=$?
cat "$work/tap.log"
count_tap "$work/tap.log" $status
if [ "$status" -ne 0 ]; then
    for f in "$work"/tmp_check/log/*.log; do
        [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }
    done
fi
fi

rm -rf "$work"
echo "$passed passed, $failed failed"
[ -n "${CRMGUARD_SUMMARY:-}" ] && echo "$passed passed, $failed failed" > "$CRMGUARD_SUMMARY"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
