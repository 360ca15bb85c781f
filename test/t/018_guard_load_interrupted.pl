# A table owner interrupts the first load of crmguard's guard cache in his own
# session (his own lock_timeout, here while a superuser's maintenance holds
# one of crmguard's rule catalogs; a cancel does the same).  The cache must
# not stay behind partial and marked valid: his table, missing from it, would
# count as unguarded, and he could switch its row-level security off.
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
$node->stop;
done_testing();
