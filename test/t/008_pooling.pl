# Identity behind a real pgbouncer (transaction pooling, one server
# connection shared by every client) and PostgREST's transaction shape: no
# client ever acts as another client's principal, whatever the interleaving.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use IO::Socket::INET;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);

my $pgbouncer = '/usr/sbin/pgbouncer';
plan skip_all => 'pgbouncer is not installed' unless -x $pgbouncer;

my $node = PostgreSQL::Test::Cluster->new('pooling');
$node->init;
my $data = $node->data_dir;
my $tmp = PostgreSQL::Test::Utils::tempdir;

# ---------------------------------------------------------------------------
# JWT keys: an HS256 secret and an Ed25519 key pair, as a JWK Set
# ---------------------------------------------------------------------------
my $hs_secret = join('', map { chr(int(rand(256))) } 1 .. 48);
system('openssl', 'genpkey', '-algorithm', 'ed25519', '-out', "$tmp/ed.pem") == 0
  or die 'openssl genpkey failed';
my $der = `openssl pkey -in $tmp/ed.pem -pubout -outform DER`;
my $ed_public = substr($der, -32);
PostgreSQL::Test::Utils::append_to_file("$data/jwks.json",
    sprintf('{"keys": [{"kty": "oct", "kid": "hs", "alg": "HS256", "k": "%s"},'
          . ' {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "%s"}]}',
        encode_base64url($hs_secret), encode_base64url($ed_public)));

sub b64json { return encode_base64url($_[0]) }

# a JWT: header and claims as JSON text, signed HS256 with a secret or EdDSA
# with the test's private key
sub jwt
{
    my ($header, $claims, $how, $secret) = @_;
    my $input = b64json($header) . '.' . b64json($claims);
    my $sig;
    if ($how eq 'hs')
    {
        $sig = hmac_sha256($input, $secret // $hs_secret);
    }
    elsif ($how eq 'ed')
    {
        open(my $fh, '>', "$tmp/input") or die;
        print $fh $input;
        close $fh;
        system('openssl', 'pkeyutl', '-sign', '-inkey', "$tmp/ed.pem", '-rawin',
            '-in', "$tmp/input", '-out', "$tmp/sig") == 0 or die 'openssl sign failed';
        $sig = PostgreSQL::Test::Utils::slurp_file("$tmp/sig");
    }
    else
    {
        $sig = '';
    }
    return $input . '.' . encode_base64url($sig);
}

my $now = time();
my $hs_alice = jwt('{"alg":"HS256","typ":"JWT","kid":"hs"}',
    qq({"aud":"postgres","sub":"alice","role":"web_user","exp":@{[$now + 600]}}), 'hs');
my $ed_bob = jwt('{"alg":"EdDSA","typ":"JWT","kid":"ed"}',
    qq({"aud":"postgres","sub":"bob","exp":@{[$now + 600]}}), 'ed');
my $hs_nokid = jwt('{"alg":"HS256","typ":"JWT"}',
    qq({"aud":"postgres","sub":"alice","exp":@{[$now + 600]}}), 'hs');
my $expired = jwt('{"alg":"HS256","typ":"JWT","kid":"hs"}',
    qq({"aud":"postgres","sub":"alice","exp":@{[$now - 60]}}), 'hs');
my $not_yet = jwt('{"alg":"HS256","typ":"JWT","kid":"hs"}',
    qq({"aud":"postgres","sub":"alice","nbf":@{[$now + 600]},"exp":@{[$now + 1200]}}), 'hs');
my $no_exp = jwt('{"alg":"HS256","typ":"JWT","kid":"hs"}', '{"aud":"postgres","sub":"alice"}', 'hs');
my $alg_none = jwt('{"alg":"none","typ":"JWT"}',
    qq({"aud":"postgres","sub":"alice","exp":@{[$now + 600]}}), 'none');
# the classic confusion: HMAC keyed with the public Ed25519 key, under its kid
my $confused = jwt('{"alg":"HS256","typ":"JWT","kid":"ed"}',
    qq({"aud":"postgres","sub":"alice","exp":@{[$now + 600]}}), 'hs', $ed_public);
my $unknown_kid = jwt('{"alg":"HS256","typ":"JWT","kid":"other"}',
    qq({"aud":"postgres","sub":"alice","exp":@{[$now + 600]}}), 'hs');
my $nobody_sub = jwt('{"alg":"HS256","typ":"JWT","kid":"hs"}',
    qq({"aud":"postgres","sub":"mallory","exp":@{[$now + 600]}}), 'hs');
# bound to another database's CRM, or to none
my $other_aud = jwt('{"alg":"HS256","typ":"JWT","kid":"hs"}',
    qq({"aud":["crm_other"],"sub":"alice","exp":@{[$now + 600]}}), 'hs');
my $no_aud = jwt('{"alg":"HS256","typ":"JWT","kid":"hs"}',
    qq({"sub":"alice","exp":@{[$now + 600]}}), 'hs');
# tampered: the claims of another principal under alice's signature
my @parts = split /\./, $hs_alice;
my $tampered = join('.', $parts[0],
    b64json(qq({"aud":"postgres","sub":"bob","role":"web_user","exp":@{[$now + 600]}})), $parts[2]);

$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'crmguard'
crmguard.jwt_key_file = 'jwks.json'
});
$node->start;

