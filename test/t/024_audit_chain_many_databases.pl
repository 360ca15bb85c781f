# Segments in flight are kept per database in 64 slots of shared memory, and
# a database's last segment stays there until that database's next writer.
# Once 64 databases had each written one audit entry, every slot stayed
# taken for good: in any further database a writer found no room and kept
# the chain lock through its commit, so audited commits there waited for each
# other's flush again (and for one held at commit). A slot whose segments all
# committed is now taken over.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AuditChainTest;

my $node = PostgreSQL::Test::Cluster->new('audit_many_db');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'crmguard'
fsync = off
});
$node->start;

# 64 databases with one audited commit each: each keeps its last segment
$node->safe_psql('template1', 'CREATE EXTENSION crmguard');
for my $i (1 .. 64)
{
    $node->safe_psql('postgres', "CREATE DATABASE busy$i");
    $node->safe_psql("busy$i", q{SELECT crmguard.audit_event('one')});
}
$node->safe_psql('postgres', 'CREATE DATABASE crm');
prepare_held_commit($node, 'crm');
my ($lock, $held) = hold_commit_after_chaining($node, 'crm');

my ($ret, $out, $err) = $node->psql('crm', q{
    SET lock_timeout = '3s';
    SELECT crmguard.audit_event('over it');
});
is($ret, 0, 'in a 65th database, a writer commits over a segment in flight');
is($err, '', 'without waiting for the chain lock');
is($node->safe_psql('crm', q{SELECT in_flight[4] FROM crmguard.audit WHERE action = 'over it'}),
   '0', 'naming that segment in flight');

$lock->query_safe('COMMIT');
$held->quit;
$lock->quit;
is($node->safe_psql('crm', q{SELECT ok FROM crmguard.verify_audit()}), 't', 'the chain verifies');
$node->safe_psql('busy1', q{SELECT crmguard.audit_event('two')});
is($node->safe_psql('busy1', q{SELECT ok FROM crmguard.verify_audit()}),
   't', 'a database whose slot was taken over writes and verifies');

done_testing();
