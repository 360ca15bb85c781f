# DROP EXTENSION crmguard CASCADE says what it loses before it is lost
# (pending drafts and approval requests, the audit log, masked values; said
# once the drop ran, before it commits, so a transaction can still roll back), leaves
# every table crmguard put row-level security on unreadable and says so,
# removes the crmguard schema, keeps the cluster-wide crmguard_relay role and
# says so; CREATE EXTENSION crmguard afterwards starts clean.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('drop_extension');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_owner;
    CREATE ROLE regress_luca;
    SELECT crmguard.add_principal('anna', '{area_manager,reviewer}');
    SELECT crmguard.add_principal('luca', '{agent}', 'anna', '{"projects": ["Energia"]}', 'regress_luca');
    CREATE TABLE quote (id int PRIMARY KEY, owner_id bigint, stage text);
    INSERT INTO quote VALUES (1, 2, 'Approved'), (2, 9, 'Approved');
    GRANT SELECT ON quote TO regress_luca;
    ALTER TABLE quote OWNER TO regress_owner;
    SELECT crmguard.expose_by_owner('quote', 'owner_id', 'agent');
    CREATE TABLE delivery (id bigint PRIMARY KEY, phone text, status text);
    INSERT INTO delivery VALUES (1, '+39 347 555 0123', 'Out for delivery');
    GRANT SELECT, UPDATE ON delivery TO regress_luca;
    SELECT crmguard.create_otp_rule('Delivery OTP', 'delivery', 'status', '{Delivered}', 'phone', delivery => 'manual');
    CREATE TABLE lead (id serial PRIMARY KEY, company text);
    GRANT SELECT, INSERT ON lead TO regress_luca;
    GRANT USAGE ON SEQUENCE lead_id_seq TO regress_luca;
    SELECT crmguard.enable_review('lead', 'reviewer');
    CREATE TABLE deal (id int PRIMARY KEY, owner_id bigint, discount int, status text DEFAULT 'Draft');
    INSERT INTO deal VALUES (1, 2, 0), (2, 2, 0);
    GRANT SELECT, UPDATE ON deal TO regress_luca;
    SELECT crmguard.create_approval_process('discount', 'deal', '{"field": "discount", "op": ">=", "value": 20}',
        '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', auto_submit => '{update}');
    CREATE TABLE contact (id int PRIMARY KEY, name text, fields jsonb);
    GRANT SELECT, INSERT ON contact TO regress_luca;
    SELECT crmguard.enable_fields('contact', 'fields');
    SELECT crmguard.define_field('contact', 'phone', 'phone', '{Energia}', masked => true);
});
$node->safe_psql('crm', q{
    SET ROLE regress_luca;
    INSERT INTO lead (company) VALUES ('Rossi Srl'), ('Bianchi Spa');
    UPDATE deal SET discount = 30 WHERE id = 1;
    INSERT INTO contact VALUES (1, 'Mario', '{"phone": "+39 347 555 0123"}');
});

# without CASCADE nothing is dropped
my ($ret, $out, $err) = $node->psql('crm', 'DROP EXTENSION crmguard');
isnt($ret, 0, 'DROP EXTENSION without CASCADE refuses while tables are guarded');
like($err, qr/cannot drop extension crmguard because other objects depend on it/, 'as PostgreSQL says');
unlike($err, qr/WARNING/, 'with no warning of a loss that did not happen');
is($node->safe_psql('crm', q{SELECT count(*) FROM pg_extension WHERE extname = 'crmguard'}), '1', 'the extension stays');

# a non-owner learns nothing
$node->safe_psql('crm', 'CREATE ROLE regress_nobody');
($ret, $out, $err) = $node->psql('crm', 'SET ROLE regress_nobody; DROP EXTENSION crmguard CASCADE');
like($err, qr/must be owner of extension crmguard/, 'a non-owner cannot drop it');
unlike($err, qr/pending|quote/, 'and is told nothing about what it holds');

# in a transaction block the warning comes before the commit: rolled back, nothing is lost
($ret, $out, $err) = $node->psql('crm', 'BEGIN; DROP EXTENSION crmguard CASCADE; ROLLBACK;');
like($err, qr/WARNING:  dropping extension "crmguard" discards 2 pending drafts and 1 pending approval requests/,
     'the warning counts the pending drafts and requests');
is($node->safe_psql('crm', 'SELECT count(*) FROM crmguard.draft_state'), '2', 'a rolled-back drop loses nothing');

($ret, $out, $err) = $node->psql('crm', 'DROP EXTENSION crmguard CASCADE');
is($ret, 0, 'DROP EXTENSION crmguard CASCADE');
like($err, qr/WARNING:  dropping extension "crmguard" discards 2 pending drafts and 1 pending approval requests\n/,
     'the warning counts what is lost');
like($err, qr/DETAIL:  Pending drafts, not in their tables: public.lead: 2 \(ids 1, 2\)\.\nPending approval requests: public.deal: 1 \(id 1\)\.\nThe audit log \(\d+ entries\) and every rule go too\./,
     'its detail lists them per table with their ids, and the audit log');
like($err, qr/WARNING:  tables keep row-level security enabled and forced without crmguard's policies: public.quote\n/,
     'a warning names every table left unreadable');
