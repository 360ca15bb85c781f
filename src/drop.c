/*
 * drop.c
 *		DROP EXTENSION crmguard (or DROP SCHEMA crmguard CASCADE) says what
 *		it loses before it is lost, and leaves nothing of crmguard's behind
 *		but what belongs to the cluster.
 *
 * Read before the drop, said once it has run (before it commits): a
 * WARNING with the pending drafts and approval requests
 * (counts per table, the first ids) and the size of the audit log, all of
 * which go with crmguard's tables; a WARNING naming every table crmguard
 * put row-level security on.  Those tables keep ENABLE and FORCE ROW LEVEL
 * SECURITY and lose crmguard's policies, so they fail closed: only
 * superusers and BYPASSRLS roles read them until their owner decides.
 * Opening them silently would show every row to every role granted the
 * table (a portal customer would see all quotes); a DBA opens them with one
 * deliberate ALTER TABLE each.  A WARNING also names the tables whose
 * writes are no longer gated and those whose masked contact fields can no
 * longer be decrypted.
 *
 * Then the crmguard schema, which PostgreSQL created for the
 * extension but does not drop with it, is dropped when nothing is left in
 * it; the cluster-wide role crmguard_relay stays (a NOTICE says so).
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "crmguard.h"

/* ids listed per table in the warning; the rest are counted */
#define DROP_IDS_SHOWN 10

/* Does stmt drop extension crmguard, or the schema holding it? */
bool
cg_drop_is_crmguard(Node *parsetree)
{
	DropStmt   *stmt;
	ListCell   *lc;

	if (!IsA(parsetree, DropStmt))
		return false;
	stmt = (DropStmt *) parsetree;
	if (stmt->removeType != OBJECT_EXTENSION && stmt->removeType != OBJECT_SCHEMA)
		return false;
	foreach(lc, stmt->objects)
		if (strcmp(strVal(lfirst(lc)), "crmguard") == 0)
			return true;
	return false;
}

/*
 * One line per table of a query returning (table, count, first ids):
 * "public.lead: 2 (ids 1, 2)", kept in result_context; the total in
 * *total.  Caller is in SPI.
 */
