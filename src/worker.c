/*
 * worker.c
 *		A queue in shared memory and one background worker per database that
 *		drains it, each job in a transaction of its own.
 *
 * Backends queue work that must outlive their own transaction (the audit
 * record of a refusal, which is about to roll back).  The worker is started
 * on demand, the first time a backend of a database queues a job.
 *
 * Audit records of refusals do not share one queue: each backend has a few
 * slots of its own, so no one's flood can push out another session's
 * record.  A backend whose slots are all taken waits for one (the worker
 * serves every backend in turn); once it floods (more than
 * CG_FLOOD_REFUSALS in CG_FLOOD_WINDOW_MS), or the wait is too long, it
 * counts further refusals of the same kind instead, and the worker writes
 * them as one summary record ("N refused assume() calls from role X in
 * T s"): bounded, never lost.
 *
 * The shared queue has a share for each database a worker can serve,
 * CG_QUEUE_PER_DATABASE jobs, and a database queues only while it has (or
 * gets) a worker: a database whose worker is stalled fills its own share
 * and is refused alone, every other database always has room.
 */
#include "postgres.h"


#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/async.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/backendid.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/acl.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "crmguard.h"

#define CG_MAX_WORKERS		16
#define CG_QUEUE_PER_DATABASE	64	/* jobs one database may have waiting */
#define CG_QUEUE_LEN		(CG_MAX_WORKERS * CG_QUEUE_PER_DATABASE)
#define CG_IDLE_EXIT_MS		(10 * 60 * 1000)
#define CG_AUDIT_SLOTS		4		/* audit records waiting per backend */
#define CG_AUDIT_SUMMARIES	4		/* kinds of refusal counted per backend */
#define CG_SUMMARY_QUIET_MS	1000	/* a flood is summarised once it paused... */
#define CG_SUMMARY_MAX_MS	10000	/* ...or at least this often */
#define CG_FLOOD_REFUSALS	64		/* more refusals than this from a backend... */
#define CG_FLOOD_WINDOW_MS	10000	/* ...in this time are a flood */
#define CG_SLOT_WAIT_MS		2000	/* below that, wait this long for a slot */
#define CG_NOTIFY_GAP_MS	10		/* outbox NOTIFYs of one worker at most this often */
#define CG_LEAVE_WAIT_MS	5000	/* a worker asked to leave its database is waited for this long */

typedef struct CgJob
{
	Oid			dboid;
	CgJobKind	kind;
	int			len;
	char		data[CG_JOB_BYTES];
} CgJob;

typedef struct CgWorkerSlot
{
	Oid			dboid;			/* InvalidOid when free */
	pid_t		pid;			/* 0 while starting */
	Latch	   *latch;
	TimestampTz started_at;
	bool		leave;			/* asked to leave its database (cg_worker_leave) */
} CgWorkerSlot;

typedef struct CgShared
{
	LWLock	   *lock;
	uint64		head;			/* next job to take */
	uint64		tail;			/* next free place */
	CgWorkerSlot workers[CG_MAX_WORKERS];
	CgJob		jobs[CG_QUEUE_LEN];
} CgShared;

/* Refusals of one kind a backend counted while its slots were full */
typedef struct CgAuditSummary
{
	int64		count;			/* 0: unused */
	Oid			dboid;
	int64		principal;
	TimestampTz first_at;
	TimestampTz last_at;
	char		action[NAMEDATALEN];
	char		role[NAMEDATALEN];
} CgAuditSummary;

/* One backend's own audit slots */
typedef struct CgAuditRing
{
	int			used;			/* slots [0, used) wait, oldest first */
	CgJob		slots[CG_AUDIT_SLOTS];
	CgAuditSummary summaries[CG_AUDIT_SUMMARIES];
} CgAuditRing;

static CgShared *shared = NULL;
static CgAuditRing *rings = NULL;
static int	nrings = 0;
static volatile sig_atomic_t got_sigterm = false;

PGDLLEXPORT void crmguard_worker_main(Datum arg);

/* One ring per backend slot; before PostgreSQL 15 MaxBackends is not known yet */
static int
ring_count(void)
{
#if PG_VERSION_NUM >= 150000
	return MaxBackends;
#else
	return 1024;
#endif
}

