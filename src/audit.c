/*
 * audit.c
 *		The one audit writer: crmguard.audit is append-only and each row is
 *		chained to the one before by a BLAKE2b hash keyed with the server key.
 *
 * Accepted actions wait in backend memory and are chained just before their
 * transaction commits, under the chain lock.  The lock is held only while the
 * entries are linked and inserted, not through the commit's flush: the next
 * writer links to them while their transaction is still committing (a segment
 * "in flight", known from shared memory), so audited commits flush together
 * as PostgreSQL's group commit does, instead of one after another.  A
 * transaction can still fail after its entries were chained (a serialization
 * failure at commit, a crash before its commit record): the next writer names
 * every segment it chained over that had not committed (in_flight: its xid
 * and ids), and verify_audit accepts a missing row only when a later row
 * names it so and that transaction did not commit.  The chain lock is no lock
 * of the table: nothing a user can lock on crmguard's objects (ANALYZE, LOCK
 * TABLE, SELECT ... FOR SHARE) makes a commit wait.
 * Refusals, whose transaction is about to roll back, go through the
 * worker's queue and are written in a transaction of their own: each
 * backend has slots of its own there, and a flood beyond them is written as
 * one summary record per kind of refusal, so no one's flood drops another's.
 */
#include "postgres.h"

#include <sodium.h>

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/transam.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "crmguard.h"

#define AUDIT_COLUMNS "id, at, principal, device, action, target, row_key, detail, prev_hash, hash, in_flight, in_flight_cluster"
#define AUDIT_NCOLUMNS 12
static const char *const audit_columns[AUDIT_NCOLUMNS] = {"id", "at", "principal", "device", "action",
	"target", "row_key", "detail", "prev_hash", "hash", "in_flight", "in_flight_cluster"};
static const Oid audit_types[AUDIT_NCOLUMNS] = {INT8OID, TIMESTAMPTZOID, INT8OID, INT8OID, TEXTOID,
	TEXTOID, TEXTOID, JSONBOID, BYTEAOID, BYTEAOID, INT8ARRAYOID, INT8OID};

/*
 * The chain lock of this database's audit log: an advisory-style lock in a
 * key space no SQL function reaches (pg_advisory_lock uses field4 1 and 2),
 * so no session can take it, hold it open, or queue a conflicting request
 * ahead of a writer.  It is a heavyweight lock: released at the end of the
 * transaction, after the commit is visible, and seen by the deadlock check.
 */
#define AUDIT_CHAIN_LOCK_KEY	0x63726d67	/* "crmg" */
#define AUDIT_CHAIN_LOCK_CLASS	0x6367		/* "cg" */

static void
lock_audit_chain(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, cg_catalog()->audit_rel,
						 AUDIT_CHAIN_LOCK_KEY, AUDIT_CHAIN_LOCK_CLASS);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

static void
unlock_audit_chain(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, cg_catalog()->audit_rel,
						 AUDIT_CHAIN_LOCK_KEY, AUDIT_CHAIN_LOCK_CLASS);
	(void) LockRelease(&tag, ExclusiveLock, false);
}

/*
 * Segments in flight: the entries one transaction chained, from the chain
 * lock's release until a later writer learns how that transaction ended.
 * Per database, in shared memory; a database's slot is free while nothing of
 * its chain is in flight.  With no room (many databases writing at once, or
 * more segments in flight than CHAIN_SEGMENTS) a writer keeps the chain lock
 * to its commit, as a writer inside a subtransaction always does: no one
 * chains over it then.
 */
#define CHAIN_DATABASES 64
#define CHAIN_SEGMENTS 32

typedef struct ChainSegment
{
	FullTransactionId fxid;
	FullTransactionId claimed_by;	/* rolled back: the last writer to name it so */
	int64		first_id;
	int64		last_id;
	unsigned char last_hash[CG_HASH_BYTES];
} ChainSegment;

typedef struct ChainDatabase
{
	Oid			dboid;			/* InvalidOid: free */
	Oid			audit_rel;		/* the log they belong to (the extension may be made again) */
	int			nsegments;
	ChainSegment segments[CHAIN_SEGMENTS];
} ChainDatabase;

typedef struct ChainShared
{
	LWLock	   *lock;
	ChainDatabase databases[CHAIN_DATABASES];
} ChainShared;

static ChainShared *chain_shared = NULL;

void
cg_audit_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(ChainShared)));
	RequestNamedLWLockTranche("crmguard audit chain", 1);
}

