# crmguard-relay refuses a bad configuration with a clear error naming the
# file and line, and exits 78 (EX_CONFIG): unknown channel type, missing URL,
# unreadable file, credentials readable by others, and more.  --help is a
# man page; the shipped example passes --check.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use File::Copy;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use RelayTest;

my $tmp = PostgreSQL::Test::Utils::tempdir;
my $bin = relay_bin();

sub relay
{
    my (@args) = @_;
    my ($out, $err) = ('', '');
    # a configuration wrongly accepted would start the relay: never wait long for it
    my $ok = eval { IPC::Run::run([$bin, @args], '<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(15)); 1 };
    return (-1, $out, "still running after 15 s: the configuration was accepted\n$err") unless $ok;
    return ($? >> 8, $out, $err);
}

sub refused
{
    my ($name, $text, $pattern, $mode) = @_;
    my $path = write_config("$tmp/$name.conf", $text, $mode);
    my ($status, $out, $err) = relay('--config', $path);
    is($status, 78, "$name: exit status 78");
    like($err, $pattern, "$name: the error says what and where");
}

my ($status, $out, $err) = relay('--help');
is($status, 0, '--help exits 0');
like($out, qr/^NAME\n.*^SYNOPSIS\n.*^DESCRIPTION\n.*^OPTIONS\n.*^CONFIGURATION\n.*^SIGNALS\n.*^EXIT STATUS\n/ms,
     '--help reads as a man page');
($status, $out, $err) = relay('--bogus');
is($status, 2, 'an unknown argument exits 2');

copy("$RelayTest::src/examples/crmguard-relay.conf", "$tmp/example.conf") or die;
chmod(0600, "$tmp/example.conf");
($status, $out, $err) = relay('--config', "$tmp/example.conf", '--check');
is($status, 0, 'the example configuration passes --check');
like($out, qr/is valid \(4 channels\)/, 'with its four channels');

my $relay = "[relay]\nconninfo = dbname=crm\n";
refused('unknown_type', "$relay\n[channel fax]\ntype = fax\n",
        qr/unknown_type\.conf:5: unknown channel type "fax" \(expected smtp or http\)/);
refused('missing_url', "$relay\n[channel sms]\ntype = http\nformat = form\n",
        qr/missing_url\.conf:4: http channel "sms" has no url/);
refused('missing_host', "$relay\n[channel email]\ntype = smtp\nfrom = a\@b.example\n",
        qr/missing_host\.conf:4: smtp channel "email" has no host/);
refused('world_readable', "$relay\n[channel sms]\ntype = http\nurl = http://x/\nbasic_auth = AC1:secret\n",
        qr/configuration file ".*world_readable\.conf" has group or world access \(mode 0644\); it holds credentials/, 0644);
refused('group_readable', "$relay\n[channel sms]\ntype = http\nurl = http://x/\n",
        qr/has group or world access \(mode 0640\)/, 0640);
SKIP:
{
    skip 'root reads any file', 2 if $> == 0;
    refused('unreadable', "$relay\n", qr/could not open configuration file ".*unreadable\.conf": Permission denied/, 0000);
}
($status, $out, $err) = relay('--config', "$tmp/nonexistent.conf");
is($status, 78, 'a missing file: exit status 78');
like($err, qr/could not open configuration file ".*nonexistent\.conf": No such file or directory/, 'a missing file is named');
refused('unknown_key', "$relay\n[channel sms]\ntype = http\nurl = http://x/\nretries = 5\n",
        qr/unknown_key\.conf:7: unknown key "retries" in channel "sms"/);
refused('wrong_kind', "$relay\n[channel sms]\ntype = http\nhost = smtp.example.com\n",
        qr/wrong_kind\.conf:6: "host" does not apply to a http channel/);
refused('bad_tls', "$relay\n[channel email]\ntype = smtp\ntls = maybe\n",
        qr/bad_tls\.conf:6: tls must be none, starttls or tls/);
refused('bad_placeholder', "$relay\n[channel sms]\ntype = http\nurl = http://x/\nbody = {\"to\": \"{{phone}}\"}\n",
        qr/bad_placeholder\.conf:7: unknown placeholder "\{\{phone\}\}"/);
refused('unknown_section', "$relay\n[channels]\n", qr/unknown_section\.conf:4: unknown section "\[channels\]"/);
refused('no_conninfo', "[relay]\nlease = 60\n[channel sms]\ntype = http\nurl = http://x/\n",
        qr/no_conninfo\.conf: no conninfo in \[relay\]/);
refused('short_lease', "[relay]\nconninfo = dbname=crm\nlease = 5\nbatch = 10\n[channel sms]\ntype = http\nurl = http://x/\n",
        qr/short_lease\.conf:3: lease \(5 s\) must be longer than batch \(10\) times the timeout of channel "sms" \(10 s\)/);
refused('duplicate', "$relay\n[channel sms]\ntype = http\nurl = http://x/\n[channel sms]\n",
        qr/duplicate\.conf:7: channel "sms" is defined twice \(first on line 4\)/);

done_testing();