void
cg_worker_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(CgShared)));
	RequestAddinShmemSpace(mul_size(ring_count(), sizeof(CgAuditRing)));
	RequestNamedLWLockTranche("crmguard", 1);
}

void
cg_worker_shmem_startup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("crmguard", sizeof(CgShared), &found);
	if (!found)
	{
		memset(shared, 0, sizeof(CgShared));
		shared->lock = &(GetNamedLWLockTranche("crmguard"))->lock;
	}
	nrings = ring_count();
	rings = ShmemInitStruct("crmguard audit slots", mul_size(nrings, sizeof(CgAuditRing)), &found);
	if (!found)
		memset(rings, 0, mul_size(nrings, sizeof(CgAuditRing)));
	LWLockRelease(AddinShmemInitLock);
}

/* This backend's ring, or NULL (a process without a backend slot) */
static CgAuditRing *
my_ring(void)
{
#if PG_VERSION_NUM >= 170000
	int			i = MyProcNumber;
#else
	int			i = MyBackendId - 1;
#endif

	return (i >= 0 && i < nrings) ? &rings[i] : NULL;
}

/*
 * Start the database's worker unless it runs or is starting; lock held.
 * False when it has none and none can be started.
 */
static bool
ensure_worker_locked(Oid dboid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	CgWorkerSlot *free_slot = NULL;
	int			i;

	for (i = 0; i < CG_MAX_WORKERS; i++)
	{
		CgWorkerSlot *slot = &shared->workers[i];

		if (slot->dboid == dboid)
		{
			/* a start that never arrived within a minute is retried */
			if (slot->pid != 0 ||
				!TimestampDifferenceExceeds(slot->started_at, GetCurrentTimestamp(), 60000))
			{
				if (slot->latch)
					SetLatch(slot->latch);
				return true;
			}
			free_slot = slot;
			break;
		}
		if (slot->dboid == InvalidOid && free_slot == NULL)
			free_slot = slot;
	}
	if (free_slot == NULL)
	{
		ereport(WARNING,
				(errmsg("crmguard has no free worker slot for this database")));
		return false;
	}

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "crmguard");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "crmguard_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "crmguard worker for database %u", dboid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "crmguard worker");
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = 0;

	free_slot->dboid = dboid;
	free_slot->pid = 0;
	free_slot->latch = NULL;
	free_slot->leave = false;
	free_slot->started_at = GetCurrentTimestamp();
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		free_slot->dboid = InvalidOid;
		ereport(WARNING,
				(errmsg("crmguard could not start its background worker"),
				 errhint("Raise \"max_worker_processes\".")));
		return false;
	}
	return true;
}

static bool enqueue_job(CgJobKind kind, const char *data, int len);

/* Does this announcement already name the channel?  Its data: names, each ending in NUL */
static bool
job_names(const CgJob *job, const char *channel)
{
	int			at = 0;

	while (at < job->len)
	{
		if (strcmp(job->data + at, channel) == 0)
			return true;
		at += strlen(job->data + at) + 1;
	}
	return false;
}

/*
 * Queue a job for this database's worker; false when this database's share
 * of the queue is full or it has no worker to drain it (a job no worker
 * takes would hold a place of the others' shares).
 */
bool
cg_enqueue(CgJobKind kind, const char *data, int len)
{
	cg_require_preload();
	if (len > CG_JOB_BYTES)
		elog(ERROR, "crmguard job of %d bytes exceeds %d", len, CG_JOB_BYTES);
	return enqueue_job(kind, data, len);
}

/*
 * The same from a transaction that has committed, where no error may be
 * raised (an outbox wake-up): false instead of an error.
 */
bool
cg_enqueue_after_commit(CgJobKind kind, const char *data, int len)
{
	if (!cg_preloaded || len > CG_JOB_BYTES)
		return false;
	return enqueue_job(kind, data, len);
}

