# pg_dump / pg_restore of a database holding rules of every kind writes no
# false tamper alarm: the restored audit chain holds exactly the dumped rows
# plus the restore's own (none), verify_audit() is true, and a restored OTP
# challenge is void, described the same way by the guard, the
# crmguard.otp_challenge view and verify_otp.  A real NO FORCE ROW LEVEL
# SECURITY by a guarded table's owner is still refused and audited.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('restore_audit');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_owner;
    CREATE ROLE regress_luca;
    CREATE ROLE regress_anna;
    GRANT CREATE ON SCHEMA public TO regress_owner;
    SELECT crmguard.add_principal('anna', '{area_manager,reviewer}', NULL, '{}', 'regress_anna');
    SELECT crmguard.add_principal('luca', '{agent}', 'anna', '{"projects": ["Energia"]}', 'regress_luca');
    -- visibility
    CREATE TABLE quote (id int PRIMARY KEY, owner_id bigint, stage text);
    INSERT INTO quote VALUES (1, 2, 'Approved'), (2, 9, 'Approved');
    GRANT SELECT ON quote TO regress_luca, regress_anna;
    ALTER TABLE quote OWNER TO regress_owner;
    SELECT crmguard.expose_by_owner('quote', 'owner_id', 'agent');
    SELECT crmguard.expose_public('quote', 'area_manager');
    -- OTP with a live challenge
    CREATE TABLE delivery (id bigint PRIMARY KEY, phone text, status text);
    INSERT INTO delivery VALUES (1, '+39 347 555 0123', 'Out for delivery');
    GRANT SELECT, UPDATE ON delivery TO regress_luca;
    SELECT crmguard.create_otp_rule('Delivery OTP', 'delivery', 'status', '{Delivered}', 'phone',
                                    delivery => 'manual', recipient_cooldown => '0');
    -- draft review with a pending draft
    CREATE TABLE lead (id serial PRIMARY KEY, company text, email text);
    GRANT SELECT, INSERT ON lead TO regress_luca, regress_anna;
    GRANT USAGE ON SEQUENCE lead_id_seq TO regress_luca, regress_anna;
    SELECT crmguard.enable_review('lead', 'reviewer', '{company}');
    -- an approval process with a pending request
    CREATE TABLE deal (id int PRIMARY KEY, owner_id bigint, discount int, status text DEFAULT 'Draft');
    INSERT INTO deal VALUES (1, 2, 0);
    GRANT SELECT, UPDATE ON deal TO regress_luca, regress_anna;
    SELECT crmguard.create_approval_process('discount', 'deal', '{"field": "discount", "op": ">=", "value": 20}',
        '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
        on_approve => '[{"set": {"status": "Approved"}}]', auto_submit => '{update}');
    SELECT crmguard.track('deal');
    -- contact fields
    CREATE TABLE contact (id int PRIMARY KEY, name text, fields jsonb);
    GRANT SELECT, INSERT ON contact TO regress_luca;
    SELECT crmguard.enable_fields('contact', 'fields');
    SELECT crmguard.define_field('contact', 'phone', 'phone', '{Energia}', masked => true);
});
$node->safe_psql('crm', q{
    SET ROLE regress_luca;
    INSERT INTO lead (company, email) VALUES ('Rossi Srl', 'info@rossi.example');
    UPDATE deal SET discount = 30 WHERE id = 1;
    INSERT INTO contact VALUES (1, 'Mario', '{"phone": "+39 347 555 0123"}');
});
my $challenge = $node->safe_psql('crm', q{SET ROLE regress_luca; SELECT crmguard.request_otp('delivery', '1', 'Delivered')});
is($node->safe_psql('crm', "SELECT state FROM crmguard.otp_challenge WHERE id = $challenge"), 'pending',
   'before the dump, the challenge is pending');

my $audit_sql = q{SELECT id, action, target, detail FROM crmguard.audit ORDER BY id};
my $audit_before = $node->safe_psql('crm', $audit_sql);

my $dump = $node->basedir . '/crm.dump';
$node->command_ok(['pg_dump', '-Fc', '-d', $node->connstr('crm'), '-f', $dump], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE crm_restored');
my ($ret, $out, $err);
$node->command_ok(['pg_restore', '--exit-on-error', '-d', $node->connstr('crm_restored'), $dump],
                  'pg_restore into a fresh database');
my $last_id = $node->safe_psql('crm', 'SELECT max(id) FROM crmguard.audit');
my $new_rows = q{SELECT string_agg(format('%s %s %s', action, target, detail), E'\n' ORDER BY id)
                   FROM crmguard.audit WHERE id > } . $last_id;
is($node->safe_psql('crm_restored', $new_rows), '', 'the restore writes no audit row of its own');
my $audit_after = $node->safe_psql('crm_restored', $audit_sql);
is($audit_after, $audit_before, 'the restore writes no audit row: the chain is the dumped one, no false alarm');
is($node->safe_psql('crm_restored', q{SELECT count(*) FROM crmguard.audit WHERE action ~ '(changed|dropped|disabled|refused)'}),
   $node->safe_psql('crm', q{SELECT count(*) FROM crmguard.audit WHERE action ~ '(changed|dropped|disabled|refused)'}),
   'no tamper alarm among them');
is($node->safe_psql('crm_restored', 'SELECT ok FROM crmguard.verify_audit()'), 't', 'the restored chain verifies');

# a restored challenge is void: its attempt counter was in the old server's
# shared memory, so a code sent before the dump is no longer accepted; the
# view, pending_challenge, the guard and verify_otp all say so
my $code = $node->safe_psql('crm', q{SELECT substring(body FROM 'code is ([0-9]+)') FROM crmguard.outbox ORDER BY id DESC LIMIT 1});
is($node->safe_psql('crm_restored', "SELECT state FROM crmguard.otp_challenge WHERE id = $challenge"), 'void',
   'the view shows the restored challenge void');
is($node->safe_psql('crm_restored', q{SET ROLE regress_luca; SELECT crmguard.pending_challenge('delivery', '1', 'Delivered') IS NULL}),
   't', 'pending_challenge does not offer it');
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_luca; UPDATE delivery SET status = 'Delivered' WHERE id = 1});
like($err, qr/OTP required to set "status" to "Delivered"/, 'the guard refuses the change');
like($err, qr/DETAIL:  No live code exists for this change: challenge $challenge is void, because the server restarted or the database was restored/,
     'and calls the restored challenge void, not pending');
