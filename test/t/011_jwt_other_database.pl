# Attack jwt_other_database (issue 13, from the security review):
# jwt_key_file is a postmaster setting, so every database of the cluster
# trusts the same key, and a JWT names a principal by name only.  A JWT is
# bound to one database by its "aud" claim: crmguard.jwt_audience, by default
# the database's name.  crmguard's own tokens are bound by a MAC over the
# database OID.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);

my $node = PostgreSQL::Test::Cluster->new('review_jwt');
$node->init;
my $secret = join('', map { chr(65 + int(rand(26))) } 1 .. 40);
PostgreSQL::Test::Utils::append_to_file($node->data_dir . '/jwk.json',
    sprintf('{"kty": "oct", "k": "%s"}', encode_base64url($secret)));
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'crmguard'
crmguard.jwt_key_file = 'jwk.json'
});
$node->start;

# two CRMs (tenants) on one cluster; "marco" is an agent in one, an admin in the other
$node->safe_psql('postgres', 'CREATE DATABASE crm_north');
$node->safe_psql('postgres', 'CREATE DATABASE crm_south');
$node->safe_psql('crm_north', q{CREATE EXTENSION crmguard; SELECT crmguard.add_principal('marco', '{agent}');});
$node->safe_psql('crm_south', q{CREATE EXTENSION crmguard; SELECT crmguard.add_principal('marco', '{admin}');});

my $input = encode_base64url('{"alg":"HS256","typ":"JWT"}') . '.'
  . encode_base64url(sprintf('{"sub":"marco","aud":"crm_north","exp":%d}', time() + 600));
my $jwt = $input . '.' . encode_base64url(hmac_sha256($input, $secret));

is($node->safe_psql('crm_north', "SELECT crmguard.assume_jwt('$jwt') IS NOT NULL"), 't',
    'the JWT is accepted in the database it was issued for');
my ($ret, $out, $err) = $node->psql('crm_south',
    "BEGIN; SELECT crmguard.assume_jwt('$jwt'); SELECT crmguard.has_role('admin'); COMMIT;");
unlike($out, qr/^t$/m, 'jwt_other_database: a JWT for crm_north does not make its bearer an admin of crm_south');
like($err, qr/invalid or expired token/, 'jwt_other_database: refused with CG031');

# the audience a superuser chose for a database, in a string or an array "aud"
$node->safe_psql('postgres', q{ALTER DATABASE crm_south SET crmguard.jwt_audience = 'https://south.example/crm'});
$input = encode_base64url('{"alg":"HS256","typ":"JWT"}') . '.'
  . encode_base64url(sprintf('{"sub":"marco","aud":["other","https://south.example/crm"],"exp":%d}', time() + 600));
my $south = $input . '.' . encode_base64url(hmac_sha256($input, $secret));
is($node->safe_psql('crm_south', "SELECT crmguard.has_role('admin') FROM crmguard.assume_jwt('$south') AS a(id)"), 't',
    'a JWT whose aud array names the configured audience is accepted');
($ret, $out, $err) = $node->psql('crm_north', "SELECT crmguard.assume_jwt('$south')");
like($err, qr/invalid or expired token/, 'that JWT is refused in the other database');
ok($node->poll_query_until('crm_north', q{SELECT count(*) > 0 FROM crmguard.audit
    WHERE action = 'assume_refused' AND detail->>'reason' = 'jwt for another audience'}),
    'the refusal is audited with its reason');
$node->safe_psql('crm_south', 'CREATE ROLE regress_rep LOGIN');
($ret, $out, $err) = $node->psql('crm_south', "SET crmguard.jwt_audience = 'crm_north'",
    extra_params => [ '-U', 'regress_rep' ]);
like($err, qr/permission denied/, 'a session cannot choose the audience it trusts');

# crmguard's own token is bound to its database
my $token = $node->safe_psql('crm_north', q{SELECT crmguard.issue_token('marco')});
($ret, $out, $err) = $node->psql('crm_south', "SELECT crmguard.assume('$token')");
like($err, qr/invalid or expired token/, "a crmguard token of another database is refused (holds)");
$node->stop;
done_testing();
