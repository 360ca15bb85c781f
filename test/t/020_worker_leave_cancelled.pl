# A command that needs a database to itself (here ALTER DATABASE ... RENAME
# TO) asks crmguard's worker to leave and waits for it a few seconds.  When
# that command is cancelled during the wait (statement_timeout, a cancel
# request), the worker must not stay asked to leave: it goes on serving its
# database, whose approval timeouts and queued work would otherwise wait for
# the next job that happens to start it again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('worker_leave_cancelled');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', 'CREATE ROLE regress_dba LOGIN CREATEDB; CREATE DATABASE crm OWNER regress_dba');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_rep;
    SELECT crmguard.add_principal('mgr', '{area_manager}');
    SELECT crmguard.add_principal('rep', '{agent}', 'mgr', db_role => 'regress_rep');
    CREATE TABLE deal (id int PRIMARY KEY, owner_id bigint, discount int);
    INSERT INTO deal VALUES (1, 2, 0);
    GRANT SELECT, UPDATE ON deal TO regress_rep;
    -- a step with a timeout: the worker watches its clock, and never leaves on its own
    SELECT crmguard.create_approval_process('discount', 'deal', '{"field": "discount", "op": ">=", "value": 20}',
        '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}, "timeout": "1 day"}]',
        auto_submit => '{update}');
    CREATE TABLE delivery (id int PRIMARY KEY, phone text, status text);
    INSERT INTO delivery VALUES (1, '+39 347 555 0123', 'Out for delivery'), (2, '+39 347 555 0124', 'Out for delivery');
    SELECT crmguard.create_otp_rule('Delivery OTP', 'delivery', 'status', '{Delivered}', 'phone');
});
$node->safe_psql('crm', q{SET ROLE regress_rep; UPDATE deal SET discount = 30 WHERE id = 1});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'crmguard worker' AND datname = 'crm'})
  or die 'no crmguard worker in crm';

# the worker is held up in a job: its audit record waits for a lock
my $holder = $node->background_psql('crm', on_error_stop => 0);
$holder->query_safe('BEGIN; LOCK TABLE crmguard.audit IN ACCESS EXCLUSIVE MODE;');
$node->psql('crm', q{UPDATE delivery SET status = 'Delivered' WHERE id = 1});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'crmguard worker' AND datname = 'crm' AND wait_event_type = 'Lock'})
  or die 'the worker did not wait for the audit lock';

# the owner's rename waits for the busy worker, and is cancelled
my ($ret, $out, $err) = $node->psql('postgres', q{SET statement_timeout = '1s'; ALTER DATABASE crm RENAME TO crm_renamed},
	extra_params => [ '-U', 'regress_dba' ]);
like($err, qr/canceling statement due to statement timeout/, 'the rename is cancelled while the worker is busy');

$holder->query_safe('COMMIT');
$holder->quit;
$node->poll_query_until('crm', q{SELECT count(*) > 0 FROM crmguard.audit WHERE action = 'otp_required'})
  or die 'the held-up job never finished';
pass('the worker finished the job it was held up in');

# it stays, or comes back, for its database: no new job is needed to start
# it.  A worker asked to leave would be gone within fifteen seconds (it
# naps up to ten between rounds, and its lock wait used up the wake-up);
# then it is given ten to come back.
is($node->safe_psql('postgres', q{
    DO $$
    BEGIN
        FOR i IN 1..150 LOOP
            PERFORM pg_catalog.pg_stat_clear_snapshot();
            EXIT WHEN (SELECT count(*) FROM pg_stat_activity
                        WHERE backend_type = 'crmguard worker' AND datname = 'crm') = 0;
            PERFORM pg_sleep(0.1);
        END LOOP;
        FOR i IN 1..100 LOOP
            PERFORM pg_catalog.pg_stat_clear_snapshot();
            EXIT WHEN (SELECT count(*) FROM pg_stat_activity
                        WHERE backend_type = 'crmguard worker' AND datname = 'crm') = 1;
            PERFORM pg_sleep(0.1);
        END LOOP;
    END
    $$;
    SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'crmguard worker' AND datname = 'crm';
}), '1', 'a cancelled command leaves the worker serving its database');

# and the owner's command, tried again, still gets the database to itself
($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE crm RENAME TO crm_renamed', extra_params => [ '-U', 'regress_dba' ]);
is($ret, 0, 'the rename succeeds when tried again');
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'crmguard worker' AND datname = 'crm_renamed'})
  or die 'no crmguard worker in crm_renamed';
pass('the worker came back to the renamed database');

$node->stop;
done_testing();