void
cg_audit_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	chain_shared = ShmemInitStruct("crmguard audit chain", sizeof(ChainShared), &found);
	if (!found)
	{
		memset(chain_shared, 0, sizeof(ChainShared));
		chain_shared->lock = &(GetNamedLWLockTranche("crmguard audit chain"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * How a tracked transaction ended, as far as the commit log still tells.  A
 * segment stays in shared memory until the next writer of its database: in
 * a database audited rarely, that may be after VACUUM truncated the commit
 * log past its xid, whose status can no longer be read (asked anyway,
 * every audited commit of that database would fail until a restart).  Such
 * a transaction is long over, its end untold: XACT_FORGOTTEN.
 */
typedef enum XactEnd
{
	XACT_RUNNING,
	XACT_COMMITTED,
	XACT_ABORTED,
	XACT_FORGOTTEN
} XactEnd;

/* Is this xid of the last 2^31, where its 32-bit form names it alone? */
static bool
xid_in_reach(uint64 fxid)
{
	uint64		next = U64FromFullTransactionId(ReadNextFullTransactionId());

	return fxid != 0 && fxid < next && next - fxid < (uint64) 1 << 31;
}

static XactEnd
xact_end(FullTransactionId fxid)
{
	TransactionId xid = XidFromFullTransactionId(fxid);
	XactEnd		end;

	if (!FullTransactionIdIsValid(fxid) || !xid_in_reach(U64FromFullTransactionId(fxid)))
		return XACT_FORGOTTEN;
	/* the commit log is not truncated under this lock (as pg_xact_status) */
	LWLockAcquire(XactTruncationLock, LW_SHARED);
#if PG_VERSION_NUM >= 170000
	if (TransactionIdPrecedes(xid, TransamVariables->oldestClogXid))
#else
	if (TransactionIdPrecedes(xid, ShmemVariableCache->oldestClogXid))
#endif
		end = XACT_FORGOTTEN;
	else if (TransactionIdIsInProgress(xid))
		end = XACT_RUNNING;
	else if (TransactionIdDidCommit(xid))
		end = XACT_COMMITTED;
	else
		end = XACT_ABORTED;
	LWLockRelease(XactTruncationLock);
	return end;
}

/* This database's slot, taken if asked and one is free; caller holds the lock */
static ChainDatabase *
chain_database(bool take)
{
	ChainDatabase *free_slot = NULL;
	int			i;

	for (i = 0; i < CHAIN_DATABASES; i++)
	{
		ChainDatabase *d = &chain_shared->databases[i];

		if (d->dboid == MyDatabaseId)
		{
			/* segments of a dropped log: ids of this one start afresh */
			if (d->audit_rel != cg_catalog()->audit_rel)
			{
				d->audit_rel = cg_catalog()->audit_rel;
				d->nsegments = 0;
			}
			return d;
		}
		if (free_slot == NULL && (d->dboid == InvalidOid || d->nsegments == 0))
			free_slot = d;
	}
	/*
	 * A database's last segments stay until its next writer: with no free
	 * slot, take one whose segments all committed (their rows are in that
	 * log's head) or are forgotten.  Otherwise a cluster's first
	 * CHAIN_DATABASES audited databases kept every slot for good, and every
	 * other database's audited commits flushed one after another.
	 */
	for (i = 0; take && free_slot == NULL && i < CHAIN_DATABASES; i++)
	{
		ChainDatabase *d = &chain_shared->databases[i];
		int			j;

		for (j = 0; j < d->nsegments; j++)
		{
			XactEnd		end = xact_end(d->segments[j].fxid);

			if (end != XACT_COMMITTED && end != XACT_FORGOTTEN)
				break;
		}
		if (j == d->nsegments)
			free_slot = d;
	}
	if (take && free_slot != NULL)
	{
		free_slot->dboid = MyDatabaseId;
		free_slot->audit_rel = cg_catalog()->audit_rel;
		free_slot->nsegments = 0;
		return free_slot;
	}
	return NULL;
}

/*
 * What a writer chains over, read under the chain lock: the segments of other
 * transactions still in progress (the newest of them may be the link), and
 * those that rolled back.  Both are named in the new entries (claims: xid,
 * first id, last id, rolled back 0/1).  A committed segment is forgotten, its
 * rows visible now; a rolled-back one once a committed writer has named it
 * so (until then every writer names it: the one that did may roll back too).
 * A segment of this transaction's own is visible to it like a committed one.
 */
typedef struct ChainClaims
{
	int			n;
	int64		values[(CHAIN_SEGMENTS + 1) * 4];	/* and a seal */
	int64		link_id;		/* the newest segment in progress: 0 if none */
	unsigned char link_hash[CG_HASH_BYTES];
	int64		max_id;			/* the highest id handed out so far */
} ChainClaims;

static void
take_claims(ChainClaims *claims)
{
	FullTransactionId mine = GetTopFullTransactionId();
	ChainDatabase *d;
	int			i;
	int			kept = 0;

	memset(claims, 0, sizeof(ChainClaims));
	if (chain_shared == NULL)
		return;
	LWLockAcquire(chain_shared->lock, LW_EXCLUSIVE);
	d = chain_database(false);
	for (i = 0; d != NULL && i < d->nsegments; i++)
	{
		ChainSegment *seg = &d->segments[i];
		XactEnd		end;
		bool		in_progress;

		claims->max_id = Max(claims->max_id, seg->last_id);
		if (FullTransactionIdEquals(seg->fxid, mine))
		{
			d->segments[kept++] = *seg;
			continue;
		}
		end = xact_end(seg->fxid);

		/*
		 * Committed, its rows are in the head read next.  Forgotten by the
		 * commit log: never named rolled back on a guess (a committed
		 * segment's rows would then go unmissed), nor in progress; what
		 * named it in flight is for verify_audit and the seals it left.
		 */
		if (end == XACT_COMMITTED || end == XACT_FORGOTTEN)
			continue;
		in_progress = end == XACT_RUNNING;
		if (!in_progress && xact_end(seg->claimed_by) == XACT_COMMITTED)
			continue;
		claims->values[claims->n * 4] = (int64) U64FromFullTransactionId(seg->fxid);
		claims->values[claims->n * 4 + 1] = seg->first_id;
		claims->values[claims->n * 4 + 2] = seg->last_id;
		claims->values[claims->n * 4 + 3] = in_progress ? 0 : 1;
		claims->n++;
		if (in_progress && seg->last_id > claims->link_id)
		{
			claims->link_id = seg->last_id;
			memcpy(claims->link_hash, seg->last_hash, CG_HASH_BYTES);
		}
		if (!in_progress)
			seg->claimed_by = mine;
		d->segments[kept++] = *seg;
	}
	if (d != NULL)
		d->nsegments = kept;
	LWLockRelease(chain_shared->lock);
}

/* Is this segment still known in flight (its next writer will name how it ended)? */
static bool
segment_tracked(int64 fxid)
{
	ChainDatabase *d;
	bool		found = false;
	int			i;

	if (chain_shared == NULL)
		return false;
	LWLockAcquire(chain_shared->lock, LW_EXCLUSIVE);
	d = chain_database(false);
	for (i = 0; d != NULL && i < d->nsegments && !found; i++)
		found = (int64) U64FromFullTransactionId(d->segments[i].fxid) == fxid;
	LWLockRelease(chain_shared->lock);
	return found;
}

/* Record this transaction's new segment; false when there is no room for it */
static bool
track_segment(int64 first_id, int64 last_id, const unsigned char *last_hash)
{
	ChainDatabase *d;
	bool		tracked = false;

	if (chain_shared == NULL)
		return false;
	LWLockAcquire(chain_shared->lock, LW_EXCLUSIVE);
	d = chain_database(true);
	if (d != NULL && d->nsegments < CHAIN_SEGMENTS)
	{
		ChainSegment *seg = &d->segments[d->nsegments++];

		seg->fxid = GetTopFullTransactionId();
		seg->claimed_by = InvalidFullTransactionId;
		seg->first_id = first_id;
		seg->last_id = last_id;
		memcpy(seg->last_hash, last_hash, CG_HASH_BYTES);
		tracked = true;
	}
	LWLockRelease(chain_shared->lock);
	return tracked;
}

/* An entry to chain: one an accepted action left for its commit, or the worker's */
typedef struct PendingEntry
{
	SubTransactionId subid;
	int64		principal;
	int64		device;			/* 0: none */
	TimestampTz at;
	const char *action;
	const char *target;
	const char *row_key;
	const char *detail;			/* a JSON object's text, or NULL */
	Jsonb	   *jsonb;			/* or the object itself */
	const int64 *seal;			/* a segment to name rolled back (xid, first, last), or NULL */
} PendingEntry;

/* One audit row as the hash sees it */
typedef struct AuditRow
{
	int64		id;
	TimestampTz at;
	bool		has_principal;
	int64		principal;
	bool		has_device;
	int64		device;
	const char *action;
	const char *target;
	const char *row_key;
	const char *detail;			/* canonical jsonb text, or NULL */
	int			nclaims;		/* in_flight: segments chained over, 4 values each */
	const int64 *claims;
	int64		cluster;		/* with claims: the system identifier of the cluster they are of */
	unsigned char prev_hash[CG_HASH_BYTES];
} AuditRow;

static void
hash_int(crypto_generichash_state *st, bool present, int64 v)
{
	unsigned char buf[9];
	int			i;

	buf[0] = present ? 1 : 0;
	for (i = 8; i >= 1; i--)
	{
		buf[i] = (unsigned char) (present ? (v & 0xff) : 0);
		v >>= 8;
	}
	crypto_generichash_update(st, buf, sizeof(buf));
}

static void
hash_str(crypto_generichash_state *st, const char *s)
{
	uint32		len = s ? (uint32) strlen(s) : 0;
	unsigned char buf[5];

	buf[0] = s ? 1 : 0;
	buf[1] = (len >> 24) & 0xff;
	buf[2] = (len >> 16) & 0xff;
	buf[3] = (len >> 8) & 0xff;
	buf[4] = len & 0xff;
	crypto_generichash_update(st, buf, sizeof(buf));
	if (s)
		crypto_generichash_update(st, (const unsigned char *) s, len);
}

/* Length-prefixed fields, so no two different rows hash the same input */
static void
audit_row_hash(const AuditRow *row, unsigned char *out)
{
	unsigned char key[CG_KEY_BYTES];
	crypto_generichash_state st;

	cg_subkey(CG_KEY_AUDIT, key);
	crypto_generichash_init(&st, key, sizeof(key), CG_HASH_BYTES);
	sodium_memzero(key, sizeof(key));
	hash_str(&st, "crmguard audit v1");
	hash_int(&st, true, row->id);
	hash_int(&st, true, row->at);
	hash_int(&st, row->has_principal, row->principal);
	hash_int(&st, row->has_device, row->device);
	hash_str(&st, row->action);
	hash_str(&st, row->target);
	hash_str(&st, row->row_key);
	hash_str(&st, row->detail);
	/* rows that chained over nothing hash as rows of 1.0 did */
	if (row->nclaims > 0)
	{
		int			i;

		hash_str(&st, "in_flight");
		hash_int(&st, true, row->nclaims);
		for (i = 0; i < row->nclaims * 4; i++)
			hash_int(&st, true, row->claims[i]);
		hash_int(&st, true, row->cluster);
	}
	crypto_generichash_update(&st, row->prev_hash, CG_HASH_BYTES);
	crypto_generichash_final(&st, out, CG_HASH_BYTES);
}

/* The canonical text of a JSON object (what the hash covers) and its jsonb */
static char *
canonical_json(const char *json, Datum *jsonb)
{
	Jsonb	   *jb;

	if (json == NULL)
		return NULL;
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
	*jsonb = JsonbPGetDatum(jb);
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

static Datum
bytea_datum(const unsigned char *bytes, int len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), bytes, len);
	return PointerGetDatum(b);
}

/*
 * The chain head, as the latest snapshot sees it: the row with the highest
 * id, one backward probe of the primary key (no plan whose statistics could
 * age into a scan).  The caller holds the chain lock, so every earlier
 * writer has committed.  Returns its id, 0 for an empty log.
 */
static int64
read_chain_head(unsigned char *head_hash)
{
	Relation	rel = table_open(cg_catalog()->audit_rel, AccessShareLock);
	Oid			pkey = RelationGetPrimaryKeyIndex(rel);
	Relation	index;
	Snapshot	snapshot;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	int64		head_id = 0;

	memset(head_hash, 0, CG_HASH_BYTES);
	if (!OidIsValid(pkey))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table crmguard.audit has no primary key"),
				 errdetail("The audit chain is appended to only where its head can be found by its key.")));
	index = index_open(pkey, AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, index, snapshot, 0, 0);
	index_rescan(scan, NULL, 0, NULL, 0);
	if (index_getnext_slot(scan, BackwardScanDirection, slot))
	{
		bool		isnull;
		Datum		d;

		d = slot_getattr(slot, get_attnum(RelationGetRelid(rel), "id"), &isnull);
		if (!isnull)
			head_id = DatumGetInt64(d);
		d = slot_getattr(slot, get_attnum(RelationGetRelid(rel), "hash"), &isnull);
		if (!isnull)
		{
			bytea	   *prev = DatumGetByteaPP(d);

			if (VARSIZE_ANY_EXHDR(prev) == CG_HASH_BYTES)
				memcpy(head_hash, VARDATA_ANY(prev), CG_HASH_BYTES);
		}
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(index, AccessShareLock);
	table_close(rel, AccessShareLock);
	return head_id;
}

static Datum
claims_datum(const ChainClaims *claims)
{
	Datum	   *elems = palloc(sizeof(Datum) * claims->n * 4);
	int			i;

	for (i = 0; i < claims->n * 4; i++)
		elems[i] = Int64GetDatum(claims->values[i]);
	return PointerGetDatum(construct_array(elems, claims->n * 4, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE));
}

/*
 * Append entries to the chain, in order: read the head once under the chain
 * lock, link each entry to the one before, and insert them together, without
 * a statement.  The head is the newest row committed or in flight; the first
 * entry names what it chains over.
 */
static void
audit_write_entries(PendingEntry **entries, int n)
{
	ChainClaims claims;
	unsigned char head_hash[CG_HASH_BYTES];
	int64		head_id;
	int64		first_id;
	MemoryContext rows_context;
	MemoryContext old;
	Datum	   *values;
	bool	   *nulls;
	int			i;

	/*
	 * The table lock an INSERT takes (ROW EXCLUSIVE conflicts with nothing a
	 * user can hold on crmguard.audit), then the chain lock: the next writer
	 * waits for these entries to be linked and inserted, then links to them.
	 */
	LockRelationOid(cg_catalog()->audit_rel, RowExclusiveLock);
	lock_audit_chain();

	CommandCounterIncrement();
	/* the segments first: one that commits meanwhile is in the head read next */
	take_claims(&claims);
	head_id = read_chain_head(head_hash);
	if (claims.link_id > head_id)
	{
		head_id = claims.link_id;
		memcpy(head_hash, claims.link_hash, CG_HASH_BYTES);
	}
	first_id = Max(head_id, claims.max_id) + 1;
	/* a procedure's COMMITs run this in the procedure's context: free what it builds */
	rows_context = AllocSetContextCreate(CurrentMemoryContext, "crmguard audit rows",
										 ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(rows_context);
	values = palloc(sizeof(Datum) * AUDIT_NCOLUMNS * n);
	nulls = palloc0(sizeof(bool) * AUDIT_NCOLUMNS * n);
	for (i = 0; i < n; i++)
	{
		PendingEntry *e = entries[i];
		Datum	   *v = values + i * AUDIT_NCOLUMNS;
		bool	   *nl = nulls + i * AUDIT_NCOLUMNS;
		AuditRow	row;
		unsigned char hash[CG_HASH_BYTES];
		Datum		detail = (Datum) 0;

		memset(&row, 0, sizeof(row));
		row.id = first_id + i;
		row.at = e->at;
		row.has_principal = e->principal != 0;
		row.principal = e->principal;
		row.has_device = e->device != 0;
		row.device = e->device;
		row.action = e->action;
		row.target = e->target;
		row.row_key = e->row_key;
		if (e->jsonb)
		{
			row.detail = JsonbToCString(NULL, &e->jsonb->root, VARSIZE(e->jsonb));
			detail = JsonbPGetDatum(e->jsonb);
		}
		else
			row.detail = canonical_json(e->detail, &detail);
		/* the first entry names what it chains over; the rest link to it */
		if (i == 0)
		{
			if (e->seal && claims.n < CHAIN_SEGMENTS + 1)
			{
				claims.values[claims.n * 4] = e->seal[0];
				claims.values[claims.n * 4 + 1] = e->seal[1];
				claims.values[claims.n * 4 + 2] = e->seal[2];
				claims.values[claims.n * 4 + 3] = 1;
				claims.n++;
			}
			row.nclaims = claims.n;
			row.claims = claims.values;
			row.cluster = (int64) GetSystemIdentifier();
		}
		memcpy(row.prev_hash, head_hash, CG_HASH_BYTES);
		audit_row_hash(&row, hash);

		v[0] = Int64GetDatum(row.id);
		v[1] = TimestampTzGetDatum(row.at);
		v[2] = Int64GetDatum(row.principal);
		nl[2] = !row.has_principal;
		v[3] = Int64GetDatum(row.device);
		nl[3] = !row.has_device;
		v[4] = CStringGetTextDatum(e->action);
		v[5] = e->target ? CStringGetTextDatum(e->target) : (Datum) 0;
		nl[5] = e->target == NULL;
		v[6] = e->row_key ? CStringGetTextDatum(e->row_key) : (Datum) 0;
		nl[6] = e->row_key == NULL;
		v[7] = detail;
		nl[7] = row.detail == NULL;
		v[8] = bytea_datum(row.prev_hash, CG_HASH_BYTES);
		v[9] = bytea_datum(hash, CG_HASH_BYTES);
		v[10] = row.nclaims > 0 ? claims_datum(&claims) : (Datum) 0;
		nl[10] = row.nclaims == 0;
		v[11] = Int64GetDatum(row.cluster);
		nl[11] = row.nclaims == 0;
		memcpy(head_hash, hash, CG_HASH_BYTES);
	}
	/* without a statement: the log has no foreign keys, and no triggers on INSERT */
	cg_insert_catalog_rows(cg_catalog()->audit_rel, AUDIT_NCOLUMNS, audit_columns, audit_types,
						   n, values, nulls);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(rows_context);

	/*
	 * Linked and inserted: the next writer may go on while this transaction
	 * commits, once the segment is known in flight.  Inside a subtransaction
	 * (which could roll the rows back under a committing transaction) or
	 * with no room to track it, the lock stays to the commit.
	 */
	if (GetCurrentTransactionNestLevel() == 1 &&
		track_segment(first_id, first_id + n - 1, head_hash))
		unlock_audit_chain();
}

/* Append one entry with the device the principal acted through (0: none) */
static void
audit_write_row(int64 principal, int64 device, TimestampTz at, const char *action,
				const char *target, const char *row_key, const char *detail_json)
{
	PendingEntry e;
	PendingEntry *entries[1] = {&e};

	memset(&e, 0, sizeof(e));
	e.principal = principal;
	e.device = device;
	e.at = at;
	e.action = action;
	e.target = target;
	e.row_key = row_key;
	e.detail = detail_json;
	audit_write_entries(entries, 1);
}

/*
 * Append one row to the chain.  principal 0 means nobody; detail_json is a
 * JSON object text or NULL.
 */
void
cg_audit_write(int64 principal, TimestampTz at, const char *action,
			   const char *target, const char *row_key, const char *detail_json)
{
	audit_write_row(principal, 0, at, action, target, row_key, detail_json);
}

/* The detail object (or NULL) with the acting database role added */
static Jsonb *
jsonb_with_role(Jsonb *detail)
{
	char	   *role = GetUserNameFromId(GetOuterUserId(), true);
	StringInfoData buf;
	Jsonb	   *extra;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"session_role\": ");
	escape_json(&buf, role ? role : "");
	appendStringInfoChar(&buf, '}');
	extra = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
	if (detail == NULL)
		return extra;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(detail),
											  JsonbPGetDatum(extra)));
}

