/*
 * otp_shmem.c
 *		OTP state that ROLLBACK cannot undo, in shared memory: failed attempts
 *		per challenge, and challenges issued per row and per principal.
 *
 * Both tables are fixed in size and shared by every database, so no one may
 * fill them for the others: a principal (or, for sessions with no
 * principal, a database role) holds at most OTP_MAX_PER_PRINCIPAL live
 * challenges, a database at most OTP_MAX_PER_DATABASE, and a challenge
 * whose issuing transaction rolls back gives its place back at once (its
 * issue still counts against the rate limits, which is what ROLLBACK must
 * not undo).  Nothing here ever grows into the server's spare shared memory.
 *
 * Rate counters stay for their rule's window whatever happens to the
 * challenge, so they have a budget of their own: a principal makes at most
 * OTP_RATE_PER_PRINCIPAL of them, a database at most OTP_RATE_PER_DATABASE,
 * and the table keeps room for every live challenge's counters besides, so
 * a database that filled its share is refused alone (fail closed there)
 * while every other database counts on.
 */
#include "postgres.h"

#include "access/xact.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "crmguard.h"
#include "otp.h"

#define OTP_MAX_CHALLENGES		16384
#define OTP_MAX_PER_DATABASE	(OTP_MAX_CHALLENGES / 2)
#define OTP_MAX_PER_PRINCIPAL	256
#define OTP_MAX_RATE			16384	/* rate counters of all databases */
#define OTP_RATE_PER_DATABASE	(OTP_MAX_RATE / 4)
#define OTP_RATE_PER_PRINCIPAL	(OTP_RATE_PER_DATABASE / 4)
/*
 * Live counters: at most one per challenge and one per database that has
 * one; rate counters; and what each principal and database made of them
 * (at most one each per rate counter).  The table can never be full.
 */
#define OTP_MAX_COUNTERS		(2 * OTP_MAX_CHALLENGES + 3 * OTP_MAX_RATE)

/* Failed attempts of one challenge */
typedef struct OtpAttemptKey
{
	int64		challenge;
	Oid			dboid;
	uint32		zero;			/* explicit, so a copied key hashes the same */
} OtpAttemptKey;

typedef struct OtpAttempts
{
	OtpAttemptKey key;
	int			attempts;
	int			max_attempts;
	TimestampTz expires_at;
	int64		principal;		/* who holds the place: principal, or 0 and role */
	Oid			role;
} OtpAttempts;

/* A counter: live challenges of a principal or database, or issues in a window */
typedef enum OtpCounterKind
{
	CNT_LIVE_DATABASE = 1,
	CNT_LIVE_PRINCIPAL,
	CNT_RATE_PRINCIPAL,
	CNT_RATE_ROW,
	CNT_USE_DATABASE,			/* rate counters a database made */
	CNT_USE_PRINCIPAL			/* rate counters a principal made */
} OtpCounterKind;

typedef struct OtpCounterKey
{
	Oid			dboid;
	int32		kind;
	int64		rule;
	int64		subject;		/* principal id, or hash of the row key */
	Oid			role;			/* for principal 0: the database role */
	uint32		zero;
} OtpCounterKey;

typedef struct OtpCounter
{
	OtpCounterKey key;
	int			count;
	TimestampTz window_end;		/* rate counters: the window's end */
	int64		holder;			/* rate counters: who made it, principal... */
	Oid			holder_role;	/* ...or 0 and the database role */
} OtpCounter;

typedef struct OtpShared
{
	int			nattempts;
	int			nrate;			/* rate counters of all databases */
} OtpShared;

static OtpShared *otp_shared = NULL;
static HTAB *attempts_table = NULL;
static HTAB *counters_table = NULL;
static LWLock *otp_lock = NULL;

/* Challenges this backend registered in the open transaction, or consumed */
typedef struct PendingChallenge
{
	int64		challenge;
	SubTransactionId subid;
	bool		consumed;		/* free at commit: used up */
} PendingChallenge;

static List *pending_challenges = NIL;	/* in TopTransactionContext */
static bool callbacks_registered = false;

void
cg_otp_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(OtpShared)));
	RequestAddinShmemSpace(hash_estimate_size(OTP_MAX_CHALLENGES, sizeof(OtpAttempts)));
	RequestAddinShmemSpace(hash_estimate_size(OTP_MAX_COUNTERS, sizeof(OtpCounter)));
	RequestNamedLWLockTranche("crmguard otp", 1);
}

