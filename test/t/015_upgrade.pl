# The upgrade path: a database holding rules of every kind made by release
# 1.0 (its library and its install script), the 1.1 binaries installed over
# it and the server restarted, then ALTER EXTENSION crmguard UPDATE.  Every
# rule is still enforced afterwards, and the upgraded extension is the same,
# object for object, as a fresh CREATE EXTENSION crmguard of 1.1
# (t/extension_objects.sql describes both; a difference is printed line by line).
#
# Release 1.0 is built from the repository's history (commit ea410f4) into a
# private copy of this PostgreSQL installation.
#
# Row keys: 1.0 named the row of an OTP challenge or approval request by its
# key as the session printed it; 1.1 prints keys with fixed settings (ISO
# dates...), and the update rewrites the keys of live challenges and pending
# requests.  A date-keyed table, whose challenge and request were made under
# DateStyle 'SQL, DMY', checks that rewrite: both keys name the same row
# afterwards, the lock holds on it and on no other row.  Another one, whose
# keys were printed under 'SQL, MDY' and do not read under DMY, keeps its
# keys, and the update says so.
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Copy qw(copy);
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $release_1_0 = 'ea410f4';
my $src = $ENV{CRMGUARD_SRC} // '';

# --- release 1.0, built into a copy of this installation ---------------------
my $bindir = `pg_config --bindir`;
chomp $bindir;
my $root = "$bindir/../../../../..";    # <root>/usr/lib/postgresql/15/bin
my $old = PostgreSQL::Test::Utils::tempdir('crmguard_1_0');
plan skip_all => 'needs the repository history (CRMGUARD_SRC and git) to build release 1.0'
  unless $src ne ''
  && system("git -c safe.directory='*' -C '$src' cat-file -e $release_1_0 2>/dev/null") == 0;

