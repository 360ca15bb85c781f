# pg_dump and pg_restore keep contact fields: definitions, values, masking,
# uniqueness; the dump holds ciphertext only, and the restored values decrypt
# (they are bound to the table's random identity, not to its OID).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('fields_dump');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_ela;
    CREATE ROLE regress_tom;
    CREATE ROLE regress_sue;
    SELECT crmguard.add_principal('ela', '{agent}', NULL, '{"projects": ["Energia"]}', 'regress_ela');
    SELECT crmguard.add_principal('tom', '{agent}', NULL, '{"projects": ["Telefonia"]}', 'regress_tom');
    SELECT crmguard.add_principal('sue', '{agent,view_masked}', NULL, '{"projects": ["Energia"]}', 'regress_sue');
    CREATE TABLE contact (id int PRIMARY KEY, name text, fields jsonb);
    GRANT SELECT, INSERT, UPDATE ON contact TO regress_ela, regress_tom, regress_sue;
    SELECT crmguard.enable_fields('contact', 'fields');
    SELECT crmguard.define_field('contact', 'phone', 'phone', '{Energia}', unique_values => true, masked => true);
    SELECT crmguard.define_field('contact', 'plan', 'text', '{Telefonia}');
    SET ROLE regress_ela;
    INSERT INTO contact VALUES (1, 'Mario', '{"phone": "+39 347 555 0123"}'), (2, 'Lucia', '{"phone": "+39 347 555 0188"}');
    RESET ROLE;
    SET ROLE regress_tom;
    UPDATE contact SET fields = fields || '{"plan": "Fibra"}' WHERE id = 1;
});

my $defs_sql = q{SELECT target::text, field_name, field_type, projects, unique_values, masked, mask, required
                   FROM crmguard.field_def ORDER BY id};
my $ela = q{SET ROLE regress_ela; SELECT string_agg(id || '=' || fields::text, ';' ORDER BY id) FROM contact};
my $tom = q{SET ROLE regress_tom; SELECT string_agg(id || '=' || fields::text, ';' ORDER BY id) FROM contact};
my $defs_before = $node->safe_psql('crm', $defs_sql);
my $ela_before = $node->safe_psql('crm', $ela);
is($ela_before, '1={"phone": "+39 *** *** 123"};2={"phone": "+39 *** *** 188"}', 'before the dump, Energia sees its phones masked');

my $dump = $node->basedir . '/crm.dump';
my $plain = $node->basedir . '/crm.sql';
$node->command_ok(['pg_dump', '-Fc', '-d', $node->connstr('crm'), '-f', $dump], 'pg_dump');
$node->command_ok(['pg_dump', '-Fp', '-d', $node->connstr('crm'), '-f', $plain], 'pg_dump as plain SQL');
my $text = slurp_file($plain);
unlike($text, qr/3475550123|347 555 0123/, 'the dump holds no masked phone number in clear');
like($text, qr/Fibra/, 'it holds the unmasked values (the check can see clear text)');

$node->safe_psql('postgres', 'CREATE DATABASE crm_restored');
$node->command_ok(['pg_restore', '--exit-on-error', '-d', $node->connstr('crm_restored'), $dump],
                  'pg_restore into a fresh database');

is($node->safe_psql('crm_restored', $defs_sql), $defs_before, 'the field definitions are restored intact');
is($node->safe_psql('crm_restored', $ela), $ela_before, 'Energia sees the same masked fields after restore');
is($node->safe_psql('crm_restored', $tom), '1={"plan": "Fibra"};2={}', 'Telefonia still sees only its own field');
is($node->safe_psql('crm_restored', q{SET ROLE regress_sue;
       SELECT crmguard.unmask('contact', '1', 'phone', 'restore check')}),
   '+393475550123', 'a masked value decrypts in the restored database');
is($node->safe_psql('crm_restored', q{SET ROLE regress_ela;
       SELECT string_agg(k, ',') FROM crmguard.find_by_field('contact', 'phone', '0039 347 555 0188') k}),
   '2', 'find_by_field works on the restored blind index');
my ($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_ela;
       INSERT INTO contact VALUES (3, 'Copy', '{"phone": "+39 347 555 0123"}')});
like($err, qr/duplicate value for field "phone"/, 'uniqueness holds after restore');
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_tom;
       INSERT INTO contact VALUES (3, 'Copy', '{"phone": "+39 347 555 0999"}')});
like($err, qr/belongs to another project/, 'project scoping holds after restore');
$node->safe_psql('crm_restored', q{SET ROLE regress_tom; UPDATE contact SET fields = fields || '{"plan": "Mobile"}' WHERE id = 1});
is($node->safe_psql('crm_restored', q{SET ROLE regress_sue;
       SELECT crmguard.unmask('contact', '1', 'phone', 'after write-back')}),
   '+393475550123', 'a write-back after restore keeps the masked value');
is($node->safe_psql('crm_restored', 'SELECT ok FROM crmguard.verify_audit()'), 't',
   'the audit chain goes on after restore');

# a base backup and a hot standby hold the same ciphertext, and serve the projection
$node->safe_psql('crm', 'CHECKPOINT');
$node->backup('base');
my $backup_file = $node->backup_dir . '/base/' .
    $node->safe_psql('crm', q{SELECT pg_relation_filepath('contact')});
unlike(slurp_file($backup_file), qr/3475550123/, 'the base backup holds no masked phone number in clear');
my $standby = PostgreSQL::Test::Cluster->new('fields_standby');
$standby->init_from_backup($node, 'base', has_streaming => 1);
chmod 0600, $standby->data_dir . '/crmguard.key';
$standby->start;
$node->safe_psql('crm', q{SET ROLE regress_ela; INSERT INTO contact VALUES (4, 'Late', '{"phone": "+39 347 555 0444"}')});
$node->wait_for_catchup($standby);
is($standby->safe_psql('crm', $ela),
   '1={"phone": "+39 *** *** 123"};2={"phone": "+39 *** *** 188"};4={"phone": "+39 *** *** 444"}',
   'the standby shows Energia its masked phones');
is($standby->safe_psql('crm', $tom), '1={"plan": "Fibra"};2={};4={}', 'and Telefonia none of them');
is($standby->safe_psql('crm', q{SET ROLE regress_ela;
       SELECT string_agg(k, ',') FROM crmguard.find_by_field('contact', 'phone', '+39 347 555 0444') k}),
   '4', 'find_by_field works on the standby');
$standby->safe_psql('crm', 'CHECKPOINT');
unlike(slurp_file($standby->data_dir . '/' . $standby->safe_psql('crm', q{SELECT pg_relation_filepath('contact')})),
       qr/3475550444|3475550123/, 'the standby\'s copy of the table holds no masked phone number in clear');
$standby->stop;

$node->stop;
done_testing();
