#!/bin/bash
# Load the demo CRM into a fresh database and play each chapter with psql.
set -euo pipefail
cd "$(dirname "$0")"
export PGDATABASE=crm_demo
# crmguard-device is installed with the server's programs
export PATH="$("${PG_CONFIG:-pg_config}" --bindir):$PATH"
dropdb --if-exists crm_demo >/dev/null 2>&1
createdb crm_demo

run() { psql -X -q -v ON_ERROR_STOP=1 --pset=footer=off "$@"; }

echo "== Loading the demo CRM (schema, crmguard, principals, seed data)"
run -f schema.sql
run -c 'CREATE EXTENSION crmguard'
run -f seed.sql
run -At -c "SELECT format('   %s customers, %s deals, %s delivery notes, %s principals',
                  (SELECT count(*) FROM crm.customer), (SELECT count(*) FROM crm.deal),
                  (SELECT count(*) FROM crm.delivery_note), (SELECT count(*) FROM crmguard.principal))"

for chapter in chapters/*.sql; do
    echo
    run -f "$chapter"
done
echo
echo "== The demo is over; the throwaway cluster is dropped now."
