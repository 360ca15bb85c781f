/*
 * principal.c
 *		Who is acting: the principal of a verified token (or JWT) assumed
 *		for this transaction or session, else the principal mapped to the
 *		current (outer) role.
 *
 * What crmguard.principal says is cached per backend as it is asked for
 * (one index look-up per principal, one heap scan of ids and managers for
 * team()) and dropped on relcache invalidation of crmguard.principal (sent
 * by its statement trigger), so a policy that calls these functions per row
 * does no SPI or catalog work.
 */
#include "postgres.h"

#include <sodium.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_relation.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/portal.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "crmguard.h"

typedef struct PrincipalEntry
{
	int64		id;				/* hash key */
	CgPrincipal p;
	int			nchildren;
	int64	   *children;
	ArrayType  *team;			/* computed on first use */
	bool		present;		/* false: no principal has this id */
} PrincipalEntry;

/* columns of crmguard.principal the cache reads */
enum
{
	PA_ID, PA_NAME, PA_DB_ROLE, PA_MANAGER, PA_ROLES, PA_ATTRIBUTES, PA_ACTIVE, PA_DEVICE, PA_COUNT
};
static AttrNumber principal_attno[PA_COUNT];
static Oid	principal_pkey = InvalidOid;
static Oid	principal_name_key = InvalidOid;
static Oid	principal_role_key = InvalidOid;

typedef struct RoleEntry
{
	Oid			role;			/* hash key */
	int64		principal_id;
} RoleEntry;

static MemoryContext cache_context = NULL;
static HTAB *by_id = NULL;
static HTAB *by_role = NULL;
static bool cache_valid = false;

/*
 * Assumed identities.  One given with is_local => false lasts for the
 * session; the default one lasts until its transaction ends, so a pooler in
 * transaction mode never hands a client's identity to the next client.  A
 * transaction-scoped identity shadows the session-long one; it may name
 * nobody (principal_id 0: pre_request() without a bearer token).
 */
typedef struct Assumption
{
	bool		active;
	int64		principal_id;
	TimestampTz expires_at;
	int64		device_id;		/* the device a token was minted with, or 0 */
} Assumption;

static Assumption session_assumed = {false, 0, 0, 0};
static Assumption local_assumed = {false, 0, 0, 0};

/* What a transaction (or subtransaction) that rolls back gives back */
static Assumption session_at_xact_start;
static bool assumed_changed_in_xact = false;

typedef struct AssumptionUndo
{
	SubTransactionId subid;
	Assumption	session;
	Assumption	local;
} AssumptionUndo;

static List *subxact_undo = NIL;	/* innermost first, in TopTransactionContext */
static bool xact_callback_registered = false;

/* Names of the holdable cursors declared in this transaction (TopTransactionContext) */
static List *held_cursors = NIL;

/*
 * While crmguard evaluates a rule on behalf of another principal
 * (why_visible), the identity functions answer for that one: -1 when unset,
 * 0 for nobody.
 */
static int64 evaluating_as = -1;

#define TOKEN_PREFIX		"cg1."
#define TOKEN_PAYLOAD_BYTES	(1 + 4 + 8 + 8)
#define TOKEN_BYTES			(TOKEN_PAYLOAD_BYTES + crypto_auth_BYTES)
/* version 2: a device follows the expiry */
#define TOKEN2_PAYLOAD_BYTES (TOKEN_PAYLOAD_BYTES + 8)
#define TOKEN2_BYTES		(TOKEN2_PAYLOAD_BYTES + crypto_auth_BYTES)

/*
 * The visibility policy of a cached plan is specialised to the roles of the
 * principal it was planned for: re-plan when who is acting may have changed.
 */
static void
identity_changed(void)
{
	ResetPlanCache();
}

void
cg_principal_invalidate(void)
{
	identity_changed();
	cache_valid = false;
}


static char **
text_array_to_cstrings(Datum array, int *count)
{
	Datum	   *elems;
	bool	   *nulls;
	char	  **result;
	int			n;
	int			i;
	int			kept = 0;

	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false,
					  TYPALIGN_INT, &elems, &nulls, &n);
	result = palloc(sizeof(char *) * Max(n, 1));
	for (i = 0; i < n; i++)
		if (!nulls[i])
			result[kept++] = TextDatumGetCString(elems[i]);
	*count = kept;
	return result;
}

/*
 * The cache holds what was asked for, read with one index look-up each: a
 * principal by id (with its roles and attributes), a role's or a name's
 * principal (0: none).  team() needs the whole tree: only ids and managers
 * are read for it, with one scan of the table's heap.  A fresh connection
 * thus pays for its own principal, not for the thousands of others.
 */
typedef struct TreeEdge
{
	int64		manager;
	int64		id;
} TreeEdge;

static TreeEdge *tree = NULL;	/* every principal with a manager, by manager */
static int	tree_size = 0;
static bool tree_valid = false;

