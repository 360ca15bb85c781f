/*
 * visibility.c
 *		Row visibility criteria: rules on who sees (and edits) which rows of
 *		a table, enforced by row-level security.
 *
 * A guarded table gets ENABLE and FORCE ROW LEVEL SECURITY, so its owner is
 * bound too, and no policy of its own: the policy of each statement comes
 * from the rewriter hook below, specialised to the acting principal.  It is
 * ordinary SQL compiled by the criteria compiler:
 *
 *		<one-time guard on the principal's CRM roles>
 *		AND (<criteria of rule 1> OR <criteria of rule 2> ...)
 *
 * holding only the rules of the principal's roles ("true" for role admin,
 * "false" for nobody).  Attribute values and the team are read at run time,
 * once per statement (one InitPlan: merge_value_sublinks), so a cached plan
 * stays right for any principal with the same roles, and each rule's
 * comparison on its column can drive an index scan on its own, which an OR
 * over every role's rules would not.  A guard that the principal still holds
 * those roles makes a plan cached for other roles return no row rather than
 * someone else's (and a plan kept past a token's expiry return nothing);
 * crmguard also resets the plan cache when the acting principal's roles
 * change.  Without crmguard loaded, a guarded table shows nothing (RLS
 * without policies).
 *
 * Rules are kept in crmguard.visibility_rule; guard.c keeps anyone but a
 * superuser from switching RLS off or widening it with a policy of their
 * own.
 */
#include "postgres.h"

#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "catalog/pg_am.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "nodes/supportnodes.h"
#include "nodes/pathnodes.h"
#include "optimizer/clauses.h"
#include "optimizer/optimizer.h"
#include "optimizer/planner.h"
#include "parser/parse_clause.h"
#include "parser/parse_collate.h"
#include "parser/parse_node.h"
#include "parser/parse_relation.h"
#include "parser/parser.h"
#include "rewrite/rowsecurity.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/selfuncs.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "crmguard.h"

#define ADMIN_ROLE	"admin"

static void
invalid_rule(const char *rule, const char *message)
{
	ereport(ERROR,
			(errcode(ERRCODE_CG_INVALID_RULE),
			 errmsg("invalid visibility rule \"%s\": %s", rule, message)));
}

/*
 * A table that row-level security can guard completely: not a partition or
 * inheritance parent or child, whose rows could be read around its policies.
 */
static void
check_target(Oid relid, const char *rule)
{
	char		relkind = get_rel_relkind(relid);

	if (relkind == '\0')
		invalid_rule(rule, psprintf("relation with OID %u does not exist", relid));
	if (cg_in_inheritance_tree(relid))
		invalid_rule(rule, psprintf("table \"%s\" is partitioned or inherited; its rows can be read around its policies",
									get_rel_name(relid)));
	if (relkind != RELKIND_RELATION)
		invalid_rule(rule, psprintf("\"%s\" is not a table", get_rel_name(relid)));
	cg_require_table_owner(relid);
}

static void
check_audience(const char *rule, text *audience)
{
	if (audience == NULL || VARSIZE_ANY_EXHDR(audience) == 0)
		invalid_rule(rule, "the audience must name a CRM role");
}

/*
 * Rule names of expose_public and expose_by_owner, derived from the target;
 * a target that names no relation has no name to derive one from.
 */
static char *
derived_name(Oid relid, const char *kind, const char *audience)
{
	char	   *relname = get_rel_name(relid);

	if (relname == NULL)
		invalid_rule("", psprintf("relation with OID %u does not exist", relid));
	return psprintf("%s.%s %s %s", get_namespace_name(get_rel_namespace(relid)),
					relname, kind, audience);
}

/*
 * A rule change locks its table as CREATE POLICY would (ACCESS EXCLUSIVE):
 * it waits for the transactions reading the table, and every statement
 * after it plans with the new rules.  A weaker lock would let a transaction
 * already holding the table keep a revoked rule until it ends.
 */
static void
lock_rules_of(Oid relid)
{
	LockRelationOid(relid, AccessExclusiveLock);
}

/*
 * The lock of a rule that is being made, and check_target's tree check
 * again under it: a command that put the table in an inheritance tree and
 * had not committed at check_target has now.
 */
static void
lock_target(Oid relid, const char *rule)
{
	if (cg_in_inheritance_tree_locked(relid, AccessExclusiveLock))
		invalid_rule(rule, psprintf("table \"%s\" is partitioned or inherited; its rows can be read around its policies",
									get_rel_name(relid)));
}

/* Is row-level security enabled and forced on the table? */
static bool
rls_forced(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	bool		forced;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	forced = ((Form_pg_class) GETSTRUCT(tup))->relrowsecurity &&
		((Form_pg_class) GETSTRUCT(tup))->relforcerowsecurity;
	ReleaseSysCache(tup);
	return forced;
}

/*
 * Switch row-level security on for a table with rules (off again when the
 * last rule goes, unless policies of the DBA's own remain), and make every
 * backend re-plan the statements that read it.  Runs as the caller, who
 * owns the table.
 */
