# A crash while a transaction's audit entries are chained but not committed:
# the next writer linked to them and committed before the crash. After
# recovery the chain verifies (the missing ids are named by the next row, and
# their transaction never committed), a writer after the restart, with no
# memory of the segments in flight, links to the committed head, and
# verify_audit has the segment sealed in the chain for when the commit log
# no longer tells.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AuditChainTest;

my $node = PostgreSQL::Test::Cluster->new('audit_crash');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION crmguard');
prepare_held_commit($node, 'postgres');
# the first transaction's entries are chained, its commit record not yet written
my ($lock, $held) = hold_commit_after_chaining($node, 'postgres');
$node->safe_psql('postgres', q{SELECT crmguard.audit_event('over it')});
is($node->safe_psql('postgres', q{SELECT in_flight[4] FROM crmguard.audit WHERE action = 'over it'}),
   '0', 'a writer commits meanwhile, naming the segment in flight');

$node->stop('immediate');
$held->{run}->kill_kill;
$lock->{run}->kill_kill;
$node->start;

is($node->safe_psql('postgres', q{SELECT string_agg(action, ',' ORDER BY id) FROM crmguard.audit}),
   'add_principal,track,before,over it', 'the held transaction is gone with the crash');
$node->safe_psql('postgres', q{SELECT crmguard.audit_event('after the restart')});
is($node->safe_psql('postgres', q{
    SELECT a.prev_hash = b.hash FROM crmguard.audit a, crmguard.audit b
     WHERE a.action = 'after the restart' AND b.action = 'over it'}), 't',
   'a writer after the restart, knowing nothing in flight, links to the committed head');
is($node->safe_psql('postgres', q{SELECT ok FROM crmguard.verify_audit()}), 't',
   'the chain verifies: the missing ids were named by a transaction that never committed');

# the commit log says so only until VACUUM truncates it: verify_audit has the
# worker write it into the chain
ok($node->poll_query_until('postgres', q{
    SELECT count(*) = 1 FROM crmguard.audit s, crmguard.audit o
     WHERE s.action = 'audit_gap_sealed' AND o.action = 'over it'
       AND s.in_flight[cardinality(s.in_flight) - 3 : cardinality(s.in_flight)]
           = o.in_flight[1:3] || 1::bigint}),
   'the rolled-back segment is sealed: a row names it rolled back');
is($node->safe_psql('postgres', q{SELECT ok FROM crmguard.verify_audit()}), 't',
   'the chain verifies with the seal');
$node->safe_psql('postgres', q{SELECT crmguard.verify_audit()});
is($node->safe_psql('postgres', q{SELECT count(*) FROM crmguard.audit WHERE action = 'audit_gap_sealed'}),
   '1', 'a sealed segment is not sealed again');

done_testing();
