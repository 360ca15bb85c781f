# No one can starve others (issue 12, holes 3 and 6), with real concurrent
# sessions; each test asserts what the OTHER principal experiences.
#  - rollback flood of request_otp: one principal's rolled-back (or
#    committed) challenges never leave another principal, in this or another
#    database, without a challenge;
#  - audit flood: sessions flooding assume('junk') never drop another
#    session's refusal records, and their own floods are summarised.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('flood');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'\nmax_connections = 40");
$node->start;

my $setup = q{
    CREATE EXTENSION crmguard;
    SELECT crmguard.add_principal('flooder', '{agent}', db_role => 'flooder');
    SELECT crmguard.add_principal('victim', '{agent}', db_role => 'victim');
    CREATE TABLE public.delivery (id bigint PRIMARY KEY, phone text, status text);
    INSERT INTO public.delivery SELECT i, '+39 347 555 ' || i, 'Out' FROM generate_series(1, 400) i;
    GRANT SELECT, UPDATE ON public.delivery TO flooder, victim;
    -- rate limits out of the way: only the bounds of shared memory are tested here
    SELECT crmguard.create_otp_rule('Flood OTP', 'public.delivery', 'status', '{Delivered}', 'phone',
                                    delivery => 'manual', valid_for => '1 hour',
                                    challenges_per_row => 1000000,
                                    challenges_per_principal => 1000000);
};
$node->safe_psql('postgres', 'CREATE ROLE flooder LOGIN; CREATE ROLE victim LOGIN');
$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('postgres', 'CREATE DATABASE crm2');
$node->safe_psql('crm', $setup);
$node->safe_psql('crm2', $setup);

# the victim asks for a fresh challenge on a row of its own, in each database
my $victim_row = 0;
sub victim_request
{
    my ($db) = @_;
    $victim_row++;
    my ($ret, $out, $err) = $node->psql($db,
        "SET ROLE victim; SELECT crmguard.request_otp('public.delivery', '" . (300 + $victim_row % 100)
          . "', 'Delivered')");
    return $ret == 0 ? 'ok' : $err;
}

# --- hole 3: a rollback flood of request_otp -----------------------------------
my $flood = $node->background_psql('crm', on_error_stop => 0);
$flood->query_until(qr/flooding/, q{
    SET ROLE flooder;
    \echo flooding
    DO $$
    BEGIN
        FOR i IN 1..20000 LOOP
            BEGIN
                PERFORM crmguard.request_otp('public.delivery', (1 + i % 250)::text, 'Delivered');
                RAISE EXCEPTION 'undo';
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END LOOP;
    END
    $$;
    \echo flood done
});
my @during;
for my $i (1 .. 10)
{
    push @during, victim_request('crm'), victim_request('crm2');
}
$flood->query_until(qr/flood done/, '');
my @after = (victim_request('crm'), victim_request('crm2'));
is(scalar(grep { $_ ne 'ok' } @during), 0,
   'the other principal gets every challenge while one floods with rolled-back requests')
  or diag(join("\n", grep { $_ ne 'ok' } @during));
is(scalar(grep { $_ ne 'ok' } @after), 0, 'and after the flood, in both databases')
  or diag(join("\n", @after));
is($node->safe_psql('crm', q{
       SELECT count(*) FROM crmguard.otp_challenge_state c
        WHERE crmguard.otp_attempts(c.id) IS NOT DISTINCT FROM NULL}), '0',
   'every committed challenge still has its attempt counter');

# --- hole 3: committed challenges are bounded per principal ----------------------
my ($ret, $out, $err) = $node->psql('crm', q{
    SET ROLE flooder;
    DO $$
    BEGIN
        FOR i IN 1..290 LOOP
            PERFORM crmguard.request_otp('public.delivery', i::text, 'Delivered');
            COMMIT;
        END LOOP;
    END
    $$;
});
like($err, qr/too many live OTP challenges/, 'one principal cannot hold more than its share of live challenges');
like($err, qr/At most 256 challenges of one principal/, 'and is told so');
is(victim_request('crm'), 'ok', 'the other principal still gets a challenge');
is(victim_request('crm2'), 'ok', 'so does a principal of another database');

