/*
 * fields_read.c
 *		Contact fields: what a reader sees.  The projection functions, and the
 *		hooks that route every read of a fields column through them: the
 *		planner hook (every query shape), COPY table TO (made a query), and
 *		a failing constraint's detail (which would show the stored row).
 */
#include "postgres.h"

#include <ctype.h>

#include <sodium.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/planner.h"
#include "parser/parse_func.h"
#include "parser/parsetree.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "crmguard.h"
#include "fields.h"

static planner_hook_type prev_planner = NULL;
static ProcessUtility_hook_type prev_utility = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;

/* ---------------------------------------------------------------------------
 * The projection: what a reader may see of a fields column
 * ---------------------------------------------------------------------------
 */

ProjectionCache *
fld_projection_cache(FunctionCallInfo fcinfo, Oid relid)
{
	ProjectionCache *c = (ProjectionCache *) fcinfo->flinfo->fn_extra;
	const CgPrincipal *p = cg_current_principal();
	int64		pid = p ? p->id : 0;
	int			i;

	if (c == NULL)
	{
		c = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(ProjectionCache));
		fcinfo->flinfo->fn_extra = c;
	}
	if (c->table != NULL && c->relid == relid && c->generation == fld_generation && fld_valid &&
		c->userid == GetUserId() && c->principal == pid && c->have_actor)
		return c;

	c->relid = relid;
	c->table = fld_lookup(relid);
	c->generation = fld_generation;
	/* relid comes from a plan or a caller: its table may be gone */
	if (c->table == NULL || c->table->broken)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("contact fields of %s cannot be served%s%s", cg_relation_description(relid),
						c->table ? ": " : "", c->table ? c->table->broken : "")));
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		fld_actor_init(&c->actor);
		c->visible = palloc(sizeof(bool) * Max(c->table->nfields, 1));
		MemoryContextSwitchTo(old);
	}
	c->userid = GetUserId();
	c->principal = pid;
	c->have_actor = true;
	c->all_visible = !c->table->any_masked;
	for (i = 0; i < c->table->nfields; i++)
	{
		c->visible[i] = fld_actor_sees(&c->actor, &c->table->fields[i]);
		if (!c->visible[i])
			c->all_visible = false;
	}
	return c;
}

/*
 * The reader's projection of a stored value.  clear: masked values in clear
 * (field_values for view_masked holders); names of the fields so shown are
 * added to *unmasked.
 */
Jsonb *
fld_project(ProjectionCache *c, Jsonb *stored, bool stored_ok, bool clear, const char *row_key,
		List **unmasked)
{
	FieldsTable *t = c->table;
	JsonbParseState *st = NULL;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbValue	v;
	JsonbIteratorToken r;

	if (c->actor.kind == ACTOR_RAW && stored_ok)
		return stored;
	if (!JB_ROOT_IS_OBJECT(stored) || JB_ROOT_IS_SCALAR(stored))
		return stored;			/* refused on write: cannot be there */
	if (c->actor.kind != ACTOR_NOBODY && c->all_visible && !clear)
		return stored;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	if (c->actor.kind != ACTOR_NOBODY)
	{
		it = JsonbIteratorInit(&stored->root);
		while ((r = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			FieldDef   *f;
			char	   *s;
			int			len;

			if (r != WJB_KEY)
				continue;
			(void) JsonbIteratorNext(&it, &v, true);
			f = fld_find_def(t, k.val.string.val, k.val.string.len);
			if (f == NULL || !c->visible[f - t->fields])
				continue;
			pushJsonbValue(&st, WJB_KEY, &k);
			if (f->masked && v.type == jbvBinary)
			{
				if (clear && fld_member_string(v.val.binary.data, "enc", &s, &len))
				{
					char	   *value = fld_decrypt(t, f, row_key, s, len);

					if (value == NULL)
						ereport(ERROR,
								(errcode(ERRCODE_DATA_CORRUPTED),
								 errmsg("value of field \"%s\" of row \"%s\" cannot be decrypted", f->name, row_key)));
					fld_push_string(&st, WJB_VALUE, value);
					*unmasked = lappend(*unmasked, f->name);
				}
				else if (fld_member_string(v.val.binary.data, "mask", &s, &len))
					fld_push_string(&st, WJB_VALUE, pnstrdup(s, len));
				else
					fld_push_string(&st, WJB_VALUE, FULL_MASK);
			}
			else
				pushJsonbValue(&st, WJB_VALUE, &v);
		}
	}
	return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

PG_FUNCTION_INFO_V1(crmguard_fields_projection);
Datum
crmguard_fields_projection(PG_FUNCTION_ARGS)
{
	ProjectionCache *c;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	c = fld_projection_cache(fcinfo, PG_GETARG_OID(1));
	PG_RETURN_JSONB_P(fld_project(c, PG_GETARG_JSONB_P(0), true, false, NULL, NULL));
}

PG_FUNCTION_INFO_V1(crmguard_fields_row);
Datum
crmguard_fields_row(PG_FUNCTION_ARGS)
{
	HeapTupleHeader th;
	ProjectionCache *c;
	TupleDesc	desc;
	HeapTupleData tuple;
	HeapTuple	result;
	Datum	   *values;
	bool	   *nulls;
	int			i;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	/* anyelement: a scalar read as a row header would be a wild pointer */
	if (!type_is_rowtype(get_fn_expr_argtype(fcinfo->flinfo, 0)))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("argument of crmguard.fields_row() must be a table row")));
	th = PG_GETARG_HEAPTUPLEHEADER(0);
	c = fld_projection_cache(fcinfo, PG_GETARG_OID(1));
	/* only a row of that very table: any other row is not this function's */
	if (HeapTupleHeaderGetTypeId(th) != get_rel_type_id(c->relid))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("row is not of %s", cg_relation_description(c->relid))));
	desc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(th), HeapTupleHeaderGetTypMod(th));
	tuple.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = th;
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	heap_deform_tuple(&tuple, desc, values, nulls);
	i = c->table->attnum - 1;
	if (i < desc->natts && !nulls[i])
		values[i] = JsonbPGetDatum(fld_project(c, DatumGetJsonbP(values[i]), true, false, NULL, NULL));
	result = heap_form_tuple(desc, values, nulls);
	ReleaseTupleDesc(desc);
	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}

