/*
 * crmguard.c
 *		Module load: settings, shared memory hooks, the catalog lookups every
 *		module needs, and the privileged context for writes users may not make.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "storage/bufmgr.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "access/tableam.h"
#include "executor/tuptable.h"
#include "storage/lmgr.h"
#include "storage/smgr.h"
#include "utils/snapmgr.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/ipc.h"
#include "tcop/utility.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "crmguard.h"
#include "approval.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

char	   *cg_key_file = NULL;
bool		cg_preloaded = false;

static CgCatalog catalog;
static bool catalog_valid = false;
static bool callbacks_registered = false;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

#if PG_VERSION_NUM >= 150000
static void
crmguard_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	cg_worker_shmem_request();
	cg_otp_shmem_request();
	cg_device_shmem_request();
	cg_approval_shmem_request();
	cg_audit_shmem_request();
}
#endif

static void
crmguard_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	cg_worker_shmem_startup();
	cg_otp_shmem_startup();
	cg_device_shmem_startup();
	cg_approval_shmem_startup();
	cg_audit_shmem_startup();
}

/*
 * DISCARD ALL is how a connection pooler hands a clean session to the next
 * client: it must also give up an identity assumed with a token.  A cursor
 * WITH HOLD must not outlive a transaction-scoped identity.  Around the
 * command, guard.c remembers what a guarded table it names had wrong
 * already, so that its event trigger reports only what the command changed.
 * DROP EXTENSION crmguard reads what it loses first, says it after it ran
 * (before commit), and drops the schema.
 */
static void
crmguard_process_utility(PlannedStmt *pstmt, const char *queryString,
						 bool readOnlyTree, ProcessUtilityContext context,
						 ParamListInfo params, QueryEnvironment *queryEnv,
						 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	void	   *guard_snapshot;
	void	   *drop_report;
	Oid			database;
	bool		worker_was_there;

	cg_guard_utility(pstmt);
	if (IsA(parsetree, DeclareCursorStmt))
		cg_principal_check_declare((DeclareCursorStmt *) parsetree);
	drop_report = cg_drop_is_crmguard(parsetree) ? cg_drop_collect() : NULL;
	guard_snapshot = cg_guard_snapshot(pstmt);
	/* a command that needs a database to itself: crmguard's worker leaves it first */
	database = cg_worker_database_to_leave(parsetree);
	worker_was_there = OidIsValid(database) && cg_worker_leave(database);
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
								 queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		cg_guard_snapshot_end(guard_snapshot);
		if (OidIsValid(database))
			cg_worker_return(database, worker_was_there);
		PG_RE_THROW();
	}
	PG_END_TRY();
	cg_guard_snapshot_end(guard_snapshot);
	if (OidIsValid(database) && IsA(parsetree, DropdbStmt))
		cg_worker_forget(database);
	else if (OidIsValid(database))
		cg_worker_return(database, worker_was_there);

	if (drop_report)
		cg_drop_finish(drop_report);
	if (IsA(parsetree, DiscardStmt) && ((DiscardStmt *) parsetree)->target == DISCARD_ALL)
		cg_principal_forget();
}

void
_PG_init(void)
{
	cg_crypto_init();

	/* a postmaster-only setting cannot be defined by a backend loading late */
	if (!process_shared_preload_libraries_in_progress)
	{
		MarkGUCPrefixReserved("crmguard");
		return;
	}

	DefineCustomStringVariable("crmguard.key_file",
							   "Path of the server key file, relative to the data directory.",
							   "Created on first use with 32 random bytes and mode 0600.",
							   &cg_key_file,
							   "crmguard.key",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	cg_jwt_init();
	cg_outbox_init();
	MarkGUCPrefixReserved("crmguard");

	cg_preloaded = true;
	cg_redact_init();
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = crmguard_process_utility;
	cg_visibility_init();
	cg_approval_init();
	cg_guard_init();
	cg_otp_idle_init();
	cg_fields_init();
	cg_activity_init();
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = crmguard_shmem_request;
#else
	cg_worker_shmem_request();
	cg_otp_shmem_request();
	cg_device_shmem_request();
	cg_approval_shmem_request();
	cg_audit_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = crmguard_shmem_startup;
}

/*
 * The library serves the SQL objects of its own version only: between a
 * binary upgrade and ALTER EXTENSION crmguard UPDATE, every crmguard function
 * and guard refuses clearly (guarded writes fail closed) instead of reading
 * tables or arguments the older script never made.  crmguard's own scripts
 * run unchecked.  Once seen current, a backend does not look again.
 */
static bool schema_version_ok = false;

static void
check_schema_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	char	   *version = NULL;

	if (creating_extension || !IsTransactionState())
		return;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("crmguard"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	/* not installed: the callers say so in their own words */
	if (version == NULL)
		return;
	if (strcmp(version, CG_EXTENSION_VERSION) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"crmguard\" is at version %s, its loaded library needs version %s",
						version, CG_EXTENSION_VERSION),
				 errdetail("crmguard refuses every guarded change and every call until its SQL objects are updated."),
				 errhint("Run ALTER EXTENSION crmguard UPDATE in this database.")));
	schema_version_ok = true;
}

/*
 * Fail clearly when the library was loaded on demand rather than preloaded:
 * without shared memory, attempt counters and the worker do not exist.
 */
void
cg_require_preload(void)
{
	if (!cg_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("crmguard must be loaded via \"shared_preload_libraries\""),
				 errhint("Add crmguard to \"shared_preload_libraries\" in postgresql.conf and restart the server.")));
	if (!schema_version_ok)
		check_schema_version();
}

/*
 * PostgreSQL allows a backend only ten relcache callbacks in all: crmguard
 * registers one, and every module's cache hangs off it.
 */
#define CG_MAX_RELCACHE_CALLBACKS 16

static struct
{
	RelcacheCallbackFunction function;
	Datum		arg;
}			relcache_callbacks[CG_MAX_RELCACHE_CALLBACKS];
static int	relcache_callback_count = 0;

static void
relcache_dispatch(Datum arg, Oid relid)
{
	int			i;

	for (i = 0; i < relcache_callback_count; i++)
		relcache_callbacks[i].function(relcache_callbacks[i].arg, relid);
}

void
cg_register_relcache_callback(RelcacheCallbackFunction function, Datum arg)
{
	if (relcache_callback_count == 0)
		CacheRegisterRelcacheCallback(relcache_dispatch, (Datum) 0);
	if (relcache_callback_count >= CG_MAX_RELCACHE_CALLBACKS)
		elog(FATAL, "out of crmguard relcache callback slots");
	relcache_callbacks[relcache_callback_count].function = function;
	relcache_callbacks[relcache_callback_count].arg = arg;
	relcache_callback_count++;
}

/* Forget cached OIDs and principals when our tables change */
static void
relcache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid ||
		(catalog_valid && (relid == catalog.principal_rel ||
						   relid == catalog.audit_rel)))
	{
		catalog_valid = false;
		cg_principal_invalidate();
	}
}

static void
syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	/* a dropped or renamed schema, table or role */
	catalog_valid = false;
	cg_principal_invalidate();
}

/*
 * The OIDs of the extension's schema and tables, looked up once per backend
 * and again after DDL; errors when the extension is not installed here.
 */