static char *
per_table(const char *sql, int64 *total, MemoryContext result_context)
{
	StringInfoData buf;
	uint64		i;

	initStringInfo(&buf);
	*total = 0;
	if (SPI_execute(sql, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard's catalogs");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		int64		n = pg_strtoint64(SPI_getvalue(tup, desc, 2));

		*total += n;
		appendStringInfo(&buf, "%s%s: " INT64_FORMAT " (%s %s%s)", i > 0 ? "; " : "",
						 SPI_getvalue(tup, desc, 1), n, n == 1 ? "id" : "ids",
						 SPI_getvalue(tup, desc, 3), n > DROP_IDS_SHOWN ? ", ..." : "");
	}
	return MemoryContextStrdup(result_context, buf.data);
}

/* The tables of a query returning one name per row, comma-separated in result_context, or NULL */
static char *
table_list(const char *sql, MemoryContext result_context)
{
	StringInfoData buf;
	uint64		i;

	if (SPI_execute(sql, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard's catalogs");
	if (SPI_processed == 0)
		return NULL;
	initStringInfo(&buf);
	for (i = 0; i < SPI_processed; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "",
						 SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
	return MemoryContextStrdup(result_context, buf.data);
}

#define PENDING_SQL(table) \
	"SELECT target::pg_catalog.text, pg_catalog.count(*)," \
	"       pg_catalog.array_to_string((pg_catalog.array_agg(id ORDER BY id))[1:" CppAsString2(DROP_IDS_SHOWN) "], ', ')" \
	"  FROM " table " WHERE state OPERATOR(pg_catalog.=) 'pending' GROUP BY 1 ORDER BY 1"

/* What a drop of crmguard loses, read before it runs */
typedef struct DropReport
{
	int64		drafts;
	int64		requests;
	char	   *draft_lines;
	char	   *request_lines;
	char	   *audit_rows;
	char	   *visibility_tables;
	char	   *gated_tables;
	char	   *masked_tables;
} DropReport;

/*
 * Before DROP EXTENSION crmguard: read what goes with it, while crmguard's
 * catalogs are still there (catalogs only, table names as text, as the
 * extension owner).  NULL when there is nothing to tell this user.
 */
void *
cg_drop_collect(void)
{
	CgPrivilegedContext priv;
	Oid			extension = get_extension_oid("crmguard", true);
	MemoryContext caller;
	DropReport *r;

	/* only to whoever may drop it: nobody else learns the tables or counts */
#if PG_VERSION_NUM >= 160000
	if (!OidIsValid(extension) || !object_ownercheck(ExtensionRelationId, extension, GetUserId()))
		return NULL;
#else
	if (!OidIsValid(extension) || !pg_extension_ownercheck(extension, GetUserId()))
		return NULL;
#endif
	r = palloc0(sizeof(DropReport));
	caller = CurrentMemoryContext;
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* SPI's memory goes at SPI_finish: every string is kept in the caller's */
	r->draft_lines = per_table(PENDING_SQL("crmguard.draft_state"), &r->drafts, caller);
	r->request_lines = per_table(PENDING_SQL("crmguard.approval_request_state"), &r->requests, caller);
	if (SPI_execute("SELECT pg_catalog.count(*)::text FROM crmguard.audit", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the audit log");
	r->audit_rows = MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	r->visibility_tables = table_list("SELECT DISTINCT target::pg_catalog.text FROM crmguard.visibility_rule ORDER BY 1",
									  caller);
	r->gated_tables = table_list("SELECT DISTINCT t FROM ("
								 " SELECT target::pg_catalog.text FROM crmguard.otp_rule"
								 " UNION SELECT target::pg_catalog.text FROM crmguard.review_config"
								 " UNION SELECT target::pg_catalog.text FROM crmguard.approval_process"
								 " UNION SELECT target::pg_catalog.text FROM crmguard.field_table) AS g(t) ORDER BY 1",
								 caller);
	r->masked_tables = table_list("SELECT DISTINCT target::pg_catalog.text FROM crmguard.field_def"
								  " WHERE masked ORDER BY 1", caller);
	SPI_finish();
	cg_leave_owner(&priv);
	return r;
}

/*
 * Say what the drop discards, once it has run and before it commits (a
 * transaction block can still roll it back; a drop that failed, as one
 * without CASCADE does while tables are guarded, says nothing).  The
 * warnings also reach the server log, the one trail left.
 */
static void
drop_report(const DropReport *r)
{
	if (r->drafts > 0 || r->requests > 0)
	{
		StringInfoData detail;

		initStringInfo(&detail);
		if (r->drafts > 0)
			appendStringInfo(&detail, "Pending drafts, not in their tables: %s.", r->draft_lines);
		if (r->requests > 0)
			appendStringInfo(&detail, "%sPending approval requests: %s.", r->drafts > 0 ? "\n" : "",
							 r->request_lines);
		appendStringInfo(&detail, "\nThe audit log (%s entries) and every rule go too.", r->audit_rows);
		ereport(WARNING,
				(errmsg("dropping extension \"crmguard\" discards " INT64_FORMAT " pending drafts and "
						INT64_FORMAT " pending approval requests", r->drafts, r->requests),
				 errdetail_internal("%s", detail.data),
				 errhint("Roll back, and approve or reject them first (crmguard.draft, crmguard.my_approvals()), or keep a copy with pg_dump.")));
	}
	else
		ereport(WARNING,
				(errmsg("dropping extension \"crmguard\" discards its rules and its audit log (%s entries)",
						r->audit_rows),
				 errhint("Roll back and keep a copy with pg_dump first if they are needed.")));
	if (r->visibility_tables)
		ereport(WARNING,
				(errmsg("tables keep row-level security enabled and forced without crmguard's policies: %s",
						r->visibility_tables),
				 errdetail("Only superusers and roles with BYPASSRLS can read or write them until their owners decide."),
				 errhint("For each table: ALTER TABLE ... NO FORCE ROW LEVEL SECURITY lets its owner in; DISABLE ROW LEVEL SECURITY shows every row to every role granted the table; or create policies of your own.")));
	if (r->gated_tables)
		ereport(WARNING,
				(errmsg("writes to these tables are no longer gated by OTP, review, approvals or field checks: %s",
						r->gated_tables)));
	if (r->masked_tables)
		ereport(WARNING,
				(errmsg("masked contact fields of these tables stay encrypted and cannot be decrypted again: %s",
						r->masked_tables),
				 errdetail("Their table keys are kept in crmguard.field_table, which goes with the extension."),
				 errhint("Roll back and unmask or export the values first if they are needed.")));
}

/*
 * After DROP EXTENSION crmguard succeeded: say what it discarded (report
 * from cg_drop_collect), drop the crmguard schema if nothing is left in it
 * (PostgreSQL made it for the extension, but keeps it), and say that the
 * cluster-wide role crmguard_relay stays.
 */
void
cg_drop_finish(void *report)
{
	Oid			schema;
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	bool		empty;

	if (report == NULL || OidIsValid(get_extension_oid("crmguard", true)))
		return;
	drop_report((DropReport *) report);
	schema = get_namespace_oid("crmguard", true);
	if (OidIsValid(schema))
	{
		values[0] = ObjectIdGetDatum(schema);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args("SELECT 1 FROM pg_catalog.pg_depend"
								  " WHERE refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass"
								  " AND refobjid OPERATOR(pg_catalog.=) $1 LIMIT 1",
								  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read pg_depend");
		empty = SPI_processed == 0;
		SPI_finish();
		if (empty)
		{
			ObjectAddress object;

			ObjectAddressSet(object, NamespaceRelationId, schema);
			performDeletion(&object, DROP_RESTRICT, 0);
			ereport(NOTICE,
					(errmsg("schema \"crmguard\" was dropped with the extension")));
		}
		else
			ereport(WARNING,
					(errmsg("schema \"crmguard\" is kept: it holds objects that are not crmguard's")));
	}
	if (OidIsValid(get_role_oid("crmguard_relay", true)))
		ereport(NOTICE,
				(errmsg("role \"crmguard_relay\" is kept: roles belong to the cluster, and other databases may use crmguard"),
				 errhint("Drop it with DROP ROLE crmguard_relay once no database uses crmguard.")));
}
