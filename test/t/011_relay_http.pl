# crmguard-relay over HTTP, against a local provider (test/relay/http_provider.py)
# that records every request: an OTP SMS in a Twilio-style form body with basic
# auth, a WhatsApp message in a Meta-style JSON body with a bearer token, an
# approval's webhook with its JSON document; a provider answering 500, then
# timing out, then 200 shows backoff and retry with one idempotency key; one
# that always fails leaves the message dead with its last error.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RelayTest;

my $port = PostgreSQL::Test::Cluster::get_free_port();   # free across concurrent runs
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $requests = "$tmp/requests.jsonl";
my $relay_log = "$tmp/relay.log";

my $node = PostgreSQL::Test::Cluster->new('relay_http');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->append_conf('postgresql.conf', "crmguard.outbox_retry_delay = '300ms'");
$node->append_conf('postgresql.conf', "crmguard.outbox_max_attempts = 3");
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE crm');
$node->safe_psql('crm', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE crm_relay LOGIN;
    GRANT crmguard_relay TO crm_relay;
    CREATE TABLE public.delivery (id bigint PRIMARY KEY, phone text, status text);
    INSERT INTO public.delivery VALUES (1, '+39 347 555 0123', 'Out for delivery');
    SELECT crmguard.create_otp_rule('Delivery Confirmation OTP', 'public.delivery', 'status',
                                    '{Delivered}', 'phone', channel => 'sms', delivery => 'manual');

    CREATE ROLE hook_owner; CREATE ROLE hook_boss; CREATE ROLE hook_agent;
    GRANT USAGE ON SCHEMA public TO hook_owner;
    GRANT EXECUTE ON FUNCTION crmguard.create_approval_process(text, regclass, jsonb, jsonb, jsonb, jsonb, jsonb, text[], name[]) TO hook_owner;
    SELECT crmguard.add_principal('boss', '{manager}', db_role => 'hook_boss');
    SELECT crmguard.add_principal('agent', '{agent}', 'boss', db_role => 'hook_agent');
    CREATE TABLE public.deal (id integer PRIMARY KEY, title text, owner_id bigint, discount numeric, status text);
    INSERT INTO public.deal SELECT 7, 'Cold room', id, 30, 'Draft' FROM crmguard.principal WHERE name = 'agent';
    ALTER TABLE public.deal OWNER TO hook_owner;
    GRANT SELECT, UPDATE ON public.deal TO hook_boss, hook_agent;
    SET ROLE hook_owner;
    SELECT crmguard.create_approval_process('Big discounts', 'public.deal', NULL,
        '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
        on_approve => '[{"set": {"status": "Approved"}}, {"webhook": {"channel": "crm_hooks", "body": {"event": "deal.approved"}}}]');
    RESET ROLE;
});

my $provider = start_provider($port, $requests, '/flaky=500,sleep3,200', '/dead=500', '/late=sleep2,200');
my $conninfo = $node->connstr('crm') . ' user=crm_relay';
my $config = write_config("$tmp/relay.conf", <<"EOC");
[relay]
conninfo = $conninfo
lease = 20
batch = 2
poll = 1

# Twilio-style: form body, basic auth
[channel sms]
type = http
url = http://127.0.0.1:$port/sms
basic_auth = AC123:sms-secret
format = form
body = To={{recipient}}&From=%2B15550001&Body={{body}}
timeout = 5

# Meta WhatsApp Cloud-style: JSON body, bearer token
[channel whatsapp]
type = http
url = http://127.0.0.1:$port/whatsapp
header = Authorization: Bearer wa-token
format = json
body = {"messaging_product": "whatsapp", "to": "{{recipient}}", "type": "text", "text": {"body": "{{body}}"}}
timeout = 5

[channel crm_hooks]
type = http
url = http://127.0.0.1:$port/hook
header = X-Hook-Secret: s3cret
body = {{raw:body}}
timeout = 5

[channel flaky]
type = http
url = http://127.0.0.1:$port/flaky
timeout = 1

[channel late]
type = http
url = http://127.0.0.1:$port/late
timeout = 5