const CgCatalog *
cg_catalog(void)
{
	HeapTuple	tuple;

	if (catalog_valid)
		return &catalog;
	check_schema_version();

	if (!callbacks_registered)
	{
		cg_register_relcache_callback(relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, syscache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, syscache_callback, (Datum) 0);
		callbacks_registered = true;
	}

	catalog.schema = get_namespace_oid("crmguard", true);
	catalog.principal_rel = OidIsValid(catalog.schema) ?
		get_relname_relid("principal", catalog.schema) : InvalidOid;
	catalog.audit_rel = OidIsValid(catalog.schema) ?
		get_relname_relid("audit", catalog.schema) : InvalidOid;
	catalog.otp_rule_rel = OidIsValid(catalog.schema) ?
		get_relname_relid("otp_rule", catalog.schema) : InvalidOid;
	catalog.visibility_rule_rel = OidIsValid(catalog.schema) ?
		get_relname_relid("visibility_rule", catalog.schema) : InvalidOid;
	if (!OidIsValid(catalog.principal_rel) || !OidIsValid(catalog.audit_rel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"crmguard\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION crmguard.")));

	/* the extension's owner: CREATE EXTENSION made it the schema's owner */
	tuple = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(catalog.schema));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for schema %u", catalog.schema);
	catalog.owner = ((Form_pg_namespace) GETSTRUCT(tuple))->nspowner;
	ReleaseSysCache(tuple);

	catalog_valid = true;
	return &catalog;
}

/*
 * A relation that a SQL function's argument names must exist: a regclass
 * made from a number ('12345'::regclass, or an OID kept after its table was
 * dropped) names nothing.  Checked before any message names the relation.
 */
void
cg_require_relation(Oid relid)
{
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
}

/*
 * A relation as an error or log message names it: its kind and its name,
 * schema-qualified and quoted where needed ("table public.contact"), or
 * "relation with OID n" when the OID no longer names a relation (a plan, a
 * cache entry or a rule can outlive the table it was made for).  Never NULL,
 * and no error of its own: it is called while raising one.
 */
char *
cg_relation_description(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Form_pg_class form;
	const char *kind;
	char	   *result;

	if (!HeapTupleIsValid(tuple))
		return psprintf("relation with OID %u", relid);
	form = (Form_pg_class) GETSTRUCT(tuple);
	switch (form->relkind)
	{
		case RELKIND_RELATION:
		case RELKIND_PARTITIONED_TABLE:
			kind = "table";
			break;
		case RELKIND_VIEW:
			kind = "view";
			break;
		case RELKIND_MATVIEW:
			kind = "materialized view";
			break;
		case RELKIND_FOREIGN_TABLE:
			kind = "foreign table";
			break;
		default:
			kind = "relation";
			break;
	}
	/* a schema dropped meanwhile leaves the bare name, never NULL */
	result = psprintf("%s %s", kind,
					  quote_qualified_identifier(get_namespace_name(form->relnamespace),
												 NameStr(form->relname)));
	ReleaseSysCache(tuple);
	return result;
}

/*
 * Act as the owner of the extension's tables with a pinned search_path, so
 * privileged writes work for any caller and no planted object is resolved.
 * Only for crmguard's own catalogs: never read or cast anything of a user
 * table in here (cg_enter_table_owner is for that).
 */
