/*
 * crmguard.h
 *		Interfaces shared by the crmguard modules.
 *
 * Every module includes this one header: settings, the catalog lookups,
 * the privileged-context helpers, and the entry points of the principal,
 * crypto, audit and worker modules.
 */
#ifndef CRMGUARD_H
#define CRMGUARD_H

#include "access/htup.h"
#include "access/skey.h"
#include "datatype/timestamp.h"
#include "nodes/lockoptions.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "storage/lockdefs.h"
#include "utils/array.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"

/* SQLSTATEs of the spec */
#define ERRCODE_CG_OTP_REQUIRED			MAKE_SQLSTATE('C','G','0','0','1')
#define ERRCODE_CG_OTP_WRONG			MAKE_SQLSTATE('C','G','0','0','2')
#define ERRCODE_CG_OTP_EXPIRED			MAKE_SQLSTATE('C','G','0','0','3')
#define ERRCODE_CG_OTP_RESENDS			MAKE_SQLSTATE('C','G','0','0','4')
#define ERRCODE_CG_ROW_LOCKED			MAKE_SQLSTATE('C','G','0','1','0')
#define ERRCODE_CG_NOT_APPROVER			MAKE_SQLSTATE('C','G','0','1','1')
#define ERRCODE_CG_INVALID_RULE			MAKE_SQLSTATE('C','G','0','2','0')
#define ERRCODE_CG_DEVICE				MAKE_SQLSTATE('C','G','0','3','0')
#define ERRCODE_CG_INVALID_TOKEN		MAKE_SQLSTATE('C','G','0','3','1')
#define ERRCODE_CG_FIELD_REFUSED		MAKE_SQLSTATE('C','G','0','4','0')

#define CG_KEY_BYTES	32
#define CG_HASH_BYTES	32

/* crmguard.c: settings, preload check, catalog and privileged context */
extern char *cg_key_file;
extern bool cg_preloaded;

/* the version of crmguard's SQL objects this library serves (crmguard.control) */
#define CG_EXTENSION_VERSION "1.1"

extern void cg_require_preload(void);
extern bool cg_catalog_never_written(Oid relid);

typedef struct CgCatalog
{
	Oid			schema;
	Oid			principal_rel;
	Oid			audit_rel;
	Oid			otp_rule_rel;
	Oid			visibility_rule_rel;
	Oid			owner;			/* owner of the extension (of its schema) */
} CgCatalog;

extern const CgCatalog *cg_catalog(void);
extern void cg_require_relation(Oid relid);
extern char *cg_relation_description(Oid relid);
extern bool cg_catalog_has_row(const char *sql, int nargs, Oid *types, Datum *values);
extern void cg_register_relcache_callback(RelcacheCallbackFunction function, Datum arg);
typedef void (*CgCatalogRowFn) (Datum *values, bool *nulls, void *arg);
extern void cg_scan_catalog(Oid relid, Snapshot snapshot, int ncolumns, const char *const *columns,
							CgCatalogRowFn fn, void *arg);
typedef struct CgCatalogScan CgCatalogScan;
extern CgCatalogScan *cg_catalog_scan_begin(Oid relid, const char *index_name, int nkeys,
											Snapshot snapshot, int ncolumns,
											const char *const *columns);
extern void cg_catalog_scan_run(CgCatalogScan *scan, ScanKey keys, CgCatalogRowFn fn, void *arg);
extern void cg_catalog_scan_end(CgCatalogScan *scan);
typedef bool (*CgCatalogRowTest) (Datum *values, bool *nulls, void *arg);
/* a row trigger's work, run by a writer without a statement (old or new NULL: none) */
typedef void (*CgRowWrittenFn) (Relation rel, HeapTuple old, HeapTuple new);
extern bool cg_catalog_scan_find(CgCatalogScan *scan, ScanKey keys, CgCatalogRowTest test, void *arg);
extern void cg_scan_catalog_by_key(Oid relid, const char *index_name, int nkeys, ScanKey keys,
								   Snapshot snapshot, int ncolumns, const char *const *columns,
								   CgCatalogRowFn fn, void *arg);