/* The same for a JSON object's text */
static char *
detail_with_role(const char *detail_json)
{
	Jsonb	   *merged = jsonb_with_role(detail_json ?
										 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail_json))) :
										 NULL);

	return JsonbToCString(NULL, &merged->root, VARSIZE(merged));
}

/* Accepted actions waiting for their transaction to commit */
static List *pending = NIL;		/* in TopTransactionContext */
static bool callbacks_registered = false;

static char *
copy_or_null(const char *s)
{
	return s ? pstrdup(s) : NULL;
}

/*
 * Chain this transaction's entries just before it commits: the chain lock is
 * held only from here to the commit record, never while a client dawdles.
 */
static void
audit_xact_callback(XactEvent event, void *arg)
{
	List	   *entries = pending;
	PendingEntry **array;
	ListCell   *lc;
	int			n = 0;

	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			/* the end of a transaction's identity is chained with the rest */
			cg_principal_pre_commit();
			entries = pending;
			if (entries == NIL)
				return;
			pending = NIL;
			array = palloc(sizeof(PendingEntry *) * list_length(entries));
			foreach(lc, entries)
				array[n++] = (PendingEntry *) lfirst(lc);
			PushActiveSnapshot(GetTransactionSnapshot());
			audit_write_entries(array, n);
			PopActiveSnapshot();
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (entries != NIL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that wrote crmguard audit entries")));
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			pending = NIL;
			break;
		default:
			break;
	}
}