static void
guard_table(Oid relid)
{
	const char *table = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												   get_rel_name(relid));
	CgPrivilegedContext priv;
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	bool		has_rules;
	bool		other_policies;

	/* the latest snapshot: a rule another session committed before our lock counts */
	CommandCounterIncrement();
	values[0] = ObjectIdGetDatum(relid);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetLatestSnapshot());
	if (SPI_execute_with_args("SELECT 1 FROM crmguard.visibility_rule"
							  " WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.visibility_rule");
	PopActiveSnapshot();
	has_rules = SPI_processed > 0;
	SPI_finish();
	cg_leave_owner(&priv);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	cg_guard_internal = true;
	PG_TRY();
	{
		if (has_rules)
		{
			if (!rls_forced(relid) &&
				SPI_execute(psprintf("ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY",
									 table), false, 0) != SPI_OK_UTILITY)
				elog(ERROR, "could not switch on row-level security on %s", table);
		}
		else
		{
			if (SPI_execute_with_args("SELECT 1 FROM pg_catalog.pg_policy"
									  " WHERE polrelid OPERATOR(pg_catalog.=) $1",
									  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not read pg_policy");
			other_policies = SPI_processed > 0;
			if (!other_policies &&
				SPI_execute(psprintf("ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY",
									 table), false, 0) != SPI_OK_UTILITY)
				elog(ERROR, "could not switch off row-level security on %s", table);
		}
	}
	PG_FINALLY();
	{
		cg_guard_internal = false;
	}
	PG_END_TRY();
	SPI_finish();
	CacheInvalidateRelcacheByRelid(relid);
}

/* Store a checked rule and guard its table */
static int64
add_rule(const char *rule, Oid relid, const char *kind, const char *audience,
		 Jsonb *criteria, const char *owner_column, bool hierarchy,
		 const char *access, const char *compiled)
{
	Oid			types[9] = {TEXTOID, OIDOID, TEXTOID, TEXTOID, JSONBOID, TEXTOID, BOOLOID,
	TEXTOID, TEXTOID};
	Datum		values[9];
	char		nulls[9] = "         ";
	CgPrivilegedContext priv;
	bool		isnull;
	int64		id;
	StringInfoData detail;

	values[0] = CStringGetTextDatum(rule);
	values[1] = ObjectIdGetDatum(relid);
	values[2] = CStringGetTextDatum(kind);
	values[3] = CStringGetTextDatum(audience);
	values[4] = criteria ? JsonbPGetDatum(criteria) : (Datum) 0;
	nulls[4] = criteria ? ' ' : 'n';
	values[5] = owner_column ? CStringGetTextDatum(owner_column) : (Datum) 0;
	nulls[5] = owner_column ? ' ' : 'n';
	values[6] = BoolGetDatum(hierarchy);
	values[7] = CStringGetTextDatum(access);
	values[8] = CStringGetTextDatum(compiled);

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT 1 FROM crmguard.visibility_rule WHERE rule_name OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.visibility_rule");
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("visibility rule \"%s\" already exists", rule)));
	if (SPI_execute_with_args("INSERT INTO crmguard.visibility_rule (rule_name, target, kind, audience,"
							  " criteria, owner_column, hierarchy, access, compiled)"
							  " VALUES ($1, $2::pg_catalog.regclass, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
							  9, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store the visibility rule");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	cg_leave_owner(&priv);

	guard_table(relid);

	initStringInfo(&detail);
	appendStringInfoString(&detail, "{\"rule\": ");
	escape_json(&detail, rule);
	appendStringInfoString(&detail, ", \"audience\": ");
	escape_json(&detail, audience);
	appendStringInfoString(&detail, ", \"access\": ");
	escape_json(&detail, access);
	appendStringInfoChar(&detail, '}');
	cg_audit(psprintf("expose_%s", kind), get_rel_name(relid), NULL,
			 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail.data))));
	return id;
}

static char *
text_arg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/* expose(target, rule_name, audience, criteria, access) */
PG_FUNCTION_INFO_V1(crmguard_expose);
Datum
crmguard_expose(PG_FUNCTION_ARGS)
{
	char	   *rule = text_arg(fcinfo, 1);
	char	   *access = text_arg(fcinfo, 4);
	Oid			relid;
	char	   *compiled;

	cg_require_preload();
	if (rule == NULL || rule[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_CG_INVALID_RULE),
				 errmsg("invalid visibility rule: the rule name is empty")));
	if (PG_ARGISNULL(0))
		invalid_rule(rule, "the target table is NULL");
	relid = PG_GETARG_OID(0);
	check_target(relid, rule);
	check_audience(rule, PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2));
	if (access == NULL || (strcmp(access, "read") != 0 && strcmp(access, "edit") != 0))
		invalid_rule(rule, psprintf("access must be \"read\" or \"edit\", not \"%s\"",
									access ? access : "NULL"));
	if (PG_ARGISNULL(3))
		invalid_rule(rule, "criteria are NULL; use crmguard.expose_public to show every row");
	lock_target(relid, rule);
	compiled = cg_criteria_compile(relid, PG_GETARG_JSONB_P(3));
	PG_RETURN_INT64(add_rule(rule, relid, "criteria", text_arg(fcinfo, 2), PG_GETARG_JSONB_P(3),
							 NULL, false, access, compiled));
}

/* expose_public(target, audience): every row, read only */
PG_FUNCTION_INFO_V1(crmguard_expose_public);
Datum
crmguard_expose_public(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *audience = text_arg(fcinfo, 1);
	char	   *rule;

	cg_require_preload();
	if (PG_ARGISNULL(0))
		invalid_rule("", "the target table is NULL");
	relid = PG_GETARG_OID(0);
	rule = derived_name(relid, "public to", audience ? audience : "");
	check_target(relid, rule);
	check_audience(rule, PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1));
	lock_target(relid, rule);
	PG_RETURN_INT64(add_rule(rule, relid, "public", audience, NULL, NULL, false, "read", "true"));
}

/* expose_by_owner(target, owner_column, audience, hierarchy) */
PG_FUNCTION_INFO_V1(crmguard_expose_by_owner);
Datum
crmguard_expose_by_owner(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *column = PG_ARGISNULL(1) ? NULL : NameStr(*PG_GETARG_NAME(1));
	char	   *audience = text_arg(fcinfo, 2);
	bool		hierarchy = PG_ARGISNULL(3) ? true : PG_GETARG_BOOL(3);
	char	   *rule;
	AttrNumber	attno;
	Oid			type;
	char	   *compiled;

	cg_require_preload();
	if (PG_ARGISNULL(0))
		invalid_rule("", "the target table is NULL");
	relid = PG_GETARG_OID(0);
	rule = derived_name(relid, "by owner for", audience ? audience : "");
	check_target(relid, rule);
	check_audience(rule, PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2));
	if (column == NULL)
		invalid_rule(rule, "the owner column is NULL");
	attno = get_attnum(relid, column);
	if (attno <= 0)
		invalid_rule(rule, psprintf("column \"%s\" of relation \"%s\" does not exist",
									column, get_rel_name(relid)));
	type = getBaseType(get_atttype(relid, attno));
	if (type != INT8OID && type != INT4OID && type != INT2OID)
		invalid_rule(rule, psprintf("owner column \"%s\" is of type %s, not an integer holding principal ids",
									column, format_type_be(type)));
	lock_target(relid, rule);

	/*
	 * A bigint owner: in_team(), a hashed test per row that the planner can
	 * also turn into the index condition "owner = ANY (team)".  A smaller
	 * integer: the btree family's cross-type "=" against the team's array.
	 */
	if (hierarchy && type == INT8OID && get_atttype(relid, attno) == INT8OID)
		compiled = psprintf("crmguard.in_team(%s, (SELECT crmguard.team()))", quote_identifier(column));
	else if (hierarchy)
		compiled = psprintf("(%s OPERATOR(pg_catalog.=) ANY ((SELECT crmguard.team())::pg_catalog.int8[]))",
							quote_identifier(column));
	else
		compiled = psprintf("(%s OPERATOR(pg_catalog.=) (SELECT crmguard.current_principal()))",
							quote_identifier(column));
	PG_RETURN_INT64(add_rule(rule, relid, "owner", audience, NULL, column, hierarchy,
							 "edit", compiled));
}

