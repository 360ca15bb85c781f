/*
 * guard.c
 *		The triggers crmguard puts on user tables, and an event trigger that
 *		keeps anyone but a superuser from disabling or dropping them.  A
 *		superuser's change is allowed but written to the audit log.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"

#include "crmguard.h"

/* set while crmguard itself drops a guard, so the event trigger lets it pass */
bool		cg_guard_dropping = false;

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
	cg_guard_dropping = true;
	PG_TRY();
	{
		if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not drop trigger \"%s\"", trigger_name);
	}
	PG_FINALLY();
	{
		cg_guard_dropping = false;
	}
	PG_END_TRY();
}

static void
refuse_or_record(const char *action, const char *trigger, const char *table)
{
	StringInfoData buf;
	char	   *detail;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"trigger\": ");
	escape_json(&buf, trigger);
	appendStringInfo(&buf, ", \"superuser\": %s}", superuser() ? "true" : "false");
	detail = buf.data;

	if (superuser())
	{
		cg_audit(action, table, NULL,
				 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail))));
		ereport(WARNING,
				(errmsg("crmguard guard \"%s\" on table %s is no longer enforced", trigger, table),
				 errdetail("The change was written to the crmguard audit log.")));
		return;
	}
	cg_audit_durable(psprintf("%s_refused", action), table, NULL, detail);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("crmguard guard \"%s\" on table %s cannot be disabled or dropped", trigger, table),
			 errdetail("Only a superuser can switch off a crmguard guard, and the change is audited."),
			 errhint("Drop the rule with its crmguard function instead.")));
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
	uint64		i;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "crmguard_guard_ddl: not called by the event trigger manager");
	trigdata = (EventTriggerData *) fcinfo->context;

	if (strcmp(trigdata->event, "sql_drop") == 0)
	{
		if (cg_guard_dropping)
			PG_RETURN_VOID();
		sql = "SELECT pg_catalog.array_to_string(t.address_names[1:2], '.'),"
			" t.address_names[pg_catalog.array_upper(t.address_names, 1)]"
			" FROM pg_catalog.pg_event_trigger_dropped_objects() t"
			" WHERE t.object_type OPERATOR(pg_catalog.=) 'trigger' AND t.original"
			" AND t.address_names[pg_catalog.array_upper(t.address_names, 1)]"
			"     OPERATOR(pg_catalog.~~) 'zz\\_crmguard\\_%'";
	}
	else
		sql = "SELECT t.tgname::text, t.tgrelid::pg_catalog.regclass::text"
			" FROM pg_catalog.pg_event_trigger_ddl_commands() c"
			" JOIN pg_catalog.pg_trigger t ON t.tgrelid OPERATOR(pg_catalog.=) c.objid"
			" JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid"
			" JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace"
			" WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass"
			" AND n.nspname OPERATOR(pg_catalog.=) 'crmguard'"
			" AND t.tgenabled OPERATOR(pg_catalog.<>) ALL ('{O,A}'::pg_catalog.\"char\"[])";

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* not read-only: the command's own catalog changes must be visible */
	if (SPI_execute(sql, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not inspect the DDL command");
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *first = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		char	   *second = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

		if (strcmp(trigdata->event, "sql_drop") == 0)
			refuse_or_record("guard_dropped", second, first);
		else
			refuse_or_record("guard_disabled", first, second);
	}
	SPI_finish();
	PG_RETURN_VOID();
}