/* Entries of a rolled-back subtransaction go with it */
static void
audit_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, pending)
		{
			PendingEntry *e = (PendingEntry *) lfirst(lc);

			if (e->subid == mySubid)
				pending = foreach_delete_current(pending, lc);
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending)
		{
			PendingEntry *e = (PendingEntry *) lfirst(lc);

			if (e->subid == mySubid)
				e->subid = parentSubid;
		}
	}
}

/* Record an accepted action; it is chained when its transaction commits */
void
cg_audit(const char *action, const char *target, const char *row_key,
		 Jsonb *detail)
{
	const CgPrincipal *p = cg_current_principal();
	Jsonb	   *merged = jsonb_with_role(detail);
	MemoryContext old;
	PendingEntry *e;

	/*
	 * A hot standby cannot write: what it would audit (an assume(), say) goes
	 * to the server log instead, and the primary's chain stays whole.
	 */
	if (RecoveryInProgress())
	{
		ereport(LOG,
				(errmsg("crmguard audit on a standby: %s on %s by principal " INT64_FORMAT,
						action, target ? target : "-", p ? p->id : (int64) 0)));
		return;
	}
	/*
	 * A read-only transaction cannot write its entries at commit: refused
	 * now, before the action's result is returned unaudited.
	 */
	PreventCommandIfReadOnly("an audited crmguard action");
	/*
	 * The table lock the commit will need, taken now: a commit then waits
	 * for no lock of the table, even one queued behind a lock held open.
	 */
	LockRelationOid(cg_catalog()->audit_rel, RowExclusiveLock);
	if (!callbacks_registered)
	{
		RegisterXactCallback(audit_xact_callback, NULL);
		RegisterSubXactCallback(audit_subxact_callback, NULL);
		callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	e = palloc(sizeof(PendingEntry));
	e->subid = GetCurrentSubTransactionId();
	e->principal = p ? p->id : 0;
	e->device = cg_current_device();
	e->at = GetCurrentTimestamp();
	e->action = pstrdup(action);
	e->target = copy_or_null(target);
	e->row_key = copy_or_null(row_key);
	e->detail = NULL;
	e->seal = NULL;
	e->jsonb = palloc(VARSIZE(merged));
	memcpy(e->jsonb, merged, VARSIZE(merged));
	pending = lappend(pending, e);
	MemoryContextSwitchTo(old);
}

/*
 * Record a refused action so that it survives the rollback of the refusing
 * transaction: the worker writes it in a transaction of its own.
 */
void
cg_audit_durable(const char *action, const char *target, const char *row_key,
				 const char *detail_json)
{
	const CgPrincipal *p = NULL;
	StringInfoData buf;
	int64		principal;
	int64		device = 0;
	TimestampTz at = GetCurrentTimestamp();
	char	   *role;

	if (RecoveryInProgress())
	{
		ereport(LOG,
				(errmsg("crmguard audit on a standby: %s on %s", action, target ? target : "-")));
		return;
	}
	/* identity may itself be what failed: record nobody rather than fail */
	PG_TRY();
	{
		p = cg_current_principal();
		principal = p ? p->id : 0;
		device = cg_current_device();
	}
	PG_CATCH();
	{
		FlushErrorState();
		principal = 0;
	}
	PG_END_TRY();

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, (char *) &principal, sizeof(principal));
	appendBinaryStringInfo(&buf, (char *) &device, sizeof(device));
	appendBinaryStringInfo(&buf, (char *) &at, sizeof(at));
	appendStringInfoString(&buf, action);
	appendStringInfoChar(&buf, '\0');
	appendStringInfoString(&buf, target ? target : "");
	appendStringInfoChar(&buf, '\0');
	appendStringInfoString(&buf, row_key ? row_key : "");
	appendStringInfoChar(&buf, '\0');
	appendStringInfoString(&buf, detail_with_role(detail_json));
	appendStringInfoChar(&buf, '\0');

	role = GetUserNameFromId(GetOuterUserId(), true);
	cg_enqueue_audit(buf.data, buf.len, action, principal, role ? role : "", at);
}