$node->safe_psql('postgres', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE app LOGIN;
    CREATE ROLE authenticator LOGIN NOINHERIT;
    CREATE ROLE web_user;
    GRANT web_user TO authenticator;
    SELECT crmguard.add_principal('alice', '{agent}');
    SELECT crmguard.add_principal('bob', '{agent}');
    -- the role PostgREST switches to is mapped to a principal: no header must still mean nobody
    SELECT crmguard.add_principal('carol', '{agent}', db_role => 'web_user');
    CREATE TABLE public.customer (id int PRIMARY KEY, owner_id bigint, name text);
    INSERT INTO public.customer
    SELECT i, (SELECT id FROM crmguard.principal WHERE name = (ARRAY['alice', 'bob', 'carol'])[1 + i % 3]), 'c' || i
      FROM generate_series(1, 30) i;
    SELECT crmguard.expose_by_owner('public.customer', 'owner_id', 'agent');
    GRANT SELECT ON public.customer TO app, web_user;
    GRANT EXECUTE ON FUNCTION crmguard.issue_token(text, interval, bigint, bytea) TO app;
});
my $alice_token = $node->safe_psql('postgres', q{SELECT crmguard.issue_token('alice')});
my $bob_token = $node->safe_psql('postgres', q{SELECT crmguard.issue_token('bob')});
my %pid = map { $_ => $node->safe_psql('postgres', "SELECT id FROM crmguard.principal WHERE name = '$_'") }
  qw(alice bob carol);

# ---------------------------------------------------------------------------
# pgbouncer on a free port, transaction pooling, one server connection
# ---------------------------------------------------------------------------
my $bport;
for my $p (6500 .. 6599)
{
    my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $p,
        Proto => 'tcp', ReuseAddr => 1, Listen => 1);
    if ($sock) { close $sock; $bport = $p; last; }
}
die 'no free port for pgbouncer' unless $bport;
my $host = $node->host;
my $pgport = $node->port;
PostgreSQL::Test::Utils::append_to_file("$tmp/userlist.txt",
    qq{"app" ""\n"authenticator" ""\n"postgres" ""\n});
PostgreSQL::Test::Utils::append_to_file("$tmp/pgbouncer.ini", qq{
[databases]
crm = host=$host port=$pgport dbname=postgres
crm_session = host=$host port=$pgport dbname=postgres pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir =
auth_type = trust
auth_file = $tmp/userlist.txt
pool_mode = transaction
default_pool_size = 1
max_client_conn = 20
server_reset_query = DISCARD ALL
logfile = $tmp/pgbouncer.log
pidfile = $tmp/pgbouncer.pid
});
my $bouncer = IPC::Run::start([ $pgbouncer, "$tmp/pgbouncer.ini" ],
    '>', "$tmp/pgbouncer.out", '2>&1');
for (1 .. 100)
{
    last if IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $bport);
    select(undef, undef, undef, 0.1);
}

