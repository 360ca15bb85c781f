/*
 * fields_sql.c
 *		Contact fields: the SQL functions.  Defining fields (enable_fields,
 *		define_field, drop_field), reading and writing them as the caller
 *		(field_values, set_field, find_by_field, unmask) and imports
 *		(map_fields).
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
 * SQL functions
 * ---------------------------------------------------------------------------
 */

static void
invalid_fields(Oid relid, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_CG_INVALID_RULE),
			 errmsg("invalid contact fields for table \"%s\": %s", get_rel_name(relid), detail)));
}

static char *
qualified_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

/*
 * Run a statement of crmguard's own over a fields table: its alias is this
 * backend's raw token, so the planner hook leaves its column references raw.
 */
static int
run_raw(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, bool read_only)
{
	int			rc;

	fld_raw_depth++;
	PG_TRY();
	{
		rc = SPI_execute_with_args(sql, nargs, types, values, nulls, read_only, 0);
	}
	PG_FINALLY();
	{
		fld_raw_depth--;
	}
	PG_END_TRY();
	return rc;
}

/* Act as the caller, with crmguard's search_path: its rights, its rows */
static int
enter_caller(void)
{
	int			nest = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

/* {"field": name[, "reason": reason]} for the audit log */
static Jsonb *
field_detail(const char *field, const char *reason)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"field\": ");
	escape_json(&buf, field);
	if (reason != NULL)
	{
		appendStringInfoString(&buf, ", \"reason\": ");
		escape_json(&buf, reason);
	}
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