void
cg_enter_owner(CgPrivilegedContext *ctx)
{
	Oid			owner = cg_catalog()->owner;

	GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
	SetUserIdAndSecContext(owner,
						   ctx->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	ctx->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Act as a role that owns user code (a table's owner, an approval process's
 * definer) the way VACUUM, ANALYZE and CREATE INDEX do since CVE-2022-1552:
 * as that role, inside a security-restricted operation, with a pinned
 * search_path.  Its domains, casts, operators, defaults and functions then
 * run with its own rights, never more, and cannot change the session.
 */
void
cg_enter_role(CgPrivilegedContext *ctx, Oid role)
{
	GetUserIdAndSecContext(&ctx->save_userid, &ctx->save_sec_context);
	SetUserIdAndSecContext(role, ctx->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	ctx->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * Everything that touches a user table (its rows, its column types, its
 * defaults, criteria over it) runs through here: as the table's owner.
 */
void
cg_enter_table_owner(CgPrivilegedContext *ctx, Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table with OID %u does not exist", relid)));
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	cg_enter_role(ctx, owner);
}

void
cg_leave_owner(CgPrivilegedContext *ctx)
{
	AtEOXact_GUC(true, ctx->save_nestlevel);
	SetUserIdAndSecContext(ctx->save_userid, ctx->save_sec_context);
}

/*
 * Pin the settings that output functions follow (DateStyle, TimeZone, ...)
 * until AtEOXact_GUC(false, the level returned): values printed meanwhile
 * read the same in every session.
 */
int
cg_pin_output_settings(void)
{
	static const char *const pinned[][2] = {
		{"datestyle", "ISO, MDY"}, {"intervalstyle", "postgres"}, {"timezone", "UTC"},
		{"extra_float_digits", "1"}, {"bytea_output", "hex"}, {"lc_monetary", "C"}
	};
	int			nestlevel = NewGUCNestLevel();
	size_t		i;

	for (i = 0; i < lengthof(pinned); i++)
	{
		const char *now = GetConfigOption(pinned[i][0], false, false);

		/* already so (the usual case but for one or two): no change to make and undo */
		if (now == NULL || strcmp(now, pinned[i][1]) != 0)
			(void) set_config_option(pinned[i][0], pinned[i][1], PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_SAVE, true, 0, false);
	}
	return nestlevel;
}

/*
 * A row (a composite datum) as jsonb, the way every part of crmguard
 * stores rows: to_jsonb's, which is row_to_json's read back as jsonb
 * without printing and parsing the text in between, with the output
 * settings pinned (a timestamptz, an interval, a float reads the same
 * whichever session made it: rows stored by one are compared in another).
 * to_jsonb takes the row's type from its call's expression, so it is
 * called with one.
 */
Jsonb *
cg_row_jsonb(Datum row)
{
	HeapTupleHeader tuple = DatumGetHeapTupleHeader(row);
	FmgrInfo	flinfo;
	Node	   *arg = (Node *) makeNullConst(HeapTupleHeaderGetTypeId(tuple), -1, InvalidOid);
	int			nest;
	Jsonb	   *result;

	fmgr_info(F_TO_JSONB, &flinfo);
	fmgr_info_set_expr((Node *) makeFuncExpr(F_TO_JSONB, JSONBOID, list_make1(arg), InvalidOid,
											 InvalidOid, COERCE_EXPLICIT_CALL), &flinfo);
	nest = cg_pin_output_settings();
	result = DatumGetJsonbP(FunctionCall1(&flinfo, row));
	AtEOXact_GUC(false, nest);
	return result;
}

/* Do values of this type read and print the same whatever the session's settings? */
bool
cg_type_text_is_fixed(Oid type)
{
	Oid			base = getBaseType(type);

	switch (base)
	{
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case NUMERICOID:
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
		case NAMEOID:
		case CHAROID:
		case UUIDOID:
		case BOOLOID:
			return true;
		default:
			return type_is_enum(base);
	}
}

/*
 * A row's key as text, the same in every session: approval requests, OTP
 * challenges, recipient changes, sealed contact fields, drafts and the audit
 * log name a row by it, and find the row's entries by it again; compiled
 * criteria hold their values so (cg_value_canonical).  The output
 * of dates, times, intervals, floats, bytea and money follows settings any
 * session may change (DateStyle, TimeZone, ...): those are pinned while the
 * key is printed, or a session under another DateStyle would name the row
 * differently, or name another row the same ('03/04/2031' under MDY and
 * DMY).  Keys of the types whose output no setting changes are printed as
 * they are.
 */
char *
cg_row_key_output(Oid keytype, Datum value)
{
	Oid			out;
	bool		varlena;
	int			nestlevel;
	char	   *text;

	getTypeOutputInfo(keytype, &out, &varlena);
	if (cg_type_text_is_fixed(keytype))
		return OidOutputFunctionCall(out, value);
	nestlevel = cg_pin_output_settings();
	text = OidOutputFunctionCall(out, value);
	AtEOXact_GUC(false, nestlevel);
	return text;
}

/*
 * A statement with a plan prepared once per backend and statement text,
 * for crmguard's own catalogs (as the extension's owner) or a query crmguard
 * builds for a table (as the role it runs as): the plan is made and run
 * with the pinned search_path of those contexts, and re-planned as any
 * cached plan is (a table changed, another role, another principal).  The
 * caller is connected to SPI.
 */
#define MAX_KEPT_PLANS 128
/* texts built from what callers send (a draft's columns) take at most this many */
#define MAX_KEPT_CALLER_PLANS 32

static SPIPlanPtr
kept_plan(const char *sql, int nargs, Oid *types, bool from_caller)
{
	static char *texts[MAX_KEPT_PLANS];
	static SPIPlanPtr plans[MAX_KEPT_PLANS];
	static int	nplans = 0;
	static int	ncaller = 0;
	SPIPlanPtr	plan;
	int			i;

	for (i = 0; i < nplans; i++)
		if (strcmp(texts[i], sql) == 0)
			return plans[i];
	plan = SPI_prepare(sql, nargs, types);
	if (plan == NULL)
		elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	if (nplans < MAX_KEPT_PLANS && (!from_caller || ncaller < MAX_KEPT_CALLER_PLANS) &&
		SPI_keepplan(plan) == 0)
	{
		texts[nplans] = MemoryContextStrdup(TopMemoryContext, sql);
		plans[nplans++] = plan;
		ncaller += from_caller;
	}
	return plan;
}

/*
 * Run a kept statement (same arguments as SPI_execute_with_args), planned
 * and run with fixed planner settings, not the session's: crmguard's point
 * queries on its own catalogs.
 */
int
cg_execute_kept(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
				bool read_only, long count)
{
	int			nestlevel = NewGUCNestLevel();
	int			rc;

	/* index look-ups whatever the statistics say, no JIT: these are point queries */
	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	rc = SPI_execute_plan(kept_plan(sql, nargs, types, false), values, nulls, read_only, count);
	AtEOXact_GUC(true, nestlevel);
	return rc;
}

/*
 * The same under the session's planner settings, for a statement whose text
 * callers shape (an approved draft's INSERT names the columns it carries):
 * it runs a table's own code (its defaults and triggers, whose queries are
 * planned as they run), which must not be planned under crmguard's
 * settings, and however many texts callers make, crmguard's own statements
 * keep room for their plans.
 */
int
cg_execute_kept_shaped(const char *sql, int nargs, Oid *types, Datum *values,
					   const char *nulls, bool read_only, long count)
{
	return SPI_execute_plan(kept_plan(sql, nargs, types, true), values, nulls, read_only, count);
}

/*
 * Has this crmguard catalog never held a row?  An empty heap has no blocks;
 * a row inserted (even uncommitted, or deleted since) leaves at least one.
 * Lets a module skip its first read in databases that never used it.  The
 * size comes from the storage manager under the table's lock, without
 * building the table's relcache entry: on a fresh connection that is most
 * of the cost.
 */
bool
cg_catalog_never_written(Oid relid)
{
	HeapTuple	tuple;
	Form_pg_class form;
	RelFileNode node;
	SMgrRelation smgr;
	bool		empty;

	LockRelationOid(relid, AccessShareLock);	/* no TRUNCATE or rewrite meanwhile */
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	form = (Form_pg_class) GETSTRUCT(tuple);
	if (form->relkind != RELKIND_RELATION || form->relpersistence != RELPERSISTENCE_PERMANENT ||
		!OidIsValid(form->relfilenode))
	{
		/* not a plain table of ours: ask the relation itself */
		ReleaseSysCache(tuple);
		{
			Relation	rel = table_open(relid, NoLock);

			empty = RelationGetNumberOfBlocks(rel) == 0;
			table_close(rel, NoLock);
		}
		UnlockRelationOid(relid, AccessShareLock);
		return empty;
	}
	node.spcNode = OidIsValid(form->reltablespace) ? form->reltablespace : MyDatabaseTableSpace;
	node.dbNode = MyDatabaseId;
	node.relNode = form->relfilenode;
	ReleaseSysCache(tuple);
	smgr = smgropen(node, InvalidBackendId);
	empty = !smgrexists(smgr, MAIN_FORKNUM) || smgrnblocks(smgr, MAIN_FORKNUM) == 0;
	UnlockRelationOid(relid, AccessShareLock);
	return empty;
}

/*
 * The number of a column of one of crmguard's catalogs, which must exist.
 * after: the column named before it in the caller's list (0: none); lists
 * mostly follow the table's order, so the search starts after that one.
 */
static AttrNumber
catalog_column_after(Relation rel, const char *column, AttrNumber after)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, (after + i) % desc->natts);

		if (!att->attisdropped && strcmp(NameStr(att->attname), column) == 0)
			return att->attnum;
	}
	elog(ERROR, "column \"%s\" of crmguard catalog \"%s\" is missing",
		 column, RelationGetRelationName(rel));
	return InvalidAttrNumber;	/* keep compiler quiet */
}

static AttrNumber
catalog_column(Relation rel, const char *column)
{
	return catalog_column_after(rel, column, 0);
}

/* The index of one of crmguard's catalogs named index_name, ready and with nkeys key columns */
static Relation
open_catalog_index(Relation rel, const char *index_name, int nkeys)
{
	Oid			index = get_relname_relid(index_name, RelationGetNamespace(rel));
	Relation	irel;

	if (!OidIsValid(index))
		elog(ERROR, "index \"%s\" of crmguard's catalogs does not exist", index_name);
	irel = index_open(index, AccessShareLock);
	if (irel->rd_index->indrelid != RelationGetRelid(rel) || !irel->rd_index->indisvalid ||
		!irel->rd_index->indisready || irel->rd_index->indnkeyatts < nkeys)
		elog(ERROR, "index \"%s\" is not a usable index of crmguard catalog \"%s\"",
			 index_name, RelationGetRelationName(rel));
	return irel;
}

/*
 * A scan of one of crmguard's own catalogs visible to a snapshot, straight
 * from the heap, or through one of its indexes where keys hold, handing fn
 * the values of the named columns (valid until fn returns).  An index scan
 * may be run again with other keys: the point reads of a hot path open the
 * table and index once.  No privilege is checked: these are crmguard's
 * catalogs, read for crmguard, never a user's table.
 */
struct CgCatalogScan
{
	Relation	rel;
	Relation	index;			/* NULL: a heap scan */
	Snapshot	snapshot;
	int			ncolumns;
	AttrNumber *attnums;
	Datum	   *values;
	bool	   *nulls;
	TupleTableSlot *slot;
	IndexScanDesc iscan;
	int			nkeys;
};

CgCatalogScan *
cg_catalog_scan_begin(Oid relid, const char *index_name, int nkeys, Snapshot snapshot,
					  int ncolumns, const char *const *columns)
{
	CgCatalogScan *scan = palloc0(sizeof(CgCatalogScan));
	int			i;

	scan->rel = table_open(relid, AccessShareLock);
	if (index_name)
		scan->index = open_catalog_index(scan->rel, index_name, nkeys);
	scan->ncolumns = ncolumns;
	scan->attnums = palloc(sizeof(AttrNumber) * ncolumns);
	scan->values = palloc(sizeof(Datum) * ncolumns);
	scan->nulls = palloc(sizeof(bool) * ncolumns);
	for (i = 0; i < ncolumns; i++)
	{
		scan->attnums[i] = catalog_column_after(scan->rel, columns[i], i > 0 ? scan->attnums[i - 1] : 0);
	}
	scan->snapshot = RegisterSnapshot(snapshot);
	scan->slot = table_slot_create(scan->rel, NULL);
	scan->nkeys = nkeys;
	if (scan->index)
		scan->iscan = index_beginscan(scan->rel, scan->index, scan->snapshot, nkeys, 0);
	return scan;
}

/*
 * The values of the columns attnums names, from a slot (valid while the slot
 * holds its row); the row is decoded up to the last of them only.
 */
static void
slot_columns(TupleTableSlot *slot, int ncolumns, const AttrNumber *attnums, Datum *values, bool *nulls)
{
	AttrNumber	last = 0;
	int			i;

	for (i = 0; i < ncolumns; i++)
		last = Max(last, attnums[i]);
	if (last > 0)
		slot_getsomeattrs(slot, last);
	for (i = 0; i < ncolumns; i++)
	{
		values[i] = slot->tts_values[attnums[i] - 1];
		nulls[i] = slot->tts_isnull[attnums[i] - 1];
	}
}

static void
catalog_row(CgCatalogScan *scan, CgCatalogRowFn fn, void *arg)
{
	slot_columns(scan->slot, scan->ncolumns, scan->attnums, scan->values, scan->nulls);
	fn(scan->values, scan->nulls, arg);
}

/* Each row where keys hold (an index scan), or each row (a heap scan: keys NULL) */
void
cg_catalog_scan_run(CgCatalogScan *scan, ScanKey keys, CgCatalogRowFn fn, void *arg)
{
	if (scan->index)
	{
		int			i;

		/* compared as the index orders its columns, not in ScanKeyInit's "C" */
		for (i = 0; i < scan->nkeys; i++)
			keys[i].sk_collation = scan->index->rd_indcollation[keys[i].sk_attno - 1];
		index_rescan(scan->iscan, keys, scan->nkeys, NULL, 0);
		while (index_getnext_slot(scan->iscan, ForwardScanDirection, scan->slot))
			catalog_row(scan, fn, arg);
	}
	else
	{
		TableScanDesc heap = table_beginscan(scan->rel, scan->snapshot, 0, NULL);

		while (table_scan_getnextslot(heap, ForwardScanDirection, scan->slot))
			catalog_row(scan, fn, arg);
		table_endscan(heap);
	}
}

/* Whether a row where keys hold passes test: the scan stops at the first that does */
bool
cg_catalog_scan_find(CgCatalogScan *scan, ScanKey keys, CgCatalogRowTest test, void *arg)
{
	bool		found = false;
	int			i;

	if (scan->index == NULL)
		elog(ERROR, "cg_catalog_scan_find needs an index scan");
	for (i = 0; i < scan->nkeys; i++)
		keys[i].sk_collation = scan->index->rd_indcollation[keys[i].sk_attno - 1];
	index_rescan(scan->iscan, keys, scan->nkeys, NULL, 0);
	while (!found && index_getnext_slot(scan->iscan, ForwardScanDirection, scan->slot))
	{
		slot_columns(scan->slot, scan->ncolumns, scan->attnums, scan->values, scan->nulls);
		found = test(scan->values, scan->nulls, arg);
	}
	return found;
}

void
cg_catalog_scan_end(CgCatalogScan *scan)
{
	if (scan->index)
	{
		index_endscan(scan->iscan);
		index_close(scan->index, AccessShareLock);
	}
	ExecDropSingleTupleTableSlot(scan->slot);
	UnregisterSnapshot(scan->snapshot);
	table_close(scan->rel, AccessShareLock);
	pfree(scan->attnums);
	pfree(scan->values);
	pfree(scan->nulls);
	pfree(scan);
}

/* The rows where keys hold, through index_name: one scan, opened and closed */
void
cg_scan_catalog_by_key(Oid relid, const char *index_name, int nkeys, ScanKey keys,
					   Snapshot snapshot, int ncolumns, const char *const *columns,
					   CgCatalogRowFn fn, void *arg)
{
	CgCatalogScan *scan = cg_catalog_scan_begin(relid, index_name, nkeys, snapshot, ncolumns, columns);

	cg_catalog_scan_run(scan, keys, fn, arg);
	cg_catalog_scan_end(scan);
}

/*
 * Each row of one of crmguard's own catalogs, read straight from the heap
 * with snapshot.  The per-backend caches load this way, not by SPI, because
 * on a fresh connection the parse and plan of a query cost several times
 * the scan of a small catalog.
 */
void
cg_scan_catalog(Oid relid, Snapshot snapshot, int ncolumns, const char *const *columns,
				CgCatalogRowFn fn, void *arg)
{
	CgCatalogScan *scan = cg_catalog_scan_begin(relid, NULL, 0, snapshot, ncolumns, columns);

	cg_catalog_scan_run(scan, NULL, fn, arg);
	cg_catalog_scan_end(scan);
}

/*
 * Lock the row of one of crmguard's catalogs that index_name finds where
 * keys hold, in mode: as a foreign key's check locks the row it refers to
 * (LockTupleKeyShare, as ri_triggers.c does: nobody deletes it or changes
 * its key until this transaction ends; for rows appended without a
 * statement, whose foreign key is not checked), or as SELECT ... FOR UPDATE
 * (LockTupleExclusive).  False when no such row is there any more; under
 * REPEATABLE READ or SERIALIZABLE, a row changed or deleted since the
 * transaction's snapshot is a serialization failure, as in a statement.
 * When it is locked, fn (if any) gets the named columns of the version
 * locked, the newest (valid until fn returns).
 */
bool
cg_lock_catalog_row(Oid relid, const char *index_name, int nkeys, ScanKey keys, LockTupleMode mode,
					int ncolumns, const char *const *columns, CgCatalogRowFn fn, void *arg)
{
	Relation	rel;
	Relation	irel;
	TupleTableSlot *slot;
	Snapshot	snapshot;
	IndexScanDesc scan;
	bool		locked = false;
	int			i;

	/* a row lock is a write, refused as a statement's is */
	PreventCommandIfReadOnly(mode == LockTupleExclusive ? "SELECT FOR UPDATE" :
							 mode == LockTupleNoKeyExclusive ? "SELECT FOR NO KEY UPDATE" :
							 mode == LockTupleShare ? "SELECT FOR SHARE" : "SELECT FOR KEY SHARE");
	PreventCommandIfParallelMode("SELECT FOR UPDATE");
	rel = table_open(relid, RowShareLock);
	irel = open_catalog_index(rel, index_name, nkeys);
	slot = table_slot_create(rel, NULL);

	/* as the key's check reads: what this transaction wrote, and its snapshot */
	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetTransactionSnapshot());

	for (i = 0; i < nkeys; i++)
		keys[i].sk_collation = irel->rd_indcollation[keys[i].sk_attno - 1];
	scan = index_beginscan(rel, irel, snapshot, nkeys, 0);
	index_rescan(scan, keys, nkeys, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		TM_FailureData tmfd;
		TM_Result	result;

		result = table_tuple_lock(rel, &slot->tts_tid, snapshot, slot, GetCurrentCommandId(false),
								  mode, LockWaitBlock,
								  TUPLE_LOCK_FLAG_LOCK_UPDATE_IN_PROGRESS |
								  (IsolationUsesXactSnapshot() ? 0 : TUPLE_LOCK_FLAG_FIND_LAST_VERSION),
								  &tmfd);
		if ((result == TM_Updated || result == TM_Deleted) && IsolationUsesXactSnapshot())
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent %s",
							result == TM_Updated ? "update" : "delete")));
		if (result == TM_Invisible)
			elog(ERROR, "attempted to lock invisible tuple");
		locked = result == TM_Ok;
		/* the newest version, when another transaction changed the row: is it still the key's? */
		for (i = 0; locked && tmfd.traversed && i < nkeys; i++)
		{
			bool		isnull;
			Datum		value = slot_getattr(slot, irel->rd_index->indkey.values[keys[i].sk_attno - 1],
											 &isnull);

			locked = !isnull && DatumGetBool(FunctionCall2Coll(&keys[i].sk_func, keys[i].sk_collation,
															   value, keys[i].sk_argument));
		}
	}
	if (locked && fn != NULL)
	{
		AttrNumber *attnums = palloc(sizeof(AttrNumber) * Max(ncolumns, 1));
		Datum	   *values = palloc(sizeof(Datum) * Max(ncolumns, 1));
		bool	   *nulls = palloc(sizeof(bool) * Max(ncolumns, 1));

		for (i = 0; i < ncolumns; i++)
			attnums[i] = catalog_column(rel, columns[i]);
		slot_columns(slot, ncolumns, attnums, values, nulls);
		fn(values, nulls, arg);
		pfree(attnums);
		pfree(values);
		pfree(nulls);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(irel, AccessShareLock);
	table_close(rel, NoLock);
	return locked;
}

