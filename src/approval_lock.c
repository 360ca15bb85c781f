/*
 * approval_lock.c
 *		The lock on a row while its approval request is pending (CG010), and
 *		what it needs: per-backend caches of each table's processes and of
 *		its rows' pending requests, kept key by key through clocks in shared
 *		memory; the tracker of the tables running statements change (the
 *		lock holds through views, rules and definer functions); the request
 *		table's trigger (the waiting list, the clocks of changed keys).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/plannodes.h"
#include "parser/parsetree.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "crmguard.h"
#include "approval.h"

#define LOCK_GUARD		CG_APPROVAL_LOCK_GUARD
#define TRUNCATE_GUARD	CG_APPROVAL_TRUNCATE_GUARD
#define SUBMIT_INSERT	CG_APPROVAL_SUBMIT_INSERT
#define SUBMIT_UPDATE	CG_APPROVAL_SUBMIT_UPDATE

/* ---------------------------------------------------------------------------
 * Cache
 *
 * Processes: per table, loaded again when crmguard.approval_process or the
 * table changes.  Pending rows: per table, the keys read once (a scan of the
 * pending requests' index, whatever the history), then kept current key by
 * key.  Shared memory holds a clock per bucket of keys: a transaction that
 * starts or ends requests moves the clocks of their keys' buckets when it
 * commits (after its commit is visible, before its locks go), and a backend
 * asks the request table again only for a key whose bucket moved since it
 * last looked.  Nothing else is read again, and no other backend is told.
 * ---------------------------------------------------------------------------
 */
typedef struct PendingRow
{
	char	   *key;
	int64		request;
	int			nedit;
	char	  **editable;
} PendingRow;

/* What this backend knows of one key: its pending row (or none) as of a clock */
typedef struct KeyState
{
	PendingRow *row;			/* NULL: no pending request */
	uint64		checked;		/* bucket clock read before the request table was */
} KeyState;

typedef struct TextKeyEntry
{
	char		key[NAMEDATALEN * 2];	/* truncated key; the states have the full one */
	List	   *states;			/* of KeyState, with row or full key */
} TextKeyEntry;

typedef struct TextKeyState
{
	KeyState	s;
	char	   *key;
} TextKeyState;

typedef struct IntKeyEntry
{
	int64		key;
	KeyState	s;
} IntKeyEntry;

#define PENDING_BUCKETS		16384
#define INT_SEEN_BITS		65536	/* most integer keys of a large UPDATE are known absent without a hash lookup */
#define MIN_RECHECKED		64		/* keys asked for one by one before the table's pending keys are read again */
#define MAX_TOUCHED			256		/* then a commit moves every clock */

typedef struct PendingClocks
{
	pg_atomic_uint64 clock;
	pg_atomic_uint64 bucket[PENDING_BUCKETS];
} PendingClocks;

static PendingClocks *clocks = NULL;

/* buckets whose requests this transaction started or ended */
static uint32 touched[MAX_TOUCHED];
static int	ntouched = 0;
static bool touched_all = false;

static HTAB *tables = NULL;
static MemoryContext cache_context = NULL;
static bool cache_valid = false;
static uint64 cache_generation = 0;	/* bumped by every load */
static bool loaded_in_recovery = false;
static Oid	process_rel = InvalidOid;
static Oid	signal_rel = InvalidOid;

/* the one row a "set" action may change while its request is pending */
static Oid	bypass_relid = InvalidOid;
static char *bypass_key = NULL;

/* A "set" action is changing this row (InvalidOid: it is done): the lock lets it pass */
void
cg_approval_bypass(Oid relid, char *key)
{
	bypass_relid = relid;
	bypass_key = key;
}

void
cg_approval_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(PendingClocks)));
}

void
cg_approval_shmem_startup(void)
{
	bool		found;
	int			i;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	clocks = ShmemInitStruct("crmguard approval clocks", sizeof(PendingClocks), &found);
	if (!found)
	{
		pg_atomic_init_u64(&clocks->clock, 0);
		for (i = 0; i < PENDING_BUCKETS; i++)
			pg_atomic_init_u64(&clocks->bucket[i], 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* The bucket of a row's key: an integer key by its value, any other by its text */
static uint32
int_bucket(Oid relid, int64 key)
{
	uint32		h = hash_bytes_uint32((uint32) key) ^ hash_bytes_uint32((uint32) (key >> 32));

	h = hash_combine(h, hash_bytes_uint32(relid));
	return hash_combine(h, hash_bytes_uint32(MyDatabaseId)) % PENDING_BUCKETS;
}

/* The bit of int_seen an integer key sets (Fibonacci hashing: one multiply) */
static inline uint32
int_seen_bit(int64 key)
{
	return (uint32) (((uint64) key * UINT64CONST(0x9E3779B97F4A7C15)) >> 48);
}

static bool
key_as_int(const char *key, int64 *value)
{
	char	   *end;
	char		again[32];

	errno = 0;
	*value = strtoi64(key, &end, 10);
	if (errno != 0 || end == key || *end != '\0')
		return false;
	snprintf(again, sizeof(again), INT64_FORMAT, *value);
	return strcmp(again, key) == 0;
}

static uint32
text_bucket(Oid relid, const char *key)
{
	int64		v;
	uint32		h;

	if (key_as_int(key, &v))
		return int_bucket(relid, v);
	h = hash_bytes((const unsigned char *) key, strlen(key));
	h = hash_combine(h, hash_bytes_uint32(relid));
	return hash_combine(h, hash_bytes_uint32(MyDatabaseId)) % PENDING_BUCKETS;
}

static bool
touched_here(uint32 bucket)
{
	int			i;

	if (touched_all)
		return true;
	for (i = 0; i < ntouched; i++)
		if (touched[i] == bucket)
			return true;
	return false;
}

/* Move a bucket's clock forward, never back */
static void
advance(uint32 bucket, uint64 now)
{
	uint64		seen = pg_atomic_read_u64(&clocks->bucket[bucket]);

	while (seen < now && !pg_atomic_compare_exchange_u64(&clocks->bucket[bucket], &seen, now))
		;
}

/*
 * At commit (visible to new snapshots already, row locks still held), the
 * clocks of the keys this transaction changed move: a backend that waited
 * for one of these rows sees it moved and reads the key again.
 */
static void
pending_xact_callback(XactEvent event, void *arg)
{
	int			i;

	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (ntouched > 0 || touched_all)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that started or ended approval requests")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (clocks != NULL && (ntouched > 0 || touched_all))
			{
				uint64		now = pg_atomic_add_fetch_u64(&clocks->clock, 1);

				if (touched_all)
					for (i = 0; i < PENDING_BUCKETS; i++)
						advance(i, now);
				else
					for (i = 0; i < ntouched; i++)
						advance(touched[i], now);
			}
			ntouched = 0;
			touched_all = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			ntouched = 0;
			touched_all = false;
			break;
		default:
			break;
	}
}

static void
touch(Oid relid, const char *key)
{
	uint32		b = text_bucket(relid, key);

	if (touched_here(b))
		return;
	if (ntouched < MAX_TOUCHED)
		touched[ntouched++] = b;
	else
		touched_all = true;
}

static void
cache_callback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == process_rel || relid == signal_rel ||
		(tables != NULL && hash_search(tables, &relid, HASH_FIND, NULL) != NULL))
		cache_valid = false;
}