static bool
enqueue_job(CgJobKind kind, const char *data, int len)
{
	CgJob	   *job;
	uint64		i;
	int			mine = 0;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (i = shared->head; i < shared->tail; i++)
	{
		CgJob	   *other = &shared->jobs[i % CG_QUEUE_LEN];

		if (other->dboid != MyDatabaseId)
			continue;
		/*
		 * One announcement waiting per database, naming each channel once
		 * (a database's outbox wake-ups never take its share of the queue
		 * from other jobs; past CG_JOB_BYTES of names, senders that wake on
		 * any announcement are woken anyway).
		 */
		if (kind == CG_JOB_NOTIFY && other->kind == CG_JOB_NOTIFY)
		{
			if (!job_names(other, data) && other->len + len <= CG_JOB_BYTES)
			{
				memcpy(other->data + other->len, data, len);
				other->len += len;
			}
			(void) ensure_worker_locked(MyDatabaseId);
			LWLockRelease(shared->lock);
			return true;
		}
		/* one wake-up waiting is enough, one seal of a segment */
		if (kind == other->kind &&
			(kind == CG_JOB_WAKE ||
			 (kind == CG_JOB_AUDIT_SEAL && other->len == len && memcmp(other->data, data, len) == 0)))
		{
			(void) ensure_worker_locked(MyDatabaseId);
			LWLockRelease(shared->lock);
			return true;
		}
		mine++;
	}
	if (mine >= CG_QUEUE_PER_DATABASE || shared->tail - shared->head >= CG_QUEUE_LEN ||
		!ensure_worker_locked(MyDatabaseId))
	{
		LWLockRelease(shared->lock);
		return false;
	}
	job = &shared->jobs[shared->tail % CG_QUEUE_LEN];
	job->dboid = MyDatabaseId;
	job->kind = kind;
	job->len = len;
	memcpy(job->data, data, len);
	shared->tail++;
	LWLockRelease(shared->lock);
	return true;
}

/*
 * Queue the audit record of a refusal in this backend's own slots.  When
 * they are all waiting, the refusal is counted in a summary of its kind
 * (action and role) instead.  Never fails: a refusal is recorded, one way
 * or the other, whatever other sessions do.
 */
void
cg_enqueue_audit(const char *data, int len, const char *action, int64 principal,
				 const char *role, TimestampTz at)
{
	static TimestampTz flood_window_start = 0;
	static int	flood_refusals = 0;
	CgAuditRing *ring = my_ring();
	CgAuditSummary *summary = NULL;
	bool		flooding;
	int			waited;
	int			i;

	cg_require_preload();
	if (len > CG_JOB_BYTES)
		elog(ERROR, "crmguard job of %d bytes exceeds %d", len, CG_JOB_BYTES);
	if (ring == NULL)
	{
		if (!cg_enqueue(CG_JOB_AUDIT, data, len))
			ereport(LOG,
					(errmsg("crmguard could not queue audit record \"%s\"", action),
					 errdetail("The audit queue is full.")));
		return;
	}

	/* how many refusals this backend had lately: a flood is not waited for */
	if (TimestampDifferenceExceeds(flood_window_start, at, CG_FLOOD_WINDOW_MS))
	{
		flood_window_start = at;
		flood_refusals = 0;
	}
	flooding = ++flood_refusals > CG_FLOOD_REFUSALS;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (waited = 0; ring->used == CG_AUDIT_SLOTS && !flooding && waited < CG_SLOT_WAIT_MS;
		 waited += 5)
	{
		(void) ensure_worker_locked(MyDatabaseId);
		LWLockRelease(shared->lock);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 5L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	}
	if (ring->used < CG_AUDIT_SLOTS)
	{
		CgJob	   *job = &ring->slots[ring->used++];

		job->dboid = MyDatabaseId;
		job->kind = CG_JOB_AUDIT;
		job->len = len;
		memcpy(job->data, data, len);
	}
	else
	{
		for (i = 0; i < CG_AUDIT_SUMMARIES && summary == NULL; i++)
		{
			CgAuditSummary *s = &ring->summaries[i];

			if (s->count > 0 && s->dboid == MyDatabaseId && s->principal == principal &&
				strncmp(s->action, action, NAMEDATALEN - 1) == 0 &&
				strncmp(s->role, role, NAMEDATALEN - 1) == 0)
				summary = s;
		}
		for (i = 0; i < CG_AUDIT_SUMMARIES && summary == NULL; i++)
			if (ring->summaries[i].count == 0)
			{
				summary = &ring->summaries[i];
				summary->dboid = MyDatabaseId;
				summary->principal = principal;
				summary->first_at = at;
				strlcpy(summary->action, action, NAMEDATALEN);
				strlcpy(summary->role, role, NAMEDATALEN);
			}
		if (summary == NULL)
		{
			/* more kinds than summaries: the last one counts them all */
			summary = &ring->summaries[CG_AUDIT_SUMMARIES - 1];
			strlcpy(summary->action, "refusals", NAMEDATALEN);
		}
		summary->count++;
		summary->last_at = at;
	}
	(void) ensure_worker_locked(MyDatabaseId);
	LWLockRelease(shared->lock);
}