/* unexpose(rule_name) */
PG_FUNCTION_INFO_V1(crmguard_unexpose);
Datum
crmguard_unexpose(PG_FUNCTION_ARGS)
{
	char	   *rule = text_to_cstring(PG_GETARG_TEXT_PP(0));
	CgPrivilegedContext priv;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	bool		isnull;
	Oid			relid;
	StringInfoData detail;

	cg_require_preload();
	values[0] = CStringGetTextDatum(rule);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT target::pg_catalog.oid FROM crmguard.visibility_rule"
							  " WHERE rule_name OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.visibility_rule");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("visibility rule \"%s\" does not exist", rule)));
	relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	cg_leave_owner(&priv);

	/* ownership is checked as the caller */
	if (get_rel_relkind(relid) != '\0')
	{
		cg_require_table_owner(relid);
		lock_rules_of(relid);
	}

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("DELETE FROM crmguard.visibility_rule WHERE rule_name OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not drop the visibility rule");
	SPI_finish();
	cg_leave_owner(&priv);

	if (get_rel_relkind(relid) != '\0')
		guard_table(relid);

	initStringInfo(&detail);
	appendStringInfoString(&detail, "{\"rule\": ");
	escape_json(&detail, rule);
	appendStringInfoChar(&detail, '}');
	cg_audit("unexpose", get_rel_name(relid), NULL,
			 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail.data))));
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------------
 * Explaining visibility
 * ---------------------------------------------------------------------------
 */

typedef struct VisibilityRule
{
	char	   *name;
	char	   *kind;
	char	   *audience;
	Jsonb	   *criteria;
	char	   *owner_column;
	bool		hierarchy;
	char	   *access;
	char	   *compiled;
} VisibilityRule;

/* The rules of a table, in rule order, in the caller's memory context */
static List *
rules_of(Oid relid)
{
	CgPrivilegedContext priv;
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	List	   *rules = NIL;
	uint64		i;

	values[0] = ObjectIdGetDatum(relid);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT rule_name, kind, audience, criteria, owner_column::pg_catalog.text,"
							  " hierarchy, access, compiled FROM crmguard.visibility_rule"
							  " WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) $1 ORDER BY rule_name",
							  1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.visibility_rule");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext old = MemoryContextSwitchTo(caller);
		VisibilityRule *r = palloc0(sizeof(VisibilityRule));
		bool		isnull;
		Datum		d;

		r->name = SPI_getvalue(tup, desc, 1);
		r->kind = SPI_getvalue(tup, desc, 2);
		r->audience = SPI_getvalue(tup, desc, 3);
		d = SPI_getbinval(tup, desc, 4, &isnull);
		r->criteria = isnull ? NULL : DatumGetJsonbPCopy(d);
		r->owner_column = SPI_getvalue(tup, desc, 5);
		r->hierarchy = DatumGetBool(SPI_getbinval(tup, desc, 6, &isnull));
		r->access = SPI_getvalue(tup, desc, 7);
		r->compiled = SPI_getvalue(tup, desc, 8);
		rules = lappend(rules, r);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	cg_leave_owner(&priv);
	return rules;
}

static bool
principal_has_role(const CgPrincipal *p, const char *role)
{
	int			i;

	for (i = 0; p != NULL && i < p->nroles; i++)
		if (strcmp(p->roles[i], role) == 0)
			return true;
	return false;
}

/*
 * The principal a question is about: the named one, or the caller's own when
 * NULL.  Asking about someone else takes a superuser or an admin principal.
 */
static const CgPrincipal *
subject_principal(FunctionCallInfo fcinfo, int argno, int64 *id)
{
	const CgPrincipal *self = cg_current_principal();
	int64		self_id = self ? self->id : 0;
	bool		self_admin = principal_has_role(self, ADMIN_ROLE);
	const CgPrincipal *p;

	if (PG_ARGISNULL(argno))
	{
		*id = self_id;
		return self;
	}
	p = cg_principal_by_name(text_to_cstring(PG_GETARG_TEXT_PP(argno)));
	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("principal \"%s\" does not exist", text_to_cstring(PG_GETARG_TEXT_PP(argno)))));
	if (p->id != self_id && !superuser() && !self_admin)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to explain the visibility of another principal"),
				 errhint("Only a superuser or a principal with role \"%s\" can ask about others.",
						 ADMIN_ROLE)));
	*id = p->id;
	return p->active ? p : NULL;
}

/* visibility_predicate(target, principal): the predicate as it stands for the principal */
PG_FUNCTION_INFO_V1(crmguard_visibility_predicate);
Datum
crmguard_visibility_predicate(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	int64		id;
	const CgPrincipal *p;
	StringInfoData out;
	List	   *rules;
	ListCell   *lc;
	int			n = 0;

	cg_require_preload();
	cg_require_relation(relid);
	p = subject_principal(fcinfo, 1, &id);
	if (p != NULL)
		p = cg_principal_by_name(p->name);	/* the cache may have been reloaded */
	rules = rules_of(relid);
	if (rules == NIL)
		PG_RETURN_TEXT_P(cstring_to_text("true"));	/* not guarded by crmguard */
	if (p == NULL)
		PG_RETURN_TEXT_P(cstring_to_text("false"));
	if (principal_has_role(p, ADMIN_ROLE))
		PG_RETURN_TEXT_P(cstring_to_text("true"));

	initStringInfo(&out);
	foreach(lc, rules)
	{
		VisibilityRule *r = lfirst(lc);
		char	   *arm;

		if (!principal_has_role(p, r->audience))
			continue;
		if (strcmp(r->kind, "public") == 0)
			PG_RETURN_TEXT_P(cstring_to_text("true"));
		if (strcmp(r->kind, "owner") == 0)
		{
			if (r->hierarchy)
			{
				ArrayType  *team = cg_principal_team(p->id);
				Datum	   *ids;
				int			nids;
				int			i;
				StringInfoData lit;

				deconstruct_array(team, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
								  &ids, NULL, &nids);
				initStringInfo(&lit);
				for (i = 0; i < nids; i++)
					appendStringInfo(&lit, "%s" INT64_FORMAT, i ? "," : "", DatumGetInt64(ids[i]));
				arm = psprintf("(%s OPERATOR(pg_catalog.=) ANY ('{%s}'::pg_catalog.int8[]))",
							   quote_identifier(r->owner_column), lit.data);
			}
			else
				arm = psprintf("(%s OPERATOR(pg_catalog.=) " INT64_FORMAT "::pg_catalog.int8)",
							   quote_identifier(r->owner_column), p->id);
		}
		else
			arm = cg_criteria_compile_for(relid, r->criteria, p);
		appendStringInfo(&out, "%s%s", n++ > 0 ? " OR " : "", arm);
	}
	if (n == 0)
		PG_RETURN_TEXT_P(cstring_to_text("false"));
	PG_RETURN_TEXT_P(cstring_to_text(n > 1 ? psprintf("(%s)", out.data) : out.data));
}

