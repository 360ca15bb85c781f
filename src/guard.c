/*
 * guard.c
 *		The guards crmguard puts on user tables (row triggers, row-level
 *		security), known by their trigger function and the rule catalogs,
 *		never by name.  An event trigger keeps anyone but a superuser from
 *		disabling, dropping, renaming, replacing or widening them, from
 *		putting a guarded table in an inheritance tree, and from renaming a
 *		column a rule names; a utility hook refuses relabelling what a rule
 *		judges (enum values, column types).  A superuser's change is allowed
 *		but written to the audit log.  Whatever slips past (event triggers
 *		disabled by a superuser, say) fails closed: a guarded table whose
 *		guards are missing or altered refuses its next write.  Rules of a
 *		dropped table are deleted with it.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/parallel.h"
#include "access/relation.h"
#include "access/sysattr.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/dependency.h"
#include "catalog/index.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "commands/tablecmds.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "parser/parse_func.h"
#if PG_VERSION_NUM >= 160000
#include "parser/parse_relation.h"
#endif
#include "parser/parse_type.h"
#include "rewrite/rowsecurity.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

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

/* The single-column primary key of a table, or NULL: from the relcache, no query */
char *
cg_primary_key_column(Oid relid)
{
	Relation	rel = try_relation_open(relid, AccessShareLock);
	Bitmapset  *pk;
	int			member;
	char	   *column = NULL;

	if (rel == NULL)
		return NULL;
	pk = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
	member = bms_next_member(pk, -1);
	if (member >= 0 && bms_next_member(pk, member) < 0 &&
		member + FirstLowInvalidHeapAttributeNumber > 0)
		column = get_attname(relid, member + FirstLowInvalidHeapAttributeNumber, false);
	relation_close(rel, AccessShareLock);
	return column;
}

/*
 * Catalog queries run inside someone else's statement, as the extension
 * owner: the session's JIT and planner settings are not theirs (the
 * estimates of the set-returning functions over rule criteria would set JIT
 * compiling for seconds).  Undone by cg_leave_owner.
 */
static void
owner_query_settings(void)
{
	static const char *const on[] = {"enable_seqscan", "enable_indexscan", "enable_indexonlyscan",
		"enable_bitmapscan", "enable_nestloop", "enable_hashjoin", "enable_mergejoin", "enable_hashagg",
	"enable_sort", "enable_material", "enable_memoize"};
	size_t		i;

	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	/* nor its planner settings: a session that switched a plan type off gets no odd plan here */
	for (i = 0; i < lengthof(on); i++)
		(void) set_config_option(on[i], "on", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
}

/* crmguard changing its own guards: the event trigger lets it pass */
static void
run_internal_ddl(const char *sql)
{
	bool		save = cg_guard_internal;

	cg_guard_internal = true;
	PG_TRY();
	{
		if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not change a crmguard guard: %s", sql);
	}
	PG_FINALLY();
	{
		cg_guard_internal = save;
	}
	PG_END_TRY();
}

/*
 * Is crmguard's trigger of that name on relid, calling that function?  One
 * of the same name calling anything else is dropped first, so that a guard
 * replaced behind crmguard's back is put back.  Not read-only: a guard
 * dropped a moment ago in this command must be seen gone.
 */
static bool
guard_exists(Oid relid, const char *trigger_name, const char *function_name)
{
	Oid			types[3] = {OIDOID, TEXTOID, TEXTOID};
	Datum		values[3];
	bool		found;
	bool		ours = false;

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(trigger_name);
	values[2] = CStringGetTextDatum(function_name ? function_name : "");
	if (SPI_execute_with_args("SELECT t.tgfoid OPERATOR(pg_catalog.=) p.oid"
							  " FROM pg_catalog.pg_trigger t LEFT JOIN pg_catalog.pg_proc p"
							  " ON p.proname OPERATOR(pg_catalog.=) $3::pg_catalog.name"
							  " AND p.pronamespace OPERATOR(pg_catalog.=) 'crmguard'::pg_catalog.regnamespace"
							  " WHERE t.tgrelid OPERATOR(pg_catalog.=) $1"
							  " AND t.tgname OPERATOR(pg_catalog.=) $2::pg_catalog.name",
							  3, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_trigger");
	found = SPI_processed > 0;
	if (found && function_name)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		ours = !isnull && DatumGetBool(d);
		if (!ours)
		{
			cg_guard_remove(relid, trigger_name);
			found = false;
		}
	}
	return found;
}

/*
 * Is relid in an inheritance tree (a partitioned table, a partition, an
 * inheritance parent or child)?  A rule's guards judge the rows of their
 * own table only: rows written to or read from another table of the tree
 * would pass around them.  Children come from pg_inherits: relhassubclass
 * (has_subclass) stays set after the last child is dropped, until a vacuum.
 */
bool
cg_in_inheritance_tree(Oid relid)
{
	return get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE || get_rel_relispartition(relid) ||
		has_superclass(relid) || find_inheritance_children(relid, NoLock) != NIL;
}

/*
 * The same question once relid is locked in mode (at least SHARE ROW
 * EXCLUSIVE, which conflicts with the SHARE UPDATE EXCLUSIVE lock that
 * ATTACH PARTITION, ALTER TABLE ... INHERIT and CREATE TABLE ... INHERITS
 * or PARTITION OF take on the table at least), as a rule for it is made.
 * The unlocked check before it does not see a command that put the table in
 * a tree and had not committed yet: that command's guard event trigger ran
 * before the rule existed, so nothing else would refuse it.
 */
bool
cg_in_inheritance_tree_locked(Oid relid, LOCKMODE mode)
{
	Assert(mode >= ShareRowExclusiveLock);
	LockRelationOid(relid, mode);
	/* read pg_inherits and pg_class as the commands we waited for left them */
	InvalidateCatalogSnapshot();
	return cg_in_inheritance_tree(relid);
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

	if (guard_exists(relid, trigger_name, function_name))
		return;
	sql = psprintf("CREATE TRIGGER %s %s ON %s FOR EACH ROW %s%s%s EXECUTE FUNCTION crmguard.%s()",
				   quote_identifier(trigger_name), events,
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											  get_rel_name(relid)),
				   when ? "WHEN (" : "", when ? when : "", when ? ")" : "",
				   quote_identifier(function_name));
	run_internal_ddl(sql);
}

/* The same, as a statement trigger (BEFORE TRUNCATE) */
void
cg_guard_install_statement(Oid relid, const char *trigger_name, const char *function_name,
						   const char *events)
{
	char	   *sql;

	if (guard_exists(relid, trigger_name, function_name))
		return;
	sql = psprintf("CREATE TRIGGER %s %s ON %s FOR EACH STATEMENT EXECUTE FUNCTION crmguard.%s()",
				   quote_identifier(trigger_name), events,
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											  get_rel_name(relid)),
				   quote_identifier(function_name));
	run_internal_ddl(sql);
}

/* Drop a guard trigger crmguard installed; caller is in SPI */
void
cg_guard_remove(Oid relid, const char *trigger_name)
{
	char	   *sql;

	if (!guard_exists(relid, trigger_name, NULL))
		return;
	sql = psprintf("DROP TRIGGER %s ON %s", quote_identifier(trigger_name),
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											  get_rel_name(relid)));
	run_internal_ddl(sql);
}

/* ---------------------------------------------------------------------------
 * What a guarded table must have
 * ---------------------------------------------------------------------------
 */

/* Kinds of rules on a table, from crmguard's rule catalogs */
#define RULE_OTP			0x01
#define RULE_REVIEW			0x02
#define RULE_APPROVAL		0x04	/* any process, current or not: the lock stays */
#define RULE_SUBMIT_INSERT	0x08	/* a current process submits on insert */
#define RULE_SUBMIT_UPDATE	0x10	/* ... on update */
#define RULE_VISIBILITY		0x20
#define RULE_FIELDS			0x40

/* The guard triggers each kind of rule needs, as crmguard installs them */
typedef struct GuardSpec
{
	int			rule;
	const char *name;
	const char *function;
	int16		tgtype;
} GuardSpec;

