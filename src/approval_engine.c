/*
 * approval_engine.c
 *		Approval requests: submission, the steps and who approves them,
 *		approve, reject, recall, and the end of a request.
 *
 * Everything here reads and writes crmguard's own catalogs as the
 * extension's owner, through plans prepared once per backend; the request's
 * row is read and changed only through approval.c, as the table's owner.
 * A decision is a handful of statements: the request locked and read with
 * its process, the step's approvals so far, the history row, the request's
 * new state, and the actions.
 */
#include "postgres.h"

#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "crmguard.h"
#include "approval.h"

/* A request, locked, with what its process says */
typedef struct Request
{
	RequestInfo info;			/* what the actions see */
	int64		process;
	int32		version;
	Jsonb	   *row_data;
	int			current_step;
	int			required;
	Jsonb	   *steps;
	Jsonb	   *on_approve;
	Jsonb	   *on_reject;
	Jsonb	   *on_submit;
	Datum		editable;		/* text[] */
	bool		found;			/* read_process: the process was there */
} Request;

/* One of crmguard's approval catalogs, by name: there, or a clear error */
Oid
cg_approval_catalog(const char *name)
{
	Oid			relid = get_relname_relid(name, cg_catalog()->schema);

	if (!OidIsValid(relid))
		elog(ERROR, "crmguard.%s does not exist", name);
	return relid;
}

/* Run a kept plan on crmguard's catalogs; the caller is the owner, in SPI */
static int
run(int slot, const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
	bool read_only, long count)
{
	/* each statement sees what the ones before wrote, as in a volatile function */
	return SPI_execute_plan(cg_approval_plan(slot, sql, nargs, types), values, nulls, false, count);
}

static Datum
column(int row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);
}

static int64
int64_column(int row, int col)
{
	bool		isnull;
	Datum		d = column(row, col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

static ArrayType *
id_array(int64 *ids, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		d[i] = Int64GetDatum(ids[i]);
	return construct_array(d, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

/* The non-null ids of an int8[] */
int64 *
cg_approval_ids(ArrayType *a, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int64	   *ids;
	int			count;
	int			i;
	int			kept = 0;

	deconstruct_array(a, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, &count);
	ids = palloc(sizeof(int64) * Max(count, 1));
	for (i = 0; i < count; i++)
		if (!nulls[i])
			ids[kept++] = DatumGetInt64(elems[i]);
	*n = kept;
	return ids;
}

static bool
has_id(int64 *ids, int n, int64 id)
{
	int			i;

	for (i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

static int
compare_ids(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* The text of a member of a jsonb object (->>), or NULL */
static char *
member_text(Jsonb *object, const char *key)
{
	JsonbValue *v;

	if (object == NULL || !JB_ROOT_IS_OBJECT(object))
		return NULL;
	v = cg_jsonb_member(&object->root, key);
	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (v->type == jbvBinary)
		return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
	return cg_jsonb_scalar_text(v);
}

static Jsonb *
member_jsonb(Jsonb *object, const char *key)
{
	JsonbValue *v;

	if (object == NULL || !JB_ROOT_IS_OBJECT(object))
		return NULL;
	v = cg_jsonb_member(&object->root, key);
	return v ? JsonbValueToJsonb(v) : NULL;
}

static char *
regclass_text(Oid relid)
{
	return DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid)));
}

/* The acting principal's id, 0 for nobody */
static int64
acting_principal(void)
{
	const CgPrincipal *p = cg_current_principal();

	return p ? p->id : 0;
}

/* ---------------------------------------------------------------------------
 * Requests and history
 * ---------------------------------------------------------------------------
 */

/* A request's own columns, from its row as locked */
static void
request_columns(Datum *values, bool *nulls, void *arg)
{
	Request    *q = (Request *) arg;

	q->process = DatumGetInt64(values[0]);
	q->info.relid = DatumGetObjectId(values[1]);
	q->info.key = TextDatumGetCString(values[2]);
	q->row_data = DatumGetJsonbPCopy(values[3]);
	q->info.state = TextDatumGetCString(values[4]);
	q->current_step = DatumGetInt32(values[5]);
	q->info.approvers = DatumGetArrayTypePCopy(values[6]);
	q->required = DatumGetInt32(values[7]);
	q->info.submitted_by = nulls[8] ? 0 : DatumGetInt64(values[8]);
}

/* A process version's columns, as a request uses them */
static void
process_columns(Datum *values, bool *nulls, void *arg)
{
	Request    *q = (Request *) arg;
	Datum	   *names;
	bool	   *name_nulls;
	int			n;
	int			lower_bound = 1;
	int			i;

	q->info.relid = DatumGetObjectId(values[0]);
	q->steps = DatumGetJsonbPCopy(values[1]);
	q->on_approve = DatumGetJsonbPCopy(values[2]);
	q->on_reject = DatumGetJsonbPCopy(values[3]);
	q->on_submit = DatumGetJsonbPCopy(values[4]);
	/* name[] as text[] (the actions compare column names), as the cast makes it */
	deconstruct_array(DatumGetArrayTypeP(values[5]), NAMEOID, NAMEDATALEN, false, TYPALIGN_CHAR,
					  &names, &name_nulls, &n);
	for (i = 0; i < n; i++)
		if (!name_nulls[i])
			names[i] = CStringGetTextDatum(NameStr(*DatumGetName(names[i])));
	q->editable = PointerGetDatum(construct_md_array(names, name_nulls, 1, &n, &lower_bound,
													 TEXTOID, -1, false, TYPALIGN_INT));
	q->info.process = TextDatumGetCString(values[6]);
	q->version = DatumGetInt32(values[7]);
	q->info.run_as = DatumGetObjectId(values[8]);
	q->found = true;
}

/*
 * Read the request's process version (q->process) into q, as a statement
 * would see it; false when there is none.  Without a statement: every
 * submit and decision reads it.
 */
static bool
read_process_as_of(Request *q, Snapshot snapshot)
{
	static const char *const columns[9] = {"target", "steps", "on_approve", "on_reject", "on_submit",
	"editable_columns", "process_name", "version", "run_as"};
	ScanKeyData key;

	q->found = false;
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(q->process));
	cg_scan_catalog_by_key(cg_approval_catalog("approval_process"),
						   "approval_process_pkey", 1, &key, snapshot,
						   lengthof(columns), columns, process_columns, q);
	return q->found;
}

static bool
read_process(Request *q)
{
	CommandCounterIncrement();
	return read_process_as_of(q, GetTransactionSnapshot());
}

/*
 * approval_lock.c: the editable columns (text[]) of a process version, as
 * the latest snapshot has it; false when there is none.  No command
 * counter step: the lock asks in the middle of an UPDATE.
 */
bool
cg_approval_editable_columns(int64 process, Datum *editable)
{
	Request		q = {0};

	q.process = process;
	if (!read_process_as_of(&q, GetLatestSnapshot()))
		return false;
	*editable = q.editable;
	return true;
}

/*
 * The request, locked for this transaction as SELECT ... FOR UPDATE locks
 * it, and its process version; NULL when there is none.  Without a
 * statement: every decision starts here.
 */
static Request *
load_request(int64 id)
{
	static const char *const request[9] = {"process", "target", "row_key", "row_data", "state",
	"current_step", "approvers", "required", "submitted_by"};
	Request    *q = palloc0(sizeof(Request));
	Oid			relid;
	ScanKeyData key;

	q->info.id = id;
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(id));
	if (!cg_lock_catalog_row(cg_approval_catalog("approval_request_state"),
							 "approval_request_state_pkey", 1, &key, LockTupleExclusive,
							 lengthof(request), request, request_columns, q))
		return NULL;
	/* the request's own table, not its process's (the same but for a DBA's edit) */
	relid = q->info.relid;
	/* the foreign key keeps a request's process: without it, as the join did, no request */
	if (!read_process(q))
		return NULL;
	q->info.relid = relid;
	q->info.pk = cg_primary_key_column(q->info.relid);
	return q;
}

static Request *
request_or_error(int64 id)
{
	Request    *q = load_request(id);

	if (q == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("approval request " INT64_FORMAT " does not exist", id)));
	return q;
}

static void
require_pending(Request *q)
{
	if (strcmp(q->info.state, "pending") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("approval request " INT64_FORMAT " is %s, not pending", q->info.id, q->info.state)));
}

