# A hot standby enforces the same row visibility for the same principal,
# through a mapped role and through a token issued on the primary.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$primary->start;

$primary->safe_psql('postgres', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_luca;
    CREATE ROLE regress_anna;
    CREATE ROLE regress_app;
    SELECT crmguard.add_principal('anna', '{area_manager}', NULL, '{}', 'regress_anna');
    SELECT crmguard.add_principal('luca', '{agent}', 'anna', '{"zone": "North"}', 'regress_luca');
    SELECT crmguard.add_principal('sara', '{agent}', 'anna', '{"zone": "South"}');
    CREATE TABLE customer (id int PRIMARY KEY, zone text, owner_id bigint);
    INSERT INTO customer
    SELECT i, CASE WHEN i % 2 = 0 THEN 'North' ELSE 'South' END,
           (SELECT id FROM crmguard.principal WHERE name = CASE WHEN i % 3 = 0 THEN 'luca' ELSE 'sara' END)
      FROM generate_series(1, 60) i;
    GRANT SELECT ON customer TO regress_luca, regress_anna, regress_app;
    SELECT crmguard.expose('customer', 'agents see their zone', 'agent',
                           '{"field": "zone", "op": "=", "principal": "zone"}');
    SELECT crmguard.expose_by_owner('customer', 'owner_id', 'area_manager');
});
# a token issued now creates the server key, which the base backup carries
my $token = $primary->safe_psql('postgres', q{SELECT crmguard.issue_token('sara', '1 day')});

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
# the test framework copies the backup without file modes; pg_basebackup keeps 0600
chmod 0600, $standby->data_dir . '/crmguard.key';
$standby->start;
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');

my %as = (
    luca  => q{SET ROLE regress_luca; SELECT string_agg(id::text, ',' ORDER BY id) FROM customer},
    anna  => q{SET ROLE regress_anna; SELECT count(*) FROM customer},
    sara  => qq{SET ROLE regress_app; SELECT crmguard.assume('$token', false) IS NOT NULL;
                SELECT string_agg(id::text, ',' ORDER BY id) FROM customer},
    nobody => q{SET ROLE regress_app; SELECT count(*) FROM customer},
);
for my $who (sort keys %as)
{
    my $on_primary = $primary->safe_psql('postgres', $as{$who});
    is($standby->safe_psql('postgres', $as{$who}), $on_primary,
       "$who sees the same rows on the standby as on the primary");
}
is($standby->safe_psql('postgres', $as{nobody}), '0', 'nobody sees nothing on the standby');
like($standby->safe_psql('postgres', $as{luca}), qr/^2,4,6,8,10,/, 'luca sees his zone (North: even ids) only');

# a rule made later on the primary is enforced on the standby once replayed
$primary->safe_psql('postgres', q{
    SELECT crmguard.expose('customer', 'agents see row 1', 'agent', '{"field": "id", "op": "=", "value": 1}');
});
$primary->wait_for_catchup($standby);
like($standby->safe_psql('postgres', $as{luca}), qr/^1,2,4,/, 'a rule added on the primary is enforced on the standby');
$primary->safe_psql('postgres', q{SELECT crmguard.unexpose('agents see row 1')});
$primary->wait_for_catchup($standby);
like($standby->safe_psql('postgres', $as{luca}), qr/^2,4,/, 'and so is its removal');

# the standby is read-only: an assume() there is logged, not written
my $log_offset = -s $standby->logfile;
$standby->safe_psql('postgres', qq{SELECT crmguard.assume('$token')});
ok($standby->log_contains(qr/crmguard audit on a standby: assume/, $log_offset),
   'assume() on the standby goes to the server log');

$standby->stop;
$primary->stop;
done_testing();