static const GuardSpec guard_specs[] = {
	{RULE_REVIEW, CG_REVIEW_GUARD, "review_guard",
	TRIGGER_TYPE_ROW | TRIGGER_TYPE_BEFORE | TRIGGER_TYPE_INSERT},
	{RULE_APPROVAL, CG_APPROVAL_LOCK_GUARD, "approval_lock",
	TRIGGER_TYPE_ROW | TRIGGER_TYPE_UPDATE | TRIGGER_TYPE_DELETE},
	{RULE_SUBMIT_INSERT, CG_APPROVAL_SUBMIT_INSERT, "approval_auto_submit",
	TRIGGER_TYPE_ROW | TRIGGER_TYPE_INSERT},
	{RULE_SUBMIT_UPDATE, CG_APPROVAL_SUBMIT_UPDATE, "approval_auto_submit",
	TRIGGER_TYPE_ROW | TRIGGER_TYPE_UPDATE},
	{RULE_APPROVAL, CG_APPROVAL_TRUNCATE_GUARD, "approval_truncate",
	TRIGGER_TYPE_BEFORE | TRIGGER_TYPE_TRUNCATE},
	{RULE_OTP, CG_OTP_GUARD_UPDATE, "otp_guard",
	TRIGGER_TYPE_ROW | TRIGGER_TYPE_UPDATE},
	{RULE_OTP, CG_OTP_GUARD_INSERT, "otp_guard",
	TRIGGER_TYPE_ROW | TRIGGER_TYPE_INSERT},
	{RULE_FIELDS, CG_FIELDS_GUARD, "fields_guard",
	TRIGGER_TYPE_ROW | TRIGGER_TYPE_BEFORE | TRIGGER_TYPE_INSERT | TRIGGER_TYPE_UPDATE},
};
#define NUM_GUARD_SPECS ((int) lengthof(guard_specs))

/*
 * Per backend: the rule kinds of every guarded table (one query, again
 * after any rule changes), and a verdict per table a statement touched
 * (again after that table's relcache entry changes).  A table no rule
 * concerns costs one hash probe per statement.
 */
typedef struct GuardedRel
{
	Oid			relid;
	int			rules;
} GuardedRel;

typedef struct GuardVerdict
{
	Oid			relid;
	char	   *write_problem;	/* why writes must be refused, or NULL */
	char	   *read_problem;	/* why reads must be refused too, or NULL */
} GuardVerdict;

static MemoryContext guard_context = NULL;
static HTAB *guarded = NULL;
static HTAB *verdicts = NULL;
static bool guarded_valid = false;
static uint64 guard_generation = 0;	/* bumped by every invalidation */
static bool guard_loading = false;
static Oid	rule_rels[5];
static Oid	guard_functions[NUM_GUARD_SPECS];	/* see guard_function() */
static bool guard_functions_known = false;
static Oid	crmguard_schema = InvalidOid;

static ExecutorCheckPerms_hook_type prev_check_perms = NULL;

static void
guard_relcache_callback(Datum arg, Oid relid)
{
	int			i;

	guard_generation++;
	if (relid == InvalidOid)
	{
		guarded_valid = false;
		return;
	}
	for (i = 0; i < (int) lengthof(rule_rels); i++)
		if (relid == rule_rels[i])
		{
			guarded_valid = false;
			return;
		}
	if (guarded_valid && verdicts != NULL)
		(void) hash_search(verdicts, &relid, HASH_REMOVE, NULL);
}

static void
guard_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	/* the extension (its schema) was created or dropped */
	guard_generation++;
	guarded_valid = false;
}

/* the rule kind each rule catalog gives its tables, in rule_rels' order */
#define RULE_CATALOG_APPROVAL 2
static const int rule_catalog_kinds[] = {RULE_OTP, RULE_REVIEW, RULE_APPROVAL, RULE_VISIBILITY, RULE_FIELDS};

static void
add_guarded(Oid relid, int rules)
{
	bool		found;
	GuardedRel *g = hash_search(guarded, &relid, HASH_ENTER, &found);

	g->rules = (found ? g->rules : 0) | rules;
}

static void
note_guarded(Datum *values, bool *nulls, void *arg)
{
	add_guarded(DatumGetObjectId(values[0]), *(const int *) arg);
}

/* an approval process; a current one may also submit rows as they are inserted or updated */
static void
note_approval_process(Datum *values, bool *nulls, void *arg)
{
	int			rules = RULE_APPROVAL;

	if (DatumGetBool(values[1]))
	{
		ArrayType  *events = DatumGetArrayTypeP(values[2]);
		Datum	   *elems;
		bool	   *elem_nulls;
		int			n;
		int			i;

		deconstruct_array(events, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &n);
		for (i = 0; i < n; i++)
		{
			char	   *event = elem_nulls[i] ? "" : TextDatumGetCString(elems[i]);

			if (strcmp(event, "insert") == 0)
				rules |= RULE_SUBMIT_INSERT;
			else if (strcmp(event, "update") == 0)
				rules |= RULE_SUBMIT_UPDATE;
		}
	}
	add_guarded(DatumGetObjectId(values[0]), rules);
}

/*
 * Load the rule kinds of every guarded table with the latest snapshot, so
 * that a rule committed a moment ago counts even in an old snapshot.
 */
