/*
 * worker.c
 *		A queue in shared memory and one background worker per database that
 *		drains it, each job in a transaction of its own.
 *
 * Backends queue work that must outlive their own transaction (the audit
 * record of a refusal, which is about to roll back).  The worker is started
 * on demand, the first time a backend of a database queues a job.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "crmguard.h"

#define CG_QUEUE_LEN		256
#define CG_JOB_BYTES		2048
#define CG_MAX_WORKERS		16
#define CG_IDLE_EXIT_MS		(10 * 60 * 1000)

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
} CgWorkerSlot;

typedef struct CgShared
{
	LWLock	   *lock;
	uint64		head;			/* next job to take */
	uint64		tail;			/* next free place */
	CgWorkerSlot workers[CG_MAX_WORKERS];
	CgJob		jobs[CG_QUEUE_LEN];
} CgShared;

static CgShared *shared = NULL;
static volatile sig_atomic_t got_sigterm = false;

PGDLLEXPORT void crmguard_worker_main(Datum arg);

void
cg_worker_shmem_request(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(CgShared)));
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
	LWLockRelease(AddinShmemInitLock);
}

/* Start this database's worker unless it runs or is starting; lock held */
static void
ensure_worker_locked(void)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	CgWorkerSlot *free_slot = NULL;
	int			i;

	for (i = 0; i < CG_MAX_WORKERS; i++)
	{
		CgWorkerSlot *slot = &shared->workers[i];

		if (slot->dboid == MyDatabaseId)
		{
			/* a start that never arrived within a minute is retried */
			if (slot->pid != 0 ||
				!TimestampDifferenceExceeds(slot->started_at, GetCurrentTimestamp(), 60000))
			{
				if (slot->latch)
					SetLatch(slot->latch);
				return;
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
		return;
	}

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "crmguard");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "crmguard_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "crmguard worker for database %u", MyDatabaseId);
	snprintf(worker.bgw_type, BGW_MAXLEN, "crmguard worker");
	worker.bgw_main_arg = ObjectIdGetDatum(MyDatabaseId);
	worker.bgw_notify_pid = 0;

	free_slot->dboid = MyDatabaseId;
	free_slot->pid = 0;
	free_slot->latch = NULL;
	free_slot->started_at = GetCurrentTimestamp();
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		free_slot->dboid = InvalidOid;
		ereport(WARNING,
				(errmsg("crmguard could not start its background worker"),
				 errhint("Raise \"max_worker_processes\".")));
	}
}

/* Queue a job for this database's worker; false when the queue is full */
bool
cg_enqueue(CgJobKind kind, const char *data, int len)
{
	CgJob	   *job;

	cg_require_preload();
	if (len > CG_JOB_BYTES)
		elog(ERROR, "crmguard job of %d bytes exceeds %d", len, CG_JOB_BYTES);

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	if (shared->tail - shared->head >= CG_QUEUE_LEN)
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
	ensure_worker_locked();
	LWLockRelease(shared->lock);
	return true;
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
	for (i = 0; i < CG_MAX_WORKERS; i++)
		if (shared->workers[i].pid == MyProcPid)
			memset(&shared->workers[i], 0, sizeof(CgWorkerSlot));
	LWLockRelease(shared->lock);
	return true;
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
		case CG_JOB_OTP_ISSUE:
			cg_otp_run_job(job->data, job->len);
			break;
		case CG_JOB_WAKE:
			break;				/* the tick after it does the work */
	}
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

	while (!got_sigterm)
	{
		CgJob		job;

		CHECK_FOR_INTERRUPTS();
		while (!got_sigterm && dequeue(&job))
		{
			(void) in_transaction(job_step, &job, "crmguard job");
			idle_since = GetCurrentTimestamp();
		}
		if (!got_sigterm && !RecoveryInProgress() &&
			in_transaction(tick_step, NULL, "crmguard approval timeouts"))
			idle_since = GetCurrentTimestamp();	/* stay while requests wait on a clock */
		if (TimestampDifferenceExceeds(idle_since, GetCurrentTimestamp(), CG_IDLE_EXIT_MS) &&
			release_if_idle())
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}
