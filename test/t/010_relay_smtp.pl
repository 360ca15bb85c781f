# crmguard-relay over SMTP, end to end with real parts: a refused status change
# sends the customer an OTP e-mail through a real SMTP server on loopback
# (python3 -m aiosmtpd), the test reads the code from the delivered mail and
# completes the change with it.  The relay logs one line per delivery and
# never the body, survives a database restart, and stops cleanly on SIGTERM.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use RelayTest;

my $smtp_port = PostgreSQL::Test::Cluster::get_free_port();   # free across concurrent runs
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $maildir = "$tmp/maildir";
my $relay_log = "$tmp/relay.log";

my $node = PostgreSQL::Test::Cluster->new('relay_smtp');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE crm_relay LOGIN;
    GRANT crmguard_relay TO crm_relay;
    CREATE TABLE public.delivery (id bigint PRIMARY KEY, email text, status text);
    INSERT INTO public.delivery VALUES (1, 'giulia.rossi@example.com', 'Out for delivery'),
                                       (2, 'marco.bianchi@example.com', 'Out for delivery');
    SELECT crmguard.create_otp_rule('Delivery Confirmation OTP', 'public.delivery', 'status',
                                    '{Delivered}', 'email', channel => 'email', code_length => 6);
});

my $sink = start_smtp_sink($smtp_port, $maildir);
my $conninfo = $node->connstr('crm') . ' user=crm_relay';
my $config = write_config("$tmp/relay.conf", <<"EOC");
# the local sink speaks no TLS
[relay]
conninfo = $conninfo
lease = 60
batch = 10
poll = 1

[channel email]
type = smtp
host = 127.0.0.1
port = $smtp_port
tls = none
from = Consegne Rapide <otp\@consegne.example>
timeout = 5
EOC
my $relay = start_relay($config, $relay_log);
ok(wait_for(sub { slurp_log($relay_log) =~ /listening on crmguard_outbox/ }), 'the relay connects and listens');

# the rep marks the delivery delivered without a code: refused, and a code goes out
my ($ret, $out, $err) = $node->psql('crm', q{UPDATE public.delivery SET status = 'Delivered' WHERE id = 1});
like($err, qr/OTP required/, 'the change without a code is refused (CG001)');
my ($challenge) = $err =~ /Challenge (\d+)/;
ok($challenge, "the refusal names challenge $challenge");

ok(wait_for(sub { scalar(mails($maildir)) == 1 }), 'one e-mail reaches the SMTP server');
my ($mail) = mails($maildir);
like($mail, qr/^To: <giulia\.rossi\@example\.com>/m, 'addressed to the customer on record');
like($mail, qr/^From: Consegne Rapide <otp\@consegne\.example>/m, 'from the configured sender');
like($mail, qr/^Subject: Delivery Confirmation OTP/m, 'the rule names the subject');
my ($code) = $mail =~ /your code is ([0-9]+)/;
ok(defined $code && length($code) == 6, 'the mail holds a 6-digit code');
my $key = $node->safe_psql('crm', "SELECT idempotency_key FROM crmguard.outbox WHERE subject = 'Delivery Confirmation OTP'");
like($mail, qr/^Message-ID: <\Q$key\E\@crmguard-relay>/m, 'the idempotency key is the Message-ID');

# the code from the mail completes the change
ok(wait_for(sub { $node->safe_psql('crm', "SELECT state FROM crmguard.outbox WHERE idempotency_key = '$key'") eq 'sent' }),
   'the relay reports the message sent');
is($node->safe_psql('crm', "SELECT body IS NULL FROM crmguard.outbox WHERE idempotency_key = '$key'"), 't',
   'a sent message keeps no body (it held the code)');
$node->safe_psql('crm', "BEGIN; SELECT crmguard.verify_otp($challenge, '$code'); "
    . "UPDATE public.delivery SET status = 'Delivered' WHERE id = 1; COMMIT;");
is($node->safe_psql('crm', 'SELECT status FROM public.delivery WHERE id = 1'), 'Delivered',
   'the code read from the delivered e-mail lets the change through');

# one line per delivery, the recipient masked, never the body or the code
my $log = slurp_log($relay_log);
like($log, qr/message \d+ \(email to g\*+\@example\.com, attempt 1, key \Q$key\E\) delivered in \d+ ms/,
     'one log line for the delivery, recipient masked');
unlike($log, qr/\Q$code\E/, 'the log never shows the code');
unlike($log, qr/giulia/, 'the log never shows the address in clear');

# the database restarts under the relay: it reconnects and goes on
$node->restart;
($ret, $out, $err) = $node->psql('crm', q{UPDATE public.delivery SET status = 'Delivered' WHERE id = 2});
like($err, qr/OTP required/, 'after the restart a second change is refused');
ok(wait_for(sub { scalar(mails($maildir)) == 2 }, 60), 'the relay reconnected and delivered the next code');
like(slurp_log($relay_log), qr/connection to the database lost; reconnecting.*connected to database/s,
     'the log says it lost the connection and reconnected');

# SIGTERM: a clean stop
is(stop_relay($relay), 0, 'SIGTERM stops the relay with status 0');
like(slurp_log($relay_log), qr/stopping on a signal/, 'and it says so');

# --once: deliver what is due, then exit (for scripts and cron)
$node->safe_psql('crm', q{INSERT INTO crmguard.outbox (channel, recipient, subject, body)
                          VALUES ('email', 'ops@consegne.example', 'Daily report', 'All deliveries done.')});
my ($once_out, $once_err) = ('', '');
IPC::Run::run([relay_bin(), '--config', $config, '--once'], '>', \$once_out, '2>', \$once_err);
is($? >> 8, 0, '--once exits 0');
is($node->safe_psql('crm', "SELECT state FROM crmguard.outbox WHERE subject = 'Daily report'"), 'sent',
   '--once delivered the message that was due');
ok(wait_for(sub { scalar(mails($maildir)) == 3 }), 'and the SMTP server has it');

$sink->kill_kill;
$node->stop;
done_testing();
