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
 *
 * The same statement start also hands PostgreSQL the WHEN clauses of
 * crmguard's row triggers (OTP guards, approval locks and submits) already
 * read from their text, once per backend (prepare_guard_whens): reading
 * them anew was 6% of an OTP or approval cycle.
 */
#include "postgres.h"

#include "access/sysattr.h"
#include "catalog/namespace.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/prs2lock.h"
#include "rewrite/rewriteManip.h"
#include "utils/hsearch.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "crmguard.h"

/*
 * A trigger's WHEN clause parsed once per backend, by trigger OID and the
 * clause's text.  PostgreSQL reads a WHEN clause from its text anew for
 * each statement that may fire the trigger (about 17,000 instructions for
 * an approval guard's, 44,000 for an OTP guard's, per statement);
 * prepare_guard_whens hands it crmguard's triggers' clauses already read.
 */
typedef struct ParsedWhen
{
	Oid			tgoid;
	char	   *tgqual;			/* NULL until parsed */
	Oid			tgfoid;
	MemoryContext cxt;			/* holds what follows */
	List	   *when;			/* as TriggerEnabled makes it: implicit AND,
								 * OLD and NEW as INNER_VAR and OUTER_VAR */
	Bitmapset  *columns;		/* read: attnos - FirstLowInvalidHeapAttributeNumber */
	bool		whole_row;		/* reads a whole row: every column */
	bool		ours;			/* fires a function of crmguard's schema */
} ParsedWhen;

static HTAB *parsed_whens = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;

static ParsedWhen *
parsed_when(const Trigger *tg)
{
	ParsedWhen *w;
	bool		found;
	MemoryContext old;

	if (parsed_whens == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(ParsedWhen);
		parsed_whens = hash_create("crmguard trigger WHEN clauses", 16, &ctl, HASH_ELEM | HASH_BLOBS);
	}
	w = hash_search(parsed_whens, &tg->tgoid, HASH_ENTER, &found);
	/* CREATE OR REPLACE TRIGGER keeps the OID; an OID may come back with another trigger */
	if (found && w->tgqual != NULL && w->tgfoid == tg->tgfoid && strcmp(w->tgqual, tg->tgqual) == 0)
		return w;
	if (found && w->tgqual != NULL)
		MemoryContextDelete(w->cxt);
	w->tgqual = NULL;
	w->cxt = AllocSetContextCreate(CacheMemoryContext, "crmguard trigger WHEN", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(w->cxt);
	PG_TRY();
	{
		Node	   *qual = stringToNode(tg->tgqual);
		Bitmapset  *both = NULL;

		pull_varattnos(qual, PRS2_OLD_VARNO, &both);
		pull_varattnos(qual, PRS2_NEW_VARNO, &both);
		w->whole_row = bms_is_member(InvalidAttrNumber - FirstLowInvalidHeapAttributeNumber, both);
		w->columns = both;
		ChangeVarNodes(qual, PRS2_OLD_VARNO, INNER_VAR, 0);
		ChangeVarNodes(qual, PRS2_NEW_VARNO, OUTER_VAR, 0);
		w->when = make_ands_implicit((Expr *) qual);
		w->tgfoid = tg->tgfoid;
		w->ours = OidIsValid(get_func_namespace(tg->tgfoid)) &&
			get_func_namespace(tg->tgfoid) == get_namespace_oid("crmguard", true);
		w->tgqual = pstrdup(tg->tgqual);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(old);
		MemoryContextDelete(w->cxt);
		hash_search(parsed_whens, &tg->tgoid, HASH_REMOVE, NULL);
		PG_RE_THROW();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
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
		ParsedWhen *w;

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
		w = parsed_when(tg);
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

/* Would TriggerEnabled look at tg's WHEN under the session's replication role? */
static bool
trigger_may_fire(const Trigger *tg)
{
	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
		return tg->tgenabled == TRIGGER_FIRES_ON_REPLICA || tg->tgenabled == TRIGGER_FIRES_ALWAYS;
	return tg->tgenabled != TRIGGER_FIRES_ON_REPLICA && tg->tgenabled != TRIGGER_DISABLED;
}

/*
 * The WHEN clauses of crmguard's row triggers on rri that this statement's
 * command fires, built from the trees parsed once per backend, as
 * TriggerEnabled would build them from the text at the first row.
 */
static void
prepare_guard_whens(ResultRelInfo *rri, EState *estate, CmdType operation)
{
	TriggerDesc *td = rri->ri_TrigDesc;
	int16		event = operation == CMD_UPDATE ? TRIGGER_TYPE_UPDATE :
		operation == CMD_INSERT ? TRIGGER_TYPE_INSERT :
		operation == CMD_DELETE ? TRIGGER_TYPE_DELETE : 0;
	int			i;

	if (td == NULL || event == 0 || rri->ri_TrigWhenExprs == NULL)
		return;
	for (i = 0; i < td->numtriggers; i++)
	{
		Trigger    *tg = &td->triggers[i];
		ParsedWhen *w;
		MemoryContext old;

		if (tg->tgqual == NULL || !TRIGGER_FOR_ROW(tg->tgtype) || (tg->tgtype & event) == 0 ||
			!trigger_may_fire(tg) || rri->ri_TrigWhenExprs[i] != NULL)
			continue;
		w = parsed_when(tg);
		if (!w->ours)
			continue;
		old = MemoryContextSwitchTo(estate->es_query_cxt);
		rri->ri_TrigWhenExprs[i] = ExecPrepareQual(w->when, estate);
		MemoryContextSwitchTo(old);
	}
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
	{
		disable_idle_guards((ResultRelInfo *) lfirst(lc), queryDesc->estate);
		prepare_guard_whens((ResultRelInfo *) lfirst(lc), queryDesc->estate, queryDesc->operation);
	}
}

/* From _PG_init */
void
cg_otp_idle_init(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = otp_idle_start;
}