/*
 * The cache is read as PostgreSQL reads its catalog caches: with a catalog
 * snapshot, which for a table without a system cache is taken anew at each
 * call, not the statement's.  An entry read with an older snapshot after a
 * change's invalidation arrived (a statement that waited for a lock
 * meanwhile) would stay valid, and stale, for the rest of the session: no
 * later invalidation comes for that change.  (GetLatestSnapshot would do,
 * but not in a parallel query's leader, where these functions also run.)
 */
static Snapshot
principal_snapshot(void)
{
	return RegisterSnapshot(GetCatalogSnapshot(cg_catalog()->principal_rel));
}

static void
reset_cache(void)
{
	HASHCTL		ctl;
	static const char *const names[PA_COUNT] = {"id", "name", "db_role", "manager_id", "roles",
	"attributes", "active", "require_device"};
	Relation	rel;
	int			i;

	(void) cg_catalog();
	if (cache_context == NULL)
		cache_context = AllocSetContextCreate(CacheMemoryContext,
											  "crmguard principal cache",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(cache_context);
	tree = NULL;
	tree_size = 0;
	tree_valid = false;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(PrincipalEntry);
	ctl.hcxt = cache_context;
	by_id = hash_create("crmguard principals", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(RoleEntry);
	by_role = hash_create("crmguard principal roles", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);

	rel = table_open(cg_catalog()->principal_rel, AccessShareLock);
	for (i = 0; i < PA_COUNT; i++)
	{
		principal_attno[i] = attnameAttNum(rel, names[i], false);
		if (principal_attno[i] <= 0)
			elog(ERROR, "crmguard.principal has no column \"%s\"", names[i]);
	}
	table_close(rel, AccessShareLock);
	principal_pkey = get_relname_relid("principal_pkey", cg_catalog()->schema);
	principal_name_key = get_relname_relid("principal_name_key", cg_catalog()->schema);
	principal_role_key = get_relname_relid("principal_db_role_key", cg_catalog()->schema);
	if (!OidIsValid(principal_pkey) || !OidIsValid(principal_name_key) || !OidIsValid(principal_role_key))
		elog(ERROR, "the indexes of crmguard.principal are missing");
	cache_valid = true;
}

/* The principal row an index gives for a key (id, name or role), or NULL */
static HeapTuple
principal_row(Oid index, int column, Datum key, RegProcedure eqproc, TupleDesc *desc)
{
	Relation	rel = table_open(cg_catalog()->principal_rel, AccessShareLock);
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tup;
	HeapTuple	copy = NULL;
	Snapshot	snapshot = principal_snapshot();

	/* the heap's attribute number: systable_beginscan maps it to the index's */
	ScanKeyInit(&skey, principal_attno[column], BTEqualStrategyNumber, eqproc, key);
	scan = systable_beginscan(rel, index, true, snapshot, 1, &skey);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		MemoryContext old = MemoryContextSwitchTo(cache_context);

		copy = heap_copytuple(tup);
		*desc = CreateTupleDescCopy(RelationGetDescr(rel));
		MemoryContextSwitchTo(old);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return copy;
}

/* Cache the principal of a row (its id entry), or a known absence */
static PrincipalEntry *
remember_row(int64 id, HeapTuple tup, TupleDesc desc)
{
	bool		found;
	PrincipalEntry *entry;
	MemoryContext old;
	bool		isnull;
	Datum		d;

	if (tup != NULL)
		id = DatumGetInt64(heap_getattr(tup, principal_attno[PA_ID], desc, &isnull));
	entry = hash_search(by_id, &id, HASH_ENTER, &found);
	if (found)
		return entry->present ? entry : NULL;
	memset(&entry->p, 0, sizeof(CgPrincipal));
	entry->nchildren = 0;
	entry->children = NULL;
	entry->team = NULL;
	entry->present = tup != NULL;
	if (tup == NULL)
		return NULL;
	old = MemoryContextSwitchTo(cache_context);
	entry->p.id = id;
	entry->p.name = TextDatumGetCString(heap_getattr(tup, principal_attno[PA_NAME], desc, &isnull));
	d = heap_getattr(tup, principal_attno[PA_DB_ROLE], desc, &isnull);
	entry->p.db_role = isnull ? InvalidOid : get_role_oid(NameStr(*DatumGetName(d)), true);
	d = heap_getattr(tup, principal_attno[PA_MANAGER], desc, &isnull);
	entry->p.manager_id = isnull ? 0 : DatumGetInt64(d);
	d = heap_getattr(tup, principal_attno[PA_ROLES], desc, &isnull);
	if (isnull)
	{
		entry->p.nroles = 0;
		entry->p.roles = palloc(sizeof(char *));
	}
	else
		entry->p.roles = text_array_to_cstrings(d, &entry->p.nroles);
	entry->p.attributes = DatumGetJsonbPCopy(heap_getattr(tup, principal_attno[PA_ATTRIBUTES], desc, &isnull));
	entry->p.active = DatumGetBool(heap_getattr(tup, principal_attno[PA_ACTIVE], desc, &isnull));
	entry->p.require_device = DatumGetBool(heap_getattr(tup, principal_attno[PA_DEVICE], desc, &isnull));
	MemoryContextSwitchTo(old);
	return entry;
}

/* A principal by id, from the cache or read once; may_read false: cache only */
static PrincipalEntry *
entry_by_id(int64 id, bool may_read, bool *complete)
{
	PrincipalEntry *entry;
	TupleDesc	desc = NULL;
	HeapTuple	tup;

	if (!cache_valid)
	{
		if (!may_read)
		{
			*complete = false;
			return NULL;
		}
		reset_cache();
	}
	entry = hash_search(by_id, &id, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->present ? entry : NULL;
	if (!may_read)
	{
		*complete = false;
		return NULL;
	}
	tup = principal_row(principal_pkey, PA_ID, Int64GetDatum(id), F_INT8EQ, &desc);
	return remember_row(id, tup, desc);
}

/* The principal mapped to a role, from the cache or read once */
static PrincipalEntry *
entry_by_role(Oid role, bool may_read, bool *complete)
{
	RoleEntry  *re;
	bool		found;
	char	   *rolname;
	TupleDesc	desc = NULL;
	HeapTuple	tup = NULL;
	PrincipalEntry *entry;

	if (!cache_valid)
	{
		if (!may_read)
		{
			*complete = false;
			return NULL;
		}
		reset_cache();
	}
	re = hash_search(by_role, &role, HASH_FIND, NULL);
	if (re != NULL)
		return re->principal_id ? entry_by_id(re->principal_id, may_read, complete) : NULL;
	if (!may_read)
	{
		*complete = false;
		return NULL;
	}
	rolname = GetUserNameFromId(role, true);
	if (rolname != NULL)
	{
		NameData	n;

		namestrcpy(&n, rolname);
		tup = principal_row(principal_role_key, PA_DB_ROLE, NameGetDatum(&n), F_NAMEEQ, &desc);
	}
	entry = tup ? remember_row(0, tup, desc) : NULL;
	/* the role must still be the one the row names (a role renamed since maps to nobody) */
	if (entry != NULL && entry->p.db_role != role)
		entry = NULL;
	re = hash_search(by_role, &role, HASH_ENTER, &found);
	re->principal_id = entry ? entry->p.id : 0;
	return entry;
}

static PrincipalEntry *
lookup_id(int64 id)
{
	bool		complete = true;

	return entry_by_id(id, true, &complete);
}

const CgPrincipal *
cg_principal_by_id(int64 id)
{
	PrincipalEntry *entry = lookup_id(id);

	return entry ? &entry->p : NULL;
}

const CgPrincipal *
cg_principal_by_name(const char *name)
{
	TupleDesc	desc = NULL;
	HeapTuple	tup;
	PrincipalEntry *entry;

	if (!cache_valid)
		reset_cache();
	tup = principal_row(principal_name_key, PA_NAME, CStringGetTextDatum(name), F_TEXTEQ, &desc);
	entry = tup ? remember_row(0, tup, desc) : NULL;
	return entry ? &entry->p : NULL;
}

static int
compare_edges(const void *a, const void *b)
{
	const TreeEdge *x = a;
	const TreeEdge *y = b;

	if (x->manager != y->manager)
		return x->manager < y->manager ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id ? 1 : 0;
}

/* Every principal's manager, read with one heap scan, sorted by manager */
static void
load_tree(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	Snapshot	snapshot;
	int			cap = 256;
	MemoryContext old;

	if (!cache_valid)
		reset_cache();
	rel = table_open(cg_catalog()->principal_rel, AccessShareLock);
	snapshot = principal_snapshot();
	old = MemoryContextSwitchTo(cache_context);
	tree = palloc(sizeof(TreeEdge) * cap);
	tree_size = 0;
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		isnull;
		Datum		manager = heap_getattr(tup, principal_attno[PA_MANAGER], RelationGetDescr(rel), &isnull);

		if (isnull)
			continue;
		if (tree_size == cap)
		{
			cap *= 2;
			tree = repalloc(tree, sizeof(TreeEdge) * cap);
		}
		tree[tree_size].manager = DatumGetInt64(manager);
		tree[tree_size].id = DatumGetInt64(heap_getattr(tup, principal_attno[PA_ID], RelationGetDescr(rel), &isnull));
		tree_size++;
	}
	table_endscan(scan);
	MemoryContextSwitchTo(old);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	qsort(tree, tree_size, sizeof(TreeEdge), compare_edges);
	tree_valid = true;
}

/* The first edge of a manager's children in the sorted tree */
static int
first_child(int64 manager)
{
	int			lo = 0;
	int			hi = tree_size;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (tree[mid].manager < manager)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The assumption in force: the transaction's, else the session's, else none */
static const Assumption *
assumption_in_force(void)
{
	if (local_assumed.active)
		return &local_assumed;
	if (session_assumed.active)
		return &session_assumed;
	return NULL;
}

/*
 * The principal an assumption (with none: the current role) resolves to.
 * With may_read false it reads the cache only, so it is safe at transaction
 * end, and *complete is set false when the cache cannot tell.
 */
static PrincipalEntry *
resolve_entry(const Assumption *a, bool may_read, bool *complete)
{
	PrincipalEntry *entry;

	if (a != NULL)
	{
		/* an expired token leaves nobody, never the login role's principal */
		if (a->principal_id == 0 || GetCurrentTimestamp() >= a->expires_at)
			return NULL;
		entry = entry_by_id(a->principal_id, may_read, complete);
	}
	else
		entry = entry_by_role(GetOuterUserId(), may_read, complete);
	if (entry == NULL || !entry->p.active)
		return NULL;
	return entry;
}

static PrincipalEntry *
current_entry(void)
{
	bool		complete = true;

	cg_require_preload();
	if (evaluating_as >= 0)
		return evaluating_as == 0 ? NULL : entry_by_id(evaluating_as, true, &complete);
	return resolve_entry(assumption_in_force(), true, &complete);
}

/*
 * The acting principal, or NULL.  The pointer is valid until the next call
 * into this module.
 */
const CgPrincipal *
cg_current_principal(void)
{
	PrincipalEntry *entry = current_entry();

	return entry ? &entry->p : NULL;
}

PG_FUNCTION_INFO_V1(crmguard_current_principal);
Datum
crmguard_current_principal(PG_FUNCTION_ARGS)
{
	const CgPrincipal *p = cg_current_principal();

	if (p == NULL)
		PG_RETURN_NULL();
	PG_RETURN_INT64(p->id);
}

PG_FUNCTION_INFO_V1(crmguard_has_role);
Datum
crmguard_has_role(PG_FUNCTION_ARGS)
{
	char	   *role = text_to_cstring(PG_GETARG_TEXT_PP(0));
	const CgPrincipal *p = cg_current_principal();
	int			i;

	if (p == NULL)
		PG_RETURN_BOOL(false);
	for (i = 0; i < p->nroles; i++)
		if (strcmp(p->roles[i], role) == 0)
			PG_RETURN_BOOL(true);
	PG_RETURN_BOOL(false);
}

/*
 * An attribute of a principal as text (a JSON object or array in its JSON
 * form), or NULL when it is missing or JSON null.
 */
char *
cg_principal_attr(const CgPrincipal *p, const char *key)
{
	JsonbValue	k;
	JsonbValue *v;

	if (p == NULL)
		return NULL;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	v = findJsonbValueFromContainer(&p->attributes->root, JB_FOBJECT, &k);
	if (v == NULL || v->type == jbvNull)
		return NULL;
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out,
													   NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			return JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
	}
}

PG_FUNCTION_INFO_V1(crmguard_attr);
Datum
crmguard_attr(PG_FUNCTION_ARGS)
{
	char	   *value = cg_principal_attr(cg_current_principal(),
										  text_to_cstring(PG_GETARG_TEXT_PP(0)));

	if (value == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(value));
}

/*
 * An attribute of the acting principal read as the type of the second
 * argument (its value is not used), with DateStyle, TimeZone and the other
 * settings pinned: criteria comparing a date or time column with an
 * attribute mean the same whatever the reader's session says.
 */
PG_FUNCTION_INFO_V1(crmguard_attr_as);
Datum
crmguard_attr_as(PG_FUNCTION_ARGS)
{
	Oid			type = get_fn_expr_argtype(fcinfo->flinfo, 1);
	char	   *value;
	Oid			in_fn;
	Oid			ioparam;
	int			nest;
	Datum		result;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	value = cg_principal_attr(cg_current_principal(), text_to_cstring(PG_GETARG_TEXT_PP(0)));
	if (value == NULL)
		PG_RETURN_NULL();
	getTypeInputInfo(type, &in_fn, &ioparam);
	nest = cg_pin_output_settings();
	result = OidInputFunctionCall(in_fn, value, ioparam, -1);
	AtEOXact_GUC(false, nest);
	PG_RETURN_DATUM(result);
}

/*
 * The principal and everyone below it, breadth first; cached per principal.
 * Each principal has one manager, so the walk meets a principal twice only
 * if the root is its own descendant: the root is never taken again.
 */
static ArrayType *
compute_team(PrincipalEntry *root)
{
	MemoryContext old;
	int64	   *ids;
	int			n = 0;
	int			cap = 64;
	int			next = 0;
	Datum	   *datums;
	int			i;

	ereport(DEBUG1, (errmsg_internal("crmguard: computing team of principal " INT64_FORMAT,
									 root->p.id)));
	if (!tree_valid)
		load_tree();

	ids = palloc(sizeof(int64) * cap);
	ids[n++] = root->p.id;
	while (next < n)
	{
		int64		manager = ids[next++];

		for (i = first_child(manager); i < tree_size && tree[i].manager == manager; i++)
		{
			if (tree[i].id == root->p.id)
				continue;
			if (n == cap)
			{
				cap *= 2;
				ids = repalloc(ids, sizeof(int64) * cap);
			}
			ids[n++] = tree[i].id;
		}
	}

	datums = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
		datums[i] = Int64GetDatum(ids[i]);
	old = MemoryContextSwitchTo(cache_context);
	root->team = construct_array(datums, n, INT8OID, sizeof(int64),
								 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	MemoryContextSwitchTo(old);
	return root->team;
}

/* A copy of the team of a principal (the principal and everyone below it) */
ArrayType *
cg_principal_team(int64 id)
{
	PrincipalEntry *entry = lookup_id(id);

	if (entry == NULL)
		return construct_empty_array(INT8OID);
	if (entry->team == NULL)
		(void) compute_team(entry);
	return DatumGetArrayTypePCopy(PointerGetDatum(entry->team));
}

/*
 * Answer for another principal (0: nobody) until cg_evaluate_as_end; the
 * caller restores the previous value on error too.
 */
int64
cg_evaluate_as(int64 id)
{
	int64		previous = evaluating_as;

	evaluating_as = id;
	return previous;
}

void
cg_evaluate_as_end(int64 previous)
{
	evaluating_as = previous;
}

PG_FUNCTION_INFO_V1(crmguard_team);
Datum
crmguard_team(PG_FUNCTION_ARGS)
{
	PrincipalEntry *entry = current_entry();
	ArrayType  *team;

	if (entry == NULL)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));
	team = entry->team ? entry->team : compute_team(entry);
	PG_RETURN_ARRAYTYPE_P(DatumGetArrayTypePCopy(PointerGetDatum(team)));
}

/* Whether two principals (NULL: nobody) have the same CRM roles */
static bool
same_roles(PrincipalEntry *a, PrincipalEntry *b)
{
	int			i;

	if (a == NULL || b == NULL)
		return a == b;
	/* a require_device principal's policy also holds the device gate */
	if (a->p.nroles != b->p.nroles || a->p.require_device != b->p.require_device)
		return false;
	for (i = 0; i < a->p.nroles; i++)
		if (strcmp(a->p.roles[i], b->p.roles[i]) != 0)
			return false;
	return true;
}

/*
 * The acting principal before an identity change made at transaction end:
 * *known is false when it cannot be told without catalog access.
 */
static PrincipalEntry *
entry_at_xact_end(bool *known)
{
	PrincipalEntry *entry;

	*known = cache_valid && evaluating_as < 0;
	if (!*known)
		return NULL;
	entry = resolve_entry(assumption_in_force(), false, known);
	return *known ? entry : NULL;
}

/*
 * The visibility policy of a cached plan is specialised to the CRM roles of
 * the principal it was planned for: re-plan when they change (a pooler
 * switching between agents keeps its plans).
 */
static void
replan_after_end(bool known, PrincipalEntry *before)
{
	bool		complete = true;

	if (!known || !same_roles(before, resolve_entry(assumption_in_force(), false, &complete)) || !complete)
		identity_changed();
}

/*
 * Give the transaction's identity up at its end; on abort, also what the
 * transaction did to the session-long one.
 */
static void
assume_xact_callback(XactEvent event, void *arg)
{
	bool		known;
	PrincipalEntry *before;

	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_ABORT)
		held_cursors = NIL;
	if (!assumed_changed_in_xact)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			break;
		default:
			return;
	}
	before = entry_at_xact_end(&known);
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		session_assumed = session_at_xact_start;
	memset(&local_assumed, 0, sizeof(local_assumed));
	assumed_changed_in_xact = false;
	subxact_undo = NIL;
	replan_after_end(known, before);
}

