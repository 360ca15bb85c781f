# Two crmguard-relays at once never deliver a message twice in the normal
# case; a relay killed mid-delivery (SIGKILL) leaves its message to the other
# once the lease runs out (at least once, the same idempotency key); SIGTERM
# finishes the delivery in progress and gives the rest of the batch back.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use RelayTest;

my $smtp_port = PostgreSQL::Test::Cluster::get_free_port();
my $http_port = PostgreSQL::Test::Cluster::get_free_port();
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $maildir = "$tmp/maildir";
my $requests = "$tmp/requests.jsonl";

my $node = PostgreSQL::Test::Cluster->new('relay_failover');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE crm_relay LOGIN;
    GRANT crmguard_relay TO crm_relay;
});
my $conninfo = $node->connstr('crm') . ' user=crm_relay';
my $sink = start_smtp_sink($smtp_port, $maildir);
my $provider = start_provider($http_port, $requests, '/slow=sleep2,200', '/steady=sleep0.5');

# --- two relays, 300 messages
my $mail_config = write_config("$tmp/mail.conf", <<"EOC");
[relay]
conninfo = $conninfo
lease = 60
batch = 5
poll = 1
[channel email]
type = smtp
host = 127.0.0.1
port = $smtp_port
tls = none
from = crm\@example.com
timeout = 5
EOC
my $a = start_relay($mail_config, "$tmp/a.log");
my $b = start_relay($mail_config, "$tmp/b.log");
ok(wait_for(sub { slurp_log("$tmp/a.log") =~ /listening/ && slurp_log("$tmp/b.log") =~ /listening/ }),
   'two relays listen');
$node->safe_psql('crm', q{
    INSERT INTO crmguard.outbox (channel, recipient, subject, body)
    SELECT 'email', 'customer' || i || '@example.com', 'Message ' || i, 'Hello ' || i FROM generate_series(1, 300) i;
    NOTIFY crmguard_outbox, 'email';
});
ok(wait_for(sub { $node->safe_psql('crm', "SELECT count(*) FROM crmguard.outbox WHERE state = 'sent'") == 300 }, 120),
   'all 300 messages are sent');
my @mails = mails($maildir);
is(scalar(@mails), 300, 'the SMTP server received 300 e-mails: none twice');
my %ids = map { /^Message-ID: <([^@]+)\@/m ? ($1 => 1) : () } @mails;
is(scalar(keys %ids), 300, '300 distinct idempotency keys');
my $by_a = () = slurp_log("$tmp/a.log") =~ /delivered in/g;
my $by_b = () = slurp_log("$tmp/b.log") =~ /delivered in/g;
is($by_a + $by_b, 300, "one delivery line per message ($by_a by one relay, $by_b by the other)");
ok($by_a > 0 && $by_b > 0, 'both relays took a share');
is(stop_relay($a), 0, 'relay A stops cleanly');
is(stop_relay($b), 0, 'relay B stops cleanly');

# --- SIGKILL mid-delivery: the other relay delivers after the lease runs out
my $slow_config = write_config("$tmp/slow.conf", <<"EOC");
[relay]
conninfo = $conninfo
lease = 4
batch = 1
poll = 1
[channel slow]
type = http
url = http://127.0.0.1:$http_port/slow
timeout = 3
EOC
my $c = start_relay($slow_config, "$tmp/c.log");
ok(wait_for(sub { slurp_log("$tmp/c.log") =~ /listening/ }), 'relay C listens');
$node->safe_psql('crm', q{
    INSERT INTO crmguard.outbox (channel, recipient, subject, body) VALUES ('slow', '+393470000003', 'Slow', 'hello');
    NOTIFY crmguard_outbox, 'slow';
});
ok(wait_for(sub { grep { $_->{path} eq '/slow' } provider_requests($requests) }), 'relay C is delivering');
$c->signal('KILL');
$c->finish;
my $d = start_relay($slow_config, "$tmp/d.log");
ok(wait_for(sub { $node->safe_psql('crm', "SELECT state FROM crmguard.outbox WHERE channel = 'slow'") eq 'sent' }, 30),
   'relay D delivers the message relay C was killed delivering');
my @slow = grep { $_->{path} eq '/slow' } provider_requests($requests);
is(scalar(@slow), 2, 'the provider saw it twice (at least once)');
is($slow[0]{headers}{'idempotency-key'}, $slow[1]{headers}{'idempotency-key'}, 'with the same idempotency key');
cmp_ok($slow[1]{at} - $slow[0]{at}, '>=', 3.5, 'not before the lease (4 s) ran out');
is($node->safe_psql('crm', "SELECT attempts FROM crmguard.outbox WHERE channel = 'slow'"), '2', 'two attempts counted');
like(slurp_log("$tmp/d.log"), qr/\(slow to [^)]*attempt 2[^)]*\) delivered/, 'relay D logs attempt 2');
is(stop_relay($d), 0, 'relay D stops cleanly');

# --- SIGTERM mid-batch: the delivery in progress finishes, the rest goes back
my $steady_config = write_config("$tmp/steady.conf", <<"EOC");
[relay]
conninfo = $conninfo
lease = 30
batch = 5
poll = 1
[channel steady]
type = http
url = http://127.0.0.1:$http_port/steady
timeout = 3
EOC
my $e = start_relay($steady_config, "$tmp/e.log");
ok(wait_for(sub { slurp_log("$tmp/e.log") =~ /listening/ }), 'relay E listens');
$node->safe_psql('crm', q{
    INSERT INTO crmguard.outbox (channel, recipient, subject, body)
    SELECT 'steady', '+39347000001' || i, 'Steady', 'hello' FROM generate_series(1, 5) i;
    NOTIFY crmguard_outbox, 'steady';
});
ok(wait_for(sub { grep { $_->{path} eq '/steady' } provider_requests($requests) }), 'relay E is delivering a batch of 5');
my $t0 = time();
is(stop_relay($e), 0, 'SIGTERM: relay E exits with 0');
cmp_ok(time() - $t0, '<', 2.5, 'after the delivery in progress, not the whole batch');
my ($sent, $back, $other) = split /\|/, $node->safe_psql('crm', q{
    SELECT count(*) FILTER (WHERE state = 'sent' AND attempts = 1),
           count(*) FILTER (WHERE state = 'pending' AND attempts = 0 AND lease IS NULL),
           count(*) FILTER (WHERE NOT (state = 'sent' AND attempts = 1) AND NOT (state = 'pending' AND attempts = 0 AND lease IS NULL))
      FROM crmguard.outbox WHERE channel = 'steady'});
ok($sent >= 1 && $sent <= 2, "the delivery in progress finished ($sent sent)");
is($other, 0, "no message in any other state");
is($back + $sent, 5, "the rest was given back untried ($back pending, no attempt counted, no lease)");
like(slurp_log("$tmp/e.log"), qr/stopping on a signal/, 'relay E says why it stopped');

$sink->kill_kill;
$provider->kill_kill;
$node->stop;
done_testing();
