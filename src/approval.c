/*
 * approval.c
 *		Approval workflows: the lock on a row while its request is pending,
 *		automatic submission of rows that enter a process's criteria, and the
 *		actions after a decision.
 *
 * The steps of a request (approve, reject, recall, delegate, timeouts) are
 * SQL in 80_approval.sql; this file holds what runs on every row of a table
 * with processes, and what must run as somebody else: the submission that
 * reads the row as the caller, and "set" and "call" actions, which run as
 * the role that defined the process, never as the extension's owner.
 *
 * Every backend caches, for each table with processes, its current
 * processes in order and the keys of its rows with a pending request.  Any
 * change of crmguard.approval_process or crmguard.approval_request_state
 * invalidates the cache at commit.  The lock trigger processes invalidations
 * before it looks: a transaction that waited for the submitter's row lock
 * sees the request the submitter committed.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "parser/parsetree.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "crmguard.h"

#define LOCK_GUARD		CG_APPROVAL_LOCK_GUARD
#define TRUNCATE_GUARD	CG_APPROVAL_TRUNCATE_GUARD
#define SUBMIT_INSERT	CG_APPROVAL_SUBMIT_INSERT
#define SUBMIT_UPDATE	CG_APPROVAL_SUBMIT_UPDATE

/* ---------------------------------------------------------------------------
 * Cache
 * ---------------------------------------------------------------------------
 */
typedef struct Process
{
	int64		id;
	char	   *compiled;		/* entry criteria over the row */
	bool		on_insert;
	bool		on_update;
} Process;

typedef struct PendingRow
{
	char	   *key;
	int64		request;
	int			nedit;
	char	  **editable;
} PendingRow;

typedef struct ApprovalTable
{
	Oid			relid;			/* hash key */
	int			nprocesses;
	Process    *processes;		/* current ones, in their order */
	List	   *pending;		/* of PendingRow */
	HTAB	   *pending_keys;	/* text key -> PendingRows, when any */
	HTAB	   *pending_ints;	/* integer key -> PendingRow, for integer keys */
} ApprovalTable;

typedef struct PendingInt
{
	int64		key;
	PendingRow *row;
} PendingInt;

typedef struct PendingKey
{
	char		key[NAMEDATALEN * 2];	/* truncated key; the entry has the full one */
	List	   *rows;
} PendingKey;

static HTAB *tables = NULL;
static MemoryContext cache_context = NULL;
static bool cache_valid = false;
static Oid	process_rel = InvalidOid;
static Oid	signal_rel = InvalidOid;

/* the one row a "set" action may change while its request is pending */
static Oid	bypass_relid = InvalidOid;
static char *bypass_key = NULL;

static void
cache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == process_rel || relid == signal_rel ||
		(tables != NULL && hash_search(tables, &relid, HASH_FIND, NULL) != NULL))
		cache_valid = false;
}

static ApprovalTable *
table_entry(Oid relid)
{
	bool		found;
	ApprovalTable *t = hash_search(tables, &relid, HASH_ENTER, &found);

	if (!found)
	{
		t->nprocesses = 0;
		t->processes = NULL;
		t->pending = NIL;
		t->pending_keys = NULL;
		t->pending_ints = NULL;
	}
	return t;
}

static char **
text_array(Datum d, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;
	int			i;
	char	  **out;

	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &count);
	out = palloc(sizeof(char *) * Max(count, 1));
	for (i = 0; i < count; i++)
		out[i] = nulls[i] ? pstrdup("") : TextDatumGetCString(elems[i]);
	*n = count;
	return out;
}