/* A subtransaction that rolls back gives back the identities it found */
static void
assume_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	AssumptionUndo *undo;
	bool		known;
	PrincipalEntry *before;

	if (subxact_undo == NIL)
		return;
	undo = (AssumptionUndo *) linitial(subxact_undo);
	if (undo->subid != mySubid)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		before = entry_at_xact_end(&known);
		session_assumed = undo->session;
		local_assumed = undo->local;
		subxact_undo = list_delete_first(subxact_undo);
		replan_after_end(known, before);
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/* the parent keeps the state it found, if it saved one itself */
		if (parentSubid == TopSubTransactionId ||
			(list_length(subxact_undo) > 1 &&
			 ((AssumptionUndo *) lsecond(subxact_undo))->subid == parentSubid))
			subxact_undo = list_delete_first(subxact_undo);
		else
			undo->subid = parentSubid;
	}
}

static void
register_xact_callbacks(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(assume_xact_callback, NULL);
		RegisterSubXactCallback(assume_subxact_callback, NULL);
		xact_callback_registered = true;
	}
}

/* Save what a rollback of this (sub)transaction must give back */
static void
remember_for_rollback(void)
{
	SubTransactionId subid = GetCurrentSubTransactionId();

	register_xact_callbacks();
	if (!assumed_changed_in_xact)
	{
		session_at_xact_start = session_assumed;
		assumed_changed_in_xact = true;
	}
	if (subid != TopSubTransactionId &&
		(subxact_undo == NIL ||
		 ((AssumptionUndo *) linitial(subxact_undo))->subid != subid))
	{
		MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
		AssumptionUndo *undo = palloc(sizeof(AssumptionUndo));

		undo->subid = subid;
		undo->session = session_assumed;
		undo->local = local_assumed;
		subxact_undo = lcons(undo, subxact_undo);
		MemoryContextSwitchTo(old);
	}
}

