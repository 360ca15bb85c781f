/*
 * device.c
 *		Trusted devices: a principal with require_device passes no crmguard
 *		gate until its session has signed a fresh server challenge with a
 *		registered, unrevoked Ed25519 device key, or assumed a token minted
 *		with such a signature.
 *
 * A challenge names the cluster, the database, the principal and an expiry
 * around a random nonce, MAC'd with the device subkey.  Pending challenges
 * live in shared memory (at most a few per principal, bounded per database):
 * a signature is checked against the principal's pending challenges and
 * consumes the one it signs, so it is good once, here, for this principal;
 * ROLLBACK cannot give a challenge back, and after a restart none is pending
 * (fail closed).
 *
 * Revocation: every committed change of crmguard.device bumps a generation
 * counter in shared memory; each check compares it with the generation the
 * backend's cached answer was read at (one atomic read), and re-reads the
 * device with the latest snapshot when it moved.  So a revoked device's
 * sessions and tokens are refused from their next statement.
 */
#include "postgres.h"

#include <sodium.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "crmguard.h"

#define CHALLENGE_MAGIC			"CGDC"
#define CHALLENGE_HEADER_BYTES	(4 + 1 + 8 + 4 + 8 + 8)
#define CHALLENGE_NONCE_BYTES	16
#define CHALLENGE_SIGNED_BYTES	(CHALLENGE_HEADER_BYTES + CHALLENGE_NONCE_BYTES)
#define CHALLENGE_BYTES			(CHALLENGE_SIGNED_BYTES + crypto_auth_BYTES)
#define CHALLENGE_LIFETIME_MS	60000

#define CHALLENGE_SLOTS				1024
#define CHALLENGES_PER_PRINCIPAL	4
#define CHALLENGES_PER_DATABASE		512

#define ENROLL_CODE_PREFIX		"cg1."
#define ENROLL_CODE_BYTES		24

typedef struct ChallengeSlot
{
	Oid			dboid;			/* InvalidOid: free */
	int64		principal;
	TimestampTz expires_at;
	unsigned char bytes[CHALLENGE_BYTES];
} ChallengeSlot;

typedef struct DeviceShared
{
	pg_atomic_uint64 generation;	/* bumped by each committed device change */
	ChallengeSlot slots[CHALLENGE_SLOTS];
} DeviceShared;

static DeviceShared *device_shared = NULL;
static LWLock *device_lock = NULL;

/*
 * The session's attestation: the principal and device that signed, and
 * whether it ends with the transaction (it was made under a transaction's
 * identity, or in a transaction that has not committed yet).
 */
typedef struct Attestation
{
	int64		principal;		/* 0: none */
	int64		device;
	bool		local;
	bool		made_in_xact;
} Attestation;

static Attestation attestation = {0, 0, false, false};
static bool xact_callback_registered = false;
static bool bump_at_commit = false;

/* The last device checked, and the revocation generation it was read at */
typedef struct DeviceCheck
{
	int64		device;
	int64		principal;
	uint64		generation;
	bool		valid;
	bool		ok;
	bool		revoked;
} DeviceCheck;

static DeviceCheck last_check = {0, 0, 0, false, false, false};

void
cg_device_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(DeviceShared)));
	RequestNamedLWLockTranche("crmguard device", 1);
}

void
cg_device_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	device_shared = ShmemInitStruct("crmguard device", sizeof(DeviceShared), &found);
	if (!found)
	{
		memset(device_shared->slots, 0, sizeof(device_shared->slots));
		pg_atomic_init_u64(&device_shared->generation, 1);
	}
	device_lock = &(GetNamedLWLockTranche("crmguard device"))->lock;
	LWLockRelease(AddinShmemInitLock);
}

static bytea *
make_bytea(const unsigned char *bytes, int len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), bytes, len);
	return b;
}

/* ---------------------------------------------------------------------------
 * Transaction and session state
 * ---------------------------------------------------------------------------
 */

