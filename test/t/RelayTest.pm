# Helpers of the crmguard-relay tests: the relay binary, a real SMTP sink
# (Debian's python3-aiosmtpd writing a Maildir), the HTTP provider of
# test/relay/http_provider.py, configuration files, waiting.
package RelayTest;
use strict;
use warnings;
use Exporter 'import';
use File::Basename;
use File::Spec;
use IO::Socket::INET;
use IPC::Run;
use Time::HiRes qw(sleep time);
use PostgreSQL::Test::Utils;

our @EXPORT = qw(relay_bin start_smtp_sink start_provider write_config start_relay stop_relay
                 mails provider_requests wait_for slurp_log);

# the source tree (scripts/run-suites.sh says where; the tests run from a copy)
our $src = $ENV{CRMGUARD_SRC} // File::Spec->rel2abs(dirname(__FILE__) . '/../..');

# the installed program (bindir is on PATH), else the build tree
sub relay_bin
{
    for my $dir (split /:/, $ENV{PATH})
    {
        return "$dir/crmguard-relay" if -x "$dir/crmguard-relay";
    }
    my $built = "$src/relay/crmguard-relay";
    return $built if -x $built;
    die "crmguard-relay is neither installed nor built";
}

sub wait_for
{
    my ($what, $timeout) = @_;
    my $end = time() + ($timeout // 30);
    while (time() < $end)
    {
        return 1 if $what->();
        sleep(0.1);
    }
    return 0;
}

# every helper process started here ends with the test, however it ends
my @started;
END { for my $h (@started) { eval { $h->kill_kill if $h->pumpable; }; } }

sub port_free
{
    my ($port) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp');
    die "port $port is taken already (a process left over?)" if $s;
}

sub wait_port
{
    my ($port) = @_;
    wait_for(sub { my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp');
                   return 0 unless $s; close($s); 1 }, 20)
      or die "nothing listens on port $port";
}

# python3 -m aiosmtpd on loopback, every message into a Maildir
sub start_smtp_sink
{
    my ($port, $maildir) = @_;
    # aiosmtpd's Maildir makes the directory (an existing empty one would lack tmp/ and new/)
    port_free($port);
    my $h = IPC::Run::start(['/usr/bin/python3', '-m', 'aiosmtpd', '-n', '-l', "127.0.0.1:$port",
                             '-c', 'aiosmtpd.handlers.Mailbox', $maildir],
                            '>', "$maildir-sink.log", '2>&1');
    push @started, $h;
    wait_port($port);
    return $h;
}

sub start_provider
{
    my ($port, $log, @plans) = @_;
    my $script = "$src/test/relay/http_provider.py";
    port_free($port);
    my $h = IPC::Run::start(['/usr/bin/python3', $script, $port, $log, @plans], '>', "$log.out", '2>&1');
    push @started, $h;
    wait_port($port);
    return $h;
}

sub write_config
{
    my ($path, $text, $mode) = @_;
    open(my $f, '>', $path) or die "$path: $!";
    print $f $text;
    close($f);
    chmod($mode // 0600, $path);
    return $path;
}

sub start_relay
{
    my ($config, $log) = @_;
    my $h = IPC::Run::start([relay_bin(), '--config', $config], '>>', $log, '2>>', $log);
    push @started, $h;
    return $h;
}

# SIGTERM; the raw wait status (0: exited with 0, no signal)
sub stop_relay
{
    my ($h) = @_;
    $h->kill_kill(grace => 20);    # SIGTERM, SIGKILL only if it has not stopped after 20 s
    return ($h->full_results)[0];
}

# the messages in a Maildir, as text
sub mails
{
    my ($maildir) = @_;
    my @texts;
    for my $f (sort glob("$maildir/new/*"))
    {
        push @texts, slurp_file($f);
    }
    return @texts;
}

# the requests the provider recorded (decoded crudely: one JSON object a line)
sub provider_requests
{
    my ($log) = @_;
    return () unless -f $log;
    require JSON::PP;
    return map { JSON::PP::decode_json($_) } grep { /\S/ } split /\n/, slurp_file($log);
}

sub slurp_log
{
    my ($log) = @_;
    return -f $log ? slurp_file($log) : '';
}

1;
