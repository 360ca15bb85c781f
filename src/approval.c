/*
 * approval.c
 *		Approval workflows: automatic submission of rows that enter a
 *		process's criteria, submit_for_approval, the actions after a
 *		decision, process definitions, and the worker's tick.
 *
 * The lock on a pending row and its caches are in approval_lock.c;
 * submission and decisions (approve, reject, recall, the steps) in
 * approval_engine.c; delegation and timeouts are SQL in 80_approval.sql.
 * What must run as somebody else runs here: the submission that reads the
 * row as the caller, and "set" and "call" actions, which run as the role
 * that defined the process, never as the extension's owner.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "parser/parsetree.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
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
#include "approval.h"

#define LOCK_GUARD		CG_APPROVAL_LOCK_GUARD
#define TRUNCATE_GUARD	CG_APPROVAL_TRUNCATE_GUARD
#define SUBMIT_INSERT	CG_APPROVAL_SUBMIT_INSERT
#define SUBMIT_UPDATE	CG_APPROVAL_SUBMIT_UPDATE

/* ---------------------------------------------------------------------------
 * Submission
 * ---------------------------------------------------------------------------
 */

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
	p = process_for(relid, cg_approval_table(relid), row);
	if (p == NULL || !(inserting ? p->on_insert : p->on_update))
		return PointerGetDatum(NULL);
	/* an update submits a row that enters the criteria, not one already in them */
	if (!inserting &&
		cg_criteria_row_matches(relid, p->compiled,
								heap_copy_tuple_as_datum(td->tg_trigtuple, RelationGetDescr(rel))))
		return PointerGetDatum(NULL);
	key = cg_approval_key_text(rel, tuple, cg_approval_key_attno(rel));
	if (key != NULL)
		(void) cg_approval_submit(p->id, key, cg_row_jsonb(row), NULL, true);
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
	cg_require_relation(relid);
	t = cg_approval_table(relid);
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
	if (SPI_execute_with_args(psprintf("SELECT t, t.%s FROM ONLY %s t WHERE %s FOR SHARE",
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
	/* printed the same in every session, whatever its DateStyle or TimeZone */
	key = cg_row_key_output(SPI_gettypeid(SPI_tuptable->tupdesc, 2),
								 SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	MemoryContextSwitchTo(old);
	SPI_finish();

	data = cg_row_jsonb(row);
	p = process_for(relid, t, row);
	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("row %s of table %s matches no approval process", key, get_rel_name(relid))));
	PG_RETURN_INT64(cg_approval_submit(p->id, key, data, comment, false));
}

/* ---------------------------------------------------------------------------
 * The row of a request, and the actions after a decision
 * ---------------------------------------------------------------------------
 */
/*
 * Statements on requests' rows, prepared once per backend and statement
 * text (the text names the table, its key and the key's type).
 */
typedef struct RowPlan
{
	char	   *sql;
	SPIPlanPtr	plan;
} RowPlan;

#define MAX_ROW_PLANS 64

static List *row_plans = NIL;	/* in TopMemoryContext, most recent first */

/*
 * Run a statement on the request's row as the table's owner, the visibility
 * rules set aside (the decision is taken; the row is the one submitted).  The
 * plan is checked (and rewritten when stale) with the rules set aside before
 * it runs; the statement itself, and what its triggers run, sees them.
 */
static int
execute_on_row(RequestInfo *r, const char *sql, int nargs, Oid *types, Datum *values,
			   const char *nulls, bool read_only)
{
	RowPlan    *rp = NULL;
	ListCell   *lc;
	MemoryContext old;

	foreach(lc, row_plans)
		if (strcmp(((RowPlan *) lfirst(lc))->sql, sql) == 0)
			rp = lfirst(lc);
	if (rp == NULL)
	{
		SPIPlanPtr	plan = cg_prepare_all_rows(r->relid, sql, nargs, types);

		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "could not keep the plan of \"%s\"", sql);
		if (list_length(row_plans) >= MAX_ROW_PLANS)
		{
			RowPlan    *oldest = llast(row_plans);

			row_plans = list_delete_last(row_plans);
			SPI_freeplan(oldest->plan);
			pfree(oldest->sql);
			pfree(oldest);
		}
		old = MemoryContextSwitchTo(TopMemoryContext);
		rp = palloc(sizeof(RowPlan));
		rp->sql = pstrdup(sql);
		rp->plan = plan;
		row_plans = lcons(rp, row_plans);
		MemoryContextSwitchTo(old);
	}
	else
		cg_revalidate_all_rows(r->relid, rp->plan);
	return SPI_execute_plan(rp->plan, values, nulls, read_only, 1);
}

