# A database owner (no superuser) holds a lock on crmguard's audit log open:
# BEGIN; ANALYZE crmguard.audit; and the other locks a non-superuser can take
# there.  Another session's audited commit must not wait for it: audited
# commits serialise on a chain lock no SQL can take, not on a table lock.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('audit_lock');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', q{
    CREATE ROLE regress_dbowner LOGIN;
    CREATE ROLE regress_auditor LOGIN;
    CREATE DATABASE crm OWNER regress_dbowner;
});
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    GRANT USAGE ON SCHEMA crmguard TO regress_auditor;
    GRANT SELECT ON crmguard.audit TO regress_auditor;
    GRANT EXECUTE ON FUNCTION crmguard.verify_audit() TO regress_auditor;
    SELECT crmguard.audit_event('before');
});

# An audited commit by another session, bounded: a wait for any lock longer
# than two seconds fails it.
sub audited_commit
{
    my ($label) = @_;
    my ($ret, $stdout, $stderr) = $node->psql('crm', qq{
        SET lock_timeout = '2s';
        BEGIN;
        SELECT crmguard.audit_event('$label');
        COMMIT;
    });
    return $ret == 0 && $stderr !~ /ERROR/;
}

my %held = (
    'BEGIN; ANALYZE crmguard.audit' => [ 'regress_dbowner', 'BEGIN; ANALYZE crmguard.audit;' ],
    'BEGIN; ANALYZE (the whole database)' => [ 'regress_dbowner', 'BEGIN; ANALYZE;' ],
    'BEGIN; LOCK TABLE crmguard.audit IN ACCESS SHARE MODE' =>
      [ 'regress_auditor', 'BEGIN; LOCK TABLE crmguard.audit IN ACCESS SHARE MODE;' ],
    'BEGIN; SELECT ... FROM crmguard.audit' =>
      [ 'regress_auditor', 'BEGIN; SELECT count(*) FROM crmguard.audit;' ],
    'BEGIN; verify_audit()' =>
      [ 'regress_auditor', 'BEGIN; SELECT ok FROM crmguard.verify_audit();' ],
);

foreach my $what (sort keys %held)
{
    my ($role, $sql) = @{ $held{$what} };
    my $holder = $node->background_psql('crm', on_error_stop => 0);
    $holder->query_safe("SET client_min_messages = error; SET ROLE $role");
    $holder->query_safe($sql);
    my $start = time;
    ok(audited_commit("while $what"), "an audited commit completes while $role holds $what open");
    cmp_ok(time - $start, '<', 10, "... within a short bound");
    $holder->query_safe('COMMIT');
    $holder->quit;
}

# the locks that would queue ahead of every writer are for superusers only
my ($ret, $stdout, $stderr) = $node->psql('crm', 'SET ROLE regress_dbowner; VACUUM FULL crmguard.audit');
like($stderr, qr/only a superuser can run VACUUM FULL on crmguard's table "audit"/,
     'the database owner cannot VACUUM FULL the audit log');

# the chain stays whole
is($node->safe_psql('crm', q{SELECT count(*) FROM crmguard.audit WHERE action LIKE 'while %'}),
   scalar(keys %held), 'every audited commit was chained');
is($node->safe_psql('crm', 'SELECT ok FROM crmguard.verify_audit()'), 't', 'the chain verifies');

$node->stop;
done_testing();