[channel doomed]
type = http
url = http://127.0.0.1:$port/dead
timeout = 1
EOC
my $relay = start_relay($config, $relay_log);

sub requests_to
{
    my ($path) = @_;
    return grep { $_->{path} eq $path } provider_requests($requests);
}

sub key_of
{
    my ($where) = @_;
    return $node->safe_psql('crm', "SELECT idempotency_key FROM crmguard.outbox WHERE $where");
}

# --- an OTP code by SMS, Twilio-style
my $challenge = $node->safe_psql('crm', q{SELECT crmguard.request_otp('public.delivery', '1', 'Delivered')});
ok(wait_for(sub { requests_to('/sms') == 1 }), 'the SMS reaches the provider');
my ($sms) = requests_to('/sms');
is($sms->{headers}{authorization}, 'Basic ' . encode_base64('AC123:sms-secret', ''), 'with basic auth');
is($sms->{headers}{'content-type'}, 'application/x-www-form-urlencoded', 'as a form');
my %form = map { my ($k, $v) = split /=/, $_, 2; $v =~ tr/+/ /; $v =~ s/%([0-9A-F]{2})/chr(hex($1))/ge; ($k, $v) } split /&/, $sms->{body};
is($form{To}, '+39 347 555 0123', 'the recipient filled in, URL-encoded');
is($form{From}, '+15550001', 'the template\'s constant kept');
my ($code) = ($form{Body} // '') =~ /your code is ([0-9]+)/;
ok($code, 'the body holds the code');
is($sms->{headers}{'idempotency-key'}, key_of("channel = 'sms'"), 'the idempotency key in its header');
$node->safe_psql('crm', "BEGIN; SELECT crmguard.verify_otp($challenge, '$code'); "
    . "UPDATE public.delivery SET status = 'Delivered' WHERE id = 1; COMMIT;");
is($node->safe_psql('crm', 'SELECT status FROM public.delivery'), 'Delivered', 'the code from the SMS completes the change');

# --- WhatsApp, Meta-style JSON
$node->safe_psql('crm', q{
    INSERT INTO crmguard.outbox (channel, recipient, subject, body)
    VALUES ('whatsapp', '+393471234567', 'Reminder', E'Il tecnico "Marco" arriva alle 10:00\nA presto');
    NOTIFY crmguard_outbox, 'whatsapp';
});
ok(wait_for(sub { requests_to('/whatsapp') == 1 }), 'the WhatsApp message reaches the provider');
my ($wa) = requests_to('/whatsapp');
is($wa->{headers}{authorization}, 'Bearer wa-token', 'with the configured bearer token');
my $doc = eval { JSON::PP::decode_json($wa->{body}) };
ok($doc, 'the body is valid JSON');
is_deeply($doc, { messaging_product => 'whatsapp', to => '+393471234567', type => 'text',
                  text => { body => "Il tecnico \"Marco\" arriva alle 10:00\nA presto" } },
          'the template filled in, quotes and line breaks escaped');

# --- an approval's webhook
my $request = $node->safe_psql('crm', q{SET ROLE hook_agent; SELECT crmguard.submit_for_approval('public.deal', '7')});
$node->safe_psql('crm', "SET ROLE hook_boss; SELECT crmguard.approve($request, 'ok')");
ok(wait_for(sub { requests_to('/hook') == 1 }), 'the webhook reaches the company endpoint');
my ($hook) = requests_to('/hook');
is($hook->{headers}{'x-hook-secret'}, 's3cret', 'with its secret header');
my $event = eval { JSON::PP::decode_json($hook->{body}) } // {};
is($event->{request}, $request, 'naming the request');
is($event->{state}, 'approved', 'and the decision');
is($event->{row}{status}, 'Approved', 'with the row as the decision left it');
is($event->{body}{event}, 'deal.approved', 'and the process\'s own body');
is($hook->{headers}{'idempotency-key'}, key_of("channel = 'crm_hooks'"), 'and an idempotency key for the receiver to deduplicate');

# --- 500, then a timeout, then 200: backoff and retry, one key
$node->safe_psql('crm', q{
    INSERT INTO crmguard.outbox (channel, recipient, subject, body) VALUES ('flaky', '+393470000001', 'Flaky', 'hello');
    NOTIFY crmguard_outbox, 'flaky';
});
ok(wait_for(sub { $node->safe_psql('crm', "SELECT state FROM crmguard.outbox WHERE channel = 'flaky'") eq 'sent' }, 60),
   'a message the provider refused, then let time out, is delivered on the third attempt');
my @flaky = requests_to('/flaky');
is(scalar(@flaky), 3, 'three requests');
is(join(',', map { $_->{step} } @flaky), '500,sleep3,200', 'answered 500, then too late, then 200');
is(scalar(keys %{{ map { $_->{headers}{'idempotency-key'} => 1 } @flaky }}), 1, 'all with the same idempotency key');
cmp_ok($flaky[1]{at} - $flaky[0]{at}, '>=', 0.15, 'the second attempt waited the first backoff (300 ms less jitter)');
cmp_ok($flaky[2]{at} - $flaky[1]{at}, '>=', 1 + 0.3, 'the third waited the timeout and the doubled backoff');
is($node->safe_psql('crm', "SELECT attempts FROM crmguard.outbox WHERE channel = 'flaky'"), '3', 'attempts counted');
my $log = slurp_log($relay_log);
like($log, qr/\(flaky to \+\*+001, attempt 1, key [-0-9a-f]+\) failed in \d+ ms: HTTP 500: \{"error": "provider unavailable".*will be retried after a backoff/,
     'the log shows the 500 with an excerpt of the answer');
like($log, qr/\(flaky to [^)]*attempt 2[^)]*\) failed in \d+ ms: Operation timed out/, 'then the timeout');

