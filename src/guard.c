/*
 * guard.c
 *		The guards crmguard puts on user tables (OTP triggers, row-level
 *		security), and an event trigger that keeps anyone but a superuser
 *		from disabling, dropping or widening them, or renaming a column a
 *		rule names.  A superuser's change is allowed but written to the audit
 *		log.  Rules of a dropped table are deleted with it.
 */
#include "postgres.h"

#include "commands/extension.h"

#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "crmguard.h"

/* set while crmguard itself changes a guard, so the event trigger lets it pass */
bool		cg_guard_internal = false;

/* Rules on a table are for its owner to make */
void
cg_require_table_owner(Oid relid)
{
#if PG_VERSION_NUM >= 160000
	if (!object_ownercheck(RelationRelationId, relid, GetUserId()))
#else
	if (!pg_class_ownercheck(relid, GetUserId()))
#endif
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of table %s to guard it", get_rel_name(relid))));
}

/* The single-column primary key of a table, or NULL; caller is in SPI */
char *
cg_primary_key_column(Oid relid)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	char	   *column = NULL;
	MemoryContext caller = CurrentMemoryContext;	/* SPI calls return in its own context */

	values[0] = ObjectIdGetDatum(relid);
	if (SPI_execute_with_args("SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_index i"
							  " JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid"
							  " AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]"
							  " WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary"
							  " AND i.indnkeyatts OPERATOR(pg_catalog.=) 1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_index");
	if (SPI_processed > 0)
		column = MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	return column;
}

/* not read-only: a guard dropped a moment ago in this command must be seen gone */
static bool
guard_exists(Oid relid, const char *trigger_name)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2];
	bool		found;

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(trigger_name);
	if (SPI_execute_with_args("SELECT 1 FROM pg_catalog.pg_trigger"
							  " WHERE tgrelid OPERATOR(pg_catalog.=) $1"
							  " AND tgname OPERATOR(pg_catalog.=) $2::pg_catalog.name",
							  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_trigger");
	found = SPI_processed > 0;
	return found;
}

/*
 * Create a row trigger on relid unless it is there; caller is in SPI.
 * when is a WHEN condition over NEW and OLD, or NULL.
 */
void
cg_guard_install(Oid relid, const char *trigger_name, const char *function_name,
				 const char *events, const char *when)
{
	char	   *sql;

	if (guard_exists(relid, trigger_name))
		return;
	sql = psprintf("CREATE TRIGGER %s %s ON %s FOR EACH ROW %s%s%s EXECUTE FUNCTION crmguard.%s()",
				   quote_identifier(trigger_name), events,
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											  get_rel_name(relid)),
				   when ? "WHEN (" : "", when ? when : "", when ? ")" : "",
				   quote_identifier(function_name));
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not create trigger \"%s\"", trigger_name);
}

/* The same, as a statement trigger (BEFORE TRUNCATE) */
void
cg_guard_install_statement(Oid relid, const char *trigger_name, const char *function_name,
						   const char *events)
{
	char	   *sql;

	if (guard_exists(relid, trigger_name))
		return;
	sql = psprintf("CREATE TRIGGER %s %s ON %s FOR EACH STATEMENT EXECUTE FUNCTION crmguard.%s()",
				   quote_identifier(trigger_name), events,
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											  get_rel_name(relid)),
				   quote_identifier(function_name));
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not create trigger \"%s\"", trigger_name);
}

/* Drop a guard trigger crmguard installed; caller is in SPI */
void
cg_guard_remove(Oid relid, const char *trigger_name)
{
	char	   *sql;

	if (!guard_exists(relid, trigger_name))
		return;
	sql = psprintf("DROP TRIGGER %s ON %s", quote_identifier(trigger_name),
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											  get_rel_name(relid)));
	cg_guard_internal = true;
	PG_TRY();
	{
		if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not drop trigger \"%s\"", trigger_name);
	}
	PG_FINALLY();
	{
		cg_guard_internal = false;
	}
	PG_END_TRY();
}

/*
 * A guard is being switched off: a superuser may, with a warning and an
 * audit entry; anyone else is refused, and the attempt is audited durably.
 */
