/*
 * otp.c
 *		OTP-gated status changes: a row may enter a gated value only after the
 *		acting principal verified, in the same transaction, a one-time code
 *		sent to the customer.  One code, one change.
 *
 * Rules are cached per backend and per table, so rows that enter no gated
 * value cost a hash lookup and a datum comparison; gated values are compared
 * with the column type's own equality and the column's collation.  Failed
 * attempts and issue counts live in shared memory (otp_shmem.c), where
 * ROLLBACK cannot undo them; a challenge whose counter is missing (the
 * server restarted) fails closed.
 *
 * A code goes to the recipient on record: the committed row's, never a value
 * written by the refused statement or its transaction, and never one set
 * within the rule's recipient_cooldown (crmguard.otp_recipient_change).
 */
#include "postgres.h"

#include <sodium.h>

#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "crmguard.h"
#include "otp.h"

/* ---------------------------------------------------------------------------
 * The rule cache
 * ---------------------------------------------------------------------------
 */
typedef struct OtpRule
{
	int64		id;
	char	   *name;
	AttrNumber	status_attno;
	Oid			status_base;	/* base type of the column (values are of it) */
	int32		status_typmod;
	Oid			status_collation;
	FmgrInfo	status_eq;		/* the type's equality */
	FmgrInfo	status_in;
	Oid			status_ioparam;
	int			nto;
	char	  **to_values;		/* as the rule spells them: the challenge's to_value */
	Datum	   *to_datums;
	int			nfrom;			/* -1: any */
	char	  **from_values;
	Datum	   *from_datums;
	int			napplies;		/* -1: everyone */
	char	  **applies_to;
	char	   *recipient_column;
	AttrNumber	recipient_attno;
	char	   *channel;
	bool		automatic;
	int			code_type;		/* 0 numeric, 1 alphabetic, 2 alphanumeric */
	int			code_length;
	Interval	valid_for;
	int			max_resends;
	int			max_attempts;
	char	   *condition;		/* compiled SQL, or NULL */
	Interval	recipient_cooldown;
	int			challenges_per_row;
	int			challenges_per_principal;
	Interval	challenge_window;
} OtpRule;

typedef struct OtpTable
{
	Oid			relid;			/* hash key */
	bool		valid;
	MemoryContext mcxt;
	int			nrules;
	OtpRule    *rules;
	AttrNumber	pk_attno;
	Oid			pk_type;
	int32		pk_typmod;
} OtpTable;

static MemoryContext rule_context = NULL;
static HTAB *rule_cache = NULL;
static Oid	known_rule_rel = InvalidOid;
static List *retired_contexts = NIL;	/* freed at transaction end */

/* Mark entries stale; they are rebuilt on next use, never freed under a caller */
static void
rule_cache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS seq;
	OtpTable   *entry;

	if (rule_cache == NULL)
		return;
	hash_seq_init(&seq, rule_cache);
	while ((entry = hash_seq_search(&seq)) != NULL)
		if (relid == InvalidOid || relid == known_rule_rel || relid == entry->relid)
			entry->valid = false;
}

/* Challenges verified in this transaction, waiting for their change */
typedef struct Verified
{
	int64		challenge;
	int64		rule;
	int64		principal;
	char	   *row_key;
	char	   *to_value;
} Verified;

static List *verified = NIL;	/* in TopTransactionContext */
static bool xact_callback_registered = false;

static void
otp_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PARALLEL_COMMIT && event != XACT_EVENT_PARALLEL_ABORT &&
		event != XACT_EVENT_PREPARE)
		return;
	verified = NIL;
	foreach(lc, retired_contexts)
		MemoryContextDelete((MemoryContext) lfirst(lc));
	list_free(retired_contexts);
	retired_contexts = NIL;
}

static void
otp_init(void)
{
	HASHCTL		ctl;

	if (rule_cache != NULL)
		return;
	if (rule_context == NULL)
		rule_context = AllocSetContextCreate(CacheMemoryContext, "crmguard otp rules",
											 ALLOCSET_SMALL_SIZES);
	if (!xact_callback_registered)
	{
		cg_register_relcache_callback(rule_cache_callback, (Datum) 0);
		RegisterXactCallback(otp_xact_callback, NULL);
		xact_callback_registered = true;
	}
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(OtpTable);
	ctl.hcxt = rule_context;
	rule_cache = hash_create("crmguard otp rules", 64, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

static int
array_to_strings(Datum array, bool isnull, char ***out)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	if (isnull)
	{
		*out = NULL;
		return -1;
	}
	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	*out = palloc(sizeof(char *) * Max(n, 1));
	for (i = 0; i < n; i++)
		(*out)[i] = nulls[i] ? pstrdup("") : TextDatumGetCString(elems[i]);
	return n;
}

static bool
string_in(const char *s, char **list, int n)
{
	int			i;

	for (i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return true;
	return false;
}

static AttrNumber
column_attno(Oid relid, const char *column, const char *rule)
{
	AttrNumber	attno = get_attnum(relid, column);

	if (attno == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_CG_INVALID_RULE),
				 errmsg("OTP rule \"%s\" refers to column \"%s\", which table %s no longer has",
						rule, column, get_rel_name(relid)),
				 errhint("Drop the rule and create it again.")));
	return attno;
}