# --- hole 6: an audit flood ------------------------------------------------------
my $flooders = 8;
my $per_flooder = 3000;
my @bg;
for my $i (1 .. $flooders)
{
    my $s = $node->background_psql('crm', on_error_stop => 0);
    $s->query_until(qr/assuming/, qq{
        SET ROLE flooder;
        \\echo assuming
        DO \$\$
        BEGIN
            FOR i IN 1..$per_flooder LOOP
                BEGIN
                    PERFORM crmguard.assume('junk');
                EXCEPTION WHEN OTHERS THEN
                    NULL;
                END;
            END LOOP;
        END
        \$\$;
        \\echo assumed
    });
    push @bg, $s;
}
# the victim presents 50 forged tokens while the others flood
my $token = $node->safe_psql('crm', q{SELECT crmguard.issue_token('victim')});
my $forged = substr($token, 0, -2) . (substr($token, -2, 1) eq 'A' ? 'B' : 'A') . substr($token, -1);
my $script = "SET ROLE victim;\n" . ("SELECT crmguard.assume('$forged');\n" x 50);
($ret, $out, $err) = $node->psql('crm', $script, on_error_stop => 0);
my $refused = () = $err =~ /invalid or expired token/g;
is($refused, 50, 'the victim\'s 50 forged tokens are refused');
$_->query_until(qr/assumed/, '') for @bg;
$_->quit for @bg;

my $victim_sql = q{
    SELECT COALESCE(sum(COALESCE((detail->>'count')::bigint, 1)), 0) FROM crmguard.audit
     WHERE action = 'assume_refused' AND detail->>'session_role' = 'victim'};
my $flood_sql = q{
    SELECT COALESCE(sum(COALESCE((detail->>'count')::bigint, 1)), 0) FROM crmguard.audit
     WHERE action = 'assume_refused' AND detail->>'session_role' = 'flooder'};
$node->poll_query_until('crm', "SELECT ($victim_sql) >= 50 AND ($flood_sql) >= " . $flooders * $per_flooder)
  or diag('audit did not catch up');
is($node->safe_psql('crm', $victim_sql), '50',
   'every one of the victim\'s refusals is in the audit log, despite the flood');
is($node->safe_psql('crm', $flood_sql), $flooders * $per_flooder,
   'every refusal of the flooders is counted too');
my $flood_rows = $node->safe_psql('crm', q{
    SELECT count(*) FROM crmguard.audit
     WHERE action = 'assume_refused' AND detail->>'session_role' = 'flooder'});
cmp_ok($flood_rows, '<', $flooders * $per_flooder / 4, "a flood is summarised ($flood_rows records for "
       . $flooders * $per_flooder . ' refusals)');
like($node->safe_psql('crm', q{
       SELECT detail->>'message' FROM crmguard.audit
        WHERE detail->>'summary' = 'true' AND detail->>'session_role' = 'flooder' LIMIT 1}),
     qr/^\d+ refused assume\(\) calls from role flooder in \d+ s$/, 'a summary says what happened');
is($node->safe_psql('crm', 'SELECT ok FROM crmguard.verify_audit()'), 't', 'the chain verifies');
my $log = slurp_file($node->logfile);
my $lost = () = $log =~ /could not queue audit record/g;
is($lost, 0, 'no audit record was dropped');

# --- issue 12, hole 4: request_otp reads the row as the caller ------------------
$node->safe_psql('crm2', q{
    SELECT crmguard.expose('public.delivery', 'agents: first rows', 'agent',
                           '{"field": "id", "op": "<=", "value": 10}')});
($ret, $out, $err) = $node->psql('crm2',
    q{SET ROLE victim; SELECT crmguard.request_otp('public.delivery', '20', 'Delivered')});
like($err, qr/row "20" of table delivery does not exist/,
     'a row hidden by a visibility rule is answered like a missing one');
($ret, $out, $err) = $node->psql('crm2',
    q{SET ROLE victim; SELECT crmguard.request_otp('public.delivery', '4000', 'Delivered')});
like($err, qr/row "4000" of table delivery does not exist/, 'exactly like a missing one');
is($node->safe_psql('crm2', q{SELECT count(*) FROM crmguard.outbox WHERE recipient = '+39 347 555 20'}),
   '0', 'and no code went to the hidden row\'s customer');

$node->stop;
done_testing();
