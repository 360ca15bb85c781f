/*
 * criteria.c
 *		The one criteria compiler: jsonb criteria -> a SQL boolean expression
 *		over a table's columns.  OTP conditions, visibility policies and
 *		approval entry criteria all compile here.
 *
 * Criteria are checked against the catalog when a rule is defined, so a bad
 * rule fails then (CG020), never at query time.  Column names reach the SQL
 * only through quote_identifier, values and attribute keys only through
 * quote_literal_cstr, operators only schema-qualified.
 *
 * Semantics: a criterion matches a row or it does not.  A comparison with a
 * NULL column, or with a principal attribute that is missing, matches no row
 * (so "<>" and "not in" do not match NULL columns either; "is null" does).
 * "not" matches exactly the rows its criterion does not match: it compiles to
 * "IS NOT TRUE", never to a NOT that would turn an unknown into an unknown.
 * "all" and "any" are plain AND and OR, which give the same answer whether an
 * unknown counts as false before or after them, and keep indexes usable.
 */
#include "postgres.h"

#include "access/xact.h"

#include "access/stratnum.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "nodes/value.h"
#include "parser/parse_oper.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "crmguard.h"

typedef enum CriteriaOpKind
{
	OP_COMPARE,					/* =, <>, <, <=, >, >= */
	OP_IN,
	OP_NOT_IN,
	OP_IS_NULL,
	OP_IS_NOT_NULL,
	OP_LIKE
} CriteriaOpKind;

typedef struct CriteriaOp
{
	const char *name;
	CriteriaOpKind kind;
	int			strategy;		/* btree strategy; 0 for "<>", the negator of "=" */
} CriteriaOp;


/*
 * The text form of a value read as a column's type of table relid (typmod
 * and domain constraints included), or NULL when the type refuses it.  The
 * value is read and printed with fixed settings (DateStyle ISO, MDY,
 * TimeZone UTC...: cg_pin_output_settings), whoever compiles the criteria
 * and whatever their session says: '03/04/2031' is 4 March, a time without
 * a zone is UTC, for the rule's author, for the rep whose session compiles
 * them into the approval lock's cache, and for every reader of the compiled
 * text.  The type's input function and a domain's CHECK expressions are the
 * table owner's code: they run as the table's owner, restricted, whoever
 * defines the rule.
 */