PG_FUNCTION_INFO_V1(crmguard_enable_fields);
Datum
crmguard_enable_fields(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *column;
	char	   *project = PG_ARGISNULL(2) ? NULL : NameStr(*PG_GETARG_NAME(2));
	AttrNumber	attnum;
	Bitmapset  *pk;
	Oid			constraint;
	CgPrivilegedContext priv;
	unsigned char key[TABLE_KEY_BYTES];
	bytea	   *keyval;
	Oid			types[4] = {OIDOID, NAMEOID, NAMEOID, BYTEAOID};
	Datum		values[4];
	char		nulls[4] = "    ";
	char		relkind;

	cg_require_preload();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("target and fields_column must not be NULL")));
	relid = PG_GETARG_OID(0);
	column = NameStr(*PG_GETARG_NAME(1));
	cg_require_relation(relid);
	relkind = get_rel_relkind(relid);
	cg_require_table_owner(relid);
	if (relkind != RELKIND_RELATION)
		invalid_fields(relid, "only plain tables can hold contact fields (not partitioned tables, views or foreign tables)");
	if (cg_in_inheritance_tree(relid))
		invalid_fields(relid, "an inherited or partitioned table would show its rows around the fields projection");
	attnum = get_attnum(relid, column);
	if (attnum <= 0)
		invalid_fields(relid, psprintf("column \"%s\" does not exist", column));
	if (get_atttype(relid, attnum) != JSONBOID)
		invalid_fields(relid, psprintf("column \"%s\" is not of type jsonb", column));
	if (project != NULL)
	{
		AttrNumber	pattnum = get_attnum(relid, project);
		Oid			ptype;

		if (pattnum <= 0)
			invalid_fields(relid, psprintf("project column \"%s\" does not exist", project));
		ptype = getBaseType(get_atttype(relid, pattnum));
		if (ptype != TEXTOID && ptype != VARCHAROID && ptype != BPCHAROID && ptype != NAMEOID &&
			!type_is_enum(ptype))
			invalid_fields(relid, psprintf("project column \"%s\" must be of a text or enum type", project));
		if (pattnum == attnum)
			invalid_fields(relid, "the project column cannot be the fields column");
	}
	pk = get_primary_key_attnos(relid, false, &constraint);
	if (bms_num_members(pk) != 1)
		invalid_fields(relid, "a table with contact fields needs a single-column primary key, the row key of its encrypted values");

	/* a command putting the table in a tree, uncommitted at the check above, has committed */
	if (cg_in_inheritance_tree_locked(relid, ShareRowExclusiveLock))
		invalid_fields(relid, "an inherited or partitioned table would show its rows around the fields projection");
	if (fld_lookup(relid) != NULL)
		invalid_fields(relid, "contact fields are already enabled");

	/* the column starts empty: every value in it is checked on its way in */
	cg_enter_table_owner(&priv, relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_plan(cg_prepare_all_rows(relid, psprintf("SELECT 1 FROM ONLY %s t WHERE t.%s IS NOT NULL"
													  " AND t.%s OPERATOR(pg_catalog.<>) '{}'::pg_catalog.jsonb LIMIT 1",
													  qualified_name(relid), quote_identifier(column),
													  quote_identifier(column)), 0, NULL),
						 NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read table %s", get_rel_name(relid));
	if (SPI_processed > 0)
		invalid_fields(relid, psprintf("column \"%s\" already holds values", column));
	SPI_finish();
	cg_leave_owner(&priv);

	randombytes_buf(key, sizeof(key));
	keyval = palloc(VARHDRSZ + sizeof(key));
	SET_VARSIZE(keyval, VARHDRSZ + sizeof(key));
	memcpy(VARDATA(keyval), key, sizeof(key));
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetDatum(column);
	values[2] = project ? CStringGetDatum(project) : (Datum) 0;
	nulls[2] = project ? ' ' : 'n';
	values[3] = PointerGetDatum(keyval);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO crmguard.field_table (target, fields_column, project_column, table_key)"
							  " VALUES ($1::pg_catalog.regclass, $2, $3, $4)",
							  4, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not store the fields table");
	cg_guard_install(relid, FIELDS_GUARD, "fields_guard", "BEFORE INSERT OR UPDATE", NULL);
	/* ANALYZE keeps no sample of the column: pg_stats shows none of its values */
	if (SPI_execute(psprintf("ALTER TABLE %s ALTER COLUMN %s SET STATISTICS 0", qualified_name(relid),
							 quote_identifier(column)), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set the statistics target of column \"%s\"", column);
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	fld_invalidate();
	cg_audit("enable_fields", get_rel_name(relid), NULL, NULL);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(crmguard_define_field);
Datum
crmguard_define_field(PG_FUNCTION_ARGS)
{
	Oid			relid;
	FieldsTable *t;
	char	   *name;
	char	   *type;
	ArrayType  *projects = PG_ARGISNULL(3) ? NULL : PG_GETARG_ARRAYTYPE_P(3);
	bool		unique = PG_ARGISNULL(4) ? false : PG_GETARG_BOOL(4);
	bool		masked = PG_ARGISNULL(5) ? false : PG_GETARG_BOOL(5);
	char	   *mask = PG_ARGISNULL(6) ? "partial" : text_to_cstring(PG_GETARG_TEXT_PP(6));
	bool		required = PG_ARGISNULL(7) ? false : PG_GETARG_BOOL(7);
	FieldType	ftype;
	char	   *column;
	char	   *index_name;
	char	   *expr;
	CgPrivilegedContext priv;
	Oid			types[9] = {OIDOID, TEXTOID, TEXTOID, TEXTARRAYOID, BOOLOID, BOOLOID, TEXTOID, BOOLOID, NAMEOID};
	Datum		values[9];
	char		nulls[9] = "         ";
	int64		id;
	bool		isnull;
	const char *c;

	cg_require_preload();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("target, field_name and field_type must not be NULL")));
	relid = PG_GETARG_OID(0);
	name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	type = text_to_cstring(PG_GETARG_TEXT_PP(2));
	cg_require_relation(relid);
	cg_require_table_owner(relid);
	LockRelationOid(relid, ShareRowExclusiveLock);
	t = fld_table_or_error(relid);
	if (name[0] == '\0' || strlen(name) >= NAMEDATALEN)
		invalid_fields(relid, "a field name has 1 to 63 bytes");
	for (c = name; *c; c++)
		if ((unsigned char) *c < ' ')
			invalid_fields(relid, "a field name has no control characters");
	ftype = fld_parse_type(type);
	if ((int) ftype < 0)
		invalid_fields(relid, psprintf("unknown field type \"%s\"", type));
	if ((int) fld_parse_mask(mask) < 0)
		invalid_fields(relid, psprintf("unknown mask \"%s\"", mask));
	if (strcmp(mask, "email") == 0 && ftype != FT_EMAIL)
		invalid_fields(relid, "mask \"email\" is for fields of type email");
	if (projects != NULL)
	{
		Datum	   *elems;
		bool	   *elem_nulls;
		int			n;
		int			i;

		deconstruct_array(projects, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &n);
		if (n == 0)
			invalid_fields(relid, "projects is NULL for every project, or a list of project names");
		for (i = 0; i < n; i++)
			if (elem_nulls[i] || VARSIZE_ANY_EXHDR(DatumGetTextPP(elems[i])) == 0)
				invalid_fields(relid, "a project name must not be NULL or empty");
	}
	if (fld_find_def(t, name, strlen(name)) != NULL)
		invalid_fields(relid, psprintf("field \"%s\" is already defined", name));

	column = get_attname(relid, t->attnum, false);
	if (required)
	{
		/* rows that would already break the rule (the field is new: they lack it) */
		StringInfoData sql;
		Oid			ptypes[1] = {TEXTARRAYOID};
		Datum		pvalues[1];

		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT 1 FROM ONLY %s t", qualified_name(relid));
		if (t->project_attnum != InvalidAttrNumber && projects != NULL)
			appendStringInfo(&sql, " WHERE t.%s::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)",
							 quote_identifier(get_attname(relid, t->project_attnum, false)));
		appendStringInfoString(&sql, " LIMIT 1");
		pvalues[0] = PointerGetDatum(projects);
		cg_enter_table_owner(&priv, relid);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_plan(cg_prepare_all_rows(relid, sql.data, 1, ptypes), pvalues,
							 projects ? " " : "n", true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read table %s", get_rel_name(relid));
		if (SPI_processed > 0)
			invalid_fields(relid, psprintf("required field \"%s\" would be missing from rows already in the table", name));
		SPI_finish();
		cg_leave_owner(&priv);
	}

	/* the lookup index of find_by_field, unique for unique fields */
	index_name = ChooseRelationName(get_rel_name(relid), name, "cgfield", get_rel_namespace(relid), false);
	if (masked)
		expr = psprintf("((%s OPERATOR(pg_catalog.->) %s) OPERATOR(pg_catalog.->>) 'blind')",
						quote_identifier(column), quote_literal_cstr(name));
	else
		expr = psprintf("(%s OPERATOR(pg_catalog.->>) %s)", quote_identifier(column), quote_literal_cstr(name));

	/*
	 * As the extension owner, like the guard triggers: the owner of the table
	 * may lack CREATE on its schema.  CREATE INDEX itself builds the index as
	 * the table's owner in a security-restricted operation.
	 */
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* byte order: exact matches need no linguistic comparison */
	if (SPI_execute(psprintf("CREATE %sINDEX %s ON %s ((%s COLLATE pg_catalog.\"C\")) WHERE %s OPERATOR(pg_catalog.?) %s",
							 unique ? "UNIQUE " : "", quote_identifier(index_name), qualified_name(relid),
							 expr, quote_identifier(column), quote_literal_cstr(name)),
					false, 0) != SPI_OK_UTILITY ||
		SPI_execute(psprintf("ALTER INDEX %s ALTER COLUMN 1 SET STATISTICS 0",
							 quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), index_name)),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not create the index of field \"%s\"", name);
	SPI_finish();
	cg_leave_owner(&priv);

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(name);
	values[2] = CStringGetTextDatum(type);
	values[3] = projects ? PointerGetDatum(projects) : (Datum) 0;
	nulls[3] = projects ? ' ' : 'n';
	values[4] = BoolGetDatum(unique);
	values[5] = BoolGetDatum(masked);
	values[6] = CStringGetTextDatum(mask);
	values[7] = BoolGetDatum(required);
	values[8] = CStringGetDatum(index_name);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO crmguard.field_def (target, field_name, field_type, projects,"
							  " unique_values, masked, mask, required, index_name)"
							  " VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
							  9, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store the field");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	fld_invalidate();
	cg_audit("define_field", get_rel_name(relid), NULL, field_detail(name, NULL));
	PG_RETURN_INT64(id);
}

PG_FUNCTION_INFO_V1(crmguard_drop_field);
Datum
crmguard_drop_field(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	FieldsTable *t;
	FieldDef   *f;
	char	   *column;
	char	   *index_name;
	char	   *sql;
	CgPrivilegedContext priv;
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2];

	cg_require_preload();
	cg_require_relation(relid);
	cg_require_table_owner(relid);
	LockRelationOid(relid, ShareRowExclusiveLock);
	t = fld_table_or_error(relid);
	f = fld_find_def(t, name, strlen(name));
	if (f == NULL)
		invalid_fields(relid, psprintf("field \"%s\" does not exist", name));
	column = get_attname(relid, t->attnum, false);
	index_name = pstrdup(f->index_name);

	/* the values go with the field, as a column's do with DROP COLUMN */
	sql = psprintf("UPDATE ONLY %s AS %s SET %s = %s.%s OPERATOR(pg_catalog.-) $2"
				   " WHERE %s.%s OPERATOR(pg_catalog.?) $2",
				   qualified_name(relid), fld_raw_alias, quote_identifier(column), fld_raw_alias,
				   quote_identifier(column), fld_raw_alias, quote_identifier(column));
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(name);
	cg_enter_table_owner(&priv, relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	fld_raw_depth++;
	fld_internal = relid;
	PG_TRY();
	{
		if (SPI_execute_plan(cg_prepare_all_rows(relid, sql, 2, types), values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not remove the values of field \"%s\"", name);
		if (OidIsValid(f->indexoid) &&
			SPI_execute(psprintf("DROP INDEX %s",
								 quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), index_name)),
						false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not drop the index of field \"%s\"", name);
	}
	PG_FINALLY();
	{
		fld_raw_depth--;
		fld_internal = InvalidOid;
	}
	PG_END_TRY();
	SPI_finish();
	cg_leave_owner(&priv);

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("DELETE FROM crmguard.field_def WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) $1"
							  " AND field_name OPERATOR(pg_catalog.=) $2", 2, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not drop the field");
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	fld_invalidate();
	cg_audit("drop_field", get_rel_name(relid), NULL, field_detail(name, NULL));
	PG_RETURN_VOID();
}

/*
 * The stored fields of a row as the caller reads it: its rights, its
 * visibility rules (a hidden row is answered like a missing one).  *key is
 * set to the row's key as its sealed values and the audit log name it: the
 * caller's text may spell it otherwise ('08', or a date under another
 * DateStyle).
 */
static Jsonb *
read_row(FieldsTable *t, Oid relid, const char *row_key, char **key)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	Jsonb	   *stored = NULL;
	bool		found;
	int			nest;
	char	   *sql;

	sql = psprintf("SELECT %s.%s, %s.%s FROM ONLY %s AS %s WHERE %s.%s OPERATOR(pg_catalog.=) $1::%s",
				   fld_raw_alias, quote_identifier(get_attname(relid, t->attnum, false)),
				   fld_raw_alias, quote_identifier(get_attname(relid, t->pk_attnum, false)),
				   qualified_name(relid), fld_raw_alias,
				   fld_raw_alias, quote_identifier(get_attname(relid, t->pk_attnum, false)),
				   format_type_be_qualified(t->pk_type));
	values[0] = CStringGetTextDatum(row_key);
	nest = enter_caller();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (run_raw(sql, 1, types, values, NULL, true) != SPI_OK_SELECT)
		elog(ERROR, "could not read table %s", get_rel_name(relid));
	found = SPI_processed > 0;
	if (found)
	{
		bool		isnull;
		Datum		k = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		MemoryContext old = MemoryContextSwitchTo(caller);

		*key = cg_row_key_output(t->pk_type, k);
		if (!isnull)
			stored = DatumGetJsonbPCopy(d);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	AtEOXact_GUC(true, nest);
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("row \"%s\" of table %s does not exist", row_key, get_rel_name(relid))));
	return stored;
}

static void
audit_unmasked(Oid relid, const char *row_key, const char *field, const char *reason)
{
	Jsonb	   *detail = field_detail(field, reason);

	cg_audit_durable("field_unmasked", get_rel_name(relid), row_key,
					 JsonbToCString(NULL, &detail->root, VARSIZE(detail)));
	cg_activity_note("unmask");
}

PG_FUNCTION_INFO_V1(crmguard_field_values);
Datum
crmguard_field_values(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *row_key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	FieldsTable *t;
	ProjectionCache *c;
	Jsonb	   *stored;
	Jsonb	   *result;
	List	   *unmasked = NIL;
	ListCell   *lc;
	bool		clear;

	cg_require_preload();
	cg_require_attested();
	t = fld_table_or_error(relid);
	stored = read_row(t, relid, row_key, &row_key);
	if (stored == NULL)
		PG_RETURN_NULL();
	c = fld_projection_cache(fcinfo, relid);
	clear = c->actor.kind == ACTOR_PRINCIPAL && c->actor.view_masked;
	result = fld_project(c, stored, false, clear, row_key, &unmasked);
	foreach(lc, unmasked)
		audit_unmasked(relid, row_key, (const char *) lfirst(lc), NULL);
	PG_RETURN_JSONB_P(result);
}

PG_FUNCTION_INFO_V1(crmguard_set_field);
Datum
crmguard_set_field(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *row_key;
	char	   *name;
	FieldsTable *t;
	const char *column;
	char	   *sql;
	Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = "   ";
	int			nest;
	uint64		n;

	cg_require_preload();
	cg_require_attested();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("target, row_key and field_name must not be NULL")));
	relid = PG_GETARG_OID(0);
	row_key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	name = text_to_cstring(PG_GETARG_TEXT_PP(2));
	t = fld_table_or_error(relid);
	if (fld_find_def(t, name, strlen(name)) == NULL)
		fld_refuse(NULL, name, psprintf("unknown field \"%s\"", name),
			   psprintf("Table %s has no contact field \"%s\".", get_rel_name(relid), name));
	column = quote_identifier(get_attname(relid, t->attnum, false));

	/* an UPDATE of the caller's projection: the guard keeps what it cannot see */
	sql = psprintf("UPDATE ONLY %s AS t SET %s = %s WHERE t.%s OPERATOR(pg_catalog.=) $1::%s",
				   qualified_name(relid), column,
				   PG_ARGISNULL(3) ?
				   psprintf("t.%s OPERATOR(pg_catalog.-) $2", column) :
				   psprintf("COALESCE(t.%s, '{}'::pg_catalog.jsonb) OPERATOR(pg_catalog.||)"
							" pg_catalog.jsonb_build_object($2, $3)", column),
				   quote_identifier(get_attname(relid, t->pk_attnum, false)),
				   format_type_be_qualified(t->pk_type));
	values[0] = CStringGetTextDatum(row_key);
	values[1] = CStringGetTextDatum(name);
	values[2] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[2] = PG_ARGISNULL(3) ? 'n' : ' ';
	nest = enter_caller();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, 3, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update table %s", get_rel_name(relid));
	n = SPI_processed;
	SPI_finish();
	AtEOXact_GUC(true, nest);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("row \"%s\" of table %s does not exist", row_key, get_rel_name(relid))));
	PG_RETURN_VOID();
}