extern bool cg_update_catalog_row(Oid relid, const char *index_name, int nkeys, ScanKey keys,
								  int ntest, const char *const *test_columns, CgCatalogRowTest test,
								  void *arg, int ncolumns, const char *const *columns,
								  const Oid *types, const Datum *values, const bool *nulls);
extern uint64 cg_delete_catalog_rows(Oid relid, const char *index_name, int nkeys, ScanKey keys,
									  int ntest, const char *const *test_columns,
									  CgCatalogRowTest test, void *arg);
extern bool cg_lock_catalog_row(Oid relid, const char *index_name, int nkeys, ScanKey keys,
								LockTupleMode mode, int ncolumns, const char *const *columns,
								CgCatalogRowFn fn, void *arg);
extern void cg_insert_catalog_rows(Oid relid, int ncolumns, const char *const *columns,
								   const Oid *types, int nrows, const Datum *values,
								   const bool *nulls);
extern Oid	cg_function_oid(const char *name, int nargs, const Oid *argtypes);
extern bool cg_function_is(Oid fn, const char *symbol);

typedef struct CgPrivilegedContext
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} CgPrivilegedContext;

extern void cg_enter_owner(CgPrivilegedContext *ctx);
extern void cg_leave_owner(CgPrivilegedContext *ctx);
extern void cg_enter_role(CgPrivilegedContext *ctx, Oid role);
extern void cg_enter_table_owner(CgPrivilegedContext *ctx, Oid relid);
extern int	cg_pin_output_settings(void);
extern Jsonb *cg_row_jsonb(Datum row);
extern bool cg_type_text_is_fixed(Oid type);
extern char *cg_row_key_output(Oid keytype, Datum value);
extern int	cg_execute_kept(const char *sql, int nargs, Oid *types, Datum *values,
							const char *nulls, bool read_only, long count);
extern int	cg_execute_kept_shaped(const char *sql, int nargs, Oid *types, Datum *values,
								   const char *nulls, bool read_only, long count);

/* crypto.c: the server key and the primitives built on it */
typedef enum CgKeyPurpose
{
	CG_KEY_TOKEN = 1,
	CG_KEY_AUDIT = 2,
	CG_KEY_OTP = 3,
	CG_KEY_FIELD_CIPHER = 10,	/* contact fields: AEAD of masked values */
	CG_KEY_FIELD_BLIND = 11,	/* contact fields: blind index */
	CG_KEY_DEVICE = 12,			/* device challenges' MAC */
	CG_KEY_ENROLL = 13			/* enrollment codes' keyed hashes */
} CgKeyPurpose;

extern void cg_subkey(CgKeyPurpose purpose, unsigned char *out);
extern void cg_crypto_init(void);
extern void cg_put_uint(unsigned char *p, uint64 v, int bytes);
extern uint64 cg_get_uint(const unsigned char *p, int bytes);

/* principal.c: who is acting */
typedef struct CgPrincipal
{
	int64		id;
	char	   *name;
	Oid			db_role;		/* InvalidOid when unmapped or role missing */
	int64		manager_id;		/* 0 when none */
	int			nroles;
	char	  **roles;			/* CRM roles */
	Jsonb	   *attributes;
	bool		active;
	bool		require_device;
} CgPrincipal;

extern const CgPrincipal *cg_current_principal(void);
extern const CgPrincipal *cg_principal_by_name(const char *name);
extern char *cg_principal_attr(const CgPrincipal *p, const char *key);
extern ArrayType *cg_principal_team(int64 id);
extern int64 cg_evaluate_as(int64 id);
extern void cg_evaluate_as_end(int64 previous);
extern void cg_principal_invalidate(void);
extern void cg_principal_forget(void);
extern void cg_principal_pre_commit(void);
extern void cg_assume_principal(int64 id, TimestampTz expires_at, bool is_local,
								const char *via);
extern void cg_assume_nobody(void);
extern void cg_principal_check_declare(DeclareCursorStmt *stmt);
extern void cg_assume_end(void);
extern const CgPrincipal *cg_principal_by_id(int64 id);
extern int64 cg_assumed_device(bool *is_local);
extern void cg_refuse_token(const char *reason) pg_attribute_noreturn();

/* jwt.c: identity from a JWT (HS256, EdDSA) verified with crmguard.jwt_key_file */
extern void cg_jwt_init(void);