static Jsonb *
json_detail(const char *json)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/* Audit the end of an assumed identity, like its start */
static void
audit_end(const Assumption *a, const char *scope, const char *reason)
{
	if (!a->active || a->principal_id == 0)
		return;
	cg_audit("assume_end", "crmguard.principal", psprintf(INT64_FORMAT, a->principal_id),
			 json_detail(psprintf("{\"scope\": \"%s\", \"reason\": \"%s\"}", scope, reason)));
}

/*
 * Called by the audit writer just before a transaction commits: the end of
 * the transaction's identity is chained with the transaction's other entries.
 */
void
cg_principal_pre_commit(void)
{
	if (!assumed_changed_in_xact || !local_assumed.active || local_assumed.principal_id == 0)
		return;
	PushActiveSnapshot(GetTransactionSnapshot());
	audit_end(&local_assumed, "transaction", "transaction end");
	PopActiveSnapshot();
}

/* Give up every assumed identity (assume(NULL), DISCARD ALL) */
static void
end_assumptions(const char *reason)
{
	PrincipalEntry *before = current_entry();

	remember_for_rollback();
	audit_end(&local_assumed, "transaction", reason);
	audit_end(&session_assumed, "session", reason);
	memset(&local_assumed, 0, sizeof(local_assumed));
	memset(&session_assumed, 0, sizeof(session_assumed));
	cg_device_forget();
	if (!same_roles(before, current_entry()))
		identity_changed();
}