static bool
contains(char **list, int n, const char *s)
{
	int			i;

	for (i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return true;
	return false;
}

/* Read processes and pending rows with the latest snapshot, whatever the isolation */
static void
load_cache(void)
{
	CgPrivilegedContext priv;
	HASHCTL		ctl;
	MemoryContext old;
	uint64		i;
	SPITupleTable *procs;
	uint64		nprocs;

	if (cache_context == NULL)
	{
		cache_context = AllocSetContextCreate(CacheMemoryContext, "crmguard approval cache",
											  ALLOCSET_SMALL_SIZES);
		cg_register_relcache_callback(cache_callback, (Datum) 0);
	}
	MemoryContextReset(cache_context);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(ApprovalTable);
	ctl.hcxt = cache_context;
	tables = hash_create("crmguard approval tables", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	process_rel = get_relname_relid("approval_process", cg_catalog()->schema);
	signal_rel = get_relname_relid("approval_pending_signal", cg_catalog()->schema);
	cache_valid = true;

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetLatestSnapshot());
	if (SPI_execute("SELECT target::pg_catalog.oid, id, entry_criteria, auto_submit FROM crmguard.approval_process"
					" WHERE current ORDER BY target, position", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.approval_process");
	procs = SPI_tuptable;
	nprocs = SPI_processed;
	for (i = 0; i < nprocs; i++)
	{
		HeapTuple	tup = procs->vals[i];
		TupleDesc	desc = procs->tupdesc;
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		Datum		criteria = SPI_getbinval(tup, desc, 3, &isnull);
		char	   *compiled = cg_criteria_compile(relid, isnull ? NULL : DatumGetJsonbP(criteria));
		int			nauto;
		char	  **autos = text_array(SPI_getbinval(tup, desc, 4, &isnull), &nauto);
		ApprovalTable *t;
		Process    *p;

		old = MemoryContextSwitchTo(cache_context);
		t = table_entry(relid);
		t->processes = t->processes ? repalloc(t->processes, sizeof(Process) * (t->nprocesses + 1))
			: palloc(sizeof(Process));
		p = &t->processes[t->nprocesses++];
		p->id = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		p->compiled = pstrdup(compiled);
		p->on_insert = contains(autos, nauto, "insert");
		p->on_update = contains(autos, nauto, "update");
		MemoryContextSwitchTo(old);
	}
	if (SPI_execute("SELECT r.target::pg_catalog.oid, r.row_key, r.id, p.editable_columns::pg_catalog.text[]"
					" FROM crmguard.approval_request_state r"
					" JOIN crmguard.approval_process p ON p.id OPERATOR(pg_catalog.=) r.process"
					" WHERE r.state OPERATOR(pg_catalog.=) 'pending'", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.approval_request_state");
	old = MemoryContextSwitchTo(cache_context);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		ApprovalTable *t = table_entry(relid);
		PendingRow *row = palloc(sizeof(PendingRow));
		PendingKey *k;
		char		truncated[NAMEDATALEN * 2];
		bool		found;

		row->key = SPI_getvalue(tup, desc, 2);
		row->request = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		row->editable = text_array(SPI_getbinval(tup, desc, 4, &isnull), &row->nedit);
		if (t->pending_keys == NULL)
		{
			HASHCTL		kctl;

			kctl.keysize = sizeof(truncated);
			kctl.entrysize = sizeof(PendingKey);
			kctl.hcxt = cache_context;
			t->pending_keys = hash_create("crmguard pending rows", 64, &kctl,
										  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
		}
		strlcpy(truncated, row->key, sizeof(truncated));
		k = hash_search(t->pending_keys, truncated, HASH_ENTER, &found);
		if (!found)
			k->rows = NIL;
		k->rows = lappend(k->rows, row);
		t->pending = lappend(t->pending, row);
		/* an integer key is also found by value, with no output function per row */
		{
			char	   *end;
			int64		v;

			errno = 0;
			v = strtoi64(row->key, &end, 10);
			if (errno == 0 && end != row->key && *end == '\0')
			{
				PendingInt *pi;

				if (t->pending_ints == NULL)
				{
					HASHCTL		ictl;

					ictl.keysize = sizeof(int64);
					ictl.entrysize = sizeof(PendingInt);
					ictl.hcxt = cache_context;
					t->pending_ints = hash_create("crmguard pending integer keys", 64, &ictl,
												  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
				}
				pi = hash_search(t->pending_ints, &v, HASH_ENTER, NULL);
				pi->row = row;
			}
		}
	}
	MemoryContextSwitchTo(old);
	/* after a restart or a restore, the worker must watch the clocks again */
	if (SPI_execute("SELECT 1 FROM crmguard.approval_request_state WHERE state OPERATOR(pg_catalog.=) 'pending'"
					" AND step_timeout IS NOT NULL LIMIT 1", true, 1) == SPI_OK_SELECT && SPI_processed > 0 &&
		!RecoveryInProgress())
		(void) cg_enqueue(CG_JOB_WAKE, "", 0);
	PopActiveSnapshot();
	SPI_finish();
	cg_leave_owner(&priv);
}

static ApprovalTable *
table_of(Oid relid)
{
	if (!cache_valid)
		load_cache();
	return hash_search(tables, &relid, HASH_FIND, NULL);
}

static PendingRow *
pending_row(ApprovalTable *t, const char *key)
{
	char		truncated[NAMEDATALEN * 2];
	PendingKey *k;
	ListCell   *lc;

	if (t->pending_keys == NULL)
		return NULL;
	strlcpy(truncated, key, sizeof(truncated));
	k = hash_search(t->pending_keys, truncated, HASH_FIND, NULL);
	if (k == NULL)
		return NULL;
	foreach(lc, k->rows)
	{
		PendingRow *row = (PendingRow *) lfirst(lc);

		if (strcmp(row->key, key) == 0)
			return row;
	}
	return NULL;
}

/* The text of a row's key column (the single-column primary key) */
static char *
key_of(Relation rel, HeapTuple tuple, AttrNumber keyatt)
{
	bool		isnull;
	Datum		value = heap_getattr(tuple, keyatt, RelationGetDescr(rel), &isnull);
	Oid			out;
	bool		varlena;

	if (isnull)
		return NULL;
	getTypeOutputInfo(TupleDescAttr(RelationGetDescr(rel), keyatt - 1)->atttypid, &out, &varlena);
	return OidOutputFunctionCall(out, value);
}

/* The primary key's attribute number, per table, from the index cache */
static AttrNumber
key_attno(Relation rel)
{
	Bitmapset  *pk = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
	int			member = bms_next_member(pk, -1);

	if (member < 0 || bms_next_member(pk, member) >= 0)
		return InvalidAttrNumber;
	return member + FirstLowInvalidHeapAttributeNumber;
}

/* ---------------------------------------------------------------------------
 * The lock: no change to a pending row but its editable columns (CG010)
 *
 * The lock is an AFTER row trigger whose WHEN clause asks
 * approval_row_pending(table, OLD.key): a row with no request costs one
 * function call and a hash probe, and no trigger event (a BEFORE trigger
 * would lock every row it is called for).  The error at the end of the
 * statement undoes the whole statement, as a BEFORE trigger's would.
 * ---------------------------------------------------------------------------
 */

/* The pending request of a row, by the value of its key column */
static PendingRow *
find_pending(ApprovalTable *t, Oid keytype, Datum value)
{
	if (keytype == INT8OID || keytype == INT4OID || keytype == INT2OID)
	{
		int64		v = keytype == INT8OID ? DatumGetInt64(value) :
			keytype == INT4OID ? (int64) DatumGetInt32(value) : (int64) DatumGetInt16(value);
		PendingInt *pi = t->pending_ints ? hash_search(t->pending_ints, &v, HASH_FIND, NULL) : NULL;

		return pi ? pi->row : NULL;
	}
	else
	{
		Oid			out;
		bool		varlena;

		getTypeOutputInfo(keytype, &out, &varlena);
		return pending_row(t, OidOutputFunctionCall(out, value));
	}
}

typedef struct PendingCheck
{
	Oid			keytype;
	Oid			relid;
	Oid			userid;
	bool		may_know;		/* the caller may change the table */
} PendingCheck;

/*
 * Tables that a statement running now (at any nesting level) changes: the
 * lock's probe answers for them whatever path reached the table (a view, a
 * rule, a SECURITY DEFINER function), since the role invoking the trigger is
 * then not the one whose rights on the table were checked.
 */
typedef struct ChangingTable
{
	Oid			relid;
	QueryDesc  *query;			/* the statement changing it */
	int			nestlevel;		/* subtransaction that started the statement */
} ChangingTable;

static List *changing_tables = NIL;		/* in TopMemoryContext */
static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;

static void
track_changing_start(QueryDesc *queryDesc, int eflags)
{
	PlannedStmt *stmt = queryDesc->plannedstmt;

	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);

	/* INSERT too: ON CONFLICT DO UPDATE fires the lock */
	if (stmt->resultRelations != NIL && !(eflags & EXEC_FLAG_EXPLAIN_ONLY))
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
		ListCell   *lc;

		foreach(lc, stmt->resultRelations)
		{
			ChangingTable *c = palloc(sizeof(ChangingTable));

			c->relid = rt_fetch(lfirst_int(lc), stmt->rtable)->relid;
			c->query = queryDesc;
			c->nestlevel = GetCurrentTransactionNestLevel();
			changing_tables = lcons(c, changing_tables);
		}
		MemoryContextSwitchTo(old);
	}
}

static void
track_changing_end(QueryDesc *queryDesc)
{
	ListCell   *lc;

	foreach(lc, changing_tables)
	{
		ChangingTable *c = (ChangingTable *) lfirst(lc);

		if (c->query == queryDesc)
		{
			changing_tables = foreach_delete_current(changing_tables, lc);
			pfree(c);
		}
	}
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

/* statements that failed never reach ExecutorEnd: forget what their level pushed */
static void
track_changing_abort(int nestlevel)
{
	ListCell   *lc;

	foreach(lc, changing_tables)
	{
		ChangingTable *c = (ChangingTable *) lfirst(lc);

		if (c->nestlevel >= nestlevel)
		{
			changing_tables = foreach_delete_current(changing_tables, lc);
			pfree(c);
		}
	}
}

static void
track_changing_xact(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE)
		track_changing_abort(0);
}

static void
track_changing_subxact(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		track_changing_abort(GetCurrentTransactionNestLevel());
}

static bool
table_is_changing(Oid relid)
{
	ListCell   *lc;

	foreach(lc, changing_tables)
		if (((ChangingTable *) lfirst(lc))->relid == relid)
			return true;
	return false;
}

/* From _PG_init: watch which tables the running statements change */
void
cg_approval_init(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = track_changing_start;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = track_changing_end;
	RegisterXactCallback(track_changing_xact, NULL);
	RegisterSubXactCallback(track_changing_subxact, NULL);
}

/*
 * WHEN clause of the lock: has the row with this key a pending request?
 * Answered to a role that may update (any column) or delete rows of the
 * table, and inside any statement now changing the table, however it got
 * there (a view, a rule, a function): anyone else learns nothing.
 */
PG_FUNCTION_INFO_V1(crmguard_approval_row_pending);
Datum
crmguard_approval_row_pending(PG_FUNCTION_ARGS)
{
	PendingCheck *check = (PendingCheck *) fcinfo->flinfo->fn_extra;
	Oid			relid;
	ApprovalTable *t;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	relid = PG_GETARG_OID(0);
	if (check == NULL || check->relid != relid || check->userid != GetUserId())
	{
		check = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(PendingCheck));
		check->keytype = get_fn_expr_argtype(fcinfo->flinfo, 1);
		check->relid = relid;
		check->userid = GetUserId();
		/* UPDATE of a single column is enough to fire the lock */
		check->may_know = pg_class_aclcheck(relid, check->userid, ACL_UPDATE | ACL_DELETE) == ACLCHECK_OK ||
			pg_attribute_aclcheck_all(relid, check->userid, ACL_UPDATE, ACLMASK_ANY) == ACLCHECK_OK;
		fcinfo->flinfo->fn_extra = check;
	}
	if (!check->may_know && !table_is_changing(relid))
		PG_RETURN_BOOL(false);
	/* a request committed while this statement waited for the row counts now */
	AcceptInvalidationMessages();
	t = table_of(relid);
	if (t == NULL || t->pending == NIL)
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(find_pending(t, check->keytype, PG_GETARG_DATUM(1)) != NULL);
}

PG_FUNCTION_INFO_V1(crmguard_approval_lock);
Datum
crmguard_approval_lock(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	Oid			relid;
	ApprovalTable *t;
	PendingRow *row;
	TupleDesc	desc;
	AttrNumber	keyatt;
	Datum		keyvalue;
	bool		isnull;
	int			i;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_INSERT(td->tg_event))
		elog(ERROR, "crmguard_approval_lock: must be fired AFTER UPDATE OR DELETE FOR EACH ROW");
	cg_require_preload();
	cg_require_attested();
	rel = td->tg_relation;
	relid = RelationGetRelid(rel);
	desc = RelationGetDescr(rel);
	AcceptInvalidationMessages();
	t = table_of(relid);
	keyatt = key_attno(rel);
	if (t == NULL || t->pending == NIL)
		return PointerGetDatum(NULL);
	/* requests name their rows by the primary key: without one, fail closed */
	if (keyatt == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_CG_ROW_LOCKED),
				 errmsg("table %s has pending approval requests and no primary key to find their rows",
						RelationGetRelationName(rel)),
				 errhint("Restore the table's primary key; until then no row of it can change.")));
	keyvalue = heap_getattr(td->tg_trigtuple, keyatt, desc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	row = find_pending(t, TupleDescAttr(desc, keyatt - 1)->atttypid, keyvalue);
	if (row == NULL)
		return PointerGetDatum(NULL);
	if (bypass_relid == relid && bypass_key != NULL && strcmp(bypass_key, row->key) == 0)
		return PointerGetDatum(NULL);

	if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_CG_ROW_LOCKED),
				 errmsg("row %s of table %s is locked by pending approval request " INT64_FORMAT,
						row->key, RelationGetRelationName(rel), row->request),
				 errhint("The submitter can recall the request; after the decision the row can be deleted.")));
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);
		bool		oldnull;
		bool		newnull;
		Datum		oldv;
		Datum		newv;

		if (a->attisdropped || contains(row->editable, row->nedit, NameStr(a->attname)))
			continue;
		oldv = heap_getattr(td->tg_trigtuple, i + 1, desc, &oldnull);
		newv = heap_getattr(td->tg_newtuple, i + 1, desc, &newnull);
		if (oldnull == newnull && (oldnull || datum_image_eq(oldv, newv, a->attbyval, a->attlen)))
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_CG_ROW_LOCKED),
				 errmsg("row %s of table %s is locked by pending approval request " INT64_FORMAT,
						row->key, RelationGetRelationName(rel), row->request),
				 errdetail("Column \"%s\" cannot change while the request is pending.", NameStr(a->attname)),
				 row->nedit > 0 ?
				 errhint("Only the editable columns of the process can change; the submitter can recall the request.") :
				 errhint("The submitter can recall the request.")));
	}
	return PointerGetDatum(NULL);
}