/*
 * The constraints crmguard gives the catalogs it writes without a
 * statement, whose values and referenced rows the writers ensure.
 */
static const char *const ensured_constraints[] = {
	"outbox_state_check", "otp_challenge_state_rule_id_fkey",
	"approval_history_event_check", "approval_history_request_fkey",
	"approval_request_state_state_check", "approval_request_state_process_fkey",
	"draft_state_state_check", "draft_history_event_check", "draft_history_draft_fkey", NULL
};

/*
 * crmguard's own triggers on the catalogs it writes without a statement.
 * A statement trigger's work is done by the table's writers themselves; a
 * row trigger's work is run by the writer for each row it writes, as the
 * trigger would run.  Known by what they are: name, kind and events, no
 * WHEN, and crmguard's C function, not a replacement of the same name.
 */
typedef struct EnsuredTrigger
{
	const char *table;			/* the crmguard catalog it is on */
	const char *name;
	int16		type;			/* pg_trigger.tgtype, exactly */
	const char *function;		/* crmguard.function() */
	const char *symbol;			/* its C symbol */
	CgRowWrittenFn work;		/* a row trigger's work */
} EnsuredTrigger;

static const EnsuredTrigger ensured_triggers[] = {
	{"approval_history", "approval_history_waiting", TRIGGER_TYPE_AFTER | TRIGGER_TYPE_INSERT,
	"approval_history_added", "crmguard_approval_history_added", NULL},
	{"approval_request_state", "approval_request_cache_invalidate",
		TRIGGER_TYPE_ROW | TRIGGER_TYPE_AFTER | TRIGGER_TYPE_INSERT | TRIGGER_TYPE_UPDATE | TRIGGER_TYPE_DELETE,
	"approval_requests_changed", "crmguard_approval_requests_changed", cg_approval_request_written},
};

