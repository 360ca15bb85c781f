# Review attack on bounded shared memory (issue 12, hole 3): the table of
# OTP rate counters is shared by every database and bounded only as a whole.
# A table owner in one database (create_otp_rule granted, as the README
# advises) makes a rule with a long challenge_window and a high
# challenges_per_principal, then requests codes for many rows in rolled-back
# subtransactions: each rollback gives the live place back, but every row's
# rate counter stays for the window.  Once the counters are full, every other
# database's OTP gate refuses with "The table of OTP counters is full."
# The check states the SECURE behaviour: another database is not affected.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('review_counter_flood');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'\n");
$node->start;

# the victim: another CRM on the same cluster
$node->safe_psql('postgres', 'CREATE DATABASE crm_victim');
$node->safe_psql('crm_victim', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE victim_rep;
    SELECT crmguard.add_principal('rep', '{agent}', db_role => 'victim_rep');
    CREATE TABLE public.delivery (id int PRIMARY KEY, phone text, status text);
    INSERT INTO public.delivery VALUES (1, '+39 347 555 0001', 'Out');
    SELECT crmguard.create_otp_rule('victim otp', 'public.delivery', 'status', '{Delivered}', 'phone',
                                    delivery => 'manual');
    GRANT SELECT, UPDATE ON public.delivery TO victim_rep;
});

# the attacker: a non-superuser who owns a database and a table in it
$node->safe_psql('postgres', 'CREATE ROLE tenant LOGIN; CREATE DATABASE crm_tenant OWNER tenant');
$node->safe_psql('crm_tenant', q{
    CREATE EXTENSION crmguard;
    GRANT EXECUTE ON FUNCTION crmguard.create_otp_rule(text, regclass, name, text[], name, text, text, text,
        integer, interval, integer, integer, text[], text[], jsonb, interval, integer, integer, interval) TO tenant;
});
$node->safe_psql('crm_tenant', q{
    SET ROLE tenant;
    CREATE TABLE public.flood (id int PRIMARY KEY, phone text, status text);
    INSERT INTO public.flood SELECT g, '+39 000 ' || g, 'Out' FROM generate_series(1, 17000) g;
    SELECT crmguard.create_otp_rule('flood', 'public.flood', 'status', '{Delivered}', 'phone',
                                    delivery => 'manual', challenges_per_row => 1000000,
                                    challenges_per_principal => 1000000, challenge_window => '10 years');
    DO $$
    BEGIN
        FOR i IN 1..17000 LOOP
            BEGIN
                PERFORM crmguard.request_otp('public.flood', i::text, 'Delivered');
                RAISE EXCEPTION 'roll back';
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END LOOP;
    END
    $$;
});

my ($ret, $out, $err) = $node->psql('crm_victim',
    q{SET ROLE victim_rep; SELECT crmguard.request_otp('public.delivery', '1', 'Delivered') IS NOT NULL});
is($out, 't', 'otp_counter_flood: another database still gets its challenge');
unlike($err, qr/counters is full|too many OTP challenges/, 'otp_counter_flood: no refusal caused by another database');
# the flooding database used up its own share and is refused alone (fails closed)
($ret, $out, $err) = $node->psql('crm_tenant',
    q{SET ROLE tenant; SELECT crmguard.request_otp('public.flood', '16999', 'Delivered')});
like($err, qr/share of OTP rate counters/, 'otp_counter_flood: the flooding database is refused in its own share');
$node->stop;
done_testing();