# --- always 500: dead with the last error, no code in it
$node->safe_psql('crm', q{
    INSERT INTO crmguard.outbox (channel, recipient, subject, body)
    VALUES ('doomed', '+393470000002', 'Doomed', 'Consegne Rapide: your code is 987654. It is valid for 5 minutes.');
    NOTIFY crmguard_outbox, 'doomed';
});
ok(wait_for(sub { $node->safe_psql('crm', "SELECT state FROM crmguard.outbox WHERE channel = 'doomed'") eq 'dead' }, 60),
   'a message the provider always refuses is dead after the last attempt');
is(scalar(requests_to('/dead')), 3, 'after crmguard.outbox_max_attempts (3) requests');
my $last_error = $node->safe_psql('crm', "SELECT last_error FROM crmguard.outbox WHERE channel = 'doomed'");
like($last_error, qr/^HTTP 500: \{"error": "provider unavailable"/, 'its last error is the status and an excerpt');
unlike($last_error, qr/987654/, 'the provider echoed the message, but the code is not in the error');
like(slurp_log($relay_log), qr/\(doomed to [^)]*attempt 3[^)]*\) failed .*dead: no more attempts/, 'the log says it is dead');
unlike(slurp_log($relay_log), qr/987654|Marco|tecnico/, 'no body ever reaches the log');

# --- a code that expires while its batch goes out is never sent late
$node->safe_psql('crm', q{
    INSERT INTO crmguard.outbox (channel, recipient, subject, body) VALUES ('late', '+393470000004', 'First', 'slow to send');
    INSERT INTO crmguard.outbox (channel, recipient, subject, body, expires_at)
    VALUES ('late', '+393470000005', 'Code', 'your code is 55555', now() + interval '1 second');
    NOTIFY crmguard_outbox, 'late';
});
ok(wait_for(sub { $node->safe_psql('crm', "SELECT state FROM crmguard.outbox WHERE channel = 'late' AND subject = 'Code'") eq 'dead' }, 30),
   'a code message that expired behind a slow delivery of its batch ends dead');
is(scalar(requests_to('/late')), 1, 'the provider never saw it');
is($node->safe_psql('crm', "SELECT last_error || ', body erased: ' || (body IS NULL) FROM crmguard.outbox WHERE subject = 'Code'"),
   'expired before it was sent, body erased: true', 'expired before it was sent, its body erased');

is(stop_relay($relay), 0, 'SIGTERM stops the relay cleanly');
$provider->kill_kill;
$node->stop;
done_testing();
