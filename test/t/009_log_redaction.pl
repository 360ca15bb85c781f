# Tokens, JWTs and OTP codes never reach the server log: log_statement = all,
# log_min_duration_statement, error statements and context, and pgaudit's
# AUDIT lines, with crmguard before or after pgaudit in shared_preload_libraries.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);
use IPC::Run;

my $pg_lib = `pg_config --pkglibdir`;
chomp $pg_lib;
plan skip_all => 'pgaudit is not installed' unless -f "$pg_lib/pgaudit.so";

my $node = PostgreSQL::Test::Cluster->new('redaction');
$node->init;
my $secret = join('', map { chr(65 + int(rand(26))) } 1 .. 40);
PostgreSQL::Test::Utils::append_to_file($node->data_dir . '/jwk.json',
    sprintf('{"kty": "oct", "k": "%s"}', encode_base64url($secret)));
$node->append_conf('postgresql.conf', q{
crmguard.jwt_key_file = 'jwk.json'
log_statement = 'all'
log_min_duration_statement = 0
log_min_error_statement = error
log_error_verbosity = verbose
pgaudit.log = 'all'
pgaudit.log_parameter = on
});

sub jwt
{
    my ($claims) = @_;
    my $input = encode_base64url('{"alg":"HS256","typ":"JWT"}') . '.' . encode_base64url($claims);
    return $input . '.' . encode_base64url(hmac_sha256($input, $secret));
}

