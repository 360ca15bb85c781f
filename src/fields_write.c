/*
 * fields_write.c
 *		Contact fields: the row guard.  A BEFORE INSERT OR UPDATE row trigger
 *		that validates, normalises and seals every written value, keeps what
 *		the writer could not see, and checks unique fields before the index.
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

/* ---------------------------------------------------------------------------
 * The row trigger
 * ---------------------------------------------------------------------------
 */

/* One field of the row being written, as it will be stored */
typedef struct OutField
{
	FieldDef   *def;			/* NULL: a key kept as it was */
	JsonbValue	key;
	JsonbValue *value;
	char	   *lookup;			/* what the field's index holds: normalised text or blind index */
} OutField;

static char *
datum_text(FmgrInfo *out, HeapTuple tuple, TupleDesc desc, AttrNumber attnum)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, attnum, desc, &isnull);

	return isnull ? NULL : OutputFunctionCall(out, d);
}

/* The row's key as text, the same whatever the session's DateStyle or TimeZone */
static char *
key_text(FieldsTable *t, HeapTuple tuple, TupleDesc desc)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, t->pk_attnum, desc, &isnull);

	return isnull ? NULL : cg_row_key_output(t->pk_type, d);
}

static JsonbValue *
copy_scalar(const JsonbValue *v)
{
	JsonbValue *c = palloc(sizeof(JsonbValue));

	*c = *v;
	return c;
}

static bool
scalars_equal(const JsonbValue *a, const JsonbValue *b)
{
	if (a->type != b->type)
		return false;
	switch (a->type)
	{
		case jbvString:
			return a->val.string.len == b->val.string.len &&
				memcmp(a->val.string.val, b->val.string.val, a->val.string.len) == 0;
		case jbvNumeric:
			return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(a->val.numeric),
													NumericGetDatum(b->val.numeric)));
		case jbvBool:
			return a->val.boolean == b->val.boolean;
		case jbvNull:
			return true;
		case jbvBinary:
			return a->val.binary.len == b->val.binary.len &&
				memcmp(a->val.binary.data, b->val.binary.data, a->val.binary.len) == 0;
		default:
			return false;
	}
}

static JsonbValue *
old_member(Jsonb *old, const JsonbValue *key)
{
	if (old == NULL || !JB_ROOT_IS_OBJECT(old) || JB_ROOT_IS_SCALAR(old))
		return NULL;
	return findJsonbValueFromContainer(&old->root, JB_FOBJECT, (JsonbValue *) key);
}

/* A masked value kept from the old row, sealed again if the row key changed */
static JsonbValue *
keep_masked(FieldsTable *t, FieldDef *f, JsonbValue *old, const char *old_key, const char *new_key,
			char **lookup)
{
	char	   *s;
	int			len;
	char	   *clear;

	if (old->type != jbvBinary || !fld_member_string(old->val.binary.data, "enc", &s, &len))
		return copy_scalar(old);
	if (strcmp(old_key, new_key) == 0)
	{
		if (fld_member_string(old->val.binary.data, "blind", &s, &len))
			*lookup = pnstrdup(s, len);
		return copy_scalar(old);
	}
	clear = fld_decrypt(t, f, old_key, s, len);
	if (clear == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("value of field \"%s\" of row \"%s\" cannot be decrypted", f->name, old_key)));
	*lookup = fld_blind_index(t, f, clear);
	return fld_sealed_value(t, f, new_key, clear, NULL);
}

/*
 * Is the value already in the field's index for another row?  Probes the
 * index with a dirty snapshot, waiting for a writer in progress, as a
 * unique index does, so the error names the field, never the other row.
 */