static const EnsuredTrigger *
ensured_trigger(Relation rel, const Trigger *trigger)
{
	const EnsuredTrigger *e = NULL;
	int			i;

	for (i = 0; i < (int) lengthof(ensured_triggers) && e == NULL; i++)
		if (strcmp(trigger->tgname, ensured_triggers[i].name) == 0 &&
			strcmp(RelationGetRelationName(rel), ensured_triggers[i].table) == 0 &&
			RelationGetNamespace(rel) == cg_catalog()->schema)
			e = &ensured_triggers[i];
	/* as crmguard made it: not a (deferrable) constraint trigger either */
	if (e == NULL || trigger->tgtype != e->type || trigger->tgqual != NULL ||
		OidIsValid(trigger->tgconstraint) || trigger->tgdeferrable ||
		trigger->tgfoid != cg_function_oid(e->function, 0, NULL))
		return NULL;
	return cg_function_is(trigger->tgfoid, e->symbol) ? e : NULL;
}

static void
refuse_constraint(Relation rel, const char *name)
{
	int			i;

	for (i = 0; ensured_constraints[i]; i++)
		if (strcmp(ensured_constraints[i], name) == 0)
			return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("crmguard catalog \"%s\" has a constraint \"%s\" crmguard did not make",
					RelationGetRelationName(rel), name),
			 errdetail("crmguard writes the table without a statement, as a system catalog: the constraint would not be checked."),
			 errhint("Drop the constraint.")));
}

/*
 * What an INSERT or UPDATE statement on one of crmguard's catalogs would
 * obey and a write without one cannot: a trigger, a rule, row security, a
 * constraint added by hand.  Refused, not skipped.  (crmguard's own foreign
 * keys' checks are internal triggers, and their writers hold the rows
 * referred to.)
 */
/*
 * Would an UPDATE setting these columns fire the trigger?  One with a
 * column list (UPDATE OF) fires only when the statement sets one of them.
 */
static bool
update_fires(const Trigger *trigger, int ncolumns, const AttrNumber *attnums)
{
	int			i;
	int			j;

	if (trigger->tgnattr == 0)
		return true;
	for (i = 0; i < trigger->tgnattr; i++)
		for (j = 0; j < ncolumns; j++)
			if (trigger->tgattr[i] == attnums[j])
				return true;
	return false;
}

/*
 * The key a foreign key of another table refers to in this one, set by an
 * UPDATE: the key's action (NO ACTION's check, CASCADE, SET NULL) would run.
 * (A foreign key this table holds is checked below.)
 */
static void
refuse_referenced_key_set(Relation rel, Oid conoid, int ncolumns, const AttrNumber *attnums)
{
	HeapTuple	con = SearchSysCache1(CONSTROID, ObjectIdGetDatum(conoid));
	Form_pg_constraint form;
	char	   *name = NULL;

	if (!HeapTupleIsValid(con))
		return;
	form = (Form_pg_constraint) GETSTRUCT(con);
	if (form->contype == CONSTRAINT_FOREIGN && form->confrelid == RelationGetRelid(rel))
	{
		bool		isnull;
		Datum		d = SysCacheGetAttr(CONSTROID, con, Anum_pg_constraint_confkey, &isnull);

		if (!isnull)
		{
			Datum	   *keys;
			int			nkeys;
			int			k;
			int			j;

			deconstruct_array(DatumGetArrayTypeP(d), INT2OID, sizeof(int16), true, TYPALIGN_SHORT,
							  &keys, NULL, &nkeys);
			for (k = 0; k < nkeys && name == NULL; k++)
				for (j = 0; j < ncolumns && name == NULL; j++)
					if (DatumGetInt16(keys[k]) == attnums[j])
						name = pstrdup(NameStr(form->conname));
		}
	}
	ReleaseSysCache(con);
	if (name != NULL)
		refuse_constraint(rel, name);
}