static ApprovalTable *
table_entry(Oid relid)
{
	bool		found;
	ApprovalTable *t = hash_search(tables, &relid, HASH_ENTER, &found);

	if (!found)
	{
		t->nprocesses = 0;
		t->processes = NULL;
		t->loaded = false;
		t->keys_context = NULL;
		t->text_keys = NULL;
		t->int_keys = NULL;
		t->int_seen = NULL;
	}
	return t;
}

static char **
text_array(Datum d, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	int			count;
	int			i;
	char	  **out;

	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &count);
	out = palloc(sizeof(char *) * Max(count, 1));
	for (i = 0; i < count; i++)
		out[i] = nulls[i] ? pstrdup("") : TextDatumGetCString(elems[i]);
	*n = count;
	return out;
}

static bool
contains(char **list, int n, const char *s)
{
	int			i;

	for (i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return true;
	return false;
}

/*
 * crmguard's queries on its own catalogs run with fixed planner settings,
 * not the session's: index look-ups whatever the statistics say (a request
 * table just grown by thousands of rows, not yet analysed, must not be read
 * whole), and no JIT.  Undone by cg_leave_owner.
 */
void
cg_approval_planner_settings(void)
{
	static const char *const off[] = {"enable_seqscan", "enable_hashjoin", "enable_mergejoin", "jit"};
	size_t		i;

	for (i = 0; i < lengthof(off); i++)
		(void) set_config_option(off[i], "off", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
}

/*
 * A plan on crmguard's own catalogs, prepared once per backend; the caller
 * acts as the extension's owner (with the settings above) and is connected
 * to SPI.
 */
SPIPlanPtr
cg_approval_plan(int slot, const char *sql, int nargs, Oid *types)
{
	static SPIPlanPtr plans[NUM_APPROVAL_PLANS];

	if (plans[slot] == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

		if (plan == NULL)
			elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "could not keep the plan of \"%s\"", sql);
		plans[slot] = plan;
	}
	return plans[slot];
}

static void
ensure_cache_context(void)
{
	if (cache_context == NULL)
	{
		cache_context = AllocSetContextCreate(CacheMemoryContext, "crmguard approval cache",
											  ALLOCSET_SMALL_SIZES);
		cg_register_relcache_callback(cache_callback, (Datum) 0);
		RegisterXactCallback(pending_xact_callback, NULL);
	}
}

/* The current processes of every table, with the latest snapshot */
typedef struct ProcessRow
{
	Oid			relid;
	int32		position;
	int64		id;
	Jsonb	   *criteria;		/* NULL: every row */
	Datum		auto_submit;	/* text[] */
} ProcessRow;

typedef struct ProcessRows
{
	ProcessRow *rows;
	int			n;
	int			size;
} ProcessRows;

static void
collect_process(Datum *values, bool *nulls, void *arg)
{
	ProcessRows *list = (ProcessRows *) arg;
	ProcessRow *row;

	if (!DatumGetBool(values[5]))
		return;					/* an older version, or dropped */
	if (list->n == list->size)
	{
		list->size = list->size ? list->size * 2 : 16;
		list->rows = list->rows ? repalloc(list->rows, sizeof(ProcessRow) * list->size)
			: palloc(sizeof(ProcessRow) * list->size);
	}
	row = &list->rows[list->n++];
	row->relid = DatumGetObjectId(values[0]);
	row->position = DatumGetInt32(values[1]);
	row->id = DatumGetInt64(values[2]);
	row->criteria = nulls[3] ? NULL : DatumGetJsonbPCopy(values[3]);
	row->auto_submit = PointerGetDatum(DatumGetArrayTypePCopy(values[4]));
}

/* by table, then in their order on it */
static int
process_row_cmp(const void *a, const void *b)
{
	const ProcessRow *x = a;
	const ProcessRow *y = b;

	if (x->relid != y->relid)
		return x->relid < y->relid ? -1 : 1;
	return x->position < y->position ? -1 : x->position > y->position ? 1 : 0;
}

/* a pending request with a step timeout, which the worker must watch */
static bool
times_out(Datum *values, bool *nulls, void *arg)
{
	return !nulls[0] && strcmp(TextDatumGetCString(values[0]), "pending") == 0 && !nulls[1];
}

/*
 * Read without statements, straight from the catalogs: the first write of
 * a fresh connection to a table with processes pays for this load.
 */
static void
load_processes(void)
{
	static const char *const columns[6] = {"target", "position", "id", "entry_criteria",
	"auto_submit", "current"};
	static const char *const timeout_columns[2] = {"state", "step_timeout"};
	CgPrivilegedContext priv;
	HASHCTL		ctl;
	MemoryContext old;
	ProcessRows list = {NULL, 0, 0};
	Snapshot	snapshot;
	CgCatalogScan *scan;
	Oid			requests;
	bool		timeouts;
	int			i;

	ensure_cache_context();
	MemoryContextReset(cache_context);
	cache_generation++;
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(ApprovalTable);
	ctl.hcxt = cache_context;
	tables = hash_create("crmguard approval tables", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	process_rel = cg_approval_catalog("approval_process");
	signal_rel = get_relname_relid("approval_pending_signal", cg_catalog()->schema);
	requests = cg_approval_catalog("approval_request_state");
	cache_valid = true;
	loaded_in_recovery = RecoveryInProgress();

	cg_enter_owner(&priv);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	PushActiveSnapshot(snapshot);
	cg_scan_catalog(process_rel, snapshot, lengthof(columns), columns, collect_process, &list);
	if (list.n > 1)
		qsort(list.rows, list.n, sizeof(ProcessRow), process_row_cmp);
	for (i = 0; i < list.n; i++)
	{
		ProcessRow *row = &list.rows[i];
		char	   *compiled = cg_criteria_compile(row->relid, row->criteria);
		int			nauto;
		char	  **autos = text_array(row->auto_submit, &nauto);
		ApprovalTable *t;
		Process    *p;

		old = MemoryContextSwitchTo(cache_context);
		t = table_entry(row->relid);
		t->processes = t->processes ? repalloc(t->processes, sizeof(Process) * (t->nprocesses + 1))
			: palloc(sizeof(Process));
		p = &t->processes[t->nprocesses++];
		p->id = row->id;
		p->compiled = pstrdup(compiled);
		p->on_insert = contains(autos, nauto, "insert");
		p->on_update = contains(autos, nauto, "update");
		MemoryContextSwitchTo(old);
	}
	/* after a restart or a restore, the worker must watch the clocks again */
	scan = cg_catalog_scan_begin(requests, "approval_request_pending_idx", 0, snapshot,
								 lengthof(timeout_columns), timeout_columns);
	timeouts = cg_catalog_scan_find(scan, NULL, times_out, NULL);
	cg_catalog_scan_end(scan);
	if (timeouts && !RecoveryInProgress())
		(void) cg_enqueue(CG_JOB_WAKE, "", 0);
	PopActiveSnapshot();
	UnregisterSnapshot(snapshot);
	cg_leave_owner(&priv);
}

ApprovalTable *
cg_approval_table(Oid relid)
{
	bool		found;
	ApprovalTable *t;

	/* promoted: what was loaded while replaying saw no clock move */
	if (loaded_in_recovery && !RecoveryInProgress())
		cache_valid = false;
	if (!cache_valid)
		load_processes();
	t = hash_search(tables, &relid, HASH_FIND, &found);
	return t;
}

/* The table's entry for its pending rows, whether or not a process is current */
static ApprovalTable *
pending_table(Oid relid)
{
	ApprovalTable *t = cg_approval_table(relid);

	if (t == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(cache_context);

		t = table_entry(relid);
		MemoryContextSwitchTo(old);
	}
	return t;
}

/*
 * The pending requests of a table (of one row key, or all: key NULL), as
 * the latest snapshot has them: through the partial unique index of
 * pending requests, without a statement (a fresh connection's first write
 * to a table with processes reads them all).
 */
typedef struct PendingItem
{
	int64		request;
	int64		process;
	char	   *key;
} PendingItem;

typedef struct PendingList
{
	PendingItem *items;
	int			n;
	int			size;
} PendingList;

static void
collect_pending(Datum *values, bool *nulls, void *arg)
{
	PendingList *list = (PendingList *) arg;
	PendingItem *item;

	if (nulls[3] || strcmp(TextDatumGetCString(values[3]), "pending") != 0)
		return;
	if (list->n == list->size)
	{
		list->size = list->size ? list->size * 2 : 16;
		list->items = list->items ? repalloc(list->items, sizeof(PendingItem) * list->size)
			: palloc(sizeof(PendingItem) * list->size);
	}
	item = &list->items[list->n++];
	item->request = DatumGetInt64(values[0]);
	item->process = DatumGetInt64(values[1]);
	item->key = TextDatumGetCString(values[2]);
}

static PendingList
pending_requests(Oid relid, const char *key)
{
	static const char *const columns[4] = {"id", "process", "row_key", "state"};
	Oid			requests = cg_approval_catalog("approval_request_state");
	PendingList list = {NULL, 0, 0};
	ScanKeyData keys[2];

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	if (key != NULL)
		ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(key));
	cg_scan_catalog_by_key(requests, "approval_request_pending_idx", key != NULL ? 2 : 1, keys,
						   GetLatestSnapshot(), lengthof(columns), columns, collect_pending, &list);
	return list;
}

/* A pending row as the lock keeps it, in the current memory context */
static PendingRow *
pending_row(const PendingItem *item, Datum editable)
{
	PendingRow *row = palloc(sizeof(PendingRow));

	row->key = pstrdup(item->key);
	row->request = item->request;
	row->editable = text_array(editable, &row->nedit);
	return row;
}

/* Remember what a key is, as of a clock */
static void
remember(ApprovalTable *t, const char *key, bool is_int, int64 ikey, PendingRow *row, uint64 checked)
{
	MemoryContext old = MemoryContextSwitchTo(t->keys_context);

	if (is_int)
	{
		IntKeyEntry *e = hash_search(t->int_keys, &ikey, HASH_ENTER, NULL);
		uint32		bit = int_seen_bit(ikey);

		t->int_seen[bit / 64] |= UINT64CONST(1) << (bit % 64);
		e->s.row = row;
		e->s.checked = checked;
	}
	else
	{
		char		truncated[NAMEDATALEN * 2];
		TextKeyEntry *e;
		bool		found;
		ListCell   *lc;
		TextKeyState *s = NULL;

		strlcpy(truncated, key, sizeof(truncated));
		e = hash_search(t->text_keys, truncated, HASH_ENTER, &found);
		if (!found)
			e->states = NIL;
		foreach(lc, e->states)
			if (strcmp(((TextKeyState *) lfirst(lc))->key, key) == 0)
				s = lfirst(lc);
		if (s == NULL)
		{
			s = palloc(sizeof(TextKeyState));
			s->key = pstrdup(key);
			e->states = lappend(e->states, s);
		}
		s->s.row = row;
		s->s.checked = checked;
	}
	MemoryContextSwitchTo(old);
}

/* Read a table's pending keys (the partial index of pending requests) */
static void
load_pending(ApprovalTable *t)
{
	HASHCTL		ctl;
	PendingList list;
	int64	   *processes;
	Datum	   *editables;
	int			nprocesses = 0;
	int			npending = 0;
	int			i;
	MemoryContext old;

	if (t->keys_context == NULL)
		t->keys_context = AllocSetContextCreate(cache_context, "crmguard pending rows", ALLOCSET_SMALL_SIZES);
	MemoryContextReset(t->keys_context);
	ctl.keysize = NAMEDATALEN * 2;
	ctl.entrysize = sizeof(TextKeyEntry);
	ctl.hcxt = t->keys_context;
	t->text_keys = hash_create("crmguard pending keys", 64, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	ctl.keysize = sizeof(int64);
	ctl.entrysize = sizeof(IntKeyEntry);
	t->int_keys = hash_create("crmguard pending integer keys", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	t->int_seen = MemoryContextAllocZero(t->keys_context, INT_SEEN_BITS / 8);
	t->rechecked = 0;
	/* read before the table: a change committed meanwhile moves a clock past it */
	t->loaded_at = pg_atomic_read_u64(&clocks->clock);
	pg_memory_barrier();

	list = pending_requests(t->relid, NULL);
	/* a table's requests are of a few process versions: each is read once */
	processes = palloc(sizeof(int64) * Max(list.n, 1));
	editables = palloc(sizeof(Datum) * Max(list.n, 1));
	for (i = 0; i < list.n; i++)
	{
		PendingItem *item = &list.items[i];
		int64		ikey;
		bool		is_int = key_as_int(item->key, &ikey);
		Datum		editable;
		PendingRow *row;
		int			p;

		for (p = 0; p < nprocesses && processes[p] != item->process; p++)
			;
		if (p == nprocesses)
		{
			/* a request's process is kept by its foreign key; without one, as the join had it, none */
			if (!cg_approval_editable_columns(item->process, &editables[p]))
				continue;
			processes[nprocesses++] = item->process;
		}
		editable = editables[p];
		old = MemoryContextSwitchTo(t->keys_context);
		row = pending_row(item, editable);
		MemoryContextSwitchTo(old);
		remember(t, item->key, is_int, ikey, row, t->loaded_at);
		npending++;
	}
	t->npending = npending;
	t->loaded = true;
}

/* The pending request of one key, from the request table (latest snapshot) */
static PendingRow *
read_key(ApprovalTable *t, const char *key)
{
	PendingList list = pending_requests(t->relid, key);
	Datum		editable;
	MemoryContext old;
	PendingRow *row;

	if (list.n == 0 || !cg_approval_editable_columns(list.items[0].process, &editable))
		return NULL;
	old = MemoryContextSwitchTo(t->keys_context);
	row = pending_row(&list.items[0], editable);
	MemoryContextSwitchTo(old);
	return row;
}

/*
 * The pending request of the row with this key, if any: from what this
 * backend knows, unless the key's bucket moved since (or this transaction
 * changed requests there), then from the request table.
 */
static PendingRow *
find_pending(ApprovalTable *t, Oid keytype, Datum value)
{
	bool		is_int = keytype == INT8OID || keytype == INT4OID || keytype == INT2OID;
	int64		ikey = 0;
	char	   *key = NULL;
	uint32		bucket = 0;
	bool		changed_here;
	bool		touched;
	uint64		now;
	KeyState   *known = NULL;
	PendingRow *row;

	/* asking key by key costs more than reading them all again: read them all */
	if (!t->loaded || t->rechecked > MIN_RECHECKED + t->npending)
		load_pending(t);
	if (is_int)
		ikey = keytype == INT8OID ? DatumGetInt64(value) :
			keytype == INT4OID ? (int64) DatumGetInt32(value) : (int64) DatumGetInt16(value);
	else
	{
		key = cg_row_key_output(keytype, value);
		/*
		 * load_pending keeps a key by what its text reads as, not by the
		 * column's type: a text, numeric or domain key that reads as an
		 * integer ("42") is among the integer keys.
		 */
		is_int = key_as_int(key, &ikey);
	}
	if (is_int)
	{
		uint32		bit = int_seen_bit(ikey);

		if (t->int_seen[bit / 64] & (UINT64CONST(1) << (bit % 64)))
		{
			IntKeyEntry *e = hash_search(t->int_keys, &ikey, HASH_FIND, NULL);

			if (e != NULL)
				known = &e->s;
		}
	}
	else
	{
		char		truncated[NAMEDATALEN * 2];
		TextKeyEntry *e;
		ListCell   *lc;

		strlcpy(truncated, key, sizeof(truncated));
		e = hash_search(t->text_keys, truncated, HASH_FIND, NULL);
		if (e != NULL)
			foreach(lc, e->states)
				if (strcmp(((TextKeyState *) lfirst(lc))->key, key) == 0)
					known = &((TextKeyState *) lfirst(lc))->s;
	}
	/* a key's bucket matters when this transaction changed keys, or a clock moved */
	changed_here = touched_all || ntouched > 0;
	if (changed_here)
		bucket = is_int ? int_bucket(t->relid, ikey) : text_bucket(t->relid, key);
	touched = changed_here && touched_here(bucket);
	if (!touched)
	{
		/*
		 * No bucket's clock is ahead of the common clock: while that has not
		 * moved, no key's bucket has, and the random read of the bucket's
		 * line (a cache miss per row of a large UPDATE) can wait.
		 */
		now = pg_atomic_read_u64(&clocks->clock);
		if (known != NULL && now <= known->checked)
			return known->row;
		if (known == NULL && now <= t->loaded_at)
			return NULL;
	}
	if (!changed_here)
		bucket = is_int ? int_bucket(t->relid, ikey) : text_bucket(t->relid, key);
	now = pg_atomic_read_u64(&clocks->bucket[bucket]);
	if (!touched)
	{
		if (known != NULL && now <= known->checked)
			return known->row;
		if (known == NULL && now <= t->loaded_at)
			return NULL;
	}
	/* read before the request table, like the table's load */
	pg_memory_barrier();
	if (key == NULL)
		key = psprintf(INT64_FORMAT, ikey);
	row = read_key(t, key);
	/* what this transaction changed is not known to others yet: ask again next time */
	if (!touched)
	{
		remember(t, key, is_int, ikey, row, now);
		t->rechecked++;
	}
	return row;
}

/* The oldest pending request on the table, 0 for none, from the request table */
static int64
any_pending(Oid relid)
{
	PendingList list = pending_requests(relid, NULL);
	int64		request = 0;
	int			i;

	for (i = 0; i < list.n; i++)
		if (request == 0 || list.items[i].request < request)
			request = list.items[i].request;
	return request;
}

/* guard.c: the oldest pending request on a table, 0 for none (latest snapshot) */
int64
cg_approval_any_pending(Oid relid)
{
	return any_pending(relid);
}

/* The text of a row's key column (the single-column primary key) */
char *
cg_approval_key_text(Relation rel, HeapTuple tuple, AttrNumber keyatt)
{
	bool		isnull;
	Datum		value = heap_getattr(tuple, keyatt, RelationGetDescr(rel), &isnull);

	if (isnull)
		return NULL;
	return cg_row_key_output(TupleDescAttr(RelationGetDescr(rel), keyatt - 1)->atttypid, value);
}

/* The primary key's attribute number, per table, from the index cache */
AttrNumber
cg_approval_key_attno(Relation rel)
{
	Bitmapset  *pk = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_PRIMARY_KEY);
	int			member = bms_next_member(pk, -1);

	if (member < 0 || bms_next_member(pk, member) >= 0)
		return InvalidAttrNumber;
	return member + FirstLowInvalidHeapAttributeNumber;
}

/* ---------------------------------------------------------------------------
 * The lock: no change to a pending row but its editable columns (CG010)
 *
 * The lock is an AFTER row trigger whose WHEN clause asks
 * approval_row_pending(table, OLD.key): a row with no request costs one
 * function call, a clock read and a hash probe, and no trigger event (a
 * BEFORE trigger would lock every row it is called for).  The error at the
 * end of the statement undoes the whole statement, as a BEFORE trigger's would.
 * ---------------------------------------------------------------------------
 */

typedef struct PendingCheck
{
	Oid			keytype;
	Oid			relid;
	Oid			userid;
	bool		may_know;		/* the caller may change the table */
	ApprovalTable *table;		/* the cache's entry, while the cache is this one */
	uint64		generation;
} PendingCheck;

/*
 * Tables that a statement running now (at any nesting level) changes: the
 * lock's probe answers for them whatever path reached the table (a view, a
 * rule, a SECURITY DEFINER function), since the role invoking the trigger is
 * then not the one whose rights on the table were checked.
 */
typedef struct ChangingTable
{
	Oid			relid;
	QueryDesc  *query;			/* the statement changing it */
	int			nestlevel;		/* subtransaction that started the statement */
} ChangingTable;

static List *changing_tables = NIL;		/* in TopMemoryContext */
static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;

/*
 * The tables a ModifyTable node changes in a way that fires the lock:
 * UPDATE, DELETE, MERGE, and INSERT ... ON CONFLICT DO UPDATE.  A plain
 * INSERT fires no lock, and a role that may only insert must not learn
 * which rows are pending by asking approval_row_pending inside its INSERT.
 */
static void
track_changing_plan(QueryDesc *queryDesc, Plan *plan)
{
	ModifyTable *mt;
	MemoryContext old;
	ListCell   *lc;

	if (plan == NULL || !IsA(plan, ModifyTable))
		return;
	mt = (ModifyTable *) plan;
	if (mt->operation == CMD_INSERT && mt->onConflictAction != ONCONFLICT_UPDATE)
		return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	foreach(lc, mt->resultRelations)
	{
		ChangingTable *c = palloc(sizeof(ChangingTable));

		c->relid = rt_fetch(lfirst_int(lc), queryDesc->plannedstmt->rtable)->relid;
		c->query = queryDesc;
		c->nestlevel = GetCurrentTransactionNestLevel();
		changing_tables = lcons(c, changing_tables);
	}
	MemoryContextSwitchTo(old);
}

static void
track_changing_start(QueryDesc *queryDesc, int eflags)
{
	PlannedStmt *stmt = queryDesc->plannedstmt;

	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);

	if (stmt->resultRelations != NIL && !(eflags & EXEC_FLAG_EXPLAIN_ONLY))
	{
		ListCell   *lc;

		/* each ModifyTable tops its plan: the statement's, or a WITH query's */
		track_changing_plan(queryDesc, stmt->planTree);
		foreach(lc, stmt->subplans)
			track_changing_plan(queryDesc, (Plan *) lfirst(lc));
	}
}

static void
track_changing_end(QueryDesc *queryDesc)
{
	ListCell   *lc;

	foreach(lc, changing_tables)
	{
		ChangingTable *c = (ChangingTable *) lfirst(lc);

		if (c->query == queryDesc)
		{
			changing_tables = foreach_delete_current(changing_tables, lc);
			pfree(c);
		}
	}
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

/* statements that failed never reach ExecutorEnd: forget what their level pushed */
static void
track_changing_abort(int nestlevel)
{
	ListCell   *lc;

	foreach(lc, changing_tables)
	{
		ChangingTable *c = (ChangingTable *) lfirst(lc);

		if (c->nestlevel >= nestlevel)
		{
			changing_tables = foreach_delete_current(changing_tables, lc);
			pfree(c);
		}
	}
}

static void
track_changing_xact(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE)
		track_changing_abort(0);
}

static void
track_changing_subxact(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
		track_changing_abort(GetCurrentTransactionNestLevel());
}

static bool
table_is_changing(Oid relid)
{
	ListCell   *lc;

	foreach(lc, changing_tables)
		if (((ChangingTable *) lfirst(lc))->relid == relid)
			return true;
	return false;
}

/* From _PG_init: watch which tables the running statements change */
void
cg_approval_init(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = track_changing_start;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = track_changing_end;
	RegisterXactCallback(track_changing_xact, NULL);
	RegisterSubXactCallback(track_changing_subxact, NULL);
}

/*
 * WHEN clause of the lock: has the row with this key a pending request?
 * Answered to a role that may update (any column) or delete rows of the
 * table, and inside any statement now changing the table, however it got
 * there (a view, a rule, a function): anyone else learns nothing.
 */
PG_FUNCTION_INFO_V1(crmguard_approval_row_pending);
Datum
crmguard_approval_row_pending(PG_FUNCTION_ARGS)
{
	PendingCheck *check = (PendingCheck *) fcinfo->flinfo->fn_extra;
	Oid			relid;
	ApprovalTable *t;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	relid = PG_GETARG_OID(0);
	if (check == NULL || check->relid != relid || check->userid != GetUserId())
	{
		check = MemoryContextAlloc(fcinfo->flinfo->fn_mcxt, sizeof(PendingCheck));
		check->keytype = get_fn_expr_argtype(fcinfo->flinfo, 1);
		check->relid = relid;
		check->userid = GetUserId();
		/* UPDATE of a single column is enough to fire the lock */
		check->may_know = pg_class_aclcheck(relid, check->userid, ACL_UPDATE | ACL_DELETE) == ACLCHECK_OK ||
			pg_attribute_aclcheck_all(relid, check->userid, ACL_UPDATE, ACLMASK_ANY) == ACLCHECK_OK;
		check->table = NULL;
		fcinfo->flinfo->fn_extra = check;
	}
	if (!check->may_know && !table_is_changing(relid))
		PG_RETURN_BOOL(false);
	/* the row a "set" action is changing: the lock lets it pass, no need to look */
	if (bypass_relid == relid && bypass_key != NULL &&
		strcmp(cg_row_key_output(check->keytype, PG_GETARG_DATUM(1)), bypass_key) == 0)
		PG_RETURN_BOOL(false);
	/*
	 * A request committed while this statement waited for the row moved its
	 * key's clock: find_pending reads that key again.  The table's entry is
	 * kept per call site while the cache stays the same.
	 */
	if (check->table == NULL || !cache_valid || check->generation != cache_generation ||
		(loaded_in_recovery && !RecoveryInProgress()))
	{
		check->table = pending_table(relid);
		check->generation = cache_generation;
	}
	t = check->table;
	PG_RETURN_BOOL(find_pending(t, check->keytype, PG_GETARG_DATUM(1)) != NULL);
}

PG_FUNCTION_INFO_V1(crmguard_approval_lock);
Datum
crmguard_approval_lock(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	Oid			relid;
	ApprovalTable *t;
	PendingRow *row;
	TupleDesc	desc;
	AttrNumber	keyatt;
	Datum		keyvalue;
	bool		isnull;
	int			i;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_INSERT(td->tg_event))
		elog(ERROR, "crmguard_approval_lock: must be fired AFTER UPDATE OR DELETE FOR EACH ROW");
	cg_require_preload();
	cg_require_attested();
	rel = td->tg_relation;
	relid = RelationGetRelid(rel);
	desc = RelationGetDescr(rel);
	AcceptInvalidationMessages();
	t = pending_table(relid);
	keyatt = cg_approval_key_attno(rel);
	/* requests name their rows by the primary key: without one, fail closed */
	if (keyatt == InvalidAttrNumber)
	{
		if (!any_pending(relid))
			return PointerGetDatum(NULL);
		ereport(ERROR,
				(errcode(ERRCODE_CG_ROW_LOCKED),
				 errmsg("table %s has pending approval requests and no primary key to find their rows",
						RelationGetRelationName(rel)),
				 errhint("Restore the table's primary key; until then no row of it can change.")));
	}
	keyvalue = heap_getattr(td->tg_trigtuple, keyatt, desc, &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	row = find_pending(t, TupleDescAttr(desc, keyatt - 1)->atttypid, keyvalue);
	if (row == NULL)
		return PointerGetDatum(NULL);
	if (bypass_relid == relid && bypass_key != NULL && strcmp(bypass_key, row->key) == 0)
		return PointerGetDatum(NULL);

	if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_CG_ROW_LOCKED),
				 errmsg("row %s of table %s is locked by pending approval request " INT64_FORMAT,
						row->key, RelationGetRelationName(rel), row->request),
				 errhint("The submitter can recall the request; after the decision the row can be deleted.")));
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);
		bool		oldnull;
		bool		newnull;
		Datum		oldv;
		Datum		newv;

		if (a->attisdropped || contains(row->editable, row->nedit, NameStr(a->attname)))
			continue;
		oldv = heap_getattr(td->tg_trigtuple, i + 1, desc, &oldnull);
		newv = heap_getattr(td->tg_newtuple, i + 1, desc, &newnull);
		if (oldnull == newnull && (oldnull || datum_image_eq(oldv, newv, a->attbyval, a->attlen)))
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_CG_ROW_LOCKED),
				 errmsg("row %s of table %s is locked by pending approval request " INT64_FORMAT,
						row->key, RelationGetRelationName(rel), row->request),
				 errdetail("Column \"%s\" cannot change while the request is pending.", NameStr(a->attname)),
				 row->nedit > 0 ?
				 errhint("Only the editable columns of the process can change; the submitter can recall the request.") :
				 errhint("The submitter can recall the request.")));
	}
	return PointerGetDatum(NULL);
}

