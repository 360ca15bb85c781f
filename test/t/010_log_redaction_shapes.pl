# Log redaction by what a secret looks like and where it comes from (issue 13,
# from the security review): OTP codes and JWTs given to crmguard in shapes
# other than a literal argument of the call never reach the server log.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);

my $node = PostgreSQL::Test::Cluster->new('review_redaction');
$node->init;
my $secret = join('', map { chr(65 + int(rand(26))) } 1 .. 40);
PostgreSQL::Test::Utils::append_to_file($node->data_dir . '/jwk.json',
    sprintf('{"kty": "oct", "k": "%s"}', encode_base64url($secret)));
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'crmguard'
crmguard.jwt_key_file = 'jwk.json'
log_statement = 'all'
log_min_error_statement = error
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION crmguard;
    SELECT crmguard.add_principal('alice', '{agent}');
    CREATE TABLE public.delivery (id bigint PRIMARY KEY, phone text, status text);
    INSERT INTO public.delivery VALUES (1, '+39 347 555 0123', 'Out'), (2, '+39 347 555 0124', 'Out'),
                                       (3, '+39 347 555 0125', 'Out');
    SELECT crmguard.create_otp_rule('Delivery OTP', 'public.delivery', 'status', '{Delivered}',
                                    'phone', delivery => 'manual', code_type => 'alphabetic',
                                    code_length => 12, max_attempts => 5);
});

sub code_of
{
    my ($row) = @_;
    my $ch = $node->safe_psql('postgres', "SELECT crmguard.request_otp('public.delivery', '$row', 'Delivered')");
    my $code = $node->safe_psql('postgres',
        q{SELECT substring(body FROM 'code is ([A-Za-z]+)') FROM crmguard.outbox ORDER BY id DESC LIMIT 1});
    return ($ch, $code);
}

my ($ch1, $code1) = code_of(1);
my ($ch2, $code2) = code_of(2);
my ($ch3, $code3) = code_of(3);
my $wrong = 'QQQQWWWWEEEE';
my $offset = -s $node->logfile;

# Attack: log_redaction_sql_execute -- a client that prepares the verification
# once with SQL PREPARE and runs EXECUTE per code (psql scripts, some drivers);
# psql sends each statement on its own, so EXECUTE is logged without PREPARE
$node->safe_psql('postgres',
    "PREPARE v(bigint, text) AS SELECT crmguard.verify_otp(\$1, \$2); EXECUTE v($ch1, '$code1');");
$node->psql('postgres',
    "PREPARE w(bigint, text) AS SELECT crmguard.verify_otp(\$1, \$2); EXECUTE w($ch3, '$wrong');");
# Attack: log_redaction_code_in_a_subquery -- the code given through a column
$node->safe_psql('postgres',
    "SELECT crmguard.verify_otp(c, code) FROM (VALUES (${ch2}::bigint, '$code2')) AS v(c, code)");
# Attack: log_redaction_jwt_with_spaces -- a JWT whose header is JSON with a
# space after the brace (valid JSON, accepted by assume_jwt) does not start "eyJ"
my $input = encode_base64url('{ "alg": "HS256", "typ": "JWT" }') . '.'
  . encode_base64url(sprintf('{ "sub": "alice", "aud": "postgres", "exp": %d }', time() + 600));
my $jwt = $input . '.' . encode_base64url(hmac_sha256($input, $secret));
is($node->safe_psql('postgres', "SELECT crmguard.assume_jwt('$jwt') IS NOT NULL"), 't',
    'a JWT whose header has spaces is accepted');
# PostgREST's transaction shape: the JWT travels in request.headers
$node->safe_psql('postgres',
    "BEGIN; SELECT set_config('request.headers', '{\"authorization\": \"Bearer $jwt\"}', true);"
  . " SELECT crmguard.pre_request(); COMMIT;");

my $log = substr(PostgreSQL::Test::Utils::slurp_file($node->logfile), $offset);
my ($sig) = $jwt =~ /\.([^.]+)$/;
unlike($log, qr/\Q$code1\E/, 'log_redaction_sql_execute: no OTP code from EXECUTE in the log');
unlike($log, qr/\Q$wrong\E/, 'log_redaction_sql_execute: no wrong guess from EXECUTE in the error statement');
like($log, qr/EXECUTE v\(\[redacted\], '\[redacted\]'\)/, 'the EXECUTE is logged, its arguments redacted');
like($log, qr/crmguard\.verify_otp\(c, code\) FROM \(VALUES/, 'the statement around the redacted values stays readable');
unlike($log, qr/\Q$code2\E/, 'log_redaction_code_in_a_subquery: no OTP code given through a column');
unlike($log, qr/\Q$sig\E/, 'log_redaction_jwt_with_spaces: no JWT signature in the log');
$node->stop;
done_testing();