/* The single-column primary key that names a row in challenges */
static bool
primary_key(Oid relid, AttrNumber *attno, Oid *type)
{
	Oid			types[1] = {OIDOID};
	Datum		values[1];
	bool		isnull;

	values[0] = ObjectIdGetDatum(relid);
	if (cg_execute_kept("SELECT a.attnum, a.atttypid FROM pg_catalog.pg_index i"
							  " JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid"
							  " AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0]"
							  " WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND i.indisprimary"
							  " AND i.indnkeyatts OPERATOR(pg_catalog.=) 1",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_index");
	if (SPI_processed == 0)
		return false;
	*attno = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*type = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/* Load the rules of one table; caller is connected to SPI as the extension owner */
static void
load_rules(OtpTable *entry)
{
	Oid			types[1] = {REGCLASSOID};
	Datum		values[1];
	MemoryContext old;
	uint64		i;
	Oid			pk_type;
	Oid			pk_collation;

	values[0] = ObjectIdGetDatum(entry->relid);
	if (cg_execute_kept("SELECT id, rule_name, status_column, to_values, recipient_column,"
							  " channel, delivery, code_type, code_length, valid_for, max_resends,"
							  " max_attempts, from_values, applies_to, compiled_condition,"
							  " recipient_cooldown, challenges_per_row, challenges_per_principal,"
							  " challenge_window"
							  " FROM crmguard.otp_rule WHERE target OPERATOR(pg_catalog.=) $1"
							  " ORDER BY id", 1, types, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.otp_rule");

	old = MemoryContextSwitchTo(entry->mcxt);
	entry->nrules = (int) SPI_processed;
	entry->rules = palloc0(sizeof(OtpRule) * Max(entry->nrules, 1));
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		OtpRule    *r = &entry->rules[i];
		bool		isnull;
		Datum		d;
		char	   *s;
		Oid			type;
		Oid			collation;
		Oid			in_fn;
		TypeCacheEntry *tc;

		r->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		r->name = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		r->status_attno = column_attno(entry->relid,
									   NameStr(*DatumGetName(SPI_getbinval(tup, desc, 3, &isnull))),
									   r->name);
		get_atttypetypmodcoll(entry->relid, r->status_attno, &type, &r->status_typmod, &collation);
		r->status_collation = collation;
		r->status_base = getBaseTypeAndTypmod(type, &r->status_typmod);
		tc = lookup_type_cache(r->status_base, TYPECACHE_EQ_OPR_FINFO);
		if (!OidIsValid(tc->eq_opr_finfo.fn_oid))
			ereport(ERROR,
					(errcode(ERRCODE_CG_INVALID_RULE),
					 errmsg("OTP rule \"%s\" gates a column of type %s, which has no equality operator",
							r->name, format_type_be(type)),
					 errhint("Drop the rule and create it again.")));
		fmgr_info_copy(&r->status_eq, &tc->eq_opr_finfo, entry->mcxt);
		getTypeInputInfo(r->status_base, &in_fn, &r->status_ioparam);
		fmgr_info_cxt(in_fn, &r->status_in, entry->mcxt);
		r->nto = array_to_strings(SPI_getbinval(tup, desc, 4, &isnull), isnull, &r->to_values);
		r->recipient_column = pstrdup(NameStr(*DatumGetName(SPI_getbinval(tup, desc, 5, &isnull))));
		r->recipient_attno = column_attno(entry->relid, r->recipient_column, r->name);
		r->channel = TextDatumGetCString(SPI_getbinval(tup, desc, 6, &isnull));
		r->automatic = strcmp(TextDatumGetCString(SPI_getbinval(tup, desc, 7, &isnull)), "automatic") == 0;
		s = TextDatumGetCString(SPI_getbinval(tup, desc, 8, &isnull));
		r->code_type = strcmp(s, "numeric") == 0 ? 0 : strcmp(s, "alphabetic") == 0 ? 1 : 2;
		r->code_length = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
		r->valid_for = *DatumGetIntervalP(SPI_getbinval(tup, desc, 10, &isnull));
		r->max_resends = DatumGetInt32(SPI_getbinval(tup, desc, 11, &isnull));
		r->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 12, &isnull));
		d = SPI_getbinval(tup, desc, 13, &isnull);
		r->nfrom = array_to_strings(d, isnull, &r->from_values);
		d = SPI_getbinval(tup, desc, 14, &isnull);
		r->napplies = array_to_strings(d, isnull, &r->applies_to);
		d = SPI_getbinval(tup, desc, 15, &isnull);
		r->condition = isnull ? NULL : TextDatumGetCString(d);
		r->recipient_cooldown = *DatumGetIntervalP(SPI_getbinval(tup, desc, 16, &isnull));
		r->challenges_per_row = DatumGetInt32(SPI_getbinval(tup, desc, 17, &isnull));
		r->challenges_per_principal = DatumGetInt32(SPI_getbinval(tup, desc, 18, &isnull));
		r->challenge_window = *DatumGetIntervalP(SPI_getbinval(tup, desc, 19, &isnull));
	}
	if (entry->nrules > 0)
	{
		if (!primary_key(entry->relid, &entry->pk_attno, &entry->pk_type))
			ereport(ERROR,
					(errcode(ERRCODE_CG_INVALID_RULE),
					 errmsg("table %s guarded by OTP rules has no single-column primary key",
							get_rel_name(entry->relid))));
		get_atttypetypmodcoll(entry->relid, entry->pk_attno, &pk_type, &entry->pk_typmod, &pk_collation);
	}
	MemoryContextSwitchTo(old);
}

/*
 * The gated values as datums of the column's base type.  Input functions
 * of base types are the server's or a superuser's C code; they still run
 * as the table's owner, like everything that touches its types.
 */
static void
load_values(OtpTable *entry)
{
	CgPrivilegedContext priv;
	MemoryContext old = MemoryContextSwitchTo(entry->mcxt);
	int			i;
	int			j;

	cg_enter_table_owner(&priv, entry->relid);
	for (i = 0; i < entry->nrules; i++)
	{
		OtpRule    *r = &entry->rules[i];

		r->to_datums = palloc(sizeof(Datum) * Max(r->nto, 1));
		for (j = 0; j < r->nto; j++)
			r->to_datums[j] = InputFunctionCall(&r->status_in, r->to_values[j],
												r->status_ioparam, r->status_typmod);
		r->from_datums = palloc(sizeof(Datum) * Max(r->nfrom, 1));
		for (j = 0; j < r->nfrom; j++)
			r->from_datums[j] = InputFunctionCall(&r->status_in, r->from_values[j],
												  r->status_ioparam, r->status_typmod);
	}
	cg_leave_owner(&priv);
	MemoryContextSwitchTo(old);
}

/* The rules of a table, from the cache; the hot path does no SPI when cached */
static OtpTable *
rules_for(Oid relid)
{
	OtpTable   *entry;
	bool		found;
	CgPrivilegedContext priv;

	otp_init();
	entry = hash_search(rule_cache, &relid, HASH_ENTER, &found);
	if (found && entry->valid)
		return entry;

	if (found && entry->mcxt)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		retired_contexts = lappend(retired_contexts, entry->mcxt);
		MemoryContextSwitchTo(old);
	}
	entry->mcxt = AllocSetContextCreate(rule_context, "crmguard otp table rules",
										ALLOCSET_SMALL_SIZES);
	entry->nrules = 0;
	entry->valid = false;

	known_rule_rel = cg_catalog()->otp_rule_rel;
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	load_rules(entry);
	SPI_finish();
	cg_leave_owner(&priv);
	load_values(entry);
	entry->valid = true;
	return entry;
}

/* Which of a list of values (of the rule's column) a value equals, or -1 */
static int
value_index(const OtpRule *rule, Datum value, const Datum *list, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		Datum		eq = FunctionCall2Coll((FmgrInfo *) &rule->status_eq, rule->status_collation,
										   value, list[i]);

		if (DatumGetBool(eq))
			return i;
	}
	return -1;
}

/* ---------------------------------------------------------------------------
 * Codes, hashes and recipients
 * ---------------------------------------------------------------------------
 */
static const char *const code_alphabets[] = {
	"0123456789",
	"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
	"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
};

/* randombytes_uniform draws without modulo bias */
static void
generate_code(int code_type, int length, char *out)
{
	const char *alphabet = code_alphabets[code_type];
	uint32_t	n = (uint32_t) strlen(alphabet);
	int			i;

	for (i = 0; i < length; i++)
		out[i] = alphabet[randombytes_uniform(n)];
	out[length] = '\0';
}

/* Keyed hash of a code, bound to its challenge id */
static void
code_hash(int64 challenge, const char *code, unsigned char *out)
{
	unsigned char key[CG_KEY_BYTES];
	unsigned char id[8];
	crypto_generichash_state st;
	int			i;

	for (i = 7; i >= 0; i--)
	{
		id[i] = (unsigned char) (challenge & 0xff);
		challenge >>= 8;
	}
	cg_subkey(CG_KEY_OTP, key);
	crypto_generichash_init(&st, key, sizeof(key), CG_HASH_BYTES);
	sodium_memzero(key, sizeof(key));
	crypto_generichash_update(&st, id, sizeof(id));
	crypto_generichash_update(&st, (const unsigned char *) code, strlen(code));
	crypto_generichash_final(&st, out, CG_HASH_BYTES);
}

/* "+39 347 555 0123" -> "+39 *** *** 123"; "anna@x.example" -> "a***@x.example" */
static char *
mask_recipient(const char *recipient)
{
	const char *at = strchr(recipient, '@');
	StringInfoData buf;
	int			digits = 0;
	int			i;
	int			len = strlen(recipient);

	initStringInfo(&buf);
	if (at != NULL)
	{
		if (at > recipient)
			appendStringInfoChar(&buf, recipient[0]);
		appendStringInfo(&buf, "***%s", at);
		return buf.data;
	}
	if (recipient[0] == '+')
	{
		appendStringInfoChar(&buf, '+');
		for (i = 1; i < len && isdigit((unsigned char) recipient[i]) && i < 3; i++)
			appendStringInfoChar(&buf, recipient[i]);
		appendStringInfoChar(&buf, ' ');
	}
	appendStringInfoString(&buf, "*** *** ");
	for (i = len - 1; i >= 0 && digits < 3; i--)
		if (isdigit((unsigned char) recipient[i]))
			digits++;
	for (i = i + 1; i < len; i++)
		if (isdigit((unsigned char) recipient[i]))
			appendStringInfoChar(&buf, recipient[i]);
	return buf.data;
}

/* "5 minutes", "2 hours": for the customer's message, whatever the IntervalStyle */
static char *
interval_text(const Interval *iv)
{
	int64		seconds = iv->time / USECS_PER_SEC +
		(int64) (iv->day + iv->month * DAYS_PER_MONTH) * SECS_PER_DAY;

	if (seconds % SECS_PER_DAY == 0)
		return psprintf(INT64_FORMAT " day%s", seconds / SECS_PER_DAY,
						seconds == SECS_PER_DAY ? "" : "s");
	if (seconds % SECS_PER_HOUR == 0)
		return psprintf(INT64_FORMAT " hour%s", seconds / SECS_PER_HOUR,
						seconds == SECS_PER_HOUR ? "" : "s");
	if (seconds % SECS_PER_MINUTE == 0)
		return psprintf(INT64_FORMAT " minute%s", seconds / SECS_PER_MINUTE,
						seconds == SECS_PER_MINUTE ? "" : "s");
	return psprintf(INT64_FORMAT " second%s", seconds, seconds == 1 ? "" : "s");
}

/*
 * Issue a code for a challenge (new, or a resend of a live one), in the
 * current transaction: store its keyed hash, start counting attempts, and
 * queue the message.  The code itself lives only in the outbox message.
 */