for my $order ('crmguard,pgaudit', 'pgaudit,crmguard')
{
    $node->append_conf('postgresql.conf', "shared_preload_libraries = '$order'");
    $node->start;
    my $db = 'crm_' . ($order =~ /^crmguard/ ? 'first' : 'second');
    $node->safe_psql('postgres', "CREATE DATABASE $db");
    $node->safe_psql($db, q{
        CREATE EXTENSION crmguard;
        SELECT crmguard.add_principal('alice', '{agent}');
        CREATE TABLE public.delivery (id bigint PRIMARY KEY, phone text, status text);
        INSERT INTO public.delivery VALUES (1, '+39 347 555 0123', 'Out'), (2, '+39 347 555 0124', 'Out');
        SELECT crmguard.create_otp_rule('Delivery OTP', 'public.delivery', 'status', '{Delivered}',
                                        'phone', delivery => 'manual', code_type => 'alphabetic',
                                        code_length => 12, max_attempts => 5);
    });
    my $token = $node->safe_psql($db, q{SELECT crmguard.issue_token('alice')});
    my $jwt = jwt(sprintf('{"sub":"alice","aud":"%s","exp":%d}', $db, time() + 600));
    my $challenge = $node->safe_psql($db, q{SELECT crmguard.request_otp('public.delivery', '1', 'Delivered')});
    my $code = $node->safe_psql($db, q{SELECT substring(body FROM 'code is ([A-Za-z]+)') FROM crmguard.outbox ORDER BY id DESC LIMIT 1});
    my $challenge2 = $node->safe_psql($db, q{SELECT crmguard.request_otp('public.delivery', '2', 'Delivered')});
    my $code2 = $node->safe_psql($db, q{SELECT substring(body FROM 'code is ([A-Za-z]+)') FROM crmguard.outbox ORDER BY id DESC LIMIT 1});
    my $wrong = 'QQQQQQQQQQQQ';
    my $offset = -s $node->logfile;

    # what an application and an attacker's typos send
    $node->safe_psql($db, "SELECT crmguard.assume('$token')");
    $node->psql($db, "SELECT crmguard.assume('${token}x')");
    $node->safe_psql($db, "SELECT crmguard.assume_jwt('$jwt')");
    $node->psql($db, "SELECT crmguard.assume_jwt('${jwt}x')");
    $node->safe_psql($db, "BEGIN; SELECT crmguard.verify_otp($challenge, '$code');"
          . " UPDATE public.delivery SET status = 'Delivered' WHERE id = 1; COMMIT;");
    $node->psql($db, "SELECT crmguard.verify_otp($challenge2, '$wrong')");
    $node->safe_psql($db, "SELECT crmguard.verify_otp(challenge => $challenge2, code => '$code2')");
    $node->psql($db, "DO \$\$ BEGIN PERFORM crmguard.assume('$token' || 'x'); END \$\$");
    # the code given through a column: every literal of the statement goes, pgaudit's field too
    $node->psql($db, "SELECT crmguard.verify_otp(c, code) FROM (VALUES (${challenge2}::bigint, 'WWWWXXXXYYYY')) AS v(c, code)");
    $node->safe_psql($db, "PREPARE p(text) AS SELECT crmguard.assume(\$1); EXECUTE p('$token');");
    $node->psql($db, "SELECT crmguard.assume('$token'");
    $node->psql($db, "SELECT '$token'::int");
    $node->safe_psql($db, "SET log_statement = 'none'; SELECT crmguard.assume_jwt(jwt => '$jwt', is_local => true);");
    # bind parameters: pgbench -M extended sends each :variable as a parameter
    my $wrong2 = 'ZZZZZZZZZZZZ';
    my $bind = PostgreSQL::Test::Utils::tempdir . '/bind.sql';
    PostgreSQL::Test::Utils::append_to_file($bind,
        "SELECT crmguard.assume(:tok);\nSELECT crmguard.verify_otp(:ch, :code);\n");
    IPC::Run::run([ 'pgbench', '-n', '-M', 'extended', '-t', '1', '-D', "tok=$token",
        '-D', "ch=$challenge2", '-D', "code=$wrong2", '-f', $bind,
        '-h', $node->host, '-p', $node->port, $db ], '>', \my $pgb_out, '2>', \my $pgb_err);

    my $log = substr(PostgreSQL::Test::Utils::slurp_file($node->logfile), $offset);
    my ($sig) = $jwt =~ /\.([^.]+)$/;
    my $tag = "[$order]";
    unlike($log, qr/\Q$token\E|\Q${\substr($token, 4, 20)}\E/, "$tag no token in the log");
    unlike($log, qr/\Q$sig\E/, "$tag no JWT signature in the log");
    unlike($log, qr/\Q$jwt\E|eyJ[A-Za-z0-9_-]+\.eyJ/, "$tag no JWT in the log");
    # the whole log: the codes were issued before $offset
    my $all = PostgreSQL::Test::Utils::slurp_file($node->logfile);
    unlike($all, qr/\Q$code\E/, "$tag no OTP code in the log");
    unlike($all, qr/\Q$code2\E/, "$tag no OTP code given by name in the log");
    # a code is queued without a statement (as a system catalog's row is
    # written): no statement that carries it reaches pgaudit at all
    like($all, qr/AUDIT: SESSION,.*crmguard\.request_otp\('public\.delivery', '1', 'Delivered'\)/,
        "$tag pgaudit logged the request");
    unlike($all, qr/INSERT INTO crmguard\.outbox|your code is/,
        "$tag no statement carrying a code reaches pgaudit");
    unlike($log, qr/\Q$wrong\E/, "$tag no wrong OTP guess in the log");
    unlike($log, qr/WWWWXXXXYYYY/, "$tag no OTP code given through a column, in any line");
    like($log, qr/AUDIT: SESSION,\d+,\d+,READ,SELECT,,,"SELECT crmguard\.verify_otp\(c, code\) FROM \(VALUES \(\[redacted\]::bigint, '\[redacted\]'\)\) AS v\(c, code\)"/,
        "$tag pgaudit's statement field keeps its shape, literals redacted");
    unlike($log, qr/\Q$wrong2\E/, "$tag no OTP code sent as a bind parameter in the log");
    like($log, qr/execute <unnamed>: SELECT crmguard\.verify_otp\(\$1, \$2\);?\n.*DETAIL:  parameters: \$1 = '\[redacted\]', \$2 = '\[redacted\]'/,
        "$tag bind parameters of verify_otp redacted");
    like($log, qr/AUDIT: SESSION,\d+,\d+,READ,SELECT,,,"?SELECT crmguard\.verify_otp\(\$1, \$2\);?"?,\[redacted\]/,
        "$tag pgaudit's parameter field of verify_otp redacted");
    like($log, qr/LOG:  00000: statement: SELECT crmguard\.assume\(\[redacted\]\)/,
        "$tag log_statement line kept, token redacted");
    like($log, qr/AUDIT: SESSION,\d+,\d+,READ,SELECT,,,"?SELECT crmguard\.assume\(\[redacted\]\)"?,/,
        "$tag pgaudit line kept, token redacted");
    like($log, qr/STATEMENT:  SELECT crmguard\.assume\(\[redacted\]\)/,
        "$tag error statement kept, token redacted");
    like($log, qr/STATEMENT:  SELECT crmguard\.assume_jwt\(\[redacted\]\)/,
        "$tag error statement of assume_jwt kept, JWT redacted");
    like($log, qr/statement: SELECT crmguard\.verify_otp\($challenge, \[redacted\]\)/,
        "$tag verify_otp statement kept with its challenge, code redacted");
    like($log, qr/STATEMENT:  SELECT crmguard\.verify_otp\($challenge2, \[redacted\]\)/,
        "$tag a wrong guess's error statement redacted");
    like($log, qr/verify_otp\(challenge => $challenge2, \[redacted\]\)/,
        "$tag a code given by name redacted");
    like($log, qr/CONTEXT:  SQL statement "SELECT crmguard\.assume\(\[redacted\]\)"/,
        "$tag error context redacted");
    like($log, qr/statement: PREPARE p\(text\) AS SELECT crmguard\.assume\(\$1\)/,
        "$tag a parameter placeholder is left readable");
    like($log, qr/statement: EXECUTE p\('\[redacted\]'\)/, "$tag EXECUTE's token redacted");
    like($log, qr/STATEMENT:  SELECT crmguard\.assume\(\[redacted\]/, "$tag a syntax error's statement redacted");
    like($log, qr/invalid input syntax for type integer: "\[redacted\]"/, "$tag an error message quoting a token redacted");
    like($log, qr/duration: [0-9.]+ ms  statement: SET log_statement = 'none'; SELECT crmguard\.assume_jwt\(\[redacted\], is_local => true\)|duration: [0-9.]+ ms  statement: SELECT crmguard\.assume_jwt\(\[redacted\], is_local => true\)/,
        "$tag log_min_duration_statement line redacted");
    $node->stop;
}

done_testing();