static void
run_on_row(RequestInfo *r, const char *sql, int nargs, Oid *types, Datum *values, char *nulls,
		   int expect)
{
	CgPrivilegedContext priv;
	int			rc;

	cg_enter_table_owner(&priv, r->relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = execute_on_row(r, sql, nargs, types, values, nulls, expect == SPI_OK_SELECT);
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
Jsonb *
cg_approval_current_row(RequestInfo *r)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	Jsonb	   *result = NULL;
	MemoryContext caller = CurrentMemoryContext;
	CgPrivilegedContext priv;
	int			nest;

	values[0] = CStringGetTextDatum(r->key);
	cg_enter_table_owner(&priv, r->relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/*
	 * Output settings pinned, as cg_row_jsonb pins them: the row stored at
	 * submission is compared with the row read by the approver's session.
	 */
	nest = cg_pin_output_settings();
	if (execute_on_row(r, psprintf("SELECT pg_catalog.to_jsonb(t) FROM ONLY %s t WHERE %s",
								   qualified_name(r->relid), key_condition(r->relid, r->pk, 1)),
					   1, types, values, NULL, false) != SPI_OK_SELECT)
		elog(ERROR, "could not read the row of approval request " INT64_FORMAT, r->id);
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		row = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		MemoryContext old = MemoryContextSwitchTo(caller);

		result = DatumGetJsonbPCopy(row);
		MemoryContextSwitchTo(old);
	}
	AtEOXact_GUC(false, nest);
	SPI_finish();
	cg_leave_owner(&priv);
	return result;
}

/* A scalar's text, or NULL when the member is missing, null or not a scalar */
static char *
jsonb_text_or_null(JsonbValue *v)
{
	return v ? cg_jsonb_scalar_text(v) : NULL;
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
			*row = cg_approval_current_row(r);
		id = *row ? jsonb_text_or_null(cg_jsonb_member(&(*row)->root, who)) : NULL;
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
			char	   *text = jsonb_text_or_null(&v);
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
	cg_approval_bypass(r->relid, r->key);
	PG_TRY();
	{
		run_on_row(r, psprintf("UPDATE ONLY %s SET %s WHERE %s", qualified_name(r->relid), sets.data,
							   key_condition(r->relid, r->pk, 1)),
				   n, types, values, nulls, SPI_OK_UPDATE);
	}
	PG_FINALLY();
	{
		cg_approval_bypass(InvalidOid, NULL);
	}
	PG_END_TRY();
}

static void
action_notify(RequestInfo *r, Jsonb *body, Jsonb **row)
{
	char	   *channel = jsonb_text_or_null(cg_jsonb_member(&body->root, "channel"));
	char	   *subject = jsonb_text_or_null(cg_jsonb_member(&body->root, "subject"));
	char	   *text = jsonb_text_or_null(cg_jsonb_member(&body->root, "body"));
	ListCell   *lc;

	if (subject == NULL)
		subject = psprintf("Approval request " INT64_FORMAT " %s", r->id, r->state);
	if (text == NULL)
		text = psprintf("Approval request " INT64_FORMAT " (%s) for row %s of %s is %s.",
						r->id, r->process, r->key, get_rel_name(r->relid), r->state);
	foreach(lc, principals_named(r, jsonb_text_or_null(cg_jsonb_member(&body->root, "to")), row))
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
	char	   *channel = jsonb_text_or_null(cg_jsonb_member(&body->root, "channel"));
	JsonbValue *extra = cg_jsonb_member(&body->root, "body");
	const CgPrincipal *actor = cg_current_principal();
	Jsonb	   *row;
	StringInfoData doc;

	/* the row as the decision left it: see this transaction's earlier "set" */
	CommandCounterIncrement();
	PushCopiedSnapshot(GetActiveSnapshot());
	UpdateActiveSnapshotCommandId();
	row = cg_approval_current_row(r);
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
	char	   *subject = jsonb_text_or_null(cg_jsonb_member(&body->root, "subject"));
	ListCell   *lc;
	CgPrivilegedContext priv;

	foreach(lc, principals_named(r, jsonb_text_or_null(cg_jsonb_member(&body->root, "assign_to")), row))
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

/* Run a process's actions for a request, in their order */
void
cg_approval_run_actions(RequestInfo *r, Jsonb *actions)
{
	Jsonb	   *row = NULL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (actions == NULL)
		return;
	if (r->pk == NULL)
		elog(ERROR, "table %s has no single-column primary key", get_rel_name(r->relid));
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
			action_call(r, jsonb_text_or_null(&body));
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
	if (cg_in_inheritance_tree(relid))
		invalid_process(psprintf("table \"%s\" is partitioned or inherited; rows written to another table of its tree would bypass its lock",
								 get_rel_name(relid)));
	cg_require_table_owner(relid);
	for (i = 3; i <= 8; i++)
		if (PG_ARGISNULL(i))
			invalid_process(psprintf("argument %d must not be NULL", i + 1));
	(void) cg_criteria_compile_row(relid, criteria, "NEW");		/* CG020 when wrong */

	/* a command putting the table in a tree, uncommitted at the check above, has committed */
	if (cg_in_inheritance_tree_locked(relid, ShareRowExclusiveLock))
		invalid_process(psprintf("table \"%s\" is partitioned or inherited; rows written to another table of its tree would bypass its lock",
								 get_rel_name(relid)));
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