/*
 * One field of the reader's projection: fields->'name' and fields->>'name'
 * are rewritten into these, so reading one field costs a lookup, not a
 * rebuilt object.  NULL when the reader may not see the field.
 */
static JsonbValue *
project_one(ProjectionCache *c, Jsonb *stored, text *key, JsonbValue *masked)
{
	JsonbValue	k;
	JsonbValue *v;
	FieldDef   *f;
	char	   *s;
	int			len;

	if (!JB_ROOT_IS_OBJECT(stored) || JB_ROOT_IS_SCALAR(stored) || c->actor.kind == ACTOR_NOBODY)
		return NULL;
	k.type = jbvString;
	k.val.string.val = VARDATA_ANY(key);
	k.val.string.len = VARSIZE_ANY_EXHDR(key);
	v = findJsonbValueFromContainer(&stored->root, JB_FOBJECT, &k);
	if (v == NULL || c->actor.kind == ACTOR_RAW)
		return v;
	f = fld_find_def(c->table, k.val.string.val, k.val.string.len);
	if (f == NULL || !c->visible[f - c->table->fields])
		return NULL;
	if (!f->masked || v->type != jbvBinary)
		return v;
	masked->type = jbvString;
	if (fld_member_string(v->val.binary.data, "mask", &s, &len))
	{
		masked->val.string.val = s;
		masked->val.string.len = len;
	}
	else
	{
		masked->val.string.val = FULL_MASK;
		masked->val.string.len = strlen(FULL_MASK);
	}
	return masked;
}

PG_FUNCTION_INFO_V1(crmguard_fields_get);
Datum
crmguard_fields_get(PG_FUNCTION_ARGS)
{
	JsonbValue	masked;
	JsonbValue *v;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	v = project_one(fld_projection_cache(fcinfo, PG_GETARG_OID(1)), PG_GETARG_JSONB_P(0),
					PG_GETARG_TEXT_PP(2), &masked);
	if (v == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(JsonbValueToJsonb(v));
}

PG_FUNCTION_INFO_V1(crmguard_fields_get_text);
Datum
crmguard_fields_get_text(PG_FUNCTION_ARGS)
{
	JsonbValue	masked;
	JsonbValue *v;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	v = project_one(fld_projection_cache(fcinfo, PG_GETARG_OID(1)), PG_GETARG_JSONB_P(0),
					PG_GETARG_TEXT_PP(2), &masked);
	if (v == NULL || v->type == jbvNull)
		PG_RETURN_NULL();
	if (v->type == jbvBinary)
		PG_RETURN_TEXT_P(cstring_to_text(JsonbToCString(NULL, v->val.binary.data, v->val.binary.len)));
	PG_RETURN_TEXT_P(cstring_to_text(cg_jsonb_scalar_text(v)));
}

/* ---------------------------------------------------------------------------
 * The planner hook: every read of a fields column becomes its projection
 * ---------------------------------------------------------------------------
 */
typedef struct RewriteContext
{
	List	   *queries;		/* innermost first: varlevelsup indexes it */
} RewriteContext;

static bool
raw_rte(RangeTblEntry *rte)
{
	return fld_raw_depth > 0 && rte->alias != NULL && strcmp(rte->alias->aliasname, fld_raw_alias) == 0;
}

/* The fields table whose fields column (or whole row, attnum 0) the Var reads, or NULL */
static FieldsTable *
fields_var(Var *var, RewriteContext *ctx, Oid *relid)
{
	Query	   *q;
	RangeTblEntry *rte;
	FieldsTable *t;

	if ((int) var->varlevelsup >= list_length(ctx->queries))
		return NULL;
	q = list_nth(ctx->queries, var->varlevelsup);
	if (var->varno <= 0 || var->varno > list_length(q->rtable))
		return NULL;
	rte = rt_fetch(var->varno, q->rtable);
	if (rte->rtekind != RTE_RELATION || (t = fld_lookup(rte->relid)) == NULL || raw_rte(rte))
		return NULL;
	/* a table whose fields column cannot be found is unreadable, not readable raw */
	if (!t->broken && var->varattno != 0 && var->varattno != t->attnum)
		return NULL;
	if (t->broken || !OidIsValid(fld_projection_func) || !OidIsValid(fld_row_func) ||
		!OidIsValid(fld_get_func) || !OidIsValid(fld_get_text_func))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("contact fields of %s cannot be served%s%s", cg_relation_description(rte->relid),
						t->broken ? ": " : "", t->broken ? t->broken : "")));
	*relid = rte->relid;
	return t;
}

