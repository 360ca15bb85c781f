# A step timeout pending across a restart is still processed: the worker is
# not running after the restart, and the first use of approvals in the
# database (here, a change to another row of the table, which reads the
# row lock's cache) finds the pending step with a timeout and wakes it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('timeout_restart');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_luca;
    SELECT crmguard.add_principal('dora', '{director}');
    SELECT crmguard.add_principal('anna', '{area_manager}', 'dora');
    SELECT crmguard.add_principal('luca', '{agent}', 'anna', '{}', 'regress_luca');
    CREATE TABLE deal (id int PRIMARY KEY, owner_id bigint, discount int, note text);
    INSERT INTO deal VALUES (1, (SELECT id FROM crmguard.principal WHERE name = 'luca'), 0, ''),
                            (2, (SELECT id FROM crmguard.principal WHERE name = 'luca'), 0, '');
    GRANT SELECT, UPDATE ON deal TO regress_luca;
    SELECT crmguard.create_approval_process('discount', 'deal', '{"field": "discount", "op": ">=", "value": 20}',
        '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}, "timeout": "4 seconds", "on_timeout": "escalate"}]',
        auto_submit => '{update}');
});
my $approver = q{SELECT p.name FROM crmguard.approval_request_state r, crmguard.principal p
                  WHERE r.row_key = '1' AND p.id = ANY (r.approvers)};

# submitted, then the server stops before the step's time is up
$node->safe_psql('crm', q{SET ROLE regress_luca; UPDATE deal SET discount = 30 WHERE id = 1});
$node->stop('immediate');
$node->start;
is($node->safe_psql('crm', $approver), 'anna', 'the step still waits for the manager after the restart');

# the first use of approvals after the restart: a change to the other row
$node->safe_psql('crm', q{SET ROLE regress_luca; UPDATE deal SET note = 'called' WHERE id = 2});
ok($node->poll_query_until('crm', "SELECT ($approver) = 'dora'"),
   'the worker, woken by that first use, escalates the step once its time is up');

$node->stop;
done_testing();