static CgRowWrittenFn
refuse_what_a_statement_would_run(Relation rel, CmdType command, int ncolumns, const AttrNumber *attnums)
{
	CgRowWrittenFn work = NULL;
	TriggerDesc *triggers = rel->trigdesc;
	TupleConstr *constr = RelationGetDescr(rel)->constr;
	List	   *keys = NIL;
	List	   *unset = NIL;		/* keys on columns not set: checked if deferrable */
	ListCell   *lc;
	int			i;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relhasrules ||
		rel->rd_rel->relrowsecurity)
		elog(ERROR, "crmguard catalog \"%s\" is not a plain table without rules and row security",
			 RelationGetRelationName(rel));
	for (i = 0; triggers && i < triggers->numtriggers; i++)
	{
		const Trigger *trigger = &triggers->triggers[i];
		const EnsuredTrigger *ensured;

		if (!(command == CMD_INSERT ? TRIGGER_FOR_INSERT(trigger->tgtype)
			  : TRIGGER_FOR_UPDATE(trigger->tgtype) && update_fires(trigger, ncolumns, attnums)))
			continue;
		if (trigger->tgisinternal)
		{
			/* a foreign key of another table on a key this UPDATE sets: its action would run */
			if (command == CMD_UPDATE && OidIsValid(trigger->tgconstraint))
				refuse_referenced_key_set(rel, trigger->tgconstraint, ncolumns, attnums);
			continue;
		}
		ensured = ensured_trigger(rel, trigger);
		if (ensured != NULL && ensured->work != NULL && work == NULL)
		{
			/* run for each row written, when the trigger would fire (TriggerEnabled) */
			if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA ?
				trigger->tgenabled == TRIGGER_FIRES_ON_REPLICA || trigger->tgenabled == TRIGGER_FIRES_ALWAYS :
				trigger->tgenabled == TRIGGER_FIRES_ON_ORIGIN || trigger->tgenabled == TRIGGER_FIRES_ALWAYS)
				work = ensured->work;
		}
		else if (ensured == NULL || ensured->work != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("crmguard catalog \"%s\" has an %s trigger \"%s\"",
							RelationGetRelationName(rel), command == CMD_INSERT ? "INSERT" : "UPDATE",
							triggers->triggers[i].tgname),
					 errdetail("crmguard writes the table without a statement, as a system catalog: its triggers would not fire."),
					 errhint("Drop the trigger; follow the table with logical decoding instead.")));
	}
	for (i = 0; constr && i < constr->num_check; i++)
		refuse_constraint(rel, constr->check[i].ccname);
	/*
	 * The relcache's list may be rebuilt by a catalog read: its OIDs first.
	 * An UPDATE checks a foreign key only when it sets one of its columns.
	 */
	foreach(lc, RelationGetFKeyList(rel))
	{
		ForeignKeyCacheInfo *fk = (ForeignKeyCacheInfo *) lfirst(lc);
		bool		checked = command != CMD_UPDATE;
		int			k;
		int			j;

		for (k = 0; !checked && k < fk->nkeys; k++)
			for (j = 0; j < ncolumns; j++)
				checked |= fk->conkey[k] == attnums[j];
		if (checked)
			keys = lappend_oid(keys, fk->conoid);
		else
			unset = lappend_oid(unset, fk->conoid);
	}
	/*
	 * A deferred key is checked again for a row this transaction inserted,
	 * set columns or not (its INSERT's check then finds that version dead):
	 * refused unless ensured, as if set.
	 */
	foreach(lc, unset)
	{
		HeapTuple	con = SearchSysCache1(CONSTROID, ObjectIdGetDatum(lfirst_oid(lc)));

		if (HeapTupleIsValid(con))
		{
			if (((Form_pg_constraint) GETSTRUCT(con))->condeferrable)
				keys = lappend_oid(keys, lfirst_oid(lc));
			ReleaseSysCache(con);
		}
	}
	list_free(unset);
	foreach(lc, keys)
	{
		char	   *name = get_constraint_name(lfirst_oid(lc));

		if (name)
			refuse_constraint(rel, name);
	}
	list_free(keys);
	if (command == CMD_UPDATE && constr && constr->has_generated_stored)
		elog(ERROR, "crmguard catalog \"%s\" has a generated column", RelationGetRelationName(rel));
	return work;
}

/*
 * The numbers of the named columns of one of crmguard's catalogs about to be
 * written without a statement (command): each must be of the given type,
 * and the write must be one a statement could make here.
 */
static AttrNumber *
writable_columns(Relation rel, CmdType command, int ncolumns, const char *const *columns,
				 const Oid *types, CgRowWrittenFn *work)
{
	const char *what = command == CMD_INSERT ? "INSERT" : "UPDATE";
	AttrNumber *attnums = palloc(sizeof(AttrNumber) * ncolumns);
	int			i;

	PreventCommandIfReadOnly(what);
	PreventCommandIfParallelMode(what);
	for (i = 0; i < ncolumns; i++)
	{
		Form_pg_attribute att;

		attnums[i] = catalog_column_after(rel, columns[i], i > 0 ? attnums[i - 1] : 0);
		att = TupleDescAttr(RelationGetDescr(rel), attnums[i] - 1);
		if (att->atttypid != types[i] || att->atttypmod != -1)
			elog(ERROR, "column \"%s\" of crmguard catalog \"%s\" is not of type %s",
				 columns[i], RelationGetRelationName(rel), format_type_be(types[i]));
	}
	*work = refuse_what_a_statement_would_run(rel, command, ncolumns, attnums);
	CheckCmdReplicaIdentity(rel, command);
	return attnums;
}

/*
 * The end of a write without a statement: indexes and table closed (the
 * table's lock kept to the end of the transaction, as a statement's), the
 * write's memory freed, and the rows visible to the next command.
 */
static void
end_write(EState *estate, ResultRelInfo *info, MemoryContext old)
{
	ExecCloseIndices(info);
	ExecResetTupleTable(estate->es_tupleTable, false);
	table_close(info->ri_RelationDesc, NoLock);
	MemoryContextSwitchTo(old);
	FreeExecutorState(estate);
	CommandCounterIncrement();
}

/*
 * Append rows to one of crmguard's own catalogs without a statement: heap
 * tuples and their index entries, as PostgreSQL writes its system catalogs.
 * For the rows the hot paths add (audit entries, approval requests and
 * history, drafts, challenges, outbox messages): there,
 * a statement's executor start, its foreign-key check and the table's CHECK
 * expressions, which PostgreSQL reads anew for every statement, cost
 * several times the insert itself.
 *
 * values and nulls hold nrows rows of the ncolumns named columns, of the
 * given types.  A column with a default must be named (left out, it would
 * be a silent NULL); NOT NULL and unique indexes are enforced here as a
 * statement would, and a read-only transaction is refused as a statement
 * would be.  What is not checked, and is the caller's to ensure: the
 * table's CHECK constraints (callers write fixed words of crmguard's own
 * code) and its foreign keys (the caller holds the row referred to).
 * Anything a statement would run that this cannot (a trigger, a rule, row
 * security, a constraint, a deferred unique check) is refused, not skipped:
 * it was added to crmguard's catalog by hand.  crmguard's own row triggers
 * (ensured_triggers) are the exception: their work is run here for each row,
 * as the trigger would run.  The rows are visible to the next command.
 */