/* The field a principal asks about: known, and of one of its projects */
static FieldDef *
visible_def(FieldsTable *t, Oid relid, const Actor *a, const char *name)
{
	FieldDef   *f = fld_find_def(t, name, strlen(name));

	if (f == NULL)
		fld_refuse(NULL, name, psprintf("unknown field \"%s\"", name),
			   psprintf("Table %s has no contact field \"%s\".", get_rel_name(relid), name));
	if (a->kind == ACTOR_PRINCIPAL && !fld_actor_sees(a, f))
		fld_refuse(f, name, psprintf("field \"%s\" belongs to another project", name),
			   "The acting principal's projects do not include the field's projects.");
	return f;
}

PG_FUNCTION_INFO_V1(crmguard_find_by_field);
Datum
crmguard_find_by_field(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *value = text_to_cstring(PG_GETARG_TEXT_PP(2));
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	FieldsTable *t;
	FieldDef   *f;
	Actor		actor;
	JsonbValue	in;
	JsonbValue	norm;
	char	   *canonical;
	char	   *lookup;
	char	   *column;
	char	   *expr;
	char	   *sql;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	int			nest;
	uint64		i;

	cg_require_preload();
	cg_require_attested();
	t = fld_table_or_error(relid);
	fld_actor_init(&actor);
	f = visible_def(t, relid, &actor, name);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (actor.kind == ACTOR_NOBODY)
		return (Datum) 0;		/* sees no field */
	in.type = jbvString;
	in.val.string.val = value;
	in.val.string.len = strlen(value);
	canonical = fld_normalise(f, &in, &norm);
	lookup = f->masked ? fld_blind_index(t, f, canonical) : cg_jsonb_scalar_text(&norm);

	column = psprintf("%s.%s", fld_raw_alias, quote_identifier(get_attname(relid, t->attnum, false)));
	if (f->masked)
		expr = psprintf("((%s OPERATOR(pg_catalog.->) %s) OPERATOR(pg_catalog.->>) 'blind')",
						column, quote_literal_cstr(f->name));
	else
		expr = psprintf("(%s OPERATOR(pg_catalog.->>) %s)", column, quote_literal_cstr(f->name));
	sql = psprintf("SELECT %s.%s FROM ONLY %s AS %s WHERE (%s COLLATE pg_catalog.\"C\") OPERATOR(pg_catalog.=) $1"
				   " AND %s OPERATOR(pg_catalog.?) %s",
				   fld_raw_alias, quote_identifier(get_attname(relid, t->pk_attnum, false)),
				   qualified_name(relid), fld_raw_alias, expr, column, quote_literal_cstr(f->name));
	values[0] = CStringGetTextDatum(lookup);
	nest = enter_caller();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (run_raw(sql, 1, types, values, NULL, true) != SPI_OK_SELECT)
		elog(ERROR, "could not read table %s", get_rel_name(relid));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		key = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
		Datum		d = CStringGetTextDatum(cg_row_key_output(t->pk_type, key));

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &d, &isnull);
	}
	SPI_finish();
	AtEOXact_GUC(true, nest);
	return (Datum) 0;
}