static Node *
rewrite_mutator(Node *node, RewriteContext *ctx)
{
	if (node == NULL)
		return NULL;
	/* fields->'name', fields->>'name': one field of the projection */
	if (IsA(node, OpExpr) && list_length(((OpExpr *) node)->args) == 2)
	{
		OpExpr	   *op = (OpExpr *) node;
		Node	   *left = linitial(op->args);
		Node	   *right = lsecond(op->args);
		Oid			relid;

		set_opfuncid(op);
		if ((op->opfuncid == F_JSONB_OBJECT_FIELD || op->opfuncid == F_JSONB_OBJECT_FIELD_TEXT) &&
			IsA(left, Var) && ((Var *) left)->varattno != 0 && IsA(right, Const) &&
			((Const *) right)->consttype == TEXTOID && fields_var((Var *) left, ctx, &relid) != NULL)
		{
			FuncExpr   *f;

			f = makeFuncExpr(op->opfuncid == F_JSONB_OBJECT_FIELD ? fld_get_func : fld_get_text_func,
							 op->opresulttype,
							 list_make3(copyObject(left),
										makeConst(OIDOID, -1, InvalidOid, sizeof(Oid),
												  ObjectIdGetDatum(relid), false, true),
										copyObject(right)),
							 InvalidOid, op->inputcollid, COERCE_EXPLICIT_CALL);
			f->location = op->location;
			return (Node *) f;
		}
	}
	if (IsA(node, Query))
	{
		Query	   *q = (Query *) node;

		ctx->queries = lcons(q, ctx->queries);
		q = query_tree_mutator(q, rewrite_mutator, ctx, QTW_DONT_COPY_QUERY);
		ctx->queries = list_delete_first(ctx->queries);
		return (Node *) q;
	}
	if (IsA(node, Var))
	{
		Var		   *var = (Var *) node;
		Oid			reloid;
		Const	   *relid;
		FuncExpr   *f;

		if (fields_var(var, ctx, &reloid) == NULL)
			return (Node *) copyObject(var);
		relid = makeConst(OIDOID, -1, InvalidOid, sizeof(Oid), ObjectIdGetDatum(reloid), false, true);
		f = makeFuncExpr(var->varattno == 0 ? fld_row_func : fld_projection_func, var->vartype,
						 list_make2(copyObject(var), relid), InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		f->location = var->location;
		return (Node *) f;
	}
	return expression_tree_mutator(node, rewrite_mutator, ctx);
}

/* Does the query (its subqueries, CTEs and sublinks included) read a fields table? */
static bool
reads_fields_table(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Query))
	{
		Query	   *q = (Query *) node;
		ListCell   *lc;

		foreach(lc, q->rtable)
		{
			RangeTblEntry *rte = (RangeTblEntry *) lfirst(lc);

			if (rte->rtekind == RTE_RELATION &&
				hash_search(fld_tables, &rte->relid, HASH_FIND, NULL) != NULL)
				return true;
		}
		return query_tree_walker(q, reads_fields_table, context, 0);
	}
	return expression_tree_walker(node, reads_fields_table, context);
}