/* TRUNCATE would empty pending rows with the rest: refused while any is pending */
PG_FUNCTION_INFO_V1(crmguard_approval_truncate);
Datum
crmguard_approval_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	int64		request;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		elog(ERROR, "crmguard_approval_truncate: must be fired BEFORE TRUNCATE");
	cg_require_preload();
	request = any_pending(RelationGetRelid(td->tg_relation));
	if (request != 0)
		ereport(ERROR,
				(errcode(ERRCODE_CG_ROW_LOCKED),
				 errmsg("table %s has rows locked by pending approval requests",
						RelationGetRelationName(td->tg_relation)),
				 errdetail("Request " INT64_FORMAT " is one of them.", request)));
	return PointerGetDatum(NULL);
}

/* A column of a request row, by name */
static Datum
request_column(TupleDesc desc, HeapTuple tup, const char *name, bool *isnull)
{
	return heap_getattr(tup, SPI_fnumber(desc, name), desc, isnull);
}

static bool
request_pending(TupleDesc desc, HeapTuple tup)
{
	bool		isnull;
	Datum		state;

	if (tup == NULL)
		return false;
	state = request_column(desc, tup, "state", &isnull);
	return !isnull && strcmp(TextDatumGetCString(state), "pending") == 0;
}

/* Do two versions of a request row differ in a column? */
static bool
request_differs(TupleDesc desc, HeapTuple a, HeapTuple b, const char *name)
{
	int			attno = SPI_fnumber(desc, name);
	Form_pg_attribute att = TupleDescAttr(desc, attno - 1);
	bool		anull;
	bool		bnull;
	Datum		av = heap_getattr(a, attno, desc, &anull);
	Datum		bv = heap_getattr(b, attno, desc, &bnull);

	if (anull || bnull)
		return anull != bnull;
	return !datum_image_eq(av, bv, att->attbyval, att->attlen);
}