/*
 * One line of a request's history, written without a statement (it is on
 * every submit and decision).  The request is this transaction's: inserted
 * by it, or locked FOR UPDATE by load_request, so the foreign key's check,
 * which would lock it again, has nothing to add; the events are the words
 * the table's CHECK allows.
 */
static void
add_history(int64 request, int step, int64 principal, int64 on_behalf_of, const char *event,
			const char *comment)
{
	static const char *const columns[8] = {"id", "request", "at", "step", "principal",
	"on_behalf_of", "event", "comment"};
	static const Oid types[8] = {INT8OID, INT8OID, TIMESTAMPTZOID, INT4OID, INT8OID, INT8OID,
	TEXTOID, TEXTOID};
	Oid			seq = cg_approval_catalog("approval_history_id_seq");
	Oid			history = cg_approval_catalog("approval_history");
	Datum		values[8];
	bool		nulls[8] = {false};

	values[0] = Int64GetDatum(nextval_internal(seq, true));
	values[1] = Int64GetDatum(request);
	values[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[3] = Int32GetDatum(step);
	values[4] = Int64GetDatum(principal);
	nulls[4] = principal == 0;
	values[5] = Int64GetDatum(on_behalf_of);
	nulls[5] = on_behalf_of == 0;
	values[6] = CStringGetTextDatum(event);
	values[7] = comment ? CStringGetTextDatum(comment) : (Datum) 0;
	nulls[7] = comment == NULL;
	cg_insert_catalog_rows(history, 8, columns, types, 1, values, nulls);
}

/* Who already approved the request's current step (themselves or through a delegate) */
typedef struct ApprovedBy
{
	int			step;
	int64	   *ids;
	int			n;
	int			size;
} ApprovedBy;

static void
collect_approval(Datum *values, bool *nulls, void *arg)
{
	ApprovedBy *a = (ApprovedBy *) arg;
	int64		who;

	if (nulls[0] || nulls[1] || DatumGetInt32(values[0]) != a->step ||
		strcmp(TextDatumGetCString(values[1]), "approved") != 0)
		return;
	if (nulls[2] && nulls[3])
		return;
	who = DatumGetInt64(values[nulls[2] ? 3 : 2]);
	if (has_id(a->ids, a->n, who))
		return;
	if (a->n == a->size)
	{
		a->size *= 2;
		a->ids = repalloc(a->ids, sizeof(int64) * a->size);
	}
	a->ids[a->n++] = who;
}

/*
 * The approvers who approved a step of a request, each once: the history
 * read by request, as a statement would see it (what this transaction wrote
 * so far, and what others committed).  No statement: the rebuild of the
 * waiting list and every decision ask this.
 */
int64 *
cg_approval_approved_by(int64 request, int step, int *n)
{
	static const char *const columns[4] = {"step", "event", "on_behalf_of", "principal"};
	Oid			history = cg_approval_catalog("approval_history");
	ApprovedBy	a = {step, palloc(sizeof(int64) * 4), 0, 4};
	ScanKeyData key;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(request));
	CommandCounterIncrement();
	cg_scan_catalog_by_key(history, "approval_history_request_idx", 1, &key, GetTransactionSnapshot(),
						   4, columns, collect_approval, &a);

	/*
	 * Under REPEATABLE READ or SERIALIZABLE, an approval committed after this
	 * transaction's snapshot is not seen, though the request is locked now:
	 * counted short, the step would hold every approval it needs and wait
	 * for nobody.  Such a decision is a serialization failure, to be retried,
	 * as a concurrent change of a row locked FOR UPDATE is.
	 */
	if (IsolationUsesXactSnapshot())
	{
		ApprovedBy	latest = {step, palloc(sizeof(int64) * 4), 0, 4};

		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(request));
		cg_scan_catalog_by_key(history, "approval_history_request_idx", 1, &key, GetLatestSnapshot(),
							   4, columns, collect_approval, &latest);
		if (latest.n != a.n)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to a concurrent approval of request " INT64_FORMAT,
							request)));
	}
	*n = a.n;
	return a.ids;
}