static void
check_unique(Relation rel, FieldDef *f, const char *lookup, ItemPointer self)
{
	Relation	index;
	ScanKeyData skey;
	SnapshotData dirty;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	TransactionId xwait;

	if (!OidIsValid(f->indexoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("index \"%s\" of unique field \"%s\" is missing", f->index_name, f->name),
				 errhint("Drop the field and define it again.")));
	index = index_open(f->indexoid, AccessShareLock);
	slot = table_slot_create(rel, NULL);
retry:
	xwait = InvalidTransactionId;
	InitDirtySnapshot(dirty);
	ScanKeyInit(&skey, 1, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(lookup));
	skey.sk_collation = index->rd_indcollation[0];
	scan = index_beginscan(rel, index, &dirty, 1, 0);
	index_rescan(scan, &skey, 1, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		if (self != NULL && ItemPointerEquals(&slot->tts_tid, self))
			continue;
		xwait = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
		if (TransactionIdIsValid(xwait))
			break;
		index_endscan(scan);
		ExecDropSingleTupleTableSlot(slot);
		index_close(index, AccessShareLock);
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("duplicate value for field \"%s\"", f->name),
				 errdetail("Another row of table %s already holds this value of field \"%s\".",
						   RelationGetRelationName(rel), f->name),
				 errtableconstraint(rel, f->index_name)));
	}
	index_endscan(scan);
	if (TransactionIdIsValid(xwait))
	{
		XactLockTableWait(xwait, rel, &slot->tts_tid, XLTW_InsertIndex);
		goto retry;
	}
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
}

