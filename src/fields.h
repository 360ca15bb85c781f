/*
 * fields.h
 *		Contact fields: the interface between fields.c (catalog cache, who
 *		acts, values, sealing), fields_read.c (the projection and the hooks
 *		that route every read through it), fields_write.c (the row guard) and
 *		fields_sql.c (the SQL functions).  Internal to these four files.
 */
#ifndef CRMGUARD_FIELDS_H
#define CRMGUARD_FIELDS_H

#include <sodium.h>

#include "fmgr.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"

#define FIELDS_GUARD	CG_FIELDS_GUARD
#define TABLE_KEY_BYTES	16
#define BLIND_BYTES		16
#define FULL_MASK		"********"

typedef enum FieldType
{
	FT_TEXT, FT_INT, FT_NUMERIC, FT_DATE, FT_BOOL, FT_PHONE, FT_EMAIL
} FieldType;

typedef enum MaskKind
{
	MASK_PARTIAL, MASK_FULL, MASK_EMAIL
} MaskKind;

typedef struct FieldDef
{
	char	   *name;
	int			namelen;
	FieldType	type;
	int			nprojects;		/* -1: every project */
	char	  **projects;
	bool		unique;
	bool		masked;
	MaskKind	mask;
	bool		required;
	char	   *index_name;
	Oid			indexoid;		/* InvalidOid when missing: unique writes fail closed */
} FieldDef;

typedef struct FieldsTable
{
	Oid			relid;			/* hash key */
	AttrNumber	attnum;			/* the jsonb column */
	AttrNumber	project_attnum; /* InvalidAttrNumber: rows are shared */
	FmgrInfo	project_out;
	AttrNumber	pk_attnum;
	Oid			pk_type;
	char	   *broken;			/* why the table cannot be served (fail closed) */
	unsigned char table_key[TABLE_KEY_BYTES];
	unsigned char blind_key[crypto_generichash_KEYBYTES];
	int			nfields;
	FieldDef   *fields;
	bool		any_masked;
} FieldsTable;

typedef enum ActorKind
{
	ACTOR_RAW,					/* superuser or BYPASSRLS, no principal: the stored form */
	ACTOR_NOBODY,				/* sees no field */
	ACTOR_PRINCIPAL
} ActorKind;

typedef struct Actor
{
	ActorKind	kind;
	int64		id;
	bool		admin;			/* every project */
	bool		view_masked;
	int			nprojects;
	char	  **projects;
} Actor;

typedef struct ProjectionCache
{
	Oid			relid;
	uint64		generation;
	FieldsTable *table;
	Oid			userid;
	bool		have_actor;
	int64		principal;
	Actor		actor;
	bool		all_visible;	/* and nothing masked: the stored value is shown as is */
	bool	   *visible;
} ProjectionCache;

/* fields.c: the per-backend cache of fields tables */
extern HTAB *fld_tables;
extern bool fld_valid;
extern bool fld_loading;
extern uint64 fld_generation;
extern Oid	fld_table_rel;
extern Oid	fld_projection_func;
extern Oid	fld_row_func;
extern Oid	fld_get_func;
extern Oid	fld_get_text_func;
extern const char *const fld_type_names[];

/*
 * crmguard's own reads of the raw column: a query whose table alias is this
 * backend's random token, planned while fld_raw_depth > 0, is left as written.
 */
extern char fld_raw_alias[32];
extern int	fld_raw_depth;

/* drop_field removes a field's values: the guard lets that write through */
extern Oid	fld_internal;

/* fields.c: the cache */
extern void fld_invalidate(void);
extern void fld_load(void);
extern FieldsTable *fld_lookup(Oid relid);
extern FieldsTable *fld_table_or_error(Oid relid);
extern FieldDef *fld_find_def(FieldsTable *t, const char *name, int len);
extern FieldType fld_parse_type(const char *s);
extern MaskKind fld_parse_mask(const char *s);

/* fields.c: who acts */
extern void fld_actor_init(Actor *a);
extern bool fld_project_listed(const FieldDef *f, const char *project);
extern bool fld_actor_sees(const Actor *a, const FieldDef *f);

/* fields.c: values (CG040 on a refused one) */
extern void fld_refuse(const FieldDef *f, const char *name, const char *msg,
					   const char *detail) pg_attribute_noreturn();
extern char *fld_normalise(const FieldDef *f, const JsonbValue *in, JsonbValue *out);

/* fields.c: sealed values and the blind index */
extern char *fld_blind_index(const FieldsTable *t, const FieldDef *f, const char *canonical);
extern char *fld_decrypt(const FieldsTable *t, const FieldDef *f, const char *row_key,
						 const char *b64, int b64len);
extern JsonbValue *fld_sealed_value(const FieldsTable *t, const FieldDef *f, const char *row_key,
									const char *canonical, const char *enc);
extern bool fld_member_string(JsonbContainer *obj, const char *key, char **val, int *len);
extern void fld_push_string(JsonbParseState **st, JsonbIteratorToken tok, const char *s);

/* fields_read.c: the projection */
extern ProjectionCache *fld_projection_cache(FunctionCallInfo fcinfo, Oid relid);
extern Jsonb *fld_project(ProjectionCache *c, Jsonb *stored, bool stored_ok, bool clear,
						  const char *row_key, List **unmasked);

#endif							/* CRMGUARD_FIELDS_H */