static void
device_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PREPARE:
			/* the change is visible now: every backend re-reads on its next check */
			if (bump_at_commit && device_shared != NULL)
				pg_atomic_fetch_add_u64(&device_shared->generation, 1);
			bump_at_commit = false;
			if (attestation.local)
				memset(&attestation, 0, sizeof(attestation));
			attestation.made_in_xact = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			bump_at_commit = false;
			/* an attestation made in a transaction that rolled back is gone */
			if (attestation.local || attestation.made_in_xact)
				memset(&attestation, 0, sizeof(attestation));
			break;
		default:
			break;
	}
}

static void
register_xact_callback(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(device_xact_callback, NULL);
		xact_callback_registered = true;
	}
}

/* The identity was given up (assume(NULL), DISCARD ALL): so is the attestation */
void
cg_device_forget(void)
{
	memset(&attestation, 0, sizeof(attestation));
}

/*
 * Whether a device is registered to a principal and not revoked, read with
 * the latest snapshot; cached until the revocation generation moves.
 */
static bool
device_ok(int64 device, int64 principal, bool *revoked)
{
	uint64		generation;
	CgPrivilegedContext priv;
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	bool		ok = false;
	bool		is_revoked = false;

	cg_require_preload();
	generation = pg_atomic_read_u64(&device_shared->generation);
	if (last_check.valid && last_check.device == device &&
		last_check.principal == principal && last_check.generation == generation)
	{
		if (revoked)
			*revoked = last_check.revoked;
		return last_check.ok;
	}

	values[0] = Int64GetDatum(device);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_snapshot(SPI_prepare("SELECT principal_id, revoked_at IS NOT NULL"
										 " FROM crmguard.device WHERE id OPERATOR(pg_catalog.=) $1",
										 1, types),
							 values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.device");
	if (SPI_processed == 1)
	{
		bool		isnull;

		is_revoked = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 2, &isnull));
		ok = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull)) == principal &&
			!is_revoked;
	}
	SPI_finish();
	cg_leave_owner(&priv);

	last_check.device = device;
	last_check.principal = principal;
	last_check.generation = generation;
	last_check.ok = ok;
	last_check.revoked = is_revoked;
	last_check.valid = true;
	if (revoked)
		*revoked = is_revoked;
	return ok;
}

/* The device the principal acts through now: a token's, else the session's */
static int64
device_in_use(const CgPrincipal *p)
{
	int64		device = cg_assumed_device(NULL);

	if (device != 0)
		return device;
	if (attestation.principal == p->id)
		return attestation.device;
	return 0;
}

/* The device the acting principal acts through, for the audit log (0: none) */
int64
cg_current_device(void)
{
	const CgPrincipal *p = cg_current_principal();

	return p ? device_in_use(p) : 0;
}

/*
 * Whether a principal passes the device gate: it requires no device, or it
 * acts through an attested, unrevoked device of its own.
 */
bool
cg_device_attested(const CgPrincipal *p)
{
	int64		device;

	if (p == NULL)
		return false;
	if (!p->require_device)
		return true;
	device = device_in_use(p);
	return device != 0 && device_ok(device, p->id, NULL);
}

/*
 * The one device gate: every crmguard gate calls this first.  Nobody is let
 * through here (each gate treats nobody strictest on its own).
 */
void
cg_require_attested(void)
{
	const CgPrincipal *p = cg_current_principal();
	int64		device;
	bool		revoked = false;

	if (p == NULL || !p->require_device)
		return;
	device = device_in_use(p);
	if (device != 0 && device_ok(device, p->id, &revoked))
		return;
	if (revoked)
		ereport(ERROR,
				(errcode(ERRCODE_CG_DEVICE),
				 errmsg("device " INT64_FORMAT " of principal \"%s\" has been revoked", device, p->name),
				 errhint("Attest again with another registered device.")));
	ereport(ERROR,
			(errcode(ERRCODE_CG_DEVICE),
			 errmsg("principal \"%s\" has not attested a trusted device", p->name),
			 errdetail("The principal may act only from a registered device."),
			 errhint("Sign crmguard.device_challenge() with a registered device and call crmguard.attest_device(), or assume a token minted with a device signature.")));
}