char *
cg_value_canonical(Oid relid, Oid type, int32 typmod, const char *value)
{
	MemoryContext context = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	CgPrivilegedContext priv;
	Oid			input_fn;
	Oid			ioparam;
	char	   *volatile canonical = NULL;

	getTypeInputInfo(type, &input_fn, &ioparam);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(context);
	PG_TRY();
	{
		Datum		d;
		int			nest;

		cg_enter_table_owner(&priv, relid);
		nest = cg_pin_output_settings();
		d = OidInputFunctionCall(input_fn, (char *) value, ioparam, typmod);
		canonical = cg_row_key_output(type, d);
		AtEOXact_GUC(false, nest);
		cg_leave_owner(&priv);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		/* the subtransaction's abort restores the user and the settings */
		MemoryContextSwitchTo(context);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		canonical = NULL;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(context);
	CurrentResourceOwner = owner;
	return canonical;
}

/* Does the text form of a value fit a column's type of table relid? */
bool
cg_value_fits_type(Oid relid, Oid type, int32 typmod, const char *value)
{
	return cg_value_canonical(relid, type, typmod, value) != NULL;
}

/* SQL access for the approval definition checks: does value fit column col of target? */
PG_FUNCTION_INFO_V1(crmguard_value_fits_column);
Datum
crmguard_value_fits_column(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *col = NameStr(*PG_GETARG_NAME(1));
	AttrNumber	attno;
	Oid			type;
	int32		typmod;
	Oid			collation;

	cg_require_relation(relid);
	attno = get_attnum(relid, col);
	if (attno == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation %s does not exist", col, get_rel_name(relid))));
	get_atttypetypmodcoll(relid, attno, &type, &typmod, &collation);
	PG_RETURN_BOOL(cg_value_fits_type(relid, type, typmod, text_to_cstring(PG_GETARG_TEXT_PP(2))));
}

static const CriteriaOp criteria_ops[] = {
	{"=", OP_COMPARE, BTEqualStrategyNumber},
	{"<>", OP_COMPARE, 0},
	{"<", OP_COMPARE, BTLessStrategyNumber},
	{"<=", OP_COMPARE, BTLessEqualStrategyNumber},
	{">", OP_COMPARE, BTGreaterStrategyNumber},
	{">=", OP_COMPARE, BTGreaterEqualStrategyNumber},
	{"in", OP_IN, BTEqualStrategyNumber},
	{"not in", OP_NOT_IN, BTEqualStrategyNumber},
	{"is null", OP_IS_NULL, 0},
	{"is not null", OP_IS_NOT_NULL, 0},
	{"like", OP_LIKE, 0}
};

/* The column a condition names, with what the compiler needs to know of it */
typedef struct CriteriaColumn
{
	Oid			relid;
	const char *name;
	Oid			type;
	int32		typmod;
} CriteriaColumn;

static void compile_node(Oid relid, JsonbValue *node, StringInfo out);
static char *type_name(Oid type);

/*
 * When set, principal attributes compile to literals of this principal's
 * values (the effective predicate that visibility_predicate shows) instead
 * of sub-SELECTs that read the acting principal at run time.
 */
static bool substituting = false;
static const CgPrincipal *substitute = NULL;

/*
 * When set, columns compile as <prefix>."column" (NEW or OLD in a trigger's
 * WHEN clause), and principal attributes are refused: a row criterion.
 */
static const char *column_prefix = NULL;

/*
 * The run-time value of a principal attribute, as an expression of type
 * base.  A type whose text follows the session's settings (a date, a time)
 * is read with them pinned, by crmguard.attr_as: a rep's DateStyle or
 * TimeZone does not move the attribute a rule compares with.
 */
static char *
attribute_value(const char *key, Oid base)
{
	char	   *value;

	if (column_prefix != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CG_INVALID_RULE),
				 errmsg("invalid criteria: \"principal\" cannot be used here"),
				 errdetail("These criteria judge the row alone, whoever changes it.")));
	if (!substituting && !cg_type_text_is_fixed(base))
		return psprintf("(SELECT crmguard.attr_as(%s, NULL::%s))",
						quote_literal_cstr(key), type_name(base));
	if (!substituting)
		return psprintf("CAST((SELECT crmguard.attr(%s)) AS %s)",
						quote_literal_cstr(key), type_name(base));
	value = cg_principal_attr(substitute, key);
	if (value == NULL)
		return psprintf("CAST(NULL AS %s)", type_name(base));
	if (!cg_type_text_is_fixed(base))
	{
		Oid			in_fn;
		Oid			ioparam;
		int			nest;
		Datum		d;

		getTypeInputInfo(base, &in_fn, &ioparam);
		nest = cg_pin_output_settings();
		d = OidInputFunctionCall(in_fn, value, ioparam, -1);
		AtEOXact_GUC(false, nest);
		value = cg_row_key_output(base, d);
	}
	return psprintf("CAST(%s AS %s)", quote_literal_cstr(value), type_name(base));
}

static void
invalid(const char *message)
{
	ereport(ERROR,
			(errcode(ERRCODE_CG_INVALID_RULE),
			 errmsg("invalid criteria: %s", message)));
}

/* The value of a key of a JSON object, or NULL */
JsonbValue *
cg_jsonb_member(JsonbContainer *object, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(object, JB_FOBJECT, &k);
}

/* The text of a jsonb scalar (strings unquoted), as ->> shows it; NULL for null or a container */
char *
cg_jsonb_scalar_text(const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			return NULL;
	}
}

static char *
string_of(JsonbValue *v)
{
	return pnstrdup(v->val.string.val, v->val.string.len);
}

static bool
is_array(JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data);
}

static bool
is_object(JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data);
}