/* TRUNCATE would empty pending rows with the rest: refused while any is pending */
PG_FUNCTION_INFO_V1(crmguard_approval_truncate);
Datum
crmguard_approval_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	ApprovalTable *t;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		elog(ERROR, "crmguard_approval_truncate: must be fired BEFORE TRUNCATE");
	cg_require_preload();
	AcceptInvalidationMessages();
	t = table_of(RelationGetRelid(td->tg_relation));
	if (t != NULL && t->pending != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_CG_ROW_LOCKED),
				 errmsg("table %s has rows locked by pending approval requests",
						RelationGetRelationName(td->tg_relation)),
				 errdetail("Request " INT64_FORMAT " is one of them.", ((PendingRow *) linitial(t->pending))->request)));
	return PointerGetDatum(NULL);
}

/* Statement trigger on the request table: at commit, every backend reloads its locks */
PG_FUNCTION_INFO_V1(crmguard_approval_requests_changed);
Datum
crmguard_approval_requests_changed(PG_FUNCTION_ARGS)
{
	Oid			signal = get_relname_relid("approval_pending_signal", cg_catalog()->schema);

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "crmguard_approval_requests_changed: not called as a trigger");
	if (OidIsValid(signal))
		CacheInvalidateRelcacheByRelid(signal);
	return PointerGetDatum(NULL);
}

