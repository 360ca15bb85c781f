/*
 * outbox.c
 *		The one outbox: messages for customers and users (OTP codes, approval
 *		notices) wait in crmguard.outbox until an external sender claims them.
 *		The database never talks to an SMS or mail gateway itself.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "crmguard.h"

static SPIPlanPtr put_plan = NULL;

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
	CgPrivilegedContext priv;
	Oid			types[5] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	bool		isnull;
	int64		id;

	values[0] = CStringGetTextDatum(channel);
	values[1] = CStringGetTextDatum(recipient);
	values[2] = subject ? CStringGetTextDatum(subject) : (Datum) 0;
	nulls[2] = subject ? ' ' : 'n';
	values[3] = CStringGetTextDatum(body);
	values[4] = TimestampTzGetDatum(expires_at);
	nulls[4] = expires_at ? ' ' : 'n';

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (put_plan == NULL)
	{
		put_plan = SPI_prepare("INSERT INTO crmguard.outbox (channel, recipient, subject, body, expires_at)"
							   " VALUES ($1, $2, $3, $4, $5) RETURNING id", 5, types);
		if (put_plan == NULL)
			elog(ERROR, "SPI_prepare failed");
		SPI_keepplan(put_plan);
	}
	if (SPI_execute_plan(put_plan, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not queue an outbox message");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	cg_leave_owner(&priv);

	/* delivered at commit, so senders never see a message that rolled back */
	Async_Notify("crmguard_outbox", channel);
	return id;
}
