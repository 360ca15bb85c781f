# A segment of the audit chain stays in shared memory until the next writer
# of its database looks at how its transaction ended. In a database audited
# rarely, VACUUM may meanwhile have truncated the commit log past that
# transaction: asking the commit log then fails ("could not access status of
# transaction"), and every audited commit of that database failed with it
# until the server restarted. A transaction the commit log no longer knows
# is long over: the next writer forgets its segment, and the chain verifies.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('audit_clog');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'crmguard'
autovacuum = off
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION crmguard;
    CREATE TABLE public.burn (i int);
});
# the last audited commit of this database: its segment stays known
$node->safe_psql('postgres', q{SELECT crmguard.audit_event('long ago')});
my $xid = $node->safe_psql('postgres', 'SELECT pg_current_xact_id()');

# more than one commit-log segment (1,048,576 xids) later, every database frozen
$node->safe_psql('postgres', q{
    SET synchronous_commit = off;
    DO $$ BEGIN
        FOR i IN 1..1100000 LOOP
            BEGIN
                INSERT INTO public.burn VALUES (i);
                RAISE EXCEPTION 'burn';
            EXCEPTION WHEN raise_exception THEN NULL;
            END;
        END LOOP;
    END $$;
});
$node->safe_psql('postgres', q{UPDATE pg_database SET datallowconn = true WHERE datname = 'template0'});
$node->safe_psql($_, 'VACUUM FREEZE') for qw(template0 template1 postgres);
ok(!-e $node->data_dir . '/pg_xact/0000', "the commit log no longer holds transaction $xid");

my ($ret, $out, $err) = $node->psql('postgres', q{SELECT crmguard.audit_event('now')});
is($ret, 0, 'an audited commit succeeds after the commit log was truncated');
is($err, '', 'without an error about the forgotten transaction');
is($node->safe_psql('postgres', q{SELECT in_flight IS NULL FROM crmguard.audit WHERE action = 'now'}),
   't', 'the forgotten segment is not named in flight');
is($node->safe_psql('postgres', q{
    SELECT a.prev_hash = b.hash FROM crmguard.audit a, crmguard.audit b
     WHERE a.action = 'now' AND b.action = 'long ago'}), 't',
   'the new entry links to the committed head');
$node->safe_psql('postgres', q{SELECT crmguard.audit_event('and again')});
is($node->safe_psql('postgres', q{SELECT ok FROM crmguard.verify_audit()}), 't', 'the chain verifies');

done_testing();
