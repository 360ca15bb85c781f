# Trusted devices end to end with the crmguard-device program against a real
# cluster: keygen, enroll, attest, query; tokens for an application; a
# revocation cutting off a running session; the JWT paths of a require_device
# principal; a challenge of another database; restarts (pending challenges
# fail closed, activity counts neither lost nor doubled).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);

my $node = PostgreSQL::Test::Cluster->new('devices');
$node->init;
my $data = $node->data_dir;
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $secret = join('', map { chr(int(rand(256))) } 1 .. 48);
PostgreSQL::Test::Utils::append_to_file("$data/jwks.json",
    sprintf('{"kty": "oct", "alg": "HS256", "k": "%s"}', encode_base64url($secret)));
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'crmguard'
crmguard.jwt_key_file = 'jwks.json'
});
$node->start;

my $dsn = $node->connstr('crm');
$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION crmguard');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE agent_pc LOGIN;
    CREATE ROLE app LOGIN;
    SELECT crmguard.add_principal('anna', '{agent}', NULL, '{"zone": "North"}', 'agent_pc',
                                  require_device => true);
    GRANT EXECUTE ON FUNCTION crmguard.issue_token(text, interval, bigint, bytea),
          crmguard.device_challenge(text) TO app;
    CREATE TABLE public.customer (id int PRIMARY KEY, zone text, name text);
    INSERT INTO public.customer VALUES (1, 'North', 'Rossi'), (2, 'North', 'Bianchi'), (3, 'South', 'Verdi');
    GRANT SELECT, INSERT ON public.customer TO agent_pc, app;
    SELECT crmguard.expose('public.customer', 'agents: zone', 'agent',
                           '{"field": "zone", "op": "=", "principal": "zone"}', 'edit');
    SELECT crmguard.track('public.customer');
});
$node->safe_psql('other', q{
    CREATE ROLE other_agent LOGIN;
    SELECT crmguard.add_principal('anna', '{agent}', db_role => 'other_agent', require_device => true);
});

# the last line of what a statement list printed
sub last_line
{
    my @lines = split /\n/, $_[0], -1;
    return $lines[-1];
}

sub device
{
    my @args = @_;
    my ($out, $err) = ('', '');
    my $ok = IPC::Run::run([ 'crmguard-device', @args ], '>', \$out, '2>', \$err);
    chomp $out;
    return ($ok, $out, $err);
}

# --- keygen: a 0600 file, never overwritten; a looser file is refused
my $key = "$tmp/anna.key";
my ($ok, $pk, $err) = device('keygen', $key);
ok($ok && $pk =~ /^\\x[0-9a-f]{64}$/, 'keygen prints the public key as a bytea literal');
is((stat $key)[2] & 07777, 0600, 'the secret key file has mode 0600');
($ok, undef, $err) = device('keygen', $key);
ok(!$ok && $err =~ /must not exist/, 'keygen never overwrites a key file');
chmod 0644, $key;
($ok, undef, $err) = device('sign', '--key', $key, '\x01');
ok(!$ok && $err =~ /group or world access/, 'a key file readable by others is refused');
chmod 0600, $key;
($ok, my $help) = device('--help');
ok($ok && $help =~ /keygen/ && $help =~ /enroll/ && $help =~ /attest/ && $help =~ /token/,
    '--help documents every command');

# --- enroll with a one-time code, as the agent itself
my $code = $node->safe_psql('crm', q{SELECT crmguard.enrollment_code('anna', '10 minutes')});
($ok, my $device, $err) = device('enroll', '--dsn', "$dsn user=agent_pc", '--key', $key,
    '--label', "anna's PC", $code);
ok($ok && $device =~ /^\d+$/, 'enroll registers the key with the code') or diag $err;
($ok, undef, $err) = device('enroll', '--dsn', "$dsn user=agent_pc", '--key', $key, $code);
ok(!$ok && $err =~ /CG031/, 'the code works once');

# --- attest, then query in the attested session; without attesting, nothing
is($node->safe_psql('crm', 'SELECT count(*) FROM public.customer', extra_params => [ '-U', 'agent_pc' ]),
    '0', 'from an unregistered PC (no attestation) the agent sees nothing');
($ok, my $rows, $err) = device('attest', '--dsn', "$dsn user=agent_pc", '--key', $key,
    '--device', $device, '-c', 'SELECT name FROM public.customer ORDER BY id');
is($rows, "Rossi\nBianchi", 'attested, the agent sees its zone') or diag $err;

# --- another key, unregistered, cannot attest as this device
my $rogue = "$tmp/rogue.key";
device('keygen', $rogue);
($ok, undef, $err) = device('attest', '--dsn', "$dsn user=agent_pc", '--key', $rogue,
    '--device', $device, '-c', 'SELECT 1');
ok(!$ok && $err =~ /CG030/, 'a signature by an unregistered key is refused with CG030');

# --- a challenge made in another database does not attest here
my $other_ch = $node->safe_psql('other', q{SELECT crmguard.device_challenge('anna')});
($ok, my $other_sig) = device('sign', '--key', $key, $other_ch);
my ($ret, $out, $stderr) = $node->psql('crm',
    "SELECT crmguard.attest_device($device, '$other_sig')", extra_params => [ '-U', 'agent_pc' ]);
