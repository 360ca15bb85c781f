/*
 * review.c
 *		Draft review: an INSERT by a principal without an exempt role does not
 *		reach a reviewed table; a BEFORE row trigger, named to fire first,
 *		keeps the row as a draft and skips it, so no other trigger sees it.
 *		A reviewer's approve_draft() inserts it, as the reviewer, through the
 *		table's constraints, policies and other crmguard guards.
 *
 * The steps that touch only crmguard's tables (reject, comment, resubmit,
 * the draft view) are SQL in 70_review.sql; this file holds the trigger,
 * approval, enable/disable and the normalisation of duplicate keys.
 */
#include "postgres.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/formatting.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "crmguard.h"


/*
 * The table approve_draft is inserting into: the guard lets that one row in,
 * and no other (a trigger of the table inserting elsewhere is still reviewed).
 */
Oid			cg_review_approving = InvalidOid;

/* ---------------------------------------------------------------------------
 * Configuration cache: one entry per reviewed table
 * ---------------------------------------------------------------------------
 */
typedef struct ReviewConfig
{
	Oid			relid;			/* hash key */
	char	   *reviewers;
	int			nmatch;
	char	  **match_columns;
	int			nexempt;
	char	  **exempt;
} ReviewConfig;

static HTAB *configs = NULL;
static MemoryContext config_context = NULL;
static bool configs_valid = false;
static Oid	config_rel = InvalidOid;

static void
config_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == config_rel ||
		(configs != NULL && hash_search(configs, &relid, HASH_FIND, NULL) != NULL))
		configs_valid = false;
}

static char **
text_array(Datum d, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;
	int			kept = 0;
	char	  **out;
	int			i;

	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &count);
	out = palloc(sizeof(char *) * Max(count, 1));
	for (i = 0; i < count; i++)
		if (!nulls[i])
			out[kept++] = TextDatumGetCString(elems[i]);
	*n = kept;
	return out;
}

static void
load_configs(void)
{
	CgPrivilegedContext priv;
	HASHCTL		ctl;
	MemoryContext old;
	uint64		i;

	if (config_context == NULL)
	{
		config_context = AllocSetContextCreate(CacheMemoryContext, "crmguard review config",
											   ALLOCSET_SMALL_SIZES);
		cg_register_relcache_callback(config_callback, (Datum) 0);
	}
	MemoryContextReset(config_context);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(ReviewConfig);
	ctl.hcxt = config_context;
	configs = hash_create("crmguard review config", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	config_rel = get_relname_relid("review_config", cg_catalog()->schema);
	configs_valid = true;		/* from here, invalidations arriving while loading count */

	PG_TRY();
	{
		cg_enter_owner(&priv);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute("SELECT target::pg_catalog.oid, reviewers, match_columns::pg_catalog.text[], exempt"
						" FROM crmguard.review_config", true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read crmguard.review_config");
		old = MemoryContextSwitchTo(config_context);
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			Oid			relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
			ReviewConfig *c = hash_search(configs, &relid, HASH_ENTER, NULL);

			c->reviewers = SPI_getvalue(tup, desc, 2);
			c->match_columns = text_array(SPI_getbinval(tup, desc, 3, &isnull), &c->nmatch);
			c->exempt = text_array(SPI_getbinval(tup, desc, 4, &isnull), &c->nexempt);
		}
		MemoryContextSwitchTo(old);
		SPI_finish();
		cg_leave_owner(&priv);
	}
	PG_CATCH();
	{
		/* a partial map would let rows of a reviewed table in as rows: read it all again */
		configs_valid = false;
		PG_RE_THROW();
	}
	PG_END_TRY();
}

static ReviewConfig *
config_of(Oid relid)
{
	if (!configs_valid)
		load_configs();
	return hash_search(configs, &relid, HASH_FIND, NULL);
}

static bool
holds_role(const CgPrincipal *p, const char *role)
{
	int			i;

	for (i = 0; p != NULL && i < p->nroles; i++)
		if (strcmp(p->roles[i], role) == 0)
			return true;
	return false;
}

/* ---------------------------------------------------------------------------
 * Duplicate keys
 * ---------------------------------------------------------------------------
 */

/*
 * Lower case, no surrounding spaces, inner runs of spaces made one; a phone
 * number (digits and + - ( ) . / and spaces only) keeps its digits and a
 * leading +.
 */
static char *
normalize(const char *value)
{
	char	   *lower = str_tolower(value, strlen(value), DEFAULT_COLLATION_OID);
	StringInfoData out;
	const char *s = lower;
	const char *p;
	int			digits = 0;
	bool		phone = true;

	while (*s && isspace((unsigned char) *s))
		s++;
	for (p = s; *p; p++)
	{
		if (isdigit((unsigned char) *p))
			digits++;
		else if (!strchr("+-()./ \t", *p))
			phone = false;
	}
	initStringInfo(&out);
	if (phone && digits >= 5)
	{
		for (p = s; *p; p++)
			if (isdigit((unsigned char) *p) || (*p == '+' && out.len == 0))
				appendStringInfoChar(&out, *p);
		return out.data;
	}
	for (p = s; *p; p++)
	{
		if (isspace((unsigned char) *p))
		{
			while (p[1] && isspace((unsigned char) p[1]))
				p++;
			if (p[1] == '\0')
				break;
			appendStringInfoChar(&out, ' ');
		}
		else
			appendStringInfoChar(&out, *p);
	}
	return out.data;
}

PG_FUNCTION_INFO_V1(crmguard_normalize_match);
Datum
crmguard_normalize_match(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(normalize(text_to_cstring(PG_GETARG_TEXT_PP(0)))));
}