/* DISCARD ALL: a pooler hands the connection to its next client */
void
cg_principal_forget(void)
{
	if (local_assumed.active || session_assumed.active)
		end_assumptions("DISCARD ALL");
	cg_device_forget();
}

/*
 * A cursor WITH HOLD is run to its end at COMMIT and outlives the
 * transaction: under a transaction-scoped identity it would carry rows read
 * as that principal to whoever uses the connection next (a pooler's next
 * client).  Refuse it while such an identity is in force, and remember it
 * otherwise, so that assume() can refuse to start one under it.
 */
void
cg_principal_check_declare(DeclareCursorStmt *stmt)
{
	MemoryContext old;

	if (!(stmt->options & CURSOR_OPT_HOLD))
		return;
	if (local_assumed.active)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_CURSOR_DEFINITION),
				 errmsg("cannot declare cursor \"%s\" WITH HOLD under an identity assumed for the transaction",
						stmt->portalname),
				 errdetail("A held cursor outlives the transaction, and its rows would outlive the identity they were read as."),
				 errhint("Declare the cursor WITHOUT HOLD, or assume the identity with is_local => false if the cursor must outlive the transaction.")));
	register_xact_callbacks();
	old = MemoryContextSwitchTo(TopTransactionContext);
	held_cursors = lappend(held_cursors, pstrdup(stmt->portalname));
	MemoryContextSwitchTo(old);
}

