/*
 * activity.c
 *		Who contributes: rows inserted, updated and deleted per principal,
 *		tracked table and day, plus attestations, token use and unmasking.
 *
 * No per-row work of crmguard's own: PostgreSQL already counts, per table
 * and (sub)transaction, the rows each backend inserts, updates and deletes
 * (the pgstat counters behind pg_stat_user_tables).  At the end of each
 * statement crmguard reads those counters for the tracked tables and
 * credits the growth since the last statement to the acting principal,
 * in backend memory; just before the transaction commits, one INSERT
 * writes them into crmguard.activity_log.  So the counts commit or roll
 * back with the rows they count (a rolled-back savepoint takes its share
 * with it), concurrent writers only append (no counter row to fight over),
 * and a restart loses nothing that committed.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "crmguard.h"

#define NACTIONS 3
static const char *const action_names[NACTIONS] = {"insert", "update", "delete"};

/* The tracked tables of this database, cached until crmguard.activity_track changes */
static Oid *tracked = NULL;
static int	ntracked = 0;
static bool tracked_valid = false;
static bool installed = false;	/* crmguard is installed in this database */
static Oid	track_rel = InvalidOid;
static bool loading = false;
static bool callbacks_registered = false;

/* Per tracked table: the counts already credited in this transaction */
typedef struct Credited
{
	Oid			relid;			/* hash key */
	int64		n[NACTIONS];
} Credited;

static HTAB *credited = NULL;	/* in TopTransactionContext */

/* What a rolled-back savepoint gives back: the credited counts it found */
typedef struct CreditedSave
{
	SubTransactionId subid;
	int			nentries;
	Credited   *entries;
} CreditedSave;

static List *saves = NIL;		/* innermost first, in TopTransactionContext */

/* Credits waiting for the commit */
typedef struct Pending
{
	SubTransactionId subid;
	int64		principal;
	Oid			relid;			/* InvalidOid: not a table's rows */
	const char *action;
	int64		n;
	TimestampTz at;
} Pending;

static List *pending = NIL;		/* in TopTransactionContext */

static ExecutorEnd_hook_type prev_executor_end = NULL;

static void
invalidate_tracked(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == track_rel)
		tracked_valid = false;
}

static void
invalidate_tracked_syscache(Datum arg, int cacheid, uint32 hashvalue)
{
	tracked_valid = false;
}

static void
note_tracked(Datum *values, bool *nulls, void *arg)
{
	List	  **targets = arg;

	*targets = lappend_oid(*targets, DatumGetObjectId(values[0]));
}