static void
refuse_or_record(bool is_super, const char *action, const char *table,
				 const char *what_key, const char *what, const char *refusal,
				 const char *warning)
{
	StringInfoData buf;
	char	   *detail;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"%s\": ", what_key);
	escape_json(&buf, what);
	appendStringInfo(&buf, ", \"superuser\": %s}", is_super ? "true" : "false");
	detail = buf.data;

	if (is_super)
	{
		cg_audit(action, table, NULL,
				 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail))));
		ereport(WARNING,
				(errmsg("%s", warning),
				 errdetail("The change was written to the crmguard audit log.")));
		return;
	}
	cg_audit_durable(psprintf("%s_refused", action), table, NULL, detail);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("%s", refusal),
			 errdetail("Only a superuser can switch off a crmguard guard, and the change is audited."),
			 errhint("Change the rule with its crmguard function instead.")));
}

/*
 * What is wrong with the row visibility of the guarded tables a command
 * touched, as (table, problem) rows.  A touched table is one the command
 * names, one whose policy it names, and their inheritance parents and
 * children (ATTACH PARTITION, INHERIT).  Runs as the extension owner.
 */
static const char *const visibility_problems_sql =
"WITH cmd AS ("
"  SELECT c.classid, c.objid, c.command_tag FROM pg_catalog.pg_event_trigger_ddl_commands() c),"
" named AS ("
"  SELECT objid AS relid, NULL::text AS policy, command_tag FROM cmd"
"   WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass"
"  UNION ALL"
"  SELECT p.polrelid, p.polname::text, cmd.command_tag FROM cmd"
"   JOIN pg_catalog.pg_policy p ON p.oid = cmd.objid"
"   WHERE cmd.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass"
"  UNION ALL"
"  SELECT tg.tgrelid, NULL, cmd.command_tag FROM cmd"
"   JOIN pg_catalog.pg_trigger tg ON tg.oid = cmd.objid"
"   WHERE cmd.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass),"
" touched AS ("
"  SELECT relid, policy, command_tag FROM named"
"  UNION ALL SELECT i.inhrelid, NULL, NULL FROM named JOIN pg_catalog.pg_inherits i ON i.inhparent = named.relid"
"  UNION ALL SELECT i.inhparent, NULL, NULL FROM named JOIN pg_catalog.pg_inherits i ON i.inhrelid = named.relid)"
" SELECT DISTINCT r.oid::pg_catalog.regclass::text, pr.problem"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid"
"  CROSS JOIN LATERAL (VALUES"
"   (CASE WHEN NOT (r.relrowsecurity AND r.relforcerowsecurity)"
"         THEN 'row-level security is no longer enabled and forced' END),"
"   (CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = r.oid AND p.polpermissive)"
"         THEN 'a permissive policy of its own would widen what crmguard exposes' END),"
"   (CASE WHEN r.relispartition OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i"
"                                          WHERE i.inhrelid = r.oid OR i.inhparent = r.oid)"
"         THEN 'it is now inherited or partitioned, and its rows can be read around its policies' END)"
"  ) AS pr(problem)"
" WHERE pr.problem IS NOT NULL"
"   AND EXISTS (SELECT 1 FROM crmguard.visibility_rule v WHERE v.target::pg_catalog.oid = r.oid)"
/* a table with contact fields read through a parent or child table */
" UNION"
" SELECT r.oid::pg_catalog.regclass::text,"
"        'it is now inherited or partitioned, and its contact fields can be read around their projection'"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid"
"  JOIN crmguard.field_table ft ON ft.target::pg_catalog.oid = r.oid"
" WHERE r.relispartition OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i"
"                                   WHERE i.inhrelid = r.oid OR i.inhparent = r.oid)"
/* a reviewed table's BEFORE INSERT row trigger that would fire ahead of the review guard */
" UNION"
" SELECT r.oid::pg_catalog.regclass::text,"
"        pg_catalog.format('trigger \"%s\" would see inserted rows before the review guard keeps them as drafts', tg.tgname)"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid"
"  JOIN crmguard.review_config rc ON rc.target::pg_catalog.oid = r.oid"
"  JOIN pg_catalog.pg_trigger tg ON tg.tgrelid = r.oid"
" WHERE " CG_TRIGGER_AHEAD_OF_REVIEW
/* any rule (visibility, OTP, approval, review) naming a column the command renamed or dropped */
" UNION"
" SELECT r.oid::pg_catalog.regclass::text,"
"        pg_catalog.format('column \"%s\" named by rule \"%s\" was renamed or dropped', f.col, f.rule)"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid"
"  CROSS JOIN LATERAL ("
"   SELECT v.rule_name AS rule, c.col FROM crmguard.visibility_rule v"
"    CROSS JOIN LATERAL (SELECT pg_catalog.jsonb_path_query(v.criteria, 'lax $.**.field') #>> '{}'"
"                        UNION SELECT v.owner_column::text) AS c(col)"
"    WHERE v.target::pg_catalog.oid = r.oid"
"   UNION"
"   SELECT o.rule_name, c.col FROM crmguard.otp_rule o"
"    CROSS JOIN LATERAL (SELECT pg_catalog.jsonb_path_query(o.condition, 'lax $.**.field') #>> '{}'"
"                        UNION SELECT o.status_column::text UNION SELECT o.recipient_column::text) AS c(col)"
"    WHERE o.target::pg_catalog.oid = r.oid"
"   UNION"
"   SELECT 'approval process ' || ap.process_name, c.col FROM crmguard.approval_process ap"
"    CROSS JOIN LATERAL (SELECT pg_catalog.jsonb_path_query(ap.entry_criteria, 'lax $.**.field') #>> '{}'"
"      UNION SELECT pg_catalog.unnest(ap.editable_columns::text[])"
"      UNION SELECT pg_catalog.jsonb_object_keys(a -> 'set')"
"             FROM pg_catalog.jsonb_array_elements(ap.on_approve || ap.on_reject || ap.on_submit) a WHERE a ? 'set'"
"      UNION SELECT pg_catalog.jsonb_path_query(ap.on_approve || ap.on_reject || ap.on_submit, p) #>> '{}'"
"             FROM (VALUES ('lax $[*].notify.to'::pg_catalog.jsonpath), ('lax $[*].task.assign_to')) AS x(p)"
"      UNION SELECT pg_catalog.jsonb_path_query(ap.steps, p) #>> '{}'"
"             FROM (VALUES ('lax $[*].approvers.manager_of'::pg_catalog.jsonpath), ('lax $[*].approvers.of')) AS y(p)"
"     ) AS c(col)"
"    WHERE ap.target::pg_catalog.oid = r.oid AND c.col NOT IN ('submitter', 'approvers')"
"   UNION"
"   SELECT 'draft review', c.col FROM crmguard.review_config rc"
"    CROSS JOIN LATERAL pg_catalog.unnest(rc.match_columns::text[]) AS c(col)"
"    WHERE rc.target::pg_catalog.oid = r.oid"
"   UNION"
"   SELECT 'contact fields', c.col FROM crmguard.field_table ft"
"    CROSS JOIN LATERAL (VALUES (ft.fields_column::text), (ft.project_column::text)) AS c(col)"
"    WHERE ft.target::pg_catalog.oid = r.oid) AS f"
"  WHERE f.col IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a"
"        WHERE a.attrelid = r.oid AND a.attname = f.col AND a.attnum > 0 AND NOT a.attisdropped)"
" ORDER BY 1, 2";