/* "column=normalised value" for each match column the row has a value in */
static Datum
match_keys(const ReviewConfig *c, Jsonb *row)
{
	Datum	   *keys = palloc(sizeof(Datum) * Max(c ? c->nmatch : 0, 1));
	int			n = 0;
	int			i;

	for (i = 0; c != NULL && i < c->nmatch; i++)
	{
		JsonbValue	k;
		JsonbValue *v;
		char	   *text;

		k.type = jbvString;
		k.val.string.val = c->match_columns[i];
		k.val.string.len = strlen(c->match_columns[i]);
		v = findJsonbValueFromContainer(&row->root, JB_FOBJECT, &k);
		if (v == NULL || v->type == jbvNull)
			continue;
		if (v->type == jbvString)
			text = pnstrdup(v->val.string.val, v->val.string.len);
		else if (v->type == jbvNumeric)
			text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		else
			continue;
		text = normalize(text);
		if (text[0] != '\0')
			keys[n++] = CStringGetTextDatum(psprintf("%s=%s", c->match_columns[i], text));
	}
	return PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * Keys of the table's rows that share a match key ("column=normalised
 * value") with a draft.  The table's columns are cast and compared as the
 * table's owner; every row counts, whoever may see it (reviewers only).
 */
PG_FUNCTION_INFO_V1(crmguard_draft_table_matches);
Datum
crmguard_draft_table_matches(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	ArrayType  *keys = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nkeys;
	Oid			types[1] = {TEXTOID};
	ArrayBuildState *hits = NULL;
	MemoryContext caller = CurrentMemoryContext;
	CgPrivilegedContext priv;
	char	   *pk;
	int			nest;
	int			i;

	cg_require_relation(relid);
	deconstruct_array(keys, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &nkeys);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pk = cg_primary_key_column(relid);
	if (pk == NULL)
		elog(ERROR, "table %s has no single-column primary key", get_rel_name(relid));
	cg_enter_table_owner(&priv, relid);
	/*
	 * The columns as the drafts' match keys print them (JSON, fixed output
	 * settings), and the keys as every session reads them: the reviewer's
	 * DateStyle or TimeZone hides no duplicate.
	 */
	nest = cg_pin_output_settings();
	for (i = 0; i < nkeys; i++)
	{
		char	   *key = elem_nulls[i] ? NULL : TextDatumGetCString(elems[i]);
		char	   *eq = key ? strchr(key, '=') : NULL;
		Datum		value;
		SPIPlanPtr	plan;
		uint64		j;

		if (eq == NULL)
			continue;
		*eq = '\0';
		if (get_attnum(relid, key) == InvalidAttrNumber)
			continue;			/* a match column dropped since */
		value = CStringGetTextDatum(eq + 1);
		plan = cg_prepare_all_rows(relid, psprintf("SELECT t.%s::pg_catalog.text FROM ONLY %s t"
											" WHERE crmguard.normalize_match(pg_catalog.to_jsonb(t.%s)"
											" OPERATOR(pg_catalog.#>>) '{}'::pg_catalog.text[])"
											" OPERATOR(pg_catalog.=) $1",
											quote_identifier(pk),
											quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
																	   get_rel_name(relid)),
											quote_identifier(key)),
								   1, types);
		if (SPI_execute_plan(plan, &value, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look for duplicates in table %s", get_rel_name(relid));
		for (j = 0; j < SPI_processed; j++)
		{
			bool		isnull;
			Datum		hit = SPI_getbinval(SPI_tuptable->vals[j], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull)
				hits = accumArrayResult(hits, hit, false, TEXTOID, caller);
		}
		SPI_freeplan(plan);
	}
	AtEOXact_GUC(false, nest);
	cg_leave_owner(&priv);
	SPI_finish();
	if (hits == NULL)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));
	PG_RETURN_DATUM(makeArrayResult(hits, caller));
}