/* ---------------------------------------------------------------------------
 * Submission
 * ---------------------------------------------------------------------------
 */

/* A row as jsonb, the way every part of crmguard writes rows */
static Jsonb *
row_jsonb(Datum row)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(
		text_to_cstring(DatumGetTextPP(DirectFunctionCall1(row_to_json, row))))));
}

/* The first current process of the table whose criteria the row matches */
static Process *
process_for(Oid relid, ApprovalTable *t, Datum row)
{
	int			i;

	for (i = 0; t != NULL && i < t->nprocesses; i++)
		if (cg_criteria_row_matches(relid, t->processes[i].compiled, row))
			return &t->processes[i];
	return NULL;
}

static int64
submit(int64 process, const char *key, Jsonb *data, const char *comment, bool automatic)
{
	CgPrivilegedContext priv;
	Oid			types[5] = {INT8OID, TEXTOID, JSONBOID, TEXTOID, BOOLOID};
	Datum		values[5];
	char		nulls[5] = "     ";
	bool		isnull;
	Datum		id;

	values[0] = Int64GetDatum(process);
	values[1] = CStringGetTextDatum(key);
	values[2] = JsonbPGetDatum(data);
	values[3] = comment ? CStringGetTextDatum(comment) : (Datum) 0;
	nulls[3] = comment ? ' ' : 'n';
	values[4] = BoolGetDatum(automatic);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT crmguard.approval_submit($1, $2, $3, $4, $5)",
							  5, types, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not submit the row");
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	SPI_finish();
	cg_leave_owner(&priv);
	return DatumGetInt64(id);
}

/* Rows that enter a process's criteria on INSERT or UPDATE are submitted */
PG_FUNCTION_INFO_V1(crmguard_approval_auto_submit);
Datum
crmguard_approval_auto_submit(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	Oid			relid;
	bool		inserting;
	HeapTuple	tuple;
	Datum		row;
	Process    *p;
	char	   *key;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_DELETE(td->tg_event))
		elog(ERROR, "crmguard_approval_auto_submit: must be fired AFTER INSERT OR UPDATE FOR EACH ROW");
	cg_require_preload();
	cg_require_attested();
	rel = td->tg_relation;
	relid = RelationGetRelid(rel);
	inserting = TRIGGER_FIRED_BY_INSERT(td->tg_event);
	tuple = inserting ? td->tg_trigtuple : td->tg_newtuple;
	row = heap_copy_tuple_as_datum(tuple, RelationGetDescr(rel));
	p = process_for(relid, table_of(relid), row);
	if (p == NULL || !(inserting ? p->on_insert : p->on_update))
		return PointerGetDatum(NULL);
	/* an update submits a row that enters the criteria, not one already in them */
	if (!inserting &&
		cg_criteria_row_matches(relid, p->compiled,
								heap_copy_tuple_as_datum(td->tg_trigtuple, RelationGetDescr(rel))))
		return PointerGetDatum(NULL);
	key = key_of(rel, tuple, key_attno(rel));
	if (key != NULL)
		(void) submit(p->id, key, row_jsonb(row), NULL, true);
	return PointerGetDatum(NULL);
}

static char *
qualified_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

/* "WHERE key = CAST($1 AS keytype)" for a table */
static char *
key_condition(Oid relid, const char *pk, int param)
{
	AttrNumber	attno = get_attnum(relid, pk);

	return psprintf("%s OPERATOR(pg_catalog.=) CAST($%d AS %s)", quote_identifier(pk), param,
					format_type_be_qualified(get_atttype(relid, attno)));
}

PG_FUNCTION_INFO_V1(crmguard_submit_for_approval);
Datum
crmguard_submit_for_approval(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *key;
	char	   *comment = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	ApprovalTable *t;
	char	   *pk;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	Datum		row;
	Jsonb	   *data;
	Process    *p;
	CgPrivilegedContext priv;
	bool		isnull;
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext old;

	cg_require_preload();
	cg_require_attested();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("target and row_key must not be NULL")));
	relid = PG_GETARG_OID(0);
	key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	t = table_of(relid);
	if (t == NULL || t->nprocesses == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table %s has no approval process", get_rel_name(relid))));

	/* the row as the caller sees it, locked against changes until the request is stored */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	cg_enter_role(&priv, GetUserId());
	pk = cg_primary_key_column(relid);
	values[0] = CStringGetTextDatum(key);
	/* the key as the row's own column prints it: ' 7' or '07' names row 7 */
	if (SPI_execute_with_args(psprintf("SELECT t, t.%s::pg_catalog.text FROM ONLY %s t WHERE %s FOR SHARE",
									   quote_identifier(pk), qualified_name(relid), key_condition(relid, pk, 1)),
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the row");
	cg_leave_owner(&priv);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("row %s of table %s does not exist or is not visible to you", key, get_rel_name(relid))));
	old = MemoryContextSwitchTo(caller);
	row = datumCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull), false, -1);
	key = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	MemoryContextSwitchTo(old);
	SPI_finish();

	data = row_jsonb(row);
	p = process_for(relid, t, row);
	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("row %s of table %s matches no approval process", key, get_rel_name(relid))));
	PG_RETURN_INT64(submit(p->id, key, data, comment, false));
}

