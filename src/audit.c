/*
 * audit.c
 *		The one audit writer: crmguard.audit is append-only and each row is
 *		chained to the one before by a BLAKE2b hash keyed with the server key.
 *
 * Accepted actions wait in backend memory and are chained just before their
 * transaction commits; writers serialise on the chain lock (held only from
 * there to the commit) and read the chain head with the latest snapshot, so
 * concurrent writers never fork the chain in any isolation level.  The
 * chain lock is no lock of the table: nothing a user can lock on crmguard's
 * objects (ANALYZE, LOCK TABLE, SELECT ... FOR SHARE) makes a commit wait.
 * Refusals, whose transaction is about to roll back, go through the
 * worker's queue and are written in a transaction of their own: each
 * backend has slots of its own there, and a flood beyond them is written as
 * one summary record per kind of refusal, so no one's flood drops another's.
 */
#include "postgres.h"

#include <sodium.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "crmguard.h"

#define AUDIT_COLUMNS "id, at, principal, device, action, target, row_key, detail, prev_hash, hash"

static SPIPlanPtr head_plan = NULL;

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
static SPIPlanPtr insert_plan = NULL;

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
	crypto_generichash_update(&st, row->prev_hash, CG_HASH_BYTES);
	crypto_generichash_final(&st, out, CG_HASH_BYTES);
}

static char *
canonical_json(const char *json)
{
	Jsonb	   *jb;

	if (json == NULL)
		return NULL;
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
	return JsonbToCString(NULL, &jb->root, VARSIZE(jb));
}

static void
prepare_plans(void)
{
	Oid			types[10] = {INT8OID, TIMESTAMPTZOID, INT8OID, INT8OID, TEXTOID,
	TEXTOID, TEXTOID, JSONBOID, BYTEAOID, BYTEAOID};

	if (head_plan == NULL)
	{
		head_plan = SPI_prepare("SELECT id, hash FROM crmguard.audit"
								" ORDER BY id DESC LIMIT 1", 0, NULL);
		if (head_plan == NULL)
			elog(ERROR, "SPI_prepare failed");
		SPI_keepplan(head_plan);
	}
	if (insert_plan == NULL)
	{
		insert_plan = SPI_prepare("INSERT INTO crmguard.audit (" AUDIT_COLUMNS ")"
								  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
								  10, types);
		if (insert_plan == NULL)
			elog(ERROR, "SPI_prepare failed");
		SPI_keepplan(insert_plan);
	}
}

static Datum
bytea_datum(const unsigned char *bytes, int len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), bytes, len);
	return PointerGetDatum(b);
}

static void audit_write_row(int64 principal, int64 device, TimestampTz at,
							const char *action, const char *target,
							const char *row_key, const char *detail_json);

/*
 * The chain head this backend itself just wrote, while it holds the chain
 * lock and chains a committing transaction's entries: the next entry links
 * to it without reading the table again.  Known only inside that loop.
 */
static bool own_head_known = false;
static int64 own_head_id;
static unsigned char own_head_hash[CG_HASH_BYTES];

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

/* Append one row with the device the principal acted through (0: none) */
static void
audit_write_row(int64 principal, int64 device, TimestampTz at, const char *action,
				const char *target, const char *row_key, const char *detail_json)
{
	CgPrivilegedContext priv;
	AuditRow	row;
	unsigned char hash[CG_HASH_BYTES];
	Datum		values[10];
	char		nulls[10];
	int			i;

	memset(&row, 0, sizeof(row));
	row.at = at;
	row.has_principal = principal != 0;
	row.principal = principal;
	row.has_device = device != 0;
	row.device = device;
	row.action = action;
	row.target = target;
	row.row_key = row_key;
	row.detail = canonical_json(detail_json);

	/*
	 * The table lock an INSERT takes (ROW EXCLUSIVE conflicts with nothing a
	 * user can hold on crmguard.audit), then the chain lock, held to commit:
	 * the next writer waits, then sees this row as the head.
	 */
	LockRelationOid(cg_catalog()->audit_rel, RowExclusiveLock);
	lock_audit_chain();

	cg_enter_owner(&priv);
	/* the head is one index probe however the kept plan's statistics aged */
	(void) set_config_option("enable_seqscan", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	prepare_plans();
	if (own_head_known)
	{
		row.id = own_head_id + 1;
		memcpy(row.prev_hash, own_head_hash, CG_HASH_BYTES);
	}
	else
	{
		CommandCounterIncrement();
		if (SPI_execute_snapshot(head_plan, NULL, NULL, GetLatestSnapshot(),
								 InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read the audit chain head");
		if (SPI_processed == 1)
		{
			bool		isnull;
			bytea	   *prev;

			row.id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull)) + 1;
			prev = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 2, &isnull));
			if (!isnull && VARSIZE_ANY_EXHDR(prev) == CG_HASH_BYTES)
				memcpy(row.prev_hash, VARDATA_ANY(prev), CG_HASH_BYTES);
		}
		else
			row.id = 1;
	}

	audit_row_hash(&row, hash);

	for (i = 0; i < 10; i++)
		nulls[i] = ' ';
	values[0] = Int64GetDatum(row.id);
	values[1] = TimestampTzGetDatum(row.at);
	values[2] = Int64GetDatum(row.principal);
	nulls[2] = row.has_principal ? ' ' : 'n';
	values[3] = Int64GetDatum(row.device);
	nulls[3] = row.has_device ? ' ' : 'n';
	values[4] = CStringGetTextDatum(action);
	values[5] = target ? CStringGetTextDatum(target) : (Datum) 0;
	nulls[5] = target ? ' ' : 'n';
	values[6] = row_key ? CStringGetTextDatum(row_key) : (Datum) 0;
	nulls[6] = row_key ? ' ' : 'n';
	values[7] = row.detail ?
		DirectFunctionCall1(jsonb_in, CStringGetDatum(row.detail)) : (Datum) 0;
	nulls[7] = row.detail ? ' ' : 'n';
	values[8] = bytea_datum(row.prev_hash, CG_HASH_BYTES);
	values[9] = bytea_datum(hash, CG_HASH_BYTES);

	if (SPI_execute_plan(insert_plan, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not append to the audit log");
	own_head_id = row.id;
	memcpy(own_head_hash, hash, CG_HASH_BYTES);

	SPI_finish();
	cg_leave_owner(&priv);
}

/* The detail object with the acting database role added */
static char *
detail_with_role(const char *detail_json)
{
	char	   *role = GetUserNameFromId(GetOuterUserId(), true);
	StringInfoData buf;
	Jsonb	   *extra;
	Jsonb	   *merged;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"session_role\": ");
	escape_json(&buf, role ? role : "");
	appendStringInfoChar(&buf, '}');
	extra = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
	if (detail_json == NULL)
		merged = extra;
	else
		merged = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
													DirectFunctionCall1(jsonb_in, CStringGetDatum(detail_json)),
													JsonbPGetDatum(extra)));
	return JsonbToCString(NULL, &merged->root, VARSIZE(merged));
}