static void
send_code(const OtpRule *rule, int64 challenge, bool is_new, int64 principal,
		  const char *row_key, const char *to_value, const char *recipient,
		  bool undo_on_abort)
{
	char		code[16];
	unsigned char hash[CG_HASH_BYTES];
	bytea	   *hash_datum = palloc(VARHDRSZ + CG_HASH_BYTES);
	TimestampTz expires_at;
	char	   *body;

	generate_code(rule->code_type, rule->code_length, code);
	code_hash(challenge, code, hash);
	SET_VARSIZE(hash_datum, VARHDRSZ + CG_HASH_BYTES);
	memcpy(VARDATA(hash_datum), hash, CG_HASH_BYTES);
	expires_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														 TimestampTzGetDatum(GetCurrentTimestamp()),
														 IntervalPGetDatum(&rule->valid_for)));
	body = psprintf("%s: " CG_OTP_CODE_MARK "%s. It is valid for %s.", rule->name, code,
					interval_text(&rule->valid_for));
	sodium_memzero(code, sizeof(code));

	if (is_new)
	{
		static const char *const columns[10] = {"id", "rule_id", "row_key", "to_value", "principal",
		"recipient_masked", "code_hash", "created_at", "expires_at", "resends"};
		static const Oid types[10] = {INT8OID, INT8OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, BYTEAOID,
		TIMESTAMPTZOID, TIMESTAMPTZOID, INT4OID};
		Datum		values[10];
		bool		nulls[10] = {false};
		ScanKeyData key;

		/*
		 * Appended without a statement, so without the foreign key's check:
		 * the rule's row is locked as that check locks it, and a rule dropped
		 * meanwhile refuses the code.
		 */
		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(rule->id));
		if (!cg_lock_catalog_row(cg_catalog()->otp_rule_rel, "otp_rule_pkey", 1, &key,
								 LockTupleKeyShare, 0, NULL, NULL, NULL))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("OTP rule \"%s\" was dropped", rule->name)));
		values[0] = Int64GetDatum(challenge);
		values[1] = Int64GetDatum(rule->id);
		values[2] = CStringGetTextDatum(row_key);
		values[3] = CStringGetTextDatum(to_value);
		values[4] = Int64GetDatum(principal);
		nulls[4] = principal == 0;
		values[5] = CStringGetTextDatum(mask_recipient(recipient));
		values[6] = PointerGetDatum(hash_datum);
		values[7] = TimestampTzGetDatum(GetCurrentTimestamp());
		values[8] = TimestampTzGetDatum(expires_at);
		values[9] = Int32GetDatum(0);
		cg_insert_catalog_rows(get_relname_relid("otp_challenge_state", cg_catalog()->schema),
							   10, columns, types, 1, values, nulls);
	}
	else
	{
		CgPrivilegedContext priv;
		Oid			types[3] = {INT8OID, BYTEAOID, TIMESTAMPTZOID};
		Datum		values[3];
		bool		resent;

		values[0] = Int64GetDatum(challenge);
		values[1] = PointerGetDatum(hash_datum);
		values[2] = TimestampTzGetDatum(expires_at);
		cg_enter_owner(&priv);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (cg_execute_kept("UPDATE crmguard.otp_challenge_state c"
							" SET code_hash = $2, expires_at = $3,"
							"  resends = c.resends OPERATOR(pg_catalog.+) 1"
							" WHERE c.id OPERATOR(pg_catalog.=) $1 AND c.consumed_at IS NULL",
							3, types, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not re-send the OTP challenge");
		resent = SPI_processed == 1;
		SPI_finish();
		cg_leave_owner(&priv);
		/* used, or purged, since it was found live: no code for it */
		if (!resent)
			ereport(ERROR,
					(errcode(ERRCODE_CG_OTP_EXPIRED),
					 errmsg("OTP challenge " INT64_FORMAT " was used meanwhile", challenge),
					 errhint("Request a new code.")));
	}
	cg_outbox_put_expiring(rule->channel, recipient, rule->name, body, expires_at);
	sodium_memzero(body, strlen(body));

	otp_attempts_register(challenge, principal, rule->max_attempts, expires_at, undo_on_abort);
}

/* ---------------------------------------------------------------------------
 * The guard trigger
 * ---------------------------------------------------------------------------
 */
typedef struct LiveChallenge
{
	int64		id;
	char	   *masked;
	int			resends;
	int64		void_id;		/* not live: the newest such challenge was void */
} LiveChallenge;

/* A scan of a row's challenges for one value: the newest live one of a principal */
typedef struct LiveScan
{
	int64		principal;
	TimestampTz now;
	int64		id;				/* 0: none yet */
	char	   *masked;
	int			resends;
	TimestampTz since;			/* the recipient changes after this one count */
	bool		recent;
} LiveScan;

static void
newest_live(Datum *values, bool *nulls, void *arg)
{
	LiveScan   *scan = arg;
	int64		id = DatumGetInt64(values[0]);

	if ((nulls[1] ? 0 : DatumGetInt64(values[1])) != scan->principal || !nulls[2] ||
		DatumGetTimestampTz(values[3]) <= scan->now || id <= scan->id)
		return;
	scan->id = id;
	scan->masked = MemoryContextStrdup(CurTransactionContext, TextDatumGetCString(values[4]));
	scan->resends = DatumGetInt32(values[5]);
}

static void
recent_change(Datum *values, bool *nulls, void *arg)
{
	LiveScan   *scan = arg;

	if (DatumGetTimestampTz(values[0]) > scan->since)
		scan->recent = true;
}

/*
 * The newest unused, unexpired challenge of a row, value and principal,
 * whose attempt counter shared memory holds.  One without a counter is
 * void (crmguard.otp_challenge says so): the server restarted, or the
 * database was restored from a dump, after its code was sent.  It is not
 * live for the guard, request_otp or pending_challenge either, and
 * verify_otp refuses it, so all four describe it the same way.
 *
 * With recent, also whether the row's recipient was set or changed within
 * the rule's recipient_cooldown (changes of this transaction count too: they
 * are visible here): a code is about to be issued.
 *
 * Both are read through crmguard's indexes, not by statements: request_otp
 * and the guard run this on every code and every gated change.  As a
 * statement would, it sees what this transaction wrote so far.
 */
static bool
find_live_challenge(const OtpRule *rule, Oid relid, const char *row_key, const char *to_value,
					int64 principal, LiveChallenge *out, bool *recent)
{
	static const char *const challenge_columns[6] = {"id", "principal", "consumed_at", "expires_at",
	"recipient_masked", "resends"};
	static const char *const change_columns[1] = {"changed_at"};
	Oid			schema = cg_catalog()->schema;
	Oid			challenges = get_relname_relid("otp_challenge_state", schema);
	Oid			changes = get_relname_relid("otp_recipient_change", schema);
	bool		check_recent = recent != NULL &&
		(rule->recipient_cooldown.time != 0 || rule->recipient_cooldown.day != 0 ||
		 rule->recipient_cooldown.month != 0);
	LiveScan	live;
	ScanKeyData keys[3];
	Snapshot	snapshot;
	bool		found;

	if (!OidIsValid(challenges) || !OidIsValid(changes))
		elog(ERROR, "crmguard.otp_challenge_state or crmguard.otp_recipient_change does not exist");
	memset(&live, 0, sizeof(live));
	live.principal = principal;
	live.now = GetCurrentTimestamp();
	CommandCounterIncrement();
	snapshot = GetTransactionSnapshot();

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(rule->id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(row_key));
	ScanKeyInit(&keys[2], 3, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(to_value));
	cg_scan_catalog_by_key(challenges, "otp_challenge_live_idx", 3, keys, snapshot,
						   6, challenge_columns, newest_live, &live);

	if (check_recent)
	{
		live.since = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval,
															 TimestampTzGetDatum(live.now),
															 IntervalPGetDatum(&rule->recipient_cooldown)));
		ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
		ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(row_key));
		cg_scan_catalog_by_key(changes, "otp_recipient_change_row_idx", 2, keys, snapshot,
							   1, change_columns, recent_change, &live);
	}
	if (recent)
		*recent = live.recent;

	out->void_id = 0;
	found = live.id != 0;
	if (found)
	{
		int			attempts;
		bool		locked;

		out->id = live.id;
		out->masked = live.masked;
		out->resends = live.resends;
		found = otp_attempts_get(out->id, &attempts, &locked);
		if (!found)
			out->void_id = out->id;
	}
	return found;
}

/* A new challenge id: nextval of crmguard's sequence, as its owner, without a statement */
static int64
next_challenge_id(void)
{
	CgPrivilegedContext priv;
	Oid			seq = get_relname_relid("otp_challenge_id_seq", cg_catalog()->schema);
	int64		id;

	if (!OidIsValid(seq))
		elog(ERROR, "sequence crmguard.otp_challenge_id_seq does not exist");
	cg_enter_owner(&priv);
	id = nextval_internal(seq, true);
	cg_leave_owner(&priv);
	return id;
}

