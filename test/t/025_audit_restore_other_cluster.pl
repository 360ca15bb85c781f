# A log restored into another cluster (with the key file copied, as the
# README says) verifies, and its rows' in_flight xids are not asked of that
# cluster's commit log, where the same numbers are other transactions'. The
# attack: in the copy, a superuser deletes the committed rows of a segment a
# later row named in flight, then makes the copy's transaction with that xid
# roll back; the gap must still be found.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AuditChainTest;

my $burn = PostgreSQL::Test::Utils::tempdir() . '/burn.sql';
open(my $fh, '>', $burn) or die;
print $fh "SELECT pg_current_xact_id();\n";
close $fh;

sub burn_to
{
	my ($node, $target) = @_;
	my $next = $node->safe_psql('crm', 'SELECT pg_snapshot_xmax(pg_current_snapshot())');
	return $next if $next >= $target;
	$node->command_ok(['pgbench', '-n', '-c', '1', '-t', $target - $next, '-f', $burn,
					   '-h', $node->host, '-p', $node->port, 'crm'], "burn xids up to $target");
	return $node->safe_psql('crm', 'SELECT pg_snapshot_xmax(pg_current_snapshot())');
}

my $a = PostgreSQL::Test::Cluster->new('original');
$a->init;
$a->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$a->start;
$a->safe_psql('postgres', 'CREATE DATABASE crm');
$a->safe_psql('crm', 'CREATE EXTENSION crmguard');
prepare_held_commit($a, 'crm');
# the held transaction's xid, well above what the copy's restore will use
burn_to($a, 20000);

# a commit held after chaining (its activity count waits for a lock), and a
# writer that commits over it, naming it in flight; then it commits too
my ($lock, $held) = hold_commit_after_chaining($a, 'crm');
$a->safe_psql('crm', q{SELECT crmguard.audit_event('over it')});
$lock->query_safe('COMMIT;');
ok($a->poll_query_until('crm', q{SELECT count(*) = 1 FROM crmguard.audit WHERE action = 'held'}),
   'the held transaction commits');
$lock->quit;
$held->quit;
my $xid = $a->safe_psql('crm', q{SELECT in_flight[1] FROM crmguard.audit WHERE action = 'over it'});
ok($xid >= 20000, "a later row names the held segment in flight (xid $xid)");
is($a->safe_psql('crm', q{SELECT in_flight[4] FROM crmguard.audit WHERE action = 'over it'}), '0',
   'named in progress, not rolled back');
is($a->safe_psql('crm', q{SELECT ok FROM crmguard.verify_audit()}), 't', 'the original verifies');
my $dump = $a->basedir . '/crm.dump';
$a->command_ok(['pg_dump', '-Fc', '-d', $a->connstr('crm'), '-f', $dump], 'pg_dump');

# another cluster, with the original's key
my $b = PostgreSQL::Test::Cluster->new('copy');
$b->init;
$b->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
copy_key($a->data_dir . '/crmguard.key', $b->data_dir . '/crmguard.key');
$b->start;
$b->safe_psql('postgres', 'CREATE DATABASE crm');
$b->safe_psql('postgres', 'CREATE ROLE rep');
$b->command_ok(['pg_restore', '--exit-on-error', '-d', $b->connstr('crm'), $dump], 'pg_restore into another cluster');
is($b->safe_psql('crm', q{SELECT ok FROM crmguard.verify_audit()}), 't', 'the copy verifies');

# the attack: the copy's transaction numbered like the held one rolls back
my $next = burn_to($b, $xid);
is($next, $xid, 'the copy is at the held transaction\'s xid');
$b->safe_psql('crm', 'BEGIN; SELECT pg_current_xact_id(); ROLLBACK;');
is($b->safe_psql('crm', "SELECT pg_xact_status('$xid'::xid8)"), 'aborted',
   'in the copy, that xid names a rolled-back transaction');
is($b->safe_psql('crm', q{
    BEGIN;
    DELETE FROM crmguard.audit WHERE action = 'held';
    SELECT ok::text || ' ' || (first_bad = (SELECT id FROM crmguard.audit WHERE action = 'over it'))::text
      FROM crmguard.verify_audit();
    ROLLBACK;}), 'false true',
   'a deleted committed segment is found: the copy\'s commit log is not asked about the original\'s xids');

sub copy_key
{
	my ($from, $to) = @_;
	open(my $in, '<:raw', $from) or die "cannot read $from";
	local $/;
	my $key = <$in>;
	close $in;
	open(my $out, '>:raw', $to) or die "cannot write $to";
	print $out $key;
	close $out;
	chmod 0600, $to;
}

done_testing();