/*
 * A held cursor declared earlier in this transaction and still open is
 * materialised at COMMIT, that is as the identity assumed now: refuse.
 */
static void
refuse_under_held_cursor(void)
{
	ListCell   *lc;

	foreach(lc, held_cursors)
	{
		Portal		portal = GetPortalByName((const char *) lfirst(lc));

		if (PortalIsValid(portal) && (portal->cursorOptions & CURSOR_OPT_HOLD) &&
			portal->createSubid != InvalidSubTransactionId)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_CURSOR_STATE),
					 errmsg("cannot assume an identity for the transaction while cursor \"%s\" WITH HOLD is open",
							portal->name),
					 errdetail("The held cursor is read to its end at commit, as the identity assumed for the transaction, and outlives it."),
					 errhint("Close the cursor first, or assume the identity with is_local => false.")));
	}
}

/*
 * Act as a principal whose token was verified: for the transaction, or with
 * is_local false for the session (which also ends the transaction's own).
 */
static void
assume_principal(int64 id, TimestampTz expires_at, bool is_local, const char *via,
				 int64 device)
{
	PrincipalEntry *before = current_entry();
	Assumption *target = is_local ? &local_assumed : &session_assumed;

	if (is_local)
		refuse_under_held_cursor();
	remember_for_rollback();
	audit_end(target, is_local ? "transaction" : "session", "replaced");
	if (!is_local)
	{
		audit_end(&local_assumed, "transaction", "replaced");
		memset(&local_assumed, 0, sizeof(local_assumed));
	}
	target->active = true;
	target->principal_id = id;
	target->expires_at = expires_at;
	target->device_id = device;
	if (!same_roles(before, current_entry()))
		identity_changed();
	cg_audit("assume", "crmguard.principal", psprintf(INT64_FORMAT, id),
			 json_detail(device ?
						 psprintf("{\"scope\": \"%s\", \"via\": \"%s\", \"device\": " INT64_FORMAT "}",
								  is_local ? "transaction" : "session", via, device) :
						 psprintf("{\"scope\": \"%s\", \"via\": \"%s\"}",
								  is_local ? "transaction" : "session", via)));
	cg_activity_note("token");
}