static char *
audit_detail(const char *rule, int64 challenge, const char *to_value, const char *reason)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"rule\": ");
	escape_json(&buf, rule);
	if (challenge)
		appendStringInfo(&buf, ", \"challenge\": " INT64_FORMAT, challenge);
	if (to_value)
	{
		appendStringInfoString(&buf, ", \"to_value\": ");
		escape_json(&buf, to_value);
	}
	if (reason)
	{
		appendStringInfoString(&buf, ", \"reason\": ");
		escape_json(&buf, reason);
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

static Jsonb *
jsonb_of(const char *json)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
}

/*
 * Challenges this backend asked the worker to issue (automatic delivery).
 * The worker commits them a moment after the refusal: until then a repeated
 * change names the same challenge instead of sending another code, and
 * pending_challenge() waits for it.  Session memory: it outlives the
 * refused transaction, and holds only the last few.
 */
typedef struct IssuedChallenge
{
	int64		id;
	int64		rule;
	int64		principal;
	TimestampTz issued_at;
	char		row_key[NAMEDATALEN];
	char		to_value[NAMEDATALEN];
	char		masked[NAMEDATALEN];
} IssuedChallenge;

#define OTP_RECENTLY_ISSUED 16
static IssuedChallenge recently_issued[OTP_RECENTLY_ISSUED];
static int	next_issued = 0;

static void
remember_issued(const OtpRule *rule, int64 id, int64 principal, const char *row_key,
				const char *to_value, const char *masked)
{
	IssuedChallenge *ic = &recently_issued[next_issued];

	if (strlen(row_key) >= NAMEDATALEN || strlen(to_value) >= NAMEDATALEN)
		return;					/* long keys are simply not remembered */
	next_issued = (next_issued + 1) % OTP_RECENTLY_ISSUED;
	ic->id = id;
	ic->rule = rule->id;
	ic->principal = principal;
	ic->issued_at = GetCurrentTimestamp();
	strlcpy(ic->row_key, row_key, NAMEDATALEN);
	strlcpy(ic->to_value, to_value, NAMEDATALEN);
	strlcpy(ic->masked, masked, NAMEDATALEN);
}

/* Is there a challenge with this id at all (in any state)? */
static bool
challenge_exists(int64 id)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	values[0] = Int64GetDatum(id);
	return cg_catalog_has_row("SELECT 1 FROM crmguard.otp_challenge_state WHERE id OPERATOR(pg_catalog.=) $1",
							  1, types, values);
}

/*
 * A challenge this backend asked for a moment ago (10 s: the worker takes
 * milliseconds) that the worker has not committed yet; one that exists is
 * no longer in flight (it is in the table, live or not).
 */
static IssuedChallenge *
issued_here(const OtpRule *rule, int64 principal, const char *row_key, const char *to_value)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	for (i = 0; i < OTP_RECENTLY_ISSUED; i++)
	{
		IssuedChallenge *ic = &recently_issued[i];

		if (ic->id == 0 || ic->rule != rule->id || ic->principal != principal ||
			strcmp(ic->row_key, row_key) != 0 || strcmp(ic->to_value, to_value) != 0)
			continue;
		if (TimestampDifferenceExceeds(ic->issued_at, now, 10000) || challenge_exists(ic->id))
		{
			ic->id = 0;
			continue;
		}
		return ic;
	}
	return NULL;
}

/*
 * The live challenge of a row, value and principal; one this backend had
 * issued is waited for (up to a second) until the worker has committed it.
 */
static bool
find_or_await_challenge(const OtpRule *rule, Oid relid, const char *row_key, const char *to_value,
						int64 principal, LiveChallenge *out)
{
	IssuedChallenge *ic;
	int			i;

	if (find_live_challenge(rule, relid, row_key, to_value, principal, out, NULL))
		return true;
	ic = issued_here(rule, principal, row_key, to_value);
	for (i = 0; ic != NULL && ic->id != 0 && i < 100; i++)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (find_live_challenge(rule, relid, row_key, to_value, principal, out, NULL))
			return true;
	}
	return false;
}

/* a challenge not used yet (cg_update_catalog_row's test) */
static bool
unconsumed(Datum *values, bool *nulls, void *arg)
{
	return nulls[0];
}

/*
 * Use up a challenge verified in this transaction: one code, one change.
 * Of two transactions that verified the same code, the second waits for the
 * first and finds the challenge used.
 */
static void
consume(Verified *v, const OtpRule *rule, Relation rel)
{
	static const char *const test_columns[1] = {"consumed_at"};
	static const char *const columns[1] = {"consumed_at"};
	static const Oid types[1] = {TIMESTAMPTZOID};
	Datum		now = TimestampTzGetDatum(GetCurrentTimestamp());
	ScanKeyData key;
	bool		updated;

	/* UPDATE ... SET consumed_at = now WHERE id = challenge AND consumed_at IS NULL */
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(v->challenge));
	updated = cg_update_catalog_row(get_relname_relid("otp_challenge_state", cg_catalog()->schema),
									"otp_challenge_state_pkey", 1, &key,
									1, test_columns, unconsumed, NULL,
									1, columns, types, &now, NULL);

	verified = list_delete_ptr(verified, v);
	if (!updated)
	{
		cg_audit_durable("otp_refused", RelationGetRelationName(rel), v->row_key,
						 audit_detail(rule->name, v->challenge, v->to_value, "already used"));
		ereport(ERROR,
				(errcode(ERRCODE_CG_OTP_EXPIRED),
				 errmsg("OTP challenge " INT64_FORMAT " was already used", v->challenge)));
	}
	otp_attempts_release_at_commit(v->challenge);
	cg_audit("otp_consumed", RelationGetRelationName(rel), v->row_key,
			 jsonb_of(audit_detail(rule->name, v->challenge, v->to_value, NULL)));
}

static char *
cooldown_detail(const OtpRule *rule)
{
	return psprintf("The recipient of this row was set or changed within the last %s, so no code is sent to it yet.",
					interval_text(&rule->recipient_cooldown));
}

/* Count a new challenge against the rule's rate limits, or refuse with CG004 */
static void
take_rate(const OtpRule *rule, Oid relid, const char *row_key, const char *to_value,
		  int64 principal)
{
	OtpRateResult r = otp_rate_take(rule->id, principal, row_key, rule->challenges_per_row,
									rule->challenges_per_principal, &rule->challenge_window);
	char	   *detail;

	if (r == OTP_RATE_OK)
		return;
	if (r == OTP_RATE_ROW)
		detail = psprintf("OTP rule \"%s\" allows %d new challenges per row in %s.", rule->name,
						  rule->challenges_per_row, interval_text(&rule->challenge_window));
	else if (r == OTP_RATE_PRINCIPAL)
		detail = psprintf("OTP rule \"%s\" allows %d new challenges per principal in %s.", rule->name,
						  rule->challenges_per_principal, interval_text(&rule->challenge_window));
	else
		detail = pstrdup("This principal or this database has used up its share of OTP rate counters for now.");
	cg_audit_durable("otp_refused", get_rel_name(relid), row_key,
					 audit_detail(rule->name, 0, to_value,
								  r == OTP_RATE_ROW ? "row rate limit" :
								  r == OTP_RATE_PRINCIPAL ? "principal rate limit" : "counters full"));
	ereport(ERROR,
			(errcode(ERRCODE_CG_OTP_RESENDS),
			 errmsg("too many OTP challenges for row \"%s\" of table %s", row_key, get_rel_name(relid)),
			 errdetail_internal("%s", detail),
			 errhint("Wait, then request a new code.")));
}

static void refuse_required(const OtpRule *rule, Relation rel, const char *to_value,
							const char *detail, const char *hint) pg_attribute_noreturn();
static void refuse_unsent(const OtpRule *rule, Relation rel, const char *row_key,
						  const char *to_value, const char *reason, const char *detail,
						  const char *hint) pg_attribute_noreturn();

/* The CG001 refusal: table and column as error fields, DETAIL "Challenge <id> ..." */
static void
refuse_required(const OtpRule *rule, Relation rel, const char *to_value, const char *detail,
				const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_CG_OTP_REQUIRED),
			 errmsg("OTP required to set \"%s\" to \"%s\"",
					get_attname(RelationGetRelid(rel), rule->status_attno, false), to_value),
			 errdetail_internal("%s", detail),
			 hint ? errhint("%s", hint) : 0,
			 errtablecol(rel, rule->status_attno)));
}

/* Refuse a gated change for which no code can be sent, on the record */
static void
refuse_unsent(const OtpRule *rule, Relation rel, const char *row_key, const char *to_value,
			  const char *reason, const char *detail, const char *hint)
{
	cg_audit_durable("otp_required", RelationGetRelationName(rel), row_key,
					 audit_detail(rule->name, 0, to_value, reason));
	refuse_required(rule, rel, to_value, detail, hint);
}

