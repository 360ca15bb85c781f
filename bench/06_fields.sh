#!/bin/bash
# Contact fields.  1) Reading 100,000 rows' fields as an Energia agent (the
# projection: other projects' fields dropped, the phone masked) against
# reading the same stored column of a table without crmguard (target: within
# 2x).  2) find_by_field on a masked phone at 1,000,000 contacts (target: under
# 1 ms, an index scan).  3) INSERT of 100,000 contacts with two unique fields
# and one masked field against the same INSERT into a plain jsonb column.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/summary.sh
ROWS=${ROWS:-1000000}
ROUNDS=${ROUNDS:-5}
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" <<'SQL'
\o /dev/null
CREATE EXTENSION crmguard;
\i bench/lib.sql
CREATE ROLE bench_ela;
GRANT USAGE ON SCHEMA bench TO bench_ela;
GRANT CREATE ON SCHEMA public TO bench_ela;
SELECT crmguard.add_principal('ela', '{agent}', NULL, '{"projects": ["Energia"]}', 'bench_ela');
CREATE TABLE public.contact (id int PRIMARY KEY, name text NOT NULL, fields jsonb NOT NULL DEFAULT '{}');
GRANT SELECT, INSERT, UPDATE ON public.contact TO bench_ela;
SELECT crmguard.enable_fields('public.contact', 'fields');
SELECT crmguard.define_field('public.contact', 'phone', 'phone', '{Energia}', unique_values => true, masked => true);
SELECT crmguard.define_field('public.contact', 'pod_code', 'text', '{Energia}', unique_values => true);
SELECT crmguard.define_field('public.contact', 'survey', 'text', '{Energia}');
SELECT crmguard.define_field('public.contact', 'plan', 'text', '{Telefonia}');
SELECT crmguard.define_field('public.contact', 'email', 'email');
-- 1,000,000 contacts shared by Energia and Telefonia, written through the guard
INSERT INTO public.contact
SELECT i, 'Contact ' || i,
       jsonb_build_object('phone', '+39 3' || lpad(i::text, 9, '0'), 'pod_code', 'IT001E' || i,
                          'survey', CASE WHEN i % 3 = 0 THEN 'interested' ELSE 'called' END,
                          'plan', 'Fibra ' || (i % 7), 'email', 'c' || i || '@example.com')
  FROM generate_series(1, :rows) i;
-- the same stored bytes in a table without crmguard, owned by the reader
CREATE TABLE public.contact_raw AS SELECT * FROM public.contact;
ALTER TABLE public.contact_raw ADD PRIMARY KEY (id);
ALTER TABLE public.contact_raw OWNER TO bench_ela;
VACUUM ANALYZE public.contact, public.contact_raw;
-- insert targets: with the five fields, and a plain jsonb column
CREATE TABLE public.contact_in (LIKE public.contact INCLUDING ALL);
GRANT SELECT, INSERT, UPDATE, TRUNCATE ON public.contact_in TO bench_ela;
SELECT crmguard.enable_fields('public.contact_in', 'fields');
SELECT crmguard.define_field('public.contact_in', 'phone', 'phone', '{Energia}', unique_values => true, masked => true);
SELECT crmguard.define_field('public.contact_in', 'pod_code', 'text', '{Energia}', unique_values => true);
SELECT crmguard.define_field('public.contact_in', 'survey', 'text', '{Energia}');
CREATE TABLE public.contact_plain (id int PRIMARY KEY, name text NOT NULL, fields jsonb NOT NULL DEFAULT '{}');
ALTER TABLE public.contact_plain OWNER TO bench_ela;
-- the same with the lookup indexes crmguard makes, by hand (phone unique in clear)
CREATE TABLE public.contact_indexed (LIKE public.contact_plain INCLUDING ALL);
CREATE UNIQUE INDEX ON public.contact_indexed ((fields ->> 'phone')) WHERE fields ? 'phone';
CREATE UNIQUE INDEX ON public.contact_indexed ((fields ->> 'pod_code')) WHERE fields ? 'pod_code';
CREATE INDEX ON public.contact_indexed ((fields ->> 'survey')) WHERE fields ? 'survey';
ALTER TABLE public.contact_indexed OWNER TO bench_ela;
SQL

echo "Reading 100,000 rows' fields ($ROUNDS rounds, median; target: the agent within 2x of the raw column):"
psql -X -q -At -F ' ' -v ON_ERROR_STOP=1 <<SQL | tee /tmp/crmguard_fields_read
SET ROLE bench_ela;
SELECT format('  %-40s agent %s ms | raw column %s ms | x%s', benchmark, round(candidate_ms, 1), round(baseline_ms, 1), ratio)
  FROM bench.compare('whole column as text (SELECT fields)',
       'SELECT sum(length(fields::text)) FROM public.contact WHERE id <= 100000',
       'SELECT sum(length(fields::text)) FROM public.contact_raw WHERE id <= 100000', 3, $ROUNDS);
