# pg_dump and pg_restore keep principals and the audit chain.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_luca;
    SELECT crmguard.add_principal('dora', '{director,admin}');
    SELECT crmguard.add_principal('anna', '{area_manager}', 'dora', '{"zone": "Milano Nord"}');
    SELECT crmguard.add_principal('luca', '{agent}', 'anna', '{"zone": "Milano Nord"}', 'regress_luca');
    -- a manager added after its subordinate: rows no longer in tree order
    SELECT crmguard.add_principal('zeno', '{director}');
    UPDATE crmguard.principal SET manager_id = (SELECT id FROM crmguard.principal WHERE name = 'zeno')
     WHERE name = 'dora';
    UPDATE crmguard.principal SET active = false WHERE name = 'anna';
});

my $principals_sql = q{SELECT id, name, db_role, manager_id, roles, attributes, active
                         FROM crmguard.principal ORDER BY id};
my $before = $node->safe_psql('crm', $principals_sql);
my $audit_before = $node->safe_psql('crm', 'SELECT count(*) FROM crmguard.audit');

my $dump = $node->basedir . '/crm.dump';
$node->command_ok(['pg_dump', '-Fc', '-d', $node->connstr('crm'), '-f', $dump], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE crm_restored');
$node->command_ok(['pg_restore', '--exit-on-error', '-d', $node->connstr('crm_restored'), $dump],
                  'pg_restore into a fresh database');

is($node->safe_psql('crm_restored', $principals_sql), $before, 'principals are restored intact');
is($node->safe_psql('crm_restored', 'SELECT count(*) FROM crmguard.audit'), $audit_before,
   'the audit log is restored');
is($node->safe_psql('crm_restored', 'SELECT ok FROM crmguard.verify_audit()'), 't',
   'the restored audit chain verifies');
is($node->safe_psql('crm_restored', q{
       SET ROLE regress_luca;
       SELECT crmguard.current_principal() = (SELECT 3), crmguard.attr('zone');
   }), "t|Milano Nord", 'role mapping works in the restored database');
is($node->safe_psql('crm_restored', q{SELECT crmguard.add_principal('new', '{agent}', 'luca')}),
   '5', 'the id sequence is restored: new principals do not collide');
my ($ret, $out, $err) = $node->psql('crm_restored', q{
    UPDATE crmguard.principal SET manager_id = (SELECT id FROM crmguard.principal WHERE name = 'luca')
     WHERE name = 'zeno'});
like($err, qr/would form a cycle/, 'the cycle guard works in the restored database');
is($node->safe_psql('crm_restored', q{SELECT ok FROM crmguard.verify_audit()}), 't',
   'and the chain goes on after restore');

$node->stop;
done_testing();