static char *
qualified_operator(Oid opno)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	Form_pg_operator form;
	char	   *result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opno);
	form = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("OPERATOR(%s.%s)", quote_identifier(get_namespace_name(form->oprnamespace)),
					  NameStr(form->oprname));
	ReleaseSysCache(tup);
	return result;
}

/*
 * The row of a table with primary key row_key, read as the caller, so that
 * a row the caller cannot see is "not found" exactly like a missing one.
 */
static Datum
row_as_caller(Oid relid, const char *row_key)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	Oid			pk_type;
	char	   *pk_column;
	TypeCacheEntry *tc;
	char	   *eq;
	bool		isnull;
	Datum		row;
	CgPrivilegedContext priv;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	cg_enter_role(&priv, GetUserId());
	values[0] = ObjectIdGetDatum(relid);
	types[0] = OIDOID;
	if (SPI_execute_with_args("SELECT a.attname::pg_catalog.text, a.atttypid"
							  " FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a"
							  " ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid"
							  " AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]"
							  " WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary"
							  " AND i.indnkeyatts OPERATOR(pg_catalog.=) 1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_index");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no single-column primary key to name its rows",
						get_rel_name(relid))));
	pk_column = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	pk_type = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	tc = lookup_type_cache(pk_type, TYPECACHE_EQ_OPR);
	if (!OidIsValid(tc->eq_opr))
		elog(ERROR, "type %s has no equality operator", format_type_be(pk_type));
	eq = qualified_operator(tc->eq_opr);

	types[0] = TEXTOID;
	values[0] = CStringGetTextDatum(row_key);
	if (SPI_execute_with_args(psprintf("SELECT t FROM ONLY %s t WHERE t.%s %s CAST($1 AS %s)",
									   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
																  get_rel_name(relid)),
									   quote_identifier(pk_column), eq,
									   format_type_extended(pk_type, -1, FORMAT_TYPE_FORCE_QUALIFY)),
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the row");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("row \"%s\" of table \"%s\" does not exist or is not visible to you",
						row_key, get_rel_name(relid))));
	row = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	row = SPI_datumTransfer(row, false, -1);
	cg_leave_owner(&priv);
	SPI_finish();
	return row;
}

/* Does the row match a rule's compiled arm, read as principal id? */
static bool
row_matches_as(int64 id, Oid relid, const char *compiled, Datum row)
{
	int64		previous = cg_evaluate_as(id);
	volatile bool granted = false;

	PG_TRY();
	{
		granted = cg_criteria_row_matches(relid, compiled, row);
	}
	PG_FINALLY();
	{
		cg_evaluate_as_end(previous);
	}
	PG_END_TRY();
	return granted;
}