static char *
refusal_detail(const char *field, const char *problem)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"field\": ");
	escape_json(&buf, field);
	appendStringInfoString(&buf, ", \"problem\": ");
	escape_json(&buf, problem);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

PG_FUNCTION_INFO_V1(crmguard_unmask);
Datum
crmguard_unmask(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *row_key;
	char	   *name;
	char	   *reason = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	FieldsTable *t;
	FieldDef   *f;
	Actor		actor;
	Jsonb	   *stored;
	JsonbValue	k;
	JsonbValue *v;
	char	   *s;
	int			len;
	char	   *clear;
	const char *r;

	cg_require_preload();
	cg_require_attested();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("target, row_key and field_name must not be NULL")));
	relid = PG_GETARG_OID(0);
	row_key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	name = text_to_cstring(PG_GETARG_TEXT_PP(2));
	t = fld_table_or_error(relid);
	fld_actor_init(&actor);
	for (r = reason; r && isspace((unsigned char) *r); r++)
		;
	if (reason == NULL || *r == '\0')
	{
		cg_audit_durable("field_unmask_refused", get_rel_name(relid), row_key,
						 refusal_detail(name, "no reason"));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a reason is required to unmask a value"),
				 errhint("Say why, as in crmguard.unmask(target, row_key, field, 'inbound call, caller verified').")));
	}
	if (actor.kind != ACTOR_PRINCIPAL || !actor.view_masked)
	{
		cg_audit_durable("field_unmask_refused", get_rel_name(relid), row_key,
						 refusal_detail(name, "no view_masked role"));
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to unmask field \"%s\"", name),
				 errdetail("Only principals with the CRM role \"view_masked\" read masked values.")));
	}
	f = visible_def(t, relid, &actor, name);
	stored = read_row(t, relid, row_key, &row_key);
	if (stored == NULL || !JB_ROOT_IS_OBJECT(stored) || JB_ROOT_IS_SCALAR(stored))
		PG_RETURN_NULL();
	k.type = jbvString;
	k.val.string.val = f->name;
	k.val.string.len = f->namelen;
	v = findJsonbValueFromContainer(&stored->root, JB_FOBJECT, &k);
	if (v == NULL || v->type == jbvNull)
		PG_RETURN_NULL();
	if (!f->masked || v->type != jbvBinary)
		PG_RETURN_TEXT_P(cstring_to_text(cg_jsonb_scalar_text(v)));
	if (!fld_member_string(v->val.binary.data, "enc", &s, &len) ||
		(clear = fld_decrypt(t, f, row_key, s, len)) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("value of field \"%s\" of row \"%s\" cannot be decrypted", f->name, row_key)));
	audit_unmasked(relid, row_key, f->name, reason);
	PG_RETURN_TEXT_P(cstring_to_text(clear));
}

