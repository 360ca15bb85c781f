# crmguard's worker stays connected to its database while it has work (an
# approval step with a timeout keeps it there for good), and PostgreSQL's
# DROP DATABASE, CREATE DATABASE ... TEMPLATE and ALTER DATABASE ... RENAME TO
# refuse a database someone is connected to.  The worker leaves for them,
# when the caller may run them, and comes back when the database is still
# there.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('worker_leaves');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

sub worker_of
{
	my ($db) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'crmguard worker' AND datname = '$db'});
}

sub wait_for_worker
{
	my ($db) = @_;
	$node->poll_query_until('postgres',
		qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'crmguard worker' AND datname = '$db'})
	  or die "no crmguard worker in $db";
}

$node->safe_psql('postgres', 'CREATE ROLE regress_dba LOGIN CREATEDB; CREATE ROLE regress_other LOGIN CREATEDB');
$node->safe_psql('postgres', 'CREATE DATABASE crm OWNER regress_dba');
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
    INSERT INTO delivery VALUES (1, '+39 347 555 0123', 'Out for delivery');
    SELECT crmguard.create_otp_rule('Delivery OTP', 'delivery', 'status', '{Delivered}', 'phone');
});
$node->safe_psql('crm', q{SET ROLE regress_rep; UPDATE deal SET discount = 30 WHERE id = 1});
# a refused change: the worker issues the challenge and writes the audit record
$node->psql('crm', q{UPDATE delivery SET status = 'Delivered' WHERE id = 1});
wait_for_worker('crm');

# a role that may not rename the database does not make the worker leave
my $pid = $node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'crmguard worker' AND datname = 'crm'});
my ($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE crm RENAME TO crm_taken', extra_params => [ '-U', 'regress_other' ]);
like($err, qr/must be owner of database crm/, 'a role that does not own the database cannot rename it');
is($node->safe_psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'crmguard worker' AND datname = 'crm'}),
	$pid, 'and the worker stayed: a refused command does not make it leave');

# the owner copies the database while the worker is there
($ret, $out, $err) = $node->psql('postgres', 'CREATE DATABASE crm_copy TEMPLATE crm', extra_params => [ '-U', 'regress_dba' ]);
is($ret, 0, 'CREATE DATABASE ... TEMPLATE of a database with a crmguard worker succeeds');
is($err, '', 'without "source database is being accessed by other users"');
wait_for_worker('crm');
pass('the worker came back to the template database');
is($node->safe_psql('crm_copy', q{SELECT count(*) FROM crmguard.approval_request_state WHERE state = 'pending'}),
	'1', 'the copy holds the pending request');

# the owner renames it
($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE crm RENAME TO crm_renamed', extra_params => [ '-U', 'regress_dba' ]);
is($ret, 0, 'ALTER DATABASE ... RENAME TO of a database with a crmguard worker succeeds');
wait_for_worker('crm_renamed');
pass('the worker came back to the renamed database');
$node->poll_query_until('crm_renamed', q{SELECT count(*) > 0 FROM crmguard.audit WHERE action = 'otp_required'})
  or die 'no audit record of the refused change';
pass('the refused change is in the audit log of the renamed database');

# and drops it, and the copy
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE crm_renamed', extra_params => [ '-U', 'regress_dba' ]);
is($ret, 0, 'DROP DATABASE of a database with a crmguard worker succeeds');
is($err, '', 'without "database is being accessed by other users"');
$node->psql('crm_copy', q{UPDATE delivery SET status = 'Delivered' WHERE id = 1});
wait_for_worker('crm_copy');
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE crm_copy');
is($ret, 0, 'a superuser drops the copy while its worker is there');
is(worker_of('crm_copy'), '0', 'no worker is left behind');

# the other databases' workers still serve them
$node->safe_psql('postgres', q{
    CREATE EXTENSION crmguard;
    CREATE TABLE delivery (id int PRIMARY KEY, phone text, status text);
    INSERT INTO delivery VALUES (1, '+39 347 555 0199', 'Out for delivery');
    SELECT crmguard.create_otp_rule('Delivery OTP', 'delivery', 'status', '{Delivered}', 'phone');
});
$node->psql('postgres', q{UPDATE delivery SET status = 'Delivered' WHERE id = 1});
$node->poll_query_until('postgres', q{SELECT count(*) > 0 FROM crmguard.audit WHERE action = 'otp_required'})
  or die 'no audit record in postgres';
pass('another database queues and gets its work done after the drops');

$node->stop;
done_testing();