/* why_visible(target, row_key, principal): each rule, whether it grants the row, and why */
PG_FUNCTION_INFO_V1(crmguard_why_visible);
Datum
crmguard_why_visible(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid;
	char	   *row_key;
	int64		id;
	const CgPrincipal *p;
	char	   *who;
	Datum		row;
	List	   *rules;
	ListCell   *lc;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	cg_require_preload();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("target and row_key must not be NULL")));
	relid = PG_GETARG_OID(0);
	row_key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	cg_require_relation(relid);
	p = subject_principal(fcinfo, 2, &id);
	who = p ? pstrdup(p->name) : NULL;
	InitMaterializedSRF(fcinfo, 0);

	row = row_as_caller(relid, row_key);
	rules = rules_of(relid);
	p = who ? cg_principal_by_name(who) : NULL;

	if (p == NULL)
	{
		values[0] = (Datum) 0;
		nulls[0] = true;
		values[1] = BoolGetDatum(false);
		values[2] = CStringGetTextDatum(id == 0 ? "no principal is acting, and nobody sees a guarded row"
										: "the principal is inactive, and resolves to nobody");
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		return (Datum) 0;
	}
	if (principal_has_role(p, ADMIN_ROLE))
	{
		values[0] = (Datum) 0;
		nulls[0] = true;
		values[1] = BoolGetDatum(true);
		values[2] = CStringGetTextDatum(psprintf("principal \"%s\" has role \"%s\", which sees every row",
												 p->name, ADMIN_ROLE));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		nulls[0] = false;
	}

	foreach(lc, rules)
	{
		VisibilityRule *r = lfirst(lc);
		bool		granted = false;
		char	   *reason;

		if (!principal_has_role(p, r->audience))
			reason = psprintf("principal \"%s\" does not have role \"%s\"", p->name, r->audience);
		else
		{
			granted = row_matches_as(id, relid, r->compiled, row);
			p = cg_principal_by_name(who);

			if (strcmp(r->kind, "public") == 0)
				reason = psprintf("role \"%s\" sees every row", r->audience);
			else if (strcmp(r->kind, "owner") == 0)
				reason = psprintf(granted ? "role \"%s\": column \"%s\" names %s" :
								  "role \"%s\": column \"%s\" does not name %s",
								  r->audience, r->owner_column,
								  r->hierarchy ? psprintf("\"%s\" or anyone below", p->name) :
								  psprintf("\"%s\"", p->name));
			else
				reason = psprintf(granted ? "role \"%s\": the row matches %s" :
								  "role \"%s\": the row does not match %s",
								  r->audience, JsonbToCString(NULL, &r->criteria->root,
															  VARSIZE(r->criteria)));
			if (strcmp(r->access, "edit") == 0)
				reason = psprintf("%s (read and edit)", reason);
		}
		values[0] = CStringGetTextDatum(r->name);
		values[1] = BoolGetDatum(granted);
		values[2] = CStringGetTextDatum(reason);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------------
 * The rewriter hook: a table's rules, specialised to the acting principal
 * ---------------------------------------------------------------------------
 */

typedef struct CachedRule
{
	char	   *audience;
	char	   *compiled;
	bool		edit;
} CachedRule;

typedef struct CachedQual
{
	char	   *key;			/* command class and the audiences held */
	Expr	   *qual;
} CachedQual;

typedef struct TableRules
{
	Oid			relid;			/* hash key */
	List	   *rules;			/* of CachedRule, in rule order */
	List	   *audiences;		/* distinct audiences, and "admin" */
	List	   *quals;			/* of CachedQual */
} TableRules;

static HTAB *table_rules = NULL;
static MemoryContext rules_context = NULL;
static bool rules_valid = false;
static bool rules_loading = false;
static bool rules_changed_while_loading = false;
static Oid	known_rule_rel = InvalidOid;
static int	rules_in_use = 0;	/* a qual is being built from the cache */
static row_security_policy_hook_type prev_permissive_hook = NULL;

/* Rules or a guarded table changed: reload on the next use */
static void
rules_callback(Datum arg, Oid relid)
{
	if (rules_loading)
		rules_changed_while_loading = true;
	if (!rules_valid)
		return;
	if (relid == InvalidOid || relid == known_rule_rel ||
		(table_rules != NULL && hash_search(table_rules, &relid, HASH_FIND, NULL) != NULL))
		rules_valid = false;
}

/* A row of crmguard.visibility_rule as load_rules reads it */
typedef struct RuleRow
{
	int64		id;
	Oid			target;
	CachedRule *rule;
} RuleRow;

static void
collect_rule(Datum *values, bool *nulls, void *arg)
{
	List	  **rows = arg;
	MemoryContext old = MemoryContextSwitchTo(rules_context);
	RuleRow    *row = palloc(sizeof(RuleRow));

	row->id = DatumGetInt64(values[0]);
	row->target = DatumGetObjectId(values[1]);
	row->rule = palloc(sizeof(CachedRule));
	row->rule->audience = TextDatumGetCString(values[2]);
	row->rule->compiled = TextDatumGetCString(values[3]);
	row->rule->edit = strcmp(TextDatumGetCString(values[4]), "edit") == 0;
	*rows = lappend(*rows, row);
	MemoryContextSwitchTo(old);
}

static int
rule_row_order(const ListCell *a, const ListCell *b)
{
	int64		x = ((RuleRow *) lfirst(a))->id;
	int64		y = ((RuleRow *) lfirst(b))->id;

	return x < y ? -1 : x > y ? 1 : 0;
}

static void
load_rules(void)
{
	static const char *const columns[] = {"id", "target", "audience", "compiled", "access"};
	HASHCTL		ctl;
	MemoryContext old;
	List	   *rows = NIL;
	ListCell   *rc;

	if (rules_context == NULL)
	{
		rules_context = AllocSetContextCreate(CacheMemoryContext, "crmguard visibility rules",
											  ALLOCSET_SMALL_SIZES);
		cg_register_relcache_callback(rules_callback, (Datum) 0);
	}
	MemoryContextReset(rules_context);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(TableRules);
	ctl.hcxt = rules_context;
	table_rules = hash_create("crmguard visibility rules", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	/*
	 * Valid only once complete (an error leaves it stale), and only if no
	 * invalidation arrived while we read.
	 */
	rules_valid = false;
	rules_loading = true;
	rules_changed_while_loading = false;
	known_rule_rel = cg_catalog()->visibility_rule_rel;

	/* in the order the rules were made, each table's arms and audiences */
	if (!cg_catalog_never_written(known_rule_rel))
		cg_scan_catalog(known_rule_rel,
						ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot(),
						lengthof(columns), columns, collect_rule, &rows);
	old = MemoryContextSwitchTo(rules_context);
	list_sort(rows, rule_row_order);
	foreach(rc, rows)
	{
		RuleRow    *row = lfirst(rc);
		CachedRule *r = row->rule;
		bool		found;
		TableRules *t = hash_search(table_rules, &row->target, HASH_ENTER, &found);
		ListCell   *lc;
		bool		known = false;

		if (!found)
		{
			t->rules = NIL;
			t->audiences = list_make1(pstrdup(ADMIN_ROLE));
			t->quals = NIL;
		}
		t->rules = lappend(t->rules, r);
		foreach(lc, t->audiences)
			known |= strcmp((char *) lfirst(lc), r->audience) == 0;
		if (!known)
			t->audiences = lappend(t->audiences, r->audience);
	}
	MemoryContextSwitchTo(old);
	rules_loading = false;
	rules_valid = !rules_changed_while_loading;
}

/* A qual in SQL text as an expression over the relation (range table entry 1) */
static Expr *
transform_qual(Relation rel, const char *sql)
{
	ParseState *pstate = make_parsestate(NULL);
	ParseNamespaceItem *nsitem;
	List	   *raw;
	SelectStmt *stmt;
	Node	   *qual;
	int			save_nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	nsitem = addRangeTableEntryForRelation(pstate, rel, AccessShareLock, NULL, false, false);
	addNSItemToQuery(pstate, nsitem, false, true, true);
	raw = raw_parser(psprintf("SELECT WHERE %s", sql), RAW_PARSE_DEFAULT);
	stmt = (SelectStmt *) ((RawStmt *) linitial(raw))->stmt;
	qual = transformWhereClause(pstate, stmt->whereClause, EXPR_KIND_POLICY, "POLICY");
	assign_expr_collations(pstate, qual);
	free_parsestate(pstate);
	AtEOXact_GUC(true, save_nestlevel);
	return (Expr *) qual;
}

/*
 * The audiences of a table that a principal holds (all of them but admin
 * when it holds admin, which sees everything): the key of its policy.
 */
static char *
held_key(TableRules *t, const CgPrincipal *p, bool edit)
{
	StringInfoData held;
	bool		admin = principal_has_role(p, ADMIN_ROLE);
	ListCell   *lc;

	initStringInfo(&held);
	appendStringInfoChar(&held, edit ? 'e' : 'r');
	if (p == NULL)
		return held.data;
	if (p->require_device)
		appendStringInfoChar(&held, 'd');
	foreach(lc, t->audiences)
	{
		char	   *audience = lfirst(lc);

		if (principal_has_role(p, audience) && (!admin || strcmp(audience, ADMIN_ROLE) == 0))
		{
			appendStringInfoChar(&held, '|');
			appendStringInfoString(&held, audience);
		}
	}
	return held.data;
}

/*
 * The policy of a table for the acting principal and a command class (read
 * for SELECT, edit for INSERT, UPDATE and DELETE), as SQL text.
 */
static char *
specialised_sql(TableRules *t, const CgPrincipal *p, bool edit)
{
	StringInfoData guard;
	StringInfoData arms;
	bool		admin = principal_has_role(p, ADMIN_ROLE);
	ListCell   *lc;
	int			narms = 0;

	if (p == NULL)
		return pstrdup("false");
	initStringInfo(&guard);
	initStringInfo(&arms);
	/* until it attests, a require_device principal sees nothing and edits nothing */
	if (p->require_device)
		appendStringInfo(&guard, "(SELECT crmguard.device_gate(%s))", edit ? "true" : "false");

	/*
	 * The guard: the principal still holds the roles this policy was made
	 * for.  A role gained since only hides rows until the next plan.
	 */
	foreach(lc, t->audiences)
	{
		char	   *audience = lfirst(lc);

		if (!principal_has_role(p, audience) || (admin && strcmp(audience, ADMIN_ROLE) != 0))
			continue;
		appendStringInfo(&guard, "%s(SELECT crmguard.has_role(%s))", guard.len ? " AND " : "",
						 quote_literal_cstr(audience));
	}
	if (admin)
		return guard.data;
	foreach(lc, t->rules)
	{
		CachedRule *r = lfirst(lc);

		if ((edit && !r->edit) || !principal_has_role(p, r->audience))
			continue;
		appendStringInfo(&arms, "%s%s", narms++ ? " OR " : "", r->compiled);
	}
	if (narms == 0)
		return pstrdup("false");
	return psprintf("%s AND (%s)", guard.data, arms.data);
}

/*
 * One InitPlan instead of several.  Each "(SELECT crmguard.f(...))" of a
 * policy is an InitPlan of its own, planned and started anew by every
 * statement: a few microseconds each, a tenth of a selective query.  The
 * AND-ed terms of a policy that read such a value (the guard's role and
 * device checks, a comparison of a column with a principal's attribute)
 * become one row comparison sublink,
 *
 *		ROW(true, zone) = (SELECT crmguard.has_role('agent'), crmguard.attr('zone'))
 *
 * which PostgreSQL runs as one InitPlan setting one Param per value, the
 * terms unchanged but for the Param: "zone = $1" still drives an index
 * scan.  Terms inside an OR are left alone.
 */

/* (SELECT <expression>) with nothing else: a value read once per statement */
static bool
is_value_sublink(Node *node)
{
	SubLink    *sublink = (SubLink *) node;
	Query	   *q;

	if (node == NULL || !IsA(node, SubLink) || sublink->subLinkType != EXPR_SUBLINK ||
		sublink->testexpr != NULL || !IsA(sublink->subselect, Query))
		return false;
	q = (Query *) sublink->subselect;
	return q->commandType == CMD_SELECT && q->rtable == NIL && q->cteList == NIL &&
		q->setOperations == NULL && q->jointree != NULL && q->jointree->fromlist == NIL &&
		q->jointree->quals == NULL && q->groupClause == NIL && q->havingQual == NULL &&
		q->sortClause == NIL && q->limitCount == NULL && q->limitOffset == NULL &&
		!q->hasSubLinks && !q->hasAggs && !q->hasWindowFuncs && !q->hasTargetSRFs &&
		list_length(q->targetList) == 1 && !((TargetEntry *) linitial(q->targetList))->resjunk;
}

/* Does node hold a sublink that is not a value sublink? */
static bool
has_other_sublink(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, SubLink))
		return !is_value_sublink(node);
	return expression_tree_walker(node, has_other_sublink, context);
}

