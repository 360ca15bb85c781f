# A session interrupts the first load of one of crmguard's caches in itself
# (its own lock_timeout, here while a superuser's maintenance holds one of
# crmguard's rule catalogs; a cancel does the same).  The cache must not stay
# behind partial and marked valid: a table missing from it would count as
# unguarded.  A table owner could switch its row-level security off; a web
# form's inserts into a reviewed table would go in as rows, not drafts.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('guard_load');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'crmguard'");
$node->start;

$node->safe_psql('postgres', q{
    CREATE EXTENSION crmguard;
    CREATE ROLE regress_gl_owner;
    CREATE TABLE public.gl_customer (id int PRIMARY KEY, zone text);
    CREATE TABLE public.gl_note (id int PRIMARY KEY);
    ALTER TABLE public.gl_customer OWNER TO regress_gl_owner;
    ALTER TABLE public.gl_note OWNER TO regress_gl_owner;
    SELECT crmguard.expose_public('public.gl_customer', 'portal') > 0;
});

my $holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_safe('BEGIN');
$holder->query_safe('LOCK TABLE crmguard.visibility_rule IN ACCESS EXCLUSIVE MODE');

# his first statement, on a table no rule concerns, loads the guard cache
my $owner = $node->background_psql('postgres', on_error_stop => 0);
$owner->query_safe('SET ROLE regress_gl_owner');
$owner->query_safe("SET lock_timeout = '300ms'");
$owner->query('SELECT count(*) FROM public.gl_note');
like($owner->{stderr}, qr/lock timeout/,
    'the owner\'s first statement stops midway through loading the guard cache');
$owner->{stderr} = '';

$holder->query_safe('COMMIT');
$owner->query('ALTER TABLE public.gl_customer NO FORCE ROW LEVEL SECURITY');
like($owner->{stderr}, qr/cannot be changed outside crmguard/,
    'his next statement reads the cache again: row-level security of the guarded table stays forced');
is($node->safe_psql('postgres',
        q{SELECT relforcerowsecurity FROM pg_class WHERE oid = 'public.gl_customer'::regclass}),
    't', 'and it is forced');

$owner->quit;
$holder->quit;

# the review configuration: the web form's session has its guard cache, then
# its first insert into a reviewed table stops while loading the review cache
$node->safe_psql('postgres', q{
    CREATE ROLE regress_gl_app;
    CREATE TABLE public.gl_lead (id int PRIMARY KEY, name text);
    GRANT SELECT, INSERT ON public.gl_lead, public.gl_note TO regress_gl_app;
    SELECT crmguard.add_principal('gl_reviewer', '{reviewer}');
    SELECT crmguard.add_principal('gl_form', '{webform}', NULL, '{}', 'regress_gl_app');
    SELECT crmguard.enable_review('public.gl_lead', 'reviewer');
});
$holder = $node->background_psql('postgres', on_error_stop => 0);
my $form = $node->background_psql('postgres', on_error_stop => 0);
$form->query_safe('SET ROLE regress_gl_app');
$form->query_safe('SELECT count(*) FROM public.gl_note');
$holder->query_safe('BEGIN');
$holder->query_safe('LOCK TABLE crmguard.review_config IN ACCESS EXCLUSIVE MODE');
$form->query_safe("SET lock_timeout = '300ms'");
$form->query(q{INSERT INTO public.gl_lead VALUES (1, 'Ada')});
like($form->{stderr}, qr/lock timeout/,
    'the web form\'s first insert stops midway through loading the review cache');
$form->{stderr} = '';
$holder->query_safe('COMMIT');
$form->query(q{INSERT INTO public.gl_lead VALUES (2, 'Bruno')});
like($form->{stderr}, qr/kept as draft/, 'its next insert reads the cache again');
is($node->safe_psql('postgres', q{
        SELECT (SELECT count(*) FROM public.gl_lead) || ' rows, ' ||
               (SELECT count(*) FROM crmguard.draft_state WHERE target = 'public.gl_lead'::regclass) || ' draft'}),
    '0 rows, 1 draft', 'and the row is a draft, not a row of the table');
$form->quit;
$holder->quit;
$node->stop;
done_testing();