# A client of pgbouncer: a psql reading statements from a pipe
my $clients = 0;
sub client
{
    my ($user, $db) = @_;
    my $c = { in => '', out => '', err => '', n => 0 };
    $c->{h} = IPC::Run::start(
        [ 'psql', '-XAtq', '-h', '127.0.0.1', '-p', $bport, '-U', $user // 'app',
          '-d', $db // 'crm', '-v', 'ON_ERROR_STOP=0', '-f', '-' ],
        '<', \$c->{in}, '>', \$c->{out}, '2>', \$c->{err},
        IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
    $clients++;
    return $c;
}

# send statements without waiting for them (they may wait for the pool)
sub send_sql
{
    my ($c, $sql) = @_;
    $c->{n}++;
    $c->{in} .= "$sql\n\\echo __done_$c->{n}__\n";
    $c->{h}->pump_nb;
}

# wait for what was sent last; returns (output, errors) and clears them
sub result
{
    my ($c) = @_;
    $c->{h}->pump until $c->{out} =~ /__done_$c->{n}__\n/;
    (my $out = $c->{out}) =~ s/__done_$c->{n}__\n//;
    $out =~ s/__done_\d+__\n//g;
    chomp $out;
    my $err = $c->{err};
    $c->{out} = '';
    $c->{err} = '';
    return wantarray ? ($out, $err) : $out;
}

sub run_sql { my ($c, $sql) = @_; send_sql($c, $sql); return result($c); }

sub quit { my ($c) = @_; $c->{in} .= "\\q\n"; $c->{h}->finish; }

my $whoami = q{SELECT coalesce(crmguard.current_principal()::text, 'nobody') || ':' || (SELECT count(*) FROM public.customer);};
my $alice_view = "$pid{alice}:10";
my $bob_view = "$pid{bob}:10";

my $c1 = client();
my $c2 = client();
is(run_sql($c1, 'SELECT pg_backend_pid();'), run_sql($c2, 'SELECT pg_backend_pid();'),
    'both clients share one server connection');

# ---------------------------------------------------------------------------
# The leak of issue 13, and its variants
# ---------------------------------------------------------------------------
is(run_sql($c1, "BEGIN; SELECT crmguard.assume('$alice_token') > 0; $whoami COMMIT;"), "t\n$alice_view",
    'client 1 acts as alice in its transaction');
is(run_sql($c2, $whoami), 'nobody:0', 'assume_in_transaction_then_commit: the next client is nobody');

is(run_sql($c1, "SELECT crmguard.assume('$alice_token') > 0;"), 't', 'client 1 assumes alice in autocommit');
is(run_sql($c2, $whoami), 'nobody:0', 'assume_in_autocommit: the next client is nobody');

my ($out, $err) = run_sql($c1, "BEGIN; SELECT crmguard.assume('$alice_token') > 0; SELECT 1 / 0; ROLLBACK;");
like($err, qr/division by zero/, 'client 1 fails inside its transaction');
is(run_sql($c2, $whoami), 'nobody:0', 'assume_then_error_and_rollback: the next client is nobody');

($out, $err) = run_sql($c1, "SELECT crmguard.assume('$alice_token') > 0, 1 / 0;");
is(run_sql($c2, $whoami), 'nobody:0', 'assume_in_failing_autocommit_statement: the next client is nobody');

# interleaved: client 2 asks while client 1 holds the connection as alice
send_sql($c1, "BEGIN; SELECT crmguard.assume('$alice_token') > 0;");
is(result($c1), 't', 'client 1 holds the server connection as alice');
send_sql($c2, $whoami);
send_sql($c1, "$whoami COMMIT;");
is(result($c1), $alice_view, 'client 1 still sees as alice');
is(result($c2), 'nobody:0', 'interleaved_waiting_client: client 2 gets the connection after COMMIT as nobody');

# two clients with different tokens, alternating transactions
my $ok = 1;
for my $round (1 .. 5)
{
    send_sql($c1, "BEGIN; SELECT crmguard.assume('$alice_token') > 0; $whoami COMMIT;");
    send_sql($c2, "BEGIN; SELECT crmguard.assume('$bob_token') > 0; $whoami COMMIT;");
    $ok &&= result($c1) eq "t\n$alice_view";
    $ok &&= result($c2) eq "t\n$bob_view";
    send_sql($c1, $whoami);
    $ok &&= result($c1) eq 'nobody:0';
}
ok($ok, 'interleaved_clients_with_different_tokens never see each other\'s principal');

# client 1 disconnects in the middle of its transaction
my $c3 = client();
send_sql($c3, "BEGIN; SELECT crmguard.assume('$alice_token') > 0;");
is(result($c3), 't', 'client 3 is alice in an open transaction');
$c3->{h}->kill_kill;
is(run_sql($c2, $whoami), 'nobody:0', 'client_disconnects_mid_transaction: the next client is nobody');

# a session-long identity on a transaction pool ends with assume(NULL)
is(run_sql($c1, "SELECT crmguard.assume('$alice_token', false) > 0;"), 't',
    'is_local => false on a transaction pool is the application\'s explicit choice');
is(run_sql($c2, "SELECT crmguard.current_principal();"), $pid{alice},
    'and, as documented, it is shared with the next client until given up');
run_sql($c1, 'SELECT crmguard.assume(NULL);');
is(run_sql($c2, $whoami), 'nobody:0', 'assume(NULL) ends the session-long identity');

# ---------------------------------------------------------------------------
# Session pooling: is_local => false, and the pooler's DISCARD ALL
# ---------------------------------------------------------------------------
my $s1 = client('app', 'crm_session');
is(run_sql($s1, "SELECT crmguard.assume('$alice_token', is_local => false) > 0;"), 't',
    'session client assumes alice for its session');
is(run_sql($s1, $whoami), $alice_view, 'the identity lasts across its transactions');
my $s1_pid = run_sql($s1, 'SELECT pg_backend_pid();');
quit($s1);
my $s2 = client('app', 'crm_session');
is(run_sql($s2, 'SELECT pg_backend_pid();'), $s1_pid, 'the next session client gets the same backend');
is(run_sql($s2, $whoami), 'nobody:0', 'session_pool_discard_all: after DISCARD ALL the next client is nobody');
quit($s2);
is($node->safe_psql('postgres',
        q{SELECT count(*) > 0 FROM crmguard.audit WHERE action = 'assume_end' AND detail->>'reason' = 'DISCARD ALL'}),
    't', 'the end by DISCARD ALL is audited');

# ---------------------------------------------------------------------------
# PostgREST's transaction shape, through the transaction pool
# ---------------------------------------------------------------------------
# pgbouncer pools per user and database: the next PostgREST request shares
# the authenticator's one server connection
my $rest = client('authenticator');
my $rest2 = client('authenticator');
my $who = q{SELECT coalesce(crmguard.current_principal()::text, 'nobody');};
is(run_sql($rest, 'SELECT pg_backend_pid();'), run_sql($rest2, 'SELECT pg_backend_pid();'),
    'both PostgREST connections share one server connection');
sub postgrest
{
    my ($headers) = @_;
    return run_sql($rest, qq{BEGIN;
SELECT set_config('request.headers', '$headers', true) IS NOT NULL;
SET LOCAL ROLE web_user;
SELECT crmguard.pre_request();
$whoami
COMMIT;});
}
($out, $err) = postgrest(qq({"authorization": "Bearer $hs_alice"}));
is($out, "t\n\n$alice_view", 'postgrest_hs256: a valid HS256 JWT acts as alice') or diag $err;
is(run_sql($rest2, $who), 'nobody', 'postgrest_hs256: the next request is nobody');
($out, $err) = postgrest(qq({"authorization": "Bearer $ed_bob", "accept": "*/*"}));
is($out, "t\n\n$bob_view", 'postgrest_eddsa: a valid EdDSA JWT acts as bob') or diag $err;
($out, $err) = postgrest(qq({"authorization": "bearer $hs_nokid"}));
is($out, "t\n\n$alice_view", 'postgrest_no_kid: a JWT without kid is tried against the keys of its algorithm');
($out, $err) = postgrest(qq({"accept": "*/*"}));
is($out, "t\n\nnobody:0", 'postgrest_no_header: nobody, although the role maps to carol');
($out, $err) = postgrest(qq({"authorization": "Bearer $tampered"}));
like($err, qr/invalid or expired token/, 'postgrest_tampered: CG031');
($out, $err) = postgrest(qq({"authorization": "Bearer $expired"}));
like($err, qr/invalid or expired token/, 'postgrest_expired: CG031');
is(run_sql($rest2, $who), 'nobody', 'after refused requests the next request is nobody');

# each refusal, and its reason, through assume_jwt
my %refused = (
    'alg_none' => [ $alg_none, 'jwt algorithm not accepted' ],
    'alg_key_mismatch' => [ $confused, 'jwt algorithm does not match its key' ],
    'unknown_kid' => [ $unknown_kid, 'jwt key id unknown' ],
    'not_yet_valid' => [ $not_yet, 'jwt not yet valid' ],
    'no_exp' => [ $no_exp, 'jwt without exp' ],
    'no_aud' => [ $no_aud, 'jwt without aud' ],
    'other_aud' => [ $other_aud, 'jwt for another audience' ],
    'unknown_principal' => [ $nobody_sub, 'principal inactive or missing' ],
    'tampered' => [ $tampered, 'jwt bad signature' ],
    'expired' => [ $expired, 'jwt expired' ],
    'garbage' => [ 'eyJhbGciOiJIUzI1NiJ9.e30', 'jwt malformed' ],
    'bad_json' => [ encode_base64url('{"alg":') . '.e30.AAAA', 'jwt malformed' ],
);
for my $case (sort keys %refused)
{
    my ($ret, $o, $e) = $node->psql('postgres',
        "SELECT crmguard.assume_jwt('$refused{$case}[0]')",
        extra_params => [ '-v', 'VERBOSITY=verbose' ]);
    like($e, qr/CG031/, "jwt_$case is refused with CG031");
}
$node->poll_query_until('postgres', q{SELECT count(*) >= 14 FROM crmguard.audit
    WHERE action = 'assume_refused' AND (detail->>'reason' LIKE 'jwt%' OR detail->>'reason' LIKE 'principal%')})
  or die 'refusals not audited';
for my $case (sort keys %refused)
{
    is($node->safe_psql('postgres', qq{SELECT count(*) > 0 FROM crmguard.audit
        WHERE action = 'assume_refused' AND detail->>'reason' = '$refused{$case}[1]'}), 't',
        "jwt_$case is audited as \"$refused{$case}[1]\"");
}
is($node->safe_psql('postgres', "SELECT crmguard.assume_jwt('$ed_bob', false) = $pid{bob}"), 't',
    'assume_jwt with is_local => false');

quit($_) for ($c1, $c2, $rest, $rest2);
$bouncer->kill_kill;
$node->stop;
done_testing();
