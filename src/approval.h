/*
 * approval.h
 *		What approval.c (the lock, the caches, submission triggers, actions,
 *		definitions) and approval_engine.c (submission and decisions) share.
 */
#ifndef CRMGUARD_APPROVAL_H
#define CRMGUARD_APPROVAL_H

#include "executor/spi.h"
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

/* approval.c */
extern void cg_approval_run_actions(RequestInfo *r, Jsonb *actions);
extern Jsonb *cg_approval_current_row(RequestInfo *r);
extern void cg_approval_planner_settings(void);
extern SPIPlanPtr cg_approval_plan(int slot, const char *sql, int nargs, Oid *types);

/* approval_engine.c */
extern int64 cg_approval_submit(int64 process, const char *key, Jsonb *data,
								const char *comment, bool automatic);

/* slots of the kept plans on crmguard's own catalogs */
enum
{
	PLAN_PENDING_OF_TABLE,
	PLAN_PENDING_KEY,
	PLAN_ANY_PENDING,
	PLAN_PROCESSES,
	PLAN_REQUEST,
	PLAN_DELEGATES,
	PLAN_APPROVED,
	PLAN_HISTORY,
	PLAN_FINISH,
	PLAN_STEP,
	PLAN_PENDING_ROW,
	PLAN_OPEN_REQUEST,
	PLAN_INSERT_REQUEST,
	PLAN_ROW_DATA,
	PLAN_PROCESS,
	PLAN_ROLE,
	PLAN_NAMED,
	PLAN_PRINCIPAL,
	PLAN_NOT_WAITING,
	NUM_APPROVAL_PLANS
};

#endif							/* CRMGUARD_APPROVAL_H */
