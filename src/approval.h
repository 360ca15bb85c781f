/*
 * approval.h
 *		What approval.c (submission triggers, actions, definitions),
 *		approval_lock.c (the lock and its caches) and approval_engine.c
 *		(submission and decisions) share.
 */
#ifndef CRMGUARD_APPROVAL_H
#define CRMGUARD_APPROVAL_H

#include "access/htup.h"
#include "executor/spi.h"
#include "utils/hsearch.h"
#include "utils/relcache.h"
#include "utils/array.h"
#include "utils/jsonb.h"

/* A request as the actions see it (its state once decided) */
typedef struct RequestInfo
{
	int64		id;
	Oid			relid;
	char	   *key;
	char	   *pk;
	int64		submitted_by;	/* 0: nobody */
	ArrayType  *approvers;
	Oid			run_as;
	char	   *process;
	char	   *state;
} RequestInfo;

/* A current process of a table, as the cache holds it */
typedef struct Process
{
	int64		id;
	char	   *compiled;		/* entry criteria over the row */
	bool		on_insert;
	bool		on_update;
} Process;

/* What a backend knows of a table with processes (approval_lock.c's cache) */
typedef struct ApprovalTable
{
	Oid			relid;			/* hash key */
	int			nprocesses;
	Process    *processes;		/* current ones, in their order */
	bool		loaded;			/* pending keys read */
	uint64		loaded_at;		/* the clock when they were read */
	int			rechecked;		/* keys asked for since */
	int			npending;		/* pending keys read then */
	MemoryContext keys_context;
	HTAB	   *text_keys;		/* text key -> TextKeyEntry */
	HTAB	   *int_keys;		/* integer key -> IntKeyEntry */
	uint64	   *int_seen;		/* a bit per hash of the integer keys in int_keys */
} ApprovalTable;

/* approval_lock.c */
extern ApprovalTable *cg_approval_table(Oid relid);
extern char *cg_approval_key_text(Relation rel, HeapTuple tuple, AttrNumber keyatt);
extern AttrNumber cg_approval_key_attno(Relation rel);
extern void cg_approval_bypass(Oid relid, char *key);
extern void cg_approval_request_written(Relation rel, HeapTuple old, HeapTuple new);
extern void cg_approval_planner_settings(void);
extern SPIPlanPtr cg_approval_plan(int slot, const char *sql, int nargs, Oid *types);

/* approval.c */
extern void cg_approval_run_actions(RequestInfo *r, Jsonb *actions);
extern Jsonb *cg_approval_current_row(RequestInfo *r);

/* approval_engine.c */
extern Oid	cg_approval_catalog(const char *name);
extern int64 *cg_approval_ids(ArrayType *a, int *n);
extern int64 *cg_approval_approved_by(int64 request, int step, int *n);
extern bool cg_approval_editable_columns(int64 process, Datum *editable);
extern int64 cg_approval_submit(int64 process, const char *key, Jsonb *data,
								const char *comment, bool automatic);

/* slots of the kept plans on crmguard's own catalogs */
enum
{
	PLAN_ROLE,
	PLAN_NAMED,
	NUM_APPROVAL_PLANS
};

#endif							/* CRMGUARD_APPROVAL_H */