/* Refuse the first key of the object that is not in allowed[] */
static void
check_keys(JsonbContainer *object, const char *const *allowed, int nallowed)
{
	JsonbIterator *it = JsonbIteratorInit(object);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;
		int			i;

		if (tok != WJB_KEY)
			continue;
		key = string_of(&v);
		for (i = 0; i < nallowed; i++)
			if (strcmp(key, allowed[i]) == 0)
				break;
		if (i == nallowed)
			ereport(ERROR,
					(errcode(ERRCODE_CG_INVALID_RULE),
					 errmsg("invalid criteria: unknown key \"%s\"", key),
					 errhint("A criterion is {\"field\", \"op\", \"value\"}, {\"field\", \"op\", \"principal\"}, "
							 "{\"all\": [...]}, {\"any\": [...]} or {\"not\": {...}}.")));
	}
}

/* A scalar JSON value as the text a column's input function reads */
static char *
scalar_text(JsonbValue *v, const CriteriaColumn *col)
{
	char	   *text = cg_jsonb_scalar_text(v);

	if (text != NULL)
		return text;
	if (v->type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_CG_INVALID_RULE),
				 errmsg("invalid criteria: null is not a value for column \"%s\"", col->name),
				 errhint("Use the operator \"is null\" to match rows where the column is null.")));
	invalid(psprintf("value for column \"%s\" must be a string, number or boolean", col->name));
	return NULL;
}

/*
 * A type's schema-qualified name without typmod.  Not "character" or "bit":
 * those mean character(1) and bit(1), and would truncate or refuse a literal.
 */