static int64 *
approved_by(Request *q, int *n)
{
	return cg_approval_approved_by(q->info.id, q->current_step, n);
}

static void
audit_request(Request *q, const char *action, int automatic)
{
	StringInfoData detail;

	initStringInfo(&detail);
	appendStringInfo(&detail, "{\"request\": " INT64_FORMAT ", \"process\": ", q->info.id);
	escape_json(&detail, q->info.process);
	appendStringInfo(&detail, ", \"version\": %d", q->version);
	if (automatic >= 0)
		appendStringInfo(&detail, ", \"auto\": %s", automatic ? "true" : "false");
	appendStringInfoChar(&detail, '}');
	cg_audit(action, regclass_text(q->info.relid), q->info.key,
			 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail.data))));
}

/* ---------------------------------------------------------------------------
 * Who approves a step
 * ---------------------------------------------------------------------------
 */

/* A principal's manager and whether it is active; false when there is none */
static bool
principal_row(int64 id, bool *active, int64 *manager)
{
	const CgPrincipal *p = cg_principal_by_id(id);

	if (p == NULL)
		return false;
	*active = p->active;
	*manager = p->manager_id;
	return true;
}

static int64
manager_of(int64 id)
{
	bool		active;
	int64		manager;

	if (id == 0 || !principal_row(id, &active, &manager))
		return 0;
	return manager;
}

/* The principal itself when active, else its nearest active manager; 0 for none */
static int64
active_above(int64 id)
{
	int			i;

	for (i = 0; i < 1000 && id != 0; i++)
	{
		bool		active;
		int64		manager;

		if (!principal_row(id, &active, &manager))
			return 0;
		if (active)
			return id;
		id = manager;
	}
	return 0;
}

/* Add the ids a query returned (first column) */
static void
add_ids(int64 **ids, int *n, int *max)
{
	uint64		i;

	for (i = 0; i < SPI_processed; i++)
	{
		if (*n >= *max)
		{
			*max *= 2;
			*ids = repalloc(*ids, sizeof(int64) * *max);
		}
		(*ids)[(*n)++] = int64_column(i, 1);
	}
}

/*
 * The approvers of a step for a row: inactive ones escalate to their nearest
 * active manager, the submitter never approves its own request (its manager
 * does, when nobody else is left).  Sorted, each once.
 */
