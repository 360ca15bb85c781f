/*
 * outbox.c
 *		The one outbox: messages for customers and users (OTP codes, approval
 *		notices) wait in crmguard.outbox until an external sender claims them.
 *		The database never talks to an SMS or mail gateway itself.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/guc.h"
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
 */
int64
cg_outbox_put_expiring(const char *channel, const char *recipient, const char *subject,
					   const char *body, TimestampTz expires_at)
{
	return cg_outbox_put_with(channel, recipient, subject, body, expires_at, NULL, 0, NULL, NULL, NULL);
}

#define OUTBOX_PUT_PLANS 4

/*
 * The same, with with_sql (a data-modifying statement on crmguard's own
 * tables, or NULL) run in the same statement as a CTE, so that a message and
 * the row it belongs with (a challenge and its code) are written together at
 * the cost of one.  Its parameters are numbered from $6; the message's are
 * $1 to $5.  Runs as the extension's owner.
 */
int64
cg_outbox_put_with(const char *channel, const char *recipient, const char *subject,
				   const char *body, TimestampTz expires_at, const char *with_sql,
				   int nargs, const Oid *types, const Datum *values, const char *nulls)
{
	static const Oid put_types[5] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	static char *plan_with[OUTBOX_PUT_PLANS];
	static SPIPlanPtr plans[OUTBOX_PUT_PLANS];
	static int	nplans = 0;
	CgPrivilegedContext priv;
	SPIPlanPtr	plan = NULL;
	Oid		   *all_types = palloc(sizeof(Oid) * (5 + nargs));
	Datum	   *all_values = palloc(sizeof(Datum) * (5 + nargs));
	char	   *all_nulls = palloc(5 + nargs);
	bool		isnull;
	int64		id;
	int			i;

	memcpy(all_types, put_types, sizeof(put_types));
	all_values[0] = CStringGetTextDatum(channel);
	all_values[1] = CStringGetTextDatum(recipient);
	all_values[2] = subject ? CStringGetTextDatum(subject) : (Datum) 0;
	all_values[3] = CStringGetTextDatum(body);
	all_values[4] = TimestampTzGetDatum(expires_at);
	memset(all_nulls, ' ', 5 + nargs);
	all_nulls[2] = subject ? ' ' : 'n';
	all_nulls[4] = expires_at ? ' ' : 'n';
	for (i = 0; i < nargs; i++)
	{
		all_types[5 + i] = types[i];
		all_values[5 + i] = values[i];
		if (nulls)
			all_nulls[5 + i] = nulls[i];
	}

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	for (i = 0; i < nplans && plan == NULL; i++)
		if (with_sql ? plan_with[i] && strcmp(plan_with[i], with_sql) == 0 : plan_with[i] == NULL)
			plan = plans[i];
	if (plan == NULL)
	{
		char	   *sql = psprintf("%s%s%sINSERT INTO crmguard.outbox (channel, recipient, subject, body, expires_at)"
								   " VALUES ($1, $2, $3, $4, $5) RETURNING id",
								   with_sql ? "WITH w AS (" : "", with_sql ? with_sql : "",
								   with_sql ? ") " : "");

		plan = SPI_prepare(sql, 5 + nargs, all_types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed");
		if (nplans < OUTBOX_PUT_PLANS && SPI_keepplan(plan) == 0)
		{
			plan_with[nplans] = with_sql ? MemoryContextStrdup(TopMemoryContext, with_sql) : NULL;
			plans[nplans++] = plan;
		}
	}
	if (SPI_execute_plan(plan, all_values, all_nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not queue an outbox message");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	cg_leave_owner(&priv);

	/* after commit, so senders never hear of a message that rolled back */
	announce_at_commit(channel);
	return id;
}