static void
load_guarded(void)
{
	static bool callbacks_registered = false;
	HASHCTL		ctl;
	int			j;

	if (!callbacks_registered)
	{
		guard_context = AllocSetContextCreate(CacheMemoryContext, "crmguard guards",
											  ALLOCSET_SMALL_SIZES);
		cg_register_relcache_callback(guard_relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, guard_syscache_callback, (Datum) 0);
		callbacks_registered = true;
	}
	MemoryContextReset(guard_context);
	guarded = NULL;
	verdicts = NULL;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(GuardVerdict);
	ctl.hcxt = guard_context;
	verdicts = hash_create("crmguard guard verdicts", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.entrysize = sizeof(GuardedRel);
	guarded = hash_create("crmguard guarded tables", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	guarded_valid = true;

	crmguard_schema = InvalidOid;
	memset(rule_rels, 0, sizeof(rule_rels));
	memset(guard_functions, 0, sizeof(guard_functions));
	guard_functions_known = false;
	if (!OidIsValid(get_extension_oid("crmguard", true)))
		return;
	crmguard_schema = cg_catalog()->schema;
	rule_rels[0] = get_relname_relid("otp_rule", crmguard_schema);
	rule_rels[1] = get_relname_relid("review_config", crmguard_schema);
	rule_rels[2] = get_relname_relid("approval_process", crmguard_schema);
	rule_rels[3] = get_relname_relid("visibility_rule", crmguard_schema);
	rule_rels[4] = get_relname_relid("field_table", crmguard_schema);

	/* only the rule catalogs that ever held a row: most databases use a few features */
	guard_loading = true;
	PG_TRY();
	{
		Snapshot	latest = GetLatestSnapshot();

		for (j = 0; j < (int) lengthof(rule_rels); j++)
			if (OidIsValid(rule_rels[j]) && !cg_catalog_never_written(rule_rels[j]))
			{
				static const char *const plain[] = {"target"};
				static const char *const process[] = {"target", "current", "auto_submit"};
				bool		is_process = j == RULE_CATALOG_APPROVAL;

				cg_scan_catalog(rule_rels[j], latest, is_process ? 3 : 1, is_process ? process : plain,
								is_process ? note_approval_process : note_guarded,
								(void *) &rule_catalog_kinds[j]);
			}
	}
	PG_CATCH();
	{
		/* a partial map would leave tables unguarded: read it all again next time */
		guard_loading = false;
		guarded_valid = false;
		PG_RE_THROW();
	}
	PG_END_TRY();
	guard_loading = false;
}

/* The kinds of rules on relid; 0 for a table no rule concerns */
static int
table_rules(Oid relid)
{
	GuardedRel *g;

	if (!guarded_valid)
		load_guarded();
	g = hash_search(guarded, &relid, HASH_FIND, NULL);
	return g ? g->rules : 0;
}

/*
 * The trigger function of guard spec j, looked up when first needed: a
 * statement on tables with no trigger guard never needs them.
 */
static Oid
guard_function(int j)
{
	if (!guard_functions_known && OidIsValid(crmguard_schema))
	{
		int			k;

		for (k = 0; k < NUM_GUARD_SPECS; k++)
			guard_functions[k] = cg_function_oid(guard_specs[k].function, 0, NULL);
		guard_functions_known = true;
	}
	return guard_functions[j];
}

/* Is fn one of the trigger functions of crmguard's guards? */
static bool
is_guard_function(Oid fn)
{
	int			j;

	for (j = 0; j < NUM_GUARD_SPECS; j++)
		if (OidIsValid(fn) && fn == guard_function(j))
			return true;
	return false;
}

/* A guard trigger's problem: the action audited and the words for it */
typedef struct GuardProblem
{
	const char *action;
	char	   *table;
	char	   *trigger;		/* NULL for a problem of the table's rules */
	char	   *problem;
	char	   *refusal;
	char	   *warning;
	char	   *state;			/* tells apart two states with the same problem, or NULL */
} GuardProblem;

static GuardProblem *
trigger_problem(const char *table, const char *trigger, const char *action,
				const char *verb)
{
	GuardProblem *p = palloc0(sizeof(GuardProblem));

	p->action = action;
	p->table = pstrdup(table);
	p->trigger = pstrdup(trigger);
	p->problem = psprintf("guard \"%s\" was %s", trigger, verb);
	p->refusal = psprintf("crmguard guard \"%s\" on table %s cannot be %s", trigger, table, verb);
	p->warning = psprintf("crmguard guard \"%s\" on table %s is no longer enforced", trigger, table);
	return p;
}

/*
 * What is wrong with the guard triggers of rel, in trigger name order.
 * Strict (DDL): every crmguard trigger stays as crmguard made it, firing
 * in origin mode only.  Otherwise (a write): every guard the rules need is
 * there under its name, calling its function, and fires (ENABLE ALWAYS
 * still fires), and no BEFORE INSERT row trigger runs ahead of the review.
 */
static List *
guard_trigger_problems(Relation rel, int rules, bool strict)
{
	TriggerDesc *td = rel->trigdesc;
	char	   *table = RelationGetRelid(rel) == InvalidOid ? "" :
		DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(RelationGetRelid(rel))));
	List	   *problems = NIL;
	int			i;
	int			j;

	for (i = 0; td != NULL && i < td->numtriggers; i++)
	{
		Trigger    *tg = &td->triggers[i];
		bool		canonical = false;
		bool		ours = is_guard_function(tg->tgfoid) ||
			(strict && get_func_namespace(tg->tgfoid) == crmguard_schema);

		if (!ours)
		{
			/* a trigger of the owner's that would see rows before the review keeps them */
			if ((rules & RULE_REVIEW) && !tg->tgisinternal &&
				TRIGGER_FOR_ROW(tg->tgtype) && TRIGGER_FOR_BEFORE(tg->tgtype) &&
				TRIGGER_FOR_INSERT(tg->tgtype) && strcmp(tg->tgname, CG_REVIEW_GUARD) < 0 && !strict)
			{
				GuardProblem *p = trigger_problem(table, tg->tgname, "guard_overtaken",
												  "overtaken");

				p->problem = psprintf("trigger \"%s\" fires ahead of the review guard and sees drafts",
									  tg->tgname);
				problems = lappend(problems, p);
			}
			continue;
		}
		for (j = 0; j < NUM_GUARD_SPECS; j++)
			if (tg->tgfoid == guard_function(j) && strcmp(tg->tgname, guard_specs[j].name) == 0)
				canonical = true;
		if (is_guard_function(tg->tgfoid) && !canonical)
		{
			problems = lappend(problems, trigger_problem(table, tg->tgname, "guard_renamed", "renamed"));
			continue;
		}
		if (tg->tgenabled == TRIGGER_DISABLED || tg->tgenabled == TRIGGER_FIRES_ON_REPLICA)
		{
			GuardProblem *p = trigger_problem(table, tg->tgname, "guard_disabled", "disabled");

			p->state = psprintf("%c", tg->tgenabled);
			problems = lappend(problems, p);
		}
		else if (strict && tg->tgenabled == TRIGGER_FIRES_ALWAYS)
		{
			GuardProblem *p = trigger_problem(table, tg->tgname, "guard_altered",
											  "set to fire in replication mode");

			p->warning = psprintf("crmguard guard \"%s\" on table %s now also fires in replication mode",
								  tg->tgname, table);
			problems = lappend(problems, p);
		}
	}

	/* every guard the table's rules need, under its name */
	for (j = 0; j < NUM_GUARD_SPECS; j++)
	{
		const GuardSpec *spec = &guard_specs[j];
		Trigger    *found = NULL;

		if (!(rules & spec->rule))
			continue;
		for (i = 0; td != NULL && i < td->numtriggers; i++)
			if (strcmp(td->triggers[i].tgname, spec->name) == 0)
				found = &td->triggers[i];
		if (found == NULL)
		{
			bool		renamed = false;

			/* a renamed guard was reported above */
			for (i = 0; td != NULL && i < td->numtriggers; i++)
				if (td->triggers[i].tgfoid == guard_function(j) && td->triggers[i].tgtype == spec->tgtype)
					renamed = true;
			if (!renamed)
				problems = lappend(problems, trigger_problem(table, spec->name, "guard_dropped", "dropped"));
		}
		else if (found->tgfoid != guard_function(j) || found->tgtype != spec->tgtype)
			problems = lappend(problems, trigger_problem(table, spec->name, "guard_replaced", "replaced"));
	}
	return problems;
}

/* The nearest guarded table relid inherits from, or InvalidOid */
static Oid
guarded_ancestor(Oid relid)
{
	List	   *todo = list_make1_oid(relid);
	int			depth;

	for (depth = 0; todo != NIL && depth < 64; depth++)
	{
		List	   *next = NIL;
		ListCell   *lc;

		foreach(lc, todo)
		{
			Relation	inh = table_open(InheritsRelationId, AccessShareLock);
			ScanKeyData key;
			SysScanDesc scan;
			HeapTuple	tup;

			ScanKeyInit(&key, Anum_pg_inherits_inhrelid, BTEqualStrategyNumber, F_OIDEQ,
						ObjectIdGetDatum(lfirst_oid(lc)));
			scan = systable_beginscan(inh, InheritsRelidSeqnoIndexId, true, NULL, 1, &key);
			while (HeapTupleIsValid(tup = systable_getnext(scan)))
			{
				Oid			parent = ((Form_pg_inherits) GETSTRUCT(tup))->inhparent;

				if (table_rules(parent) != 0)
				{
					systable_endscan(scan);
					table_close(inh, AccessShareLock);
					return parent;
				}
				next = lappend_oid(next, parent);
			}
			systable_endscan(scan);
			table_close(inh, AccessShareLock);
		}
		todo = next;
	}
	return InvalidOid;
}