/*
 * The worker's record of a flood: count refusals of one kind by one session
 * that did not fit in its slots, as one entry.
 */
void
cg_audit_write_summary(int64 principal, const char *action, const char *role,
					   int64 count, TimestampTz first_at, TimestampTz last_at)
{
	StringInfoData buf;
	long		secs;
	int			usecs;

	TimestampDifference(first_at, last_at, &secs, &usecs);
	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"summary\": true, \"count\": " INT64_FORMAT ", \"seconds\": %ld, \"session_role\": ",
					 count, secs + (usecs > 0 ? 1 : 0));
	escape_json(&buf, role);
	appendStringInfoString(&buf, ", \"first_at\": ");
	escape_json(&buf, timestamptz_to_str(first_at));
	appendStringInfoString(&buf, ", \"message\": ");
	if (strlen(action) > 8 && strcmp(action + strlen(action) - 8, "_refused") == 0)
		escape_json(&buf, psprintf(INT64_FORMAT " refused %.*s() calls from role %s in %ld s",
								   count, (int) strlen(action) - 8, action, role,
								   secs + (usecs > 0 ? 1 : 0)));
	else
		escape_json(&buf, psprintf(INT64_FORMAT " \"%s\" records from role %s in %ld s",
								   count, action, role, secs + (usecs > 0 ? 1 : 0)));
	appendStringInfoChar(&buf, '}');
	cg_audit_write(principal, last_at, action, NULL, NULL, buf.data);
}

