# Helpers of the audit chain tests: a database whose audited commit can be
# held after its entries were chained (the activity count it writes at
# commit waits for a lock on crmguard.activity_log), so that another writer
# commits over a segment still in flight.
package AuditChainTest;
use strict;
use warnings;
use Exporter 'import';
use Test::More;

our @EXPORT = qw(prepare_held_commit hold_commit_after_chaining);

# a principal's tracked table and a first audit row ('before') in $db
sub prepare_held_commit
{
	my ($node, $db) = @_;
	$node->safe_psql($db, q{
	    DO $$ BEGIN
	        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rep') THEN CREATE ROLE rep; END IF;
	    END $$;
	    CREATE TABLE public.note (id int PRIMARY KEY);
	    GRANT INSERT ON public.note TO rep;
	    SELECT crmguard.add_principal('rep', '{agent}', db_role => 'rep');
	    SELECT crmguard.track('public.note');
	    SELECT crmguard.audit_event('before');
	});
}

# Start a transaction auditing 'held' and have its COMMIT wait after its
# entries were chained; returns the session holding the lock and the held
# one (COMMIT on the first lets the second commit)
sub hold_commit_after_chaining
{
	my ($node, $db) = @_;
	my $lock = $node->background_psql($db);
	$lock->query_safe('BEGIN; LOCK TABLE crmguard.activity_log IN EXCLUSIVE MODE;');
	my $held = $node->background_psql($db, on_error_stop => 0);
	$held->query_until(qr/committing/, q{
	    BEGIN;
	    SELECT crmguard.audit_event('held');
	    SET LOCAL ROLE rep;
	    INSERT INTO public.note VALUES (1);
	    RESET ROLE;
	    \echo committing
	    COMMIT;
	});
	ok($node->poll_query_until($db, q{SELECT count(*) = 1 FROM pg_locks
	      WHERE relation = 'crmguard.activity_log'::regclass AND NOT granted}),
	   'a commit waits after its entries were chained');
	return ($lock, $held);
}

1;