/* Each value sublink of node becomes a Param of the merged sublink; its expression a target */
static Node *
value_sublinks_to_params(Node *node, void *context)
{
	List	  **targets = context;

	if (node == NULL)
		return NULL;
	if (is_value_sublink(node))
	{
		Expr	   *value = ((TargetEntry *) linitial(((Query *) ((SubLink *) node)->subselect)->targetList))->expr;
		Param	   *param = makeNode(Param);

		param->paramkind = PARAM_SUBLINK;
		param->paramid = list_length(*targets) + 1;
		param->paramtype = exprType((Node *) value);
		param->paramtypmod = exprTypmod((Node *) value);
		param->paramcollid = exprCollation((Node *) value);
		param->location = -1;
		*targets = lappend(*targets, makeTargetEntry(copyObject(value), param->paramid, NULL, false));
		return (Node *) param;
	}
	return expression_tree_mutator(node, value_sublinks_to_params, context);
}

/* The conjuncts of an expression, nested ANDs flattened: each can then be an index condition */
static List *
conjuncts(Node *node, List *out)
{
	ListCell   *lc;

	if (!is_andclause(node))
		return lappend(out, node);
	foreach(lc, ((BoolExpr *) node)->args)
		out = conjuncts(lfirst(lc), out);
	return out;
}

static Expr *
merge_value_sublinks(Expr *qual)
{
	List	   *terms = conjuncts((Node *) qual, NIL);
	List	   *kept = NIL;
	List	   *tests = NIL;
	List	   *targets = NIL;
	ListCell   *lc;
	SubLink    *merged;
	Query	   *select = NULL;

	foreach(lc, terms)
	{
		Node	   *term = lfirst(lc);
		int			before = list_length(targets);
		Node	   *test;

		if (has_other_sublink(term, NULL))
		{
			kept = lappend(kept, term);
			continue;
		}
		test = value_sublinks_to_params(copyObject(term), &targets);
		if (list_length(targets) == before)
			kept = lappend(kept, term); /* reads no value */
		else
			tests = lappend(tests, test);
	}
	if (list_length(targets) < 2)
		return qual;			/* nothing to gain */
	/* a value sublink's SELECT, its one target replaced by all of them */
	select = makeNode(Query);
	select->commandType = CMD_SELECT;
	select->querySource = QSRC_ORIGINAL;
	select->canSetTag = true;
	select->jointree = makeFromExpr(NIL, NULL);
	select->targetList = targets;
	merged = makeNode(SubLink);
	merged->subLinkType = ROWCOMPARE_SUBLINK;
	merged->subLinkId = 0;
	merged->testexpr = (Node *) make_ands_explicit(tests);
	merged->operName = list_make1(makeString("="));
	merged->subselect = (Node *) select;
	merged->location = -1;
	return make_ands_explicit(lcons(merged, kept));
}

static Expr *
specialised_qual(Relation rel, TableRules *t, bool edit)
{
	const CgPrincipal *p = cg_current_principal();
	char	   *key = held_key(t, p, edit);
	ListCell   *lc;
	CachedQual *cq;
	Expr	   *qual;
	MemoryContext old;

	foreach(lc, t->quals)
	{
		cq = lfirst(lc);
		if (strcmp(cq->key, key) == 0)
			return copyObject(cq->qual);
	}
	qual = merge_value_sublinks(transform_qual(rel, specialised_sql(t, p, edit)));
	if (!rules_valid)
		return qual;			/* the cache went stale meanwhile: do not keep it */
	old = MemoryContextSwitchTo(rules_context);
	cq = palloc(sizeof(CachedQual));
	cq->key = pstrdup(key);
	cq->qual = copyObject(qual);
	t->quals = lappend(t->quals, cq);
	MemoryContextSwitchTo(old);
	return qual;
}

/*
 * The one table whose visibility rules are set aside while crmguard itself
 * plans a read or write of its rows on behalf of a decision already taken
 * (an approval's "set" action, the row check of a pending request): that
 * table gets an all-rows policy; every other table the statement reaches
 * (through a rule, a view, a function) keeps its rules.
 */
static Oid	visibility_suspended_for = InvalidOid;

/*
 * Prepare a statement (in SPI) with the visibility rules of relid set
 * aside: for crmguard's own reads and writes of a row whose fate is decided
 * elsewhere.
 */