like($stderr, qr/signs no pending challenge/, 'a challenge signed for another database is refused');

# --- a token for the application, minted with the device's signature
($ok, my $token, $err) = device('token', '--dsn', "$dsn user=app", '--key', $key,
    '--device', $device, '--principal', 'anna', '--valid-for', '10 minutes');
ok($ok && $token =~ /^cg1\./, 'token mints a device token for the application') or diag $err;
is(last_line($node->safe_psql('crm', "SELECT crmguard.assume('$token', false); SELECT count(*) FROM public.customer",
        extra_params => [ '-U', 'app' ])),
    "2", 'the application sees the agent\'s zone through the token');

# --- JWT paths of a require_device principal: identified, but no gate passes
sub jwt
{
    my ($claims) = @_;
    my $input = encode_base64url('{"alg":"HS256","typ":"JWT"}') . '.' . encode_base64url($claims);
    return $input . '.' . encode_base64url(hmac_sha256($input, $secret));
}
my $jwt = jwt(sprintf('{"sub":"anna","aud":"crm","exp":%d}', time + 600));
 is(last_line($node->safe_psql('crm', "SELECT crmguard.assume_jwt('$jwt', false) > 0; SELECT count(*) FROM public.customer",
        extra_params => [ '-U', 'app' ])),
    "0", 'assume_jwt: a require_device principal sees nothing without attesting');
($ret, $out, $stderr) = $node->psql('crm',
    "SELECT crmguard.assume_jwt('$jwt', false); INSERT INTO public.customer VALUES (9, 'North', 'Neri')",
    extra_params => [ '-U', 'app' ]);
like($stderr, qr/has not attested a trusted device/, 'assume_jwt: a write is refused with CG030');
is(last_line($node->safe_psql('crm', qq{BEGIN; SELECT set_config('request.headers', '{"authorization": "Bearer $jwt"}', true);
        SELECT crmguard.pre_request(); SELECT count(*) FROM public.customer; COMMIT;},
        extra_params => [ '-U', 'app' ])),
    "0", 'pre_request: a require_device principal sees nothing without attesting');

# --- revoking the device cuts off a running session at its next statement
my ($in, $bg_out, $bg_err) = ('', '', '');
my $h = IPC::Run::start([ 'crmguard-device', 'attest', '--dsn', "$dsn user=agent_pc", '--key', $key,
    '--device', $device, '-c', 'SELECT count(*) FROM public.customer', '-c', 'SELECT pg_sleep(3)',
    '-c', 'SELECT count(*) FROM public.customer' ], '>', \$bg_out, '2>', \$bg_err);
sleep 1;
$node->safe_psql('crm', "SELECT crmguard.revoke_device($device)");
$h->finish;
is($bg_out, "2\n\n0\n", 'an attested session sees nothing from the statement after the revocation')
  or diag $bg_err;
is(last_line($node->safe_psql('crm', "SELECT crmguard.assume('$token', false); SELECT count(*) FROM public.customer",
        extra_params => [ '-U', 'app' ])),
    "0", 'the revoked device\'s token shows nothing');

# --- restart: a challenge made before it is no longer pending (fail closed)
my $key2 = "$tmp/anna2.key";
($ok, my $pk2) = device('keygen', $key2);
my $device2 = $node->safe_psql('crm', "SELECT crmguard.register_device('anna', 'new PC', '$pk2')");
my $ch = $node->safe_psql('crm', q{SELECT crmguard.device_challenge('anna')});
($ok, my $sig) = device('sign', '--key', $key2, $ch);

# activity committed before a crash stays, once
$node->safe_psql('crm', q{CREATE ROLE luca LOGIN; GRANT INSERT ON public.customer TO luca;
    SELECT crmguard.add_principal('luca', '{agent}', NULL, '{"zone": "South"}', 'luca');});
$node->safe_psql('crm', q{INSERT INTO public.customer SELECT i, 'South', 'x' FROM generate_series(10, 19) i},
    extra_params => [ '-U', 'luca' ]);
my $before = $node->safe_psql('crm', q{SELECT action, sum(n) FROM crmguard.activity_log a
    JOIN crmguard.principal p ON p.id = a.principal WHERE p.name = 'luca' GROUP BY 1});
$node->stop('immediate');
$node->start;
my $after = $node->safe_psql('crm', q{SELECT action, sum(n) FROM crmguard.activity_log a
    JOIN crmguard.principal p ON p.id = a.principal WHERE p.name = 'luca' GROUP BY 1});
is($before, 'insert|10', 'a committed statement is counted');
is($after, $before, 'after a crash and restart, counts are neither lost nor doubled');

($ret, $out, $stderr) = $node->psql('crm',
    "SELECT crmguard.issue_token('anna', '1 hour', $device2, '$sig')", extra_params => [ '-U', 'app' ]);
like($stderr, qr/signs no pending challenge/, 'a challenge from before the restart is refused');
($ok, $rows, $err) = device('attest', '--dsn', "$dsn user=agent_pc", '--key', $key2,
    '--device', $device2, '-c', 'SELECT count(*) FROM public.customer');
is($rows, '2', 'a fresh challenge after the restart attests');

$node->stop;
done_testing();