static int64 *
resolve(Jsonb *step, Jsonb *row_data, int64 submitter, int *count)
{
	Jsonb	   *spec = member_jsonb(step, "approvers");
	int			max = 16;
	int			n = 0;
	int64	   *ids = palloc(sizeof(int64) * max);
	int64	   *out;
	int			nout = 0;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	List	   *kinds = NIL;
	ListCell   *lc;
	int			i;

	/* one approver kind, or a list of them (the head of marketing and finance) */
	if (spec != NULL && JB_ROOT_IS_ARRAY(spec) && !JB_ROOT_IS_SCALAR(spec))
	{
		it = JsonbIteratorInit(&spec->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
			if (tok == WJB_ELEM)
				kinds = lappend(kinds, JsonbValueToJsonb(&v));
	}
	else if (spec != NULL)
		kinds = list_make1(spec);
	foreach(lc, kinds)
	{
		Jsonb	   *a = (Jsonb *) lfirst(lc);
		char	   *role = member_text(a, "role");
		char	   *name = member_text(a, "principal");

		if (JB_ROOT_IS_OBJECT(a) && cg_jsonb_member(&a->root, "role") != NULL)
		{
			Oid			types[1] = {TEXTOID};
			Datum		values[1];
			char		nulls[1];

			values[0] = role ? CStringGetTextDatum(role) : (Datum) 0;
			nulls[0] = role ? ' ' : 'n';
			if (run(PLAN_ROLE,
					"SELECT id FROM crmguard.principal WHERE $1 OPERATOR(pg_catalog.=) ANY (roles) ORDER BY id",
					1, types, values, nulls, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not read crmguard.principal");
			add_ids(&ids, &n, &max);
		}
		else if (JB_ROOT_IS_OBJECT(a) && cg_jsonb_member(&a->root, "principal") != NULL)
		{
			Oid			types[1] = {TEXTOID};
			Datum		values[1];
			char		nulls[1];

			values[0] = name ? CStringGetTextDatum(name) : (Datum) 0;
			nulls[0] = name ? ' ' : 'n';
			if (run(PLAN_NAMED, "SELECT id FROM crmguard.principal WHERE name OPERATOR(pg_catalog.=) $1",
					1, types, values, nulls, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not read crmguard.principal");
			add_ids(&ids, &n, &max);
		}
		else
		{
			char	   *col = member_text(a, "manager_of");
			char	   *levels = member_text(a, "levels_above");
			char	   *value;
			int64		cur = 0;
			int			l;

			if (col == NULL)
				col = member_text(a, "of");
			value = col ? member_text(row_data, col) : NULL;
			if (value != NULL)
				cur = DatumGetInt64(DirectFunctionCall1(int8in, CStringGetDatum(value)));
			for (l = 0; l < (levels ? pg_strtoint32(levels) : 1); l++)
				cur = manager_of(cur);
			if (n >= max)
			{
				max *= 2;
				ids = repalloc(ids, sizeof(int64) * max);
			}
			ids[n++] = cur;
		}
	}
	/* inactive approvers escalate to their nearest active manager; never the submitter */
	out = palloc(sizeof(int64) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		int64		x = ids[i] ? active_above(ids[i]) : 0;

		if (x != 0 && x != submitter && !has_id(out, nout, x))
			out[nout++] = x;
	}
	if (nout == 0 && submitter != 0)
	{
		int64		x = active_above(manager_of(submitter));

		if (x != 0)
			out[nout++] = x;
	}
	qsort(out, nout, sizeof(int64), compare_ids);
	*count = nout;
	return out;
}

/* A step's approvers, how many must approve, and its timeout (NULL: none) */
static Jsonb *
plan_step(Request *q, int n, int64 **ids, int *nids, int *need, char **timeout)
{
	JsonbValue *sv = getIthJsonbValueFromContainer(&q->steps->root, n);
	Jsonb	   *step = sv ? JsonbValueToJsonb(sv) : NULL;
	char	   *mode = member_text(step, "mode");
	Jsonb	   *mode_object = member_jsonb(step, "mode");

	*ids = resolve(step, q->row_data, q->info.submitted_by, nids);
	*timeout = member_text(step, "timeout");
	*need = 1;
	if (mode_object != NULL && JB_ROOT_IS_SCALAR(mode_object) && mode != NULL && strcmp(mode, "all") == 0)
		*need = *nids;
	else if (mode_object != NULL && JB_ROOT_IS_OBJECT(mode_object) &&
			 cg_jsonb_member(&mode_object->root, "quorum") != NULL)
		*need = pg_strtoint32(member_text(mode_object, "quorum"));
	return step;
}

/* The request is on the step: refused when too few approvers are left; the worker watches its clock */
static void
check_step(Request *q, Jsonb *step, int nids, int need, const char *timeout)
{
	if (nids == 0 || nids < need)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("step \"%s\" of approval request " INT64_FORMAT " has %d active approver(s), it needs %d",
						member_text(step, "name") ? member_text(step, "name") : "", q->info.id, nids, Max(need, 1)),
				 errhint("Give the approver role to an active principal, or fix the managers of the row's owner.")));
	if (timeout != NULL && !cg_enqueue(CG_JOB_WAKE, "", 0))
		ereport(WARNING,
				(errmsg("crmguard could not wake its background worker"),
				 errhint("Call crmguard.run_due() to process approval timeouts.")));
}

static bool
any_version(Datum *values, bool *nulls, void *arg)
{
	return true;
}

/*
 * Set columns of a request, without a statement: the request is this
 * transaction's (inserted by it, or locked FOR UPDATE by load_request);
 * the writer runs the request row trigger's work (the waiting list, the
 * lock's clocks) as the trigger would.
 */
static void
set_request(int64 request, int ncolumns, const char *const *columns, const Oid *types,
			const Datum *values, const bool *nulls)
{
	ScanKeyData key;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(request));
	if (!cg_update_catalog_row(cg_approval_catalog("approval_request_state"), "approval_request_state_pkey",
							   1, &key, 0, NULL, any_version, NULL, ncolumns, columns, types, values, nulls))
		elog(ERROR, "approval request " INT64_FORMAT " vanished while it was decided", request);
}

/* A step's timeout, as the process gives it, or NULL */
static Datum
timeout_interval(const char *timeout, bool *isnull)
{
	*isnull = timeout == NULL;
	return timeout ? DirectFunctionCall3(interval_in, CStringGetDatum(timeout),
										 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)) : (Datum) 0;
}

/* Put a request on step n: its approvers, how many must approve, its clock */
static void
start_step(Request *q, int n)
{
	int64	   *ids;
	int			nids;
	int			need;
	char	   *timeout;
	Jsonb	   *step = plan_step(q, n, &ids, &nids, &need, &timeout);
	static const char *const columns[5] = {"current_step", "approvers", "required",
	"step_started_at", "step_timeout"};
	static const Oid types[5] = {INT4OID, INT8ARRAYOID, INT4OID, TIMESTAMPTZOID, INTERVALOID};
	Datum		values[5];
	bool		nulls[5] = {false};

	check_step(q, step, nids, need, NULL);
	q->current_step = n;
	q->info.approvers = id_array(ids, nids);
	q->required = need;
	values[0] = Int32GetDatum(n);
	values[1] = PointerGetDatum(q->info.approvers);
	values[2] = Int32GetDatum(need);
	values[3] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	values[4] = timeout_interval(timeout, &nulls[4]);
	set_request(q->info.id, 5, columns, types, values, nulls);
	check_step(q, step, nids, need, timeout);
}

/* ---------------------------------------------------------------------------
 * The end of a step, the end of a request
 * ---------------------------------------------------------------------------
 */

/* End a request: approved or rejected (running the process's actions), or recalled */
static void
finish(Request *q, const char *outcome)
{
	static const char *const columns[2] = {"state", "decided_at"};
	static const Oid types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		values[2];

	/* one of the words the table's CHECK allows */
	Assert(strcmp(outcome, "approved") == 0 || strcmp(outcome, "rejected") == 0 ||
		   strcmp(outcome, "recalled") == 0);
	values[0] = CStringGetTextDatum(outcome);
	values[1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	set_request(q->info.id, 2, columns, types, values, NULL);
	q->info.state = pstrdup(outcome);
	audit_request(q, psprintf("approval_%s", outcome), -1);
	if (strcmp(outcome, "approved") == 0)
		cg_approval_run_actions(&q->info, q->on_approve);
	else if (strcmp(outcome, "rejected") == 0)
		cg_approval_run_actions(&q->info, q->on_reject);
}

/* The step is done: on to the next one, or the request is approved */
static void
step_done(Request *q)
{
	add_history(q->info.id, q->current_step, 0, 0, "step approved", NULL);
	if (q->current_step + 1 < (int) JB_ROOT_COUNT(q->steps))
		start_step(q, q->current_step + 1);
	else
		finish(q, "approved");
}

/*
 * Delegations in force now (the transaction's start, as now() in the
 * queries they replace), read without a statement: every decision and every
 * inbox asks.
 */
typedef struct Delegations
{
	int64		to;				/* the delegate asked about */
	int64		except;			/* a delegator left out (0: none) */
	int64	   *ids;
	int			n;
	int			size;
} Delegations;

static void
collect_delegation(Datum *values, bool *nulls, void *arg)
{
	Delegations *d = (Delegations *) arg;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	int64		principal = DatumGetInt64(values[0]);

	if (DatumGetInt64(values[1]) != d->to || principal == d->except ||
		now < DatumGetTimestampTz(values[2]) || now >= DatumGetTimestampTz(values[3]))
		return;
	if (d->n == d->size)
	{
		d->size *= 2;
		d->ids = repalloc(d->ids, sizeof(int64) * d->size);
	}
	d->ids[d->n++] = principal;
}

static int
id_cmp(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * Who delegated their approvals to "to" now: of the candidates (by the
 * table's key, one look-up each), or of everyone (candidates NULL: a scan of
 * the table, which holds one row per principal away).  In key order.
 */
static int64 *
delegators(int64 to, int64 except, const int64 *candidates, int ncandidates, int *n)
{
	static const char *const columns[4] = {"principal", "to_principal", "since", "until"};
	Oid			delegation = cg_approval_catalog("delegation");
	Delegations d = {to, except, palloc(sizeof(int64) * 4), 0, 4};

	CommandCounterIncrement();
	if (candidates == NULL)
		cg_scan_catalog(delegation, GetTransactionSnapshot(), lengthof(columns), columns,
						collect_delegation, &d);
	else
	{
		CgCatalogScan *scan = cg_catalog_scan_begin(delegation, "delegation_pkey", 1,
													GetTransactionSnapshot(), lengthof(columns),
													columns);
		ScanKeyData key;
		int			i;

		for (i = 0; i < ncandidates; i++)
		{
			ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(candidates[i]));
			cg_catalog_scan_run(scan, &key, collect_delegation, &d);
		}
		cg_catalog_scan_end(scan);
	}
	if (d.n > 1)
		qsort(d.ids, d.n, sizeof(int64), id_cmp);
	*n = d.n;
	return d.ids;
}

/*
 * The capacity in which the acting principal decides a pending request: as
 * an approver of the current step, or as the delegate of one; itself first,
 * and one that has not yet approved this step.
 */
static int64
decider(Request *q, int64 acting, int64 **approved, int *napproved)
{
	int			n;
	int64	   *approvers = cg_approval_ids(q->info.approvers, &n);
	int64	   *distinct = palloc(sizeof(int64) * Max(n, 1));
	int			ndistinct = 0;
	int64		best = 0;
	int			best_rank = 0;
	int			i;

	/* each approver once: a delegation is looked up by its key */
	for (i = 0; i < n; i++)
		if (!has_id(distinct, ndistinct, approvers[i]))
			distinct[ndistinct++] = approvers[i];

	*approved = approved_by(q, napproved);
	if (acting != 0 && has_id(approvers, n, acting))
	{
		best = acting;
		best_rank = has_id(*approved, *napproved, acting) ? 2 : 0;
	}
	if (acting != 0)
	{
		int			ndelegators;
		int64	   *by = delegators(acting, 0, distinct, ndistinct, &ndelegators);

		for (i = 0; i < ndelegators; i++)
		{
			int64		who = by[i];
			int			rank = has_id(*approved, *napproved, who) ? 3 : 1;

			if (best == 0 || rank < best_rank)
			{
				best = who;
				best_rank = rank;
			}
		}
	}
	if (best == 0)
		ereport(ERROR,
				(errcode(ERRCODE_CG_NOT_APPROVER),
				 errmsg("not an approver of approval request " INT64_FORMAT, q->info.id),
				 errdetail("Step %d waits for other approvers.", q->current_step + 1)));
	if (q->info.submitted_by != 0 && (acting == q->info.submitted_by || best == q->info.submitted_by))
		ereport(ERROR,
				(errcode(ERRCODE_CG_NOT_APPROVER),
				 errmsg("a submitter cannot decide its own approval request " INT64_FORMAT, q->info.id)));
	return best;
}

/* The request's row now, without its editable columns */
static Jsonb *
row_now(Request *q)
{
	Jsonb	   *row = cg_approval_current_row(&q->info);

	if (row == NULL)
		return NULL;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_delete_array, JsonbPGetDatum(row), q->editable));
}