void
cg_otp_shmem_startup(void)
{
	HASHCTL		ctl;
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	otp_shared = ShmemInitStruct("crmguard otp", sizeof(OtpShared), &found);
	if (!found)
		memset(otp_shared, 0, sizeof(OtpShared));
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(OtpAttemptKey);
	ctl.entrysize = sizeof(OtpAttempts);
	attempts_table = ShmemInitHash("crmguard otp attempts", OTP_MAX_CHALLENGES,
								   OTP_MAX_CHALLENGES, &ctl, HASH_ELEM | HASH_BLOBS);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(OtpCounterKey);
	ctl.entrysize = sizeof(OtpCounter);
	counters_table = ShmemInitHash("crmguard otp counters", OTP_MAX_COUNTERS,
								   OTP_MAX_COUNTERS, &ctl, HASH_ELEM | HASH_BLOBS);
	otp_lock = &(GetNamedLWLockTranche("crmguard otp"))->lock;
	LWLockRelease(AddinShmemInitLock);
}

static OtpAttemptKey
attempt_key(int64 challenge)
{
	OtpAttemptKey key;

	key.challenge = challenge;
	key.dboid = MyDatabaseId;
	key.zero = 0;
	return key;
}

static OtpCounterKey
counter_key(OtpCounterKind kind, int64 rule, int64 subject, Oid role)
{
	OtpCounterKey key;

	memset(&key, 0, sizeof(key));
	key.dboid = MyDatabaseId;
	key.kind = kind;
	key.rule = rule;
	key.subject = subject;
	key.role = role;
	return key;
}

/* Who a challenge counts against: the principal, or nobody's database role */
static void
acting(int64 principal, int64 *subject, Oid *role)
{
	*subject = principal;
	*role = principal != 0 ? InvalidOid : GetUserId();
}

/*
 * Find or make a live or use counter; NULL when the table is full, which
 * its size rules out (kept as a fail-closed guard).  Lock held.
 */
static OtpCounter *
counter_enter(const OtpCounterKey *key)
{
	OtpCounter *c;
	bool		found;

	c = hash_search(counters_table, key, HASH_ENTER_NULL, &found);
	if (c != NULL && !found)
	{
		c->count = 0;
		c->window_end = 0;
		c->holder = 0;
		c->holder_role = InvalidOid;
	}
	return c;
}

static void
counter_decrement(const OtpCounterKey *key)
{
	OtpCounter *c = hash_search(counters_table, key, HASH_FIND, NULL);

	if (c == NULL)
		return;
	if (--c->count <= 0)
		hash_search(counters_table, key, HASH_REMOVE, NULL);
}

/* The use counters of a rate counter's maker: its database's and its own */
static void
use_keys(Oid dboid, int64 holder, Oid holder_role, OtpCounterKey *dk, OtpCounterKey *pk)
{
	*dk = counter_key(CNT_USE_DATABASE, 0, 0, InvalidOid);
	*pk = counter_key(CNT_USE_PRINCIPAL, 0, holder, holder_role);
	dk->dboid = pk->dboid = dboid;
}

/* Rate counters whose window ended, in every database, give their place back */
static void
rate_purge_locked(void)
{
	HASH_SEQ_STATUS seq;
	OtpCounter *old;
	TimestampTz now = GetCurrentTimestamp();
	List	   *ended = NIL;
	ListCell   *lc;

	/* a scan may drop only the entry it returned: the use counters go after */
	hash_seq_init(&seq, counters_table);
	while ((old = hash_seq_search(&seq)) != NULL)
		if ((old->key.kind == CNT_RATE_PRINCIPAL || old->key.kind == CNT_RATE_ROW) &&
			old->window_end <= now)
		{
			OtpCounterKey *uk = palloc(2 * sizeof(OtpCounterKey));

			use_keys(old->key.dboid, old->holder, old->holder_role, &uk[0], &uk[1]);
			ended = lappend(ended, uk);
			hash_search(counters_table, &old->key, HASH_REMOVE, NULL);
			otp_shared->nrate--;
		}
	foreach(lc, ended)
	{
		OtpCounterKey *uk = (OtpCounterKey *) lfirst(lc);

		counter_decrement(&uk[0]);
		counter_decrement(&uk[1]);
	}
	list_free_deep(ended);
}

static int
count_of(const OtpCounterKey *key)
{
	OtpCounter *c = hash_search(counters_table, key, HASH_FIND, NULL);

	return c ? c->count : 0;
}