/*
 * Take one waiting audit record of this database from each backend in turn,
 * so that every session's refusals are written at the same pace.  Returns
 * how many records were taken into out (at most max).
 */
static int
dequeue_audit(CgJob *out, int max)
{
	static int	next = 0;
	int			taken = 0;
	int			scanned;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (scanned = 0; scanned < nrings && taken < max; scanned++)
	{
		CgAuditRing *ring = &rings[next];

		next = (next + 1) % nrings;
		if (ring->used == 0 || ring->slots[0].dboid != MyDatabaseId)
			continue;
		memcpy(&out[taken++], &ring->slots[0], sizeof(CgJob));
		memmove(&ring->slots[0], &ring->slots[1], sizeof(CgJob) * (ring->used - 1));
		ring->used--;
	}
	LWLockRelease(shared->lock);
	return taken;
}

/*
 * A summary due to be written: its backend's slots are empty again and the
 * flood paused or lasted long enough.  Copied out and reset under the lock.
 */
static bool
take_summary(CgAuditSummary *out)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		found = false;
	int			i;
	int			j;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < nrings && !found; i++)
	{
		if (rings[i].used > 0)
			continue;
		for (j = 0; j < CG_AUDIT_SUMMARIES && !found; j++)
		{
			CgAuditSummary *s = &rings[i].summaries[j];

			if (s->count == 0 || s->dboid != MyDatabaseId)
				continue;
			if (!TimestampDifferenceExceeds(s->last_at, now, CG_SUMMARY_QUIET_MS) &&
				!TimestampDifferenceExceeds(s->first_at, now, CG_SUMMARY_MAX_MS))
				continue;
			memcpy(out, s, sizeof(CgAuditSummary));
			memset(s, 0, sizeof(CgAuditSummary));
			found = true;
		}
	}
	LWLockRelease(shared->lock);
	return found;
}

/* Summaries still counting for this database: the worker must look again */
static bool
summaries_pending(void)
{
	bool		pending = false;
	int			i;
	int			j;

	LWLockAcquire(shared->lock, LW_SHARED);
	for (i = 0; i < nrings && !pending; i++)
		for (j = 0; j < CG_AUDIT_SUMMARIES && !pending; j++)
			pending = rings[i].summaries[j].count > 0 &&
				rings[i].summaries[j].dboid == MyDatabaseId;
	LWLockRelease(shared->lock);
	return pending;
}

/* Take the oldest job of this database, if any */
static bool
dequeue(CgJob *out)
{
	uint64		i;
	bool		found = false;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (i = shared->head; i < shared->tail; i++)
	{
		CgJob	   *job = &shared->jobs[i % CG_QUEUE_LEN];

		if (job->dboid != MyDatabaseId)
			continue;
		memcpy(out, job, sizeof(CgJob));
		/* close the gap, keeping other databases' jobs in order */
		for (; i > shared->head; i--)
			memcpy(&shared->jobs[i % CG_QUEUE_LEN],
				   &shared->jobs[(i - 1) % CG_QUEUE_LEN], sizeof(CgJob));
		shared->head++;
		found = true;
		break;
	}
	LWLockRelease(shared->lock);
	return found;
}

static void
release_slot(int code, Datum arg)
{
	int			i;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < CG_MAX_WORKERS; i++)
		if (shared->workers[i].pid == MyProcPid)
			memset(&shared->workers[i], 0, sizeof(CgWorkerSlot));
	LWLockRelease(shared->lock);
}