PG_FUNCTION_INFO_V1(crmguard_draft_match_keys);
Datum
crmguard_draft_match_keys(PG_FUNCTION_ARGS)
{
	PG_RETURN_DATUM(match_keys(config_of(PG_GETARG_OID(0)), PG_GETARG_JSONB_P(1)));
}

/* ---------------------------------------------------------------------------
 * last_drafts(): the drafts made by the session's most recent statement that
 * made any (a statement is what the client sent at once), since RETURNING
 * reports no row for a draft.  Drafts that a rollback undoes are forgotten,
 * and the batch before them is the most recent again.
 * ---------------------------------------------------------------------------
 */
typedef struct DraftBatch
{
	LocalTransactionId lxid;	/* the statement: transaction and start time */
	TimestampTz statement_start;
	bool		this_xact;		/* made by the transaction in progress */
	int			n;
	int			cap;
	int64	   *ids;			/* in TopMemoryContext */
	SubTransactionId *subids;
} DraftBatch;

static DraftBatch last_batch;
static DraftBatch previous_batch;
static bool batch_callbacks_registered = false;

static void
batch_free(DraftBatch *b)
{
	if (b->ids)
		pfree(b->ids);
	if (b->subids)
		pfree(b->subids);
	memset(b, 0, sizeof(DraftBatch));
}

/* Drop the drafts of an aborted subtransaction; true when none is left */
static bool
batch_forget_subxact(DraftBatch *b, SubTransactionId subid)
{
	int			kept = 0;
	int			i;

	for (i = 0; i < b->n; i++)
		if (b->subids[i] != subid)
		{
			b->ids[kept] = b->ids[i];
			b->subids[kept++] = b->subids[i];
		}
	b->n = kept;
	return kept == 0;
}

/* With the latest batch undone, the one before is the latest again */
static void
batch_fall_back(void)
{
	batch_free(&last_batch);
	last_batch = previous_batch;
	memset(&previous_batch, 0, sizeof(DraftBatch));
}

static void
batch_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		if (previous_batch.this_xact)
			batch_free(&previous_batch);
		if (last_batch.this_xact)
			batch_fall_back();
	}
	else if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_PARALLEL_COMMIT &&
			 event != XACT_EVENT_PREPARE)
		return;
	last_batch.this_xact = false;
	previous_batch.this_xact = false;
}

