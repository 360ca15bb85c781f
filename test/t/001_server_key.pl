# The server key: created on first use, mode 0600, never readable through
# crmguard, kept across restarts, and tokens of another key are refused.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MIME::Base64;

my $node = PostgreSQL::Test::Cluster->new('primary');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION crmguard');

my $key_file = $node->data_dir . '/crmguard.key';
ok(!-e $key_file, 'no key file before first use');
$node->safe_psql('postgres', q{SELECT crmguard.add_principal('anna', '{area_manager}')});

my $token = $node->safe_psql('postgres', q{SELECT crmguard.issue_token('anna')});
ok(-e $key_file, 'the key file is created on first use');
my @st = stat($key_file);
is($st[7], 32, 'the key file holds 32 bytes');
is(sprintf('%04o', $st[2] & 07777), '0600', 'the key file has mode 0600');

# the key's bytes, in every encoding a function could return them
my $raw = slurp_file($key_file);
my $hex = unpack('H*', $raw);
my $b64 = encode_base64($raw, '');
$b64 =~ s/=+$//;
(my $b64url = $b64) =~ tr{+/}{-_};

my $everything = $node->safe_psql('postgres', q{
    SELECT crmguard.assume(crmguard.issue_token('anna'), false);
    SELECT crmguard.current_principal(), crmguard.team(), crmguard.attr('x');
    SELECT * FROM crmguard.verify_audit();
    SELECT * FROM crmguard.audit;
    SELECT * FROM crmguard.principal;
    SELECT name, setting, reset_val, boot_val FROM pg_settings WHERE name LIKE 'crmguard%';
    SELECT encode(hash, 'hex'), encode(prev_hash, 'hex') FROM crmguard.audit;
}) . $token;
my $log = slurp_file($node->logfile);
for my $form ([hex => $hex], [base64 => $b64], [base64url => $b64url])
{
    unlike($everything, qr/\Q$form->[1]\E/i,
           "no crmguard function, table or setting shows the key ($form->[0])");
    unlike($log, qr/\Q$form->[1]\E/i, "the server log never shows the key ($form->[0])");
}
unlike($everything, qr/\Q$raw\E/, 'no output holds the raw key bytes');

# the key survives a restart: tokens issued before still verify
$node->restart;
is($node->safe_psql('postgres', "SELECT crmguard.assume('$token') IS NOT NULL"), 't',
   'a token issued before a restart is accepted after it');
is(slurp_file($key_file), $raw, 'the key is unchanged by the restart');

# a key file others can read is refused
chmod 0644, $key_file;
$node->restart;
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT crmguard.issue_token('anna')});
like($err, qr/has group or world access/, 'a key file with group or world access is refused');
chmod 0600, $key_file;

# crmguard.key_file may point elsewhere
my $elsewhere = $node->basedir . '/elsewhere.key';
$node->append_conf('postgresql.conf', "crmguard.key_file = '$elsewhere'");
$node->restart;
$node->safe_psql('postgres', q{SELECT crmguard.issue_token('anna')});
ok(-e $elsewhere, 'crmguard.key_file names where the key is created');
($ret, $out, $err) = $node->psql('postgres', "SELECT crmguard.assume('$token')");
like($err, qr/invalid or expired token/, 'a token signed with another key fails');
like($err, qr/CG031|invalid or expired token/, 'with CG031');
($ret, $out, $err) = $node->psql('postgres', q{SET crmguard.key_file = '/tmp/x'});
like($err, qr/cannot be changed without restarting/, 'crmguard.key_file is postmaster-only');

# another cluster, same principals, its own key: tokens do not cross
my $other = PostgreSQL::Test::Cluster->new('other');
$other->init;
$other->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$other->start;
$other->safe_psql('postgres', q{
    CREATE EXTENSION crmguard;
    SELECT crmguard.add_principal('anna', '{area_manager}');
});
($ret, $out, $err) = $other->psql('postgres', "SELECT crmguard.assume('$token')",
                                  extra_params => ['-v', 'VERBOSITY=verbose']);
like($err, qr/CG031/, "another cluster's token fails with CG031");

# without shared_preload_libraries: a clear error and hint
my $bare = PostgreSQL::Test::Cluster->new('bare');
$bare->init;
$bare->start;
$bare->safe_psql('postgres', 'CREATE EXTENSION crmguard');
($ret, $out, $err) = $bare->psql('postgres', 'SELECT crmguard.current_principal()');
like($err, qr/crmguard must be loaded via "shared_preload_libraries"/,
     'without preloading, functions fail clearly');
like($err, qr/HINT:  Add crmguard to "shared_preload_libraries"/, 'and say how to fix it');

$node->stop;
$other->stop;
$bare->stop;
done_testing();