void
cg_insert_catalog_rows(Oid relid, int ncolumns, const char *const *columns, const Oid *types,
					   int nrows, const Datum *values, const bool *nulls)
{
	EState	   *estate = CreateExecutorState();
	MemoryContext old = MemoryContextSwitchTo(estate->es_query_cxt);
	Relation	rel = table_open(relid, RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	CgRowWrittenFn work;
	AttrNumber *attnums = writable_columns(rel, CMD_INSERT, ncolumns, columns, types, &work);
	bool	   *named = palloc0(sizeof(bool) * desc->natts);
	ResultRelInfo *info = makeNode(ResultRelInfo);
	TupleTableSlot *slot = ExecInitExtraTupleSlot(estate, desc, &TTSOpsVirtual);
	CommandId	cid;
	int			r;
	int			i;

	for (i = 0; i < ncolumns; i++)
		named[attnums[i] - 1] = true;
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && !named[i] && (att->atthasdef || att->attidentity))
			elog(ERROR, "column \"%s\" of crmguard catalog \"%s\" has a default and no value",
				 NameStr(att->attname), RelationGetRelationName(rel));
	}
	InitResultRelInfo(info, rel, 0, NULL, 0);
	ExecOpenIndices(info, false);
	for (r = 0; r < nrows; r++)
	{
		List	   *recheck;

		/* a row trigger's work may have written meanwhile */
		cid = GetCurrentCommandId(true);

		ExecClearTuple(slot);
		memset(slot->tts_isnull, true, sizeof(bool) * desc->natts);
		for (i = 0; i < ncolumns; i++)
		{
			slot->tts_values[attnums[i] - 1] = values[r * ncolumns + i];
			slot->tts_isnull[attnums[i] - 1] = nulls != NULL && nulls[r * ncolumns + i];
		}
		for (i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (slot->tts_isnull[i] && att->attnotnull && !att->attisdropped)
				ereport(ERROR,
						(errcode(ERRCODE_NOT_NULL_VIOLATION),
						 errmsg("null value in column \"%s\" of relation \"%s\" violates not-null constraint",
								NameStr(att->attname), RelationGetRelationName(rel))));
		}
		ExecStoreVirtualTuple(slot);
		table_tuple_insert(rel, slot, cid, 0, NULL);
#if PG_VERSION_NUM >= 160000
		recheck = ExecInsertIndexTuples(info, slot, estate, false, false, NULL, NIL, false);
#else
		recheck = ExecInsertIndexTuples(info, slot, estate, false, false, NULL, NIL);
#endif
		if (recheck != NIL)
			elog(ERROR, "crmguard catalog \"%s\" has a deferred unique index",
				 RelationGetRelationName(rel));
		if (work != NULL)
			work(rel, NULL, heap_form_tuple(desc, slot->tts_values, slot->tts_isnull));
		ResetPerTupleExprContext(estate);
	}
	end_write(estate, info, old);
}

/*
 * Set columns of the row of one of crmguard's catalogs that index_name finds
 * where keys hold, if it qualifies (test gets the test_columns' values), as
 * UPDATE ... WHERE does without a statement: seeing what this transaction
 * wrote so far; a row another transaction is updating is waited for and, in
 * READ COMMITTED, read again as that one left it; under REPEATABLE READ or
 * SERIALIZABLE such a row is a serialization failure, as PostgreSQL's own.
 * The same checks and refusals as cg_insert_catalog_rows.  Returns whether
 * the row was updated.
 */
bool
cg_update_catalog_row(Oid relid, const char *index_name, int nkeys, ScanKey keys,
					  int ntest, const char *const *test_columns, CgCatalogRowTest test, void *arg,
					  int ncolumns, const char *const *columns, const Oid *types,
					  const Datum *values, const bool *nulls)
{
	EState	   *estate = CreateExecutorState();
	MemoryContext old = MemoryContextSwitchTo(estate->es_query_cxt);
	Relation	rel = table_open(relid, RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	Relation	irel = open_catalog_index(rel, index_name, nkeys);
	ResultRelInfo *info = makeNode(ResultRelInfo);
	TupleTableSlot *current = table_slot_create(rel, &estate->es_tupleTable);
	TupleTableSlot *next = ExecInitExtraTupleSlot(estate, desc, &TTSOpsVirtual);
	CgRowWrittenFn work;
	AttrNumber *set_attnums = writable_columns(rel, CMD_UPDATE, ncolumns, columns, types, &work);
	AttrNumber *test_attnums = palloc(sizeof(AttrNumber) * ntest);
	Datum	   *test_values = palloc(sizeof(Datum) * ntest);
	bool	   *test_nulls = palloc(sizeof(bool) * ntest);
	Snapshot	snapshot;
	bool		updated = false;
	int			i;

	for (i = 0; i < ncolumns; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, set_attnums[i] - 1);

		if (nulls != NULL && nulls[i] && att->attnotnull)
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("null value in column \"%s\" of relation \"%s\" violates not-null constraint",
							columns[i], RelationGetRelationName(rel))));
	}
	for (i = 0; i < ntest; i++)
		test_attnums[i] = catalog_column(rel, test_columns[i]);
	for (i = 0; i < nkeys; i++)
		keys[i].sk_collation = irel->rd_indcollation[keys[i].sk_attno - 1];
	InitResultRelInfo(info, rel, 0, NULL, 0);
	ExecOpenIndices(info, false);

	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	for (;;)
	{
		IndexScanDesc scan = index_beginscan(rel, irel, snapshot, nkeys, 0);
		bool		found;
		TM_FailureData tmfd;
		LockTupleMode lockmode;
		TM_Result	result;
#if PG_VERSION_NUM >= 160000
		TU_UpdateIndexes update_indexes;
#else
		bool		update_indexes;
#endif

		index_rescan(scan, keys, nkeys, NULL, 0);
		found = index_getnext_slot(scan, ForwardScanDirection, current);
		index_endscan(scan);
		if (!found)
			break;
		slot_getallattrs(current);	/* the new version copies every column */
		slot_columns(current, ntest, test_attnums, test_values, test_nulls);
		if (!test(test_values, test_nulls, arg))
			break;
		ExecClearTuple(next);
		memcpy(next->tts_values, current->tts_values, sizeof(Datum) * desc->natts);
		memcpy(next->tts_isnull, current->tts_isnull, sizeof(bool) * desc->natts);
		for (i = 0; i < ncolumns; i++)
		{
			next->tts_values[set_attnums[i] - 1] = values[i];
			next->tts_isnull[set_attnums[i] - 1] = nulls != NULL && nulls[i];
		}
		ExecStoreVirtualTuple(next);
		result = table_tuple_update(rel, &current->tts_tid, next, GetCurrentCommandId(true), snapshot,
									InvalidSnapshot, true, &tmfd, &lockmode, &update_indexes);
		if (result == TM_Ok)
		{
#if PG_VERSION_NUM >= 160000
			List	   *recheck = NIL;

			if (update_indexes != TU_None && info->ri_NumIndices > 0)
				recheck = ExecInsertIndexTuples(info, next, estate, true, false, NULL, NIL,
												update_indexes == TU_Summarizing);
#else
			List	   *recheck = NIL;

			if (update_indexes && info->ri_NumIndices > 0)
				recheck = ExecInsertIndexTuples(info, next, estate, true, false, NULL, NIL);
#endif
			if (recheck != NIL)
				elog(ERROR, "crmguard catalog \"%s\" has a deferred unique index",
					 RelationGetRelationName(rel));
			if (work != NULL)
				work(rel, heap_form_tuple(desc, current->tts_values, current->tts_isnull),
					 heap_form_tuple(desc, next->tts_values, next->tts_isnull));
			updated = true;
			break;
		}
		if ((result == TM_Updated || result == TM_Deleted) && IsolationUsesXactSnapshot())
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent %s",
							result == TM_Updated ? "update" : "delete")));
		if (result != TM_Updated)
			break;				/* deleted meanwhile, or changed by this command */
		/* another transaction updated it and committed: read it again as it is now */
		UnregisterSnapshot(snapshot);
		snapshot = RegisterSnapshot(GetLatestSnapshot());
	}
	UnregisterSnapshot(snapshot);
	index_close(irel, AccessShareLock);
	end_write(estate, info, old);
	return updated;
}