/* Work out whether relid may be read and written, as its rules need */
static void
compute_verdict(Oid relid, char **write_problem, char **read_problem)
{
	int			rules = table_rules(relid);
	Oid			ancestor = guarded_ancestor(relid);
	Relation	rel;
	List	   *problems;

	*write_problem = NULL;
	*read_problem = NULL;
	if (rules == 0 && !OidIsValid(ancestor))
		return;
	if (OidIsValid(ancestor))
	{
		*write_problem = psprintf("it inherits from table %s, whose guards do not apply to its rows",
								  get_rel_name(ancestor));
		return;
	}
	/* the statement has locked it, or will (TRUNCATE): no lock here to upgrade later */
	rel = RelationIdGetRelation(relid);
	if (!RelationIsValid(rel))
		return;
	if ((rules & RULE_VISIBILITY) &&
		!(rel->rd_rel->relrowsecurity && rel->rd_rel->relforcerowsecurity))
		*read_problem = pstrdup("its row-level security is no longer enabled and forced");
	else if ((rules & RULE_VISIBILITY) && rel->rd_rsdesc != NULL)
	{
		ListCell   *lc;

		foreach(lc, rel->rd_rsdesc->policies)
			if (((RowSecurityPolicy *) lfirst(lc))->permissive)
				*read_problem = psprintf("policy \"%s\" of its own widens what crmguard exposes",
										 ((RowSecurityPolicy *) lfirst(lc))->policy_name);
	}
	problems = guard_trigger_problems(rel, rules, false);
	if (problems != NIL)
		*write_problem = ((GuardProblem *) linitial(problems))->problem;
	else if (*read_problem)
		*write_problem = *read_problem;
	RelationClose(rel);
}

/*
 * Fail closed: a guarded table whose guards are missing or altered refuses
 * to be written (and a visibility table with its row-level security off,
 * to be read), whoever asks but a superuser; the refusal is audited.
 */
static void
check_relation(Oid relid, bool writing)
{
	GuardVerdict *v;

	if (!guarded_valid)
		load_guarded();
	if (hash_get_num_entries(guarded) == 0)
		return;
	v = hash_search(verdicts, &relid, HASH_FIND, NULL);
	if (v == NULL)
	{
		char	   *write_problem;
		char	   *read_problem;
		uint64		generation;
		int			tries = 0;

		/* again if an invalidation came in while the catalogs were read */
		do
		{
			generation = guard_generation;
			compute_verdict(relid, &write_problem, &read_problem);
		} while (generation != guard_generation && ++tries < 5);
		if (!guarded_valid)
			load_guarded();
		v = hash_search(verdicts, &relid, HASH_ENTER, NULL);
		v->write_problem = write_problem ? MemoryContextStrdup(guard_context, write_problem) : NULL;
		v->read_problem = read_problem ? MemoryContextStrdup(guard_context, read_problem) : NULL;
	}
	if (v->read_problem != NULL || (writing && v->write_problem != NULL))
	{
		const char *problem = v->read_problem ? v->read_problem : v->write_problem;
		char	   *table = get_rel_name(relid);
		StringInfoData detail;

		initStringInfo(&detail);
		appendStringInfoString(&detail, "{\"problem\": ");
		escape_json(&detail, problem);
		appendStringInfo(&detail, ", \"access\": \"%s\"}", writing ? "write" : "read");
		cg_audit_durable("guarded_table_refused", table, NULL, detail.data);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" is guarded by crmguard, but %s", table, problem),
				 errdetail("A guarded table whose guards are missing or altered refuses %s; the attempt was audited.",
						   v->read_problem ? "to be read or written" : "to be written"),
				 errhint("Drop and re-create the table's crmguard rules to restore its guards.")));
	}
}

/* Checks are for sessions that are bound by the guards, in a backend that can read rules */
static bool
guard_checks_apply(void)
{
	return !guard_loading && IsTransactionState() && !IsParallelWorker() &&
		!creating_extension && !superuser();
}

/* Every table a statement reads or writes passes through here, COPY included */
#if PG_VERSION_NUM >= 160000
static bool
guard_check_perms(List *range_table, List *perm_infos, bool ereport_on_violation)
#else
static bool
guard_check_perms(List *range_table, bool ereport_on_violation)
#endif
{
	ListCell   *lc;

#if PG_VERSION_NUM >= 160000
	if (prev_check_perms && !prev_check_perms(range_table, perm_infos, ereport_on_violation))
		return false;
#else
	if (prev_check_perms && !prev_check_perms(range_table, ereport_on_violation))
		return false;
#endif
	if (!guard_checks_apply())
		return true;
	foreach(lc, range_table)
	{
		RangeTblEntry *rte = (RangeTblEntry *) lfirst(lc);
		AclMode		perms;

		if (rte->rtekind != RTE_RELATION ||
			(rte->relkind != RELKIND_RELATION && rte->relkind != RELKIND_PARTITIONED_TABLE))
			continue;
#if PG_VERSION_NUM >= 160000
		perms = rte->perminfoindex ? getRTEPermissionInfo(perm_infos, rte)->requiredPerms : 0;
#else
		perms = rte->requiredPerms;
#endif
		/* planner-expanded children of a written table carry its lock mode */
		check_relation(rte->relid, rte->rellockmode >= RowExclusiveLock ||
					   (perms & (ACL_INSERT | ACL_UPDATE | ACL_DELETE)) != 0);
	}
	return true;
}

void
cg_guard_init(void)
{
	prev_check_perms = ExecutorCheckPerms_hook;
	ExecutorCheckPerms_hook = guard_check_perms;
}

/* ---------------------------------------------------------------------------
 * DDL that would change what a rule means or remove a guard
 * ---------------------------------------------------------------------------
 */

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

/* A table (or TOAST table) of crmguard's own */
static bool
is_crmguard_relation(Oid relid)
{
	Oid			schema = cg_catalog()->schema;

	if (!OidIsValid(relid))
		return false;
	if (get_rel_namespace(relid) == PG_TOAST_NAMESPACE)
	{
		Oid			owner_rel = InvalidOid;
		HeapTuple	tup;
		Relation	pg_class;
		SysScanDesc scan;

		/* the table whose TOAST table this is */
		pg_class = table_open(RelationRelationId, AccessShareLock);
		scan = systable_beginscan(pg_class, InvalidOid, false, NULL, 0, NULL);
		while ((tup = systable_getnext(scan)) != NULL)
			if (((Form_pg_class) GETSTRUCT(tup))->reltoastrelid == relid)
			{
				owner_rel = ((Form_pg_class) GETSTRUCT(tup))->oid;
				break;
			}
		systable_endscan(scan);
		table_close(pg_class, AccessShareLock);
		return OidIsValid(owner_rel) && get_rel_namespace(owner_rel) == schema;
	}
	return get_rel_namespace(relid) == schema;
}

/*
 * Refuse a non-superuser's maintenance command whose lock on crmguard's
 * tables (SHARE or ACCESS EXCLUSIVE, queued behind any open audited
 * transaction) would make every other session's audited action wait; the
 * attempt is audited durably like the other refusals.  table is NULL for a
 * command over the whole database or schema.
 */
static void
refuse_maintenance(const char *command, const char *table, const char *what)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"command\": ");
	escape_json(&buf, what);
	appendStringInfoString(&buf, ", \"superuser\": false}");
	cg_audit_durable("maintenance_refused", table, NULL, buf.data);
	if (table != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only a superuser can run %s on crmguard's table \"%s\"", command, table),
				 errdetail("Its lock would make every audited commit wait."),
				 errhint("Run it on your own tables by name, or ask a superuser.")));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("only a superuser can run %s here: it would lock crmguard's tables", what),
			 errdetail("Its lock would make every audited commit wait."),
			 errhint("Run %s on your own tables by name, or ask a superuser.", command)));
}

/*
 * The columns crmguard's rules name, as (relid, rule, col): visibility
 * criteria and owner columns, OTP status, recipient and condition columns,
 * approval criteria, editable, action and approver columns, review match
 * columns.
 */