static char *
type_name(Oid type)
{
	return format_type_extended(type, -1, FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

/* A value as a quoted literal read the same in every session, refused unless the column's type accepts it */
static char *
valid_literal(JsonbValue *v, const CriteriaColumn *col)
{
	char	   *text = scalar_text(v, col);
	char	   *canonical = cg_value_canonical(col->relid, col->type, col->typmod, text);

	if (canonical == NULL)
		invalid(psprintf("value \"%s\" is not valid for column \"%s\" of type %s",
						 text, col->name, format_type_with_typemod(col->type, col->typmod)));
	return quote_literal_cstr(canonical);
}

/*
 * The operator of the type's default operator class for a comparison, as
 * OPERATOR(schema.name).  It must also be what the parser picks for that name
 * and these operand types, so no operator planted beside it is ever used.
 */
static char *
column_operator(const CriteriaOp *op, const CriteriaColumn *col, Oid rtype)
{
	TypeCacheEntry *tc = lookup_type_cache(getBaseType(col->type),
										   TYPECACHE_EQ_OPR | TYPECACHE_BTREE_OPFAMILY);
	Oid			opno = InvalidOid;

	if (op->strategy == BTEqualStrategyNumber || op->strategy == 0)
	{
		opno = tc->eq_opr;
		if (OidIsValid(opno) && op->strategy == 0)
			opno = get_negator(opno);
	}
	else if (OidIsValid(tc->btree_opf))
		opno = get_opfamily_member(tc->btree_opf, tc->btree_opintype,
								   tc->btree_opintype, op->strategy);

	if (OidIsValid(opno))
	{
		HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
		Form_pg_operator form;
		char	   *schema;
		char	   *name;
		Operator	parsed;
		bool		same;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for operator %u", opno);
		form = (Form_pg_operator) GETSTRUCT(tup);
		schema = get_namespace_name(form->oprnamespace);
		name = pstrdup(NameStr(form->oprname));
		ReleaseSysCache(tup);

		parsed = oper(NULL, list_make2(makeString(schema), makeString(name)),
					  col->type, rtype, true, -1);
		same = parsed != NULL && oprid(parsed) == opno;
		if (parsed != NULL)
			ReleaseSysCache(parsed);
		if (same)
			return psprintf("OPERATOR(%s.%s)", quote_identifier(schema), name);
	}
	invalid(psprintf("column \"%s\" of type %s has no operator \"%s\"",
					 col->name, format_type_be(col->type), op->name));
	return NULL;
}

/*
 * "in" / "not in": col = ANY (ARRAY[...]::type[]), or an OR of comparisons
 * for a type that has no array type (a column that is itself an array)
 */
static void
compile_in(const CriteriaOp *op, JsonbValue *value, const CriteriaColumn *col,
		   StringInfo out)
{
	const char *qcol = column_prefix ? psprintf("%s.%s", column_prefix, quote_identifier(col->name))
		: quote_identifier(col->name);
	const char *opname;
	Oid			base = getBaseType(col->type);	/* literals of the base type, never the domain */
	Oid			array_type = get_array_type(base);
	JsonbIterator *it;
	JsonbValue	elem;
	JsonbIteratorToken tok;
	int			n = 0;

	if (!is_array(value) || JsonContainerSize(value->val.binary.data) == 0)
		invalid(psprintf("operator \"%s\" needs \"value\" as a non-empty array", op->name));
	opname = column_operator(op, col, base);

	appendStringInfoString(out, op->kind == OP_NOT_IN ? "(NOT (" : "(");
	if (OidIsValid(array_type))
		appendStringInfo(out, "%s %s ANY (ARRAY[", qcol, opname);
	it = JsonbIteratorInit(value->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
	{
		char	   *lit;

		if (tok != WJB_ELEM)
			continue;
		lit = valid_literal(&elem, col);
		if (OidIsValid(array_type))
			/* untyped: the cast of the whole array types each element */
			appendStringInfo(out, "%s%s", n++ > 0 ? ", " : "", lit);
		else
			appendStringInfo(out, "%s%s %s %s::%s", n++ > 0 ? " OR " : "",
							 qcol, opname, lit, type_name(base));
	}
	if (OidIsValid(array_type))
		appendStringInfo(out, "]::%s)", type_name(array_type));
	appendStringInfoString(out, op->kind == OP_NOT_IN ? "))" : ")");
}

static bool
is_string_type(Oid type)
{
	Oid			base = getBaseType(type);

	return base == TEXTOID || base == VARCHAROID || base == BPCHAROID || base == NAMEOID;
}

/* {"field": col, "op": op, "value": v} or {"field": col, "op": op, "principal": key} */
static void
compile_condition(Oid relid, JsonbContainer *object, StringInfo out)
{
	static const char *const keys[] = {"field", "op", "value", "principal"};
	JsonbValue *field;
	JsonbValue *opv;
	JsonbValue *value;
	JsonbValue *attribute;
	const CriteriaOp *op = NULL;
	CriteriaColumn col;
	AttrNumber	attno;
	Oid			collation;
	char	   *opname;
	const char *qcol;
	char	   *rhs;
	int			i;

	check_keys(object, keys, lengthof(keys));
	field = cg_jsonb_member(object, "field");
	opv = cg_jsonb_member(object, "op");
	value = cg_jsonb_member(object, "value");
	attribute = cg_jsonb_member(object, "principal");

	if (field == NULL || field->type != jbvString)
		invalid("each condition needs \"field\" naming a column");
	col.relid = relid;
	col.name = string_of(field);
	if (opv == NULL || opv->type != jbvString)
		invalid(psprintf("condition on \"%s\" needs \"op\" naming an operator", col.name));
	opname = string_of(opv);
	for (i = 0; i < (int) lengthof(criteria_ops); i++)
		if (strcmp(opname, criteria_ops[i].name) == 0)
			op = &criteria_ops[i];
	if (op == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CG_INVALID_RULE),
				 errmsg("invalid criteria: unknown operator \"%s\"", opname),
				 errhint("The operators are =, <>, <, <=, >, >=, in, not in, is null, is not null and like.")));

	attno = get_attnum(relid, col.name);
	if (attno < 0)
		invalid(psprintf("system column \"%s\" cannot be used in criteria", col.name));
	if (attno == InvalidAttrNumber)
		invalid(psprintf("column \"%s\" of relation \"%s\" does not exist",
						 col.name, get_rel_name(relid)));
	get_atttypetypmodcoll(relid, attno, &col.type, &col.typmod, &collation);
	qcol = column_prefix ? psprintf("%s.%s", column_prefix, quote_identifier(col.name))
		: quote_identifier(col.name);

	if (value != NULL && attribute != NULL)
		invalid(psprintf("condition on \"%s\" has both \"value\" and \"principal\"", col.name));
	if (op->kind == OP_IS_NULL || op->kind == OP_IS_NOT_NULL)
	{
		if (value != NULL || attribute != NULL)
			invalid(psprintf("operator \"%s\" takes no \"%s\"", op->name,
							 value != NULL ? "value" : "principal"));
		appendStringInfo(out, "(%s %s)", qcol, op->kind == OP_IS_NULL ? "IS NULL" : "IS NOT NULL");
		return;
	}
	if (attribute != NULL && (op->kind == OP_IN || op->kind == OP_NOT_IN))
		invalid(psprintf("operator \"%s\" cannot compare with \"principal\"", op->name));
	if (value == NULL && attribute == NULL)
		invalid(psprintf("operator \"%s\" needs \"value\"%s", op->name,
						 op->kind == OP_IN || op->kind == OP_NOT_IN ? "" : " or \"principal\""));
	if (attribute != NULL && attribute->type != jbvString)
		invalid(psprintf("\"principal\" in the condition on \"%s\" must be a string naming an attribute",
						 col.name));

	switch (op->kind)
	{
		case OP_IN:
		case OP_NOT_IN:
			compile_in(op, value, &col, out);
			break;
		case OP_LIKE:
			if (!is_string_type(col.type))
				invalid(psprintf("operator \"like\" cannot be used on column \"%s\" of type %s",
								 col.name, format_type_be(col.type)));
			if (attribute != NULL)
				rhs = attribute_value(string_of(attribute), TEXTOID);
			else if (value->type != jbvString)
				invalid(psprintf("pattern of operator \"like\" on column \"%s\" must be a string",
								 col.name));
			else
				rhs = psprintf("%s::pg_catalog.text", quote_literal_cstr(string_of(value)));
			appendStringInfo(out, "(%s OPERATOR(pg_catalog.~~) %s)", qcol, rhs);
			break;
		default:
			if (attribute != NULL)
			{
				/*
				 * A sub-SELECT is an InitPlan: the attribute is read once per
				 * statement and the comparison stays indexable.  It is cast to
				 * the base type, so a domain's check never fails at query time.
				 */
				Oid			base = getBaseType(col.type);

				appendStringInfo(out, "(%s %s %s)",
								 qcol, column_operator(op, &col, base),
								 attribute_value(string_of(attribute), base));
			}
			else
			{
				/* a literal of the base type: a domain's CHECK never runs here */
				Oid			base = getBaseType(col.type);

				rhs = psprintf("%s::%s", valid_literal(value, &col), type_name(base));
				appendStringInfo(out, "(%s %s %s)", qcol,
								 column_operator(op, &col, base), rhs);
			}
			break;
	}
}

/* {"all": [...]} or {"any": [...]}: a non-empty array of criteria */
static void
compile_list(Oid relid, JsonbValue *list, const char *key, StringInfo out)
{
	JsonbIterator *it;
	JsonbValue	elem;
	JsonbIteratorToken tok;
	int			n = 0;

	if (!is_array(list) || JsonContainerSize(list->val.binary.data) == 0)
		invalid(psprintf("\"%s\" needs a non-empty array of criteria", key));
	appendStringInfoChar(out, '(');
	it = JsonbIteratorInit(list->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
	{
		if (tok != WJB_ELEM)
			continue;
		if (n++ > 0)
			appendStringInfoString(out, strcmp(key, "all") == 0 ? " AND " : " OR ");
		compile_node(relid, &elem, out);
	}
	appendStringInfoChar(out, ')');
}

static void
compile_node(Oid relid, JsonbValue *node, StringInfo out)
{
	static const char *const combinators[] = {"all", "any", "not"};
	JsonbContainer *object;
	int			i;

	check_stack_depth();
	if (!is_object(node))
		invalid("each criterion must be a JSON object");
	object = node->val.binary.data;

	for (i = 0; i < (int) lengthof(combinators); i++)
	{
		JsonbValue *v = cg_jsonb_member(object, combinators[i]);

		if (v == NULL)
			continue;
		if (JsonContainerSize(object) != 1)
			invalid(psprintf("\"%s\" must be the only key of its criterion", combinators[i]));
		if (i < 2)
			compile_list(relid, v, combinators[i], out);
		else
		{
			appendStringInfoChar(out, '(');
			compile_node(relid, v, out);
			appendStringInfoString(out, " IS NOT TRUE)");
		}
		return;
	}
	compile_condition(relid, object, out);
}

/*
 * Compile criteria for a table; NULL (or JSON null) matches every row.
 * Anything the catalog does not support is refused with CG020.
 */
char *
cg_criteria_compile(Oid relid, Jsonb *criteria)
{
	StringInfoData out;
	JsonbValue	root;
	char		relkind = get_rel_relkind(relid);

	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE &&
		relkind != RELKIND_FOREIGN_TABLE && relkind != RELKIND_VIEW &&
		relkind != RELKIND_MATVIEW)
	{
		if (relkind == '\0')
			invalid(psprintf("relation with OID %u does not exist", relid));
		invalid(psprintf("\"%s\" is not a table or view", get_rel_name(relid)));
	}

	if (criteria == NULL)
		return pstrdup("true");
	if (JB_ROOT_IS_SCALAR(criteria))
	{
		JsonbValue	scalar;

		if (JsonbExtractScalar(&criteria->root, &scalar) && scalar.type == jbvNull)
			return pstrdup("true");
	}

	root.type = jbvBinary;
	root.val.binary.data = &criteria->root;
	root.val.binary.len = VARSIZE(criteria) - VARHDRSZ;
	initStringInfo(&out);
	compile_node(relid, &root, &out);
	return out.data;
}

/*
 * Compile criteria with the attributes of principal p (NULL: nobody) written
 * in as literals: the predicate as it stands for that principal.
 */
char *
cg_criteria_compile_for(Oid relid, Jsonb *criteria, const CgPrincipal *p)
{
	char	   *result;

	substituting = true;
	substitute = p;
	PG_TRY();
	{
		result = cg_criteria_compile(relid, criteria);
	}
	PG_FINALLY();
	{
		substituting = false;
		substitute = NULL;
	}
	PG_END_TRY();
	return result;
}

/*
 * Compile row criteria over <prefix>."column" (a trigger's WHEN clause over
 * NEW or OLD); principal attributes are refused with CG020.
 */
char *
cg_criteria_compile_row(Oid relid, Jsonb *criteria, const char *prefix)
{
	char	   *result;

	column_prefix = prefix;
	PG_TRY();
	{
		result = cg_criteria_compile(relid, criteria);
	}
	PG_FINALLY();
	{
		column_prefix = NULL;
	}
	PG_END_TRY();
	return result;
}

/* ---------------------------------------------------------------------------
 * Evaluating compiled criteria against one row
 * ---------------------------------------------------------------------------
 */

/* Prepared plans of one table, one per compiled text */
typedef struct RowPlanTable
{
	Oid			relid;			/* hash key */
	bool		stale;			/* the table changed: free the plans when idle */
	List	   *plans;			/* of RowPlan */
} RowPlanTable;

typedef struct RowPlan
{
	char	   *compiled;
	SPIPlanPtr	plan;
} RowPlan;

static HTAB *row_plans = NULL;
static MemoryContext row_plan_context = NULL;
static bool row_plans_stale = false;
static int	row_plan_depth = 0;	/* evaluations running: plans may be in use */

/*
 * A table changed (a column could have gone): mark its plans.  They are freed
 * on a later call, as an invalidation can arrive while one of them executes.
 */
static void
row_plan_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	RowPlanTable *entry;

	if (row_plans == NULL)
		return;
	hash_seq_init(&seq, row_plans);
	while ((entry = hash_seq_search(&seq)) != NULL)
		if (relid == InvalidOid || entry->relid == relid)
		{
			entry->stale = true;
			row_plans_stale = true;
		}
}