/* An accepted action waiting for its transaction to commit */
typedef struct PendingEntry
{
	SubTransactionId subid;
	int64		principal;
	int64		device;
	TimestampTz at;
	char	   *action;
	char	   *target;
	char	   *row_key;
	char	   *detail;
} PendingEntry;

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
	ListCell   *lc;
	List	   *entries = pending;

	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			/* the end of a transaction's identity is chained with the rest */
			cg_principal_pre_commit();
			entries = pending;
			if (entries == NIL)
				return;
			pending = NIL;
			PushActiveSnapshot(GetTransactionSnapshot());
			/* the first entry reads the head under the chain lock; the others follow it */
			own_head_known = false;
			foreach(lc, entries)
			{
				PendingEntry *e = (PendingEntry *) lfirst(lc);

				audit_write_row(e->principal, e->device, e->at, e->action, e->target,
								e->row_key, e->detail);
				own_head_known = true;
			}
			own_head_known = false;
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
			own_head_known = false; /* an entry failed half-way through the loop */
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
	char	   *json = detail_with_role(detail ?
										JsonbToCString(NULL, &detail->root, VARSIZE(detail)) : NULL);
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
	e->detail = pstrdup(json);
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

/*
 * Walk the chain in id order and report the first row whose id, link or
 * hash does not match: an edited row, a forged insert, or the row after a
 * deleted one.
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
	unsigned char prev[CG_HASH_BYTES];
	int64		expected_id = 1;
	int64		first_bad = 0;

	cg_require_preload();
	if (get_call_result_type(fcinfo, NULL, &result_desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	memset(prev, 0, sizeof(prev));
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT " AUDIT_COLUMNS " FROM crmguard.audit ORDER BY id",
									   0, NULL, NULL, NULL, true, 0);
	while (first_bad == 0)
	{
		uint64		i;

		SPI_cursor_fetch(portal, true, 1000);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed && first_bad == 0; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			AuditRow	row;
			bool		isnull;
			Datum		d;
			bytea	   *stored_prev;
			bytea	   *stored_hash;
			unsigned char hash[CG_HASH_BYTES];

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
			memcpy(row.prev_hash, prev, CG_HASH_BYTES);
			audit_row_hash(&row, hash);

			stored_prev = DatumGetByteaPP(SPI_getbinval(tup, desc, 9, &isnull));
			if (isnull || VARSIZE_ANY_EXHDR(stored_prev) != CG_HASH_BYTES ||
				sodium_memcmp(VARDATA_ANY(stored_prev), prev, CG_HASH_BYTES) != 0)
				first_bad = row.id;
			stored_hash = DatumGetByteaPP(SPI_getbinval(tup, desc, 10, &isnull));
			if (isnull || VARSIZE_ANY_EXHDR(stored_hash) != CG_HASH_BYTES ||
				sodium_memcmp(VARDATA_ANY(stored_hash), hash, CG_HASH_BYTES) != 0 ||
				row.id != expected_id)
				first_bad = row.id;

			memcpy(prev, hash, CG_HASH_BYTES);
			expected_id = row.id + 1;
		}
	}
	SPI_cursor_close(portal);
	SPI_finish();
	cg_leave_owner(&priv);

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
