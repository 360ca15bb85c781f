# Review attack on "no one can starve others" (issue 12): the background
# workers' job queue (automatic OTP delivery) is one FIFO of 256 jobs for
# the whole cluster, bounded neither per database nor per principal.  A
# tenant (a non-superuser owning a database and the CRM in it, with the
# grants the README advises for a CRM's administration role) stalls its own
# database's worker with a cast of its own on the recipient column, then
# queues refused gated changes until the queue is full: every other
# database's automatic OTP delivery then fails ("the crmguard queue is full").
# The check states the SECURE behaviour: another database still gets its code.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('review_queue');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'\nmax_worker_processes = 24\n");
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE crm_victim');
$node->safe_psql('crm_victim', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE victim_rep;
    SELECT crmguard.add_principal('rep', '{agent}', db_role => 'victim_rep');
    CREATE TABLE public.delivery (id int PRIMARY KEY, phone text, status text);
    INSERT INTO public.delivery VALUES (1, '+39 347 555 0001', 'Out');
    SELECT crmguard.create_otp_rule('victim otp', 'public.delivery', 'status', '{Delivered}', 'phone');
    GRANT SELECT, UPDATE ON public.delivery TO victim_rep;
});

$node->safe_psql('postgres', 'CREATE ROLE tenant LOGIN; CREATE DATABASE crm_tenant OWNER tenant');
$node->safe_psql('crm_tenant', q{
    CREATE EXTENSION crmguard;
    GRANT EXECUTE ON FUNCTION crmguard.create_otp_rule(text, regclass, name, text[], name, text, text, text,
        integer, interval, integer, integer, text[], text[], jsonb, interval, integer, integer, interval),
        crmguard.add_principal(text, text[], text, jsonb, name, boolean),
        crmguard.issue_token(text, interval, bigint, bytea) TO tenant;
});
$node->safe_psql('crm_tenant', q{
    SET ROLE tenant;
    CREATE TYPE public.tphone AS ENUM ('+39 000 0001');
    -- the worker reads the recipient as text: this cast is the tenant's code
    CREATE FUNCTION public.tphone_text(public.tphone) RETURNS text LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(60); RETURN format('%s', $1); END $$;
    CREATE CAST (public.tphone AS text) WITH FUNCTION public.tphone_text(public.tphone);
    CREATE TABLE public.flood (id int PRIMARY KEY, phone public.tphone, status text);
    INSERT INTO public.flood SELECT g, '+39 000 0001', 'Out' FROM generate_series(1, 400) g;
    SELECT crmguard.create_otp_rule('flood', 'public.flood', 'status', '{Delivered}', 'phone',
                                    challenges_per_row => 1000, challenges_per_principal => 100000,
                                    recipient_cooldown => '0');
    SELECT crmguard.add_principal('t' || g, '{agent}') FROM generate_series(1, 4) g;
});
# the rows' recipients were set before the rule: no cooldown either way
$node->safe_psql('crm_tenant', q{
    SET ROLE tenant;
    DO $$
    DECLARE
        n int := 0;
    BEGIN
        -- a burst of refused tokens first: this backend is "flooding", so its
        -- refusals below do not wait for audit slots its stalled worker never frees
        FOR i IN 1..70 LOOP
            BEGIN
                PERFORM crmguard.assume('junk');
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
        END LOOP;
        FOR p IN 1..4 LOOP
            PERFORM crmguard.assume(crmguard.issue_token('t' || p));
            FOR i IN 1..66 LOOP
                n := n + 1;
                BEGIN
                    UPDATE public.flood SET status = 'Delivered' WHERE id = n;
                EXCEPTION WHEN OTHERS THEN
                    NULL;
                END;
            END LOOP;
        END LOOP;
    END
    $$;
});

my ($ret, $out, $err) = $node->psql('crm_victim',
    q{SET ROLE victim_rep; UPDATE public.delivery SET status = 'Delivered' WHERE id = 1});
like($err, qr/DETAIL:  Challenge \d+ is pending/, 'worker_queue_stall: another database\'s refused change still sends a code');
unlike($err, qr/queue is full/, 'worker_queue_stall: no "queue is full" caused by another database');
# the stalled database filled its own share and is refused alone (fails closed)
($ret, $out, $err) = $node->psql('crm_tenant',
    q{SET ROLE tenant; SELECT crmguard.assume(crmguard.issue_token('t1')) IS NOT NULL;
      UPDATE public.flood SET status = 'Delivered' WHERE id = 300});
like($err, qr/share of the crmguard queue is full/, 'worker_queue_stall: the stalled database is refused in its own share');
$node->stop('immediate');
done_testing();