/* ---------------------------------------------------------------------------
 * The row of a request, and the actions after a decision
 * ---------------------------------------------------------------------------
 */
typedef struct RequestInfo
{
	int64		id;
	Oid			relid;
	char	   *key;
	char	   *pk;
	int64		submitted_by;	/* 0: nobody */
	ArrayType  *approvers;
	Oid			run_as;
	char	   *process;
	char	   *state;
} RequestInfo;

static RequestInfo *
request_info(int64 request)
{
	CgPrivilegedContext priv;
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	RequestInfo *r = palloc0(sizeof(RequestInfo));
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext old;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	values[0] = Int64GetDatum(request);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT r.target::pg_catalog.oid, r.row_key, r.submitted_by, r.approvers,"
							  " p.run_as::pg_catalog.oid, p.process_name, r.state"
							  " FROM crmguard.approval_request_state r"
							  " JOIN crmguard.approval_process p ON p.id OPERATOR(pg_catalog.=) r.process"
							  " WHERE r.id OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the approval request");
	if (SPI_processed == 0)
		ereport(ERROR, (errcode(ERRCODE_NO_DATA_FOUND),
						errmsg("approval request " INT64_FORMAT " does not exist", request)));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	old = MemoryContextSwitchTo(caller);
	r->id = request;
	r->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
	r->key = SPI_getvalue(tup, desc, 2);
	d = SPI_getbinval(tup, desc, 3, &isnull);
	r->submitted_by = isnull ? 0 : DatumGetInt64(d);
	r->approvers = DatumGetArrayTypePCopy(SPI_getbinval(tup, desc, 4, &isnull));
	r->run_as = DatumGetObjectId(SPI_getbinval(tup, desc, 5, &isnull));
	r->process = SPI_getvalue(tup, desc, 6);
	r->state = SPI_getvalue(tup, desc, 7);
	r->pk = cg_primary_key_column(r->relid);
	MemoryContextSwitchTo(old);
	SPI_finish();
	cg_leave_owner(&priv);
	if (r->pk == NULL)
		elog(ERROR, "table %s has no single-column primary key", get_rel_name(r->relid));
	return r;
}

/*
 * Run a statement on the request's row as the table's owner, the visibility
 * rules set aside (the decision is taken; the row is the one submitted).
 */
static void
run_on_row(RequestInfo *r, const char *sql, int nargs, Oid *types, Datum *values, char *nulls,
		   int expect)
{
	CgPrivilegedContext priv;
	SPIPlanPtr	plan;
	int			rc;

	cg_enter_table_owner(&priv, r->relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = cg_prepare_all_rows(r->relid, sql, nargs, types);
	rc = SPI_execute_plan(plan, values, nulls, expect == SPI_OK_SELECT, 1);
	if (rc != expect)
		elog(ERROR, "\"%s\" failed: %s", sql, SPI_result_code_string(rc));
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("row %s of table %s of approval request " INT64_FORMAT " no longer exists",
						r->key, get_rel_name(r->relid), r->id)));
	SPI_finish();
	cg_leave_owner(&priv);
}