static void
batch_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			i;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		if (previous_batch.this_xact && batch_forget_subxact(&previous_batch, mySubid))
			batch_free(&previous_batch);
		if (last_batch.this_xact && batch_forget_subxact(&last_batch, mySubid))
			batch_fall_back();
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (i = 0; i < last_batch.n; i++)
			if (last_batch.subids[i] == mySubid)
				last_batch.subids[i] = parentSubid;
		for (i = 0; i < previous_batch.n; i++)
			if (previous_batch.subids[i] == mySubid)
				previous_batch.subids[i] = parentSubid;
	}
}

static void
remember_draft(int64 id)
{
	LocalTransactionId lxid = MyProc->lxid;
	TimestampTz start = GetCurrentStatementStartTimestamp();

	if (!batch_callbacks_registered)
	{
		RegisterXactCallback(batch_xact_callback, NULL);
		RegisterSubXactCallback(batch_subxact_callback, NULL);
		batch_callbacks_registered = true;
	}
	if (last_batch.n == 0 || last_batch.lxid != lxid || last_batch.statement_start != start)
	{
		if (last_batch.n > 0)
		{
			batch_free(&previous_batch);
			previous_batch = last_batch;
		}
		memset(&last_batch, 0, sizeof(DraftBatch));
		last_batch.lxid = lxid;
		last_batch.statement_start = start;
	}
	if (last_batch.n == last_batch.cap)
	{
		last_batch.cap = Max(16, last_batch.cap * 2);
		last_batch.ids = last_batch.ids ?
			repalloc(last_batch.ids, sizeof(int64) * last_batch.cap) :
			MemoryContextAlloc(TopMemoryContext, sizeof(int64) * last_batch.cap);
		last_batch.subids = last_batch.subids ?
			repalloc(last_batch.subids, sizeof(SubTransactionId) * last_batch.cap) :
			MemoryContextAlloc(TopMemoryContext, sizeof(SubTransactionId) * last_batch.cap);
	}
	last_batch.this_xact = true;
	last_batch.ids[last_batch.n] = id;
	last_batch.subids[last_batch.n++] = GetCurrentSubTransactionId();
}