static char *
pending_detail(int64 challenge, const char *masked)
{
	return psprintf("Challenge " INT64_FORMAT " is pending; its code was sent to %s.",
					challenge, masked);
}

static char *
verify_hint(int64 challenge)
{
	return psprintf("Call crmguard.verify_otp(" INT64_FORMAT ", code) in this transaction, then repeat the change.",
					challenge);
}

/*
 * Refuse a gated change; with automatic delivery, issue a code on the way
 * out.  The code goes to the recipient on record: the worker reads it from
 * the committed row in a transaction of its own, so nothing the refused
 * statement or its transaction wrote can redirect it.  old is the row before
 * an UPDATE, NULL for an INSERT.
 */
static void
refuse(OtpTable *entry, const OtpRule *rule, Relation rel, HeapTuple old,
	   const char *row_key, const char *to_value, int64 principal)
{
	TupleDesc	desc = RelationGetDescr(rel);
	LiveChallenge live;
	int64		challenge = 0;
	char	   *detail;
	char	   *hint;
	IssuedChallenge *ic;
	bool		recent = false;

	if (find_live_challenge(rule, entry->relid, row_key, to_value, principal, &live,
							rule->automatic ? &recent : NULL))
	{
		challenge = live.id;
		detail = pending_detail(live.id, live.masked);
		hint = verify_hint(live.id);
	}
	else if (rule->automatic &&
			 (ic = issued_here(rule, principal, row_key, to_value)) != NULL)
	{
		/* issued a moment ago, the worker is still at it: no second code */
		challenge = ic->id;
		detail = pending_detail(ic->id, ic->masked);
		hint = verify_hint(ic->id);
	}
	else if (rule->automatic)
	{
		bool		isnull = true;
		Datum		d = (Datum) 0;
		char	   *recipient = NULL;
		StringInfoData job;
		Oid			relid = entry->relid;
		TimestampTz expires_at;

		if (old == NULL)
			refuse_unsent(rule, rel, row_key, to_value, "new row",
						  "A new row has no recipient on record, so no code can be sent for it.",
						  "Insert the row with another value and commit it; then change the value with a code.");
		if (TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(old->t_data)))
			refuse_unsent(rule, rel, row_key, to_value, "row changed in this transaction",
						  "The row was changed earlier in this transaction, so no code is sent before that change is committed.",
						  "Commit the other change first, then repeat this one.");
		d = heap_getattr(old, rule->recipient_attno, desc, &isnull);
		if (!isnull)
		{
			Oid			out_fn;
			bool		varlena;

			getTypeOutputInfo(TupleDescAttr(desc, rule->recipient_attno - 1)->atttypid,
							  &out_fn, &varlena);
			recipient = OidOutputFunctionCall(out_fn, d);
		}
		if (recipient == NULL || recipient[0] == '\0')
			refuse_unsent(rule, rel, row_key, to_value, "no recipient",
						  psprintf("The row has no recipient in column \"%s\", so no code can be sent.",
								   rule->recipient_column), NULL);
		if (recent)
			refuse_unsent(rule, rel, row_key, to_value, "recipient changed recently",
						  cooldown_detail(rule),
						  "Wait until the cooldown has passed, or have the recipient confirmed by someone who may change it.");
		take_rate(rule, relid, row_key, to_value, principal);

		challenge = next_challenge_id();
		/* the place in shared memory is the worker's: it outlives this rollback */
		expires_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
															 TimestampTzGetDatum(GetCurrentTimestamp()),
															 IntervalPGetDatum(&rule->valid_for)));
		otp_attempts_register(challenge, principal, rule->max_attempts, expires_at, false);
		initStringInfo(&job);
		appendBinaryStringInfo(&job, (char *) &relid, sizeof(relid));
		appendBinaryStringInfo(&job, (char *) &rule->id, sizeof(int64));
		appendBinaryStringInfo(&job, (char *) &challenge, sizeof(challenge));
		appendBinaryStringInfo(&job, (char *) &principal, sizeof(principal));
		appendBinaryStringInfo(&job, row_key, strlen(row_key) + 1);
		appendBinaryStringInfo(&job, to_value, strlen(to_value) + 1);
		if (!cg_enqueue(CG_JOB_OTP_ISSUE, job.data, job.len))
		{
			otp_attempts_forget(challenge);
			refuse_required(rule, rel, to_value, "No code could be sent: this database's share of the crmguard queue is full, or its worker cannot start.",
							"Call crmguard.request_otp() and try again.");
		}
		remember_issued(rule, challenge, principal, row_key, to_value,
						mask_recipient(recipient));
		detail = pending_detail(challenge, mask_recipient(recipient));
		hint = verify_hint(challenge);
	}
	else
	{
		detail = live.void_id ?
			psprintf("No live code exists for this change: challenge " INT64_FORMAT " is void, because the server restarted or the database was restored after its code was sent.",
					 live.void_id) :
			pstrdup("No code has been requested for this change.");
		hint = psprintf("Call crmguard.request_otp('%s', '%s', '%s'), then crmguard.verify_otp(challenge, code) in the same transaction, and repeat the change.",
						quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												   RelationGetRelationName(rel)),
						row_key, to_value);
	}

	cg_audit_durable("otp_required", RelationGetRelationName(rel), row_key,
					 audit_detail(rule->name, challenge, to_value, NULL));
	refuse_required(rule, rel, to_value, detail, hint);
}

/*
 * A row entered a gated value: keep it only with a verified challenge.  A
 * rule limited to CRM roles gates those roles and every session with no
 * principal: nobody is never exempt.
 */
static void
guard_row(OtpTable *entry, const OtpRule *rule, Relation rel, HeapTuple tuple,
		  HeapTuple old, const char *to_value)
{
	TupleDesc	desc = RelationGetDescr(rel);
	const CgPrincipal *p = cg_current_principal();
	int64		principal = p ? p->id : 0;
	bool		isnull;
	Datum		key;
	char	   *row_key;
	ListCell   *lc;

	if (rule->napplies >= 0 && p != NULL)
	{
		bool		applies = false;
		int			i;

		for (i = 0; i < p->nroles && !applies; i++)
			applies = string_in(p->roles[i], rule->applies_to, rule->napplies);
		if (!applies)
			return;
	}
	if (rule->condition &&
		!cg_criteria_row_matches(entry->relid, rule->condition,
								 heap_copy_tuple_as_datum(tuple, desc)))
		return;

	key = heap_getattr(tuple, entry->pk_attno, desc, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("OTP-guarded row of table %s has no primary key value",
						RelationGetRelationName(rel))));
	/* as its challenge names it, whatever this session's DateStyle or TimeZone */
	row_key = cg_row_key_output(entry->pk_type, key);

	foreach(lc, verified)
	{
		Verified   *v = (Verified *) lfirst(lc);

		if (v->rule == rule->id && v->principal == principal &&
			strcmp(v->row_key, row_key) == 0 && strcmp(v->to_value, to_value) == 0)
		{
			consume(v, rule, rel);
			return;
		}
	}
	refuse(entry, rule, rel, old, row_key, to_value, principal);
}

/* Does column attno hold the same bytes (or NULL) in both versions of a row? */
static bool
column_unchanged(TupleDesc desc, AttrNumber attno, HeapTuple oldtuple, HeapTuple newtuple)
{
	Form_pg_attribute att = TupleDescAttr(desc, attno - 1);
	bool		old_null;
	bool		new_null;
	Datum		o = heap_getattr(oldtuple, attno, desc, &old_null);
	Datum		n = heap_getattr(newtuple, attno, desc, &new_null);

	return old_null == new_null && (old_null || datumIsEqual(o, n, att->attbyval, att->attlen));
}

/*
 * A row's key names it in its challenges (and in the recipient changes the
 * cooldown reads): a code verified for one row must never set another, so
 * the key of an OTP-guarded row cannot change.
 */
static void
refuse_key_change(OtpTable *entry, Relation rel, HeapTuple oldtuple, HeapTuple newtuple)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Form_pg_attribute att = TupleDescAttr(desc, entry->pk_attno - 1);
	bool		old_null;
	Datum		old_key;

	if (column_unchanged(desc, entry->pk_attno, oldtuple, newtuple))
		return;
	cg_require_attested();
	old_key = heap_getattr(oldtuple, entry->pk_attno, desc, &old_null);
	cg_audit_durable("otp_refused", RelationGetRelationName(rel),
					 old_null ? NULL : cg_row_key_output(entry->pk_type, old_key),
					 "{\"reason\": \"key changed\"}");
	ereport(ERROR,
			(errcode(ERRCODE_RESTRICT_VIOLATION),
			 errmsg("the key of a row of OTP-guarded table %s cannot change", RelationGetRelationName(rel)),
			 errdetail("Column \"%s\" names the row in its OTP challenges.", NameStr(att->attname)),
			 errtablecol(rel, entry->pk_attno)));
}