SPIPlanPtr
cg_prepare_all_rows(Oid relid, const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan;
	Oid			save = visibility_suspended_for;

	visibility_suspended_for = relid;
	PG_TRY();
	{
		plan = SPI_prepare(sql, nargs, types);
	}
	PG_FINALLY();
	{
		visibility_suspended_for = save;
	}
	PG_END_TRY();
	if (plan == NULL)
		elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	return plan;
}

/*
 * A kept plan prepared by cg_prepare_all_rows, checked (and replanned when
 * stale) with the same one table's rules set aside, before it runs again.
 */
void
cg_revalidate_all_rows(Oid relid, struct _SPI_plan *plan)
{
	CachedPlan *cplan;
	Oid			save = visibility_suspended_for;

	visibility_suspended_for = relid;
	PG_TRY();
	{
		cplan = SPI_plan_get_cached_plan(plan);
	}
	PG_FINALLY();
	{
		visibility_suspended_for = save;
	}
	PG_END_TRY();
	if (cplan != NULL)
		ReleaseCachedPlan(cplan, CurrentResourceOwner);
}

static List *
visibility_policies(CmdType cmd, Relation rel)
{
	List	   *policies = prev_permissive_hook ? prev_permissive_hook(cmd, rel) : NIL;
	Oid			relid = RelationGetRelid(rel);
	Oid			schema;
	TableRules *t;
	RowSecurityPolicy *policy;
	Datum		public_role = ObjectIdGetDatum(ACL_ID_PUBLIC);

	/* only where crmguard is installed, and only for its guarded tables */
	schema = get_namespace_oid("crmguard", true);
	if (!OidIsValid(schema) || !OidIsValid(get_relname_relid("visibility_rule", schema)))
		return policies;
	if (!rules_valid && rules_in_use == 0)
		load_rules();
	if (table_rules == NULL)
		return policies;		/* no rules known: RLS without a policy shows nothing */
	t = hash_search(table_rules, &relid, HASH_FIND, NULL);
	if (t == NULL)
		return policies;

	policy = palloc0(sizeof(RowSecurityPolicy));
	policy->policy_name = pstrdup("crmguard");
	policy->polcmd = cmd == CMD_SELECT ? ACL_SELECT_CHR :
		cmd == CMD_INSERT ? ACL_INSERT_CHR :
		cmd == CMD_UPDATE ? ACL_UPDATE_CHR :
		cmd == CMD_DELETE ? ACL_DELETE_CHR : '*';
	policy->roles = construct_array(&public_role, 1, OIDOID, sizeof(Oid), true, TYPALIGN_INT);
	policy->permissive = true;
	if (OidIsValid(visibility_suspended_for) && relid == visibility_suspended_for)
	{
		policy->qual = (Expr *) makeBoolConst(true, false);
		policy->hassublinks = false;
		return lappend(policies, policy);
	}
	rules_in_use++;
	PG_TRY();
	{
		policy->qual = specialised_qual(rel, t, cmd != CMD_SELECT);
	}
	PG_FINALLY();
	{
		rules_in_use--;
	}
	PG_END_TRY();
	policy->with_check_qual = NULL;		/* USING doubles as WITH CHECK */
	policy->hassublinks = true;
	return lappend(policies, policy);
}

/*
 * An exact index condition needs no recheck.  in_team(owner, team) on a
 * btree index of owner becomes the index condition "owner = ANY (team)"
 * (in_team_support, below), which decides it exactly: a plain index scan
 * drops the call, but a bitmap heap scan keeps it as a filter on every row
 * (PostgreSQL cannot prove the two equal).  After planning, such a filter is
 * dropped when the bitmap is exactly that index condition (or an AND with
 * it).  Lossy bitmap pages are still rechecked with the original condition.
 */
static planner_hook_type prev_planner_hook = NULL;

static bool
is_in_team(Node *node)
{
	FuncExpr   *f = (FuncExpr *) node;
	char	   *name;

	if (!IsA(node, FuncExpr) || list_length(f->args) != 2)
		return false;
	name = get_func_name(f->funcid);
	return name != NULL && strcmp(name, "in_team") == 0 &&
		get_func_namespace(f->funcid) == get_namespace_oid("crmguard", true);
}

/* Does the bitmap (an index scan, or an AND of them) hold "owner = ANY (team)" exactly? */
static bool
bitmap_decides(Plan *bitmap, FuncExpr *in_team)
{
	ListCell   *lc;

	if (IsA(bitmap, BitmapAnd))
	{
		foreach(lc, ((BitmapAnd *) bitmap)->bitmapplans)
			if (bitmap_decides((Plan *) lfirst(lc), in_team))
				return true;
		return false;
	}
	if (!IsA(bitmap, BitmapIndexScan))
		return false;
	foreach(lc, ((BitmapIndexScan *) bitmap)->indexqualorig)
	{
		ScalarArrayOpExpr *saop = (ScalarArrayOpExpr *) lfirst(lc);

		if (IsA(saop, ScalarArrayOpExpr) && saop->useOr &&
			equal(linitial(saop->args), linitial(in_team->args)) &&
			equal(lsecond(saop->args), lsecond(in_team->args)))
			return true;
	}
	return false;
}

static void
drop_decided_filters(Plan *plan)
{
	ListCell   *lc;

	if (plan == NULL)
		return;
	if (IsA(plan, BitmapHeapScan))
	{
		Plan	   *bitmap = outerPlan(plan);

		foreach(lc, plan->qual)
		{
			Node	   *qual = (Node *) lfirst(lc);

			if (is_in_team(qual) && bitmap_decides(bitmap, (FuncExpr *) qual))
				plan->qual = foreach_delete_current(plan->qual, lc);
		}
	}
	drop_decided_filters(outerPlan(plan));
	drop_decided_filters(innerPlan(plan));
	if (IsA(plan, Append))
		foreach(lc, ((Append *) plan)->appendplans)
			drop_decided_filters((Plan *) lfirst(lc));
	else if (IsA(plan, MergeAppend))
		foreach(lc, ((MergeAppend *) plan)->mergeplans)
			drop_decided_filters((Plan *) lfirst(lc));
	else if (IsA(plan, SubqueryScan))
		drop_decided_filters(((SubqueryScan *) plan)->subplan);
	else if (IsA(plan, BitmapAnd) || IsA(plan, BitmapOr))
		return;
}

static PlannedStmt *
visibility_planner(Query *parse, const char *query_string, int cursorOptions,
				   ParamListInfo boundParams)
{
	PlannedStmt *stmt = prev_planner_hook ?
		prev_planner_hook(parse, query_string, cursorOptions, boundParams) :
		standard_planner(parse, query_string, cursorOptions, boundParams);
	ListCell   *lc;

	if (stmt->commandType != CMD_UTILITY)
	{
		drop_decided_filters(stmt->planTree);
		foreach(lc, stmt->subplans)
			drop_decided_filters((Plan *) lfirst(lc));
	}
	return stmt;
}