($ret, $out, $err) = $node->psql('crm_restored', "SET ROLE regress_luca; BEGIN; SELECT crmguard.verify_otp($challenge, '$code'); "
    . "UPDATE delivery SET status = 'Delivered' WHERE id = 1; COMMIT;");
like($err, qr/OTP challenge $challenge is void/, 'verify_otp refuses its code, even the right one, as void');
like($err, qr/the server restarted or the database was restored/, 'and says why');
my $fresh = $node->safe_psql('crm_restored', q{SET ROLE regress_luca; SELECT crmguard.request_otp('delivery', '1', 'Delivered')});
isnt($fresh, $challenge, 'request_otp issues a new challenge instead of reviving the void one');
my $fresh_code = $node->safe_psql('crm_restored', q{SELECT substring(body FROM 'code is ([0-9]+)') FROM crmguard.outbox ORDER BY id DESC LIMIT 1});
$node->safe_psql('crm_restored', "SET ROLE regress_luca; BEGIN; SELECT crmguard.verify_otp($fresh, '$fresh_code'); "
    . "UPDATE delivery SET status = 'Delivered' WHERE id = 1; COMMIT;");
is($node->safe_psql('crm_restored', 'SELECT status FROM delivery WHERE id = 1'), 'Delivered',
   'and its code opens the change');

# the restored tables are guarded: the owner cannot switch a guard off, and
# the attempt is audited, as before the restore
my $refused = q{SELECT count(*) FROM crmguard.audit WHERE action = 'visibility_changed_refused'};
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_owner; ALTER TABLE quote NO FORCE ROW LEVEL SECURITY});
like($err, qr/crmguard rules of table public.quote cannot be changed outside crmguard: row-level security is no longer enabled and forced/,
     'the owner of a restored table cannot turn FORCE ROW LEVEL SECURITY off');
is($node->safe_psql('crm_restored', $refused), '1', 'and the attempt is audited');
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_owner; ALTER TABLE quote DISABLE ROW LEVEL SECURITY});
like($err, qr/cannot be changed outside crmguard: row-level security is no longer enabled and forced/,
     'nor row-level security itself');
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_owner; ALTER TABLE quote NO FORCE ROW LEVEL SECURITY, ADD COLUMN note text});
like($err, qr/cannot be changed outside crmguard/, 'nor inside a longer ALTER TABLE');
is($node->safe_psql('crm_restored', $refused), '3', 'each attempt audited');
is($node->safe_psql('crm_restored', q{SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'quote'::regclass}),
   't', 'row-level security stays enabled and forced');
# a superuser may, with a warning and an audit row
($ret, $out, $err) = $node->psql('crm_restored', q{ALTER TABLE quote NO FORCE ROW LEVEL SECURITY});
like($err, qr/WARNING:  crmguard rules of table public.quote are no longer enforced/, 'a superuser is warned');
is($node->safe_psql('crm_restored', q{SELECT count(*) FROM crmguard.audit WHERE action = 'visibility_changed'}), '1',
   'and audited');
# a table already wrong: a later, harmless DDL is not blamed for it, but a
# new problem still is
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_owner; ALTER TABLE quote ADD COLUMN note text});
is($ret, 0, 'a harmless ALTER TABLE on a table already wrong passes');
is($node->safe_psql('crm_restored', q{SELECT count(*) FROM crmguard.audit WHERE action ~ '^visibility_changed'}), '4',
   'without a second alarm for the state it found');
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_owner; SELECT count(*) FROM quote});
like($err, qr/table "quote" is guarded by crmguard, but its row-level security is no longer enabled and forced/,
     'the table fails closed meanwhile');
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_owner; ALTER TABLE quote DISABLE ROW LEVEL SECURITY});
like($err, qr/cannot be changed outside crmguard/, 'and a second switch-off on it is still refused');
$node->safe_psql('crm_restored', q{ALTER TABLE delivery OWNER TO regress_owner});
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_owner; ALTER TABLE delivery DISABLE TRIGGER zz_crmguard_otp_guard});
like($err, qr/crmguard guard "zz_crmguard_otp_guard" on table delivery cannot be disabled/,
     'a restored guard trigger cannot be disabled by the owner');
is($node->safe_psql('crm_restored', 'SELECT ok FROM crmguard.verify_audit()'), 't', 'the chain still verifies');

# single-transaction restore too
$node->safe_psql('postgres', 'CREATE DATABASE crm_restored1');
$node->command_ok(['pg_restore', '--exit-on-error', '--single-transaction', '-d', $node->connstr('crm_restored1'), $dump],
                  'pg_restore --single-transaction');
is($node->safe_psql('crm_restored1', $new_rows), '', 'a single-transaction restore writes no audit row either');
is($node->safe_psql('crm_restored1', $audit_sql), $audit_before, 'its chain is the dumped one');

done_testing();