/*
 * Delete the rows of one of crmguard's catalogs that index_name finds where
 * keys hold, as DELETE ... WHERE does without a statement, seeing what this
 * transaction wrote so far.  For derived rows whose writers hold the row
 * they derive from (the waiting list's, under its request's row lock): a
 * row another transaction changed meanwhile was changed by hand, and is a
 * serialization failure, to be retried, at any isolation level.  The same
 * refusals as cg_insert_catalog_rows (a DELETE trigger, a rule, row
 * security).  With test, only the rows it passes (it gets the
 * test_columns' values).  Returns the number of rows deleted.
 */
uint64
cg_delete_catalog_rows(Oid relid, const char *index_name, int nkeys, ScanKey keys,
					   int ntest, const char *const *test_columns, CgCatalogRowTest test, void *arg)
{
	EState	   *estate = CreateExecutorState();
	MemoryContext old = MemoryContextSwitchTo(estate->es_query_cxt);
	Relation	rel = table_open(relid, RowExclusiveLock);
	Relation	irel = open_catalog_index(rel, index_name, nkeys);
	ResultRelInfo *info = makeNode(ResultRelInfo);
	TupleTableSlot *slot = table_slot_create(rel, &estate->es_tupleTable);
	TriggerDesc *triggers = rel->trigdesc;
	Snapshot	snapshot;
	IndexScanDesc scan;
	AttrNumber *test_attnums = palloc(sizeof(AttrNumber) * Max(ntest, 1));
	Datum	   *test_values = palloc(sizeof(Datum) * Max(ntest, 1));
	bool	   *test_nulls = palloc(sizeof(bool) * Max(ntest, 1));
	uint64		deleted = 0;
	int			i;

	PreventCommandIfReadOnly("DELETE");
	PreventCommandIfParallelMode("DELETE");
	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rel->relhasrules ||
		rel->rd_rel->relrowsecurity)
		elog(ERROR, "crmguard catalog \"%s\" is not a plain table without rules and row security",
			 RelationGetRelationName(rel));
	for (i = 0; triggers && i < triggers->numtriggers; i++)
		if (TRIGGER_FOR_DELETE(triggers->triggers[i].tgtype))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("crmguard catalog \"%s\" has a DELETE trigger \"%s\"",
							RelationGetRelationName(rel), triggers->triggers[i].tgname),
					 errdetail("crmguard writes the table without a statement, as a system catalog: its triggers would not fire."),
					 errhint("Drop the trigger; follow the table with logical decoding instead.")));
	CheckCmdReplicaIdentity(rel, CMD_DELETE);
	for (i = 0; i < ntest; i++)
		test_attnums[i] = catalog_column(rel, test_columns[i]);
	for (i = 0; i < nkeys; i++)
		keys[i].sk_collation = irel->rd_indcollation[keys[i].sk_attno - 1];
	InitResultRelInfo(info, rel, 0, NULL, 0);

	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	scan = index_beginscan(rel, irel, snapshot, nkeys, 0);
	index_rescan(scan, keys, nkeys, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		TM_FailureData tmfd;
		TM_Result	result;

		if (test != NULL)
		{
			slot_columns(slot, ntest, test_attnums, test_values, test_nulls);
			if (!test(test_values, test_nulls, arg))
				continue;
		}
		result = table_tuple_delete(rel, &slot->tts_tid, GetCurrentCommandId(true), snapshot,
									InvalidSnapshot, true, &tmfd, false);
		if (result == TM_Ok)
			deleted++;
		else if (result == TM_Updated || result == TM_Deleted)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent %s",
							result == TM_Updated ? "update" : "delete")));
		else if (result != TM_SelfModified)
			elog(ERROR, "unexpected result %d deleting from crmguard catalog \"%s\"",
				 (int) result, RelationGetRelationName(rel));
	}
	index_endscan(scan);
	UnregisterSnapshot(snapshot);
	index_close(irel, AccessShareLock);
	end_write(estate, info, old);
	return deleted;
}

/*
 * The OID of crmguard.name(argtypes): one probe of the catalog cache,
 * where LookupFuncName gathers every function of that name first.
 */
Oid
cg_function_oid(const char *name, int nargs, const Oid *argtypes)
{
	oidvector  *args = buildoidvector(argtypes, nargs);

	return GetSysCacheOid3(PROCNAMEARGSNSP, Anum_pg_proc_oid, CStringGetDatum(name),
						   PointerGetDatum(args), ObjectIdGetDatum(cg_catalog()->schema));
}

/*
 * The C symbol of each function cg_function_is was asked about ("" for a
 * function not in C), kept until pg_proc changes: asked for crmguard's
 * triggers by every statement that writes a guarded table.
 */
typedef struct FunctionSymbol
{
	Oid			fn;
	char		symbol[NAMEDATALEN];
} FunctionSymbol;

static HTAB *function_symbols = NULL;

static void
forget_function_symbols(Datum arg, int cacheid, uint32 hashvalue)
{
	if (function_symbols != NULL)
		hash_destroy(function_symbols);
	function_symbols = NULL;
}

/* Is fn a C function whose symbol is symbol (crmguard's own, known by what it is)? */
bool
cg_function_is(Oid fn, const char *symbol)
{
	static bool callback_registered = false;
	FunctionSymbol *known;
	bool		found;

	if (!callback_registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, forget_function_symbols, (Datum) 0);
		callback_registered = true;
	}
	if (function_symbols == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(FunctionSymbol);
		ctl.hcxt = CacheMemoryContext;
		function_symbols = hash_create("crmguard function symbols", 32, &ctl,
									   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	known = hash_search(function_symbols, &fn, HASH_FIND, NULL);
	if (known == NULL)
	{
		HeapTuple	proc = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
		char		in_c[NAMEDATALEN] = "";

		if (HeapTupleIsValid(proc))
		{
			bool		isnull;
			Datum		src = SysCacheGetAttr(PROCOID, proc, Anum_pg_proc_prosrc, &isnull);

			if (((Form_pg_proc) GETSTRUCT(proc))->prolang == ClanguageId && !isnull)
				strlcpy(in_c, TextDatumGetCString(src), NAMEDATALEN);
			ReleaseSysCache(proc);
		}
		/* the catalog read may have flushed the table */
		if (function_symbols == NULL)
			return in_c[0] != '\0' && strcmp(in_c, symbol) == 0;
		known = hash_search(function_symbols, &fn, HASH_ENTER, &found);
		strlcpy(known->symbol, in_c, NAMEDATALEN);
	}
	return known->symbol[0] != '\0' && strcmp(known->symbol, symbol) == 0;
}

/*
 * Statement trigger on each rule table: at commit, every backend drops what
 * it cached from that table (the relcache callbacks of each module).
 */
PG_FUNCTION_INFO_V1(crmguard_rules_changed);
Datum
crmguard_rules_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		elog(ERROR, "crmguard_rules_changed: must be fired as a statement trigger");
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}

/*
 * Does a query on crmguard's own catalogs (never a user table) return a
 * row?  Run as the extension's owner, seeing this transaction's changes.
 */
bool
cg_catalog_has_row(const char *sql, int nargs, Oid *types, Datum *values)
{
	CgPrivilegedContext priv;
	bool		found;

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (cg_execute_kept(sql, nargs, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard's catalogs");
	found = SPI_processed > 0;
	SPI_finish();
	cg_leave_owner(&priv);
	return found;
}
