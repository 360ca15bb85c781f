/*
 * otp_rule.c
 *		Defining and dropping OTP rules.  A definition is checked against the
 *		catalog before anything is written: a bad rule fails with CG020 and
 *		leaves nothing behind.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_oper.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "crmguard.h"

#define OTP_GUARD_INSERT	CG_OTP_GUARD_INSERT
#define OTP_GUARD_UPDATE	CG_OTP_GUARD_UPDATE

static void
invalid_rule(const char *rule, const char *message)
{
	ereport(ERROR,
			(errcode(ERRCODE_CG_INVALID_RULE),
			 errmsg("invalid OTP rule \"%s\": %s", rule, message)));
}

static AttrNumber
user_column(Oid relid, Name column, const char *rule, Oid *type, int32 *typmod)
{
	AttrNumber	attno = get_attnum(relid, NameStr(*column));
	Oid			collation;

	if (attno <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_CG_INVALID_RULE),
				 errmsg("invalid OTP rule \"%s\": column \"%s\" of relation \"%s\" does not exist",
						rule, NameStr(*column), get_rel_name(relid))));
	if (type)
		get_atttypetypmodcoll(relid, attno, type, typmod, &collation);
	return attno;
}

/* Every element of a text[] argument, refused when NULL */
static int
text_elements(ArrayType *array, const char *rule, const char *what, char ***out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	*out = palloc(sizeof(char *) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			invalid_rule(rule, psprintf("%s must not contain NULL", what));
		(*out)[i] = TextDatumGetCString(elems[i]);
	}
	return n;
}

/*
 * Every value must be one the column can hold, its domain's CHECK included,
 * judged as the table's owner (cg_value_fits_type).
 */
static void
check_values_fit(Oid relid, AttrNumber attno, Oid type, int32 typmod, char **values,
				 int n, const char *rule)
{
	int			i;

	for (i = 0; i < n; i++)
		if (!cg_value_fits_type(relid, type, typmod, values[i]))
			ereport(ERROR,
					(errcode(ERRCODE_CG_INVALID_RULE),
					 errmsg("invalid OTP rule \"%s\": column \"%s\" of type %s cannot hold the value \"%s\"",
							rule, get_attname(relid, attno, false),
							format_type_with_typemod(type, typmod), values[i])));
}

/*
 * The equality operator of a column's type (its default btree or hash
 * operator class), as OPERATOR(schema.name), when the parser also picks it
 * for that name and the column's base type; NULL when there is none.
 */
char *
cg_otp_equality_operator(Oid type)
{
	Oid			base = getBaseType(type);
	TypeCacheEntry *tc = lookup_type_cache(base, TYPECACHE_EQ_OPR);
	HeapTuple	tup;
	Form_pg_operator form;
	char	   *schema;
	char	   *name;
	Operator	parsed;
	bool		same;

	if (!OidIsValid(tc->eq_opr))
		return NULL;
	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(tc->eq_opr));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", tc->eq_opr);
	form = (Form_pg_operator) GETSTRUCT(tup);
	schema = get_namespace_name(form->oprnamespace);
	name = pstrdup(NameStr(form->oprname));
	ReleaseSysCache(tup);
	parsed = oper(NULL, list_make2(makeString(schema), makeString(name)), base, base, true, -1);
	same = parsed != NULL && oprid(parsed) == tc->eq_opr;
	if (parsed != NULL)
		ReleaseSysCache(parsed);
	return same ? psprintf("OPERATOR(%s.%s)", quote_identifier(schema), name) : NULL;
}

static bool
has_single_primary_key(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];

	values[0] = ObjectIdGetDatum(relid);
	if (SPI_execute_with_args("SELECT 1 FROM pg_catalog.pg_index i"
							  " WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary"
							  " AND i.indnkeyatts OPERATOR(pg_catalog.=) 1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_index");
	return SPI_processed > 0;
}