/*
 * In the visibility policy of a require_device principal, read once per
 * statement: false (no row) for reads, CG030 for writes, until attested.
 */
PG_FUNCTION_INFO_V1(crmguard_device_gate);
Datum
crmguard_device_gate(PG_FUNCTION_ARGS)
{
	bool		edit = PG_GETARG_BOOL(0);

	if (edit)
	{
		cg_require_attested();
		PG_RETURN_BOOL(cg_current_principal() != NULL);
	}
	PG_RETURN_BOOL(cg_device_attested(cg_current_principal()));
}

/* ---------------------------------------------------------------------------
 * Challenges
 * ---------------------------------------------------------------------------
 */

/* Make a challenge for a principal of this database and keep it pending */
static bytea *
new_challenge(int64 principal)
{
	unsigned char bytes[CHALLENGE_BYTES];
	unsigned char key[CG_KEY_BYTES];
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz expires_at = TimestampTzPlusMilliseconds(now, CHALLENGE_LIFETIME_MS);
	int			i;
	int			free_slot = -1;
	int			oldest_own = -1;
	int			own = 0;
	int			in_db = 0;

	memcpy(bytes, CHALLENGE_MAGIC, 4);
	bytes[4] = 1;
	cg_put_uint(bytes + 5, GetSystemIdentifier(), 8);
	cg_put_uint(bytes + 13, MyDatabaseId, 4);
	cg_put_uint(bytes + 17, (uint64) principal, 8);
	cg_put_uint(bytes + 25, (uint64) expires_at, 8);
	randombytes_buf(bytes + CHALLENGE_HEADER_BYTES, CHALLENGE_NONCE_BYTES);
	cg_subkey(CG_KEY_DEVICE, key);
	crypto_auth(bytes + CHALLENGE_SIGNED_BYTES, bytes, CHALLENGE_SIGNED_BYTES, key);
	sodium_memzero(key, sizeof(key));

	/*
	 * A principal's flood replaces only its own oldest challenge; a database
	 * holds at most half the slots, so no one starves the others.
	 */
	LWLockAcquire(device_lock, LW_EXCLUSIVE);
	for (i = 0; i < CHALLENGE_SLOTS; i++)
	{
		ChallengeSlot *s = &device_shared->slots[i];

		if (s->dboid != InvalidOid && s->expires_at <= now)
			s->dboid = InvalidOid;
		if (s->dboid == InvalidOid)
		{
			if (free_slot < 0)
				free_slot = i;
			continue;
		}
		if (s->dboid != MyDatabaseId)
			continue;
		in_db++;
		if (s->principal == principal)
		{
			own++;
			if (oldest_own < 0 || s->expires_at < device_shared->slots[oldest_own].expires_at)
				oldest_own = i;
		}
	}
	if (own >= CHALLENGES_PER_PRINCIPAL)
		free_slot = oldest_own;
	else if (in_db >= CHALLENGES_PER_DATABASE || free_slot < 0)
	{
		LWLockRelease(device_lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many pending device challenges"),
				 errdetail("At most %d challenges can be pending in a database; each expires after a minute.",
						   CHALLENGES_PER_DATABASE)));
	}
	device_shared->slots[free_slot].dboid = MyDatabaseId;
	device_shared->slots[free_slot].principal = principal;
	device_shared->slots[free_slot].expires_at = expires_at;
	memcpy(device_shared->slots[free_slot].bytes, bytes, CHALLENGE_BYTES);
	LWLockRelease(device_lock);

	return make_bytea(bytes, CHALLENGE_BYTES);
}

/* A challenge's own fields and MAC: ours, for this database and principal, live */
static bool
challenge_sound(const unsigned char *bytes, int64 principal)
{
	unsigned char key[CG_KEY_BYTES];
	int			mac_ok;

	cg_subkey(CG_KEY_DEVICE, key);
	mac_ok = crypto_auth_verify(bytes + CHALLENGE_SIGNED_BYTES, bytes,
								CHALLENGE_SIGNED_BYTES, key);
	sodium_memzero(key, sizeof(key));
	return mac_ok == 0 && memcmp(bytes, CHALLENGE_MAGIC, 4) == 0 && bytes[4] == 1 &&
		cg_get_uint(bytes + 5, 8) == GetSystemIdentifier() &&
		cg_get_uint(bytes + 13, 4) == MyDatabaseId &&
		(int64) cg_get_uint(bytes + 17, 8) == principal &&
		(TimestampTz) cg_get_uint(bytes + 25, 8) > GetCurrentTimestamp();
}