static void
free_stale_plans(void)
{
	HASH_SEQ_STATUS seq;
	RowPlanTable *entry;

	hash_seq_init(&seq, row_plans);
	while ((entry = hash_seq_search(&seq)) != NULL)
	{
		ListCell   *lc;

		if (!entry->stale)
			continue;
		foreach(lc, entry->plans)
		{
			RowPlan    *rp = (RowPlan *) lfirst(lc);

			SPI_freeplan(rp->plan);
			pfree(rp->compiled);
			pfree(rp);
		}
		list_free(entry->plans);
		hash_search(row_plans, &entry->relid, HASH_REMOVE, NULL);
	}
	row_plans_stale = false;
}

/* The plan of SELECT <compiled> over a row of the table, prepared once */
static SPIPlanPtr
row_plan(Oid relid, const char *compiled)
{
	Oid			rowtype = get_rel_type_id(relid);
	RowPlanTable *entry;
	SPIPlanPtr	plan;
	RowPlan    *rp;
	MemoryContext old;
	ListCell   *lc;
	bool		found;

	if (!OidIsValid(rowtype))
		elog(ERROR, "relation %u has no row type", relid);
	if (row_plans == NULL)
	{
		HASHCTL		ctl;

		row_plan_context = AllocSetContextCreate(CacheMemoryContext, "crmguard criteria plans",
												 ALLOCSET_SMALL_SIZES);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(RowPlanTable);
		ctl.hcxt = row_plan_context;
		row_plans = hash_create("crmguard criteria plans", 16, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		cg_register_relcache_callback(row_plan_callback, (Datum) 0);
	}
	entry = hash_search(row_plans, &relid, HASH_FIND, NULL);
	if (entry != NULL && !entry->stale)
		foreach(lc, entry->plans)
		{
			rp = (RowPlan *) lfirst(lc);
			if (strcmp(rp->compiled, compiled) == 0)
				return rp->plan;
		}

	plan = SPI_prepare(psprintf("SELECT %s FROM (SELECT ($1).*) AS r", compiled), 1, &rowtype);
	if (plan == NULL)
		elog(ERROR, "could not prepare criteria: %s", SPI_result_code_string(SPI_result));
	/* a stale table still in use gets a one-off plan, freed by SPI_finish */
	if (entry != NULL && entry->stale)
		return plan;

	SPI_keepplan(plan);
	old = MemoryContextSwitchTo(row_plan_context);
	entry = hash_search(row_plans, &relid, HASH_ENTER, &found);
	if (!found)
	{
		entry->stale = false;
		entry->plans = NIL;
	}
	rp = palloc(sizeof(RowPlan));
	rp->compiled = pstrdup(compiled);
	rp->plan = plan;
	entry->plans = lappend(entry->plans, rp);
	MemoryContextSwitchTo(old);
	return plan;
}

/*
 * Does the row (a composite Datum of the table's row type) match compiled
 * criteria?  NULL counts as no.  The expression casts to the table's column
 * types and compares with their operators: it runs as the table's owner.
 */
bool
cg_criteria_row_matches(Oid relid, const char *compiled, Datum row)
{
	CgPrivilegedContext priv;
	volatile bool result = false;

	cg_enter_table_owner(&priv, relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (row_plans_stale && row_plan_depth == 0)
		free_stale_plans();
	row_plan_depth++;
	PG_TRY();
	{
		SPIPlanPtr	plan = row_plan(relid, compiled);
		bool		isnull;
		Datum		value;

		if (SPI_execute_plan(plan, &row, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not evaluate criteria: %s", compiled);
		value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		result = !isnull && DatumGetBool(value);
	}
	PG_FINALLY();
	{
		row_plan_depth--;
	}
	PG_END_TRY();
	SPI_finish();
	cg_leave_owner(&priv);
	return result;
}

PG_FUNCTION_INFO_V1(crmguard_compile_criteria);
Datum
crmguard_compile_criteria(PG_FUNCTION_ARGS)
{
	cg_require_preload();
	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(cg_criteria_compile(PG_GETARG_OID(0),
														 PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1))));
}
