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
#include "utils/timestamp.h"

#include "crmguard.h"

static SPIPlanPtr put_plan = NULL;

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
