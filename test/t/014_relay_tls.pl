# crmguard-relay's SMTP security: STARTTLS with AUTH against a server that
# requires both (a self-signed CA given by ca_file); a wrong password, a server without STARTTLS and an untrusted certificate all
# fail without sending anything, and the password never reaches the log.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RelayTest;

my ($starttls_port, $plain_port) = (PostgreSQL::Test::Cluster::get_free_port(), PostgreSQL::Test::Cluster::get_free_port());
my $tmp = PostgreSQL::Test::Utils::tempdir;

my $node = PostgreSQL::Test::Cluster->new('relay_tls');
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

# a self-signed certificate for 127.0.0.1
IPC::Run::run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
               '-keyout', "$tmp/key.pem", '-out', "$tmp/cert.pem", '-subj', '/CN=127.0.0.1',
               '-addext', 'subjectAltName=IP:127.0.0.1'], '>', '/dev/null', '2>', '/dev/null')
  or die 'openssl failed';

my @sinks;
for my $s ([$starttls_port, 'starttls'])
{
    my ($port, $mode) = @$s;
    RelayTest::port_free($port);
    my $h = IPC::Run::start(['/usr/bin/python3', "$RelayTest::src/test/relay/smtp_tls_sink.py", $port,
                             "$tmp/maildir-$mode", "$tmp/cert.pem", "$tmp/key.pem", 'crm@example.com',
                             'pa55-w0rd'], '>', "$tmp/sink-$mode.log", '2>&1');
    push @sinks, $h;
    RelayTest::wait_port($port);
}
my $plain = start_smtp_sink($plain_port, "$tmp/maildir-plain");

# one message on a channel, one run of the relay (--once); the outcome
sub deliver
{
    my ($channel, $settings) = @_;
    my $config = write_config("$tmp/$channel.conf", <<"EOC");
[relay]
conninfo = $conninfo
lease = 60
[channel $channel]
type = smtp
host = 127.0.0.1
from = CRM <crm\@example.com>
timeout = 5
$settings
EOC
    $node->safe_psql('crm', "INSERT INTO crmguard.outbox (channel, recipient, subject, body)
                             VALUES ('$channel', 'customer\@example.com', 'Secure', 'your code is 424242')");
    my ($out, $err) = ('', '');
    IPC::Run::run([relay_bin(), '--config', $config, '--once'], '>', \$out, '2>', \$err, IPC::Run::timeout(30));
    my ($state, $error) = split /\|/, $node->safe_psql('crm',
        "SELECT state, coalesce(last_error, '') FROM crmguard.outbox WHERE channel = '$channel'");
    return ($state, $error, $err);
}

sub count_mail { my ($mode) = @_; return scalar(mails("$tmp/maildir-$mode")); }

my ($state, $error, $log) = deliver('starttls_auth', "port = $starttls_port\ntls = starttls\nca_file = $tmp/cert.pem\n"
                                    . "username = crm\@example.com\npassword = pa55-w0rd");
is($state, 'sent', 'STARTTLS and AUTH: delivered');
is(count_mail('starttls'), 1, 'the server that requires both received it');
unlike($log, qr/pa55-w0rd/, 'the password is not in the log');

($state, $error, $log) = deliver('wrong_password', "port = $starttls_port\ntls = starttls\nca_file = $tmp/cert.pem\n"
                                 . "username = crm\@example.com\npassword = guess");
is($state, 'pending', 'a wrong password: not delivered, to be retried');
# (aiosmtpd does not answer a failed AUTH in time: the relay's timeout ends it)
like($error, qr/^SMTP 535|timed out/, "an error is recorded ($error)");
unlike($log, qr/guess/, 'the password is not in the log');

($state, $error, $log) = deliver('no_starttls', "port = $plain_port\ntls = starttls");
is($state, 'pending', 'a server without STARTTLS: not delivered');
like($error, qr/STARTTLS|SSL|TLS/i, "the error says why ($error)");
is(count_mail('plain'), 0, 'nothing was sent in clear');

($state, $error, $log) = deliver('untrusted', "port = $starttls_port\ntls = starttls\n"
                                 . "username = crm\@example.com\npassword = pa55-w0rd");
is($state, 'pending', 'an untrusted certificate: not delivered');
like($error, qr/certificate/i, "the error names the certificate ($error)");
is(count_mail('starttls'), 1, 'the server received nothing more');

$_->kill_kill for @sinks;
$plain->kill_kill;
$node->stop;
done_testing();