/*
 * crmguard.approval_waiting: one row per pending request and approver of
 * its current step who has not approved it yet (my_approvals() reads it
 * by approver).  Rebuilt for a request whose step, approvers or state change.
 */
static void
rebuild_waiting(TupleDesc desc, HeapTuple old, HeapTuple new)
{
	bool		old_pending = request_pending(desc, old);
	bool		new_pending = request_pending(desc, new);
	/* the request's columns its waits are made from */
	static const char *const carried[8] = {"id", "approvers", "current_step", "process", "target",
	"row_key", "submitted_by", "submitted_at"};
	bool		changed = old == NULL || new == NULL;
	CgPrivilegedContext priv;
	Oid			waiting;
	bool		isnull;
	int			i;

	for (i = 0; !changed && i < (int) lengthof(carried); i++)
		changed = request_differs(desc, old, new, carried[i]);
	if (!(old_pending && (changed || !new_pending)) && !(new_pending && (changed || !old_pending)))
		return;
	waiting = cg_approval_catalog("approval_waiting");
	/* written without a statement, as crmguard's other derived rows */
	cg_enter_owner(&priv);
	if (old_pending && (changed || !new_pending))
	{
		ScanKeyData key;

		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, request_column(desc, old, "id", &isnull));
		(void) cg_delete_catalog_rows(waiting, "approval_waiting_request_idx", 1, &key, 0, NULL, NULL, NULL);
	}
	if (new_pending && (changed || !old_pending))
	{
		static const char *const columns[8] = {"approver", "request", "process", "target",
		"row_key", "current_step", "submitted_by", "submitted_at"};
		static const Oid types[8] = {INT8OID, INT8OID, INT8OID, REGCLASSOID, TEXTOID, INT4OID,
		INT8OID, TIMESTAMPTZOID};
		/* the carried columns each wait column takes, in columns' order (approver aside) */
		static const int from[8] = {-1, 0, 3, 4, 5, 2, 6, 7};
		Datum		carried_values[lengthof(carried)];
		bool		carried_nulls[lengthof(carried)];
		int64	   *approvers = NULL;
		int			napprovers = 0;
		int64	   *approved;
		int			napproved;
		Datum	   *values;
		bool	   *nulls;
		int			nrows = 0;

		for (i = 0; i < (int) lengthof(carried); i++)
			carried_values[i] = request_column(desc, new, carried[i], &carried_nulls[i]);
		if (!carried_nulls[1])
			approvers = cg_approval_ids(DatumGetArrayTypeP(carried_values[1]), &napprovers);
		approved = cg_approval_approved_by(DatumGetInt64(carried_values[0]),
										   carried_nulls[2] ? 0 : DatumGetInt32(carried_values[2]),
										   &napproved);
		values = palloc(sizeof(Datum) * lengthof(columns) * Max(napprovers, 1));
		nulls = palloc(sizeof(bool) * lengthof(columns) * Max(napprovers, 1));
		for (i = 0; i < napprovers; i++)
		{
			int			c;
			int			k;

			for (k = 0; k < napproved && approved[k] != approvers[i]; k++)
				;
			if (k < napproved)
				continue;		/* approved this step already: waited for no more */
			for (k = 0; k < i && approvers[k] != approvers[i]; k++)
				;
			if (k < i)
				continue;		/* named twice: one wait */
			for (c = 0; c < (int) lengthof(columns); c++)
			{
				values[nrows * lengthof(columns) + c] = c == 0 ? Int64GetDatum(approvers[i])
					: carried_values[from[c]];
				nulls[nrows * lengthof(columns) + c] = c == 0 ? false : carried_nulls[from[c]];
			}
			nrows++;
		}
		if (nrows > 0)
			cg_insert_catalog_rows(waiting, lengthof(columns), columns, types, nrows, values, nulls);
	}
	cg_leave_owner(&priv);
}