void
cg_assume_principal(int64 id, TimestampTz expires_at, bool is_local, const char *via)
{
	assume_principal(id, expires_at, is_local, via, 0);
}

/*
 * The device of the assumption in force (a token minted with a device
 * signature), or 0; *is_local tells whether the identity ends with the
 * transaction.
 */
int64
cg_assumed_device(bool *is_local)
{
	const Assumption *a = assumption_in_force();

	if (is_local)
		*is_local = (a == &local_assumed);
	if (a == NULL || evaluating_as >= 0)
		return 0;
	return a->device_id;
}

/* Nobody acts until the transaction ends, whatever the role or session says */
void
cg_assume_nobody(void)
{
	PrincipalEntry *before = current_entry();

	remember_for_rollback();
	audit_end(&local_assumed, "transaction", "replaced");
	local_assumed.active = true;
	local_assumed.principal_id = 0;
	local_assumed.expires_at = DT_NOEND;
	local_assumed.device_id = 0;
	if (!same_roles(before, current_entry()))
		identity_changed();
}

/* Give up every assumed identity, transaction- and session-long */
void
cg_assume_end(void)
{
	cg_require_preload();
	end_assumptions("assume(NULL)");
}

PG_FUNCTION_INFO_V1(crmguard_issue_token);
Datum
crmguard_issue_token(PG_FUNCTION_ARGS)
{
	char	   *name;
	Interval   *valid_for;
	const CgPrincipal *p;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz expires_at;
	unsigned char token[TOKEN2_BYTES];
	unsigned char key[CG_KEY_BYTES];
	char		b64[sodium_base64_ENCODED_LEN(TOKEN2_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
	int64		id;
	int64		device = 0;
	int			payload;
	StringInfoData detail;

	cg_require_preload();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("principal and valid_for must not be NULL")));
	if (PG_ARGISNULL(2) != PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a device token needs both the device and its signature")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	valid_for = PG_GETARG_INTERVAL_P(1);
	expires_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														 TimestampTzGetDatum(now),
														 IntervalPGetDatum(valid_for)));
	if (expires_at <= now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("token validity must be positive")));

	p = cg_principal_by_name(name);
	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("principal \"%s\" does not exist", name)));
	if (!p->active)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("principal \"%s\" is inactive", name)));
	id = p->id;

	/* a require_device principal's token carries the device that signed for it */
	if (!PG_ARGISNULL(2))
	{
		device = PG_GETARG_INT64(2);
		cg_device_verify(p, device, PG_GETARG_BYTEA_PP(3));
	}
	else if (p->require_device)
		ereport(ERROR,
				(errcode(ERRCODE_CG_DEVICE),
				 errmsg("principal \"%s\" requires a trusted device", name),
				 errdetail("A token for this principal must be minted with a device signature."),
				 errhint("Sign crmguard.device_challenge('%s') with the principal's device and pass the device and signature to crmguard.issue_token.", name)));

	token[0] = device ? 2 : 1;
	cg_put_uint(token + 1, MyDatabaseId, 4);
	cg_put_uint(token + 5, (uint64) id, 8);
	cg_put_uint(token + 13, (uint64) expires_at, 8);
	if (device)
		cg_put_uint(token + TOKEN_PAYLOAD_BYTES, (uint64) device, 8);
	payload = device ? TOKEN2_PAYLOAD_BYTES : TOKEN_PAYLOAD_BYTES;
	cg_subkey(CG_KEY_TOKEN, key);
	crypto_auth(token + payload, token, payload, key);
	sodium_memzero(key, sizeof(key));
	sodium_bin2base64(b64, sizeof(b64), token, payload + crypto_auth_BYTES,
					  sodium_base64_VARIANT_URLSAFE_NO_PADDING);

	initStringInfo(&detail);
	appendStringInfo(&detail, "{\"principal\": " INT64_FORMAT ", \"expires_at\": \"%s\"",
					 id, timestamptz_to_str(expires_at));
	if (device)
		appendStringInfo(&detail, ", \"device\": " INT64_FORMAT, device);
	appendStringInfoChar(&detail, '}');
	cg_audit("issue_token", "crmguard.principal", psprintf(INT64_FORMAT, id),
			 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail.data))));

	PG_RETURN_TEXT_P(cstring_to_text(psprintf("%s%s", TOKEN_PREFIX, b64)));
}