/*
 * One mapped value: a string that is exactly one placeholder takes the
 * source's value as it is; placeholders within text are replaced by text.
 */
static bool
map_value(JsonbValue *tmpl, Jsonb *source, JsonbValue *out)
{
	const char *s = tmpl->val.string.val;
	int			len = tmpl->val.string.len;
	StringInfoData buf;
	int			i = 0;

	initStringInfo(&buf);
	while (i < len)
	{
		const char *close;
		JsonbValue	k;
		JsonbValue *v = NULL;

		if (i + 1 < len && s[i] == '{' && s[i + 1] == '{' &&
			(close = memchr(s + i + 2, '}', len - i - 2)) != NULL &&
			close + 1 < s + len && close[1] == '}')
		{
			k.type = jbvString;
			k.val.string.val = (char *) s + i + 2;
			k.val.string.len = close - (s + i + 2);
			if (source != NULL && JB_ROOT_IS_OBJECT(source) && !JB_ROOT_IS_SCALAR(source))
				v = findJsonbValueFromContainer(&source->root, JB_FOBJECT, &k);
			if (v == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_CG_FIELD_REFUSED),
						 errmsg("unknown placeholder \"{{%.*s}}\"", k.val.string.len, k.val.string.val),
						 errdetail("The source row has no value named \"%.*s\"; placeholders are case-sensitive.",
								   k.val.string.len, k.val.string.val)));
			/* the whole string is this placeholder: the value itself */
			if (i == 0 && close + 2 == s + len)
			{
				if (v->type == jbvNull || (v->type == jbvString && v->val.string.len == 0))
					return false;
				*out = *v;
				return true;
			}
			if (v->type != jbvNull && v->type != jbvBinary)
				appendStringInfoString(&buf, cg_jsonb_scalar_text(v));
			i = close + 2 - s;
			continue;
		}
		appendStringInfoChar(&buf, s[i++]);
	}
	if (buf.len == 0)
		return false;
	out->type = jbvString;
	out->val.string.val = buf.data;
	out->val.string.len = buf.len;
	return true;
}

