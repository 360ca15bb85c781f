/*
 * otp_idle.c
 *		Statements that cannot wake the OTP guard do not pay for it.
 *
 * The OTP guard's UPDATE trigger is an AFTER row trigger, so it judges a row
 * as every BEFORE trigger left it.  For such a trigger PostgreSQL fetches
 * each updated row's old version again and evaluates the WHEN clause on it,
 * even when the WHEN is false: about 6% of an UPDATE that touches none of
 * the columns the guard watches.
 *
 * The WHEN clause otp_rule.c builds is false whenever every column it reads
 * has the same value in the old and the new row (each of its terms asks
 * whether one of them changed).  A column keeps its value unless the
 * statement sets it (its SET list, a generated column depending on a set
 * column, an ON CONFLICT or MERGE action: PostgreSQL's "updated columns")
 * or a BEFORE UPDATE row trigger changes it.  So a statement whose updated
 * columns miss every column of the WHEN, on a table with no BEFORE UPDATE
 * row trigger at all, would find the WHEN false on every row: its copy of
 * the table's triggers (its own, made when the statement started) gets the
 * guard disabled.  Nothing in pg_trigger changes, and every other statement
 * runs the guard as before.
 */
#include "postgres.h"

#include "access/sysattr.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/prs2lock.h"
#include "utils/hsearch.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "crmguard.h"

/* the columns a guard's WHEN reads, by trigger OID and the WHEN's text */
typedef struct WatchedColumns
{
	Oid			tgoid;
	char	   *tgqual;			/* in TopMemoryContext */
	Bitmapset  *columns;		/* attnos - FirstLowInvalidHeapAttributeNumber */
	bool		whole_row;		/* reads a whole row: every column */
} WatchedColumns;

static HTAB *watched_cache = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;

static WatchedColumns *
watched_columns(const Trigger *tg)
{
	WatchedColumns *w;
	bool		found;
	MemoryContext old;
	MemoryContext parse;

	if (watched_cache == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(WatchedColumns);
		watched_cache = hash_create("crmguard OTP guard columns", 16, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	w = hash_search(watched_cache, &tg->tgoid, HASH_ENTER, &found);
	/* a trigger's WHEN never changes, but an OID may come back with another */
	if (found && strcmp(w->tgqual, tg->tgqual) == 0)
		return w;
	if (found)
	{
		pfree(w->tgqual);
		bms_free(w->columns);
	}
	w->tgqual = NULL;
	w->columns = NULL;

	/* the parsed clause goes with the temporary context; the columns stay */
	parse = AllocSetContextCreate(CurrentMemoryContext, "crmguard OTP guard WHEN",
								  ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(parse);
	PG_TRY();
	{
		Node	   *qual = stringToNode(tg->tgqual);
		Bitmapset  *both = NULL;

		pull_varattnos(qual, PRS2_OLD_VARNO, &both);
		pull_varattnos(qual, PRS2_NEW_VARNO, &both);
		MemoryContextSwitchTo(TopMemoryContext);
		w->whole_row = bms_is_member(InvalidAttrNumber - FirstLowInvalidHeapAttributeNumber, both);
		w->columns = bms_copy(both);
		w->tgqual = pstrdup(tg->tgqual);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		MemoryContextDelete(parse);
		hash_search(watched_cache, &tg->tgoid, HASH_REMOVE, NULL);
		PG_RE_THROW();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(parse);
	return w;
}

/*
 * Is fn the OTP guard: crmguard's C function crmguard_otp_guard?  Known by
 * what it is, from pg_proc (only a superuser creates a C function), without
 * reading crmguard's own catalog: this runs for every statement that writes.
 */
static bool
is_otp_guard(Oid fn)
{
	return cg_function_is(fn, "crmguard_otp_guard");
}

/* Disable, in this statement's copy of rri's triggers, OTP guards its updates cannot wake */
static void
disable_idle_guards(ResultRelInfo *rri, EState *estate)
{
	TriggerDesc *td = rri->ri_TrigDesc;
	Bitmapset  *updated = NULL;
	bool		updated_known = false;
	bool		after_row_left = false;
	int			i;

	/* a BEFORE UPDATE row trigger may change any column: the guard stays */
	if (td == NULL || !td->trig_update_after_row || td->trig_update_before_row)
		return;
	for (i = 0; i < td->numtriggers; i++)
	{
		Trigger    *tg = &td->triggers[i];
		WatchedColumns *w;

		if (!TRIGGER_TYPE_MATCHES(tg->tgtype, TRIGGER_TYPE_ROW, TRIGGER_TYPE_AFTER, TRIGGER_TYPE_UPDATE) ||
			tg->tgenabled == TRIGGER_DISABLED)
			continue;
		if (tg->tgqual == NULL || !is_otp_guard(tg->tgfoid))
		{
			after_row_left = true;
			continue;
		}
		if (!updated_known)
		{
			updated = ExecGetAllUpdatedCols(rri, estate);
			updated_known = true;
		}
		w = watched_columns(tg);
		if (w->whole_row || bms_overlap(updated, w->columns))
		{
			after_row_left = true;
			continue;
		}
		tg->tgenabled = TRIGGER_DISABLED;
	}
	/* with no AFTER UPDATE row trigger left, no old row is fetched again */
	if (!after_row_left)
		td->trig_update_after_row = false;
}

static void
otp_idle_start(QueryDesc *queryDesc, int eflags)
{
	ListCell   *lc;

	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);

	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return;
	foreach(lc, queryDesc->estate->es_opened_result_relations)
		disable_idle_guards((ResultRelInfo *) lfirst(lc), queryDesc->estate);
}

/* From _PG_init */
void
cg_otp_idle_init(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = otp_idle_start;
}