/* Give up the slot unless a job arrived meanwhile; decided under the lock */
static bool
release_if_idle(void)
{
	uint64		i;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (i = shared->head; i < shared->tail; i++)
	{
		if (shared->jobs[i % CG_QUEUE_LEN].dboid == MyDatabaseId)
		{
			LWLockRelease(shared->lock);
			return false;
		}
	}
	for (i = 0; i < (uint64) nrings; i++)
	{
		int			j;

		for (j = 0; j < CG_AUDIT_SUMMARIES; j++)
			if (rings[i].summaries[j].count > 0 && rings[i].summaries[j].dboid == MyDatabaseId)
			{
				LWLockRelease(shared->lock);
				return false;
			}
		if (rings[i].used > 0 && rings[i].slots[0].dboid == MyDatabaseId)
		{
			LWLockRelease(shared->lock);
			return false;
		}
	}
	for (i = 0; i < CG_MAX_WORKERS; i++)
		if (shared->workers[i].pid == MyProcPid)
			memset(&shared->workers[i], 0, sizeof(CgWorkerSlot));
	LWLockRelease(shared->lock);
	return true;
}

/*
 * The database a utility command needs nobody connected to, when the caller
 * may run it on that database (its owner, or for a template any role that
 * may create databases): InvalidOid otherwise.  Nobody else can make a
 * worker leave by issuing a command that fails its permission check.
 */