PG_FUNCTION_INFO_V1(crmguard_last_drafts);
Datum
crmguard_last_drafts(PG_FUNCTION_ARGS)
{
	Datum	   *datums = palloc(sizeof(Datum) * Max(last_batch.n, 1));
	int			i;

	for (i = 0; i < last_batch.n; i++)
		datums[i] = Int64GetDatum(last_batch.ids[i]);
	PG_RETURN_ARRAYTYPE_P(construct_array(datums, last_batch.n, INT8OID, sizeof(int64),
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* ---------------------------------------------------------------------------
 * The guard: an insert becomes a draft
 * ---------------------------------------------------------------------------
 */
PG_FUNCTION_INFO_V1(crmguard_review_guard);
Datum
crmguard_review_guard(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	static const char *const draft_columns[7] = {"id", "target", "row_data", "match_keys",
	"submitted_by", "submitted_at", "state"};
	static const Oid draft_types[7] = {INT8OID, REGCLASSOID, JSONBOID, TEXTARRAYOID, INT8OID,
	TIMESTAMPTZOID, TEXTOID};
	static const char *const history_columns[5] = {"id", "draft", "at", "principal", "event"};
	static const Oid history_types[5] = {INT8OID, INT8OID, TIMESTAMPTZOID, INT8OID, TEXTOID};
	Oid			relid;
	ReviewConfig *c;
	const CgPrincipal *p;
	Datum		row;
	Jsonb	   *data;
	CgPrivilegedContext priv;
	Datum		values[7];
	bool		nulls[7] = {false};
	Datum		line[5];
	bool		line_nulls[5] = {false};
	int64		id;
	int			i;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || !TRIGGER_FIRED_BY_INSERT(td->tg_event))
		elog(ERROR, "crmguard_review_guard: must be fired BEFORE INSERT FOR EACH ROW");
	cg_require_preload();
	relid = RelationGetRelid(td->tg_relation);
	if (OidIsValid(cg_review_approving) && cg_review_approving == relid)
	{
		cg_review_approving = InvalidOid;
		return PointerGetDatum(td->tg_trigtuple);
	}
	c = config_of(relid);
	if (c == NULL)
		return PointerGetDatum(td->tg_trigtuple);	/* review was switched off */
	cg_require_attested();
	p = cg_current_principal();
	for (i = 0; i < c->nexempt; i++)
		if (holds_role(p, c->exempt[i]))
			return PointerGetDatum(td->tg_trigtuple);

	row = heap_copy_tuple_as_datum(td->tg_trigtuple, RelationGetDescr(td->tg_relation));
	/* dates, times and floats as every session prints them: the match keys compare them */
	data = cg_row_jsonb(row);
	values[1] = ObjectIdGetDatum(relid);
	values[2] = JsonbPGetDatum(data);
	values[3] = match_keys(c, data);
	values[4] = Int64GetDatum(p ? p->id : 0);
	nulls[4] = p == NULL;

	/*
	 * The draft and its first history line, written without a statement (as
	 * crmguard's other hot-path rows): the state and event are words the
	 * tables' CHECKs allow, and the line's draft is this transaction's.
	 */
	cg_enter_owner(&priv);
	id = nextval_internal(get_relname_relid("draft_id_seq", cg_catalog()->schema), true);
	values[0] = Int64GetDatum(id);
	values[5] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[6] = CStringGetTextDatum("pending");
	cg_insert_catalog_rows(get_relname_relid("draft_state", cg_catalog()->schema),
						   lengthof(draft_columns), draft_columns, draft_types, 1, values, nulls);
	line[0] = Int64GetDatum(nextval_internal(get_relname_relid("draft_history_id_seq",
															   cg_catalog()->schema), true));
	line[1] = Int64GetDatum(id);
	line[2] = values[5];
	line[3] = values[4];
	line_nulls[3] = nulls[4];
	line[4] = CStringGetTextDatum("submitted");
	cg_insert_catalog_rows(get_relname_relid("draft_history", cg_catalog()->schema),
						   lengthof(history_columns), history_columns, history_types, 1, line, line_nulls);
	cg_leave_owner(&priv);

	cg_audit("draft_submitted", get_rel_name(relid), psprintf(INT64_FORMAT, id), NULL);
	remember_draft(id);
	ereport(NOTICE,
			(errmsg("row of table %s kept as draft " INT64_FORMAT " for review", get_rel_name(relid), id),
			 errdetail("It enters the table when a principal with role \"%s\" approves it.", c->reviewers)));
	return PointerGetDatum(NULL);
}

/* ---------------------------------------------------------------------------
 * Approval
 * ---------------------------------------------------------------------------
 */

/*
 * INSERT of a jsonb row into the table: the columns it names (not generated
 * ones); the others take their defaults, an identity too when a resubmitted
 * draft no longer carries the key it was given.
 */
static char *
insert_sql(Oid relid, const char *pk, Jsonb *data)
{
	Relation	rel = RelationIdGetRelation(relid);
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData cols;
	char	   *table = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												   get_rel_name(relid));
	int			i;

	initStringInfo(&cols);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);
		JsonbValue	k;

		if (a->attisdropped || a->attgenerated)
			continue;
		k.type = jbvString;
		k.val.string.val = NameStr(a->attname);
		k.val.string.len = strlen(NameStr(a->attname));
		if (findJsonbValueFromContainer(&data->root, JB_FOBJECT, &k) == NULL)
			continue;
		appendStringInfo(&cols, "%s%s", cols.len ? ", " : "", quote_identifier(NameStr(a->attname)));
	}
	RelationClose(rel);
	if (cols.len == 0)
		return psprintf("INSERT INTO %s DEFAULT VALUES RETURNING %s",
						table, quote_identifier(pk));
	return psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE"
					" SELECT %s FROM pg_catalog.jsonb_populate_record(NULL::%s, $1)"
					" RETURNING %s",
					table, cols.data, cols.data, table, quote_identifier(pk));
}