like($err, qr/HINT:  For each table: ALTER TABLE \.\.\. NO FORCE ROW LEVEL SECURITY lets its owner in/,
     'and says how to open one deliberately');
like($err, qr/WARNING:  writes to these tables are no longer gated by OTP, review, approvals or field checks: public.contact, public.deal, public.delivery, public.lead/,
     'a warning names the tables whose writes are no longer gated');
like($err, qr/WARNING:  masked contact fields of these tables stay encrypted and cannot be decrypted again: public.contact/,
     'and those whose masked values can no longer be read');
like($err, qr/NOTICE:  schema "crmguard" was dropped with the extension/, 'the schema goes');
like($err, qr/NOTICE:  role "crmguard_relay" is kept: roles belong to the cluster/, 'the relay role stays, and it is said');

# the tables' final state
is($node->safe_psql('crm', q{SELECT string_agg(format('%s:%s:%s', relname, relrowsecurity, relforcerowsecurity), ',' ORDER BY relname)
                               FROM pg_class WHERE relname IN ('quote', 'delivery', 'lead', 'deal', 'contact')}),
   'contact:f:f,deal:f:f,delivery:f:f,lead:f:f,quote:t:t',
   'the visibility table keeps row-level security enabled and forced; the others never had it');
is($node->safe_psql('crm', q{SELECT count(*) FROM pg_policy WHERE polrelid IN ('quote'::regclass, 'deal'::regclass)}), '0',
   'no crmguard policy is left');
is($node->safe_psql('crm', q{SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal
                               AND tgrelid IN ('quote'::regclass, 'delivery'::regclass, 'lead'::regclass, 'deal'::regclass, 'contact'::regclass)}),
   '0', 'no guard trigger is left');
is($node->safe_psql('crm', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'crmguard'}), '0', 'the crmguard schema is gone');
is($node->safe_psql('crm', q{SELECT count(*) FROM pg_roles WHERE rolname = 'crmguard_relay'}), '1', 'crmguard_relay stays');
($ret, $out, $err) = $node->psql('crm', 'SET ROLE regress_luca; SELECT count(*) FROM quote');
is($out, '0', 'the guarded table shows a granted role nothing: it failed closed, as the warning said');
($ret, $out, $err) = $node->psql('crm', 'SET ROLE regress_owner; SELECT count(*) FROM quote');
is($out, '0', 'nor its owner');
is($node->safe_psql('crm', 'SELECT count(*) FROM quote'), '2', 'a superuser still reads it');
$node->safe_psql('crm', 'SET ROLE regress_luca; UPDATE delivery SET status = $$Delivered$$ WHERE id = 1');
is($node->safe_psql('crm', 'SELECT status FROM delivery'), 'Delivered', 'an ungated write passes, as the warning said');

# CREATE EXTENSION again starts clean, in the same session and a new one
($ret, $out, $err) = $node->psql('crm', q{CREATE EXTENSION crmguard;
    SELECT count(*) FROM crmguard.visibility_rule;
    SELECT crmguard.add_principal('luca', '{agent}', NULL, '{}', 'regress_luca');
    SELECT crmguard.expose_by_owner('quote', 'owner_id', 'agent') > 0;});
is($ret, 0, 'CREATE EXTENSION crmguard again works');
is($err, '', 'without a warning');
is($out, "0\n1\nt", 'with empty catalogs, and rules can be made again');
is($node->safe_psql('crm', 'SET ROLE regress_luca; SELECT string_agg(id::text, $$,$$) FROM quote'), '',
   'luca (a new principal, id 1) owns no quote');
$node->safe_psql('crm', 'UPDATE quote SET owner_id = 1 WHERE id = 2');
is($node->safe_psql('crm', 'SET ROLE regress_luca; SELECT string_agg(id::text, $$,$$) FROM quote'), '2',
   'the re-made rule opens the table again');
is($node->safe_psql('crm', 'SELECT ok FROM crmguard.verify_audit()'), 't', 'a new audit chain starts');

# a database with no pending work: a shorter warning
$node->safe_psql('postgres', 'CREATE DATABASE empty');
$node->safe_psql('empty', 'CREATE EXTENSION crmguard');
($ret, $out, $err) = $node->psql('empty', 'DROP EXTENSION crmguard');
is($ret, 0, 'DROP EXTENSION of an unused crmguard needs no CASCADE');
like($err, qr/WARNING:  dropping extension "crmguard" discards its rules and its audit log \(0 entries\)/,
     'and says what goes');
is($node->safe_psql('empty', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'crmguard'}), '0', 'the schema goes');

# DROP SCHEMA crmguard CASCADE drops the extension with it: the same warnings
$node->safe_psql('empty', q{CREATE EXTENSION crmguard; CREATE TABLE t (id int PRIMARY KEY);
                            SELECT crmguard.expose_public('t', 'agent')});
($ret, $out, $err) = $node->psql('empty', 'DROP SCHEMA crmguard CASCADE');
is($ret, 0, 'DROP SCHEMA crmguard CASCADE');
like($err, qr/WARNING:  tables keep row-level security enabled and forced without crmguard's policies: public.t/,
     'warns like DROP EXTENSION');
is($node->safe_psql('empty', q{SELECT count(*) FROM pg_extension WHERE extname = 'crmguard'}), '0', 'the extension is gone');

done_testing();