/* Room for one more rate counter of this maker in this database; lock held */
static bool
rate_room_locked(const OtpCounterKey *dk, const OtpCounterKey *pk)
{
	return otp_shared->nrate < OTP_MAX_RATE &&
		count_of(dk) < OTP_RATE_PER_DATABASE &&
		count_of(pk) < OTP_RATE_PER_PRINCIPAL;
}

/*
 * Find or make a rate counter, made by subject/role of this database; NULL
 * when the maker's, the database's or the server's share is full.  Lock held.
 */
static OtpCounter *
rate_counter_enter(const OtpCounterKey *key, int64 subject, Oid role)
{
	OtpCounter *c;
	OtpCounter *du;
	OtpCounter *pu;
	OtpCounterKey dk;
	OtpCounterKey pk;

	c = hash_search(counters_table, key, HASH_FIND, NULL);
	if (c != NULL)
		return c;
	use_keys(MyDatabaseId, subject, role, &dk, &pk);
	if (!rate_room_locked(&dk, &pk))
	{
		rate_purge_locked();
		if (!rate_room_locked(&dk, &pk))
			return NULL;
	}
	du = counter_enter(&dk);
	pu = du ? counter_enter(&pk) : NULL;
	c = pu ? counter_enter(key) : NULL;
	if (c == NULL)
	{
		/* use counters made for nothing go again */
		if (du && du->count == 0)
			hash_search(counters_table, &dk, HASH_REMOVE, NULL);
		if (pu && pu->count == 0)
			hash_search(counters_table, &pk, HASH_REMOVE, NULL);
		return NULL;
	}
	c->holder = subject;
	c->holder_role = role;
	du->count++;
	pu->count++;
	otp_shared->nrate++;
	return c;
}

/* Drop one challenge's place and its share of its holder's counts; lock held */
static void
attempts_remove_locked(OtpAttempts *entry)
{
	OtpCounterKey pk = counter_key(CNT_LIVE_PRINCIPAL, 0, entry->principal, entry->role);
	OtpCounterKey dk = counter_key(CNT_LIVE_DATABASE, 0, 0, InvalidOid);

	pk.dboid = dk.dboid = entry->key.dboid;
	counter_decrement(&pk);
	counter_decrement(&dk);
	hash_search(attempts_table, &entry->key, HASH_REMOVE, NULL);
	otp_shared->nattempts--;
}

static void
attempts_forget_locked(int64 challenge)
{
	OtpAttemptKey key = attempt_key(challenge);
	OtpAttempts *entry = hash_search(attempts_table, &key, HASH_FIND, NULL);

	if (entry != NULL)
		attempts_remove_locked(entry);
}

/* Drop expired challenges everywhere; lock held */
static void
purge_expired_locked(void)
{
	HASH_SEQ_STATUS seq;
	OtpAttempts *old;
	TimestampTz now = GetCurrentTimestamp();

	hash_seq_init(&seq, attempts_table);
	while ((old = hash_seq_search(&seq)) != NULL)
		if (old->expires_at < now)
			attempts_remove_locked(old);
}

static void
otp_shmem_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;
	bool		commit;

	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE)
		commit = true;
	else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		commit = false;
	else
		return;
	if (pending_challenges == NIL)
		return;
	LWLockAcquire(otp_lock, LW_EXCLUSIVE);
	foreach(lc, pending_challenges)
	{
		PendingChallenge *pc = (PendingChallenge *) lfirst(lc);

		/* used up at commit, or issued by a transaction that rolled back */
		if (commit ? pc->consumed : !pc->consumed)
			attempts_forget_locked(pc->challenge);
	}
	LWLockRelease(otp_lock);
	pending_challenges = NIL;
}

static void
otp_shmem_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;

	if (pending_challenges == NIL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		LWLockAcquire(otp_lock, LW_EXCLUSIVE);
		foreach(lc, pending_challenges)
		{
			PendingChallenge *pc = (PendingChallenge *) lfirst(lc);

			if (pc->subid != mySubid)
				continue;
			if (!pc->consumed)
				attempts_forget_locked(pc->challenge);
			pending_challenges = foreach_delete_current(pending_challenges, lc);
		}
		LWLockRelease(otp_lock);
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending_challenges)
		{
			PendingChallenge *pc = (PendingChallenge *) lfirst(lc);

			if (pc->subid == mySubid)
				pc->subid = parentSubid;
		}
	}
}