PG_FUNCTION_INFO_V1(crmguard_fields_guard);
Datum
crmguard_fields_guard(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	FieldsTable *t;
	HeapTuple	newtup;
	HeapTuple	oldtup = NULL;
	bool		is_update;
	bool		isnull;
	bool		old_isnull = true;
	Datum		newval;
	Datum		oldval = (Datum) 0;
	Jsonb	   *in = NULL;
	Jsonb	   *old = NULL;
	Actor		actor;
	char	   *new_key;
	char	   *old_key;
	char	   *project;
	OutField   *out;
	int			nout = 0;
	int			cap;
	int			i;
	JsonbParseState *st = NULL;
	Datum		result;
	bool		result_null;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_DELETE(td->tg_event) ||
		TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		elog(ERROR, "crmguard_fields_guard: must be fired BEFORE INSERT OR UPDATE FOR EACH ROW");
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	is_update = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
	newtup = is_update ? td->tg_newtuple : td->tg_trigtuple;
	if (fld_internal == RelationGetRelid(rel))
		return PointerGetDatum(newtup);
	t = fld_lookup(RelationGetRelid(rel));
	if (t == NULL)
		return PointerGetDatum(newtup); /* fields were switched off */
	if (t->broken)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("contact fields of table %s cannot be written: %s", RelationGetRelationName(rel), t->broken)));

	newval = heap_getattr(newtup, t->attnum, desc, &isnull);
	if (is_update)
	{
		oldtup = td->tg_trigtuple;
		oldval = heap_getattr(oldtup, t->attnum, desc, &old_isnull);
		/* untouched fields, same key, same project: nothing to do */
		if (isnull == old_isnull && (isnull || datumIsEqual(newval, oldval, false, -1)))
		{
			Form_pg_attribute pk = TupleDescAttr(desc, t->pk_attnum - 1);
			bool		n1,
						n2;
			Datum		k1 = heap_getattr(newtup, t->pk_attnum, desc, &n1);
			Datum		k2 = heap_getattr(oldtup, t->pk_attnum, desc, &n2);
			bool		same_key = n1 == n2 && (n1 || datumIsEqual(k1, k2, pk->attbyval, pk->attlen));
			bool		same_project = true;

			if (t->project_attnum != InvalidAttrNumber)
			{
				Form_pg_attribute pa = TupleDescAttr(desc, t->project_attnum - 1);

				k1 = heap_getattr(newtup, t->project_attnum, desc, &n1);
				k2 = heap_getattr(oldtup, t->project_attnum, desc, &n2);
				same_project = n1 == n2 && (n1 || datumIsEqual(k1, k2, pa->attbyval, pa->attlen));
			}
			if (same_key && (same_project || isnull))
				return PointerGetDatum(newtup);
		}
		if (!old_isnull)
			old = DatumGetJsonbP(oldval);
	}
	if (!isnull)
		in = DatumGetJsonbP(newval);

	fld_actor_init(&actor);
	if (cg_review_approving == RelationGetRelid(rel))
		actor.kind = ACTOR_RAW; /* an approved draft, checked when it was submitted */
	/* sealed values are bound to the key as every session prints it */
	new_key = key_text(t, newtup, desc);
	if (new_key == NULL)
		new_key = "";
	old_key = is_update ? key_text(t, oldtup, desc) : new_key;
	project = t->project_attnum != InvalidAttrNumber ?
		datum_text(&t->project_out, newtup, desc, t->project_attnum) : NULL;

	if (in != NULL && (!JB_ROOT_IS_OBJECT(in) || JB_ROOT_IS_SCALAR(in)))
		fld_refuse(NULL, NULL, psprintf("column \"%s\" must hold a JSON object of contact fields",
									NameStr(TupleDescAttr(desc, t->attnum - 1)->attname)), NULL);
	cap = (in ? JB_ROOT_COUNT(in) : 0) + (old && JB_ROOT_IS_OBJECT(old) ? JB_ROOT_COUNT(old) : 0) + 1;
	out = palloc0(sizeof(OutField) * cap);

	/* what the writer wrote */
	if (in != NULL)
	{
		JsonbIterator *it = JsonbIteratorInit(&in->root);
		JsonbValue	k;
		JsonbValue	v;
		JsonbIteratorToken r;

		while ((r = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			FieldDef   *f;
			JsonbValue *prev;
			char	   *name;
			OutField   *o;

			if (r != WJB_KEY)
				continue;
			(void) JsonbIteratorNext(&it, &v, true);
			name = pnstrdup(k.val.string.val, k.val.string.len);
			f = fld_find_def(t, k.val.string.val, k.val.string.len);
			prev = old_member(old, &k);
			if (f == NULL)
			{
				/* a key crmguard does not know, unchanged: not the writer's to lose */
				if (prev != NULL && scalars_equal(prev, &v))
				{
					o = &out[nout++];
					o->key = k;
					o->value = copy_scalar(prev);
					continue;
				}
				fld_refuse(NULL, name, psprintf("unknown field \"%s\"", name),
					   psprintf("Table %s has no contact field \"%s\".", RelationGetRelationName(rel), name));
			}
			if (v.type == jbvNull)
				continue;		/* null removes a field */
			if (!fld_actor_sees(&actor, f))
			{
				if (prev != NULL && scalars_equal(prev, &v))
					continue;	/* kept below with the other hidden fields */
				fld_refuse(f, name, psprintf("field \"%s\" belongs to another project", name),
					   actor.kind == ACTOR_NOBODY ?
					   "A session without a principal writes no contact fields." :
					   "The acting principal's projects do not include the field's projects.");
			}
			if (project != NULL && f->nprojects >= 0 && !fld_project_listed(f, project))
				fld_refuse(f, name, psprintf("field \"%s\" belongs to another project", name),
					   psprintf("The row belongs to project \"%s\".", project));
			if (t->project_attnum != InvalidAttrNumber && project == NULL && f->nprojects >= 0)
				fld_refuse(f, name, psprintf("field \"%s\" belongs to another project", name),
					   "The row belongs to no project.");

			o = &out[nout++];
			o->def = f;
			o->key = k;
			if (f->masked)
			{
				char	   *s;
				int			len;

				/* as the writer saw it, masked or sealed: keep the old value */
				if (prev != NULL && prev->type == jbvBinary &&
					((v.type == jbvString && fld_member_string(prev->val.binary.data, "mask", &s, &len) &&
					  len == v.val.string.len && memcmp(s, v.val.string.val, len) == 0) ||
					 scalars_equal(prev, &v)))
				{
					o->value = keep_masked(t, f, prev, old_key, new_key, &o->lookup);
					continue;
				}
				if (v.type == jbvBinary)
				{
					char	   *clear = NULL;

					/* a sealed value of this very row and field (pg_restore, an approved draft) */
					if (fld_member_string(v.val.binary.data, "enc", &s, &len))
						clear = fld_decrypt(t, f, new_key, s, len);
					if (clear == NULL)
						fld_refuse(f, name, psprintf("invalid value for field \"%s\" of type %s", name,
												 fld_type_names[f->type]),
							   "An encrypted value belongs to one row and field of one table.");
					o->lookup = fld_blind_index(t, f, clear);
					o->value = fld_sealed_value(t, f, new_key, clear, pnstrdup(s, len));
					continue;
				}
				{
					JsonbValue	norm;
					char	   *canonical = fld_normalise(f, &v, &norm);

					o->lookup = fld_blind_index(t, f, canonical);
					o->value = fld_sealed_value(t, f, new_key, canonical, NULL);
				}
			}
			else
			{
				JsonbValue *norm = palloc(sizeof(JsonbValue));

				(void) fld_normalise(f, &v, norm);
				o->value = norm;
				o->lookup = cg_jsonb_scalar_text(norm);
			}
		}
	}

	/* what the writer cannot see of the old row stays as it was */
	if (old != NULL && JB_ROOT_IS_OBJECT(old) && !JB_ROOT_IS_SCALAR(old))
	{
		JsonbIterator *it = JsonbIteratorInit(&old->root);
		JsonbValue	k;
		JsonbValue	v;
		JsonbIteratorToken r;

		while ((r = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			FieldDef   *f;
			OutField   *o;

			if (r != WJB_KEY)
				continue;
			(void) JsonbIteratorNext(&it, &v, true);
			f = fld_find_def(t, k.val.string.val, k.val.string.len);
			if (f != NULL && fld_actor_sees(&actor, f))
				continue;		/* the writer's to change or remove */
			if (f == NULL)
			{
				bool		written = false;

				for (i = 0; i < nout; i++)
					if (out[i].key.val.string.len == k.val.string.len &&
						memcmp(out[i].key.val.string.val, k.val.string.val, k.val.string.len) == 0)
						written = true;
				if (written)
					continue;
			}
			/* a kept field must still belong to the row's project */
			if (f != NULL && t->project_attnum != InvalidAttrNumber && f->nprojects >= 0 &&
				(project == NULL || !fld_project_listed(f, project)))
				fld_refuse(NULL, NULL, "the row holds contact fields of another project",
					   "Its project cannot change while it holds fields the new project does not have.");
			o = &out[nout++];
			o->def = f;
			o->key = k;
			if (f != NULL && f->masked)
				o->value = keep_masked(t, f, &v, old_key, new_key, &o->lookup);
			else
			{
				o->value = copy_scalar(&v);
				if (f != NULL && v.type != jbvBinary)
					o->lookup = cg_jsonb_scalar_text(&v);
			}
		}
	}

	/* required fields: of the row's project, or (rows shared) those the writer sees */
	for (i = 0; i < t->nfields; i++)
	{
		FieldDef   *f = &t->fields[i];
		bool		applies;
		bool		present = false;
		int			j;

		if (!f->required)
			continue;
		if (t->project_attnum != InvalidAttrNumber)
			applies = f->nprojects < 0 || (project != NULL && fld_project_listed(f, project));
		else
			applies = fld_actor_sees(&actor, f);
		if (!applies)
			continue;
		for (j = 0; j < nout; j++)
			if (out[j].def == f)
				present = true;
		if (!present)
			fld_refuse(f, f->name, psprintf("field \"%s\" is required", f->name),
				   project ? psprintf("Every row of project \"%s\" holds field \"%s\".", project, f->name) : NULL);
	}

	/* unique fields whose value is new to this row */
	for (i = 0; i < nout; i++)
	{
		FieldDef   *f = out[i].def;

		if (f == NULL || !f->unique || out[i].lookup == NULL)
			continue;
		if (is_update && old != NULL)
		{
			JsonbValue *prev = old_member(old, &out[i].key);
			char	   *s;
			int			len;

			if (prev != NULL && strcmp(old_key, new_key) == 0 &&
				((f->masked && prev->type == jbvBinary && fld_member_string(prev->val.binary.data, "blind", &s, &len) &&
				  len == (int) strlen(out[i].lookup) && memcmp(s, out[i].lookup, len) == 0) ||
				 (!f->masked && prev->type != jbvBinary && strcmp(cg_jsonb_scalar_text(prev), out[i].lookup) == 0)))
				continue;
		}
		check_unique(rel, f, out[i].lookup, is_update ? &oldtup->t_self : NULL);
	}

	if (in == NULL && nout == 0)
		return PointerGetDatum(newtup);
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < nout; i++)
	{
		pushJsonbValue(&st, WJB_KEY, &out[i].key);
		pushJsonbValue(&st, WJB_VALUE, out[i].value);
	}
	result = JsonbPGetDatum(JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL)));
	result_null = false;
	{
		int			col = t->attnum;

		return PointerGetDatum(heap_modify_tuple_by_cols(newtup, desc, 1, &col, &result, &result_null));
	}
}