/* ---------------------------------------------------------------------------
 * Entry points
 * ---------------------------------------------------------------------------
 */

/* The pending request of a row, 0 for none (the partial unique index), as a statement would see it */
static void
pending_id(Datum *values, bool *nulls, void *arg)
{
	if (!nulls[1] && strcmp(TextDatumGetCString(values[1]), "pending") == 0)
		*(int64 *) arg = DatumGetInt64(values[0]);
}

static int64
pending_request(Oid relid, const char *key)
{
	static const char *const columns[2] = {"id", "state"};
	ScanKeyData keys[2];
	int64		id = 0;

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(key));
	CommandCounterIncrement();
	cg_scan_catalog_by_key(cg_approval_catalog("approval_request_state"),
						   "approval_request_pending_idx", 2, keys, GetTransactionSnapshot(),
						   lengthof(columns), columns, pending_id, &id);
	return id;
}

/* A request's row_data (NULL: the row is gone, which its NOT NULL refuses) */
static void
store_row_data(int64 request, Jsonb *row)
{
	static const char *const columns[1] = {"row_data"};
	static const Oid types[1] = {JSONBOID};
	Datum		value = row ? JsonbPGetDatum(row) : (Datum) 0;
	bool		isnull = row == NULL;
	ScanKeyData key;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(request));
	if (!cg_update_catalog_row(cg_approval_catalog("approval_request_state"), "approval_request_state_pkey",
							   1, &key, 0, NULL, any_version, NULL, 1, columns, types, &value, &isnull))
		elog(ERROR, "approval request " INT64_FORMAT " vanished while it was submitted", request);
}