Oid
cg_worker_database_to_leave(Node *parsetree)
{
	const char *name = NULL;
	bool		as_template = false;
	ListCell   *lc;
	Oid			dboid;

	if (IsA(parsetree, DropdbStmt))
		name = ((DropdbStmt *) parsetree)->dbname;
	else if (IsA(parsetree, RenameStmt) && ((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
		name = ((RenameStmt *) parsetree)->subname;
	else if (IsA(parsetree, AlterDatabaseStmt))
	{
		foreach(lc, ((AlterDatabaseStmt *) parsetree)->options)
			if (strcmp(((DefElem *) lfirst(lc))->defname, "tablespace") == 0)
				name = ((AlterDatabaseStmt *) parsetree)->dbname;
	}
	else if (IsA(parsetree, CreatedbStmt))
	{
		as_template = true;
		name = "template1";
		foreach(lc, ((CreatedbStmt *) parsetree)->options)
		{
			DefElem    *d = lfirst(lc);

			if (strcmp(d->defname, "template") == 0 && d->arg != NULL)
				name = defGetString(d);
		}
	}
	if (name == NULL)
		return InvalidOid;
	dboid = get_database_oid(name, true);
	if (!OidIsValid(dboid))
		return InvalidOid;
	if (pg_database_ownercheck(dboid, GetUserId()))
		return dboid;
	if (as_template && have_createdb_privilege())
	{
		HeapTuple	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dboid));
		bool		is_template = false;

		if (HeapTupleIsValid(tup))
		{
			is_template = ((Form_pg_database) GETSTRUCT(tup))->datistemplate;
			ReleaseSysCache(tup);
		}
		if (is_template)
			return dboid;
	}
	return InvalidOid;
}

/* Has a command that needs this database to itself asked this worker to leave? */
static bool
asked_to_leave(void)
{
	bool		leave = false;
	int			i;

	LWLockAcquire(shared->lock, LW_SHARED);
	for (i = 0; i < CG_MAX_WORKERS; i++)
		if (shared->workers[i].pid == MyProcPid)
			leave = shared->workers[i].leave;
	LWLockRelease(shared->lock);
	return leave;
}

/*
 * DROP DATABASE, CREATE DATABASE ... TEMPLATE, and ALTER DATABASE ...
 * RENAME TO or SET TABLESPACE need a database nobody is connected to, and
 * wait for other sessions only a few seconds.  The database's worker stays
 * while it has work, and CG_IDLE_EXIT_MS after: it is asked to leave first,
 * and waited for.  Its queued work stays queued.  True when a worker was
 * there (cg_worker_return starts it again).  A wait cut short (a cancel, a
 * statement_timeout) takes the request back before the error goes on: the
 * caller never learnt it has a worker to send back, and the worker would
 * leave its database until some job happened to start it again.
 */
bool
cg_worker_leave(Oid dboid)
{
	volatile bool was_there = false;
	int			waited;

	cg_require_preload();
	PG_TRY();
	{
		for (waited = 0;; waited += 10)
		{
			bool		connected = false;
			int			i;

			LWLockAcquire(shared->lock, LW_EXCLUSIVE);
			for (i = 0; i < CG_MAX_WORKERS; i++)
			{
				CgWorkerSlot *slot = &shared->workers[i];

				if (slot->dboid != dboid)
					continue;
				was_there = true;
				slot->leave = true;
				/* one still starting leaves as soon as it takes its slot */
				connected = slot->pid != 0;
				if (slot->latch)
					SetLatch(slot->latch);
			}
			LWLockRelease(shared->lock);
			if (!connected || waited >= CG_LEAVE_WAIT_MS)
				break;
			CHECK_FOR_INTERRUPTS();
			pg_usleep(10000L);
		}
	}
	PG_CATCH();
	{
		cg_worker_return(dboid, was_there);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return was_there;
}

/* Work of dboid still waiting for its worker? Lock held */
static bool
has_work_locked(Oid dboid)
{
	uint64		i;
	int			j;

	for (i = shared->head; i < shared->tail; i++)
		if (shared->jobs[i % CG_QUEUE_LEN].dboid == dboid)
			return true;
	for (i = 0; i < (uint64) nrings; i++)
	{
		if (rings[i].used > 0 && rings[i].slots[0].dboid == dboid)
			return true;
		for (j = 0; j < CG_AUDIT_SUMMARIES; j++)
			if (rings[i].summaries[j].count > 0 && rings[i].summaries[j].dboid == dboid)
				return true;
	}
	return false;
}

/* The command is over and the database still there: its worker comes back if it was there or has work */
void
cg_worker_return(Oid dboid, bool was_there)
{
	int			i;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	/* one that was starting, or did not notice in time, stays */
	for (i = 0; i < CG_MAX_WORKERS; i++)
		if (shared->workers[i].dboid == dboid)
			shared->workers[i].leave = false;
	if (was_there || has_work_locked(dboid))
		(void) ensure_worker_locked(dboid);
	LWLockRelease(shared->lock);
}

/*
 * The database is gone: so is the work queued for it, which would otherwise
 * keep its share of the queue, and hold the head of a backend's audit slots
 * that the next session on that backend slot needs.
 */
void
cg_worker_forget(Oid dboid)
{
	uint64		i;
	uint64		kept;
	int			j;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < CG_MAX_WORKERS; i++)
		if (shared->workers[i].dboid == dboid && shared->workers[i].pid == 0)
			memset(&shared->workers[i], 0, sizeof(CgWorkerSlot));
	/* keep the other databases' jobs in order, at the tail end */
	kept = shared->tail;
	for (i = shared->tail; i > shared->head; i--)
	{
		CgJob	   *job = &shared->jobs[(i - 1) % CG_QUEUE_LEN];

		if (job->dboid == dboid)
			continue;
		kept--;
		if (kept != i - 1)
			memcpy(&shared->jobs[kept % CG_QUEUE_LEN], job, sizeof(CgJob));
	}
	shared->head = kept;
	for (i = 0; i < (uint64) nrings; i++)
	{
		CgAuditRing *ring = &rings[i];
		int			used = 0;

		for (j = 0; j < ring->used; j++)
			if (ring->slots[j].dboid != dboid)
			{
				if (used != j)
					memcpy(&ring->slots[used], &ring->slots[j], sizeof(CgJob));
				used++;
			}
		ring->used = used;
		for (j = 0; j < CG_AUDIT_SUMMARIES; j++)
			if (ring->summaries[j].count > 0 && ring->summaries[j].dboid == dboid)
				memset(&ring->summaries[j], 0, sizeof(CgAuditSummary));
	}
	LWLockRelease(shared->lock);
}

static void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * Run fn in a transaction of its own; a failure is logged and the worker
 * goes on.  Returns what fn returned, false after a failure.
 */
static bool
in_transaction(bool (*fn) (void *), void *arg, const char *activity)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	volatile bool result = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
	PG_TRY();
	{
		result = fn(arg);
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcontext);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	return result;
}

