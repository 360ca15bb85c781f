# OTP state that must survive rollbacks, fail closed across restarts, and
# OTP rules kept by pg_dump / pg_restore.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('otp');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE TABLE public.delivery (id bigint PRIMARY KEY, phone text, status text);
    INSERT INTO public.delivery VALUES (1, '+39 347 555 0123', 'Out for delivery'),
                                       (2, '+39 347 555 0124', 'Out for delivery');
    SELECT crmguard.create_otp_rule('Delivery Confirmation OTP', 'public.delivery', 'status',
                                    '{Delivered}', 'phone', delivery => 'manual',
                                    code_length => 5, max_attempts => 3);
});

sub code_of
{
    my ($challenge) = @_;
    return $node->safe_psql('crm', q{
        SELECT substring(body FROM 'code is ([0-9]+)') FROM crmguard.outbox ORDER BY id DESC LIMIT 1});
}

# rollback brute force: 1,000 guesses, each in a transaction rolled back
my $c1 = $node->safe_psql('crm', q{SELECT crmguard.request_otp('public.delivery', '1', 'Delivered')});
my $code1 = code_of($c1);
my $script = '';
my $guesses = 0;
for my $guess (1 .. 1000)
{
    my $g = sprintf('%05d', $guess);
    next if $g eq $code1;
    $script .= "BEGIN; SELECT crmguard.verify_otp($c1, '$g'); ROLLBACK;\n";
    $guesses++;
}
my ($ret, $out, $err) = $node->psql('crm', $script, on_error_stop => 0);
my $wrong = () = $err =~ /wrong OTP code/g;
my $locked = () = $err =~ /is locked after 3 failed attempts/g;
is($wrong, 3, 'only max_attempts guesses are ever compared');
is($locked, $guesses - 3, 'every later guess is refused as locked, although each rolled back');
($ret, $out, $err) = $node->psql('crm', "SELECT crmguard.verify_otp($c1, '$code1')");
like($err, qr/is locked/, 'the right code cannot unlock a locked challenge');
is($node->safe_psql('crm', "SELECT state, attempts FROM crmguard.otp_challenge WHERE id = $c1"),
   'locked|3', 'the view shows the challenge locked after 3 attempts');

# restart: a challenge issued before it cannot be verified after it
my $c2 = $node->safe_psql('crm', q{SELECT crmguard.request_otp('public.delivery', '2', 'Delivered')});
my $code2 = code_of($c2);
$node->restart;
($ret, $out, $err) = $node->psql('crm', "BEGIN; SELECT crmguard.verify_otp($c2, '$code2'); "
    . "UPDATE public.delivery SET status = 'Delivered' WHERE id = 2; COMMIT;");
like($err, qr/OTP challenge $c2 is void/, 'a challenge from before a restart fails closed');
like($err, qr/the server restarted or the database was restored/, 'and says why');
is($node->safe_psql('crm', 'SELECT status FROM public.delivery WHERE id = 2'), 'Out for delivery',
   'the row did not change');
is($node->safe_psql('crm', "SELECT state FROM crmguard.otp_challenge WHERE id = $c2"), 'void',
   'the view shows the challenge void');

# a new challenge after the restart works
my $c3 = $node->safe_psql('crm', q{SELECT crmguard.request_otp('public.delivery', '2', 'Delivered')});
my $code3 = code_of($c3);
$node->safe_psql('crm', "BEGIN; SELECT crmguard.verify_otp($c3, '$code3'); "
    . "UPDATE public.delivery SET status = 'Delivered' WHERE id = 2; COMMIT;");
is($node->safe_psql('crm', 'SELECT status FROM public.delivery WHERE id = 2'), 'Delivered',
   'a challenge issued after the restart verifies');

# automatic delivery survives the refused statement's rollback
$node->safe_psql('crm', q{
    SELECT crmguard.create_otp_rule('Returned OTP', 'public.delivery', 'status', '{Returned}', 'phone')});
($ret, $out, $err) = $node->psql('crm', q{UPDATE public.delivery SET status = 'Returned' WHERE id = 1});
like($err, qr/OTP required to set "status" to "Returned"/, 'a gated change without code is refused');
like($err, qr/its code was sent to \+39 \*\*\* \*\*\* 123/, 'the detail names the masked recipient');
$node->poll_query_until('crm', q{SELECT count(*) = 1 FROM crmguard.outbox WHERE subject = 'Returned OTP'})
  or die 'the worker never sent the code';
pass('the worker queued the code in its own transaction');

# pg_dump / pg_restore keep the rules, and the restored guard works
my $dump = $node->basedir . '/crm.dump';
$node->command_ok(['pg_dump', '-Fc', '-d', $node->connstr('crm'), '-f', $dump], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE crm_restored');
$node->command_ok(['pg_restore', '--exit-on-error', '-d', $node->connstr('crm_restored'), $dump],
                  'pg_restore');
my $rules_sql = q{SELECT rule_name, target, status_column, to_values, delivery, code_length,
                         max_attempts FROM crmguard.otp_rule ORDER BY id};
is($node->safe_psql('crm_restored', $rules_sql), $node->safe_psql('crm', $rules_sql),
   'OTP rules are restored intact');
($ret, $out, $err) = $node->psql('crm_restored',
    q{UPDATE public.delivery SET status = 'Delivered' WHERE id = 1});
like($err, qr/OTP required to set "status" to "Delivered"/, 'the restored table is still guarded');

$node->stop;
done_testing();