static void
remember(int64 challenge, bool consumed)
{
	MemoryContext old;
	PendingChallenge *pc;

	if (!callbacks_registered)
	{
		RegisterXactCallback(otp_shmem_xact_callback, NULL);
		RegisterSubXactCallback(otp_shmem_subxact_callback, NULL);
		callbacks_registered = true;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	pc = palloc(sizeof(PendingChallenge));
	pc->challenge = challenge;
	pc->subid = GetCurrentSubTransactionId();
	pc->consumed = consumed;
	pending_challenges = lappend(pending_challenges, pc);
	MemoryContextSwitchTo(old);
}

/*
 * Start counting attempts of a challenge (or renew a resent one).  A new
 * place counts against its holder and database; with undo_on_abort it is
 * given back if this transaction rolls back (an automatic delivery's place
 * is kept: the worker issues that challenge after the refusal).
 */
void
otp_attempts_register(int64 challenge, int64 principal, int max_attempts,
					  TimestampTz expires_at, bool undo_on_abort)
{
	OtpAttemptKey key = attempt_key(challenge);
	OtpAttempts *entry;
	OtpCounter *pc;
	OtpCounter *dc;
	OtpCounterKey pk;
	OtpCounterKey dk = counter_key(CNT_LIVE_DATABASE, 0, 0, InvalidOid);
	int64		subject;
	Oid			role;
	bool		found;
	const char *full = NULL;

	cg_require_preload();
	acting(principal, &subject, &role);
	pk = counter_key(CNT_LIVE_PRINCIPAL, 0, subject, role);

	LWLockAcquire(otp_lock, LW_EXCLUSIVE);
	entry = hash_search(attempts_table, &key, HASH_FIND, NULL);
	if (entry != NULL)
	{
		entry->max_attempts = max_attempts;
		entry->expires_at = expires_at;
		LWLockRelease(otp_lock);
		return;
	}

	pc = hash_search(counters_table, &pk, HASH_FIND, NULL);
	dc = hash_search(counters_table, &dk, HASH_FIND, NULL);
	if (otp_shared->nattempts >= OTP_MAX_CHALLENGES ||
		(pc && pc->count >= OTP_MAX_PER_PRINCIPAL) ||
		(dc && dc->count >= OTP_MAX_PER_DATABASE))
	{
		purge_expired_locked();
		pc = hash_search(counters_table, &pk, HASH_FIND, NULL);
		dc = hash_search(counters_table, &dk, HASH_FIND, NULL);
	}
	if (pc && pc->count >= OTP_MAX_PER_PRINCIPAL)
		full = psprintf("At most %d challenges of one principal can be pending at once.",
						OTP_MAX_PER_PRINCIPAL);
	else if (dc && dc->count >= OTP_MAX_PER_DATABASE)
		full = psprintf("At most %d challenges of one database can be pending at once.",
						OTP_MAX_PER_DATABASE);
	else if (otp_shared->nattempts >= OTP_MAX_CHALLENGES)
		full = psprintf("At most %d challenges can be pending at once.", OTP_MAX_CHALLENGES);
	else if ((pc = counter_enter(&pk)) == NULL || (dc = counter_enter(&dk)) == NULL)
		full = pstrdup("The table of OTP counters is full.");
	if (full == NULL)
	{
		entry = hash_search(attempts_table, &key, HASH_ENTER_NULL, &found);
		if (entry == NULL)
			full = pstrdup("The table of OTP challenges is full.");
	}
	if (full != NULL)
	{
		/* a counter made for nothing goes again */
		if (pc && pc->count == 0)
			counter_decrement(&pk);
		if (dc && dc->count == 0)
			counter_decrement(&dk);
		LWLockRelease(otp_lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many live OTP challenges"),
				 errdetail_internal("%s", full),
				 errhint("Use or let expire the pending challenges first.")));
	}
	entry->attempts = 0;
	entry->max_attempts = max_attempts;
	entry->expires_at = expires_at;
	entry->principal = subject;
	entry->role = role;
	otp_shared->nattempts++;
	pc->count++;
	dc->count++;
	LWLockRelease(otp_lock);
	if (undo_on_abort)
		remember(challenge, false);
}