/* redact.c: tokens, JWTs and OTP codes never reach the server log */
extern void cg_redact_init(void);

/* audit.c: the one audit writer */
extern void cg_audit(const char *action, const char *target,
					 const char *row_key, Jsonb *detail);
extern void cg_audit_durable(const char *action, const char *target,
							 const char *row_key, const char *detail_json);
extern void cg_audit_write(int64 principal, TimestampTz at, const char *action,
						   const char *target, const char *row_key,
						   const char *detail_json);
extern void cg_audit_run_job(const char *data, int len);
extern void cg_audit_run_seal(const char *data, int len);
extern void cg_audit_shmem_request(void);
extern void cg_audit_shmem_startup(void);
extern void cg_audit_write_summary(int64 principal, const char *action, const char *role,
								   int64 count, TimestampTz first_at, TimestampTz last_at);

/* worker.c: shared memory queue and background worker */
#define CG_JOB_BYTES		2048	/* the largest job's data */
typedef enum CgJobKind
{
	CG_JOB_AUDIT = 1,
	CG_JOB_OTP_ISSUE = 2,
	CG_JOB_WAKE = 3,			/* start the worker: approvals have timeouts to watch */
	CG_JOB_NOTIFY = 4,			/* NOTIFY crmguard_outbox, the channel as payload */
	CG_JOB_AUDIT_SEAL = 5		/* name a segment of the audit chain rolled back */
} CgJobKind;

extern void cg_worker_shmem_request(void);
extern void cg_worker_shmem_startup(void);
extern void cg_worker_register(void);
extern bool cg_enqueue(CgJobKind kind, const char *data, int len);
extern bool cg_enqueue_after_commit(CgJobKind kind, const char *data, int len);
extern Oid	cg_worker_database_to_leave(Node *parsetree);
extern bool cg_worker_leave(Oid dboid);
extern void cg_worker_return(Oid dboid, bool was_there);
extern void cg_worker_forget(Oid dboid);
extern void cg_enqueue_audit(const char *data, int len, const char *action,
							 int64 principal, const char *role, TimestampTz at);

/* outbox.c: the one outbox */
extern void cg_outbox_init(void);
extern int64 cg_outbox_put(const char *channel, const char *recipient,
						   const char *subject, const char *body);
extern int64 cg_outbox_put_expiring(const char *channel, const char *recipient,
									const char *subject, const char *body,
									TimestampTz expires_at);

/* criteria.c: jsonb criteria -> SQL boolean expression over a table's columns */
extern char *cg_criteria_compile(Oid relid, Jsonb *criteria);
extern char *cg_criteria_compile_for(Oid relid, Jsonb *criteria, const CgPrincipal *p);
extern char *cg_criteria_compile_row(Oid relid, Jsonb *criteria, const char *prefix);
extern JsonbValue *cg_jsonb_member(JsonbContainer *object, const char *key);
extern char *cg_jsonb_scalar_text(const JsonbValue *v);
extern bool cg_criteria_row_matches(Oid relid, const char *compiled, Datum row);
extern bool cg_value_fits_type(Oid relid, Oid type, int32 typmod, const char *value);
extern char *cg_value_canonical(Oid relid, Oid type, int32 typmod, const char *value);

/*
 * otp.c: OTP-gated status changes.  A message's code follows this mark, by
 * which redact.c also finds it (pgaudit logs the outbox insert's parameters).
 */
#define CG_OTP_CODE_MARK	"your code is "

extern void cg_otp_shmem_request(void);
extern void cg_otp_shmem_startup(void);
extern void cg_otp_run_job(const char *data, int len);
extern char *cg_otp_equality_operator(Oid type);

/* visibility.c: row visibility through the row-level security hook */
extern void cg_visibility_init(void);
extern struct _SPI_plan *cg_prepare_all_rows(Oid relid, const char *sql, int nargs, Oid *types);
extern void cg_revalidate_all_rows(Oid relid, struct _SPI_plan *plan);

/*
 * guard.c: the triggers crmguard installs on user tables.  A guard is known
 * by its trigger function and the rule catalogs, never by its name alone;
 * the names below are how crmguard itself finds the guards it maintains.
 */