SELECT format('  %-40s agent %s ms | raw column %s ms | x%s', benchmark, round(candidate_ms, 1), round(baseline_ms, 1), ratio)
  FROM bench.compare('one field (fields->>''survey'')',
       'SELECT count(fields->>''survey'') FROM public.contact WHERE id <= 100000',
       'SELECT count(fields->>''survey'') FROM public.contact_raw WHERE id <= 100000', 3, $ROUNDS);
SELECT '  what the agent sees: ' || fields::text FROM public.contact WHERE id = 42;
SQL
# each line: "  <what>   agent A ms | raw column B ms | xR"
while IFS='|' read -r what ratio; do
    metric "Contact fields: reading $what, agent / raw column" "$ratio" "<=" 2 x
done < <(sed -n 's/^  \(.*[^ ]\) *agent .*| x\([0-9.]*\)$/\1|\2/p' /tmp/crmguard_fields_read)

echo "find_by_field at $ROWS contacts (an inbound call: the masked phone, 500 calls, median of $ROUNDS rounds; target: under 1 ms):"
psql -X -q -At -v ON_ERROR_STOP=1 <<SQL | tee /tmp/crmguard_fields_find
SET ROLE bench_ela;
CREATE TEMP TABLE t (ms float8);
DO \$\$
BEGIN
    FOR r IN 1..$ROUNDS LOOP
        INSERT INTO t SELECT bench.ms(format('SELECT crmguard.find_by_field(''public.contact'', ''phone'', %L)',
                                             '0039 3' || lpad((1 + (random() * ($ROWS - 1))::int)::text, 9, '0')), 500);
    END LOOP;
END
\$\$;
SELECT format('  find_by_field: %s ms per call; found: %s', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3),
              (SELECT string_agg(k, ',') FROM crmguard.find_by_field('public.contact', 'phone', '+39 3000777777') k))
  FROM t;
SQL
metric "Contact fields: find_by_field on a masked phone, $ROWS contacts" "$(sed -n 's/^  find_by_field: \([0-9.]*\) ms.*/\1/p' /tmp/crmguard_fields_find)" "<" 1 ms
echo "  its plan (auto_explain of the statement find_by_field runs):"
psql -X -q -At -v ON_ERROR_STOP=1 2>&1 <<'SQL' | grep ' on contact ' | sed -n 's/^.*\(Index Scan\|Index Only Scan\|Bitmap\|Seq Scan\)/    \1/p'
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_level = notice;
SET ROLE bench_ela;
SELECT crmguard.find_by_field('public.contact', 'phone', '+39 3000777777');
SQL

echo "INSERT of 100,000 contacts, two unique fields and one masked ($ROUNDS rounds, median):"
psql -X -q -At -v ON_ERROR_STOP=1 <<SQL
SET ROLE bench_ela;
CREATE TEMP TABLE t (fields_ms float8, plain_ms float8, indexed_ms float8);
DO \$\$
DECLARE
    ins text := 'INSERT INTO public.%s SELECT i, ''Contact '' || i, jsonb_build_object(''phone'', ''+39 3'' || lpad(i::text, 9, ''0''),'
                || ' ''pod_code'', ''IT001E'' || i, ''survey'', ''called'') FROM generate_series(1, 100000) i';
    f float8;
    p float8;
    x float8;
BEGIN
    FOR r IN 1..$ROUNDS LOOP
        TRUNCATE public.contact_in, public.contact_plain, public.contact_indexed;
        f := bench.ms(format(ins, 'contact_in'), 1);
        p := bench.ms(format(ins, 'contact_plain'), 1);
        x := bench.ms(format(ins, 'contact_indexed'), 1);
        INSERT INTO t VALUES (f, p, x);
    END LOOP;
END
\$\$;
SELECT format('  with fields %s ms | plain jsonb %s ms | x%s',
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY fields_ms)::numeric, 1),
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY plain_ms)::numeric, 1),
              round((percentile_cont(0.5) WITHIN GROUP (ORDER BY fields_ms) / percentile_cont(0.5) WITHIN GROUP (ORDER BY plain_ms))::numeric, 2))
  FROM t;
SELECT format('  (plain jsonb with the same three lookup indexes by hand: %s ms, x%s; fields against it: x%s)',
              round(percentile_cont(0.5) WITHIN GROUP (ORDER BY indexed_ms)::numeric, 1),
              round((percentile_cont(0.5) WITHIN GROUP (ORDER BY indexed_ms) / percentile_cont(0.5) WITHIN GROUP (ORDER BY plain_ms))::numeric, 2),
              round((percentile_cont(0.5) WITHIN GROUP (ORDER BY fields_ms) / percentile_cont(0.5) WITHIN GROUP (ORDER BY indexed_ms))::numeric, 2))
  FROM t;
SQL