/*
 * Find the pending challenge of a principal that a signature by a public key
 * signs, and consume it.  Signatures are checked outside the lock; the slot
 * is taken only if it still holds the same bytes (else another session used
 * it first).
 */
static bool
consume_challenge(int64 principal, const unsigned char *public_key,
				  const unsigned char *signature)
{
	ChallengeSlot candidates[CHALLENGES_PER_PRINCIPAL];
	int			slot_of[CHALLENGES_PER_PRINCIPAL];
	int			n = 0;
	int			i;
	TimestampTz now = GetCurrentTimestamp();

	LWLockAcquire(device_lock, LW_SHARED);
	for (i = 0; i < CHALLENGE_SLOTS && n < CHALLENGES_PER_PRINCIPAL; i++)
	{
		ChallengeSlot *s = &device_shared->slots[i];

		if (s->dboid == MyDatabaseId && s->principal == principal && s->expires_at > now)
		{
			memcpy(&candidates[n], s, sizeof(ChallengeSlot));
			slot_of[n++] = i;
		}
	}
	LWLockRelease(device_lock);

	for (i = 0; i < n; i++)
	{
		bool		taken = false;
		ChallengeSlot *s;

		if (crypto_sign_verify_detached(signature, candidates[i].bytes, CHALLENGE_BYTES,
										public_key) != 0 ||
			!challenge_sound(candidates[i].bytes, principal))
			continue;
		LWLockAcquire(device_lock, LW_EXCLUSIVE);
		s = &device_shared->slots[slot_of[i]];
		if (s->dboid == MyDatabaseId &&
			sodium_memcmp(s->bytes, candidates[i].bytes, CHALLENGE_BYTES) == 0)
		{
			s->dboid = InvalidOid;
			taken = true;
		}
		LWLockRelease(device_lock);
		return taken;
	}
	return false;
}

static const CgPrincipal *
acting_principal(void)
{
	const CgPrincipal *p = cg_current_principal();

	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CG_DEVICE),
				 errmsg("no principal is acting"),
				 errhint("Log in as a role mapped to a principal, or assume its token, before attesting a device.")));
	return p;
}

static const CgPrincipal *
named_principal(const char *name)
{
	const CgPrincipal *p = cg_principal_by_name(name);

	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("principal \"%s\" does not exist", name)));
	if (!p->active)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("principal \"%s\" is inactive", name)));
	return p;
}

/*
 * device_challenge(): a challenge for the acting principal;
 * device_challenge(principal): one for a token (issue_token's callers only).
 */
PG_FUNCTION_INFO_V1(crmguard_device_challenge);
Datum
crmguard_device_challenge(PG_FUNCTION_ARGS)
{
	const CgPrincipal *p;

	cg_require_preload();
	if (PG_NARGS() > 0)
	{
		if (PG_ARGISNULL(0))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("principal must not be NULL")));
		p = named_principal(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	}
	else
		p = acting_principal();
	PG_RETURN_BYTEA_P(new_challenge(p->id));
}

/* ---------------------------------------------------------------------------
 * Attestation
 * ---------------------------------------------------------------------------
 */

typedef struct DeviceRow
{
	bool		found;
	int64		principal;
	bool		revoked;
	unsigned char public_key[crypto_sign_PUBLICKEYBYTES];
} DeviceRow;