#define CG_OTP_GUARD_INSERT			"zz_crmguard_otp_guard_insert"
#define CG_OTP_GUARD_UPDATE			"zz_crmguard_otp_guard"
#define CG_FIELDS_GUARD				"!crmguard_fields"	/* fires ahead of the review guard */
#define CG_APPROVAL_LOCK_GUARD		"zz_crmguard_approval_lock"
#define CG_APPROVAL_TRUNCATE_GUARD	"zz_crmguard_approval_truncate"
#define CG_APPROVAL_SUBMIT_INSERT	"zz_crmguard_approval_submit_insert"
#define CG_APPROVAL_SUBMIT_UPDATE	"zz_crmguard_approval_submit_update"

/*
 * The review guard is a BEFORE INSERT row trigger named to fire first; this
 * SQL condition on pg_trigger "tg" finds a user trigger that would fire
 * ahead of it (triggers fire in byte order of their names).
 */
#define CG_REVIEW_GUARD "!crmguard_review"
#define CG_TRIGGER_AHEAD_OF_REVIEW \
	"NOT tg.tgisinternal AND (tg.tgtype::pg_catalog.int4 & 7) = 7" \
	" AND tg.tgname COLLATE \"C\" < '" CG_REVIEW_GUARD "' COLLATE \"C\"" \
	" AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc fp JOIN pg_catalog.pg_namespace fn" \
	" ON fn.oid OPERATOR(pg_catalog.=) fp.pronamespace WHERE fp.oid OPERATOR(pg_catalog.=) tg.tgfoid" \
	" AND fn.nspname OPERATOR(pg_catalog.=) 'crmguard' AND fp.proname OPERATOR(pg_catalog.=) 'fields_guard')"

extern bool cg_guard_internal;
extern void cg_guard_init(void);
extern void cg_guard_utility(PlannedStmt *pstmt);
extern void *cg_guard_snapshot(PlannedStmt *pstmt);
extern void cg_guard_snapshot_end(void *previous);

/* ddl_objects.c: what a DDL command touched, for the guard event trigger */
extern List *cg_ddl_touched_relations(void);
extern List *cg_drop_touched_relations(List **dropped_tables);

/* drop.c: what DROP EXTENSION crmguard loses, read before and said after it ran; the schema */
extern bool cg_drop_is_crmguard(Node *parsetree);
extern void *cg_drop_collect(void);
extern void cg_drop_finish(void *report);
extern void cg_require_table_owner(Oid relid);
extern bool cg_in_inheritance_tree(Oid relid);
extern bool cg_in_inheritance_tree_locked(Oid relid, LOCKMODE mode);
extern void cg_guard_install(Oid relid, const char *trigger_name,
							 const char *function_name, const char *events,
							 const char *when);
extern void cg_guard_install_statement(Oid relid, const char *trigger_name,
									   const char *function_name, const char *events);
extern void cg_guard_remove(Oid relid, const char *trigger_name);

/* otp_idle.c: statements that cannot wake the OTP guard skip it */
extern void cg_otp_idle_init(void);
extern char *cg_primary_key_column(Oid relid);

extern Oid	cg_review_approving;	/* the table an approved draft is being inserted into */

/* fields.c: contact fields (planner and utility hooks) */
extern void cg_fields_init(void);

/*
 * device.c: trusted devices.  cg_require_attested() is the one device gate:
 * every crmguard gate calls it; it raises CG030 for a require_device
 * principal that has not attested (or whose device was revoked).
 */
extern void cg_device_shmem_request(void);
extern void cg_device_shmem_startup(void);
extern void cg_require_attested(void);
extern bool cg_device_attested(const CgPrincipal *p);
extern void cg_device_verify(const CgPrincipal *p, int64 device, struct varlena *signature);
extern void cg_device_forget(void);
extern int64 cg_current_device(void);

/* activity.c: contributions per principal, table and day */
extern void cg_activity_init(void);
extern void cg_activity_note(const char *action);

/* approval.c: approval workflows */
extern bool cg_approval_tick(void);
extern void cg_approval_init(void);
extern void cg_approval_shmem_request(void);
extern void cg_approval_shmem_startup(void);
extern int64 cg_approval_any_pending(Oid relid);

#endif							/* CRMGUARD_H */