#define RULE_COLUMNS_CTE \
" rule_columns AS (" \
"   SELECT v.target::pg_catalog.oid AS relid, v.rule_name AS rule, c.col FROM crmguard.visibility_rule v" \
"    CROSS JOIN LATERAL (SELECT pg_catalog.jsonb_path_query(v.criteria, 'lax $.**.field') #>> '{}'" \
"                        UNION SELECT v.owner_column::text) AS c(col)" \
"   UNION" \
"   SELECT o.target::pg_catalog.oid, o.rule_name, c.col FROM crmguard.otp_rule o" \
"    CROSS JOIN LATERAL (SELECT pg_catalog.jsonb_path_query(o.condition, 'lax $.**.field') #>> '{}'" \
"                        UNION SELECT o.status_column::text UNION SELECT o.recipient_column::text) AS c(col)" \
"   UNION" \
"   SELECT ap.target::pg_catalog.oid, 'approval process ' || ap.process_name, c.col FROM crmguard.approval_process ap" \
"    CROSS JOIN LATERAL (SELECT pg_catalog.jsonb_path_query(ap.entry_criteria, 'lax $.**.field') #>> '{}'" \
"      UNION SELECT pg_catalog.unnest(ap.editable_columns::text[])" \
"      UNION SELECT pg_catalog.jsonb_object_keys(a -> 'set')" \
"             FROM pg_catalog.jsonb_array_elements(ap.on_approve || ap.on_reject || ap.on_submit) a WHERE a ? 'set'" \
"      UNION SELECT pg_catalog.jsonb_path_query(ap.on_approve || ap.on_reject || ap.on_submit, p) #>> '{}'" \
"             FROM (VALUES ('lax $[*].notify.to'::pg_catalog.jsonpath), ('lax $[*].task.assign_to')) AS x(p)" \
"      UNION SELECT pg_catalog.jsonb_path_query(ap.steps, p) #>> '{}'" \
"             FROM (VALUES ('lax $[*].approvers.manager_of'::pg_catalog.jsonpath), ('lax $[*].approvers.of')) AS y(p)" \
"     ) AS c(col)" \
"    WHERE c.col NOT IN ('submitter', 'approvers')" \
"   UNION" \
"   SELECT rc.target::pg_catalog.oid, 'draft review', c.col FROM crmguard.review_config rc" \
"    CROSS JOIN LATERAL pg_catalog.unnest(rc.match_columns::text[]) AS c(col)" \
"   UNION" \
"   SELECT ft.target::pg_catalog.oid, 'contact fields', c.col FROM crmguard.field_table ft" \
"    CROSS JOIN LATERAL (VALUES (ft.fields_column::text), (ft.project_column::text)) AS c(col))"

/* The tables crmguard guards, any kind of rule */
#define GUARDED_CTE \
" guarded AS (" \
"   SELECT target::pg_catalog.oid AS relid, true AS visibility FROM crmguard.visibility_rule" \
"   UNION ALL SELECT target::pg_catalog.oid, false FROM crmguard.otp_rule" \
"   UNION ALL SELECT target::pg_catalog.oid, false FROM crmguard.review_config" \
"   UNION ALL SELECT target::pg_catalog.oid, false FROM crmguard.approval_process" \
"   UNION ALL SELECT target::pg_catalog.oid, false FROM crmguard.field_table)"

/*
 * What is wrong with the rules of the guarded tables a command touched
 * ($1), as (table, problem, state) rows; state tells two states with the
 * same problem apart (row-level security off or not forced, which
 * policies widen, which tables inherit), so that a command making a table
 * worse is not taken for one that found it so.  Runs as the extension owner.
 */
static const char *const rule_problems_sql =
"WITH touched AS (SELECT DISTINCT pg_catalog.unnest($1::pg_catalog.oid[]) AS relid),"
RULE_COLUMNS_CTE ","
GUARDED_CTE
" SELECT DISTINCT r.oid::pg_catalog.regclass::text, pr.problem, pr.state"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid"
"  CROSS JOIN LATERAL (VALUES"
"   (CASE WHEN NOT (r.relrowsecurity AND r.relforcerowsecurity)"
"         THEN 'row-level security is no longer enabled and forced' END,"
"    pg_catalog.format('enabled %s, forced %s', r.relrowsecurity, r.relforcerowsecurity)),"
"   (CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = r.oid AND p.polpermissive)"
"         THEN 'a permissive policy of its own would widen what crmguard exposes' END,"
"    (SELECT pg_catalog.string_agg(p.oid::text || ':' || pg_catalog.md5(pg_catalog.concat(p.polroles, p.polqual, p.polwithcheck)),"
"                                  ',' ORDER BY p.oid)"
"       FROM pg_catalog.pg_policy p WHERE p.polrelid = r.oid AND p.polpermissive))"
"  ) AS pr(problem, state)"
" WHERE pr.problem IS NOT NULL"
"   AND EXISTS (SELECT 1 FROM crmguard.visibility_rule v WHERE v.target::pg_catalog.oid = r.oid)"
/* any guarded table in an inheritance tree: rows of the other tables bypass its guards */
" UNION"
" SELECT r.oid::pg_catalog.regclass::text,"
"        CASE WHEN bool_or(g.visibility) THEN 'it is now inherited or partitioned, and its rows can be read around its policies'"
"             ELSE 'it is now inherited or partitioned, and rows written to another table of its tree bypass its guards' END,"
"        (SELECT pg_catalog.string_agg(i.inhrelid::text || '<' || i.inhparent::text, ',' ORDER BY i.inhrelid, i.inhparent)"
"           FROM pg_catalog.pg_inherits i WHERE i.inhrelid = r.oid OR i.inhparent = r.oid)"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid JOIN guarded g ON g.relid = r.oid"
" WHERE r.relispartition OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i"
"                                   WHERE i.inhrelid = r.oid OR i.inhparent = r.oid)"
" GROUP BY r.oid"
/* a rule of its own rewrites statements on a guarded table around its guards and rules */
" UNION"
" SELECT DISTINCT r.oid::pg_catalog.regclass::text,"
"        pg_catalog.format('rule \"%s\" rewrites statements on it around its guards', rw.rulename), ''"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid JOIN guarded g ON g.relid = r.oid"
"  JOIN pg_catalog.pg_rewrite rw ON rw.ev_class = r.oid AND rw.rulename <> '_RETURN'"
/* a guarded table (not only visibility) that lost its single-column primary key */
" UNION"
" SELECT DISTINCT r.oid::pg_catalog.regclass::text,"
"        'its primary key, which names the rows crmguard guards, is gone', ''"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid JOIN guarded g ON g.relid = r.oid AND NOT g.visibility"
" WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = r.oid AND i.indisprimary"
"                   AND i.indnkeyatts = 1)"
/* a reviewed table's BEFORE INSERT row trigger that would fire ahead of the review guard */
" UNION"
" SELECT r.oid::pg_catalog.regclass::text,"
"        pg_catalog.format('trigger \"%s\" would see inserted rows before the review guard keeps them as drafts', tg.tgname), ''"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid"
"  JOIN crmguard.review_config rc ON rc.target::pg_catalog.oid = r.oid"
"  JOIN pg_catalog.pg_trigger tg ON tg.tgrelid = r.oid"
" WHERE " CG_TRIGGER_AHEAD_OF_REVIEW
/* any rule naming a column the command renamed or dropped */
" UNION"
" SELECT r.oid::pg_catalog.regclass::text,"
"        pg_catalog.format('column \"%s\" named by rule \"%s\" was renamed or dropped', f.col, f.rule), ''"
"  FROM touched t JOIN pg_catalog.pg_class r ON r.oid = t.relid"
"  JOIN rule_columns f ON f.relid = r.oid"
"  WHERE f.col IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a"
"        WHERE a.attrelid = r.oid AND a.attname = f.col AND a.attnum > 0 AND NOT a.attisdropped)"
" ORDER BY 1, 2";

/* Drafts of dropped tables: they may outlive their table's review */
static const char *const forget_drafts_sql =
"DELETE FROM crmguard.draft_state WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)";

/*
 * Rules of dropped guarded tables, so that an OID reused later is not
 * guarded by mistake.  Only when a guarded table went: each rule table's
 * statement trigger tells every backend to reload its rules.
 */
static const char *const forget_rules_sql =
"WITH v AS (DELETE FROM crmguard.visibility_rule WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)),"
" o AS (DELETE FROM crmguard.otp_rule WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)),"
" r AS (DELETE FROM crmguard.review_config WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)),"
" a AS (DELETE FROM crmguard.approval_process WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)),"
" fd AS (DELETE FROM crmguard.field_def WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)),"
" ft AS (DELETE FROM crmguard.field_table WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1))"
" SELECT 1";