/* Does a rule before rule i name the same recipient column? */
static bool
recipient_of_earlier_rule(const OtpTable *entry, int i)
{
	int			j;

	for (j = 0; j < i; j++)
		if (strcmp(entry->rules[j].recipient_column, entry->rules[i].recipient_column) == 0)
			return true;
	return false;
}

/*
 * A recipient column of an OTP-guarded row was set (INSERT, oldtuple NULL)
 * or changed (UPDATE): note when, so no code goes to it within the rule's
 * cooldown, and audit a change.  A delete and re-insert is a change too.
 */
static void
note_recipient_change(OtpTable *entry, Relation rel, HeapTuple oldtuple, HeapTuple newtuple)
{
	static SPIPlanPtr plan = NULL;
	TupleDesc	desc = RelationGetDescr(rel);
	const CgPrincipal *p;
	CgPrivilegedContext priv;
	Oid			types[3] = {OIDOID, TEXTOID, INT8OID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	StringInfoData changed;
	bool		isnull;
	bool		any_set = false;
	Datum		key;
	char	   *row_key;
	int			i;

	/* which recipient columns changed, for the audit entry */
	initStringInfo(&changed);
	for (i = 0; i < entry->nrules; i++)
	{
		AttrNumber	attno = entry->rules[i].recipient_attno;

		if (!heap_attisnull(newtuple, attno, desc))
			any_set = true;
		if (oldtuple == NULL || column_unchanged(desc, attno, oldtuple, newtuple))
			continue;
		if (!recipient_of_earlier_rule(entry, i))
		{
			if (changed.len == 0)
				appendStringInfoString(&changed, "{\"column\": ");
			else
				appendStringInfoString(&changed, ", \"also\": ");
			escape_json(&changed, entry->rules[i].recipient_column);
		}
	}
	if (oldtuple ? changed.len == 0 : !any_set)
		return;

	key = heap_getattr(newtuple, entry->pk_attno, desc, &isnull);
	if (isnull)
		return;
	row_key = cg_row_key_output(entry->pk_type, key);
	p = cg_current_principal();

	values[0] = ObjectIdGetDatum(RelationGetRelid(rel));
	values[1] = CStringGetTextDatum(row_key);
	values[2] = Int64GetDatum(p ? p->id : 0);
	nulls[2] = p ? ' ' : 'n';
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (plan == NULL)
	{
		plan = SPI_prepare("INSERT INTO crmguard.otp_recipient_change (target, row_key, principal)"
						   " VALUES ($1, $2, $3)", 3, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed");
		SPI_keepplan(plan);
	}
	if (SPI_execute_plan(plan, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not record a recipient change");
	SPI_finish();
	cg_leave_owner(&priv);

	if (oldtuple)
	{
		appendStringInfoChar(&changed, '}');
		cg_audit("otp_recipient_changed", RelationGetRelationName(rel), row_key,
				 jsonb_of(changed.data));
	}
}

/*
 * The OTP guard, as an AFTER INSERT and an AFTER UPDATE row trigger whose
 * WHEN lets through only rows that concern it: a row's key cannot change,
 * a row entering a gated value needs a verified challenge, and a recipient
 * set or changed is noted -- however it changed, a BEFORE trigger of the
 * table's own included (a column list on the trigger would miss that).
 */
PG_FUNCTION_INFO_V1(crmguard_otp_guard);
Datum
crmguard_otp_guard(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	HeapTuple	newtuple;
	HeapTuple	oldtuple;
	TupleDesc	desc;
	OtpTable   *entry;
	int			i;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event)))
		elog(ERROR, "crmguard_otp_guard: must be an AFTER INSERT or UPDATE row trigger");

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		newtuple = td->tg_newtuple;
		oldtuple = td->tg_trigtuple;
	}
	else
	{
		newtuple = td->tg_trigtuple;
		oldtuple = NULL;
	}
	desc = RelationGetDescr(td->tg_relation);
	entry = rules_for(RelationGetRelid(td->tg_relation));

	/*
	 * The guard on a table without an OTP rule of its own: a partition that
	 * PostgreSQL gave its parent's guard (a 1.0 rule on a partitioned
	 * table), or a copy someone made.  It cannot tell what is gated: fail
	 * closed, for everyone.
	 */
	if (entry->nrules == 0)
	{
		cg_audit_durable("otp_refused", RelationGetRelationName(td->tg_relation), NULL,
						 "{\"reason\": \"no OTP rule on this table\"}");
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has crmguard's OTP guard but no OTP rule",
						RelationGetRelationName(td->tg_relation)),
				 errdetail("The guard cannot tell which values are gated, so it refuses every change it is called for; the attempt was audited."),
				 errhint("OTP rules apply to ordinary tables outside any inheritance tree; drop the guard's trigger or put the rule on this table.")));
	}
	if (oldtuple)
		refuse_key_change(entry, td->tg_relation, oldtuple, newtuple);

	for (i = 0; i < entry->nrules; i++)
	{
		OtpRule    *rule = &entry->rules[i];
		bool		new_null;
		bool		old_null = true;
		Datum		new_value = heap_getattr(newtuple, rule->status_attno, desc, &new_null);
		Datum		old_value = (Datum) 0;
		int			to;

		if (new_null)
			continue;
		to = value_index(rule, new_value, rule->to_datums, rule->nto);
		if (to < 0)
			continue;
		cg_require_attested();
		if (oldtuple)
		{
			old_value = heap_getattr(oldtuple, rule->status_attno, desc, &old_null);
			if (!old_null && value_index(rule, old_value, &new_value, 1) == 0)
			{
				/*
				 * Already in the value: entering the gated state only if the
				 * rule's condition held not before and holds now (guard_row
				 * judges the new row), whatever value it came from.
				 */
				if (rule->condition == NULL ||
					cg_criteria_row_matches(entry->relid, rule->condition,
											heap_copy_tuple_as_datum(oldtuple, desc)))
					continue;
				guard_row(entry, rule, td->tg_relation, newtuple, oldtuple, rule->to_values[to]);
				continue;
			}
		}
		if (rule->nfrom >= 0 &&
			(old_null || value_index(rule, old_value, rule->from_datums, rule->nfrom) < 0))
			continue;
		guard_row(entry, rule, td->tg_relation, newtuple, oldtuple, rule->to_values[to]);
	}
	note_recipient_change(entry, td->tg_relation, oldtuple, newtuple);
	return PointerGetDatum(NULL);	/* an AFTER trigger: the result is ignored */
}

/* ---------------------------------------------------------------------------
 * SQL functions
 * ---------------------------------------------------------------------------
 */

/*
 * The rule gating a value given as text, and the value as the rule spells
 * it.  Any spelling the column's type takes for it counts ("delivered" for
 * a citext "Delivered", "1" for a numeric "1.0"); it is read as the table's
 * owner, and a spelling a column's type refuses simply matches nothing.
 */
