# Many sessions committing audit entries at once leave one unbroken chain,
# and a transaction left open after an audited action blocks nobody.
# (It caught a deadlock between two first writers of a backend.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('audit');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION crmguard');

# an idle transaction holding an audited action must not stall the others
my $idle = $node->background_psql('postgres');
$idle->query_safe("BEGIN; SELECT crmguard.audit_event('left open');");

$node->pgbench(
    '--no-vacuum --client=4 --jobs=2 --transactions=100 --host=' . $node->host
      . ' --port=' . $node->port,
    0, [qr{actually processed: 400/400}, qr{number of failed transactions: 0 }], [qr{^$}],
    'four clients commit audited transactions concurrently',
    {
        'audit_read_committed' => q{
            BEGIN;
            SELECT crmguard.audit_event('rc one');
            SELECT crmguard.audit_event('rc two');
            COMMIT;
        },
        'audit_repeatable_read' => q{
            BEGIN ISOLATION LEVEL REPEATABLE READ;
            SELECT count(*) FROM crmguard.audit;
            SELECT crmguard.audit_event('rr');
            COMMIT;
        },
    },
    'postgres');
$idle->query_safe('COMMIT');
$idle->quit;

is($node->safe_psql('postgres', q{SELECT count(*) FROM crmguard.audit WHERE action IN ('rc one', 'rr')}),
   '400', 'every committed transaction left its entries');
is($node->safe_psql('postgres', 'SELECT ok FROM crmguard.verify_audit()'), 't',
   'the chain verifies after concurrent writers');
is($node->safe_psql('postgres', q{
       SELECT count(*) FROM crmguard.audit a JOIN crmguard.audit b
           ON a.prev_hash = b.prev_hash AND a.id < b.id}), '0',
   'no two rows link to the same predecessor: the chain never forks');
is($node->safe_psql('postgres', q{SELECT max(id) = count(*) FROM crmguard.audit}), 't',
   'ids are contiguous');
is($node->safe_psql('postgres', q{SELECT count(*) FROM crmguard.audit WHERE action = 'left open'}), '1',
   'the long transaction was chained when it committed');

$node->stop;
done_testing();