/* The request's row as jsonb, read as the table's owner; NULL when gone */
static Jsonb *
current_row(RequestInfo *r)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	Jsonb	   *result = NULL;
	MemoryContext caller = CurrentMemoryContext;
	CgPrivilegedContext priv;
	SPIPlanPtr	plan;

	values[0] = CStringGetTextDatum(r->key);
	cg_enter_table_owner(&priv, r->relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = cg_prepare_all_rows(r->relid, psprintf("SELECT pg_catalog.row_to_json(t)::pg_catalog.text FROM ONLY %s t WHERE %s",
										qualified_name(r->relid), key_condition(r->relid, r->pk, 1)),
							   1, types);
	if (SPI_execute_plan(plan, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the row of approval request " INT64_FORMAT, r->id);
	if (SPI_processed == 1)
	{
		char	   *text = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		MemoryContext old = MemoryContextSwitchTo(caller);

		result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	cg_leave_owner(&priv);
	return result;
}

PG_FUNCTION_INFO_V1(crmguard_approval_current_row);
Datum
crmguard_approval_current_row(PG_FUNCTION_ARGS)
{
	Jsonb	   *row;

	/* no request, no row (not "request 0") */
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	row = current_row(request_info(PG_GETARG_INT64(0)));
	if (row == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(row);
}

static char *
scalar_text(JsonbValue *v)
{
	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	if (v->type == jbvBool)
		return pstrdup(v->val.boolean ? "true" : "false");
	return NULL;
}

/* Principals an action names: "submitter", "approvers", or a column of the row */
static List *
principals_named(RequestInfo *r, const char *who, Jsonb **row)
{
	List	   *ids = NIL;

	if (who == NULL || strcmp(who, "submitter") == 0)
	{
		if (r->submitted_by != 0)
			ids = lappend(ids, psprintf(INT64_FORMAT, r->submitted_by));
	}
	else if (strcmp(who, "approvers") == 0)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;
		int			i;

		deconstruct_array(r->approvers, INT8OID, 8, true, TYPALIGN_DOUBLE, &elems, &nulls, &n);
		for (i = 0; i < n; i++)
			ids = lappend(ids, psprintf(INT64_FORMAT, DatumGetInt64(elems[i])));
	}
	else
	{
		char	   *id;

		if (*row == NULL)
			*row = current_row(r);
		id = *row ? scalar_text(cg_jsonb_member(&(*row)->root, who)) : NULL;
		if (id != NULL)
			ids = lappend(ids, id);
	}
	return ids;
}

/* Where a principal receives messages of a channel: its attribute, else its name */
static char *
recipient_of(const char *principal_id, const char *channel)
{
	CgPrivilegedContext priv;
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];
	char	   *result = NULL;
	MemoryContext caller = CurrentMemoryContext;

	values[0] = DirectFunctionCall1(int8in, CStringGetDatum(principal_id));
	values[1] = CStringGetTextDatum(strcmp(channel, "email") == 0 ? "email" : "phone");
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT COALESCE(attributes OPERATOR(pg_catalog.->>) $2, name)"
							  " FROM crmguard.principal WHERE id OPERATOR(pg_catalog.=) $1",
							  2, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.principal");
	if (SPI_processed == 1)
		result = MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();
	cg_leave_owner(&priv);
	return result;
}

static void
action_set(RequestInfo *r, Jsonb *body)
{
	JsonbIterator *it = JsonbIteratorInit(&body->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	StringInfoData sets;
	Oid		   *types = palloc(sizeof(Oid) * 64);
	Datum	   *values = palloc(sizeof(Datum) * 64);
	char	   *nulls = palloc(64);
	int			n = 1;
	char	   *column = NULL;

	types[0] = TEXTOID;
	values[0] = CStringGetTextDatum(r->key);
	nulls[0] = ' ';
	initStringInfo(&sets);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			column = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && column != NULL && n < 64)
		{
			char	   *text = scalar_text(&v);
			AttrNumber	attno = get_attnum(r->relid, column);
			Oid			type;
			int32		typmod;
			Oid			collation;

			if (attno == InvalidAttrNumber)
				elog(ERROR, "column \"%s\" of relation %s does not exist", column, get_rel_name(r->relid));
			get_atttypetypmodcoll(r->relid, attno, &type, &typmod, &collation);
			appendStringInfo(&sets, "%s%s = CAST($%d AS %s)", sets.len ? ", " : "", quote_identifier(column),
							 n + 1, format_type_with_typemod(type, typmod));
			types[n] = TEXTOID;
			values[n] = text ? CStringGetTextDatum(text) : (Datum) 0;
			nulls[n] = text ? ' ' : 'n';
			n++;
			column = NULL;
		}
	}
	if (sets.len == 0)
		return;
	bypass_relid = r->relid;
	bypass_key = r->key;
	PG_TRY();
	{
		run_on_row(r, psprintf("UPDATE ONLY %s SET %s WHERE %s", qualified_name(r->relid), sets.data,
							   key_condition(r->relid, r->pk, 1)),
				   n, types, values, nulls, SPI_OK_UPDATE);
	}
	PG_FINALLY();
	{
		bypass_relid = InvalidOid;
		bypass_key = NULL;
	}
	PG_END_TRY();
}

static void
action_notify(RequestInfo *r, Jsonb *body, Jsonb **row)
{
	char	   *channel = scalar_text(cg_jsonb_member(&body->root, "channel"));
	char	   *subject = scalar_text(cg_jsonb_member(&body->root, "subject"));
	char	   *text = scalar_text(cg_jsonb_member(&body->root, "body"));
	ListCell   *lc;

	if (subject == NULL)
		subject = psprintf("Approval request " INT64_FORMAT " %s", r->id, r->state);
	if (text == NULL)
		text = psprintf("Approval request " INT64_FORMAT " (%s) for row %s of %s is %s.",
						r->id, r->process, r->key, get_rel_name(r->relid), r->state);
	foreach(lc, principals_named(r, scalar_text(cg_jsonb_member(&body->root, "to")), row))
	{
		char	   *recipient = recipient_of((char *) lfirst(lc), channel);

		if (recipient != NULL)
			(void) cg_outbox_put(channel, recipient, subject, text);
	}
}

/*
 * Zoho's webhook action: a JSON document about the request, its decision and
 * its row (as the table's owner reads it now), queued for the relay's http
 * channel of that name; the outbox message's idempotency key identifies it.
 */
static void
action_webhook(RequestInfo *r, Jsonb *body)
{
	char	   *channel = scalar_text(cg_jsonb_member(&body->root, "channel"));
	JsonbValue *extra = cg_jsonb_member(&body->root, "body");
	const CgPrincipal *actor = cg_current_principal();
	Jsonb	   *row;
	StringInfoData doc;

	/* the row as the decision left it: see this transaction's earlier "set" */
	CommandCounterIncrement();
	PushCopiedSnapshot(GetActiveSnapshot());
	UpdateActiveSnapshotCommandId();
	row = current_row(r);
	PopActiveSnapshot();

	initStringInfo(&doc);
	appendStringInfo(&doc, "{\"request\": " INT64_FORMAT ", \"process\": ", r->id);
	escape_json(&doc, r->process);
	appendStringInfoString(&doc, ", \"state\": ");
	escape_json(&doc, r->state);
	appendStringInfoString(&doc, ", \"target\": ");
	escape_json(&doc, qualified_name(r->relid));
	appendStringInfoString(&doc, ", \"row_key\": ");
	escape_json(&doc, r->key);
	appendStringInfoString(&doc, ", \"acted_by\": ");
	if (actor != NULL)
		escape_json(&doc, actor->name);
	else
		appendStringInfoString(&doc, "null");
	appendStringInfoString(&doc, ", \"at\": ");
	escape_json(&doc, timestamptz_to_str(GetCurrentTransactionStartTimestamp()));
	appendStringInfo(&doc, ", \"row\": %s, \"body\": ",
					 row ? JsonbToCString(NULL, &row->root, VARSIZE(row)) : "null");
	if (extra != NULL)
	{
		Jsonb	   *j = JsonbValueToJsonb(extra);

		appendStringInfoString(&doc, JsonbToCString(NULL, &j->root, VARSIZE(j)));
	}
	else
		appendStringInfoString(&doc, "null");
	appendStringInfoChar(&doc, '}');
	(void) cg_outbox_put(channel, channel,
						 psprintf("Approval request " INT64_FORMAT " %s", r->id, r->state), doc.data);
}

static void
action_task(RequestInfo *r, Jsonb *body, Jsonb **row)
{
	char	   *subject = scalar_text(cg_jsonb_member(&body->root, "subject"));
	ListCell   *lc;
	CgPrivilegedContext priv;

	foreach(lc, principals_named(r, scalar_text(cg_jsonb_member(&body->root, "assign_to")), row))
	{
		Oid			types[3] = {INT8OID, INT8OID, TEXTOID};
		Datum		values[3];

		values[0] = Int64GetDatum(r->id);
		values[1] = DirectFunctionCall1(int8in, CStringGetDatum((char *) lfirst(lc)));
		values[2] = CStringGetTextDatum(subject);
		cg_enter_owner(&priv);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("INSERT INTO crmguard.task (request, assigned_to, subject) VALUES ($1, $2, $3)",
								  3, types, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not create the task");
		SPI_finish();
		cg_leave_owner(&priv);
	}
}

/* A user function taking the request id, run as the process's definer */
static void
action_call(RequestInfo *r, const char *function)
{
	CgPrivilegedContext priv;
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	Oid			fn = DatumGetObjectId(DirectFunctionCall1(to_regprocedure,
														  CStringGetTextDatum(psprintf("%s(bigint)", function))));

	if (!OidIsValid(fn))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s(bigint) of approval process \"%s\" does not exist", function, r->process)));
	values[0] = Int64GetDatum(r->id);
	cg_enter_role(&priv, r->run_as);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(psprintf("SELECT %s($1)", quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)), get_func_name(fn))),
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not call %s", function);
	SPI_finish();
	cg_leave_owner(&priv);
}