static int
typed_match(OtpRule *rule, const char *to_value)
{
	MemoryContext context = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile int match = -1;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(context);
	PG_TRY();
	{
		Datum		d = InputFunctionCall(&rule->status_in, (char *) to_value,
										  rule->status_ioparam, rule->status_typmod);

		match = value_index(rule, d, rule->to_datums, rule->nto);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(context);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(context);
	CurrentResourceOwner = owner;
	return match;
}

static OtpRule *
rule_for_value(OtpTable *entry, const char *to_value, const char **canonical)
{
	CgPrivilegedContext priv;
	OtpRule    *found = NULL;
	int			i;
	int			j;

	for (i = 0; i < entry->nrules && !found; i++)
		for (j = 0; j < entry->rules[i].nto && !found; j++)
			if (strcmp(entry->rules[i].to_values[j], to_value) == 0)
			{
				found = &entry->rules[i];
				*canonical = found->to_values[j];
			}
	if (found)
		return found;

	cg_enter_table_owner(&priv, entry->relid);
	for (i = 0; i < entry->nrules && !found; i++)
	{
		int			match = typed_match(&entry->rules[i], to_value);

		if (match >= 0)
		{
			found = &entry->rules[i];
			*canonical = found->to_values[match];
		}
	}
	cg_leave_owner(&priv);
	return found;
}

static OtpRule *
rule_by_id(OtpTable *entry, int64 id)
{
	int			i;

	for (i = 0; i < entry->nrules; i++)
		if (entry->rules[i].id == id)
			return &entry->rules[i];
	return NULL;
}

static char *
row_query(OtpTable *entry, const OtpRule *rule)
{
	const char *pk = quote_identifier(get_attname(entry->relid, entry->pk_attno, false));

	return psprintf("SELECT t.%s::pg_catalog.text, t.xmin, t.%s FROM %s t WHERE t.%s OPERATOR(pg_catalog.=) $1::%s",
					quote_identifier(rule->recipient_column), pk,
					quote_qualified_identifier(get_namespace_name(get_rel_namespace(entry->relid)),
											   get_rel_name(entry->relid)),
					pk, format_type_be_qualified(entry->pk_type));
}

/*
 * The recipient of a row, read as the caller (the table's own row security
 * and crmguard's visibility apply; a hidden row is a missing row), inside a
 * security-restricted operation with a pinned search_path.  A row version
 * this transaction wrote has no recipient on record yet: refused.  *key is
 * set to the row's key as its challenges name it: the caller's text may
 * spell it otherwise ('08', or a date under another DateStyle).
 */
static char *
row_recipient(OtpTable *entry, const OtpRule *rule, const char *row_key, char **key)
{
	CgPrivilegedContext priv;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	char	   *recipient = NULL;
	bool		found;
	bool		written_here = false;

	values[0] = CStringGetTextDatum(row_key);
	cg_enter_role(&priv, GetUserId());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (cg_execute_kept(row_query(entry, rule), 1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the row");
	found = SPI_processed > 0;
	if (found)
	{
		char	   *s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		bool		isnull;
		TransactionId xmin = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0],
																 SPI_tuptable->tupdesc, 2, &isnull));
		Datum		k = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);

		written_here = TransactionIdIsCurrentTransactionId(xmin);
		if (s)
			recipient = MemoryContextStrdup(CurTransactionContext, s);
		*key = MemoryContextStrdup(CurTransactionContext, cg_row_key_output(entry->pk_type, k));
	}
	SPI_finish();
	cg_leave_owner(&priv);

	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("row \"%s\" of table %s does not exist", row_key, get_rel_name(entry->relid))));
	if (written_here)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("row \"%s\" of table %s was changed in this transaction", row_key,
						get_rel_name(entry->relid)),
				 errdetail("A code goes only to the recipient on record, in the committed row."),
				 errhint("Commit the change first, then request the code.")));
	if (recipient == NULL || recipient[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("row \"%s\" of table %s has no recipient in column \"%s\"",
						row_key, get_rel_name(entry->relid), rule->recipient_column)));
	return recipient;
}

PG_FUNCTION_INFO_V1(crmguard_request_otp);
Datum
crmguard_request_otp(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *row_key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	const char *to_value = text_to_cstring(PG_GETARG_TEXT_PP(2));
	OtpTable   *entry;
	OtpRule    *rule;
	const CgPrincipal *p;
	int64		principal;
	char	   *recipient;
	LiveChallenge live;
	bool		live_found;
	bool		recent;
	int64		challenge;

	cg_require_preload();
	cg_require_attested();
	if (pg_class_aclcheck(relid, GetUserId(), ACL_UPDATE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to request an OTP for table %s", get_rel_name(relid)),
				 errdetail("Only roles that may update the table can request its codes.")));
	entry = rules_for(relid);
	rule = rule_for_value(entry, to_value, &to_value);
	if (rule == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no OTP rule of table %s gates the value \"%s\"", get_rel_name(relid), to_value)));
	p = cg_current_principal();
	principal = p ? p->id : 0;
	recipient = row_recipient(entry, rule, row_key, &row_key);
	live_found = find_live_challenge(rule, relid, row_key, to_value, principal, &live, &recent);
	if (recent)
	{
		cg_audit_durable("otp_refused", get_rel_name(relid), row_key,
						 audit_detail(rule->name, 0, to_value, "recipient changed recently"));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no OTP code can be sent for row \"%s\" of table %s yet", row_key,
						get_rel_name(relid)),
				 errdetail_internal("%s", cooldown_detail(rule)),
				 errhint("Wait until the cooldown has passed, or have the recipient confirmed by someone who may change it.")));
	}

	if (live_found)
	{
		int			used;
		int			max;

		if (live.resends >= rule->max_resends)
		{
			cg_audit_durable("otp_refused", get_rel_name(relid), row_key,
							 audit_detail(rule->name, live.id, to_value, "too many resends"));
			ereport(ERROR,
					(errcode(ERRCODE_CG_OTP_RESENDS),
					 errmsg("OTP challenge " INT64_FORMAT " was already sent %d times",
							live.id, live.resends + 1),
					 errdetail("OTP rule \"%s\" allows %d resends.", rule->name, rule->max_resends),
					 errhint("Wait until the challenge expires, then request a new code.")));
		}
		if (otp_attempts_take(live.id, &used, &max) == OTP_ATTEMPT_LOCKED)
			ereport(ERROR,
					(errcode(ERRCODE_CG_OTP_WRONG),
					 errmsg("OTP challenge " INT64_FORMAT " is locked after %d failed attempts", live.id, max),
					 errhint("Wait until the challenge expires, then request a new code.")));
		otp_attempts_refund(live.id);
		challenge = live.id;
		send_code(rule, challenge, false, principal, row_key, to_value, recipient, false);
	}
	else
	{
		take_rate(rule, relid, row_key, to_value, principal);
		challenge = next_challenge_id();
		send_code(rule, challenge, true, principal, row_key, to_value, recipient, true);
	}
	cg_audit("otp_requested", get_rel_name(relid), row_key,
			 jsonb_of(audit_detail(rule->name, challenge, to_value, NULL)));
	PG_RETURN_INT64(challenge);
}

/*
 * A key the caller wrote, as challenges name its row: read as the key
 * column's type (as the table's owner, which a domain's checks may need)
 * and printed with fixed settings, so '08' is row 8 and a date is the same
 * date under any DateStyle.
 */
static char *
canonical_key(OtpTable *entry, const char *row_key)
{
	CgPrivilegedContext priv;
	Oid			in_fn;
	Oid			ioparam;
	Datum		key;

	getTypeInputInfo(entry->pk_type, &in_fn, &ioparam);
	cg_enter_table_owner(&priv, entry->relid);
	key = OidInputFunctionCall(in_fn, (char *) row_key, ioparam, entry->pk_typmod);
	cg_leave_owner(&priv);
	return cg_row_key_output(entry->pk_type, key);
}

/* The caller's live challenge for a row and value, or NULL: the id as data */
PG_FUNCTION_INFO_V1(crmguard_pending_challenge);
Datum
crmguard_pending_challenge(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *row_key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	const char *to_value = text_to_cstring(PG_GETARG_TEXT_PP(2));
	OtpTable   *entry;
	OtpRule    *rule;
	const CgPrincipal *p;
	LiveChallenge live;

	cg_require_preload();
	entry = rules_for(relid);
	rule = rule_for_value(entry, to_value, &to_value);
	if (rule == NULL)
		PG_RETURN_NULL();
	p = cg_current_principal();
	row_key = canonical_key(entry, row_key);
	if (!find_or_await_challenge(rule, relid, row_key, to_value, p ? p->id : 0, &live))
		PG_RETURN_NULL();
	PG_RETURN_INT64(live.id);
}