/* Rules of dropped tables, so that an OID reused later is not guarded by mistake */
static const char *const forget_dropped_sql =
"WITH dropped AS ("
"  SELECT objid FROM pg_catalog.pg_event_trigger_dropped_objects() WHERE object_type = 'table'),"
" v AS (DELETE FROM crmguard.visibility_rule WHERE target::pg_catalog.oid IN (SELECT objid FROM dropped)),"
" o AS (DELETE FROM crmguard.otp_rule WHERE target::pg_catalog.oid IN (SELECT objid FROM dropped)),"
" r AS (DELETE FROM crmguard.review_config WHERE target::pg_catalog.oid IN (SELECT objid FROM dropped)),"
" d AS (DELETE FROM crmguard.draft_state WHERE target::pg_catalog.oid IN (SELECT objid FROM dropped)),"
" a AS (DELETE FROM crmguard.approval_process WHERE target::pg_catalog.oid IN (SELECT objid FROM dropped)),"
" fd AS (DELETE FROM crmguard.field_def WHERE target::pg_catalog.oid IN (SELECT objid FROM dropped)),"
" ft AS (DELETE FROM crmguard.field_table WHERE target::pg_catalog.oid IN (SELECT objid FROM dropped))"
" SELECT 1";

static void
check_visibility(bool is_super, bool dropping)
{
	CgPrivilegedContext priv;
	uint64		i;

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (dropping)
	{
		/* the rules of tables that are gone go with them */
		if (SPI_execute(forget_dropped_sql, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not forget the rules of dropped tables");
		SPI_finish();
		cg_leave_owner(&priv);
		return;
	}
	if (SPI_execute(visibility_problems_sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not inspect the DDL command");
	cg_leave_owner(&priv);
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *table = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *problem = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

		refuse_or_record(is_super, "visibility_changed", table, "problem", problem,
						 psprintf("crmguard rules of table %s cannot be changed outside crmguard: %s",
								  table, problem),
						 psprintf("crmguard rules of table %s are no longer enforced: %s",
								  table, problem));
	}
	SPI_finish();
}

/*
 * Event trigger: after ALTER TABLE, any guard left not firing in origin mode
 * (DISABLE, or ENABLE REPLICA) is a switched-off guard; after a drop, any
 * guard dropped directly, not with its table or by crmguard itself.
 */
PG_FUNCTION_INFO_V1(crmguard_guard_ddl);
Datum
crmguard_guard_ddl(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	const char *sql;
	bool		is_super = superuser();
	bool		dropping;
	uint64		i;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "crmguard_guard_ddl: not called by the event trigger manager");
	trigdata = (EventTriggerData *) fcinfo->context;
	if (cg_guard_internal)
		PG_RETURN_VOID();
	/* crmguard's own install script creates the tables this check reads */
	if (creating_extension && CurrentExtensionObject == get_extension_oid("crmguard", true))
		PG_RETURN_VOID();
	dropping = strcmp(trigdata->event, "sql_drop") == 0;

	if (dropping)
	{
		sql = "SELECT pg_catalog.array_to_string(t.address_names[1:2], '.'),"
			" t.address_names[pg_catalog.array_upper(t.address_names, 1)]"
			" FROM pg_catalog.pg_event_trigger_dropped_objects() t"
			" WHERE t.object_type OPERATOR(pg_catalog.=) 'trigger'"
			/* dropped directly, or with a column (CASCADE), not with its table */
			" AND pg_catalog.to_regclass(pg_catalog.quote_ident(t.address_names[1]) || '.' || pg_catalog.quote_ident(t.address_names[2])) IS NOT NULL"
			" AND t.address_names[pg_catalog.array_upper(t.address_names, 1)]"
			"     OPERATOR(pg_catalog.~~) ANY ('{zz\\\\_crmguard\\\\_%,!crmguard\\\\_%}')";
	}
	else
		sql = "SELECT t.tgname::text, t.tgrelid::pg_catalog.regclass::text"
			" FROM pg_catalog.pg_event_trigger_ddl_commands() c"
			" JOIN pg_catalog.pg_trigger t ON t.tgrelid OPERATOR(pg_catalog.=) c.objid"
			" JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid"
			" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace"
			" WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass"
			" AND n.nspname OPERATOR(pg_catalog.=) 'crmguard'"
			" AND t.tgenabled OPERATOR(pg_catalog.<>) ALL ('{O,A}'::pg_catalog.\"char\"[])"
			" ORDER BY 1, 2";

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* not read-only: the command's own catalog changes must be visible */
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not inspect the DDL command");
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *first = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *second = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

		if (dropping)
			refuse_or_record(is_super, "guard_dropped", first, "trigger", second,
							 psprintf("crmguard guard \"%s\" on table %s cannot be dropped", second, first),
							 psprintf("crmguard guard \"%s\" on table %s is no longer enforced", second, first));
		else
			refuse_or_record(is_super, "guard_disabled", second, "trigger", first,
							 psprintf("crmguard guard \"%s\" on table %s cannot be disabled", first, second),
							 psprintf("crmguard guard \"%s\" on table %s is no longer enforced", first, second));
	}
	SPI_finish();
	check_visibility(is_super, dropping);
	PG_RETURN_VOID();
}