/*
 * Submit a row (as the caller saw it) to a process: called by
 * submit_for_approval and the auto-submit trigger.  automatic: an existing
 * pending request is no error.
 */
int64
cg_approval_submit(int64 process, const char *key, Jsonb *data, const char *comment, bool automatic)
{
	CgPrivilegedContext priv;
	static const char *const columns[13] = {"id", "process", "target", "row_key", "row_data", "state",
		"current_step", "approvers", "required", "step_started_at", "step_timeout", "submitted_by",
	"submitted_at"};
	static const Oid types[13] = {INT8OID, INT8OID, REGCLASSOID, TEXTOID, JSONBOID, TEXTOID, INT4OID,
	INT8ARRAYOID, INT4OID, TIMESTAMPTZOID, INTERVALOID, INT8OID, TIMESTAMPTZOID};
	Datum		values[13];
	bool		nulls[13] = {false};
	ScanKeyData process_key;
	Request    *q;
	Jsonb	   *step;
	int64	   *ids;
	int			nids;
	int			need;
	char	   *timeout;
	int64		acting = acting_principal();
	Jsonb	   *on_submit;
	Jsonb	   *row;
	int64		pending;

	cg_enter_owner(&priv);
	cg_approval_planner_settings();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	q = palloc0(sizeof(Request));
	q->process = process;
	if (!read_process(q))
		elog(ERROR, "approval process " INT64_FORMAT " does not exist", process);
	on_submit = q->on_submit;
	q->info.key = pstrdup(key);
	q->info.pk = cg_primary_key_column(q->info.relid);
	q->info.submitted_by = acting;
	q->info.state = "pending";

	pending = pending_request(q->info.relid, key);
	if (pending != 0)
	{
		if (!automatic)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("row %s of table %s already has pending approval request " INT64_FORMAT,
							key, regclass_text(q->info.relid), pending)));
		SPI_finish();
		cg_leave_owner(&priv);
		return pending;
	}

	q->row_data = DatumGetJsonbP(DirectFunctionCall2(jsonb_delete_array, JsonbPGetDatum(data), q->editable));
	/* stored on its first step at once: one row version, one entry in the approvers' index */
	step = plan_step(q, 0, &ids, &nids, &need, &timeout);
	q->info.approvers = id_array(ids, nids);
	q->required = need;
	/*
	 * Stored without a statement; the process is held as the foreign key's
	 * check would hold it, and the writer runs the request row trigger's
	 * work (the waiting list, the lock's clock).  A pending request for the
	 * row made meanwhile is a unique violation, as for a statement.
	 */
	ScanKeyInit(&process_key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(process));
	if (!cg_lock_catalog_row(cg_approval_catalog("approval_process"), "approval_process_pkey", 1, &process_key,
							 LockTupleKeyShare, 0, NULL, NULL, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
				 errmsg("insert or update on table \"approval_request_state\" violates foreign key constraint \"approval_request_state_process_fkey\""),
				 errdetail("Key (process)=(" INT64_FORMAT ") is not present in table \"approval_process\".", process)));
	q->info.id = nextval_internal(cg_approval_catalog("approval_request_id_seq"), true);
	values[0] = Int64GetDatum(q->info.id);
	values[1] = Int64GetDatum(process);
	values[2] = ObjectIdGetDatum(q->info.relid);
	values[3] = CStringGetTextDatum(key);
	values[4] = JsonbPGetDatum(q->row_data);
	values[5] = CStringGetTextDatum("pending");
	values[6] = Int32GetDatum(0);
	values[7] = PointerGetDatum(q->info.approvers);
	values[8] = Int32GetDatum(need);
	values[9] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	values[10] = timeout_interval(timeout, &nulls[10]);
	values[11] = Int64GetDatum(acting);
	nulls[11] = acting == 0;
	values[12] = values[9];
	cg_insert_catalog_rows(cg_approval_catalog("approval_request_state"), 13, columns, types, 1,
						   values, nulls);
	check_step(q, step, nids, need, timeout);
	add_history(q->info.id, 0, acting, 0, "submitted", comment);
	audit_request(q, "approval_submitted", automatic);
	cg_approval_run_actions(&q->info, on_submit);

	/*
	 * The row as it stands once submitted (an on_submit action may have set
	 * a field), written without a statement: no trigger of the request
	 * table watches row_data.
	 */
	row = row_now(q);
	store_row_data(q->info.id, row);
	SPI_finish();
	cg_leave_owner(&priv);
	return q->info.id;
}

/*
 * A decision (approve, reject, recall) runs as the extension's owner on
 * crmguard's catalogs, with the request locked for this transaction.
 */
static Request *
decision_begin(int64 id, CgPrivilegedContext *priv)
{
	cg_enter_owner(priv);
	cg_approval_planner_settings();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	return request_or_error(id);
}

static void
decision_end(CgPrivilegedContext *priv)
{
	SPI_finish();
	cg_leave_owner(priv);
}

