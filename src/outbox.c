/*
 * outbox.c
 *		The one outbox: messages for customers and users (OTP codes, approval
 *		notices) wait in crmguard.outbox until an external sender claims them.
 *		The database never talks to an SMS or mail gateway itself.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "crmguard.h"

/*
 * The channels this transaction queued messages for.  Senders are woken with
 * NOTIFY crmguard_outbox, but not from the transaction itself: PostgreSQL
 * holds a cluster-wide lock from a notifying transaction's pre-commit to its
 * end, flush included, so every transaction that queued a message would
 * commit one after another.  After the commit, the database's worker is asked
 * to notify instead (one announcement per channel waiting); a wake-up lost
 * to a full queue leaves the message to the senders' next poll.
 */
static List *announce = NIL;	/* of char *, in TopTransactionContext */
static bool announce_registered = false;

static void
announce_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (announce != NIL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that queued crmguard outbox messages")));
			break;
		case XACT_EVENT_COMMIT:
			/*
			 * No error may escape a committed transaction: a full queue (or
			 * a name too long for a job) is left to the senders' poll.
			 */
			foreach(lc, announce)
			{
				const char *channel = (const char *) lfirst(lc);

				(void) cg_enqueue_after_commit(CG_JOB_NOTIFY, channel, strlen(channel) + 1);
			}
			announce = NIL;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			announce = NIL;
			break;
		default:
			break;
	}
}

/* Wake the senders of this channel once the transaction commits */
static void
announce_at_commit(const char *channel)
{
	MemoryContext old;
	ListCell   *lc;

	if (!announce_registered)
	{
		RegisterXactCallback(announce_xact_callback, NULL);
		announce_registered = true;
	}
	foreach(lc, announce)
		if (strcmp((const char *) lfirst(lc), channel) == 0)
			return;
	old = MemoryContextSwitchTo(TopTransactionContext);
	announce = lappend(announce, pstrdup(channel));
	MemoryContextSwitchTo(old);
}

/* Retry policy read by crmguard.mark_sent (SQL) */
static int	outbox_max_attempts = 8;
static int	outbox_retry_delay = 30000;

void
cg_outbox_init(void)
{
	DefineCustomIntVariable("crmguard.outbox_max_attempts",
							"Delivery attempts of an outbox message before it is dead.",
							NULL,
							&outbox_max_attempts,
							8, 1, 1000,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("crmguard.outbox_retry_delay",
							"Delay before the second attempt of a failed outbox message.",
							"Each further attempt waits twice as long (at most an hour), less a random part of up to half.",
							&outbox_retry_delay,
							30000, 10, 3600 * 1000,
							PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/*
 * The lease of this session's claims that name none: random, made on first
 * use, so that a sender which claims and reports in one session need not
 * carry a token.  Senders that may reconnect (crmguard-relay) pass their own.
 */
PG_FUNCTION_INFO_V1(crmguard_outbox_session_lease);
Datum
crmguard_outbox_session_lease(PG_FUNCTION_ARGS)
{
	static pg_uuid_t lease;
	static bool made = false;
	pg_uuid_t  *result = palloc(sizeof(pg_uuid_t));

	if (!made)
	{
		if (!pg_strong_random(lease.data, UUID_LEN))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random lease")));
		lease.data[6] = (lease.data[6] & 0x0f) | 0x40;	/* version 4 */
		lease.data[8] = (lease.data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
		made = true;
	}
	memcpy(result, &lease, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(result);
}

/* Queue a message in the current transaction and wake the senders */
int64
cg_outbox_put(const char *channel, const char *recipient, const char *subject,
			  const char *body)
{
	return cg_outbox_put_expiring(channel, recipient, subject, body, 0);
}

/*
 * The same for a message that is void after expires_at (0: never), such as
 * a one-time code: claim_outbox never hands it out later, and erases it.
 * Appended without a statement (cg_insert_catalog_rows): a code is queued
 * on every request, and the statement cost several times the row.  The
 * columns the table defaults are given as its defaults would: the next id,
 * the transaction's start, no attempts, pending, a random idempotency key.
 */
int64
cg_outbox_put_expiring(const char *channel, const char *recipient, const char *subject,
					   const char *body, TimestampTz expires_at)
{
	static const char *const columns[9] = {"id", "channel", "recipient", "subject", "body",
	"created_at", "attempts", "state", "idempotency_key"};
	static const char *const expiring_columns[10] = {"id", "channel", "recipient", "subject",
	"body", "created_at", "attempts", "state", "idempotency_key", "expires_at"};
	static const Oid types[10] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
	INT4OID, TEXTOID, UUIDOID, TIMESTAMPTZOID};
	Oid			schema = cg_catalog()->schema;
	Oid			outbox = get_relname_relid("outbox", schema);
	Oid			seq = get_relname_relid("outbox_id_seq", schema);
	pg_uuid_t  *key = palloc(sizeof(pg_uuid_t));
	Datum		values[10];
	bool		nulls[10] = {false};
	int64		id;

	if (!OidIsValid(outbox) || !OidIsValid(seq))
		elog(ERROR, "crmguard.outbox or its id sequence does not exist");
	if (!pg_strong_random(key->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random idempotency key")));
	key->data[6] = (key->data[6] & 0x0f) | 0x40;	/* version 4 */
	key->data[8] = (key->data[8] & 0x3f) | 0x80;	/* RFC 4122 variant */
	/* crmguard's own sequence, whoever queues the message */
	id = nextval_internal(seq, false);
	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(channel);
	values[2] = CStringGetTextDatum(recipient);
	values[3] = subject ? CStringGetTextDatum(subject) : (Datum) 0;
	nulls[3] = subject == NULL;
	values[4] = CStringGetTextDatum(body);
	values[5] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	values[6] = Int32GetDatum(0);
	values[7] = CStringGetTextDatum("pending");
	values[8] = UUIDPGetDatum(key);
	values[9] = TimestampTzGetDatum(expires_at);
	cg_insert_catalog_rows(outbox, expires_at ? 10 : 9, expires_at ? expiring_columns : columns,
						   types, 1, values, nulls);

	/* after commit, so senders never hear of a message that rolled back */
	announce_at_commit(channel);
	return id;
}
