# pg_dump and pg_restore keep visibility rules: the restored table is
# guarded for the same principals, and its rules can still be changed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('vis_dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_patricie;
    CREATE ROLE regress_luca;
    SELECT crmguard.add_principal('patricie', '{portal}', NULL, '{"contact_id": 10}', 'regress_patricie');
    SELECT crmguard.add_principal('luca', '{agent}', NULL, '{}', 'regress_luca');
    CREATE TABLE quote (id int PRIMARY KEY, contact_id int, stage text, owner_id bigint);
    INSERT INTO quote VALUES (1, 10, 'Approved', 2), (2, 10, 'Negotiation', 2), (3, 20, 'Approved', 9);
    GRANT SELECT ON quote TO regress_patricie, regress_luca;
    SELECT crmguard.expose('quote', 'portal: own approved quotes', 'portal',
        '{"all": [{"field": "contact_id", "op": "=", "principal": "contact_id"},
                  {"field": "stage", "op": "=", "value": "Approved"}]}');
    SELECT crmguard.expose_by_owner('quote', 'owner_id', 'agent');
});

my $rules_sql = q{SELECT rule_name, target::text, kind, audience, criteria, owner_column, hierarchy, access, compiled
                    FROM crmguard.visibility_rule ORDER BY id};
my $patricie = q{SET ROLE regress_patricie; SELECT string_agg(id::text, ',' ORDER BY id) FROM quote};
my $luca = q{SET ROLE regress_luca; SELECT string_agg(id::text, ',' ORDER BY id) FROM quote};
my $rules_before = $node->safe_psql('crm', $rules_sql);
is($node->safe_psql('crm', $patricie), '1', 'before the dump, Patricie sees her approved quote');
is($node->safe_psql('crm', $luca), '1,2', 'and Luca the quotes he owns');

my $dump = $node->basedir . '/crm.dump';
$node->command_ok(['pg_dump', '-Fc', '-d', $node->connstr('crm'), '-f', $dump], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE crm_restored');
$node->command_ok(['pg_restore', '--exit-on-error', '-d', $node->connstr('crm_restored'), $dump],
                  'pg_restore into a fresh database');

is($node->safe_psql('crm_restored', $rules_sql), $rules_before, 'the rules are restored intact');
is($node->safe_psql('crm_restored', q{SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'quote'::regclass}),
   't', 'row-level security is enabled and forced on the restored table');
is($node->safe_psql('crm_restored', $patricie), '1', 'Patricie sees the same quote after restore');
is($node->safe_psql('crm_restored', $luca), '1,2', 'Luca sees the same quotes after restore');

$node->safe_psql('crm_restored', q{SELECT crmguard.unexpose('portal: own approved quotes')});
is($node->safe_psql('crm_restored', $patricie), '', 'unexpose works on the restored rules');
$node->safe_psql('crm_restored', q{SELECT crmguard.expose('quote', 'portal: approved', 'portal',
                                   '{"field": "stage", "op": "=", "value": "Approved"}')});
is($node->safe_psql('crm_restored', $patricie), '1,3', 'and so does a new rule');
is($node->safe_psql('crm_restored', 'SELECT ok FROM crmguard.verify_audit()'), 't',
   'the audit chain goes on after restore');

$node->stop;
done_testing();