PG_FUNCTION_INFO_V1(crmguard_approval_run_actions);
Datum
crmguard_approval_run_actions(PG_FUNCTION_ARGS)
{
	RequestInfo *r;
	Jsonb	   *actions;
	Jsonb	   *row = NULL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_VOID();
	r = request_info(PG_GETARG_INT64(0));
	actions = PG_GETARG_JSONB_P(1);
	it = JsonbIteratorInit(&actions->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		JsonbIterator *inner;
		JsonbValue	k;
		JsonbValue	body;
		char	   *kind;

		if (tok != WJB_ELEM || v.type != jbvBinary)
			continue;
		inner = JsonbIteratorInit(v.val.binary.data);
		(void) JsonbIteratorNext(&inner, &k, true);		/* WJB_BEGIN_OBJECT */
		if (JsonbIteratorNext(&inner, &k, true) != WJB_KEY ||
			JsonbIteratorNext(&inner, &body, true) != WJB_VALUE)
			continue;
		kind = pnstrdup(k.val.string.val, k.val.string.len);
		if (strcmp(kind, "call") == 0)
			action_call(r, scalar_text(&body));
		else if (body.type == jbvBinary)
		{
			Jsonb	   *object = JsonbValueToJsonb(&body);

			if (strcmp(kind, "set") == 0)
				action_set(r, object);
			else if (strcmp(kind, "notify") == 0)
				action_notify(r, object, &row);
			else if (strcmp(kind, "task") == 0)
				action_task(r, object, &row);
			else if (strcmp(kind, "webhook") == 0)
				action_webhook(r, object);
			else
				elog(ERROR, "unknown approval action \"%s\"", kind);
		}
	}
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------------
 * Definitions
 * ---------------------------------------------------------------------------
 */

/* Install the lock, and the auto-submit triggers the current processes need; caller is owner, in SPI */
static void
refresh_guards(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	StringInfoData on_insert;
	StringInfoData on_update;
	uint64		i;

	values[0] = ObjectIdGetDatum(relid);
	if (SPI_execute_with_args("SELECT entry_criteria, 'insert' OPERATOR(pg_catalog.=) ANY (auto_submit),"
							  " 'update' OPERATOR(pg_catalog.=) ANY (auto_submit)"
							  " FROM crmguard.approval_process WHERE target OPERATOR(pg_catalog.=) $1 AND current"
							  " ORDER BY position", 1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.approval_process");
	initStringInfo(&on_insert);
	initStringInfo(&on_update);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		Datum		criteria = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull);
		Jsonb	   *c = isnull ? NULL : DatumGetJsonbP(criteria);

		if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
			appendStringInfo(&on_insert, "%s(%s) IS TRUE", on_insert.len ? " OR " : "",
							 cg_criteria_compile_row(relid, c, "NEW"));
		if (DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull)))
			appendStringInfo(&on_update, "%s((%s) IS TRUE AND (%s) IS NOT TRUE)", on_update.len ? " OR " : "",
							 cg_criteria_compile_row(relid, c, "NEW"), cg_criteria_compile_row(relid, c, "OLD"));
	}
	{
		char	   *pk = cg_primary_key_column(relid);
		char	   *when = psprintf("crmguard.approval_row_pending(%s::pg_catalog.regclass, OLD.%s)",
									quote_literal_cstr(qualified_name(relid)), quote_identifier(pk));

		cg_guard_install(relid, LOCK_GUARD, "approval_lock", "AFTER UPDATE OR DELETE", when);
		cg_guard_install_statement(relid, TRUNCATE_GUARD, "approval_truncate", "BEFORE TRUNCATE");
	}
	cg_guard_remove(relid, SUBMIT_INSERT);
	cg_guard_remove(relid, SUBMIT_UPDATE);
	if (on_insert.len)
		cg_guard_install(relid, SUBMIT_INSERT, "approval_auto_submit", "AFTER INSERT", on_insert.data);
	if (on_update.len)
		cg_guard_install(relid, SUBMIT_UPDATE, "approval_auto_submit", "AFTER UPDATE", on_update.data);
}

static void
invalid_process(const char *message)
{
	ereport(ERROR, (errcode(ERRCODE_CG_INVALID_RULE), errmsg("invalid approval process: %s", message)));
}