static DeviceRow
read_device(int64 device)
{
	DeviceRow	row;
	CgPrivilegedContext priv;
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	memset(&row, 0, sizeof(row));
	values[0] = Int64GetDatum(device);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_snapshot(SPI_prepare("SELECT principal_id, revoked_at IS NOT NULL, public_key"
										 " FROM crmguard.device WHERE id OPERATOR(pg_catalog.=) $1",
										 1, types),
							 values, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.device");
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		bytea	   *key;

		row.found = true;
		row.principal = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		row.revoked = DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull));
		key = DatumGetByteaPP(SPI_getbinval(tup, desc, 3, &isnull));
		if (VARSIZE_ANY_EXHDR(key) == crypto_sign_PUBLICKEYBYTES)
			memcpy(row.public_key, VARDATA_ANY(key), crypto_sign_PUBLICKEYBYTES);
		else
			row.found = false;
	}
	SPI_finish();
	cg_leave_owner(&priv);
	return row;
}

static void
check_signature_length(bytea *signature)
{
	if (VARSIZE_ANY_EXHDR(signature) != crypto_sign_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a device signature must be %d bytes, not %d",
						crypto_sign_BYTES, (int) VARSIZE_ANY_EXHDR(signature)),
				 errhint("Sign the exact bytes crmguard.device_challenge() returned with the device's Ed25519 key (a detached signature).")));
}

/* Record the refusal where rollback cannot undo it, then refuse with CG030 */
static void
refuse_device(int64 device, const char *name, const char *reason, const char *message)
{
	StringInfoData detail;

	initStringInfo(&detail);
	appendStringInfo(&detail, "{\"device\": " INT64_FORMAT ", \"reason\": ", device);
	escape_json(&detail, reason);
	appendStringInfoChar(&detail, '}');
	cg_audit_durable("attest_refused", "crmguard.device", psprintf(INT64_FORMAT, device),
					 detail.data);
	ereport(ERROR,
			(errcode(ERRCODE_CG_DEVICE),
			 errmsg(message, (long long) device, name),
			 errhint("Call crmguard.device_challenge(), sign its bytes with the device's key within a minute, and attest once.")));
}

/*
 * The checks shared by attest_device and issue_token: the device is the
 * principal's, not revoked, and the signature signs one of its pending
 * challenges (which it consumes).
 */
void
cg_device_verify(const CgPrincipal *p, int64 device, bytea *signature)
{
	DeviceRow	row;
	int64		principal = p->id;
	char	   *name = pstrdup(p->name);	/* the principal cache may reload below */

	check_signature_length(signature);
	row = read_device(device);
	if (!row.found || row.principal != principal)
		refuse_device(device, name, "not registered to the principal",
					  "device %lld is not registered to principal \"%s\"");
	if (row.revoked)
		refuse_device(device, name, "revoked",
					  "device %lld of principal \"%s\" has been revoked");
	if (!consume_challenge(principal, row.public_key, (unsigned char *) VARDATA_ANY(signature)))
		refuse_device(device, name, "no pending challenge matches the signature",
					  "the signature of device %lld signs no pending challenge of principal \"%s\"");
	cg_activity_note("attest");
}

PG_FUNCTION_INFO_V1(crmguard_attest_device);
Datum
crmguard_attest_device(PG_FUNCTION_ARGS)
{
	const CgPrincipal *p;
	int64		principal;
	int64		device;
	bool		is_local;

	cg_require_preload();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("device and signature must not be NULL")));
	p = acting_principal();
	principal = p->id;
	device = PG_GETARG_INT64(0);
	cg_device_verify(p, device, PG_GETARG_BYTEA_PP(1));

	/* under a transaction's identity, the attestation ends with it */
	(void) cg_assumed_device(&is_local);
	register_xact_callback();
	attestation.principal = principal;
	attestation.device = device;
	attestation.local = is_local;
	attestation.made_in_xact = true;
	last_check.valid = false;
	cg_audit("attest_device", "crmguard.device", psprintf(INT64_FORMAT, device),
			 DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												CStringGetDatum(psprintf("{\"scope\": \"%s\"}",
																		 is_local ? "transaction" : "session")))));
	PG_RETURN_BOOL(true);
}

/* ---------------------------------------------------------------------------
 * Registration, enrollment, revocation
 * ---------------------------------------------------------------------------
 */

