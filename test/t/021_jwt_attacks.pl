# JWT verification at its edges: the exact second a token expires or becomes
# valid, an audience that only starts like this database's, claims of the
# wrong JSON type, an inactive principal, an oversized token, a signature
# with bytes added or cut, an Authorization header of another scheme, and a
# key file that changes under a running session (rotation, a weak key, a key
# reserved for another algorithm).  Each case is named after the attack it
# pins; every refusal is CG031 with its reason in the audit log.  No
# pgbouncer needed (008_pooling covers the common refusals behind one).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);

my $node = PostgreSQL::Test::Cluster->new('jwt_attacks');
$node->init;
my $data = $node->data_dir;
my $secret = join('', map { chr(65 + int(rand(26))) } 1 .. 40);
sub write_keys
{
    my ($json) = @_;
    open(my $fh, '>', "$data/jwk.json.new") or die;
    print $fh $json;
    close $fh;
    # a new inode: the server sees a changed file whatever the clock's resolution
    rename("$data/jwk.json.new", "$data/jwk.json") or die;
}
write_keys(sprintf('{"kty": "oct", "k": "%s"}', encode_base64url($secret)));
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'crmguard'
crmguard.jwt_key_file = 'jwk.json'
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION crmguard;
    SELECT crmguard.add_principal('alice', '{agent}');
    SELECT crmguard.add_principal('ghost', '{agent}');
    UPDATE crmguard.principal SET active = false WHERE name = 'ghost';
});