PG_FUNCTION_INFO_V1(crmguard_create_approval_process);
Datum
crmguard_create_approval_process(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			relid;
	Jsonb	   *criteria = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	CgPrivilegedContext priv;
	Oid			types[11] = {TEXTOID, OIDOID, JSONBOID, JSONBOID, JSONBOID, JSONBOID, JSONBOID,
	TEXTARRAYOID, NAMEARRAYOID, OIDOID, INT4OID};
	Datum		values[11];
	char		nulls[11] = "           ";
	int			i;
	int64		id;
	bool		isnull;

	cg_require_preload();
	if (PG_ARGISNULL(0) || text_to_cstring(PG_GETARG_TEXT_PP(0))[0] == '\0')
		invalid_process("the process needs a name");
	if (PG_ARGISNULL(1))
		invalid_process("the table is NULL");
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	relid = PG_GETARG_OID(1);
	if (get_rel_relkind(relid) != RELKIND_RELATION)
		invalid_process(get_rel_relkind(relid) == '\0' ? psprintf("relation with OID %u does not exist", relid)
						: psprintf("\"%s\" is not an ordinary table", get_rel_name(relid)));
	cg_require_table_owner(relid);
	for (i = 3; i <= 8; i++)
		if (PG_ARGISNULL(i))
			invalid_process(psprintf("argument %d must not be NULL", i + 1));
	(void) cg_criteria_compile_row(relid, criteria, "NEW");		/* CG020 when wrong */

	LockRelationOid(relid, ShareRowExclusiveLock);
	values[0] = CStringGetTextDatum(name);
	values[1] = ObjectIdGetDatum(relid);
	values[2] = criteria ? JsonbPGetDatum(criteria) : (Datum) 0;
	nulls[2] = criteria ? ' ' : 'n';
	for (i = 3; i <= 8; i++)
		values[i] = PG_GETARG_DATUM(i);
	values[9] = ObjectIdGetDatum(GetUserId());
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (cg_primary_key_column(relid) == NULL)
		invalid_process(psprintf("table \"%s\" needs a single-column primary key to name its rows",
								 get_rel_name(relid)));
	if (SPI_execute_with_args("SELECT crmguard.approval_check_definition($2::pg_catalog.regclass, $4, $5, $6, $7, $8, $9,"
							  " $10::pg_catalog.regrole)",
							  10, types, values, nulls, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not check the approval process");
	/* a new version of an existing process keeps its place among the table's processes */
	if (SPI_execute_with_args("SELECT target::pg_catalog.oid, version, position FROM crmguard.approval_process"
							  " WHERE process_name OPERATOR(pg_catalog.=) $1 AND current FOR UPDATE",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.approval_process");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];

		if (DatumGetObjectId(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull)) != relid)
			invalid_process(psprintf("process \"%s\" belongs to another table", name));
		values[10] = Int32GetDatum(DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull)));
		if (SPI_execute_with_args("UPDATE crmguard.approval_process SET current = false"
								  " WHERE process_name OPERATOR(pg_catalog.=) $1 AND current",
								  1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update crmguard.approval_process");
	}
	else
	{
		if (SPI_execute_with_args("SELECT COALESCE(pg_catalog.max(position), 0) OPERATOR(pg_catalog.+) 1"
								  " FROM crmguard.approval_process WHERE target OPERATOR(pg_catalog.=) $2",
								  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read crmguard.approval_process");
		values[10] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	}
	if (SPI_execute_with_args("INSERT INTO crmguard.approval_process (process_name, version, position, target,"
							  " entry_criteria, steps, on_approve, on_reject, on_submit, auto_submit,"
							  " editable_columns, run_as)"
							  " SELECT $1, COALESCE((SELECT pg_catalog.max(version) FROM crmguard.approval_process"
							  "   WHERE process_name OPERATOR(pg_catalog.=) $1), 0) OPERATOR(pg_catalog.+) 1,"
							  " $11, $2::pg_catalog.regclass, $3, $4, $5, $6, $7, $8, $9, $10::pg_catalog.regrole"
							  " RETURNING id", 11, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store the approval process");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	refresh_guards(relid);
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	cg_audit("create_approval_process", get_rel_name(relid), name, NULL);
	PG_RETURN_INT64(id);
}

PG_FUNCTION_INFO_V1(crmguard_drop_approval_process);
Datum
crmguard_drop_approval_process(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CgPrivilegedContext priv;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	Oid			relid;
	bool		isnull;

	cg_require_preload();
	values[0] = CStringGetTextDatum(name);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT target::pg_catalog.oid FROM crmguard.approval_process"
							  " WHERE process_name OPERATOR(pg_catalog.=) $1 AND current",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.approval_process");
	if (SPI_processed == 0)
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_OBJECT),
						errmsg("approval process \"%s\" does not exist", name)));
	relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	cg_leave_owner(&priv);
	cg_require_table_owner(relid);
	LockRelationOid(relid, ShareRowExclusiveLock);
	cg_enter_owner(&priv);
	if (SPI_execute_with_args("UPDATE crmguard.approval_process SET current = false"
							  " WHERE process_name OPERATOR(pg_catalog.=) $1 AND current",
							  1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update crmguard.approval_process");
	refresh_guards(relid);
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	cg_audit("drop_approval_process", get_rel_name(relid), name, NULL);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------------
 * The background worker's tick: timeouts and inactive approvers
 * ---------------------------------------------------------------------------
 */

/* A step with a timeout started: make sure this database's worker runs */
PG_FUNCTION_INFO_V1(crmguard_approval_wake_worker);
Datum
crmguard_approval_wake_worker(PG_FUNCTION_ARGS)
{
	cg_require_preload();
	if (!cg_enqueue(CG_JOB_WAKE, "", 0))
		ereport(WARNING,
				(errmsg("crmguard could not wake its background worker"),
				 errhint("Call crmguard.run_due() to process approval timeouts.")));
	PG_RETURN_VOID();
}

/* Run run_due() if approvals are installed; true while requests wait on a clock */
bool
cg_approval_tick(void)
{
	bool		waiting = false;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n"
					" ON n.oid OPERATOR(pg_catalog.=) p.pronamespace"
					" WHERE n.nspname OPERATOR(pg_catalog.=) 'crmguard'"
					" AND p.proname OPERATOR(pg_catalog.=) 'run_due'", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		isnull;

		if (SPI_execute("SELECT crmguard.run_due()", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "crmguard.run_due() failed");
		if (SPI_execute("SELECT EXISTS (SELECT 1 FROM crmguard.approval_request_state"
						" WHERE state OPERATOR(pg_catalog.=) 'pending' AND step_timeout IS NOT NULL)",
						true, 1) == SPI_OK_SELECT)
			waiting = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	return waiting;
}