/* Refuse a verification, recording it where rollback cannot erase it */
static void
verify_refused(int sqlstate, int64 challenge, const char *reason, const char *message,
			   const char *detail, const char *hint)
{
	char	   *json = psprintf("{\"challenge\": " INT64_FORMAT ", \"reason\": \"%s\"}",
								challenge, reason);

	cg_audit_durable("otp_refused", "crmguard.otp_challenge", NULL, json);
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg_internal("%s", message),
			 detail ? errdetail_internal("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0));
}

/* A challenge as verify_otp reads it */
typedef struct ChallengeRead
{
	bool		found;
	int64		rule_id;
	char	   *row_key;		/* in TopTransactionContext */
	char	   *to_value;
	int64		principal;		/* 0: none */
	unsigned char code_hash[CG_HASH_BYTES];	/* zeros: not a hash */
	bool		used;
	TimestampTz expires_at;
} ChallengeRead;

static void
read_challenge(Datum *values, bool *nulls, void *arg)
{
	ChallengeRead *read = arg;
	bytea	   *h = DatumGetByteaPP(values[4]);
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

	read->found = true;
	read->rule_id = DatumGetInt64(values[0]);
	read->row_key = TextDatumGetCString(values[1]);
	read->to_value = TextDatumGetCString(values[2]);
	MemoryContextSwitchTo(old);
	read->principal = nulls[3] ? 0 : DatumGetInt64(values[3]);
	if (VARSIZE_ANY_EXHDR(h) == CG_HASH_BYTES)
		memcpy(read->code_hash, VARDATA_ANY(h), CG_HASH_BYTES);
	read->used = !nulls[5];
	read->expires_at = DatumGetTimestampTz(values[6]);
}

PG_FUNCTION_INFO_V1(crmguard_verify_otp);
Datum
crmguard_verify_otp(PG_FUNCTION_ARGS)
{
	int64		challenge = PG_GETARG_INT64(0);
	char	   *code = text_to_cstring(PG_GETARG_TEXT_PP(1));
	static const char *const challenge_columns[7] = {"rule_id", "row_key", "to_value", "principal",
	"code_hash", "consumed_at", "expires_at"};
	ChallengeRead read;
	ScanKeyData key;
	const CgPrincipal *p;
	int64		principal;
	bool		found;
	int64		rule_id = 0;
	int64		owner = 0;
	char	   *row_key = NULL;
	char	   *to_value = NULL;
	unsigned char stored[CG_HASH_BYTES];
	unsigned char hash[CG_HASH_BYTES];
	bool		used = false;
	bool		expired = false;
	int			attempts;
	int			max_attempts;
	char	   *c;
	char	   *d;
	MemoryContext old;
	Verified   *v;

	cg_require_preload();
	cg_require_attested();
	p = cg_current_principal();
	principal = p ? p->id : 0;

	/* by its key, through the index: as the statement's snapshot sees it */
	memset(&read, 0, sizeof(read));
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(challenge));
	cg_scan_catalog_by_key(get_relname_relid("otp_challenge_state", cg_catalog()->schema),
						   "otp_challenge_state_pkey", 1, &key, GetActiveSnapshot(),
						   7, challenge_columns, read_challenge, &read);
	found = read.found;
	if (found)
	{
		rule_id = read.rule_id;
		row_key = read.row_key;
		to_value = read.to_value;
		owner = read.principal;
		memcpy(stored, read.code_hash, CG_HASH_BYTES);
		used = read.used;
		expired = read.expires_at <= GetCurrentTimestamp();
	}

	if (!found)
		verify_refused(ERRCODE_UNDEFINED_OBJECT, challenge, "unknown",
					   psprintf("OTP challenge " INT64_FORMAT " does not exist", challenge), NULL, NULL);
	if (owner != principal)
		verify_refused(ERRCODE_INSUFFICIENT_PRIVILEGE, challenge, "other principal",
					   psprintf("OTP challenge " INT64_FORMAT " was issued to another principal", challenge),
					   "Only the principal whose change was refused may verify its code.", NULL);
	if (used)
		verify_refused(ERRCODE_CG_OTP_EXPIRED, challenge, "already used",
					   psprintf("OTP challenge " INT64_FORMAT " was already used", challenge), NULL,
					   "Each code allows one change; request a new code for another.");
	if (expired)
		verify_refused(ERRCODE_CG_OTP_EXPIRED, challenge, "expired",
					   psprintf("OTP challenge " INT64_FORMAT " has expired", challenge), NULL,
					   "Request a new code with crmguard.request_otp().");

	switch (otp_attempts_take(challenge, &attempts, &max_attempts))
	{
		case OTP_ATTEMPT_UNKNOWN:
			verify_refused(ERRCODE_CG_OTP_EXPIRED, challenge, "void",
						   psprintf("OTP challenge " INT64_FORMAT " is void", challenge),
						   "Its attempt counter was lost because the server restarted or the database was restored after its code was sent.",
						   "Request a new code with crmguard.request_otp().");
			break;
		case OTP_ATTEMPT_LOCKED:
			verify_refused(ERRCODE_CG_OTP_WRONG, challenge, "locked",
						   psprintf("OTP challenge " INT64_FORMAT " is locked after %d failed attempts",
									challenge, max_attempts),
						   NULL, "Wait until the challenge expires, then request a new code.");
			break;
		case OTP_ATTEMPT_ALLOWED:
			break;
	}

	/* codes are compared without surrounding spaces and case */
	for (c = code; *c == ' '; c++)
		;
	for (d = c + strlen(c); d > c && d[-1] == ' '; d--)
		;
	*d = '\0';
	for (d = c; *d; d++)
		*d = pg_toupper((unsigned char) *d);
	code_hash(challenge, c, hash);
	sodium_memzero(code, strlen(code));

	if (sodium_memcmp(hash, stored, CG_HASH_BYTES) != 0)
		verify_refused(ERRCODE_CG_OTP_WRONG, challenge, "wrong code",
					   psprintf("wrong OTP code for challenge " INT64_FORMAT, challenge),
					   attempts >= max_attempts ?
					   psprintf("%d of %d attempts used; the challenge is now locked.", attempts, max_attempts) :
					   psprintf("%d of %d attempts used.", attempts, max_attempts),
					   NULL);

	otp_attempts_refund(challenge);
	old = MemoryContextSwitchTo(TopTransactionContext);
	v = palloc(sizeof(Verified));
	v->challenge = challenge;
	v->rule = rule_id;
	v->principal = principal;
	v->row_key = row_key;
	v->to_value = to_value;
	verified = lappend(verified, v);
	MemoryContextSwitchTo(old);

	cg_audit("otp_verified", "crmguard.otp_challenge", row_key,
			 jsonb_of(psprintf("{\"challenge\": " INT64_FORMAT "}", challenge)));
	PG_RETURN_BOOL(true);
}

/* Attempts of a challenge as shared memory knows them, for the view */
PG_FUNCTION_INFO_V1(crmguard_otp_attempts);
Datum
crmguard_otp_attempts(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2] = {true, true};
	int			attempts;
	bool		locked;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (otp_attempts_get(PG_GETARG_INT64(0), &attempts, &locked))
	{
		values[0] = Int32GetDatum(attempts);
		values[1] = BoolGetDatum(locked);
		nulls[0] = nulls[1] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * The committed recipient of a row, read by the worker as the table's owner
 * with crmguard's visibility set aside (the worker acts for no principal);
 * NULL when the row is gone or has none.
 */
static char *
committed_recipient(OtpTable *entry, const OtpRule *rule, const char *row_key)
{
	CgPrivilegedContext priv;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	char	   *recipient = NULL;
	SPIPlanPtr	plan;
	MemoryContext caller = CurrentMemoryContext;

	values[0] = CStringGetTextDatum(row_key);
	cg_enter_table_owner(&priv, entry->relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	plan = cg_prepare_all_rows(entry->relid, row_query(entry, rule), 1, types);
	if (SPI_execute_plan(plan, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the row");
	if (SPI_processed > 0)
	{
		char	   *s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (s && s[0] != '\0')
			recipient = MemoryContextStrdup(caller, s);
	}
	SPI_finish();
	cg_leave_owner(&priv);
	return recipient;
}

/*
 * The worker's half of an automatic delivery, in a transaction of its own:
 * it sees only committed data, so the code goes to the recipient on record,
 * whatever the refused transaction wrote.
 */
void
cg_otp_run_job(const char *data, int len)
{
	Oid			relid;
	int64		rule_id;
	int64		challenge;
	int64		principal;
	const char *row_key;
	const char *to_value;
	char	   *recipient;
	OtpTable   *entry;
	OtpRule    *rule;
	const char *reason = NULL;
	LiveChallenge live;
	bool		recent = false;

	memcpy(&relid, data, sizeof(relid));
	data += sizeof(relid);
	memcpy(&rule_id, data, sizeof(rule_id));
	data += sizeof(rule_id);
	memcpy(&challenge, data, sizeof(challenge));
	data += sizeof(challenge);
	memcpy(&principal, data, sizeof(principal));
	data += sizeof(principal);
	row_key = data;
	to_value = row_key + strlen(row_key) + 1;

	entry = rules_for(relid);
	rule = rule_by_id(entry, rule_id);
	if (rule == NULL)
	{
		otp_attempts_forget(challenge);
		return;					/* the rule was dropped meanwhile */
	}
	recipient = committed_recipient(entry, rule, row_key);
	if (recipient != NULL)
		(void) find_live_challenge(rule, relid, row_key, to_value, principal, &live, &recent);
	if (recipient == NULL)
		reason = "no recipient on record";
	else if (recent)
		reason = "recipient changed recently";
	if (reason != NULL)
	{
		otp_attempts_forget(challenge);
		cg_audit_write(principal, GetCurrentTimestamp(), "otp_refused", get_rel_name(relid), row_key,
					   audit_detail(rule->name, challenge, to_value, reason));
		return;
	}
	send_code(rule, challenge, true, principal, row_key, to_value, recipient, false);
	cg_audit_write(principal, GetCurrentTimestamp(), "otp_issued", get_rel_name(relid), row_key,
				   audit_detail(rule->name, challenge, to_value, NULL));
}