static SPIPlanPtr forget_drafts_plan = NULL;
static SPIPlanPtr forget_rules_plan = NULL;

/* A query of the event trigger, prepared once per backend; caller is in SPI */
static SPIPlanPtr
kept_plan(SPIPlanPtr *plan, const char *sql)
{
	static Oid	oid_array[1] = {OIDARRAYOID};

	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, strstr(sql, "$1") ? 1 : 0, oid_array);

		if (p == NULL || SPI_keepplan(p) != 0)
			elog(ERROR, "could not prepare \"%s\"", sql);
		*plan = p;
	}
	return *plan;
}

/* Has any table of this database a crmguard rule? (the cache, no query when known) */
static bool
any_guarded_table(void)
{
	(void) table_rules(InvalidOid);
	return guarded != NULL && hash_get_num_entries(guarded) > 0;
}

/* The guard triggers of one touched table, as they are after the command */
static List *
touched_trigger_problems(Oid relid)
{
	Relation	rel;
	List	   *problems;
	char		relkind = get_rel_relkind(relid);

	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		return NIL;
	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		return NIL;
	problems = guard_trigger_problems(rel, table_rules(relid), true);
	relation_close(rel, AccessShareLock);
	return problems;
}

/*
 * What is wrong, now, with the guards and rules of the tables in touched:
 * the guard triggers first (named as the session names tables), then the
 * row-level security, inheritance, rules, keys and columns the rule
 * catalogs need.
 */
static List *
touched_problems(List *touched)
{
	CgPrivilegedContext priv;
	MemoryContext caller = CurrentMemoryContext;
	List	   *problems = NIL;
	List	   *trigger_problems = NIL;
	ListCell   *lc;
	Oid			types[1] = {OIDARRAYOID};
	Datum		values[1];
	Datum	   *elems;
	int			n = 0;
	uint64		i;

	if (touched == NIL)
		return NIL;
	elems = palloc(sizeof(Datum) * list_length(touched));
	foreach(lc, touched)
	{
		/* the rule problems are all on tables with rules: ask only about those */
		if (table_rules(lfirst_oid(lc)) != 0)
			elems[n++] = ObjectIdGetDatum(lfirst_oid(lc));
	}
	values[0] = PointerGetDatum(construct_array(elems, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT));

	/* no touched table has rules: no query at all */
	if (n > 0)
	{
		cg_enter_owner(&priv);
		owner_query_settings();
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_with_args(rule_problems_sql, 1, types, values, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not inspect the DDL command");
		for (i = 0; i < SPI_processed; i++)
		{
			MemoryContext old = MemoryContextSwitchTo(caller);
			GuardProblem *p = palloc0(sizeof(GuardProblem));
			char	   *table = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			char	   *problem = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);

			p->action = "visibility_changed";
			p->table = table;
			p->problem = problem;
			p->state = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
			p->refusal = psprintf("crmguard rules of table %s cannot be changed outside crmguard: %s",
								  table, problem);
			p->warning = psprintf("crmguard rules of table %s are no longer enforced: %s",
								  table, problem);
			problems = lappend(problems, p);
			MemoryContextSwitchTo(old);
		}
		SPI_finish();
		cg_leave_owner(&priv);
	}

	foreach(lc, touched)
		trigger_problems = list_concat(trigger_problems, touched_trigger_problems(lfirst_oid(lc)));
	return list_concat(trigger_problems, problems);
}

/* A problem as a string, to compare the problems before and after a command */
static char *
problem_key(const GuardProblem *p)
{
	return psprintf("%s|%s|%s|%s|%s", p->action, p->table, p->trigger ? p->trigger : "",
					p->problem, p->state ? p->state : "");
}

/*
 * The problems the table a DDL command names had before it ran (keys as
 * problem_key makes them), so that the event trigger judges what the
 * command changed, not the state it found.  A restore builds a guarded
 * table step by step: FORCE ROW LEVEL SECURITY with the table, its rules
 * with the data, then its key, guard triggers, policies and ENABLE ROW
 * LEVEL SECURITY one statement each.  Each step leaves the table no worse
 * than it was, so none is reported; a command that disables, drops,
 * renames or widens anything adds a problem the table did not have, and is
 * refused or audited as before.  A state already wrong (left by the
 * restore's earlier steps, or by a superuser's audited change) is not
 * reported again on every later DDL; the table fails closed on its next
 * read or write meanwhile, and that is audited.
 */
static List *problems_before = NIL;

/* Does the current user own relid (superusers own everything)? */
static bool
owns_relation(Oid relid)
{
#if PG_VERSION_NUM >= 160000
	return object_ownercheck(RelationRelationId, relid, GetUserId());
#else
	return pg_class_ownercheck(relid, GetUserId());
#endif
}

/* The problems of the guarded table pstmt names, before it runs (or NIL) */
static List *
problems_of_named_table(PlannedStmt *pstmt)
{
	Node	   *parsetree = pstmt->utilityStmt;
	RangeVar   *rv;
	LOCKMODE	lockmode;
	Oid			relid;

	if (!IsTransactionState() || creating_extension || cg_guard_internal || guard_loading)
		return NIL;
	switch (nodeTag(parsetree))
	{
		case T_AlterTableStmt:
			rv = ((AlterTableStmt *) parsetree)->relation;
			lockmode = AlterTableGetLockLevel(((AlterTableStmt *) parsetree)->cmds);
			break;
		case T_CreateTrigStmt:
			rv = ((CreateTrigStmt *) parsetree)->relation;
			lockmode = ShareRowExclusiveLock;
			break;
		case T_CreatePolicyStmt:
			rv = ((CreatePolicyStmt *) parsetree)->table;
			lockmode = AccessExclusiveLock;
			break;
		case T_AlterPolicyStmt:
			rv = ((AlterPolicyStmt *) parsetree)->table;
			lockmode = AccessExclusiveLock;
			break;
		default:
			return NIL;
	}
	if (!OidIsValid(get_extension_oid("crmguard", true)))
		return NIL;
	relid = RangeVarGetRelid(rv, NoLock, true);
	/* the command will fail for anyone but the owner: nothing to compare */
	if (!OidIsValid(relid) || table_rules(relid) == 0 || !owns_relation(relid))
		return NIL;
	/* the command's own lock, so that nobody changes the table in between */
	LockRelationOid(relid, lockmode);
	{
		List	   *keys = NIL;
		ListCell   *lc;

		foreach(lc, touched_problems(list_make1_oid(relid)))
			keys = lappend(keys, problem_key((GuardProblem *) lfirst(lc)));
		return keys;
	}
}

/*
 * Before a utility command: remember what the table it names already had
 * wrong.  Returns the enclosing command's record, for cg_guard_snapshot_end.
 */
void *
cg_guard_snapshot(PlannedStmt *pstmt)
{
	List	   *previous = problems_before;
	List	   *mine;

	problems_before = NIL;
	mine = problems_of_named_table(pstmt);
	problems_before = mine;
	return previous;
}

/* After a utility command (or its error): back to the enclosing command's record */
void
cg_guard_snapshot_end(void *previous)
{
	problems_before = (List *) previous;
}

/* Did the table have this problem before the command ran? */
static bool
problem_was_there(const GuardProblem *p)
{
	char	   *key = problem_key(p);
	ListCell   *lc;

	foreach(lc, problems_before)
		if (strcmp((char *) lfirst(lc), key) == 0)
			return true;
	return false;
}

/*
 * A drop removed tables: their drafts go with them (drafts may outlive
 * their table's review), and their rules too when one of them had any.
 */