void
cg_visibility_init(void)
{
	prev_permissive_hook = row_security_policy_hook_permissive;
	row_security_policy_hook_permissive = visibility_policies;
	prev_planner_hook = planner_hook;
	planner_hook = visibility_planner;
}

/*
 * in_team(owner, team): is owner one of the ids of team?  The policy passes
 * the acting principal's team, read once per statement by an InitPlan; the
 * ids are hashed once a few rows were tested (a point query tests one), so
 * each row costs one look-up where "owner = ANY (team)" would search the
 * whole team.
 */
typedef struct TeamSet
{
	Datum		array;			/* the array the set was built from */
	int			nitems;
	int			calls;			/* looked through so far */
	HTAB	   *ids;			/* NULL until it pays */
} TeamSet;

/* a point query tests a row or two: the team is looked through until then */
#define TEAM_HASH_AFTER 8

PG_FUNCTION_INFO_V1(crmguard_in_team);
Datum
crmguard_in_team(PG_FUNCTION_ARGS)
{
	int64		owner = PG_GETARG_INT64(0);
	Datum		array = PG_GETARG_DATUM(1);
	ArrayType  *team = PG_GETARG_ARRAYTYPE_P(1);
	TeamSet    *set = (TeamSet *) fcinfo->flinfo->fn_extra;
	int			nitems = ArrayGetNItems(ARR_NDIM(team), ARR_DIMS(team));

	if (set == NULL || set->array != array || set->nitems != nitems)
	{
		if (set == NULL)
			set = fcinfo->flinfo->fn_extra = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(TeamSet));
		else if (set->ids != NULL)
			hash_destroy(set->ids);
		set->ids = NULL;
		set->calls = 0;
		set->array = array;
		set->nitems = nitems;
	}
	if (set->ids == NULL && set->calls++ < TEAM_HASH_AFTER && !ARR_HASNULL(team))
	{
		int64	   *ids = (int64 *) ((char *) team + ARR_OVERHEAD_NONULLS(ARR_NDIM(team)));
		int			i;

		for (i = 0; i < nitems; i++)
			if (ids[i] == owner)
				PG_RETURN_BOOL(true);
		PG_RETURN_BOOL(false);
	}
	if (set->ids == NULL)
	{
		MemoryContext cxt = fcinfo->flinfo->fn_mcxt;
		Datum	   *ids;
		bool	   *nulls;
		int			n;
		int			i;
		HASHCTL		ctl;

		deconstruct_array(team, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
						  &ids, &nulls, &n);
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(int64);
		ctl.hcxt = cxt;
		set->ids = hash_create("crmguard team", Max(n, 16), &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		for (i = 0; i < n; i++)
		{
			int64		id = DatumGetInt64(ids[i]);

			if (!nulls[i])
				hash_search(set->ids, &id, HASH_ENTER, NULL);
		}
	}
	PG_RETURN_BOOL(hash_search(set->ids, &owner, HASH_FIND, NULL) != NULL);
}

/*
 * The planner cannot see the team's size (it is read when the statement
 * runs, and an array it cannot see counts as 10 elements): estimate with
 * the acting principal's team, so a manager of thousands does not get an
 * index scan made for ten.  Only costs depend on it, never the result.
 */
static double
team_fraction(PlannerInfo *root, Node *owner, int varRelid)
{
	const CgPrincipal *p = cg_current_principal();
	VariableStatData vardata;
	double		ndistinct;
	bool		isdefault;
	int			members = 1;

	if (p != NULL)
	{
		ArrayType  *team = cg_principal_team(p->id);

		members = Max(1, ArrayGetNItems(ARR_NDIM(team), ARR_DIMS(team)));
	}
	examine_variable(root, owner, varRelid, &vardata);
	ndistinct = get_variable_numdistinct(&vardata, &isdefault);
	ReleaseVariableStats(vardata);
	return ndistinct > 0 ? Min(1.0, members / ndistinct) : DEFAULT_EQ_SEL;
}

static SupportRequestSelectivity *
in_team_selectivity(SupportRequestSelectivity *req)
{
	if (req->is_join || list_length(req->args) != 2)
		return NULL;
	req->selectivity = team_fraction(req->root, (Node *) linitial(req->args), req->varRelid);
	return req;
}

/*
 * Planner support for in_team(owner, team): on a btree index of owner, the
 * call becomes the exact index condition "owner = ANY (team)" -- unless the
 * team owns a large part of the table: the planner would cost the scan as
 * ten probes (it cannot see the team), and thousands of probes lose to the
 * other indexes or a sequential scan with the hashed test.
 */
#define TEAM_INDEX_MAX_FRACTION 0.1

PG_FUNCTION_INFO_V1(crmguard_in_team_support);
Datum
crmguard_in_team_support(PG_FUNCTION_ARGS)
{
	Node	   *rawreq = (Node *) PG_GETARG_POINTER(0);
	SupportRequestIndexCondition *req;
	FuncExpr   *clause;
	Node	   *owner;
	Node	   *team;
	Oid			opno;
	ScalarArrayOpExpr *saop;

	if (IsA(rawreq, SupportRequestSelectivity))
		PG_RETURN_POINTER(in_team_selectivity((SupportRequestSelectivity *) rawreq));
	if (!IsA(rawreq, SupportRequestIndexCondition))
		PG_RETURN_POINTER(NULL);
	req = (SupportRequestIndexCondition *) rawreq;
	if (!is_funcclause(req->node) || req->indexarg != 0 || req->index->relam != BTREE_AM_OID)
		PG_RETURN_POINTER(NULL);
	clause = (FuncExpr *) req->node;
	owner = (Node *) linitial(clause->args);
	team = (Node *) lsecond(clause->args);
	/* the team must be known before the scan: no column of this table in it */
	if (contain_var_clause(team) || contain_volatile_functions(team))
		PG_RETURN_POINTER(NULL);
	opno = get_opfamily_member(req->opfamily, exprType(owner), INT8OID, BTEqualStrategyNumber);
	if (!OidIsValid(opno) || team_fraction(req->root, owner, 0) > TEAM_INDEX_MAX_FRACTION)
		PG_RETURN_POINTER(NULL);

	saop = makeNode(ScalarArrayOpExpr);
	saop->opno = opno;
	saop->opfuncid = get_opcode(opno);
	saop->hashfuncid = InvalidOid;
	saop->negfuncid = InvalidOid;
	saop->useOr = true;
	saop->inputcollid = InvalidOid;
	saop->args = list_make2(copyObject(owner), copyObject(team));
	saop->location = -1;
	req->lossy = false;
	PG_RETURN_POINTER(list_make1(saop));
}