/* Record a refused token where rollback cannot undo it, then refuse */
void
cg_refuse_token(const char *reason)
{
	cg_audit_durable("assume_refused", "crmguard.principal", NULL,
					 psprintf("{\"reason\": \"%s\"}", reason));
	ereport(ERROR,
			(errcode(ERRCODE_CG_INVALID_TOKEN),
			 errmsg("invalid or expired token")));
}

PG_FUNCTION_INFO_V1(crmguard_assume);
Datum
crmguard_assume(PG_FUNCTION_ARGS)
{
	char	   *token_text;
	size_t		prefix_len = strlen(TOKEN_PREFIX);
	unsigned char token[TOKEN2_BYTES + 1];
	size_t		token_len = 0;
	unsigned char key[CG_KEY_BYTES];
	int			mac_ok;
	int64		id;
	int64		device = 0;
	int			payload;
	TimestampTz expires_at;
	PrincipalEntry *entry;

	cg_require_preload();

	/* NULL gives up any assumed identity, transaction- or session-long */
	if (PG_ARGISNULL(0))
	{
		cg_assume_end();
		PG_RETURN_NULL();
	}
	token_text = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (strncmp(token_text, TOKEN_PREFIX, prefix_len) != 0 ||
		sodium_base642bin(token, sizeof(token), token_text + prefix_len,
						  strlen(token_text) - prefix_len, NULL, &token_len, NULL,
						  sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
		!((token_len == TOKEN_BYTES && token[0] == 1) ||
		  (token_len == TOKEN2_BYTES && token[0] == 2)))
		cg_refuse_token("malformed");

	payload = token[0] == 2 ? TOKEN2_PAYLOAD_BYTES : TOKEN_PAYLOAD_BYTES;
	cg_subkey(CG_KEY_TOKEN, key);
	mac_ok = crypto_auth_verify(token + payload, token, payload, key);
	sodium_memzero(key, sizeof(key));
	if (mac_ok != 0)
		cg_refuse_token("bad signature");
	if (cg_get_uint(token + 1, 4) != MyDatabaseId)
		cg_refuse_token("other database");

	id = (int64) cg_get_uint(token + 5, 8);
	expires_at = (TimestampTz) cg_get_uint(token + 13, 8);
	if (GetCurrentTimestamp() >= expires_at)
		cg_refuse_token("expired");

	entry = lookup_id(id);
	if (entry == NULL || !entry->p.active)
		cg_refuse_token("principal inactive or missing");
	if (token[0] == 2)
		device = (int64) cg_get_uint(token + TOKEN_PAYLOAD_BYTES, 8);

	/* is_local NULL: the narrower scope */
	assume_principal(id, expires_at, PG_ARGISNULL(1) || PG_GETARG_BOOL(1), "token", device);
	PG_RETURN_INT64(id);
}

/*
 * Row trigger on crmguard.principal: refuse a manager cycle, checked against
 * the latest committed tree under a lock only this module takes, so two
 * concurrent changes cannot each close half of a cycle.
 */
PG_FUNCTION_INFO_V1(crmguard_principal_changed);
Datum
crmguard_principal_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	int64		id;
	int64		current;
	Datum		d;
	int			steps;
	SPIPlanPtr	plan;
	Oid			argtypes[1] = {INT8OID};
	CgPrivilegedContext priv;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		elog(ERROR, "crmguard_principal_changed: must be fired as an AFTER row trigger");

	rel = trigdata->tg_relation;

	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	desc = RelationGetDescr(rel);
	id = DatumGetInt64(heap_getattr(tuple, SPI_fnumber(desc, "id"), desc, &isnull));
	d = heap_getattr(tuple, SPI_fnumber(desc, "manager_id"), desc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	current = DatumGetInt64(d);

	LockDatabaseObject(RelationRelationId, RelationGetRelid(rel), 1, ExclusiveLock);
	CommandCounterIncrement();

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = SPI_prepare("SELECT manager_id FROM crmguard.principal"
					   " WHERE id OPERATOR(pg_catalog.=) $1", 1, argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed");

	for (steps = 0; steps < 1000000; steps++)
	{
		Datum		arg = Int64GetDatum(current);

		if (current == id)
			ereport(ERROR,
					(errcode(ERRCODE_CG_INVALID_RULE),
					 errmsg("manager of principal " INT64_FORMAT " would form a cycle", id),
					 errdetail("Principal " INT64_FORMAT " is already above it in the manager tree.", id)));
		if (SPI_execute_snapshot(plan, &arg, NULL, GetLatestSnapshot(),
								 InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read crmguard.principal");
		if (SPI_processed == 0)
			break;
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (isnull)
			break;
		current = DatumGetInt64(d);
	}
	SPI_finish();
	cg_leave_owner(&priv);
	return PointerGetDatum(NULL);
}