static void
forget_dropped_tables(List *dropped_tables, bool guarded_gone)
{
	CgPrivilegedContext priv;
	Datum		values[1];
	Datum	   *elems = palloc(sizeof(Datum) * list_length(dropped_tables));
	ListCell   *lc;
	int			n = 0;

	foreach(lc, dropped_tables)
		elems[n++] = ObjectIdGetDatum(lfirst_oid(lc));
	values[0] = PointerGetDatum(construct_array(elems, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
	cg_enter_owner(&priv);
	owner_query_settings();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_plan(kept_plan(&forget_drafts_plan, forget_drafts_sql), values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not forget the drafts of dropped tables");
	if (guarded_gone &&
		SPI_execute_plan(kept_plan(&forget_rules_plan, forget_rules_sql), values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not forget the rules of dropped tables");
	SPI_finish();
	cg_leave_owner(&priv);
}

/*
 * Event trigger, after any DDL that can touch a guarded table (ALTER TABLE,
 * CREATE/ALTER TRIGGER or POLICY, CREATE TABLE ... INHERITS or PARTITION
 * OF, CREATE SCHEMA with such elements) and after every drop, whatever it
 * cascaded to; what the command touched comes from ddl_objects.c, without a
 * query.  The guards of every table it touched are compared
 * with what the rule catalogs need, recognised by their trigger function,
 * so a renamed, replaced, dropped or disabled guard is found whatever it is
 * called and in however many steps.  What the table named by the command
 * already had wrong before it ran is not the command's doing
 * (cg_guard_snapshot).
 */
PG_FUNCTION_INFO_V1(crmguard_guard_ddl);
Datum
crmguard_guard_ddl(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	bool		is_super = superuser();
	bool		dropping;
	List	   *touched = NIL;
	ListCell   *lc;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "crmguard_guard_ddl: not called by the event trigger manager");
	trigdata = (EventTriggerData *) fcinfo->context;
	if (cg_guard_internal)
		PG_RETURN_VOID();
	/* crmguard's own install script creates the tables this check reads */
	if (creating_extension && CurrentExtensionObject == get_extension_oid("crmguard", true))
		PG_RETURN_VOID();
	dropping = strcmp(trigdata->event, "sql_drop") == 0;

	/* what the command touched: catalog probes in C, no query (ddl_objects.c) */
	if (!dropping)
		touched = cg_ddl_touched_relations();
	else
	{
		List	   *dropped_tables;
		bool		guarded_gone = false;

		touched = cg_drop_touched_relations(&dropped_tables);
		/* from the cache: did a table with rules go? */
		if (any_guarded_table())
		{
			foreach(lc, dropped_tables)
			{
				if (table_rules(lfirst_oid(lc)) != 0)
					guarded_gone = true;
			}
		}
		if (dropped_tables != NIL)
			forget_dropped_tables(dropped_tables, guarded_gone);
	}

	foreach(lc, touched_problems(touched))
	{
		GuardProblem *p = (GuardProblem *) lfirst(lc);

		if (problem_was_there(p))
			continue;
		refuse_or_record(is_super, p->action, p->table,
						 p->trigger ? "trigger" : "problem", p->trigger ? p->trigger : p->problem,
						 p->refusal, p->warning);
	}
	PG_RETURN_VOID();
}

/* The first column a rule names whose type is, or is built on, typid: (table, rule, column) */
static const char *const type_in_rule_sql =
"WITH RECURSIVE" RULE_COLUMNS_CTE ","
" cols AS ("
"  SELECT rc.relid, rc.rule, rc.col, a.atttypid AS t, 0 AS depth FROM rule_columns rc"
"   JOIN pg_catalog.pg_attribute a ON a.attrelid = rc.relid AND a.attname = rc.col"
"    AND a.attnum > 0 AND NOT a.attisdropped"
"  UNION ALL"
"  SELECT c.relid, c.rule, c.col, n.t, c.depth + 1 FROM cols c"
"   JOIN pg_catalog.pg_type ty ON ty.oid = c.t"
"   CROSS JOIN LATERAL (SELECT ty.typbasetype WHERE ty.typbasetype <> 0"
"                       UNION ALL SELECT ty.typelem WHERE ty.typelem <> 0"
"                       UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = ty.oid) AS n(t)"
"   WHERE c.depth < 8)"
" SELECT c.relid::pg_catalog.regclass::text, c.rule, c.col FROM cols c WHERE c.t = $1"
" ORDER BY 1, 2, 3 LIMIT 1";

/* The first rule naming column col of relid */
static const char *const column_in_rule_sql =
"WITH" RULE_COLUMNS_CTE
" SELECT rule FROM rule_columns WHERE relid = $1 AND col = $2 ORDER BY 1 LIMIT 1";

/*
 * Run one of the queries above as the extension owner (catalogs only);
 * the values of its first row, or NULL.
 */
static char **
rule_lookup(const char *sql, int nargs, Oid *types, Datum *values)
{
	CgPrivilegedContext priv;
	MemoryContext caller = CurrentMemoryContext;
	char	  **row = NULL;

	cg_enter_owner(&priv);
	owner_query_settings();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, nargs, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard's rules");
	if (SPI_processed > 0)
	{
		int			n = SPI_tuptable->tupdesc->natts;
		int			i;

		row = MemoryContextAlloc(caller, sizeof(char *) * n);
		for (i = 0; i < n; i++)
			row[i] = MemoryContextStrdup(caller, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1));
	}
	SPI_finish();
	cg_leave_owner(&priv);
	return row;
}

/* A column a rule names uses typid: refuse a change that relabels its values */
static void
check_type_change(Oid typid, const char *change, const char *action)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	char	  **row;
	char	   *type = format_type_be(typid);

	values[0] = ObjectIdGetDatum(typid);
	row = rule_lookup(type_in_rule_sql, 1, types, values);
	if (row == NULL)
		return;
	refuse_or_record(superuser(), action, row[0], "problem",
					 psprintf("type %s: %s; column \"%s\" named by rule \"%s\" uses it", type, change, row[2], row[1]),
					 psprintf("type %s cannot be changed (%s): column \"%s\" of table %s, named by crmguard rule \"%s\", uses it",
							  type, change, row[2], row[0], row[1]),
					 psprintf("crmguard rule \"%s\" on table %s now judges values of a changed type %s",
							  row[1], row[0], type));
}

/*
 * The primary key names a guarded table's rows in crmguard (OTP challenges,
 * approval requests, drafts' new rows, field ciphertexts): dropping its
 * constraint or its column, to drop or move the key, is refused.
 */
static void
check_primary_key_kept(Oid relid, AlterTableCmd *cmd)
{
	Relation	rel;
	Oid			pk_index;
	Oid			constraint;
	char	   *pk_column = NULL;
	bool		hit = false;
	char	   *table;

	if (!(table_rules(relid) & (RULE_OTP | RULE_REVIEW | RULE_APPROVAL | RULE_FIELDS)))
		return;
	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		return;
	pk_index = RelationGetPrimaryKeyIndex(rel);
	relation_close(rel, AccessShareLock);
	if (!OidIsValid(pk_index))
		return;
	constraint = get_index_constraint(pk_index);
	if (cmd->subtype == AT_DropConstraint)
		hit = OidIsValid(constraint) && strcmp(get_constraint_name(constraint), cmd->name) == 0;
	else
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pk_index));

		if (HeapTupleIsValid(tup))
		{
			Form_pg_index index = (Form_pg_index) GETSTRUCT(tup);
			int			i;

			for (i = 0; i < index->indnkeyatts; i++)
				if (strcmp(get_attname(relid, index->indkey.values[i], false), cmd->name) == 0)
					hit = true;
			ReleaseSysCache(tup);
		}
	}
	if (!hit)
		return;
	pk_column = cmd->subtype == AT_DropColumn ? cmd->name : get_rel_name(pk_index);
	table = DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid)));
	refuse_or_record(superuser(), "primary_key_dropped", table, "problem",
					 psprintf("primary key \"%s\" dropped", pk_column),
					 psprintf("the primary key of table %s cannot be dropped: it names the rows crmguard guards",
							  table),
					 psprintf("crmguard rules on table %s no longer find their rows by key", table));
}

/*
 * A change of a column's type rewrites every row, USING whatever the owner
 * wrote (or rounds them to a narrower type), and fires no row trigger: on a
 * table with rows locked by pending approval requests it would change them
 * around the lock, whichever column it is.  Refused while any request on
 * the table is pending; the command's own lock is taken first, so that no
 * request starts between the look and the rewrite.
 */