sub jwt
{
    my ($claims, $key) = @_;
    my $input = encode_base64url('{"alg":"HS256","typ":"JWT"}') . '.' . encode_base64url($claims);
    return $input . '.' . encode_base64url(hmac_sha256($input, $key // $secret));
}

sub accepted
{
    my ($token, $name) = @_;
    my ($ret, $out, $err) = $node->psql('postgres',
        "SELECT crmguard.assume_jwt('$token') = (SELECT id FROM crmguard.principal WHERE name = 'alice')");
    is($out, 't', $name) or diag $err;
}

# refused with CG031, and audited (durably, so polled) with the reason given
sub refused
{
    my ($token, $reason, $name) = @_;
    my $count = qq{SELECT count(*) FROM crmguard.audit
        WHERE action = 'assume_refused' AND detail->>'reason' = '$reason'};
    my $before = $node->safe_psql('postgres', $count);
    my ($ret, $out, $err) = $node->psql('postgres', "SELECT crmguard.assume_jwt('$token')",
        extra_params => [ '-v', 'VERBOSITY=verbose' ]);
    unless (like($err, qr/CG031/, "$name: refused with CG031"))
    {
        fail("$name: audited as \"$reason\"");
        return;
    }
    ok($node->poll_query_until('postgres', "SELECT ($count) > $before"),
        "$name: audited as \"$reason\"");
}

# the start of a fresh second, so that a token made now is checked within it
sub next_second
{
    my $t = int(time()) + 1;
    usleep(int(($t - time()) * 1e6) + 1000);
    return $t;
}

accepted(jwt(sprintf('{"sub":"alice","aud":"postgres","exp":%d}', time() + 600)),
    'a valid HS256 JWT is accepted');

# Attack: jwt_used_in_its_exp_second -- "exp" is the first second a token is
# no longer valid (RFC 7519 4.1.4: on or after it, refused)
my $t = next_second();
refused(jwt(sprintf('{"sub":"alice","aud":"postgres","exp":%d}', $t)), 'jwt expired',
    'jwt_used_in_its_exp_second');
# and "nbf" is the first second it is (before it, refused; at it, accepted)
$t = next_second();
accepted(jwt(sprintf('{"sub":"alice","aud":"postgres","nbf":%d,"exp":%d}', $t, $t + 600)),
    'jwt_used_in_its_nbf_second: accepted');
refused(jwt(sprintf('{"sub":"alice","aud":"postgres","nbf":%d,"exp":%d}', time() + 5, time() + 600)),
    'jwt not yet valid', 'jwt_used_seconds_before_nbf');

# Attack: jwt_exp_as_string -- a date that is not a NumericDate is no date
refused(jwt(sprintf('{"sub":"alice","aud":"postgres","exp":"%d"}', time() + 600)), 'jwt malformed',
    'jwt_exp_as_string');
refused(jwt(sprintf('{"sub":"alice","aud":"postgres","nbf":"0","exp":%d}', time() + 600)), 'jwt malformed',
    'jwt_nbf_as_string');

# Attack: jwt_audience_extends_database_name -- a token for "postgres_staging"
# (or any audience that starts like this database's name) is not for "postgres"
refused(jwt(sprintf('{"sub":"alice","aud":"postgres_staging","exp":%d}', time() + 600)),
    'jwt for another audience', 'jwt_audience_extends_database_name');
refused(jwt(sprintf('{"sub":"alice","aud":["postgres_staging"],"exp":%d}', time() + 600)),
    'jwt for another audience', 'jwt_audience_array_extends_database_name');
refused(jwt(sprintf('{"sub":"alice","aud":"postgre","exp":%d}', time() + 600)),
    'jwt for another audience', 'jwt_audience_prefix_of_database_name');
refused(jwt(sprintf('{"sub":"alice","aud":{"postgres":true},"exp":%d}', time() + 600)),
    'jwt for another audience', 'jwt_audience_as_object');

# Attack: jwt_for_inactive_principal -- a deactivated user's unexpired JWT
refused(jwt(sprintf('{"sub":"ghost","aud":"postgres","exp":%d}', time() + 600)),
    'principal inactive or missing', 'jwt_for_inactive_principal');
# and a principal named by something that is not a string
refused(jwt(sprintf('{"sub":["alice"],"aud":"postgres","exp":%d}', time() + 600)),
    'jwt names no principal', 'jwt_sub_as_array');

# Attack: jwt_oversized -- a token past 16 KB is refused unread, even validly signed
my $pad = 'x' x 16400;
refused(jwt(sprintf('{"sub":"alice","aud":"postgres","pad":"%s","exp":%d}', $pad, time() + 600)),
    'jwt malformed', 'jwt_oversized');

# a transaction-scoped identity by default, and when is_local is NULL: it
# ends with the transaction
my $alice = jwt(sprintf('{"sub":"alice","aud":"postgres","exp":%d}', time() + 600));
is($node->safe_psql('postgres', "SELECT crmguard.assume_jwt('$alice') IS NOT NULL;"
        . " SELECT coalesce(crmguard.current_principal()::text, 'nobody')"),
    "t\nnobody", 'assume_jwt without is_local lasts one transaction');
is($node->safe_psql('postgres', "SELECT crmguard.assume_jwt('$alice', NULL) IS NOT NULL;"
        . " SELECT coalesce(crmguard.current_principal()::text, 'nobody')"),
    "t\nnobody", 'assume_jwt with is_local => NULL lasts one transaction');

# Attack: jwt_signature_with_trailing_bytes -- a valid HS256 MAC followed by
# more bytes is not the token's signature (no malleable tokens)
my ($alice_input, $alice_sig) = $alice =~ /^(.*)\.([^.]+)$/;
refused($alice_input . '.' . encode_base64url(hmac_sha256($alice_input, $secret) . 'x'),
    'jwt bad signature', 'jwt_signature_with_trailing_bytes');
refused($alice_input . '.' . encode_base64url(substr(hmac_sha256($alice_input, $secret), 0, 31)),
    'jwt bad signature', 'jwt_signature_truncated');

# Attack: pre_request_without_bearer -- an Authorization header of another
# scheme is refused as such, whatever follows its first seven characters
my ($pret, $pout, $perr) = $node->psql('postgres', qq{BEGIN;
SELECT set_config('request.headers', '{"authorization": "Token! $alice"}', true) IS NOT NULL;
SELECT crmguard.pre_request();
COMMIT;}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($perr, qr/CG031/, 'pre_request_without_bearer: refused with CG031');
ok($node->poll_query_until('postgres', q{SELECT count(*) > 0 FROM crmguard.audit
    WHERE action = 'assume_refused' AND detail->>'reason' = 'authorization is not a bearer token'}),
    'pre_request_without_bearer: audited as "authorization is not a bearer token"');

# Attack: jwt_after_key_rotation -- the DBA replaces the key file while the
# server runs: a session that verified with the old key refuses that key's
# tokens from its next call on (the per-backend key cache is read again)
my $new_secret = join('', map { chr(97 + int(rand(26))) } 1 .. 40);
open(my $fh, '>', "$data/jwk.json.next") or die;
print $fh sprintf('{"kty": "oct", "k": "%s"}', encode_base64url($new_secret));
close $fh;
my $new_alice = jwt(sprintf('{"sub":"alice","aud":"postgres","exp":%d}', time() + 600), $new_secret);
my ($ret, $out, $err) = $node->psql('postgres', qq{
SELECT 'old key before' FROM crmguard.assume_jwt('$alice');
\\! mv $data/jwk.json.next $data/jwk.json
SELECT 'old key after' FROM crmguard.assume_jwt('$alice');
SELECT 'new key after' FROM crmguard.assume_jwt('$new_alice');
}, on_error_stop => 0, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
is($out, "old key before\nnew key after", 'jwt_after_key_rotation: one session, the old key before, the new key after');
like($err, qr/CG031/, 'jwt_after_key_rotation: the old key\'s token is refused in the same session');

# Attack: jwt_weak_hs256_key -- a short HMAC secret is a configuration error,
# never a key that verifies (a 31-byte key is refused; 32 bytes is the minimum)
my $weak = 'k' x 31;
write_keys(sprintf('{"kty": "oct", "k": "%s"}', encode_base64url($weak)));
($ret, $out, $err) = $node->psql('postgres',
    "SELECT crmguard.assume_jwt('" . jwt(sprintf('{"sub":"alice","aud":"postgres","exp":%d}', time() + 600), $weak) . "')");
like($err, qr/invalid JWT key file.*\n.*at least 32 bytes/, 'jwt_weak_hs256_key: the key file is refused');
my $ok32 = 'k' x 32;
write_keys(sprintf('{"kty": "oct", "k": "%s"}', encode_base64url($ok32)));
accepted(jwt(sprintf('{"sub":"alice","aud":"postgres","exp":%d}', time() + 600), $ok32),
    'a 32-byte HS256 key is accepted');

# Attack: jwt_key_for_another_algorithm -- a key the JWK reserves for HS512
# (or an OKP key of another curve) never verifies an HS256 or EdDSA token
write_keys(sprintf('{"keys": [{"kty": "oct", "alg": "HS512", "k": "%s"}, {"kty": "oct", "k": "%s"}]}',
    encode_base64url($secret), encode_base64url($new_secret)));
refused(jwt(sprintf('{"sub":"alice","aud":"postgres","exp":%d}', time() + 600), $secret),
    'jwt bad signature', 'jwt_key_for_another_algorithm');

$node->stop;
done_testing();