/*
 * Triggers on the request table.  A row trigger keeps the waiting list,
 * and notes the keys whose requests start or end, so that this
 * transaction's commit moves their clocks; TRUNCATE (a restore, a DBA)
 * makes every backend read all again.
 */
PG_FUNCTION_INFO_V1(crmguard_approval_requests_changed);
Datum
crmguard_approval_requests_changed(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	old;
	HeapTuple	new;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "crmguard_approval_requests_changed: not called as a trigger");
	cg_require_preload();
	if (!TRIGGER_FIRED_FOR_ROW(td->tg_event))
	{
		Oid			signal = get_relname_relid("approval_pending_signal", cg_catalog()->schema);
		CgPrivilegedContext priv;

		if (OidIsValid(signal))
			CacheInvalidateRelcacheByRelid(signal);
		touched_all = true;
		/* no request waits any more: the waiting list carries what it showed of them */
		cg_enter_owner(&priv);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (cg_execute_kept("DELETE FROM crmguard.approval_waiting", 0, NULL, NULL, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not update crmguard.approval_waiting");
		SPI_finish();
		cg_leave_owner(&priv);
		return PointerGetDatum(NULL);
	}
	old = TRIGGER_FIRED_BY_INSERT(td->tg_event) ? NULL : td->tg_trigtuple;
	new = TRIGGER_FIRED_BY_INSERT(td->tg_event) ? td->tg_trigtuple :
		TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : NULL;
	cg_approval_request_written(td->tg_relation, old, new);
	return PointerGetDatum(NULL);
}

/*
 * The row trigger's work, for a request row inserted (old NULL), updated or
 * deleted (new NULL): by the trigger, or by crmguard's own writes, which
 * are made without a statement (cg_update_catalog_row runs it).  The
 * waiting list is kept, and the keys whose requests start, end or move
 * have their clocks moved at commit.
 */
void
cg_approval_request_written(Relation rel, HeapTuple old, HeapTuple new)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	ensure_cache_context();		/* registers the commit callback */
	rebuild_waiting(desc, old, new);
	if (old != NULL && new != NULL &&
		!request_differs(desc, old, new, "state") && !request_differs(desc, old, new, "target") &&
		!request_differs(desc, old, new, "row_key") && !request_differs(desc, old, new, "process"))
		return;
	for (i = 0; i < 2; i++)
	{
		HeapTuple	tup = i == 0 ? old : new;
		bool		isnull;
		Datum		target;
		Datum		key;

		if (tup == NULL)
			continue;
		target = request_column(desc, tup, "target", &isnull);
		if (isnull)
			continue;
		key = request_column(desc, tup, "row_key", &isnull);
		if (!isnull)
			touch(DatumGetObjectId(target), TextDatumGetCString(key));
	}
}