/* Read the tracked tables (only in a healthy transaction) */
static void
load_tracked(void)
{
	static const char *const columns[] = {"target"};
	Oid			schema;
	List	   *targets = NIL;
	ListCell   *lc;

	if (!callbacks_registered)
	{
		cg_register_relcache_callback(invalidate_tracked, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, invalidate_tracked_syscache, (Datum) 0);
		callbacks_registered = true;
	}
	ntracked = 0;
	schema = get_namespace_oid("crmguard", true);
	track_rel = OidIsValid(schema) ? get_relname_relid("activity_track", schema) : InvalidOid;
	installed = OidIsValid(track_rel);
	tracked_valid = true;
	/* no table was ever tracked here: no read (fresh connections) */
	if (!installed || cg_catalog_never_written(track_rel))
		return;

	PG_TRY();
	{
		cg_scan_catalog(track_rel, GetTransactionSnapshot(), 1, columns, note_tracked, &targets);
	}
	PG_CATCH();
	{
		tracked_valid = false;	/* read again next time */
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (tracked != NULL)
		pfree(tracked);
	tracked = MemoryContextAlloc(TopMemoryContext, sizeof(Oid) * Max(list_length(targets), 16));
	foreach(lc, targets)
		tracked[ntracked++] = lfirst_oid(lc);
	list_free(targets);
}

/* The rows this transaction has inserted, updated and deleted in a table so far */
static void
xact_counts(Oid relid, int64 *n)
{
	PgStat_TableStatus *ts = find_tabstat_entry(relid);
	PgStat_TableXactStatus *trans;

	n[0] = n[1] = n[2] = 0;
	if (ts == NULL)
		return;
	for (trans = ts->trans; trans != NULL; trans = trans->upper)
	{
		n[0] += trans->tuples_inserted;
		n[1] += trans->tuples_updated;
		n[2] += trans->tuples_deleted;
		if (trans->truncdropped)
		{
			n[0] += trans->inserted_pre_truncdrop;
			n[1] += trans->updated_pre_truncdrop;
			n[2] += trans->deleted_pre_truncdrop;
		}
	}
}

static void
add_pending(int64 principal, Oid relid, const char *action, int64 n)
{
	MemoryContext old;
	Pending    *e;
	SubTransactionId subid = GetCurrentSubTransactionId();

	/* the same principal, table and action in the same savepoint: one entry */
	if (pending != NIL)
	{
		e = (Pending *) llast(pending);
		if (e->subid == subid && e->principal == principal && e->relid == relid &&
			e->action == action)
		{
			e->n += n;
			e->at = GetCurrentTimestamp();
			return;
		}
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	e = palloc(sizeof(Pending));
	e->subid = subid;
	e->principal = principal;
	e->relid = relid;
	e->action = action;
	e->n = n;
	e->at = GetCurrentTimestamp();
	pending = lappend(pending, e);
	MemoryContextSwitchTo(old);
}

/*
 * Credit the acting principal with what the tracked tables grew by since
 * the last time: called at the end of each statement and before commit.
 */
static void credit_counts(void);

static void
credit_statement(void)
{
	bool		pushed;

	if (loading || !OidIsValid(MyDatabaseId) || !IsTransactionState() ||
		IsParallelWorker() || IsBinaryUpgrade || RecoveryInProgress())
		return;
	/*
	 * Only written rows are credited, and a transaction that wrote a row has
	 * an xid: a read-only one (most first statements of a connection) reads
	 * no tracking catalog at all.
	 */
	if (!TransactionIdIsValid(GetTopTransactionIdIfAny()))
		return;
	/* the SPI reads below end statements of their own: not counted */
	loading = true;
	/* a portal's executor ends after its snapshot is gone */
	pushed = !ActiveSnapshotSet();
	if (pushed)
		PushActiveSnapshot(GetTransactionSnapshot());
	PG_TRY();
	{
		if (!tracked_valid)
			load_tracked();
		if (ntracked > 0)
			credit_counts();
	}
	PG_FINALLY();
	{
		loading = false;
		if (pushed)
			PopActiveSnapshot();
	}
	PG_END_TRY();
}

static void
credit_counts(void)
{
	const CgPrincipal *p = cg_current_principal();
	int64		principal = p ? p->id : 0;
	int			i;

	if (credited == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(Credited);
		ctl.hcxt = TopTransactionContext;
		credited = hash_create("crmguard activity", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	for (i = 0; i < ntracked; i++)
	{
		int64		now[NACTIONS];
		Credited   *c;
		bool		found;
		int			a;

		xact_counts(tracked[i], now);
		if (now[0] == 0 && now[1] == 0 && now[2] == 0)
			continue;
		c = hash_search(credited, &tracked[i], HASH_ENTER, &found);
		if (!found)
			memset(c->n, 0, sizeof(c->n));
		for (a = 0; a < NACTIONS; a++)
		{
			/* nobody's rows are counted for no one */
			if (now[a] > c->n[a] && principal != 0)
				add_pending(principal, tracked[i], action_names[a], now[a] - c->n[a]);
			c->n[a] = now[a];
		}
	}
}

static void
activity_executor_end(QueryDesc *queryDesc)
{
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
	credit_statement();
}

/* Record an event of the acting principal (attest, token, unmask): counted at commit */
void
cg_activity_note(const char *action)
{
	const CgPrincipal *p = cg_current_principal();

	if (p == NULL || RecoveryInProgress())
		return;
	add_pending(p->id, InvalidOid, action, 1);
}

/* One INSERT for the transaction's credits, as crmguard's owner */
static void
flush_pending(void)
{
	int			n = list_length(pending);
	Datum	   *principals = palloc(sizeof(Datum) * n);
	Datum	   *targets = palloc(sizeof(Datum) * n);
	bool	   *target_nulls = palloc(sizeof(bool) * n);
	Datum	   *actions = palloc(sizeof(Datum) * n);
	Datum	   *counts = palloc(sizeof(Datum) * n);
	Datum	   *ats = palloc(sizeof(Datum) * n);
	int			dims[1] = {n};
	int			lbs[1] = {1};
	Oid			types[5] = {INT8ARRAYOID, OIDARRAYOID, TEXTARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID};
	Datum		values[5];
	CgPrivilegedContext priv;
	ListCell   *lc;
	int			i = 0;

	foreach(lc, pending)
	{
		Pending    *e = (Pending *) lfirst(lc);

		principals[i] = Int64GetDatum(e->principal);
		targets[i] = ObjectIdGetDatum(e->relid);
		target_nulls[i] = !OidIsValid(e->relid);
		actions[i] = CStringGetTextDatum(e->action);
		counts[i] = Int64GetDatum(e->n);
		ats[i] = TimestampTzGetDatum(e->at);
		i++;
	}
	values[0] = PointerGetDatum(construct_array(principals, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = PointerGetDatum(construct_md_array(targets, target_nulls, 1, dims, lbs, OIDOID,
												   sizeof(Oid), true, TYPALIGN_INT));
	values[2] = PointerGetDatum(construct_array(actions, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[3] = PointerGetDatum(construct_array(counts, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[4] = PointerGetDatum(construct_array(ats, n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));

	loading = true;
	PG_TRY();
	{
		cg_enter_owner(&priv);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("INSERT INTO crmguard.activity_log (principal, target, day, action, n, last_at)"
								  " SELECT p, t::pg_catalog.regclass, (a AT TIME ZONE 'UTC')::pg_catalog.date, act, c, a"
								  " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
								  " pg_catalog.unnest($4), pg_catalog.unnest($5)) AS u(p, t, act, c, a)",
								  5, types, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not record activity");
		SPI_finish();
		cg_leave_owner(&priv);
	}
	PG_FINALLY();
	{
		loading = false;
	}
	PG_END_TRY();
}

static void
activity_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			credit_statement();	/* COPY and anything no executor end saw */
			if (pending != NIL)
			{
				PushActiveSnapshot(GetTransactionSnapshot());
				flush_pending();
				PopActiveSnapshot();
			}
			pending = NIL;
			break;
		case XACT_EVENT_PRE_PREPARE:
			/* a prepared transaction's rows are credited to no one */
			pending = NIL;
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			pending = NIL;
			credited = NULL;
			saves = NIL;
			break;
		default:
			break;
	}
}

/*
 * A savepoint remembers the credited counts; rolled back, it gives them
 * back (PostgreSQL's counters drop its rows too) with its pending credits.
 */
static void
activity_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						  SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;
	CreditedSave *save;

	switch (event)
	{
		case SUBXACT_EVENT_START_SUB:
			if (credited == NULL && pending == NIL)
				return;
			{
				MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
				HASH_SEQ_STATUS seq;
				Credited   *c;
				int			i = 0;

				save = palloc(sizeof(CreditedSave));
				save->subid = mySubid;
				save->nentries = credited ? hash_get_num_entries(credited) : 0;
				save->entries = palloc(sizeof(Credited) * Max(save->nentries, 1));
				if (credited)
				{
					hash_seq_init(&seq, credited);
					while ((c = hash_seq_search(&seq)) != NULL)
						save->entries[i++] = *c;
				}
				saves = lcons(save, saves);
				MemoryContextSwitchTo(old);
			}
			break;
		case SUBXACT_EVENT_ABORT_SUB:
			foreach(lc, pending)
			{
				Pending    *e = (Pending *) lfirst(lc);

				if (e->subid == mySubid)
					pending = foreach_delete_current(pending, lc);
			}
			if (saves != NIL && ((CreditedSave *) linitial(saves))->subid == mySubid)
			{
				int			i;

				save = linitial(saves);
				saves = list_delete_first(saves);
				if (credited)
				{
					HASH_SEQ_STATUS seq;
					Credited   *c;

					hash_seq_init(&seq, credited);
					while ((c = hash_seq_search(&seq)) != NULL)
						memset(c->n, 0, sizeof(c->n));
					for (i = 0; i < save->nentries; i++)
					{
						c = hash_search(credited, &save->entries[i].relid, HASH_ENTER, NULL);
						memcpy(c->n, save->entries[i].n, sizeof(c->n));
					}
				}
			}
			else if (credited)
			{
				/* nothing was credited when it began */
				hash_destroy(credited);
				credited = NULL;
			}
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			foreach(lc, pending)
			{
				Pending    *e = (Pending *) lfirst(lc);

				if (e->subid == mySubid)
					e->subid = parentSubid;
			}
			if (saves != NIL && ((CreditedSave *) linitial(saves))->subid == mySubid)
				saves = list_delete_first(saves);
			break;
		default:
			break;
	}
}

void
cg_activity_init(void)
{
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = activity_executor_end;
	RegisterXactCallback(activity_xact_callback, NULL);
	RegisterSubXactCallback(activity_subxact_callback, NULL);
}

/* track(target): count contributions to a table; untrack(target) stops */
PG_FUNCTION_INFO_V1(crmguard_track_check);
Datum
crmguard_track_check(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char		relkind;

	cg_require_preload();
	cg_require_relation(relid);
	relkind = get_rel_relkind(relid);
	if (relkind == RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot track partitioned table \"%s\"", get_rel_name(relid)),
				 errhint("Track each of its partitions.")));
	if (relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", get_rel_name(relid)),
				 errdetail("Activity is counted on tables; track the tables a view writes to.")));
	if (!pgstat_track_counts)
		ereport(WARNING,
				(errmsg("\"track_counts\" is off: no activity will be counted"),
				 errhint("Set track_counts = on in postgresql.conf.")));
	PG_RETURN_VOID();
}