PG_FUNCTION_INFO_V1(crmguard_approve);
Datum
crmguard_approve(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	char	   *comment = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		acting;
	int64		approver;
	int64	   *approved;
	int			napproved;
	CgPrivilegedContext priv;
	Request    *q;
	Jsonb	   *row;

	cg_require_preload();
	cg_require_attested();
	if (PG_ARGISNULL(0))
		PG_RETURN_VOID();
	acting = acting_principal();
	q = decision_begin(id, &priv);
	require_pending(q);
	approver = decider(q, acting, &approved, &napproved);
	if (has_id(approved, napproved, approver))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("approval request " INT64_FORMAT " already has this approver's approval for step %d",
						id, q->current_step + 1)));
	row = row_now(q);
	if (row == NULL || q->row_data == NULL ||
		!DatumGetBool(DirectFunctionCall2(jsonb_eq, JsonbPGetDatum(row), JsonbPGetDatum(q->row_data))))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the row of approval request " INT64_FORMAT " changed since it was submitted", id),
				 errhint("Reject the request; the row can be submitted again.")));
	add_history(id, q->current_step, acting, approver != acting ? approver : 0, "approved", comment);
	if (napproved + 1 >= q->required)
		step_done(q);
	else
	{
		/* the step waits for the others only */
		ScanKeyData keys[2];

		ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(approver));
		ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(id));
		(void) cg_delete_catalog_rows(cg_approval_catalog("approval_waiting"),
									  "approval_waiting_approver_idx", 2, keys,
									  0, NULL, NULL, NULL);
	}
	decision_end(&priv);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(crmguard_reject);