PG_FUNCTION_INFO_V1(crmguard_map_fields);
Datum
crmguard_map_fields(PG_FUNCTION_ARGS)
{
	Jsonb	   *mapping;
	Jsonb	   *source = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	JsonbParseState *st = NULL;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbValue	v;
	JsonbIteratorToken r;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	mapping = PG_GETARG_JSONB_P(0);
	if (!JB_ROOT_IS_OBJECT(mapping) || JB_ROOT_IS_SCALAR(mapping))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a field mapping must be a JSON object of field names and values")));
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	it = JsonbIteratorInit(&mapping->root);
	while ((r = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		JsonbValue	mapped;

		if (r != WJB_KEY)
			continue;
		(void) JsonbIteratorNext(&it, &v, true);
		if (v.type == jbvBinary)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("mapping of field \"%.*s\" must be a placeholder or a constant",
							k.val.string.len, k.val.string.val)));
		if (v.type == jbvString)
		{
			if (!map_value(&v, source, &mapped))
				continue;
		}
		else if (v.type == jbvNull)
			continue;
		else
			mapped = v;
		pushJsonbValue(&st, WJB_KEY, &k);
		pushJsonbValue(&st, WJB_VALUE, &mapped);
	}
	PG_RETURN_JSONB_P(JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL)));
}