static void
check_public_key(bytea *key)
{
	int			len = VARSIZE_ANY_EXHDR(key);

	if (len != crypto_sign_PUBLICKEYBYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a device public key must be %d bytes, not %d", crypto_sign_PUBLICKEYBYTES, len),
				 errhint("Pass the raw Ed25519 public key, as crmguard-device keygen prints it.")));
	if (!crypto_core_ed25519_is_valid_point((const unsigned char *) VARDATA_ANY(key)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the device public key is not a valid Ed25519 public key")));
}

static char *
required_text(FunctionCallInfo fcinfo, int n, const char *what)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", what)));
	return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/* Insert a device row as crmguard's owner and audit it */
static int64
insert_device(const CgPrincipal *p, const char *label, bytea *key, const char *via)
{
	CgPrivilegedContext priv;
	Oid			types[4] = {INT8OID, TEXTOID, BYTEAOID, TEXTOID};
	Datum		values[4];
	bool		isnull;
	int64		id;
	StringInfoData detail;

	if (label[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a device label must not be empty")));
	values[0] = Int64GetDatum(p->id);
	values[1] = CStringGetTextDatum(label);
	values[2] = PointerGetDatum(key);
	values[3] = CStringGetTextDatum(via);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO crmguard.device (principal_id, label, public_key, registered_via)"
							  " VALUES ($1, $2, $3, $4) RETURNING id", 4, types, values,
							  NULL, false, 1) < 0)
		elog(ERROR, "could not register the device");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	cg_leave_owner(&priv);

	initStringInfo(&detail);
	appendStringInfo(&detail, "{\"principal\": " INT64_FORMAT ", \"via\": \"%s\", \"label\": ", p->id, via);
	escape_json(&detail, label);
	appendStringInfoChar(&detail, '}');
	cg_audit("register_device", "crmguard.device", psprintf(INT64_FORMAT, id),
			 DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail.data))));
	return id;
}

PG_FUNCTION_INFO_V1(crmguard_register_device);
Datum
crmguard_register_device(PG_FUNCTION_ARGS)
{
	const CgPrincipal *p;
	char	   *label;
	bytea	   *key;

	cg_require_preload();
	p = named_principal(required_text(fcinfo, 0, "principal"));
	label = required_text(fcinfo, 1, "label");
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("public_key must not be NULL")));
	key = PG_GETARG_BYTEA_PP(2);
	check_public_key(key);
	PG_RETURN_INT64(insert_device(p, label, key, "admin"));
}

/* The keyed hash an enrollment code is stored as */
static bytea *
code_hash(const char *code)
{
	unsigned char key[CG_KEY_BYTES];
	unsigned char hash[CG_HASH_BYTES];

	cg_subkey(CG_KEY_ENROLL, key);
	crypto_generichash(hash, sizeof(hash), (const unsigned char *) code, strlen(code),
					   key, sizeof(key));
	sodium_memzero(key, sizeof(key));
	return make_bytea(hash, sizeof(hash));
}

PG_FUNCTION_INFO_V1(crmguard_enrollment_code);
Datum
crmguard_enrollment_code(PG_FUNCTION_ARGS)
{
	const CgPrincipal *p;
	Interval   *valid_for;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz expires_at;
	unsigned char raw[ENROLL_CODE_BYTES];
	char		b64[sodium_base64_ENCODED_LEN(ENROLL_CODE_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
	char	   *code;
	CgPrivilegedContext priv;
	Oid			types[3] = {INT8OID, BYTEAOID, TIMESTAMPTZOID};
	Datum		values[3];

	cg_require_preload();
	p = named_principal(required_text(fcinfo, 0, "principal"));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("valid_for must not be NULL")));
	valid_for = PG_GETARG_INTERVAL_P(1);
	expires_at = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
														 TimestampTzGetDatum(now),
														 IntervalPGetDatum(valid_for)));
	if (expires_at <= now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("enrollment code validity must be positive")));

	randombytes_buf(raw, sizeof(raw));
	sodium_bin2base64(b64, sizeof(b64), raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	sodium_memzero(raw, sizeof(raw));
	code = psprintf("%s%s", ENROLL_CODE_PREFIX, b64);

	values[0] = Int64GetDatum(p->id);
	values[1] = PointerGetDatum(code_hash(code));
	values[2] = TimestampTzGetDatum(expires_at);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO crmguard.device_enrollment (principal_id, code_hash, expires_at)"
							  " VALUES ($1, $2, $3)", 3, types, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not store the enrollment code");
	SPI_finish();
	cg_leave_owner(&priv);
	cg_audit("enrollment_code", "crmguard.principal", psprintf(INT64_FORMAT, p->id),
			 DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												CStringGetDatum(psprintf("{\"expires_at\": \"%s\"}",
																		 timestamptz_to_str(expires_at))))));
	PG_RETURN_TEXT_P(cstring_to_text(code));
}