static bool
job_step(void *arg)
{
	CgJob	   *job = (CgJob *) arg;

	switch (job->kind)
	{
		case CG_JOB_AUDIT:
			cg_audit_run_job(job->data, job->len);
			break;
		case CG_JOB_AUDIT_SEAL:
			cg_audit_run_seal(job->data, job->len);
			break;
		case CG_JOB_OTP_ISSUE:
			cg_otp_run_job(job->data, job->len);
			break;
		case CG_JOB_WAKE:
			break;				/* the tick after it does the work */
		case CG_JOB_NOTIFY:
			/* delivered when this job's transaction commits; a wake-up needs no flush */
			(void) set_config_option("synchronous_commit", "off", PGC_SUSET, PGC_S_SESSION,
									 GUC_ACTION_LOCAL, true, 0, false);
			{
				int			at = 0;

				while (at < job->len)
				{
					Async_Notify("crmguard_outbox", job->data + at);
					at += strlen(job->data + at) + 1;
				}
			}
			break;
	}
	return true;
}

static bool
summary_step(void *arg)
{
	CgAuditSummary *s = (CgAuditSummary *) arg;

	cg_audit_write_summary(s->principal, s->action, s->role, s->count, s->first_at, s->last_at);
	return true;
}

/* Approval timeouts; true while some request waits on a clock */
static bool
tick_step(void *arg)
{
	return cg_approval_tick();
}

void
crmguard_worker_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	TimestampTz idle_since = GetCurrentTimestamp();
	TimestampTz last_tick = 0;
	TimestampTz last_notify = 0;
	int			i;

	pqsignal(SIGTERM, worker_sigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < CG_MAX_WORKERS; i++)
	{
		if (shared->workers[i].dboid == dboid && shared->workers[i].pid == 0)
		{
			shared->workers[i].pid = MyProcPid;
			shared->workers[i].latch = MyLatch;
			break;
		}
	}
	LWLockRelease(shared->lock);
	if (i == CG_MAX_WORKERS)
		proc_exit(0);			/* another worker took the slot */
	before_shmem_exit(release_slot, (Datum) 0);

	while (!got_sigterm && !asked_to_leave())
	{
		CgJob		job;
		CgJob		audit[8];
		CgAuditSummary summary;
		bool		busy = true;
		bool		only_notified = true;	/* this round's jobs were all NOTIFYs */
		bool		any_job = false;
		long		timeout = 10000L;

		CHECK_FOR_INTERRUPTS();
		while (!got_sigterm && busy && !asked_to_leave())
		{
			int			n = dequeue_audit(audit, lengthof(audit));
			int			k;

			busy = n > 0;
			for (k = 0; k < n; k++)
				(void) in_transaction(job_step, &audit[k], "crmguard audit");
			if (!got_sigterm && dequeue(&job))
			{
				/*
				 * Outbox wake-ups come one per committed message; spaced out,
				 * those queued meanwhile are one (enqueue folds them).
				 */
				if (job.kind == CG_JOB_NOTIFY)
				{
					long		secs;
					int			usecs;

					TimestampDifference(last_notify, GetCurrentTimestamp(), &secs, &usecs);
					if (secs == 0 && usecs < CG_NOTIFY_GAP_MS * 1000)
						pg_usleep(CG_NOTIFY_GAP_MS * 1000L - usecs);
					last_notify = GetCurrentTimestamp();
				}
				(void) in_transaction(job_step, &job, "crmguard job");
				busy = true;
				any_job = true;
				only_notified &= job.kind == CG_JOB_NOTIFY;
			}
			while (!got_sigterm && take_summary(&summary))
			{
				(void) in_transaction(summary_step, &summary, "crmguard audit summary");
				busy = true;
				only_notified = false;
			}
			if (n > 0)
				only_notified = false;
			if (busy)
				idle_since = GetCurrentTimestamp();
		}
		if (summaries_pending())
			timeout = CG_SUMMARY_QUIET_MS / 4;
		/*
		 * Approval timeouts, after each round; but a round of outbox wake-ups
		 * alone (one per committed message, under load) looks at most once
		 * a second.
		 */
		if (!(any_job && only_notified &&
			  !TimestampDifferenceExceeds(last_tick, GetCurrentTimestamp(), 1000)) &&
			!got_sigterm && !RecoveryInProgress())
		{
			last_tick = GetCurrentTimestamp();
			if (in_transaction(tick_step, NULL, "crmguard approval timeouts"))
				idle_since = GetCurrentTimestamp();	/* stay while requests wait on a clock */
		}
		if (TimestampDifferenceExceeds(idle_since, GetCurrentTimestamp(), CG_IDLE_EXIT_MS) &&
			release_if_idle())
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}