/* Record a step of a draft: its state, its history, the audit log */
static void
record_step(int64 draft, Oid relid, const char *set_sql, const char *event,
			const char *detail, const char *key)
{
	CgPrivilegedContext priv;
	const CgPrincipal *p = cg_current_principal();
	Oid			types[4] = {INT8OID, INT8OID, TEXTOID, TEXTOID};
	Datum		values[4];
	char		nulls[4] = "    ";

	values[0] = Int64GetDatum(draft);
	values[1] = Int64GetDatum(p ? p->id : 0);
	nulls[1] = p ? ' ' : 'n';
	values[2] = detail ? CStringGetTextDatum(detail) : (Datum) 0;
	nulls[2] = detail ? ' ' : 'n';
	values[3] = key ? CStringGetTextDatum(key) : (Datum) 0;
	nulls[3] = key ? ' ' : 'n';
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* one statement, its plan kept: a few texts, one per kind of step */
	if (cg_execute_kept(psprintf("WITH s AS (UPDATE crmguard.draft_state SET %s WHERE id OPERATOR(pg_catalog.=) $1 RETURNING id)"
								 " INSERT INTO crmguard.draft_history (draft, principal, event, detail)"
								 " SELECT id, $2, %s, $3 FROM s", set_sql, quote_literal_cstr(event)),
						4, types, values, nulls, false, 0) != SPI_OK_INSERT || SPI_processed != 1)
		elog(ERROR, "could not record the draft's step");
	SPI_finish();
	cg_leave_owner(&priv);
}

/*
 * Insert the row as the table's owner (its defaults, triggers and domains
 * are the owner's code), for a caller who may insert into the table, in a
 * subtransaction: its error is the draft's.
 */
static char *
insert_row(Oid relid, const char *sql, Jsonb *data, char **failure)
{
	MemoryContext caller = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Oid			types[1] = {JSONBOID};
	Datum		values[1];
	char	   *volatile key = NULL;
	CgPrivilegedContext priv;

	if (pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(relid)),
				 errdetail("Approving a draft inserts its row: the reviewer's role needs INSERT on the table.")));
	values[0] = JsonbPGetDatum(data);
	*failure = NULL;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(caller);
	cg_enter_table_owner(&priv, relid);
	cg_review_approving = relid;
	PG_TRY();
	{
		bool		isnull;

		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (cg_execute_kept_shaped(sql, 1, types, values, NULL, false, 0) != SPI_OK_INSERT_RETURNING ||
			SPI_processed != 1)
			elog(ERROR, "the approved row was not inserted");
		/* the new row's key as every session reads it, whatever the reviewer's DateStyle */
		key = MemoryContextStrdup(caller,
								  cg_row_key_output(SPI_gettypeid(SPI_tuptable->tupdesc, 1),
													SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
																  &isnull)));
		SPI_finish();
		cg_review_approving = InvalidOid;
		cg_leave_owner(&priv);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		cg_review_approving = InvalidOid;
		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		*failure = edata->detail ? psprintf("%s: %s (%s)", unpack_sql_state(edata->sqlerrcode),
											edata->message, edata->detail)
			: psprintf("%s: %s", unpack_sql_state(edata->sqlerrcode), edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	CurrentResourceOwner = owner;
	return key;
}