/* Count one attempt before the comparison, so parallel guesses count too */
OtpAttemptResult
otp_attempts_take(int64 challenge, int *used, int *max)
{
	OtpAttemptKey key = attempt_key(challenge);
	OtpAttempts *entry;
	OtpAttemptResult result;

	cg_require_preload();
	LWLockAcquire(otp_lock, LW_EXCLUSIVE);
	entry = hash_search(attempts_table, &key, HASH_FIND, NULL);
	if (entry == NULL)
		result = OTP_ATTEMPT_UNKNOWN;
	else if (entry->attempts >= entry->max_attempts)
		result = OTP_ATTEMPT_LOCKED;
	else
	{
		entry->attempts++;
		result = OTP_ATTEMPT_ALLOWED;
	}
	if (entry)
	{
		*used = entry->attempts;
		*max = entry->max_attempts;
	}
	LWLockRelease(otp_lock);
	return result;
}

/* A right code was not a failed attempt */
void
otp_attempts_refund(int64 challenge)
{
	OtpAttemptKey key = attempt_key(challenge);
	OtpAttempts *entry;

	LWLockAcquire(otp_lock, LW_EXCLUSIVE);
	entry = hash_search(attempts_table, &key, HASH_FIND, NULL);
	if (entry && entry->attempts > 0)
		entry->attempts--;
	LWLockRelease(otp_lock);
}

/* The challenge was used up: its place is free once this transaction commits */
void
otp_attempts_release_at_commit(int64 challenge)
{
	remember(challenge, true);
}

/* A challenge that will never be issued (the worker could not send it) */
void
otp_attempts_forget(int64 challenge)
{
	cg_require_preload();
	LWLockAcquire(otp_lock, LW_EXCLUSIVE);
	attempts_forget_locked(challenge);
	LWLockRelease(otp_lock);
}

/* Attempts as shared memory knows them; false when it does not */
bool
otp_attempts_get(int64 challenge, int *attempts, bool *locked)
{
	OtpAttemptKey key = attempt_key(challenge);
	OtpAttempts *entry;
	bool		found;

	cg_require_preload();
	LWLockAcquire(otp_lock, LW_SHARED);
	entry = hash_search(attempts_table, &key, HASH_FIND, NULL);
	found = entry != NULL;
	if (found)
	{
		*attempts = entry->attempts;
		*locked = entry->attempts >= entry->max_attempts;
	}
	LWLockRelease(otp_lock);
	return found;
}

/* Count issues in a window: false (and nothing counted) when over the limit */
static bool
rate_take_locked(const OtpCounterKey *key, int64 subject, Oid role, int limit,
				 TimestampTz now, TimestampTz window_end, bool *full)
{
	OtpCounter *c = rate_counter_enter(key, subject, role);

	if (c == NULL)
	{
		*full = true;
		return false;
	}
	if (c->window_end <= now)
	{
		c->count = 0;
		c->window_end = window_end;
	}
	if (c->count >= limit)
		return false;
	c->count++;
	return true;
}

/*
 * Count one new challenge of a rule for a row and a principal, where
 * ROLLBACK cannot undo it.  Refused when either is over its limit in the
 * current window (nothing is counted then).
 */
OtpRateResult
otp_rate_take(int64 rule, int64 principal, const char *row_key, int per_row,
			  int per_principal, const Interval *window)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz window_end;
	OtpCounterKey rk;
	OtpCounterKey pk;
	int64		subject;
	Oid			role;
	bool		full = false;
	OtpRateResult result = OTP_RATE_OK;

	cg_require_preload();
	window_end = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														 TimestampTzGetDatum(now),
														 IntervalPGetDatum(window)));
	acting(principal, &subject, &role);
	pk = counter_key(CNT_RATE_PRINCIPAL, rule, subject, role);
	rk = counter_key(CNT_RATE_ROW, rule,
					 (int64) hash_bytes_extended((const unsigned char *) row_key,
												 strlen(row_key), 0),
					 InvalidOid);

	LWLockAcquire(otp_lock, LW_EXCLUSIVE);
	if (!rate_take_locked(&pk, subject, role, per_principal, now, window_end, &full))
		result = full ? OTP_RATE_FULL : OTP_RATE_PRINCIPAL;
	else if (!rate_take_locked(&rk, subject, role, per_row, now, window_end, &full))
	{
		OtpCounter *c = hash_search(counters_table, &pk, HASH_FIND, NULL);

		if (c)
			c->count--;			/* the principal's issue did not happen */
		result = full ? OTP_RATE_FULL : OTP_RATE_ROW;
	}
	LWLockRelease(otp_lock);
	return result;
}