Datum
crmguard_reject(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	char	   *comment = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		acting;
	int64		approver;
	int64	   *approved;
	int			napproved;
	CgPrivilegedContext priv;
	Request    *q;

	cg_require_preload();
	cg_require_attested();
	if (PG_ARGISNULL(0))
		PG_RETURN_VOID();
	acting = acting_principal();
	q = decision_begin(id, &priv);
	require_pending(q);
	approver = decider(q, acting, &approved, &napproved);
	if (comment == NULL || comment[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a rejection needs a comment")));
	add_history(id, q->current_step, acting, approver != acting ? approver : 0, "rejected", comment);
	finish(q, "rejected");
	decision_end(&priv);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(crmguard_recall);
Datum
crmguard_recall(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	char	   *comment = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	int64		acting;
	CgPrivilegedContext priv;
	Request    *q;

	cg_require_preload();
	cg_require_attested();
	if (PG_ARGISNULL(0))
		PG_RETURN_VOID();
	acting = acting_principal();
	q = decision_begin(id, &priv);
	if (q->info.submitted_by == 0 || q->info.submitted_by != acting)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only the submitter can recall approval request " INT64_FORMAT, id)));
	require_pending(q);
	add_history(id, q->current_step, q->info.submitted_by, 0, "recalled", comment);
	finish(q, "recalled");
	decision_end(&priv);
	PG_RETURN_VOID();
}

/* run_due(): a step that timed out with on_timeout "approve" */
PG_FUNCTION_INFO_V1(crmguard_approval_step_done);
Datum
crmguard_approval_step_done(PG_FUNCTION_ARGS)
{
	CgPrivilegedContext priv;

	cg_require_preload();
	step_done(decision_begin(PG_GETARG_INT64(0), &priv));
	decision_end(&priv);
	PG_RETURN_VOID();
}

/* run_due(): a step that timed out with on_timeout "reject" */
PG_FUNCTION_INFO_V1(crmguard_approval_finish);
Datum
crmguard_approval_finish(PG_FUNCTION_ARGS)
{
	CgPrivilegedContext priv;
	char	   *outcome = text_to_cstring(PG_GETARG_TEXT_PP(1));

	cg_require_preload();
	if (strcmp(outcome, "approved") != 0 && strcmp(outcome, "rejected") != 0 &&
		strcmp(outcome, "recalled") != 0)
		elog(ERROR, "unknown outcome \"%s\"", outcome);
	finish(decision_begin(PG_GETARG_INT64(0), &priv), outcome);
	decision_end(&priv);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------------
 * my_approvals(): what waits for the acting principal
 * ---------------------------------------------------------------------------
 */

/* A process's name and step names, fetched once per call, as the rows show them */
typedef struct ProcessSeen
{
	int64		id;
	text	   *name;
	Jsonb	   *steps;
	int			nsteps;
	text	  **step_names;		/* NULL entry: not looked at yet, or no name */
	bool	   *step_seen;
} ProcessSeen;

static ProcessSeen *
process_seen(List **seen, int64 id)
{
	ListCell   *lc;
	ProcessSeen *ps;
	Request		q = {0};

	foreach(lc, *seen)
		if (((ProcessSeen *) lfirst(lc))->id == id)
			return lfirst(lc);
	q.process = id;
	if (!read_process(&q))
		elog(ERROR, "approval process " INT64_FORMAT " does not exist", id);
	ps = palloc(sizeof(ProcessSeen));
	ps->id = id;
	ps->name = cstring_to_text(q.info.process);
	ps->steps = q.steps;
	ps->nsteps = ps->steps != NULL && JB_ROOT_IS_ARRAY(ps->steps) ? JB_ROOT_COUNT(ps->steps) : 0;
	ps->step_names = palloc0(sizeof(text *) * (ps->nsteps + 1));
	ps->step_seen = palloc0(sizeof(bool) * (ps->nsteps + 1));
	*seen = lappend(*seen, ps);
	return ps;
}

/* The name of step n of a process, or NULL */
static char *
step_name(Jsonb *steps, int n)
{
	JsonbValue *step;

	if (steps == NULL || !JB_ROOT_IS_ARRAY(steps) || n < 0)
		return NULL;
	step = getIthJsonbValueFromContainer(&steps->root, n);
	if (step == NULL || step->type != jbvBinary)
		return NULL;
	return member_text(JsonbValueToJsonb(step), "name");
}

/* Step n's name as an inbox row shows it (NULL: none), made once per call */
static text *
process_step_text(ProcessSeen *ps, int n)
{
	char	   *name;

	if (n < 0 || n >= ps->nsteps)
		return NULL;
	if (!ps->step_seen[n])
	{
		name = step_name(ps->steps, n);
		ps->step_names[n] = name ? cstring_to_text(name) : NULL;
		ps->step_seen[n] = true;
	}
	return ps->step_names[n];
}

/* One request waiting for an approver my_approvals() answers for */
typedef struct Waiting
{
	int64		request;
	int64		approver;
	int64		process;
	Oid			target;
	text	   *row_key;
	int			current_step;
	int64		submitted_by;	/* 0: none */
	TimestampTz submitted_at;
} Waiting;

typedef struct WaitingList
{
	Waiting    *items;
	int			n;
	int			size;
	int64		me;
} WaitingList;

/*
 * an approval_waiting row: a request waits for an approver; it carries what
 * an inbox shows of the request.  A principal's own submissions never wait
 * for it (resolve() leaves the submitter out), nor wait here by delegation.
 */
static void
collect_wait(Datum *values, bool *nulls, void *arg)
{
	WaitingList *list = arg;
	Waiting    *w;

	if (!nulls[6] && DatumGetInt64(values[6]) == list->me)
		return;
	if (list->n == list->size)
	{
		list->size = list->size ? list->size * 2 : 16;
		list->items = list->items ? repalloc(list->items, sizeof(Waiting) * list->size)
			: palloc(sizeof(Waiting) * list->size);
	}
	w = &list->items[list->n++];
	w->request = DatumGetInt64(values[0]);
	w->approver = DatumGetInt64(values[1]);
	w->process = DatumGetInt64(values[2]);
	w->target = DatumGetObjectId(values[3]);
	w->row_key = DatumGetTextPCopy(values[4]);
	w->current_step = DatumGetInt32(values[5]);
	w->submitted_by = nulls[6] ? 0 : DatumGetInt64(values[6]);
	w->submitted_at = DatumGetTimestampTz(values[7]);
}

/* oldest submission first, then by request and approver */
static int
waiting_cmp(const void *a, const void *b)
{
	const Waiting *x = a;
	const Waiting *y = b;

	if (x->submitted_at != y->submitted_at)
		return x->submitted_at < y->submitted_at ? -1 : 1;
	if (x->request != y->request)
		return x->request < y->request ? -1 : 1;
	if (x->approver != y->approver)
		return x->approver < y->approver ? -1 : 1;
	return 0;
}

/*
 * The pending requests that wait for any of the approvers, read through the
 * waiting list's index by approver, not by a statement: this is every
 * approver's inbox, read on every visit.  The list holds pending requests
 * only (the request table's trigger keeps it), so its cost follows what
 * waits, not the history.  A plain index scan also marks the entries of
 * decided waits dead as it passes them.
 */
static WaitingList
waiting_for(int64 me, const int64 *approvers, int napprovers)
{
	static const char *const wait_columns[8] = {"request", "approver", "process", "target", "row_key",
	"current_step", "submitted_by", "submitted_at"};
	Oid			waiting = cg_approval_catalog("approval_waiting");
	WaitingList list = {NULL, 0, 0, me};
	Snapshot	snapshot;
	CgCatalogScan *scan;
	ScanKeyData key;
	int			i;

	/* as a statement would: what this transaction wrote so far, and what others committed */
	CommandCounterIncrement();
	snapshot = GetTransactionSnapshot();
	scan = cg_catalog_scan_begin(waiting, "approval_waiting_approver_idx", 1, snapshot,
								 8, wait_columns);
	for (i = 0; i < napprovers; i++)
	{
		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(approvers[i]));
		cg_catalog_scan_run(scan, &key, collect_wait, &list);
	}
	cg_catalog_scan_end(scan);
	if (list.n > 1)
		qsort(list.items, list.n, sizeof(Waiting), waiting_cmp);
	return list;
}

/*
 * The pending requests waiting for the acting principal, or for a principal
 * whose approvals it holds by delegation (on_behalf_of names that one),
 * oldest first.  Read from approval_waiting by approver: the cost follows
 * what waits for this principal, not the history.
 */
PG_FUNCTION_INFO_V1(crmguard_my_approvals);
Datum
crmguard_my_approvals(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		me;
	int64	   *capacity;
	int			ncapacity = 1;
	List	   *processes = NIL;
	CgPrivilegedContext priv;
	int64	   *by;
	int			nby;
	WaitingList waits;
	int			i;

	cg_require_preload();
	cg_require_attested();
	InitMaterializedSRF(fcinfo, 0);
	me = acting_principal();
	if (me == 0)
		return (Datum) 0;

	cg_enter_owner(&priv);
	/* me, and whoever delegated their approvals to me for now */
	by = delegators(me, me, NULL, 0, &nby);
	capacity = palloc(sizeof(int64) * (nby + 1));
	capacity[0] = me;
	for (i = 0; i < nby; i++)
		capacity[ncapacity++] = by[i];

	waits = waiting_for(me, capacity, ncapacity);
	for (i = 0; i < waits.n; i++)
	{
		Waiting    *w = &waits.items[i];
		Datum		out[8];
		bool		nulls[8] = {false};
		ProcessSeen *ps = process_seen(&processes, w->process);
		const CgPrincipal *who;
		text	   *step_text;

		out[0] = Int64GetDatum(w->request);
		out[1] = PointerGetDatum(ps->name);
		out[2] = ObjectIdGetDatum(w->target);
		out[3] = PointerGetDatum(w->row_key);
		step_text = process_step_text(ps, w->current_step);
		nulls[4] = step_text == NULL;
		out[4] = PointerGetDatum(step_text);
		who = w->submitted_by ? cg_principal_by_id(w->submitted_by) : NULL;
		nulls[5] = who == NULL;
		out[5] = who ? CStringGetTextDatum(who->name) : (Datum) 0;
		out[6] = TimestampTzGetDatum(w->submitted_at);
		who = w->approver != me ? cg_principal_by_id(w->approver) : NULL;
		nulls[7] = who == NULL;
		out[7] = who ? CStringGetTextDatum(who->name) : (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
	}
	cg_leave_owner(&priv);
	return (Datum) 0;
}