/* The worker's half of cg_audit_durable */
void
cg_audit_run_job(const char *data, int len)
{
	int64		principal;
	int64		device;
	TimestampTz at;
	const char *action;
	const char *target;
	const char *row_key;
	const char *detail;

	memcpy(&principal, data, sizeof(principal));
	memcpy(&device, data + sizeof(principal), sizeof(device));
	memcpy(&at, data + sizeof(principal) + sizeof(device), sizeof(at));
	action = data + sizeof(principal) + sizeof(device) + sizeof(at);
	target = action + strlen(action) + 1;
	row_key = target + strlen(target) + 1;
	detail = row_key + strlen(row_key) + 1;
	audit_write_row(principal, device, at, action, *target ? target : NULL,
					*row_key ? row_key : NULL, detail);
}

/*
 * A segment named in flight whose transaction, verify_audit found, never
 * committed, that no row names rolled back, and that shared memory no
 * longer knows (a crash, or its slot given up): no writer will name it.  The commit log tells only until VACUUM truncates it, so the
 * worker writes an entry that names the segment rolled back, for good.
 */
static void
queue_seal(int64 fxid, int64 first_id, int64 last_id)
{
	int64		data[3] = {fxid, first_id, last_id};

	/* one still known in flight is named rolled back by the next writer */
	if (!RecoveryInProgress() && !segment_tracked(fxid))
		(void) cg_enqueue(CG_JOB_AUDIT_SEAL, (const char *) data, sizeof(data));
}