make_path("$old/usr/lib/postgresql", "$old/usr/share/postgresql", "$old/src");
system("cp -a '$root/usr/lib/postgresql/15' '$old/usr/lib/postgresql/'") == 0 or die 'copy of the installation failed';
system("cp -a '$root/usr/share/postgresql/15' '$old/usr/share/postgresql/'") == 0 or die 'copy of the installation failed';
symlink(readlink("$root/usr/include") // "$root/usr/include", "$old/usr/include");
my $old_bin = "$old/usr/lib/postgresql/15/bin";
system("git -c safe.directory='*' -C '$src' archive $release_1_0 | tar -x -C '$old/src'") == 0
  or die 'git archive of release 1.0 failed';
system("make -s -C '$old/src' PG_CONFIG='$old_bin/pg_config' all install > '$old/build.log' 2>&1") == 0
  or die 'build of release 1.0 failed: ' . slurp_file("$old/build.log");
pass('release 1.0 built from commit ' . $release_1_0);

my $node = PostgreSQL::Test::Cluster->new('upgrade', install_path => "$old/usr/lib/postgresql/15");
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

# --- rules of every 1.0 kind ---------------------------------------------------
# (the same script builds the fresh 1.1 database the upgraded one is compared with)
my $setup = q{
    CREATE EXTENSION crmguard VERSION '1.0';
    -- principals with a manager hierarchy
    SELECT crmguard.add_principal('dora', '{director,admin}', NULL, '{}', 'regress_dora');
    SELECT crmguard.add_principal('anna', '{area_manager}', 'dora', '{"zone": "Nord"}', 'regress_anna');
    SELECT crmguard.add_principal('luca', '{agent}', 'anna', '{"zone": "Nord"}', 'regress_luca');
    SELECT crmguard.add_principal('rita', '{reviewer}', 'dora', '{}', 'regress_rita');
    -- an OTP rule
    CREATE TABLE public.delivery (id bigint PRIMARY KEY, phone text, status text);
    INSERT INTO public.delivery VALUES (1, '+39 347 555 0123', 'Out'), (2, '+39 347 555 0124', 'Out');
    GRANT SELECT, UPDATE ON public.delivery TO regress_luca;
    SELECT crmguard.create_otp_rule('Delivery OTP', 'public.delivery', 'status', '{Delivered}', 'phone',
                                    delivery => 'manual', code_length => 5);
    -- visibility rules: a field match and the manager hierarchy
    CREATE TABLE public.account (id int PRIMARY KEY, owner_id bigint, zone text, name text);
    INSERT INTO public.account VALUES (1, 3, 'Nord', 'Nord Spa'), (2, 3, 'Sud', 'Sud Srl'), (3, 1, 'Sud', 'Dora Co');
    GRANT SELECT ON public.account TO regress_luca, regress_anna, regress_nobody;
    SELECT crmguard.expose('public.account', 'agents: own zone', 'agent',
                           '{"field": "zone", "op": "=", "principal": "zone"}');
    SELECT crmguard.expose_by_owner('public.account', 'owner_id', 'area_manager');
    -- a reviewed table
    CREATE TABLE public.lead (id int PRIMARY KEY, name text, phone text);
    GRANT SELECT, INSERT ON public.lead TO regress_luca, regress_rita;
    SELECT crmguard.enable_review('public.lead', 'reviewer', '{phone}');
    -- an approval process
    CREATE TABLE public.deal (id int PRIMARY KEY, owner_id bigint, discount int, status text DEFAULT 'Draft');
    INSERT INTO public.deal VALUES (1, 3, 0), (2, 3, 0);
    GRANT SELECT, UPDATE ON public.deal TO regress_luca, regress_anna;
    SELECT crmguard.create_approval_process('discount', 'public.deal',
        '{"field": "discount", "op": ">=", "value": 20}',
        '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
        on_approve => '[{"set": {"status": "Approved"}}]', auto_submit => '{update}');
    -- a table keyed by a date, with an OTP rule and an approval process;
    -- 3 April and 4 March 2031 print alike under DMY and MDY ('03/04/2031')
    CREATE TABLE public.slot (day date PRIMARY KEY, owner_id bigint, phone text, status text DEFAULT 'Open',
                              discount int DEFAULT 0, stage text DEFAULT 'Draft');
    INSERT INTO public.slot (day, owner_id, phone) VALUES ('2031-04-03', 3, '+39 347 555 0131'),
                                                          ('2031-03-04', 3, '+39 347 555 0132');
    GRANT SELECT, UPDATE ON public.slot TO regress_luca, regress_anna;
    SELECT crmguard.create_otp_rule('Slot OTP', 'public.slot', 'status', '{Delivered}', 'phone',
                                    delivery => 'manual', code_length => 5);
    SELECT crmguard.create_approval_process('slot discount', 'public.slot',
        '{"field": "discount", "op": ">=", "value": 20}',
        '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]',
        on_approve => '[{"set": {"stage": "Approved"}}]', auto_submit => '{update}');
    -- the same for a table whose keys a session printed month first
    CREATE TABLE public.visit (day date PRIMARY KEY, owner_id bigint, phone text, status text DEFAULT 'Open',
                               discount int DEFAULT 0);
    INSERT INTO public.visit (day, owner_id, phone) VALUES ('2031-04-13', 3, '+39 347 555 0141');
    GRANT SELECT, UPDATE ON public.visit TO regress_luca;
    SELECT crmguard.create_otp_rule('Visit OTP', 'public.visit', 'status', '{Delivered}', 'phone',
                                    delivery => 'manual', code_length => 5);
    SELECT crmguard.create_approval_process('visit discount', 'public.visit',
        '{"field": "discount", "op": ">=", "value": 20}',
        '[{"name": "Manager", "approvers": {"manager_of": "owner_id"}}]', auto_submit => '{update}');
    -- the application's login role may issue tokens
    GRANT EXECUTE ON FUNCTION crmguard.issue_token(text, interval) TO regress_app;
    -- a live challenge, a pending draft, a pending request
    SET ROLE regress_luca;
    SELECT crmguard.request_otp('public.delivery', '1', 'Delivered');
    INSERT INTO public.lead VALUES (1, 'Rossi', '+39 02 1234');
    UPDATE public.deal SET discount = 30 WHERE id = 1;
    -- the same for 3 April 2031, by a session that prints dates day first
    SET DateStyle = 'SQL, DMY';
    SELECT crmguard.request_otp('public.slot', '03/04/2031', 'Delivered');
    UPDATE public.slot SET discount = 30 WHERE day = '03/04/2031';
    -- and for 13 April 2031 by one that prints them month first ('04/13/2031')
    SET DateStyle = 'SQL, MDY';
    SELECT crmguard.request_otp('public.visit', '04/13/2031', 'Delivered');
    UPDATE public.visit SET discount = 30 WHERE day = '04/13/2031';
    RESET DateStyle;
    RESET ROLE;
};
$node->safe_psql('postgres', q{
    CREATE ROLE regress_dora; CREATE ROLE regress_anna; CREATE ROLE regress_luca;
    CREATE ROLE regress_rita; CREATE ROLE regress_nobody; CREATE ROLE regress_app;
    CREATE DATABASE crm; CREATE DATABASE fresh});
$node->safe_psql('crm', $setup);
is($node->safe_psql('crm', q{SELECT extversion FROM pg_extension WHERE extname = 'crmguard'}), '1.0',
   'release 1.0 is installed');
my $code = $node->safe_psql('crm', q{SELECT substring(body FROM 'code is ([0-9]+)') FROM crmguard.outbox
                                       WHERE recipient = '+39 347 555 0123' ORDER BY id DESC LIMIT 1});
like($code, qr/^[0-9]{5}$/, 'the live challenge\'s code is in the outbox');
my $challenge = $node->safe_psql('crm', q{SELECT id FROM crmguard.otp_challenge WHERE state = 'pending' AND rule = 'Delivery OTP'});
my $draft = $node->safe_psql('crm', q{SELECT id FROM crmguard.draft_state WHERE state = 'pending'});
my $request = $node->safe_psql('crm', q{SELECT id FROM crmguard.approval_request WHERE state = 'pending' AND process = 'discount'});
ok($challenge && $draft && $request, 'a pending challenge, draft and approval request')
  or diag("challenge '$challenge', draft '$draft', request '$request'");
my $slot_challenge = $node->safe_psql('crm', q{SELECT id FROM crmguard.otp_challenge WHERE state = 'pending' AND rule = 'Slot OTP'});
my $slot_request = $node->safe_psql('crm', q{SELECT id FROM crmguard.approval_request WHERE state = 'pending' AND process = 'slot discount'});
is($node->safe_psql('crm', qq{SELECT row_key FROM crmguard.otp_challenge_state WHERE id = $slot_challenge
                              UNION ALL SELECT row_key FROM crmguard.approval_request_state WHERE id = $slot_request}),
   "03/04/2031\n03/04/2031",
   'date keys: 1.0 keeps the key of a challenge and a request as the DMY session printed it');
my $visit_challenge = $node->safe_psql('crm', q{SELECT id FROM crmguard.otp_challenge WHERE state = 'pending' AND rule = 'Visit OTP'});
my $visit_request = $node->safe_psql('crm', q{SELECT id FROM crmguard.approval_request WHERE state = 'pending' AND process = 'visit discount'});
ok($visit_challenge && $visit_request, 'date keys: a challenge and a request made under MDY')
  or diag("challenge '$visit_challenge', request '$visit_request'");
ok($node->safe_psql('crm', 'SELECT count(*) FROM crmguard.audit') > 10, 'audit rows written by 1.0');

# --- the 1.1 binaries over 1.0's, and a restart (what a package upgrade does) ---
$node->stop;
my $new_lib = `pg_config --pkglibdir`;
my $new_share = `pg_config --sharedir`;
chomp($new_lib, $new_share);
copy("$new_lib/crmguard.so", "$old/usr/lib/postgresql/15/lib/crmguard.so") or die "copy: $!";
for my $f (glob("$new_share/extension/crmguard*"))
{
    copy($f, "$old/usr/share/postgresql/15/extension/") or die "copy: $!";
}
$node->start;

# until the update, the 1.1 library refuses clearly and the guards fail closed
my ($ret, $out, $err) = $node->psql('crm', q{SET ROLE regress_luca; UPDATE public.delivery SET status = 'Delivered' WHERE id = 2});
like($err, qr/extension "crmguard" is at version 1\.0, its loaded library needs version 1\.1/,
     'before the update, a gated change is refused with the reason');
like($err, qr/ALTER EXTENSION crmguard UPDATE/, 'and the hint says what to run');
is($node->safe_psql('crm', 'SELECT status FROM public.delivery WHERE id = 2'), 'Out', 'the row did not change');

# --- the update -------------------------------------------------------------------
# The update reads each stored key as its own session reads the key's type:
# it runs with the DateStyle the reps' sessions printed dates with.
($ret, $out, $err) = $node->psql('crm', q{SET DateStyle = 'SQL, DMY'; ALTER EXTENSION crmguard UPDATE});
is($ret, 0, 'ALTER EXTENSION crmguard UPDATE') or diag($err);
like($err, qr/WARNING:  role regress_app may no longer execute crmguard\.issue_token\(text,interval\)/,
     'the update names the grants it could not keep');
like($err, qr/GRANT EXECUTE ON FUNCTION crmguard\.issue_token\(text, interval, bigint, bytea\) TO regress_app;/,
     'and the statement that gives them back');
# each table whose keys do not read as the update reads dates, with the reason and what follows
like($err, qr/WARNING:  crmguard could not rewrite the keys of the pending approval requests of table public\.visit\nDETAIL:  [^\n]*"04\/13\/2031"\nHINT:  Their rows may change while the requests are pending; decide or recall them\.\n/,
     'date keys: the update names the table whose request keys do not read under its DateStyle');
like($err, qr/WARNING:  crmguard could not rewrite the keys of the live OTP challenges of table public\.visit\nDETAIL:  [^\n]*"04\/13\/2031"\nHINT:  Their codes no longer open a change; request new ones\.(\n|$)/,
     'date keys: and the table whose challenge keys do not');
unlike($err, qr/could not rewrite the keys of .* of table public\.slot/, 'date keys: no warning for the keys that read');
is($node->safe_psql('crm', q{SELECT extversion FROM pg_extension WHERE extname = 'crmguard'}), '1.1',
   'the extension is at 1.1');

# --- every rule still enforced -------------------------------------------------------
($ret, $out, $err) = $node->psql('crm', q{SET ROLE regress_luca; UPDATE public.delivery SET status = 'Delivered' WHERE id = 1});
like($err, qr/OTP required to set "status" to "Delivered"/, 'the OTP gate refuses a change without the code');
($ret, $out, $err) = $node->psql('crm', q{SET ROLE regress_luca; UPDATE public.delivery SET status = 'Delivered' WHERE id = 2});
like($err, qr/OTP required to set "status" to "Delivered"/, 'the recreated guard gates every row');
# the restart that loads the new library voids the challenges issued before it
# (their attempt counters lived in shared memory): they fail closed, saying so
($ret, $out, $err) = $node->psql('crm', qq{SET ROLE regress_luca; BEGIN;
    SELECT crmguard.verify_otp($challenge, '$code');
    UPDATE public.delivery SET status = 'Delivered' WHERE id = 1; COMMIT});
like($err, qr/OTP challenge $challenge is void.*server restarted/s,
     'the challenge issued before the restart fails closed, saying why');
# a new code for the same row: requested, received, verified, the change goes through
my $challenge2 = $node->safe_psql('crm', q{SET ROLE regress_luca; SELECT crmguard.request_otp('public.delivery', '1', 'Delivered')});
my $code2 = $node->safe_psql('crm', q{SELECT substring(body FROM 'code is ([0-9]+)') FROM crmguard.outbox ORDER BY id DESC LIMIT 1});
like($challenge2, qr/^[0-9]+$/, 'a code is requested again for the row after the upgrade');
$node->safe_psql('crm', qq{SET ROLE regress_luca; BEGIN;
    SELECT crmguard.verify_otp($challenge2, '$code2');
    UPDATE public.delivery SET status = 'Delivered' WHERE id = 1; COMMIT});
is($node->safe_psql('crm', 'SELECT status FROM public.delivery WHERE id = 1'), 'Delivered',
   'the OTP rule of 1.0 accepts the live challenge\'s code and lets the change through');
like($node->safe_psql('crm', q{SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'public.delivery'::regclass
                              AND tgname = 'zz_crmguard_otp_guard'}), qr/\(\(old\.phone COLLATE "C"\) IS DISTINCT FROM \(new\.phone COLLATE "C"\)\)/,
   'the OTP guard of 1.1 also watches the recipient');

is($node->safe_psql('crm', q{SET ROLE regress_luca; SELECT string_agg(name, ',' ORDER BY id) FROM public.account}),
   'Nord Spa', 'visibility: an agent sees its zone only');
is($node->safe_psql('crm', q{SET ROLE regress_anna; SELECT string_agg(name, ',' ORDER BY id) FROM public.account}),
   'Nord Spa,Sud Srl', 'visibility: a manager sees its team\'s rows');
is($node->safe_psql('crm', q{SET ROLE regress_nobody; SELECT count(*) FROM public.account}), '0',
   'visibility: nobody sees nothing');

is($node->safe_psql('crm', 'SELECT count(*) FROM public.lead'), '0', 'the draft is still outside its table');
$node->safe_psql('crm', qq{SET ROLE regress_rita; SELECT crmguard.approve_draft($draft)});
is($node->safe_psql('crm', 'SELECT name FROM public.lead'), 'Rossi', 'the draft made by 1.0 is approved');
$node->safe_psql('crm', q{SET ROLE regress_luca; INSERT INTO public.lead VALUES (2, 'Bianchi', '+39 02 5678')});
is($node->safe_psql('crm', 'SELECT count(*) FROM public.lead'), '1', 'a new insert still becomes a draft');

($ret, $out, $err) = $node->psql('crm', q{SET ROLE regress_luca; UPDATE public.deal SET discount = 50 WHERE id = 1});
like($err, qr/locked by pending approval request/, 'the approval lock still holds');
# the upgrade filled the inbox's waiting list, with the keys as rewritten
is($node->safe_psql('crm', q{SET ROLE regress_anna;
       SELECT string_agg(format('%s:%s:%s', request, process, row_key), ',' ORDER BY request) FROM crmguard.my_approvals()}),
   $node->safe_psql('crm', q{SELECT string_agg(format('%s:%s:%s', r.id, p.process_name, r.row_key), ',' ORDER BY r.id)
       FROM crmguard.approval_request_state r JOIN crmguard.approval_process p ON p.id = r.process
      WHERE r.state = 'pending'}),
   'the requests made by 1.0 wait in the manager\'s inbox');
$node->safe_psql('crm', qq{SET ROLE regress_anna; SELECT crmguard.approve($request)});
is($node->safe_psql('crm', 'SELECT status FROM public.deal WHERE id = 1'), 'Approved',
   'the request made by 1.0 is approved and its action runs');

# --- the date keys: rewritten in the ISO form, still naming 3 April -----------------------
is($node->safe_psql('crm', qq{SELECT row_key FROM crmguard.otp_challenge_state WHERE id = $visit_challenge
                              UNION ALL SELECT row_key FROM crmguard.approval_request_state WHERE id = $visit_request}),
   "04/13/2031\n04/13/2031", 'date keys: keys that do not read are left as they were');
is($node->safe_psql('crm', qq{SELECT row_key FROM crmguard.otp_challenge_state WHERE id = $slot_challenge}),
   '2031-04-03', 'date keys: the live challenge\'s key is printed again as ISO');
is($node->safe_psql('crm', qq{SELECT row_key FROM crmguard.approval_request_state WHERE id = $slot_request}),
   '2031-04-03', 'date keys: the pending request\'s key is printed again as ISO');
# the lock, whatever the DateStyle of the session that changes the row
for my $style (['ISO, MDY', '2031-04-03'], ['SQL, DMY', '03/04/2031'])
{
    my ($datestyle, $day) = @$style;
    ($ret, $out, $err) = $node->psql('crm', qq{SET ROLE regress_luca; SET DateStyle = '$datestyle';
        UPDATE public.slot SET discount = 50 WHERE day = '$day'},
        extra_params => [ '-v', 'VERBOSITY=verbose' ]);
    like($err, qr/CG010: row 2031-04-03 of table slot is locked by pending approval request $slot_request\b/,
         "date keys: the pending request of 1.0 still locks its row (DateStyle $datestyle)");
}
is($node->safe_psql('crm', q{SELECT discount FROM public.slot WHERE day = '2031-04-03'}), '30',
   'date keys: the locked row did not change');
($ret, $out, $err) = $node->psql('crm', q{SET ROLE regress_luca; UPDATE public.slot SET status = 'Closed' WHERE day = '2031-03-04'});
is($ret, 0, 'date keys: the row the DMY text names under MDY is not locked') or diag($err);
($ret, $out, $err) = $node->psql('crm', qq{SET ROLE regress_anna; SELECT crmguard.approve($slot_request)});
is($ret, 0, 'date keys: the manager approves the request made by 1.0') or diag($err);
is($node->safe_psql('crm', q{SELECT string_agg(day || ' ' || stage, ',' ORDER BY day) FROM public.slot}),
   '2031-03-04 Draft,2031-04-03 Approved',
   'date keys: the approved request\'s action runs on its own row');
# The challenge's code died with the restart (1.0 kept its attempt counter in
# shared memory), so no code of 1.0 opens a change after the update.  What
# remains is which row the challenge names: the guard reports it void for
# 3 April's change, and knows of no challenge for 4 March's.
is($node->safe_psql('crm', qq{SELECT row_key || ' ' || state FROM crmguard.otp_challenge WHERE id = $slot_challenge}),
   '2031-04-03 void', 'date keys: the challenge of 1.0 names its row, and is void');
($ret, $out, $err) = $node->psql('crm', q{SET ROLE regress_luca; SET DateStyle = 'SQL, DMY';
    UPDATE public.slot SET status = 'Delivered' WHERE day = '03/04/2031'},
    extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/CG001: OTP required.*DETAIL:  No live code exists for this change: challenge $slot_challenge is void/s,
     'date keys: the guard finds the challenge of 1.0 for its row');
($ret, $out, $err) = $node->psql('crm', q{SET ROLE regress_luca;
    UPDATE public.slot SET status = 'Delivered' WHERE day = '2031-03-04'},
    extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/CG001: OTP required.*DETAIL:  No code has been requested for this change\./s,
     'date keys: and not for the other row');
# a new code, asked for as the DMY session spells the row, opens its change
my $slot_challenge2 = $node->safe_psql('crm', q{SET ROLE regress_luca; SET DateStyle = 'SQL, DMY';
    SELECT crmguard.request_otp('public.slot', '03/04/2031', 'Delivered')});
my $slot_code2 = $node->safe_psql('crm', q{SELECT substring(body FROM 'code is ([0-9]+)') FROM crmguard.outbox
                                            WHERE recipient = '+39 347 555 0131' ORDER BY id DESC LIMIT 1});
$node->safe_psql('crm', qq{SET ROLE regress_luca; BEGIN;
    SELECT crmguard.verify_otp($slot_challenge2, '$slot_code2');
    UPDATE public.slot SET status = 'Delivered' WHERE day = '2031-04-03'; COMMIT});
is($node->safe_psql('crm', q{SELECT string_agg(day || ' ' || status, ',' ORDER BY day) FROM public.slot}),
   '2031-03-04 Closed,2031-04-03 Delivered',
   'date keys: a new code for the row lets its change through');

is($node->safe_psql('crm', 'SELECT ok FROM crmguard.verify_audit()'), 't',
   'the audit chain of 1.0 and 1.1 verifies');

# --- the same objects as a fresh 1.1 install ---------------------------------------------
(my $fresh_setup = $setup) =~ s/CREATE EXTENSION crmguard VERSION '1\.0';/CREATE EXTENSION crmguard;/;
$fresh_setup =~ s/issue_token\(text, interval\)/issue_token(text, interval, bigint, bytea)/;
$node->safe_psql('fresh', $fresh_setup);
$node->safe_psql('crm', 'GRANT EXECUTE ON FUNCTION crmguard.issue_token(text, interval, bigint, bytea) TO regress_app');
my $describe = slurp_file(dirname(__FILE__) . '/extension_objects.sql');
my @upgraded = split /\n/, $node->safe_psql('crm', $describe);
my @fresh = split /\n/, $node->safe_psql('fresh', $describe);
my %in_fresh = map { $_ => 1 } @fresh;
my %in_upgraded = map { $_ => 1 } @upgraded;
my @only_upgraded = grep { !$in_fresh{$_} } @upgraded;
my @only_fresh = grep { !$in_upgraded{$_} } @fresh;
ok(@upgraded > 500, 'the description covers the extension (' . scalar(@upgraded) . ' lines)');
ok(!@only_upgraded && !@only_fresh,
   'the upgraded extension is the same as a fresh 1.1 install, object for object')
  or diag(join("\n",
    'crmguard--1.0--1.1.sql does not make what a fresh install makes (t/extension_objects.sql):',
    (map { "  only after the upgrade: $_" } @only_upgraded),
    (map { "  only in a fresh 1.1:    $_" } @only_fresh)));

$node->stop;
done_testing();