/*
 * (Re)create the guards of a table for its current rules: AFTER row
 * triggers, so they judge the row as every BEFORE trigger left it, with a
 * WHEN clause naming the gated columns and values, so a row that enters no
 * gated value, keeps its key and its recipients is never queued.  The clause
 * compares with the column type's own equality and the column's collation,
 * against literals of the column's base type (no domain CHECK runs per
 * row).  The same triggers note when a recipient is set or changed: the
 * WHEN compares values, as no column list would (a column list misses a
 * change a BEFORE trigger makes).  Each term of the UPDATE clause asks
 * whether a column it reads changed, so the clause is false on a row whose
 * columns it reads all kept their values: otp_idle.c relies on that (and a
 * regression test checks it).  Caller is in SPI.
 */
static void
install_guards(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	StringInfoData on_insert;
	StringInfoData on_update;
	uint64		i;
	uint64		nstatus;

	values[0] = ObjectIdGetDatum(relid);
	if (SPI_execute_with_args("SELECT status_column::pg_catalog.text,"
							  " pg_catalog.array_agg(DISTINCT v ORDER BY v)"
							  " FROM crmguard.otp_rule, pg_catalog.unnest(to_values) AS v"
							  " WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) $1"
							  " GROUP BY 1 ORDER BY 1",
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.otp_rule");
	initStringInfo(&on_insert);
	initStringInfo(&on_update);
	nstatus = SPI_processed;
	for (i = 0; i < nstatus; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		char	   *attname = SPI_getvalue(tup, SPI_tuptable->tupdesc, 1);
		const char *column = quote_identifier(attname);
		AttrNumber	attno = get_attnum(relid, attname);
		Oid			type = get_atttype(relid, attno);
		char	   *base = format_type_extended(getBaseType(type), -1,
													FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
		char	   *eq = cg_otp_equality_operator(type);
		bool		isnull;
		Datum	   *elems;
		int			n;
		int			j;
		StringInfoData gated;

		if (eq == NULL)
			elog(ERROR, "column \"%s\" has no equality operator", attname);
		deconstruct_array(DatumGetArrayTypeP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)),
						  TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &n);
		initStringInfo(&gated);
		appendStringInfoChar(&gated, '(');
		for (j = 0; j < n; j++)
			appendStringInfo(&gated, "%sNEW.%s %s %s::%s", j ? " OR " : "", column, eq,
							 quote_literal_cstr(TextDatumGetCString(elems[j])), base);
		appendStringInfoChar(&gated, ')');

		appendStringInfo(&on_insert, "%s%s", i ? " OR " : "", gated.data);
		appendStringInfo(&on_update, "%s((OLD.%s %s NEW.%s) IS NOT TRUE AND %s)",
						 i ? " OR " : "", column, eq, column, gated.data);
	}

	/*
	 * Also fire when a row's key changes (it names the row in its
	 * challenges: refused) and, for rules with a condition, when a row
	 * already in a gated value changes a condition column (it may only now
	 * enter the gated state).
	 */
	if (nstatus > 0)
	{
		char	   *pk = cg_primary_key_column(relid);
		char	   *pk_eq = pk ? cg_otp_equality_operator(get_atttype(relid, get_attnum(relid, pk))) : NULL;
		StringInfoData old_cols;
		StringInfoData new_cols;

		if (pk_eq != NULL)
			appendStringInfo(&on_update, " OR (OLD.%s %s NEW.%s) IS NOT TRUE",
							 quote_identifier(pk), pk_eq, quote_identifier(pk));
		if (SPI_execute_with_args("SELECT DISTINCT pg_catalog.jsonb_path_query(condition, 'lax $.**.field') OPERATOR(pg_catalog.#>>) '{}'"
								  " FROM crmguard.otp_rule"
								  " WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND condition IS NOT NULL"
								  " ORDER BY 1",
								  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read crmguard.otp_rule");
		initStringInfo(&old_cols);
		initStringInfo(&new_cols);
		for (i = 0; i < SPI_processed; i++)
		{
			const char *column = quote_identifier(SPI_getvalue(SPI_tuptable->vals[i],
															   SPI_tuptable->tupdesc, 1));

			appendStringInfo(&old_cols, "%sOLD.%s", i ? ", " : "", column);
			appendStringInfo(&new_cols, "%sNEW.%s", i ? ", " : "", column);
		}
		if (SPI_processed > 0)
			appendStringInfo(&on_update, " OR ((%s) AND ROW(%s, NULL) IS DISTINCT FROM ROW(%s, NULL))",
							 on_insert.data, old_cols.data, new_cols.data);
	}

	/* a recipient set or changed, by the statement or by a BEFORE trigger */
	if (SPI_execute_with_args("SELECT DISTINCT recipient_column::pg_catalog.text"
							  " FROM crmguard.otp_rule"
							  " WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) $1 ORDER BY 1",
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.otp_rule");
	for (i = 0; i < SPI_processed; i++)
	{
		const char *column = quote_identifier(SPI_getvalue(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 1));

		/*
		 * As text, byte for byte: a recipient the type's equality calls
		 * equal ("Bob@x" and "bob@x" in citext) is still another spelling
		 * sent to, and the change is noted.
		 */
		appendStringInfo(&on_insert, " OR NEW.%s IS NOT NULL", column);
		appendStringInfo(&on_update,
						 " OR (OLD.%s::pg_catalog.text COLLATE \"C\") IS DISTINCT FROM (NEW.%s::pg_catalog.text COLLATE \"C\")",
						 column, column);
	}

	cg_guard_remove(relid, OTP_GUARD_INSERT);
	cg_guard_remove(relid, OTP_GUARD_UPDATE);
	if (nstatus == 0)
		return;
	cg_guard_install(relid, OTP_GUARD_INSERT, "otp_guard", "AFTER INSERT", on_insert.data);
	cg_guard_install(relid, OTP_GUARD_UPDATE, "otp_guard", "AFTER UPDATE", on_update.data);
}

/* An interval argument that must be positive (or, with zero_ok, zero) */
static void
check_interval(const char *rule, const char *what, Interval *iv, bool zero_ok)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz then = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															   TimestampTzGetDatum(now),
															   IntervalPGetDatum(iv)));

	if (then < now || (then == now && !zero_ok))
		invalid_rule(rule, psprintf("%s must be %s", what, zero_ok ? "zero or positive" : "positive"));
}

PG_FUNCTION_INFO_V1(crmguard_create_otp_rule);
Datum
crmguard_create_otp_rule(PG_FUNCTION_ARGS)
{
	char	   *rule;
	Oid			relid;
	char		relkind;
	AttrNumber	status_attno;
	Oid			status_type;
	int32		status_typmod;
	char	  **to_values;
	int			nto;
	char	  **from_values = NULL;
	int			nfrom = 0;
	char	   *channel;
	char	   *delivery;
	char	   *code_type;
	int32		code_length;
	Interval   *valid_for;
	int32		max_resends;
	int32		max_attempts;
	char	   *compiled = NULL;
	CgPrivilegedContext priv;
	Oid			types[20] = {TEXTOID, REGCLASSOID, NAMEOID, TEXTARRAYOID, NAMEOID, TEXTOID,
		TEXTOID, TEXTOID, INT4OID, INTERVALOID, INT4OID, INT4OID, TEXTARRAYOID, TEXTARRAYOID,
	JSONBOID, INTERVALOID, INT4OID, INT4OID, INTERVALOID, TEXTOID};
	Datum		values[20];
	char		nulls[20];
	int			i;
	bool		isnull;
	int64		id;
	StringInfoData detail;

	cg_require_preload();
	for (i = 0; i < 19; i++)
		if (PG_ARGISNULL(i) && (i < 12 || i > 14))
			ereport(ERROR,
					(errcode(ERRCODE_CG_INVALID_RULE),
					 errmsg("invalid OTP rule: argument %d must not be NULL", i + 1)));

	rule = text_to_cstring(PG_GETARG_TEXT_PP(0));
	relid = PG_GETARG_OID(1);
	if (rule[0] == '\0')
		invalid_rule(rule, "the rule name is empty");

	relkind = get_rel_relkind(relid);
	if (relkind == '\0')
		invalid_rule(rule, psprintf("relation with OID %u does not exist", relid));
	if (cg_in_inheritance_tree(relid))
		invalid_rule(rule, psprintf("table \"%s\" is partitioned or inherited; rows written to another table of its tree would bypass its guard",
									get_rel_name(relid)));
	if (relkind != RELKIND_RELATION)
		invalid_rule(rule, psprintf("\"%s\" is not a table", get_rel_name(relid)));
	cg_require_table_owner(relid);

	status_attno = user_column(relid, PG_GETARG_NAME(2), rule, &status_type, &status_typmod);
	if (cg_otp_equality_operator(status_type) == NULL)
		invalid_rule(rule, psprintf("column \"%s\" of type %s has no equality operator to decide which values are gated",
									NameStr(*PG_GETARG_NAME(2)), format_type_be(status_type)));
	nto = text_elements(PG_GETARG_ARRAYTYPE_P(3), rule, "to_values", &to_values);
	if (nto == 0)
		invalid_rule(rule, "to_values must name at least one value");
	check_values_fit(relid, status_attno, status_type, status_typmod, to_values, nto, rule);
	(void) user_column(relid, PG_GETARG_NAME(4), rule, NULL, NULL);

	channel = text_to_cstring(PG_GETARG_TEXT_PP(5));
	if (channel[0] == '\0')
		invalid_rule(rule, "the channel is empty");
	delivery = text_to_cstring(PG_GETARG_TEXT_PP(6));
	if (strcmp(delivery, "automatic") != 0 && strcmp(delivery, "manual") != 0)
		invalid_rule(rule, psprintf("delivery must be \"automatic\" or \"manual\", not \"%s\"", delivery));
	code_type = text_to_cstring(PG_GETARG_TEXT_PP(7));
	if (strcmp(code_type, "numeric") != 0 && strcmp(code_type, "alphabetic") != 0 &&
		strcmp(code_type, "alphanumeric") != 0)
		invalid_rule(rule, psprintf("code_type must be \"numeric\", \"alphabetic\" or \"alphanumeric\", not \"%s\"",
									code_type));
	code_length = PG_GETARG_INT32(8);
	if (code_length < 4 || code_length > 12)
		invalid_rule(rule, psprintf("code_length must be between 4 and 12, not %d", code_length));
	valid_for = PG_GETARG_INTERVAL_P(9);
	check_interval(rule, "valid_for", valid_for, false);
	check_interval(rule, "recipient_cooldown", PG_GETARG_INTERVAL_P(15), true);
	if (PG_GETARG_INT32(16) < 1)
		invalid_rule(rule, "challenges_per_row must be at least 1");
	if (PG_GETARG_INT32(17) < 1)
		invalid_rule(rule, "challenges_per_principal must be at least 1");
	check_interval(rule, "challenge_window", PG_GETARG_INTERVAL_P(18), false);
	max_resends = PG_GETARG_INT32(10);
	if (max_resends < 0)
		invalid_rule(rule, "max_resends must not be negative");
	max_attempts = PG_GETARG_INT32(11);
	if (max_attempts < 1)
		invalid_rule(rule, "max_attempts must be at least 1");
	if (!PG_ARGISNULL(12))
	{
		nfrom = text_elements(PG_GETARG_ARRAYTYPE_P(12), rule, "from_values", &from_values);
		check_values_fit(relid, status_attno, status_type, status_typmod, from_values, nfrom, rule);
	}
	if (!PG_ARGISNULL(13))
	{
		char	  **roles;

		(void) text_elements(PG_GETARG_ARRAYTYPE_P(13), rule, "applies_to", &roles);
	}
	if (!PG_ARGISNULL(14))
	{
		cg_enter_table_owner(&priv, relid);
		compiled = cg_criteria_compile(relid, PG_GETARG_JSONB_P(14));
		cg_leave_owner(&priv);
	}

	/*
	 * The lock its guard triggers take; a command putting the table in a
	 * tree, uncommitted at the check above, has committed.
	 */
	if (cg_in_inheritance_tree_locked(relid, ShareRowExclusiveLock))
		invalid_rule(rule, psprintf("table \"%s\" is partitioned or inherited; rows written to another table of its tree would bypass its guard",
									get_rel_name(relid)));
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!has_single_primary_key(relid))
		invalid_rule(rule, psprintf("table \"%s\" needs a single-column primary key to name its rows",
									get_rel_name(relid)));
	values[0] = CStringGetTextDatum(rule);
	if (SPI_execute_with_args("SELECT 1 FROM crmguard.otp_rule WHERE rule_name OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.otp_rule");
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("OTP rule \"%s\" already exists", rule)));

	for (i = 0; i < 20; i++)
	{
		values[i] = i < 19 ? PG_GETARG_DATUM(i) : (Datum) 0;
		nulls[i] = (i < 19 && PG_ARGISNULL(i)) ? 'n' : ' ';
	}
	values[19] = compiled ? CStringGetTextDatum(compiled) : (Datum) 0;
	nulls[19] = compiled ? ' ' : 'n';
	if (SPI_execute_with_args("INSERT INTO crmguard.otp_rule (rule_name, target, status_column, to_values,"
							  " recipient_column, channel, delivery, code_type, code_length, valid_for,"
							  " max_resends, max_attempts, from_values, applies_to, condition,"
							  " recipient_cooldown, challenges_per_row, challenges_per_principal,"
							  " challenge_window, compiled_condition)"
							  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
							  " $16, $17, $18, $19, $20)"
							  " RETURNING id", 20, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store the OTP rule");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	install_guards(relid);
	SPI_finish();
	cg_leave_owner(&priv);

	CacheInvalidateRelcacheByRelid(relid);
	initStringInfo(&detail);
	appendStringInfoString(&detail, "{\"rule\": ");
	escape_json(&detail, rule);
	appendStringInfoChar(&detail, '}');
	cg_audit("create_otp_rule", get_rel_name(relid), NULL,
			 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail.data))));
	PG_RETURN_INT64(id);
}