/* The worker's half of queue_seal */
void
cg_audit_run_seal(const char *data, int len)
{
	int64		seal[3];
	PendingEntry e;
	PendingEntry *entries[1] = {&e};
	char	   *detail;

	if (len != sizeof(seal))
		return;
	memcpy(seal, data, sizeof(seal));
	detail = psprintf("{\"xid\": " INT64_FORMAT ", \"first_id\": " INT64_FORMAT ", \"last_id\": " INT64_FORMAT "}",
					  seal[0], seal[1], seal[2]);
	memset(&e, 0, sizeof(e));
	e.at = GetCurrentTimestamp();
	e.action = "audit_gap_sealed";
	e.detail = detail;
	e.seal = seal;
	audit_write_entries(entries, 1);
}

PG_FUNCTION_INFO_V1(crmguard_audit_event);
Datum
crmguard_audit_event(PG_FUNCTION_ARGS)
{
	cg_require_preload();
	/* every entry names what happened: target, key and detail may be missing */
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("action must not be NULL")));
	cg_audit(text_to_cstring(PG_GETARG_TEXT_PP(0)),
			 PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
			 PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2)),
			 PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3));
	PG_RETURN_VOID();
}

static const char *
text_or_null(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* Was this transaction still running for the snapshot (its rows unseen by it)? */
static bool
xact_unseen(int64 fxid, Snapshot snapshot)
{
	/* beyond the reach of 32-bit xids: long over */
	if (!xid_in_reach((uint64) fxid))
		return false;
	return XidInMVCCSnapshot((TransactionId) (fxid & 0xFFFFFFFF), snapshot);
}

/* A gap's rows (after, before), all named by the row after it as a segment that did not commit */
typedef struct GapCheck
{
	int64		fxid;			/* named in flight: it must have rolled back */
	int64		first_id;		/* its segment */
	int64		last_id;
	int64		row_id;			/* the row that named it */
	bool		local;			/* named by this cluster: its commit log tells */
} GapCheck;

static bool
gap_explained(int64 after, int64 before, const int64 *claims, int nclaims, int64 row_id,
			  bool local, GapCheck **checks, int *nchecks, int *maxchecks)
{
	int64		next = after + 1;

	while (next < before)
	{
		int			c;

		for (c = 0; c < nclaims; c++)
			if (claims[c * 4 + 1] <= next && next <= claims[c * 4 + 2])
				break;
		if (c == nclaims)
			return false;
		if (claims[c * 4 + 3] == 0)
		{
			if (*nchecks == *maxchecks)
			{
				*maxchecks *= 2;
				*checks = repalloc(*checks, sizeof(GapCheck) * *maxchecks);
			}
			(*checks)[*nchecks].fxid = claims[c * 4];
			(*checks)[*nchecks].first_id = claims[c * 4 + 1];
			(*checks)[*nchecks].last_id = claims[c * 4 + 2];
			(*checks)[*nchecks].local = local;
			(*checks)[(*nchecks)++].row_id = row_id;
		}
		next = claims[c * 4 + 2] + 1;
	}
	return true;
}

/*
 * Walk the chain in id order and report the first row whose link or hash
 * does not match: an edited row, a forged insert, or the row after a deleted
 * one.  A row may follow missing ids only where it names them as a segment
 * it chained over, and the transaction of that segment did not commit: it
 * named it rolled back, a later row did, or the commit log says so; or it
 * was still running for the snapshot the rows are read with.  The commit
 * log is asked only about rows this cluster chained (in_flight_cluster): in
 * a log restored into another cluster, the same xids name other
 * transactions, which anyone could have roll back.  Nothing waits:
 * an auditor's call never holds up a commit.
 */
PG_FUNCTION_INFO_V1(crmguard_verify_audit);
Datum
crmguard_verify_audit(PG_FUNCTION_ARGS)
{
	CgPrivilegedContext priv;
	TupleDesc	result_desc;
	Datum		result[2];
	bool		result_nulls[2] = {false, true};
	Portal		portal;
	Snapshot	snapshot;
	unsigned char prev[CG_HASH_BYTES];
	int64		prev_id = 0;
	int64		first_bad = 0;
	int			i;
	int64	   *rolled_back;
	int			nrolled = 0;
	int			maxrolled = 16;
	GapCheck   *checks;
	int			nchecks = 0;
	int			maxchecks = 16;

	cg_require_preload();
	if (get_call_result_type(fcinfo, NULL, &result_desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	snapshot = RegisterSnapshot(GetLatestSnapshot());
	rolled_back = palloc(sizeof(int64) * maxrolled);
	checks = palloc(sizeof(GapCheck) * maxchecks);
	memset(prev, 0, sizeof(prev));
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(snapshot);
	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT " AUDIT_COLUMNS " FROM crmguard.audit ORDER BY id",
									   0, NULL, NULL, NULL, true, 0);
	while (first_bad == 0)
	{
		uint64		r;

		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		for (r = 0; r < SPI_processed && first_bad == 0; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			AuditRow	row;
			bool		isnull;
			Datum		d;
			bytea	   *stored_prev;
			bytea	   *stored_hash;
			unsigned char hash[CG_HASH_BYTES];
			int64	   *claims = NULL;
			int			nvalues = 0;
			int			c;

			memset(&row, 0, sizeof(row));
			row.id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
			row.at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
			d = SPI_getbinval(tup, desc, 3, &isnull);
			row.has_principal = !isnull;
			row.principal = isnull ? 0 : DatumGetInt64(d);
			d = SPI_getbinval(tup, desc, 4, &isnull);
			row.has_device = !isnull;
			row.device = isnull ? 0 : DatumGetInt64(d);
			row.action = text_or_null(tup, desc, 5);
			row.target = text_or_null(tup, desc, 6);
			row.row_key = text_or_null(tup, desc, 7);
			d = SPI_getbinval(tup, desc, 8, &isnull);
			if (!isnull)
			{
				Jsonb	   *jb = DatumGetJsonbP(d);

				row.detail = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
			}
			d = SPI_getbinval(tup, desc, 12, &isnull);
			row.cluster = isnull ? 0 : DatumGetInt64(d);
			d = SPI_getbinval(tup, desc, 11, &isnull);
			if (!isnull)
			{
				ArrayType  *a = DatumGetArrayTypeP(d);
				Datum	   *elems;
				bool	   *elem_nulls;

				deconstruct_array(a, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE,
								  &elems, &elem_nulls, &nvalues);
				claims = palloc(sizeof(int64) * Max(nvalues, 1));
				for (c = 0; c < nvalues; c++)
					claims[c] = elem_nulls[c] ? -1 : DatumGetInt64(elems[c]);
				/* a malformed list is hashed as it is, and fails below */
				if (nvalues % 4 != 0 || nvalues == 0 || ARR_NDIM(a) != 1)
				{
					first_bad = row.id;
					break;
				}
				row.nclaims = nvalues / 4;
				row.claims = claims;
				for (c = 0; c < row.nclaims; c++)
					if (claims[c * 4 + 3] == 1)
					{
						if (nrolled == maxrolled)
						{
							maxrolled *= 2;
							rolled_back = repalloc(rolled_back, sizeof(int64) * maxrolled);
						}
						rolled_back[nrolled++] = claims[c * 4];
					}
			}

			stored_prev = DatumGetByteaPP(SPI_getbinval(tup, desc, 9, &isnull));
			if (isnull || VARSIZE_ANY_EXHDR(stored_prev) != CG_HASH_BYTES)
			{
				first_bad = row.id;
				break;
			}
			memcpy(row.prev_hash, VARDATA_ANY(stored_prev), CG_HASH_BYTES);
			if (row.id == prev_id + 1)
			{
				if (sodium_memcmp(row.prev_hash, prev, CG_HASH_BYTES) != 0)
					first_bad = row.id;
			}
			else if (row.id <= prev_id ||
					 !gap_explained(prev_id, row.id, row.claims, row.nclaims, row.id,
									row.cluster == (int64) GetSystemIdentifier(),
									&checks, &nchecks, &maxchecks))
				first_bad = row.id;
			audit_row_hash(&row, hash);
			stored_hash = DatumGetByteaPP(SPI_getbinval(tup, desc, 10, &isnull));
			if (isnull || VARSIZE_ANY_EXHDR(stored_hash) != CG_HASH_BYTES ||
				sodium_memcmp(VARDATA_ANY(stored_hash), hash, CG_HASH_BYTES) != 0)
				first_bad = row.id;

			memcpy(prev, hash, CG_HASH_BYTES);
			prev_id = row.id;
		}
	}
	SPI_cursor_close(portal);
	PopActiveSnapshot();
	SPI_finish();
	cg_leave_owner(&priv);

	/*
	 * Rows that followed a gap named in progress: that transaction must have
	 * rolled back, or still be unseen by the snapshot the rows were read
	 * with (its rows, if it commits, are for the next verify_audit).
	 */
	for (i = 0; i < nchecks; i++)
	{
		bool		named = false;
		int			j;

		if (first_bad != 0 && checks[i].row_id >= first_bad)
			continue;
		for (j = 0; j < nrolled && !named; j++)
			named = rolled_back[j] == checks[i].fxid;
		if (named)
			continue;
		/* restored from another cluster: its xids mean nothing to this commit log */
		if (!checks[i].local)
		{
			first_bad = checks[i].row_id;
			continue;
		}
		if (xact_unseen(checks[i].fxid, snapshot))
			continue;
		if (xact_end(FullTransactionIdFromU64((uint64) checks[i].fxid)) != XACT_ABORTED)
			first_bad = checks[i].row_id;
		else
			queue_seal(checks[i].fxid, checks[i].first_id, checks[i].last_id);
	}

	UnregisterSnapshot(snapshot);
	result[0] = BoolGetDatum(first_bad == 0);
	if (first_bad != 0)
	{
		result[1] = Int64GetDatum(first_bad);
		result_nulls[1] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(result_desc),
													  result, result_nulls)));
}

/* UPDATE, DELETE and TRUNCATE of the audit log: superusers only */
PG_FUNCTION_INFO_V1(crmguard_audit_append_only);
Datum
crmguard_audit_append_only(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "crmguard_audit_append_only: not called as a trigger");
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the crmguard audit log is append-only"),
				 errdetail("Rows of crmguard.audit cannot be updated, deleted or truncated.")));
	if (TRIGGER_FIRED_FOR_STATEMENT(((TriggerData *) fcinfo->context)->tg_event))
		return PointerGetDatum(NULL);
	return PointerGetDatum(((TriggerData *) fcinfo->context)->tg_trigtuple);
}