static void
refuse_code(const char *reason, const char *message)
{
	cg_audit_durable("enroll_refused", "crmguard.device_enrollment", NULL,
					 psprintf("{\"reason\": \"%s\"}", reason));
	ereport(ERROR,
			(errcode(ERRCODE_CG_INVALID_TOKEN),
			 errmsg("%s", message),
			 errhint("Ask an administrator for a new code: crmguard.enrollment_code(principal).")));
}

PG_FUNCTION_INFO_V1(crmguard_enroll_device);
Datum
crmguard_enroll_device(PG_FUNCTION_ARGS)
{
	char	   *code;
	char	   *label;
	bytea	   *key;
	CgPrivilegedContext priv;
	Oid			types[1] = {BYTEAOID};
	Datum		values[1];
	bool		isnull;
	bool		found = false;
	bool		used = false;
	bool		expired = false;
	int64		principal = 0;
	const CgPrincipal *p;
	int64		id;

	cg_require_preload();
	code = required_text(fcinfo, 0, "code");
	label = required_text(fcinfo, 1, "label");
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("public_key must not be NULL")));
	key = PG_GETARG_BYTEA_PP(2);
	check_public_key(key);

	/*
	 * Take the code under a row lock: of two sessions presenting it, the
	 * second waits and then finds it used.
	 */
	values[0] = PointerGetDatum(code_hash(code));
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT principal_id, used_at IS NOT NULL,"
							  " expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()"
							  " FROM crmguard.device_enrollment"
							  " WHERE code_hash OPERATOR(pg_catalog.=) $1 FOR UPDATE",
							  1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read crmguard.device_enrollment");
	if (SPI_processed == 1)
	{
		found = true;
		principal = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		used = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		expired = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	}
	if (found && !used && !expired &&
		SPI_execute_with_args("UPDATE crmguard.device_enrollment SET used_at = pg_catalog.now()"
							  " WHERE code_hash OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not use the enrollment code");
	SPI_finish();
	cg_leave_owner(&priv);

	if (!found)
		refuse_code("unknown", "invalid enrollment code");
	if (used)
		refuse_code("used", "enrollment code has already been used");
	if (expired)
		refuse_code("expired", "enrollment code has expired");
	p = cg_principal_by_id(principal);
	if (p == NULL || !p->active)
		refuse_code("principal inactive or missing", "enrollment code names an inactive principal");
	id = insert_device(p, label, key, "enrollment");
	PG_RETURN_INT64(id);
}

/*
 * Statement trigger on crmguard.device: a revocation (any change) makes
 * every backend re-read its device from its next check after the commit.
 */
PG_FUNCTION_INFO_V1(crmguard_device_changed);
Datum
crmguard_device_changed(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "crmguard_device_changed: must be fired as a trigger");
	cg_require_preload();
	register_xact_callback();
	bump_at_commit = true;
	pg_atomic_fetch_add_u64(&device_shared->generation, 1);
	return PointerGetDatum(NULL);
}

/* The device gate for steps written in SQL (drafts, approvals, activity) */
PG_FUNCTION_INFO_V1(crmguard_require_attested);
Datum
crmguard_require_attested(PG_FUNCTION_ARGS)
{
	cg_require_preload();
	cg_require_attested();
	PG_RETURN_VOID();
}