/*
 * Reinstall the OTP guards of one table from its rules: the upgrade from 1.0
 * recreates them with this version's WHEN clauses and recipient watch.
 */
PG_FUNCTION_INFO_V1(crmguard_otp_reinstall_guards);
Datum
crmguard_otp_reinstall_guards(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	CgPrivilegedContext priv;

	cg_require_preload();
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to reinstall the OTP guards of \"%s\"", get_rel_name(relid))));
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	install_guards(relid);
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(crmguard_drop_otp_rule);
Datum
crmguard_drop_otp_rule(PG_FUNCTION_ARGS)
{
	char	   *rule = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CgPrivilegedContext priv;
	Oid			types[2] = {TEXTOID, OIDOID};
	Datum		values[2];
	bool		isnull;
	Oid			relid;
	StringInfoData detail;

	cg_require_preload();
	values[0] = CStringGetTextDatum(rule);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT target::pg_catalog.oid FROM crmguard.otp_rule"
							  " WHERE rule_name OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.otp_rule");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("OTP rule \"%s\" does not exist", rule)));
	relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	/* ownership is checked as the caller */
	cg_leave_owner(&priv);
	cg_require_table_owner(relid);
	cg_enter_owner(&priv);

	if (SPI_execute_with_args("DELETE FROM crmguard.otp_rule WHERE rule_name OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not drop the OTP rule");
	values[1] = ObjectIdGetDatum(relid);
	install_guards(relid);
	SPI_finish();
	cg_leave_owner(&priv);

	CacheInvalidateRelcacheByRelid(relid);
	initStringInfo(&detail);
	appendStringInfoString(&detail, "{\"rule\": ");
	escape_json(&detail, rule);
	appendStringInfoChar(&detail, '}');
	cg_audit("drop_otp_rule", get_rel_name(relid), NULL,
			 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail.data))));
	PG_RETURN_VOID();
}
