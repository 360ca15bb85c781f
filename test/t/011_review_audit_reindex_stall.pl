# Review attack on "no one can stall others" (issue 11, hole 7): the
# database owner, a non-superuser, may REINDEX DATABASE, which takes a SHARE
# lock on crmguard.audit.  Queued behind any open transaction that wrote an
# audit entry (every pooled transaction that assumes an identity holds ROW
# EXCLUSIVE on crmguard.audit until it ends), that request makes every other
# session's audited action wait: assume(), verify_otp(), guarded refusals...
# The check states the SECURE behaviour: another client's audited
# transaction does not wait for the database owner's REINDEX.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time sleep);

my $node = PostgreSQL::Test::Cluster->new('review_reindex');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE ROLE dbowner LOGIN; CREATE DATABASE crm OWNER dbowner');
$node->safe_psql('crm', q{CREATE EXTENSION crmguard; SELECT crmguard.add_principal('alice', '{agent}');});
my $token = $node->safe_psql('crm', q{SELECT crmguard.issue_token('alice')});
my @conn = ('-X', '-h', $node->host, '-p', $node->port, '-d', 'crm');

# an ordinary pooled transaction that assumed an identity and is still running
my $holder = IPC::Run::start([ 'psql', @conn, '-c',
    "BEGIN; SELECT crmguard.assume('$token'); SELECT pg_sleep(6); COMMIT;" ],
    '>', \my $h_out, '2>', \my $h_err);
sleep(1);
# the database owner reindexes its database
my $reindex = IPC::Run::start([ 'psql', @conn, '-U', 'dbowner', '-c', 'REINDEX DATABASE crm' ],
    '>', \my $r_out, '2>', \my $r_err);
sleep(1);
# another client's audited transaction
my $start = time();
my ($ret, $out, $err) = $node->psql('crm',
    "SET lock_timeout = '2s'; BEGIN; SELECT crmguard.assume('$token') IS NOT NULL; COMMIT;");
my $elapsed = time() - $start;
$holder->finish;
$reindex->finish;
unlike($err, qr/lock timeout/, 'audit_reindex_stall: an audited transaction does not wait for the database owner\'s REINDEX');
cmp_ok($elapsed, '<', 2, "audit_reindex_stall: it took ${\ sprintf('%.1f', $elapsed)} s");
like($r_err . $r_out, qr/REINDEX|ERROR|WARNING/, 'the REINDEX ran (or was refused)');

# what else a database owner may run that would lock crmguard's tables
my @owner_cmds = (
    [ 'REINDEX SYSTEM crm',                    qr/only a superuser can run REINDEX SYSTEM here/ ],
    [ 'REINDEX SCHEMA crmguard',               qr/only a superuser can run REINDEX SCHEMA here/ ],
    [ 'REINDEX TABLE crmguard.audit',          qr/only a superuser can run REINDEX on crmguard's table "audit"/ ],
    [ 'REINDEX INDEX crmguard.audit_pkey',     qr/only a superuser can run REINDEX on crmguard's table "audit"/ ],
    [ 'REINDEX TABLE CONCURRENTLY crmguard.audit', qr/only a superuser can run REINDEX on crmguard's table "audit"/ ],
    [ 'VACUUM FULL',                           qr/only a superuser can run VACUUM FULL of the whole database here/ ],
    [ 'VACUUM (FULL, ANALYZE)',                qr/only a superuser can run VACUUM FULL of the whole database here/ ],
    [ 'CLUSTER crmguard.audit USING audit_pkey', qr/must be owner of table audit|permission denied/ ],
);
for my $c (@owner_cmds) {
    my ($r, $o, $e) = $node->psql('crm', "SET ROLE dbowner; $c->[0]");
    like($e, $c->[1], "the database owner's $c->[0] is refused");
}
like($r_err, qr/only a superuser can run REINDEX DATABASE here/, 'the queued REINDEX DATABASE was refused');
like($r_err, qr/HINT:  Run REINDEX on your own tables by name, or ask a superuser/, 'the refusal says what to do instead');
# the database owner's own tables and the non-blocking maintenance still work
$node->safe_psql('crm', q{SET ROLE dbowner; CREATE TABLE public.mine (id int PRIMARY KEY);});
for my $c ('REINDEX TABLE public.mine', 'VACUUM FULL public.mine', 'VACUUM', 'ANALYZE', 'VACUUM (ANALYZE)') {
    my ($r, $o, $e) = $node->psql('crm', "SET ROLE dbowner; $c");
    is($r, 0, "the database owner may still run $c") or diag($e);
}
# a superuser may
is(($node->psql('crm', 'REINDEX DATABASE crm'))[0], 0, 'a superuser may REINDEX DATABASE');
# the refusals are audited
$node->poll_query_until('crm',
    q{SELECT count(*) >= 8 FROM crmguard.audit WHERE action = 'maintenance_refused'})
  or diag('the refusals were not audited');
is($node->safe_psql('crm', q{SELECT count(*) > 0 FROM crmguard.audit WHERE action = 'maintenance_refused' AND detail->>'command' = 'REINDEX DATABASE'}),
   't', 'the refused REINDEX DATABASE is in the audit log');
$node->stop;
done_testing();