/* a wait for the step the approval was of */
static bool
wait_of_step(Datum *values, bool *nulls, void *arg)
{
	return !nulls[0] && DatumGetInt32(values[0]) == *(int32 *) arg;
}

/*
 * Approvals a statement adds to the history (a restore's COPY, which loads
 * the requests first and their history after; a DBA's INSERT): who gave one
 * no longer waits for the step it approved.  crmguard's own appends are
 * written without a statement and keep the waiting list themselves; this
 * trigger is the one cg_insert_catalog_rows lets stay on the history.
 */
PG_FUNCTION_INFO_V1(crmguard_approval_history_added);
Datum
crmguard_approval_history_added(PG_FUNCTION_ARGS)
{
	static const char *const step_column[1] = {"current_step"};
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	TupleTableSlot *slot;
	CgPrivilegedContext priv;
	Oid			waiting;
	AttrNumber	request_att;
	AttrNumber	step_att;
	AttrNumber	event_att;
	AttrNumber	principal_att;
	AttrNumber	behalf_att;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(td->tg_event) || !TRIGGER_FIRED_FOR_STATEMENT(td->tg_event) ||
		td->tg_newtable == NULL)
		elog(ERROR, "crmguard_approval_history_added: must be fired AFTER INSERT FOR EACH STATEMENT with a new table");
	cg_require_preload();
	waiting = cg_approval_catalog("approval_waiting");
	desc = RelationGetDescr(td->tg_relation);
	request_att = SPI_fnumber(desc, "request");
	step_att = SPI_fnumber(desc, "step");
	event_att = SPI_fnumber(desc, "event");
	principal_att = SPI_fnumber(desc, "principal");
	behalf_att = SPI_fnumber(desc, "on_behalf_of");
	if (request_att <= 0 || step_att <= 0 || event_att <= 0 || principal_att <= 0 || behalf_att <= 0)
		elog(ERROR, "crmguard.approval_history is missing a column");
	slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	cg_enter_owner(&priv);
	tuplestore_rescan(td->tg_newtable);
	while (tuplestore_gettupleslot(td->tg_newtable, true, false, slot))
	{
		bool		isnull;
		bool		behalf_null;
		Datum		event = slot_getattr(slot, event_att, &isnull);
		Datum		request;
		Datum		approver;
		int32		step;
		bool		request_null;
		bool		step_null;
		ScanKeyData keys[2];

		if (isnull || strcmp(TextDatumGetCString(event), "approved") != 0)
			continue;
		request = slot_getattr(slot, request_att, &request_null);
		step = DatumGetInt32(slot_getattr(slot, step_att, &step_null));
		approver = slot_getattr(slot, behalf_att, &behalf_null);
		if (behalf_null)
			approver = slot_getattr(slot, principal_att, &isnull);
		if (request_null || step_null || (behalf_null && isnull))
			continue;
		ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT8EQ, approver);
		ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_INT8EQ, request);
		(void) cg_delete_catalog_rows(waiting, "approval_waiting_approver_idx", 2, keys,
									  1, step_column, wait_of_step, &step);
	}
	cg_leave_owner(&priv);
	ExecDropSingleTupleTableSlot(slot);
	return PointerGetDatum(NULL);
}

