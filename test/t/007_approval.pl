# Approvals with a real server: the background worker escalates a step whose
# timeout passed, with nobody calling run_due(); a pending row stays locked
# across a restart and through pg_dump / pg_restore, and its request goes on.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('approval');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_luca;
    CREATE ROLE regress_anna;
    CREATE ROLE regress_dora;
    SELECT crmguard.add_principal('dora', '{director}', NULL, '{}', 'regress_dora');
    SELECT crmguard.add_principal('anna', '{area_manager}', 'dora', '{}', 'regress_anna');
    SELECT crmguard.add_principal('luca', '{agent}', 'anna', '{}', 'regress_luca');
    CREATE TABLE deal (id int PRIMARY KEY, owner_id bigint, discount int, status text DEFAULT 'Draft');
    INSERT INTO deal VALUES (1, (SELECT id FROM crmguard.principal WHERE name = 'luca'), 0),
                            (2, (SELECT id FROM crmguard.principal WHERE name = 'luca'), 0);
    GRANT SELECT, UPDATE ON deal TO regress_luca, regress_anna, regress_dora;
    SELECT crmguard.create_approval_process('discount', 'deal', '{"field": "discount", "op": ">=", "value": 20}',
        '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}, "timeout": "1 second", "on_timeout": "escalate"}]',
        on_approve => '[{"set": {"status": "Approved"}}]', auto_submit => '{update}');
});

# the worker, not run_due(), escalates the step once its second is over
$node->safe_psql('crm', q{SET ROLE regress_luca; UPDATE deal SET discount = 30 WHERE id = 1});
my $escalated = q{SELECT p.name FROM crmguard.approval_request_state r, crmguard.principal p
                   WHERE r.row_key = '1' AND p.id = ANY (r.approvers)};
is($node->safe_psql('crm', $escalated), 'anna', 'the manager approves first');
ok($node->poll_query_until('crm', "SELECT ($escalated) = 'dora'"),
   'the background worker escalates the step after its timeout');
ok($node->safe_psql('crm', q{SELECT count(*) FROM crmguard.approval_history WHERE event = 'escalated'}) >= 1,
   'the escalation is in the request history');

# a second request, and a restart: the lock holds, the request goes on
$node->safe_psql('crm', q{SET ROLE regress_luca; UPDATE deal SET discount = 25 WHERE id = 2});
$node->restart;
my ($ret, $out, $err) = $node->psql('crm', q{SET ROLE regress_luca; UPDATE deal SET discount = 50 WHERE id = 2});
like($err, qr/locked by pending approval request/, 'after a restart the pending row is still locked');

# pg_dump and pg_restore: processes, requests, history and the lock come back
# (the second request's clock is stopped, so no escalation races the test)
$node->safe_psql('crm', q{UPDATE crmguard.approval_request_state SET step_timeout = NULL WHERE row_key = '2'});
# an "all" step half approved before the dump: Anna approved, Dora has not
$node->safe_psql('crm', q{
    CREATE TABLE campaign (id int PRIMARY KEY, status text DEFAULT 'Draft');
    INSERT INTO campaign VALUES (1);
    GRANT SELECT, UPDATE ON campaign TO regress_luca, regress_anna, regress_dora;
    SELECT crmguard.create_approval_process('launch', 'campaign', NULL,
        '[{"name": "Both", "approvers": [{"principal": "anna"}, {"principal": "dora"}], "mode": "all"}]',
        on_approve => '[{"set": {"status": "Active"}}]');
    SET ROLE regress_luca;
    SELECT crmguard.submit_for_approval('campaign', '1');
    SET ROLE regress_anna;
    SELECT crmguard.approve((SELECT id FROM crmguard.approval_request WHERE row_key = '1' AND process = 'launch'));
});

my $dump = $node->basedir . '/crm.dump';
$node->command_ok(['pg_dump', '-Fc', '-d', $node->connstr('crm'), '-f', $dump], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE crm_restored');
$node->command_ok(['pg_restore', '--exit-on-error', '-d', $node->connstr('crm_restored'), $dump],
                  'pg_restore into a fresh database');
my $state = q{SELECT string_agg(format('%s:%s:%s', p.process_name, r.row_key, r.state), ',' ORDER BY r.id)
                FROM crmguard.approval_request_state r JOIN crmguard.approval_process p ON p.id = r.process};
is($node->safe_psql('crm_restored', $state), $node->safe_psql('crm', $state), 'the requests are restored intact');
($ret, $out, $err) = $node->psql('crm_restored', q{SET ROLE regress_luca; UPDATE deal SET discount = 50 WHERE id = 2});
like($err, qr/locked by pending approval request/, 'the restored pending row is locked');
# whoever the step waits for (the worker may have escalated it before the clock stopped)
my $approver = $node->safe_psql('crm_restored', q{SELECT p.name FROM crmguard.approval_request_state r,
    crmguard.principal p WHERE r.row_key = '2' AND p.id = r.approvers[1]});
is($node->safe_psql('crm_restored', qq{SET ROLE regress_$approver;
    SELECT string_agg(format('%s:%s', row_key, submitted_by), ',') FROM crmguard.my_approvals()
     WHERE process = 'discount'}),
   '2:luca', 'the restored request waits in its approver\'s inbox, once');
# the restore loads the requests, then their history: who approved stays off the list
is($node->safe_psql('crm_restored', q{SET ROLE regress_anna;
    SELECT count(*) FROM crmguard.my_approvals() WHERE process = 'launch'}),
   '0', 'an approver who approved before the dump is not asked again after the restore');
is($node->safe_psql('crm_restored', q{SET ROLE regress_dora;
    SELECT count(*) FROM crmguard.my_approvals() WHERE process = 'launch'}),
   '1', 'the approver still to decide is asked');
$node->safe_psql('crm_restored', q{SET ROLE regress_dora;
    SELECT crmguard.approve((SELECT id FROM crmguard.approval_request WHERE process = 'launch'))});
is($node->safe_psql('crm_restored', q{SELECT status FROM campaign WHERE id = 1}), 'Active',
   'her approval completes the step begun before the dump');
$node->safe_psql('crm_restored', qq{SET ROLE regress_$approver;
    SELECT crmguard.approve((SELECT id FROM crmguard.approval_request WHERE row_key = '2'))});
is($node->safe_psql('crm_restored', q{SELECT status FROM deal WHERE id = 2}), 'Approved',
   'the restored request is approved and its action runs');
$node->safe_psql('crm_restored', q{SET ROLE regress_luca; UPDATE deal SET discount = 0 WHERE id = 2});
pass('the approved row is free again');
is($node->safe_psql('crm_restored', 'SELECT ok FROM crmguard.verify_audit()'), 't',
   'the audit chain goes on after restore');

$node->stop;
done_testing();