PG_FUNCTION_INFO_V1(crmguard_approve_draft);
Datum
crmguard_approve_draft(PG_FUNCTION_ARGS)
{
	int64		draft;
	char	   *comment = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	Jsonb	   *changes = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	CgPrivilegedContext priv;
	Oid			types[3] = {INT8OID, OIDOID, JSONBOID};
	Datum		values[3];
	bool		isnull;
	Oid			relid;
	char	   *state;
	Jsonb	   *data;
	ReviewConfig *c;
	char	   *pk;
	char	   *sql;
	char	   *key;
	char	   *failure;
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext old;

	cg_require_preload();
	cg_require_attested();
	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("draft must not be NULL")));
	draft = PG_GETARG_INT64(0);

	/* lock the draft: a second reviewer waits here, then finds it decided */
	values[0] = Int64GetDatum(draft);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (cg_execute_kept("SELECT target::pg_catalog.oid, state, row_data FROM crmguard.draft_state"
							  " WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.draft_state");
	if (SPI_processed == 0)
		ereport(ERROR, (errcode(ERRCODE_NO_DATA_FOUND), errmsg("draft " INT64_FORMAT " does not exist", draft)));
	relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	old = MemoryContextSwitchTo(caller);
	state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	data = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	MemoryContextSwitchTo(old);

	c = config_of(relid);
	if (c == NULL || !holds_role(cg_current_principal(), c->reviewers))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for draft " INT64_FORMAT, draft),
				 errhint("Only a principal with the table's reviewer role can do this.")));
	if (strcmp(state, "pending") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("draft " INT64_FORMAT " is %s, not pending", draft, state)));
	if (changes != NULL)
	{
		values[1] = ObjectIdGetDatum(relid);
		values[2] = JsonbPGetDatum(changes);
		if (cg_execute_kept("SELECT crmguard.check_draft_fields($2, $3, 'changes')",
								  3, types, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not check the changes");
	}
	pk = cg_primary_key_column(relid);
	if (pk == NULL)
		elog(ERROR, "table %s has no single-column primary key", get_rel_name(relid));
	old = MemoryContextSwitchTo(caller);
	if (changes != NULL)
		data = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(data), JsonbPGetDatum(changes)));
	sql = insert_sql(relid, pk, data);
	MemoryContextSwitchTo(old);
	SPI_finish();
	cg_leave_owner(&priv);

	/* the row goes in for the reviewer: its privileges, policies and guards apply */
	key = insert_row(relid, sql, data, &failure);
	if (key == NULL)
	{
		record_step(draft, relid, "last_error = $3", "approval failed", failure, NULL);
		cg_audit("draft_approval_failed", get_rel_name(relid), psprintf(INT64_FORMAT, draft), NULL);
		ereport(WARNING,
				(errmsg("draft " INT64_FORMAT " stays pending: the table refused its row", draft),
				 errdetail("%s", failure)));
		PG_RETURN_NULL();
	}
	if (changes != NULL)
		record_step(draft, relid, "row_data = row_data OPERATOR(pg_catalog.||) $3::pg_catalog.jsonb", "corrected",
					JsonbToCString(NULL, &changes->root, VARSIZE(changes)), NULL);
	record_step(draft, relid,
				"state = 'approved', reviewed_by = $2, row_key = $4, last_error = NULL",
				"approved", comment, key);
	cg_audit("draft_approved", get_rel_name(relid), psprintf(INT64_FORMAT, draft), NULL);
	PG_RETURN_TEXT_P(cstring_to_text(key));
}

/* ---------------------------------------------------------------------------
 * Switching review on and off
 * ---------------------------------------------------------------------------
 */
static void
invalid_review(Oid relid, const char *message)
{
	ereport(ERROR,
			(errcode(ERRCODE_CG_INVALID_RULE),
			 errmsg("invalid review of table \"%s\": %s", get_rel_name(relid), message)));
}