static void
check_pending_rows_kept(AlterTableStmt *stmt, Oid relid, const char *column)
{
	int64		request;
	char	   *table;

	/* the command fails for anyone but the owner: no lock taken, nothing said */
	if (!(table_rules(relid) & RULE_APPROVAL) || !owns_relation(relid))
		return;
	LockRelationOid(relid, AlterTableGetLockLevel(stmt->cmds));
	request = cg_approval_any_pending(relid);
	if (request == 0)
		return;
	table = DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid)));
	refuse_or_record(superuser(), "column_type_changed", table, "problem",
					 psprintf("column \"%s\" changed type while approval request " INT64_FORMAT " is pending",
							  column, request),
					 psprintf("column \"%s\" of table %s cannot change type: approval request " INT64_FORMAT
							  " locks rows of it", column, table, request),
					 psprintf("rows of table %s locked by approval request " INT64_FORMAT
							  " were rewritten by the change of column \"%s\"", table, request, column));
}

/*
 * Before a utility command runs: refuse what would change the meaning of
 * a rule without touching a row (an enum value renamed, a named column's
 * type changed with USING, a type dropped with CASCADE), a write to a
 * guarded table whose guards are gone (TRUNCATE), and a lock on the audit
 * log that would stall every audited commit (VACUUM FULL).
 */
void
cg_guard_utility(PlannedStmt *pstmt)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (!IsTransactionState() || creating_extension || cg_guard_internal || guard_loading ||
		(!IsA(parsetree, TruncateStmt) && !IsA(parsetree, AlterEnumStmt) &&
		 !IsA(parsetree, AlterTableStmt) && !IsA(parsetree, DropStmt) && !IsA(parsetree, VacuumStmt) &&
		 !IsA(parsetree, ReindexStmt)))
		return;
	if (!OidIsValid(get_extension_oid("crmguard", true)))
		return;

	if (IsA(parsetree, TruncateStmt) && guard_checks_apply())
	{
		ListCell   *lc;

		foreach(lc, ((TruncateStmt *) parsetree)->relations)
		{
			Oid			relid = RangeVarGetRelid((RangeVar *) lfirst(lc), NoLock, true);

			if (OidIsValid(relid))
				check_relation(relid, true);
		}
	}
	else if (IsA(parsetree, AlterEnumStmt) && ((AlterEnumStmt *) parsetree)->oldVal != NULL)
	{
		AlterEnumStmt *stmt = (AlterEnumStmt *) parsetree;
		Oid			typid = typenameTypeId(NULL, makeTypeNameFromNameList(stmt->typeName));

		check_type_change(typid, psprintf("value \"%s\" renamed to \"%s\"", stmt->oldVal, stmt->newVal),
						  "enum_relabelled");
	}
	else if (IsA(parsetree, DropStmt) &&
			 (((DropStmt *) parsetree)->removeType == OBJECT_TYPE ||
			  ((DropStmt *) parsetree)->removeType == OBJECT_DOMAIN) &&
			 ((DropStmt *) parsetree)->behavior == DROP_CASCADE)
	{
		ListCell   *lc;

		foreach(lc, ((DropStmt *) parsetree)->objects)
		{
			Type		tup = LookupTypeName(NULL, (TypeName *) lfirst(lc), NULL, true);

			if (tup == NULL)
				continue;
			check_type_change(typeTypeId(tup), "dropped with what uses it", "type_dropped");
			ReleaseSysCache(tup);
		}
	}
	else if (IsA(parsetree, AlterTableStmt))
	{
		AlterTableStmt *stmt = (AlterTableStmt *) parsetree;
		ListCell   *lc;
		Oid			relid = InvalidOid;

		foreach(lc, stmt->cmds)
		{
			AlterTableCmd *cmd = (AlterTableCmd *) lfirst(lc);
			Oid			types[2] = {OIDOID, TEXTOID};
			Datum		values[2];
			char	  **row;
			char	   *table;

			if ((cmd->subtype == AT_DropConstraint || cmd->subtype == AT_DropColumn) && cmd->name != NULL)
			{
				if (!OidIsValid(relid))
					relid = RangeVarGetRelid(stmt->relation, NoLock, true);
				if (OidIsValid(relid))
					check_primary_key_kept(relid, cmd);
				continue;
			}
			if (cmd->subtype != AT_AlterColumnType || cmd->name == NULL)
				continue;
			if (!OidIsValid(relid))
				relid = RangeVarGetRelid(stmt->relation, NoLock, true);
			if (!OidIsValid(relid))
				return;
			values[0] = ObjectIdGetDatum(relid);
			values[1] = CStringGetTextDatum(cmd->name);
			row = rule_lookup(column_in_rule_sql, 2, types, values);
			if (row == NULL)
			{
				check_pending_rows_kept(stmt, relid, cmd->name);
				continue;
			}
			table = DatumGetCString(DirectFunctionCall1(regclassout, ObjectIdGetDatum(relid)));
			refuse_or_record(superuser(), "column_type_changed", table, "problem",
							 psprintf("column \"%s\" named by rule \"%s\" changed type", cmd->name, row[0]),
							 psprintf("column \"%s\" of table %s cannot change type: crmguard rule \"%s\" names it",
									  cmd->name, table, row[0]),
							 psprintf("crmguard rule \"%s\" on table %s now judges column \"%s\" of a new type",
									  row[0], table, cmd->name));
		}
	}
	else if (IsA(parsetree, VacuumStmt) && !superuser())
	{
		VacuumStmt *stmt = (VacuumStmt *) parsetree;
		ListCell   *lc;
		bool		full = false;

		foreach(lc, stmt->options)
			if (strcmp(((DefElem *) lfirst(lc))->defname, "full") == 0 && defGetBoolean((DefElem *) lfirst(lc)))
				full = true;
		/* plain VACUUM and ANALYZE take SHARE UPDATE EXCLUSIVE: no writer waits */
		if (!full)
			return;
		/* without a list, the database owner's VACUUM FULL takes every table */
		if (stmt->rels == NIL)
			refuse_maintenance("VACUUM FULL", NULL, "VACUUM FULL of the whole database");
		foreach(lc, stmt->rels)
		{
			VacuumRelation *vrel = (VacuumRelation *) lfirst(lc);
			Oid			relid = vrel->relation ? RangeVarGetRelid(vrel->relation, NoLock, true) : vrel->oid;

			if (is_crmguard_relation(relid))
				refuse_maintenance("VACUUM FULL", get_rel_name(relid), "VACUUM FULL");
		}
	}
	else if (IsA(parsetree, ReindexStmt) && !superuser())
	{
		ReindexStmt *stmt = (ReindexStmt *) parsetree;
		Oid			relid;

		switch (stmt->kind)
		{
			case REINDEX_OBJECT_DATABASE:
				refuse_maintenance("REINDEX", NULL, "REINDEX DATABASE");
				break;
			case REINDEX_OBJECT_SYSTEM:
				refuse_maintenance("REINDEX", NULL, "REINDEX SYSTEM");
				break;
			case REINDEX_OBJECT_SCHEMA:
				if (get_namespace_oid(stmt->name, true) == cg_catalog()->schema)
					refuse_maintenance("REINDEX", NULL, "REINDEX SCHEMA");
				break;
			case REINDEX_OBJECT_TABLE:
			case REINDEX_OBJECT_INDEX:
				relid = RangeVarGetRelid(stmt->relation, NoLock, true);
				if (OidIsValid(relid) && stmt->kind == REINDEX_OBJECT_INDEX &&
					get_rel_relkind(relid) == RELKIND_INDEX)
					relid = IndexGetRelation(relid, true);
				if (is_crmguard_relation(relid))
					refuse_maintenance("REINDEX", get_rel_name(relid),
									   stmt->kind == REINDEX_OBJECT_TABLE ? "REINDEX TABLE" : "REINDEX INDEX");
				break;
		}
	}
}
