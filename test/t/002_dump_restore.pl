# pg_dump and pg_restore keep principals and the audit chain.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_luca;
    SELECT crmguard.add_principal('dora', '{director,admin}');
    SELECT crmguard.add_principal('anna', '{area_manager}', 'dora', '{"zone": "Milano Nord"}');
    SELECT crmguard.add_principal('luca', '{agent}', 'anna', '{"zone": "Milano Nord"}', 'regress_luca');
    -- a manager added after its subordinate: rows no longer in tree order
    SELECT crmguard.add_principal('zeno', '{director}');
    UPDATE crmguard.principal SET manager_id = (SELECT id FROM crmguard.principal WHERE name = 'zeno')
     WHERE name = 'dora';
    UPDATE crmguard.principal SET active = false WHERE name = 'anna';
});

my $principals_sql = q{SELECT id, name, db_role, manager_id, roles, attributes, active
                         FROM crmguard.principal ORDER BY id};
my $before = $node->safe_psql('crm', $principals_sql);
my $audit_before = $node->safe_psql('crm', 'SELECT count(*) FROM crmguard.audit');

my $dump = $node->basedir . '/crm.dump';
my ($dump_out, $dump_err) = run_command(['pg_dump', '-Fc', '-d', $node->connstr('crm'), '-f', $dump]);
ok(-s $dump, 'pg_dump');
# The one warning pg_dump gives: crmguard.principal references itself (manager_id).
# pg_dump orders the data of extension tables by their foreign keys and cannot
# order a table after itself; harmless (README, Operations), checked below.  A
# real cycle between two tables would name both and fail here.
my @warned = $dump_err =~ /^pg_dump: detail: (\S+)$/mg;
is_deeply(\@warned, ['principal'],
          'pg_dump warns about circular foreign keys on crmguard.principal only (its self-reference)');
my @other = grep { !/^pg_dump: (warning: there are circular foreign-key constraints on this table:|detail: principal|hint: .*)$/ }
            split /\n/, $dump_err;
is_deeply(\@other, [], 'and about nothing else');

# the dumped rows are not in manager order: some row names a manager whose row comes later
my $principal_copy = (run_command(['pg_restore', '--data-only', '-t', 'principal', '-f', '-', $dump]))[0];
my @rows = map { [ split /\t/ ] } grep { /^\d+\t/ } split /\n/, $principal_copy;
my %position = map { $rows[$_][0] => $_ } 0 .. $#rows;
ok((grep { $_->[3] ne '\\N' && $position{ $_->[3] } > $position{ $_->[0] } } @rows) > 0,
   'the dump holds a principal before its manager');
$node->safe_psql('postgres', 'CREATE DATABASE crm_restored');
$node->command_ok(['pg_restore', '--exit-on-error', '-d', $node->connstr('crm_restored'), $dump],
                  'pg_restore into a fresh database');

is($node->safe_psql('crm_restored', $principals_sql), $before, 'principals are restored intact');
is($node->safe_psql('crm_restored', 'SELECT count(*) FROM crmguard.audit'), $audit_before,
   'the audit log is restored');
is($node->safe_psql('crm_restored', 'SELECT ok FROM crmguard.verify_audit()'), 't',
   'the restored audit chain verifies');
is($node->safe_psql('crm_restored', q{
       SET ROLE regress_luca;
       SELECT crmguard.current_principal() = (SELECT 3), crmguard.attr('zone');
   }), "t|Milano Nord", 'role mapping works in the restored database');
is($node->safe_psql('crm_restored', q{SELECT crmguard.add_principal('new', '{agent}', 'luca')}),
   '5', 'the id sequence is restored: new principals do not collide');
my ($ret, $out, $err) = $node->psql('crm_restored', q{
    UPDATE crmguard.principal SET manager_id = (SELECT id FROM crmguard.principal WHERE name = 'luca')
     WHERE name = 'zeno'});
like($err, qr/would form a cycle/, 'the cycle guard works in the restored database');
is($node->safe_psql('crm_restored', q{SELECT ok FROM crmguard.verify_audit()}), 't',
   'and the chain goes on after restore');

# a data-only restore into a database where the extension is already created: the
# same self-reference, rows in any order (the key is DEFERRABLE INITIALLY DEFERRED,
# and each table's rows come in one COPY)
$node->safe_psql('postgres', 'CREATE DATABASE crm_data');
$node->safe_psql('crm_data', 'CREATE EXTENSION crmguard');
$node->command_ok(['pg_restore', '--data-only', '--exit-on-error', '-d', $node->connstr('crm_data'), $dump],
                  'pg_restore --data-only into a database with crmguard created');
is($node->safe_psql('crm_data', $principals_sql), $before, 'principals are restored intact by a data-only restore');
is($node->safe_psql('crm_data', q{SELECT count(*) FROM crmguard.principal p
                                   WHERE p.manager_id IS NOT NULL
                                     AND NOT EXISTS (SELECT 1 FROM crmguard.principal m WHERE m.id = p.manager_id)}),
   '0', 'every restored manager_id names a restored principal');

$node->stop;
done_testing();