static PlannedStmt *
fields_planner(Query *parse, const char *query_string, int cursorOptions, ParamListInfo boundParams)
{
	if (!fld_loading && IsTransactionState() && OidIsValid(get_namespace_oid("crmguard", true)))
	{
		if (!fld_valid)
			fld_load();
		/* other tables' queries are planned as they are, uncopied */
		if (OidIsValid(fld_table_rel) && hash_get_num_entries(fld_tables) > 0 &&
			reads_fields_table((Node *) parse, NULL))
		{
			RewriteContext ctx = {NIL};

			parse = (Query *) rewrite_mutator((Node *) parse, &ctx);
		}
	}
	if (prev_planner)
		return prev_planner(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

/*
 * COPY table TO reads the heap directly: make it COPY (SELECT ... FROM ONLY
 * table) TO, as PostgreSQL itself does for tables with row-level security,
 * so that the planner hook projects it.
 */
static void
fields_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			   ProcessUtilityContext context, ParamListInfo params,
			   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, CopyStmt) && !((CopyStmt *) parsetree)->is_from &&
		((CopyStmt *) parsetree)->relation != NULL && IsTransactionState() &&
		OidIsValid(get_namespace_oid("crmguard", true)))
	{
		CopyStmt   *copy = (CopyStmt *) parsetree;
		Oid			relid = RangeVarGetRelid(copy->relation, NoLock, true);

		if (OidIsValid(relid) && fld_lookup(relid) != NULL)
		{
			CopyStmt   *rewritten = copyObject(copy);
			SelectStmt *select = makeNode(SelectStmt);
			RangeVar   *from = makeRangeVar(get_namespace_name(get_rel_namespace(relid)),
											get_rel_name(relid), -1);
			List	   *targets = NIL;
			ListCell   *lc;

			if (copy->attlist != NIL)
				foreach(lc, copy->attlist)
				{
					ColumnRef  *cr = makeNode(ColumnRef);
					ResTarget  *target = makeNode(ResTarget);

					cr->fields = list_make1(lfirst(lc));
					cr->location = -1;
					target->val = (Node *) cr;
					target->location = -1;
					targets = lappend(targets, target);
				}
			else
			{
				ColumnRef  *cr = makeNode(ColumnRef);
				ResTarget  *target = makeNode(ResTarget);

				cr->fields = list_make1(makeNode(A_Star));
				cr->location = -1;
				target->val = (Node *) cr;
				target->location = -1;
				targets = list_make1(target);
			}
			from->inh = false;
			select->targetList = targets;
			select->fromClause = list_make1(from);
			rewritten->relation = NULL;
			rewritten->attlist = NIL;
			rewritten->query = (Node *) select;
			pstmt = copyObject(pstmt);
			pstmt->utilityStmt = (Node *) rewritten;
			readOnlyTree = false;
		}
	}
	if (prev_utility)
		prev_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

/*
 * A constraint that fails on a written row reports the row in its DETAIL
 * ("Failing row contains ..."), and an updated row holds the fields the
 * writer cannot see, merged back by the guard: such a detail is replaced.
 */
static void
hide_failing_row(void *arg)
{
	int			code = geterrcode();

	if (code == ERRCODE_NOT_NULL_VIOLATION || code == ERRCODE_CHECK_VIOLATION ||
		code == ERRCODE_WITH_CHECK_OPTION_VIOLATION || code == ERRCODE_EXCLUSION_VIOLATION)
		errdetail("The failing row is not shown: it holds contact fields.");
}

static void
fields_executor_run(QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once)
{
	PlannedStmt *stmt = queryDesc->plannedstmt;
	ErrorContextCallback callback;
	bool		writes_fields = false;
	ListCell   *lc;

	if (stmt->commandType != CMD_SELECT && fld_valid && fld_tables != NULL &&
		hash_get_num_entries(fld_tables) > 0)
		foreach(lc, stmt->resultRelations)
		{
			Oid			relid = rt_fetch(lfirst_int(lc), stmt->rtable)->relid;

			if (hash_search(fld_tables, &relid, HASH_FIND, NULL) != NULL)
				writes_fields = true;
		}
	if (writes_fields)
	{
		callback.callback = hide_failing_row;
		callback.arg = NULL;
		callback.previous = error_context_stack;
		error_context_stack = &callback;
	}
	if (prev_executor_run)
		prev_executor_run(queryDesc, direction, count, execute_once);
	else
		standard_ExecutorRun(queryDesc, direction, count, execute_once);
	if (writes_fields)
		error_context_stack = callback.previous;
}

void
cg_fields_init(void)
{
	unsigned char token[8];
	char		hex[17];

	randombytes_buf(token, sizeof(token));
	sodium_bin2hex(hex, sizeof(hex), token, sizeof(token));
	snprintf(fld_raw_alias, sizeof(fld_raw_alias), "crmguard_raw_%s", hex);
	prev_planner = planner_hook;
	planner_hook = fields_planner;
	prev_utility = ProcessUtility_hook;
	ProcessUtility_hook = fields_utility;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = fields_executor_run;
}