PG_FUNCTION_INFO_V1(crmguard_enable_review);
Datum
crmguard_enable_review(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *reviewers;
	ArrayType  *match = PG_ARGISNULL(2) ? NULL : PG_GETARG_ARRAYTYPE_P(2);
	ArrayType  *exempt = PG_ARGISNULL(3) ? NULL : PG_GETARG_ARRAYTYPE_P(3);
	CgPrivilegedContext priv;
	Oid			types[4] = {OIDOID, TEXTOID, NAMEARRAYOID, TEXTARRAYOID};
	Datum		values[4];
	char		nulls[4] = "    ";
	int			i;

	cg_require_preload();
	if (PG_ARGISNULL(0))
		ereport(ERROR, (errcode(ERRCODE_CG_INVALID_RULE), errmsg("invalid review: the table is NULL")));
	relid = PG_GETARG_OID(0);
	cg_require_relation(relid);
	if (get_rel_relkind(relid) != RELKIND_RELATION)
		invalid_review(relid, "only an ordinary table can be reviewed");
	if (cg_in_inheritance_tree(relid))
		invalid_review(relid, "the table is partitioned or inherited; rows inserted into another table of its tree would bypass review");
	cg_require_table_owner(relid);
	reviewers = PG_ARGISNULL(1) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (reviewers[0] == '\0')
		invalid_review(relid, "reviewers must name a CRM role");
	if (match != NULL)
	{
		Datum	   *elems;
		bool	   *elem_nulls;
		int			n;

		deconstruct_array(match, NAMEOID, NAMEDATALEN, false, TYPALIGN_CHAR, &elems, &elem_nulls, &n);
		for (i = 0; i < n; i++)
		{
			AttrNumber	attno = elem_nulls[i] ? InvalidAttrNumber :
				get_attnum(relid, NameStr(*DatumGetName(elems[i])));

			if (attno <= 0)
				invalid_review(relid, psprintf("match column \"%s\" does not exist",
											   elem_nulls[i] ? "NULL" : NameStr(*DatumGetName(elems[i]))));
		}
	}
	if (exempt != NULL && array_contains_nulls(exempt))
		invalid_review(relid, "exempt roles must not contain NULL");

	/* a command putting the table in a tree, uncommitted at the check above, has committed */
	if (cg_in_inheritance_tree_locked(relid, ShareRowExclusiveLock))
		invalid_review(relid, "the table is partitioned or inherited; rows inserted into another table of its tree would bypass review");
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (cg_primary_key_column(relid) == NULL)
		invalid_review(relid, "a reviewed table needs a single-column primary key to name approved rows");
	values[0] = ObjectIdGetDatum(relid);
	if (SPI_execute_with_args("SELECT tg.tgname::pg_catalog.text FROM pg_catalog.pg_trigger tg"
							  " WHERE tg.tgrelid OPERATOR(pg_catalog.=) $1 AND " CG_TRIGGER_AHEAD_OF_REVIEW,
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_trigger");
	if (SPI_processed > 0)
		invalid_review(relid, psprintf("trigger \"%s\" would see inserted rows before they are kept as drafts",
									   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1)));
	values[1] = CStringGetTextDatum(reviewers);
	if (SPI_execute_with_args("SELECT 1 FROM crmguard.principal WHERE $2 OPERATOR(pg_catalog.=) ANY (roles)",
							  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.principal");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_CG_INVALID_RULE),
				 errmsg("invalid review of table \"%s\": no principal has the reviewer role \"%s\"",
						get_rel_name(relid), reviewers),
				 errhint("Give the role to a principal with crmguard.add_principal() first.")));
	values[0] = ObjectIdGetDatum(relid);
	values[2] = match ? PointerGetDatum(match) : (Datum) 0;
	nulls[2] = match ? ' ' : 'n';
	values[3] = exempt ? PointerGetDatum(exempt) : (Datum) 0;
	nulls[3] = exempt ? ' ' : 'n';
	if (SPI_execute_with_args("INSERT INTO crmguard.review_config (target, reviewers, match_columns, exempt)"
							  " VALUES ($1::pg_catalog.regclass, $2, COALESCE($3, '{}'), COALESCE($4, '{}'))"
							  " ON CONFLICT (target) DO UPDATE SET reviewers = EXCLUDED.reviewers,"
							  " match_columns = EXCLUDED.match_columns, exempt = EXCLUDED.exempt",
							  4, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not store the review");
	cg_guard_install(relid, CG_REVIEW_GUARD, "review_guard", "BEFORE INSERT", NULL);
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	cg_audit("enable_review", get_rel_name(relid), NULL, NULL);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(crmguard_disable_review);
Datum
crmguard_disable_review(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	CgPrivilegedContext priv;
	Oid			types[1] = {OIDOID};
	Datum		values[1];

	cg_require_preload();
	cg_require_relation(relid);
	cg_require_table_owner(relid);
	values[0] = ObjectIdGetDatum(relid);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("DELETE FROM crmguard.review_config WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not delete the review");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not under review", get_rel_name(relid))));
	cg_guard_remove(relid, CG_REVIEW_GUARD);
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	cg_audit("disable_review", get_rel_name(relid), NULL, NULL);
	PG_RETURN_VOID();
}
