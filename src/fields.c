/*
 * fields.c
 *		Contact fields: project-scoped, typed, unique and masked custom fields
 *		kept in a jsonb column of a user table.
 *
 * Reads: a planner hook rewrites every reference to a fields column (and
 * every whole-row reference to its table) into crmguard.fields_projection()
 * (crmguard.fields_row()), whatever the query shape: plain SELECT, jsonb
 * operators, views (their stored query is planned with the outer one), SQL
 * and PL/pgSQL functions, RETURNING, COPY (SELECT ...) TO, and COPY table TO,
 * which a utility hook turns into COPY (SELECT ...) TO.  The projection holds
 * only the fields of the principal's projects, masked values masked.
 *
 * Writes: a BEFORE INSERT OR UPDATE row trigger in C validates and normalises
 * each value, encrypts masked values (XChaCha20-Poly1305, associated data =
 * table identity, field and row key) next to a keyed blind index and their
 * mask, probes the unique fields' indexes, and merges an UPDATE with the old
 * row so that fields the writer cannot see, and masked values written back
 * as it saw them, are kept.
 */
#include "postgres.h"

#include <ctype.h>

#include <sodium.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/planner.h"
#include "parser/parse_func.h"
#include "parser/parsetree.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "crmguard.h"

#define FIELDS_GUARD	"!crmguard_fields"	/* fires ahead of the review guard */
#define TABLE_KEY_BYTES	16
#define BLIND_BYTES		16
#define FULL_MASK		"********"

typedef enum FieldType
{
	FT_TEXT, FT_INT, FT_NUMERIC, FT_DATE, FT_BOOL, FT_PHONE, FT_EMAIL
} FieldType;

static const char *const field_type_names[] = {"text", "int", "numeric", "date", "bool", "phone", "email"};

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
	FmgrInfo	pk_out;
	Oid			pk_type;
	char	   *broken;			/* why the table cannot be served (fail closed) */
	unsigned char table_key[TABLE_KEY_BYTES];
	unsigned char blind_key[crypto_generichash_KEYBYTES];
	int			nfields;
	FieldDef   *fields;
	bool		any_masked;
} FieldsTable;

/* the per-backend cache of fields tables, reloaded after any change */
static MemoryContext fields_context = NULL;
static HTAB *fields_tables = NULL;
static bool fields_valid = false;
static bool fields_loading = false;
static uint64 fields_generation = 0;
static Oid	field_table_rel = InvalidOid;
static Oid	field_def_rel = InvalidOid;
static Oid	projection_func = InvalidOid;
static Oid	row_func = InvalidOid;
static Oid	get_func = InvalidOid;
static Oid	get_text_func = InvalidOid;
static bool callbacks_registered = false;

/*
 * crmguard's own reads of the raw column: a query whose table alias is this
 * backend's random token, planned while raw_depth > 0, is left as written.
 */
static char raw_alias[32];
static int	raw_depth = 0;

/* drop_field removes a field's values: the trigger lets that write through */
static Oid	fields_internal = InvalidOid;

static planner_hook_type prev_planner = NULL;
static ProcessUtility_hook_type prev_utility = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;

/* the two subkeys, derived once per backend */
static unsigned char *cipher_key = NULL;
static unsigned char *blind_root = NULL;

/* ---------------------------------------------------------------------------
 * Cache
 * ---------------------------------------------------------------------------
 */

static void
fields_invalidate(void)
{
	fields_valid = false;
}

static void
fields_relcache_callback(Datum arg, Oid relid)
{
	if (!fields_valid)
		return;
	if (relid == InvalidOid || relid == field_table_rel || relid == field_def_rel ||
		!OidIsValid(field_table_rel) ||
		(fields_tables && hash_search(fields_tables, &relid, HASH_FIND, NULL) != NULL))
		fields_invalidate();
}

static void
fields_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	fields_invalidate();
}

static void
derive_keys(void)
{
	if (cipher_key != NULL)
		return;
	cipher_key = sodium_malloc(CG_KEY_BYTES);
	blind_root = sodium_malloc(CG_KEY_BYTES);
	if (cipher_key == NULL || blind_root == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	cg_subkey(CG_KEY_FIELD_CIPHER, cipher_key);
	cg_subkey(CG_KEY_FIELD_BLIND, blind_root);
	sodium_mprotect_readonly(cipher_key);
	sodium_mprotect_readonly(blind_root);
}

static FieldType
parse_field_type(const char *s)
{
	int			i;

	for (i = 0; i < (int) lengthof(field_type_names); i++)
		if (strcmp(s, field_type_names[i]) == 0)
			return (FieldType) i;
	return (FieldType) -1;
}

static MaskKind
parse_mask(const char *s)
{
	if (strcmp(s, "partial") == 0)
		return MASK_PARTIAL;
	if (strcmp(s, "full") == 0)
		return MASK_FULL;
	if (strcmp(s, "email") == 0)
		return MASK_EMAIL;
	return (MaskKind) -1;
}

/* Resolve a table's columns, key and indexes; a missing piece marks it broken */
static void
resolve_table(FieldsTable *t, const char *fields_column, const char *project_column)
{
	Bitmapset  *pk;
	Oid			constraint;
	Oid			nsp = get_rel_namespace(t->relid);
	Oid			typout;
	bool		varlena;
	int			i;

	t->attnum = get_attnum(t->relid, fields_column);
	if (t->attnum <= 0 || get_atttype(t->relid, t->attnum) != JSONBOID)
	{
		t->broken = psprintf("its fields column \"%s\" is missing", fields_column);
		return;
	}
	if (project_column != NULL)
	{
		t->project_attnum = get_attnum(t->relid, project_column);
		if (t->project_attnum <= 0)
		{
			t->broken = psprintf("its project column \"%s\" is missing", project_column);
			return;
		}
		getTypeOutputInfo(get_atttype(t->relid, t->project_attnum), &typout, &varlena);
		fmgr_info_cxt(typout, &t->project_out, fields_context);
	}
	pk = get_primary_key_attnos(t->relid, false, &constraint);
	if (bms_num_members(pk) != 1)
	{
		t->broken = pstrdup("it no longer has a single-column primary key");
		return;
	}
	t->pk_attnum = bms_singleton_member(pk) + FirstLowInvalidHeapAttributeNumber;
	t->pk_type = get_atttype(t->relid, t->pk_attnum);
	getTypeOutputInfo(t->pk_type, &typout, &varlena);
	fmgr_info_cxt(typout, &t->pk_out, fields_context);
	for (i = 0; i < t->nfields; i++)
		t->fields[i].indexoid = get_relname_relid(t->fields[i].index_name, nsp);
}

/* Load every fields table of this database, as the extension owner */
static void
fields_load(void)
{
	Oid			schema;
	CgPrivilegedContext priv;
	MemoryContext old_context = fields_context;
	MemoryContext oldcxt;
	HASHCTL		ctl;
	uint64		i;

	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(fields_relcache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, fields_syscache_callback, (Datum) 0);
		CacheRegisterSyscacheCallback(PROCOID, fields_syscache_callback, (Datum) 0);
		callbacks_registered = true;
	}

	/*
	 * A statement may still hold entries of the old cache: retire it with the
	 * transaction rather than free it under its feet.
	 */
	if (old_context != NULL)
		MemoryContextSetParent(old_context, CurTransactionContext);
	fields_context = AllocSetContextCreate(CacheMemoryContext, "crmguard fields",
										   ALLOCSET_SMALL_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(FieldsTable);
	ctl.hcxt = fields_context;
	fields_tables = hash_create("crmguard fields tables", 16, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	fields_generation++;
	field_table_rel = InvalidOid;
	field_def_rel = InvalidOid;
	projection_func = InvalidOid;
	row_func = InvalidOid;
	get_func = InvalidOid;
	get_text_func = InvalidOid;

	schema = get_namespace_oid("crmguard", true);
	if (OidIsValid(schema))
	{
		field_table_rel = get_relname_relid("field_table", schema);
		field_def_rel = get_relname_relid("field_def", schema);
	}
	/* valid from here: invalidations arriving while loading count */
	fields_valid = true;
	if (!OidIsValid(field_table_rel) || !OidIsValid(field_def_rel))
		return;
	{
		Oid			args[2] = {JSONBOID, OIDOID};
		Oid			rargs[2] = {ANYELEMENTOID, OIDOID};
		Oid			gargs[3] = {JSONBOID, OIDOID, TEXTOID};

		projection_func = LookupFuncName(list_make2(makeString("crmguard"), makeString("fields_projection")),
										 2, args, true);
		row_func = LookupFuncName(list_make2(makeString("crmguard"), makeString("fields_row")),
								  2, rargs, true);
		get_func = LookupFuncName(list_make2(makeString("crmguard"), makeString("fields_get")),
								  3, gargs, true);
		get_text_func = LookupFuncName(list_make2(makeString("crmguard"), makeString("fields_get_text")),
									   3, gargs, true);
	}

	fields_loading = true;
	PG_TRY();
	{
		cg_enter_owner(&priv);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		/* not read-only: a fresh snapshot sees this transaction's own definitions */
		if (SPI_execute("SELECT t.target::pg_catalog.oid, t.fields_column::text, t.project_column::text, t.table_key,"
						" d.field_name, d.field_type, d.projects, d.unique_values, d.masked, d.mask, d.required,"
						" d.index_name::text"
						" FROM crmguard.field_table t LEFT JOIN crmguard.field_def d"
						" ON d.target::pg_catalog.oid OPERATOR(pg_catalog.=) t.target::pg_catalog.oid"
						" ORDER BY 1, d.id", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read crmguard.field_table");
		oldcxt = MemoryContextSwitchTo(fields_context);
		for (i = 0; i < SPI_processed;)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			Oid			relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
			FieldsTable *t = hash_search(fields_tables, &relid, HASH_ENTER, NULL);
			char	   *fields_column = SPI_getvalue(tup, desc, 2);
			char	   *project_column = SPI_getvalue(tup, desc, 3);
			bytea	   *key = DatumGetByteaPP(SPI_getbinval(tup, desc, 4, &isnull));
			uint64		first = i;
			int			n = 0;

			memset(((char *) t) + sizeof(Oid), 0, sizeof(FieldsTable) - sizeof(Oid));
			if (VARSIZE_ANY_EXHDR(key) == TABLE_KEY_BYTES)
				memcpy(t->table_key, VARDATA_ANY(key), TABLE_KEY_BYTES);
			while (i < SPI_processed &&
				   DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], desc, 1, &isnull)) == relid)
				i++;
			t->fields = palloc0(sizeof(FieldDef) * (i - first));
			for (; first < i; first++)
			{
				HeapTuple	d = SPI_tuptable->vals[first];
				FieldDef   *f = &t->fields[n];
				Datum		projects;

				if (SPI_getvalue(d, desc, 5) == NULL)
					continue;	/* a table without fields yet */
				f->name = SPI_getvalue(d, desc, 5);
				f->namelen = strlen(f->name);
				f->type = parse_field_type(SPI_getvalue(d, desc, 6));
				projects = SPI_getbinval(d, desc, 7, &isnull);
				f->nprojects = -1;
				if (!isnull)
				{
					Datum	   *elems;
					int			k;

					deconstruct_array(DatumGetArrayTypeP(projects), TEXTOID, -1, false, TYPALIGN_INT,
									  &elems, NULL, &f->nprojects);
					f->projects = palloc(sizeof(char *) * Max(f->nprojects, 1));
					for (k = 0; k < f->nprojects; k++)
						f->projects[k] = TextDatumGetCString(elems[k]);
				}
				f->unique = DatumGetBool(SPI_getbinval(d, desc, 8, &isnull));
				f->masked = DatumGetBool(SPI_getbinval(d, desc, 9, &isnull));
				f->mask = parse_mask(SPI_getvalue(d, desc, 10));
				f->required = DatumGetBool(SPI_getbinval(d, desc, 11, &isnull));
				f->index_name = SPI_getvalue(d, desc, 12);
				t->any_masked |= f->masked;
				n++;
			}
			t->nfields = n;
			resolve_table(t, fields_column, project_column);
		}
		MemoryContextSwitchTo(oldcxt);
		SPI_finish();
		cg_leave_owner(&priv);
	}
	PG_FINALLY();
	{
		fields_loading = false;
	}
	PG_END_TRY();

	/* the blind key of each table, keyed by the server's subkey (read only when needed) */
	if (hash_get_num_entries(fields_tables) > 0)
	{
		HASH_SEQ_STATUS seq;
		FieldsTable *t;

		derive_keys();
		hash_seq_init(&seq, fields_tables);
		while ((t = hash_seq_search(&seq)) != NULL)
			crypto_generichash(t->blind_key, sizeof(t->blind_key), t->table_key, TABLE_KEY_BYTES,
							   blind_root, CG_KEY_BYTES);
	}
}

/* The fields table of relid, or NULL; cheap for every other table */
static FieldsTable *
fields_lookup(Oid relid)
{
	if (!fields_valid)
		fields_load();
	if (!OidIsValid(field_table_rel) || hash_get_num_entries(fields_tables) == 0)
		return NULL;
	return hash_search(fields_tables, &relid, HASH_FIND, NULL);
}

static FieldsTable *
fields_table_or_error(Oid relid)
{
	FieldsTable *t = fields_lookup(relid);

	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CG_INVALID_RULE),
				 errmsg("table %s has no contact fields", get_rel_name(relid)),
				 errhint("Call crmguard.enable_fields() first.")));
	if (t->broken)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("contact fields of table %s cannot be served: %s", get_rel_name(relid), t->broken)));
	return t;
}

static FieldDef *
find_def(FieldsTable *t, const char *name, int len)
{
	int			i;

	for (i = 0; i < t->nfields; i++)
		if (t->fields[i].namelen == len && memcmp(t->fields[i].name, name, len) == 0)
			return &t->fields[i];
	return NULL;
}

/* ---------------------------------------------------------------------------
 * Who reads or writes: the principal's projects and rights
 * ---------------------------------------------------------------------------
 */
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

static bool
principal_has_role(const CgPrincipal *p, const char *role)
{
	int			i;

	for (i = 0; i < p->nroles; i++)
		if (strcmp(p->roles[i], role) == 0)
			return true;
	return false;
}

static void
actor_init(Actor *a)
{
	const CgPrincipal *p = cg_current_principal();

	memset(a, 0, sizeof(Actor));
	if (p == NULL)
	{
		Oid			user = GetUserId();

		a->kind = (superuser_arg(user) || has_bypassrls_privilege(user)) ? ACTOR_RAW : ACTOR_NOBODY;
		return;
	}
	a->kind = ACTOR_PRINCIPAL;
	a->id = p->id;
	a->admin = principal_has_role(p, "admin");
	a->view_masked = principal_has_role(p, "view_masked");
	if (p->attributes != NULL)
	{
		JsonbValue	k;
		JsonbValue *v;

		k.type = jbvString;
		k.val.string.val = "projects";
		k.val.string.len = strlen("projects");
		v = findJsonbValueFromContainer(&p->attributes->root, JB_FOBJECT, &k);
		if (v != NULL && v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
		{
			JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
			JsonbValue	e;
			JsonbIteratorToken r;

			a->projects = palloc(sizeof(char *) * (JsonContainerSize(v->val.binary.data) + 1));
			while ((r = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
				if (r == WJB_ELEM && e.type == jbvString)
					a->projects[a->nprojects++] = pnstrdup(e.val.string.val, e.val.string.len);
		}
	}
}

static bool
project_listed(const FieldDef *f, const char *project)
{
	int			i;

	for (i = 0; i < f->nprojects; i++)
		if (strcmp(f->projects[i], project) == 0)
			return true;
	return false;
}

static bool
actor_sees(const Actor *a, const FieldDef *f)
{
	int			i;

	if (a->kind == ACTOR_RAW || (a->kind == ACTOR_PRINCIPAL && a->admin))
		return true;
	if (a->kind == ACTOR_NOBODY)
		return false;
	if (f->nprojects < 0)
		return true;
	for (i = 0; i < a->nprojects; i++)
		if (project_listed(f, a->projects[i]))
			return true;
	return false;
}

/* ---------------------------------------------------------------------------
 * Values: validation, normalisation, masks
 * ---------------------------------------------------------------------------
 */

static void
refuse(const FieldDef *f, const char *name, const char *msg, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_CG_FIELD_REFUSED),
			 errmsg("%s", msg),
			 detail ? errdetail("%s", detail) : 0));
}

static void
refuse_value(const FieldDef *f, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_CG_FIELD_REFUSED),
			 errmsg("invalid value for field \"%s\" of type %s", f->name, field_type_names[f->type]),
			 errdetail("%s", why),
			 f->type == FT_PHONE ? errhint("Write phone numbers with their country code, as in \"+39 347 555 0123\".") : 0));
}

/* The text of a jsonb scalar (strings unquoted), as ->> shows it */
static char *
scalar_text(const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			return NULL;
	}
}

static bool
parse_int64(const char *s, int64 *out)
{
	char	   *end;
	long long	v;

	while (isspace((unsigned char) *s))
		s++;
	if (*s == '\0')
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0)
		return false;
	while (isspace((unsigned char) *end))
		end++;
	if (*end != '\0')
		return false;
	*out = (int64) v;
	return true;
}

static bool
numeric_syntax(const char *s)
{
	int			digits = 0;

	if (*s == '+' || *s == '-')
		s++;
	while (isdigit((unsigned char) *s))
		s++, digits++;
	if (*s == '.')
		for (s++; isdigit((unsigned char) *s); s++)
			digits++;
	if (digits == 0)
		return false;
	if (*s == 'e' || *s == 'E')
	{
		int			exp = 0;

		s++;
		if (*s == '+' || *s == '-')
			s++;
		if (!isdigit((unsigned char) *s))
			return false;
		while (isdigit((unsigned char) *s))
			if (++exp > 3)
				return false;	/* beyond numeric's range */
			else
				s++;
	}
	return *s == '\0';
}

/*
 * Check one value against its field's type and return it normalised (*out,
 * a jsonb scalar) with its canonical text (the blind index's input).
 */
static char *
normalise_value(const FieldDef *f, const JsonbValue *in, JsonbValue *out)
{
	char	   *s;

	if (in->type == jbvBinary)
		refuse_value(f, "A field holds a single value, not an object or an array.");
	s = scalar_text(in);
	switch (f->type)
	{
		case FT_TEXT:
			out->type = jbvString;
			out->val.string.val = s;
			out->val.string.len = strlen(s);
			return s;
		case FT_INT:
			{
				int64		v;

				if (in->type == jbvBool || !parse_int64(s, &v))
					refuse_value(f, psprintf("\"%s\" is not an integer.", s));
				out->type = jbvNumeric;
				out->val.numeric = int64_to_numeric(v);
				return psprintf(INT64_FORMAT, v);
			}
		case FT_NUMERIC:
			{
				char	   *t = s;
				char	   *norm;

				while (isspace((unsigned char) *t))
					t++;
				if (in->type == jbvBool || (in->type == jbvString && !numeric_syntax(t)))
					refuse_value(f, psprintf("\"%s\" is not a number.", s));
				norm = numeric_normalize(DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(t),
																			 ObjectIdGetDatum(InvalidOid),
																			 Int32GetDatum(-1))));
				out->type = jbvNumeric;
				out->val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in, CStringGetDatum(norm),
																	   ObjectIdGetDatum(InvalidOid),
																	   Int32GetDatum(-1)));
				return norm;
			}
		case FT_DATE:
			{
				int			y,
							m,
							d,
							y2,
							m2,
							d2;
				char		tail;

				if (in->type != jbvString ||
					sscanf(s, "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3 || strlen(s) != 10 ||
					y < 1 || m < 1 || m > 12 || d < 1 || d > 31)
					refuse_value(f, psprintf("\"%s\" is not a date written as YYYY-MM-DD.", s));
				j2date(date2j(y, m, d), &y2, &m2, &d2);
				if (y2 != y || m2 != m || d2 != d)
					refuse_value(f, psprintf("\"%s\" is not a date of the calendar.", s));
				s = psprintf("%04d-%02d-%02d", y, m, d);
				out->type = jbvString;
				out->val.string.val = s;
				out->val.string.len = strlen(s);
				return s;
			}
		case FT_BOOL:
			{
				bool		b;

				if (in->type == jbvBool)
					b = in->val.boolean;
				else if (in->type != jbvString || !parse_bool(s, &b))
					refuse_value(f, psprintf("\"%s\" is not a boolean.", s));
				out->type = jbvBool;
				out->val.boolean = b;
				return pstrdup(b ? "true" : "false");
			}
		case FT_PHONE:
			{
				StringInfoData buf;
				const char *p = s;
				int			digits = 0;

				if (in->type == jbvBool)
					refuse_value(f, "A phone number is text.");
				while (isspace((unsigned char) *p))
					p++;
				initStringInfo(&buf);
				appendStringInfoChar(&buf, '+');
				if (*p == '+')
					p++;
				else if (p[0] == '0' && p[1] == '0')
					p += 2;
				else
					refuse_value(f, psprintf("\"%s\" does not start with a country code (+ or 00).", s));
				for (; *p; p++)
				{
					if (isdigit((unsigned char) *p))
					{
						appendStringInfoChar(&buf, *p);
						digits++;
					}
					else if (!strchr(" -./()", *p))
						refuse_value(f, psprintf("\"%s\" is not a phone number.", s));
				}
				if (digits < 7 || digits > 15)
					refuse_value(f, psprintf("\"%s\" does not have 7 to 15 digits.", s));
				out->type = jbvString;
				out->val.string.val = buf.data;
				out->val.string.len = buf.len;
				return buf.data;
			}
		case FT_EMAIL:
			{
				char	   *t = s;
				char	   *end;
				char	   *at;
				char	   *c;

				if (in->type != jbvString)
					refuse_value(f, "An e-mail address is text.");
				while (isspace((unsigned char) *t))
					t++;
				end = t + strlen(t);
				while (end > t && isspace((unsigned char) end[-1]))
					*--end = '\0';
				at = strchr(t, '@');
				if (at == NULL || at == t || strchr(at + 1, '@') != NULL || at[1] == '\0' ||
					strchr(at + 1, '.') == NULL || at[1] == '.' || end[-1] == '.')
					refuse_value(f, psprintf("\"%s\" is not an e-mail address.", s));
				for (c = t; *c; c++)
					if ((unsigned char) *c <= ' ' || *c == '"' || *c == '<' || *c == '>' || *c == ',')
						refuse_value(f, psprintf("\"%s\" is not an e-mail address.", s));
				for (c = at + 1; *c; c++)
					*c = pg_ascii_tolower((unsigned char) *c);
				out->type = jbvString;
				out->val.string.val = t;
				out->val.string.len = strlen(t);
				return t;
			}
	}
	return NULL;				/* keep compiler quiet */
}

/* What an agent without view_masked is shown instead of a masked value */
static char *
mask_value(const FieldDef *f, const char *clear)
{
	int			len = strlen(clear);
	StringInfoData buf;

	initStringInfo(&buf);
	if (f->mask == MASK_FULL)
		return pstrdup(FULL_MASK);
	if (f->mask == MASK_EMAIL || f->type == FT_EMAIL)
	{
		const char *at = strrchr(clear, '@');

		if (at == NULL)
			return pstrdup(FULL_MASK);
		if (f->mask == MASK_EMAIL || at > clear)
			appendStringInfoChar(&buf, clear[0]);
		appendStringInfo(&buf, "***%s", at);
		return buf.data;
	}
	if (f->type == FT_PHONE && len > 6)
	{
		/* "+393475550123" -> "+39 *** *** 123" */
		appendStringInfo(&buf, "%.3s *** *** %s", clear, clear + len - 3);
		return buf.data;
	}
	if (len < 4)
		return pstrdup(FULL_MASK);
	appendStringInfo(&buf, "%c***%c", clear[0], clear[len - 1]);
	return buf.data;
}

/* ---------------------------------------------------------------------------
 * Encryption and the blind index
 * ---------------------------------------------------------------------------
 */

static void
associated_data(StringInfo ad, const FieldsTable *t, const FieldDef *f, const char *row_key)
{
	initStringInfo(ad);
	appendBinaryStringInfo(ad, (const char *) t->table_key, TABLE_KEY_BYTES);
	appendBinaryStringInfo(ad, f->name, f->namelen + 1);
	appendStringInfoString(ad, row_key);
}

static char *
blind_index(const FieldsTable *t, const FieldDef *f, const char *canonical)
{
	crypto_generichash_state st;
	unsigned char out[BLIND_BYTES];
	char	   *hex = palloc(BLIND_BYTES * 2 + 1);

	crypto_generichash_init(&st, t->blind_key, sizeof(t->blind_key), BLIND_BYTES);
	crypto_generichash_update(&st, (const unsigned char *) f->name, f->namelen + 1);
	crypto_generichash_update(&st, (const unsigned char *) canonical, strlen(canonical));
	crypto_generichash_final(&st, out, BLIND_BYTES);
	sodium_bin2hex(hex, BLIND_BYTES * 2 + 1, out, BLIND_BYTES);
	return hex;
}

/*
 * A fresh nonce: this backend's random 16-byte prefix and a counter.  As
 * unique as 24 random bytes (the prefix is drawn once per process), without
 * a getrandom() system call per value.
 */
static void
next_nonce(unsigned char *nonce)
{
	static unsigned char prefix[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES - 8];
	static uint64 counter = 0;
	static pid_t prefix_pid = 0;
	uint64		n;
	int			i;

	StaticAssertStmt(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES == 24, "XChaCha20 nonces have 24 bytes");
	if (prefix_pid != MyProcPid)
	{
		randombytes_buf(prefix, sizeof(prefix));
		counter = 0;
		prefix_pid = MyProcPid;
	}
	n = ++counter;
	memcpy(nonce, prefix, sizeof(prefix));
	for (i = 0; i < 8; i++)
	{
		nonce[sizeof(prefix) + i] = (unsigned char) (n & 0xff);
		n >>= 8;
	}
}

static char *
encrypt_value(const FieldsTable *t, const FieldDef *f, const char *row_key, const char *clear)
{
	StringInfoData ad;
	size_t		clen = strlen(clear);
	size_t		total = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + clen +
		crypto_aead_xchacha20poly1305_ietf_ABYTES;
	unsigned char *buf = palloc(total);
	unsigned long long outlen;
	size_t		b64len = sodium_base64_encoded_len(total, sodium_base64_VARIANT_ORIGINAL);
	char	   *b64 = palloc(b64len);

	derive_keys();
	associated_data(&ad, t, f, row_key);
	next_nonce(buf);
	crypto_aead_xchacha20poly1305_ietf_encrypt(buf + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, &outlen,
											   (const unsigned char *) clear, clen,
											   (const unsigned char *) ad.data, ad.len, NULL,
											   buf, cipher_key);
	sodium_bin2base64(b64, b64len, buf, total, sodium_base64_VARIANT_ORIGINAL);
	return b64;
}

/* The clear text of a ciphertext of this row's field, or NULL if it is not one */
static char *
decrypt_value(const FieldsTable *t, const FieldDef *f, const char *row_key, const char *b64, int b64len)
{
	StringInfoData ad;
	unsigned char *bin = palloc(b64len + 1);
	size_t		binlen;
	char	   *clear;
	unsigned long long clen;

	derive_keys();
	if (sodium_base642bin(bin, b64len + 1, b64, b64len, NULL, &binlen, NULL,
						  sodium_base64_VARIANT_ORIGINAL) != 0 ||
		binlen < crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + crypto_aead_xchacha20poly1305_ietf_ABYTES)
		return NULL;
	associated_data(&ad, t, f, row_key);
	clear = palloc(binlen + 1);
	if (crypto_aead_xchacha20poly1305_ietf_decrypt((unsigned char *) clear, &clen, NULL,
												   bin + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
												   binlen - crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
												   (const unsigned char *) ad.data, ad.len,
												   bin, cipher_key) != 0)
		return NULL;
	clear[clen] = '\0';
	return clear;
}

static bool
member_string(JsonbContainer *obj, const char *key, char **val, int *len)
{
	JsonbValue	k;
	JsonbValue *v;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	v = findJsonbValueFromContainer(obj, JB_FOBJECT, &k);
	if (v == NULL || v->type != jbvString)
		return false;
	*val = v->val.string.val;
	*len = v->val.string.len;
	return true;
}

static void
push_string(JsonbParseState **st, JsonbIteratorToken tok, const char *s)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) s;
	v.val.string.len = strlen(s);
	pushJsonbValue(st, tok, &v);
}

/* The stored form of a masked value: {"blind": ..., "enc": ..., "mask": ...} */
static JsonbValue *
sealed_value(const FieldsTable *t, const FieldDef *f, const char *row_key, const char *canonical,
			 const char *enc)
{
	JsonbParseState *st = NULL;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	push_string(&st, WJB_KEY, "blind");
	push_string(&st, WJB_VALUE, blind_index(t, f, canonical));
	push_string(&st, WJB_KEY, "enc");
	push_string(&st, WJB_VALUE, enc ? enc : encrypt_value(t, f, row_key, canonical));
	push_string(&st, WJB_KEY, "mask");
	push_string(&st, WJB_VALUE, mask_value(f, canonical));
	return pushJsonbValue(&st, WJB_END_OBJECT, NULL);
}

/* ---------------------------------------------------------------------------
 * The projection: what a reader may see of a fields column
 * ---------------------------------------------------------------------------
 */
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

static ProjectionCache *
projection_cache(FunctionCallInfo fcinfo, Oid relid)
{
	ProjectionCache *c = (ProjectionCache *) fcinfo->flinfo->fn_extra;
	const CgPrincipal *p = cg_current_principal();
	int64		pid = p ? p->id : 0;
	int			i;

	if (c == NULL)
	{
		c = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(ProjectionCache));
		fcinfo->flinfo->fn_extra = c;
	}
	if (c->table != NULL && c->relid == relid && c->generation == fields_generation && fields_valid &&
		c->userid == GetUserId() && c->principal == pid && c->have_actor)
		return c;

	c->relid = relid;
	c->table = fields_lookup(relid);
	c->generation = fields_generation;
	if (c->table == NULL || c->table->broken)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("contact fields of table %s cannot be served%s%s", get_rel_name(relid),
						c->table ? ": " : "", c->table ? c->table->broken : "")));
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		actor_init(&c->actor);
		c->visible = palloc(sizeof(bool) * Max(c->table->nfields, 1));
		MemoryContextSwitchTo(old);
	}
	c->userid = GetUserId();
	c->principal = pid;
	c->have_actor = true;
	c->all_visible = !c->table->any_masked;
	for (i = 0; i < c->table->nfields; i++)
	{
		c->visible[i] = actor_sees(&c->actor, &c->table->fields[i]);
		if (!c->visible[i])
			c->all_visible = false;
	}
	return c;
}

/*
 * The reader's projection of a stored value.  clear: masked values in clear
 * (field_values for view_masked holders); names of the fields so shown are
 * added to *unmasked.
 */
static Jsonb *
project(ProjectionCache *c, Jsonb *stored, bool stored_ok, bool clear, const char *row_key,
		List **unmasked)
{
	FieldsTable *t = c->table;
	JsonbParseState *st = NULL;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbValue	v;
	JsonbIteratorToken r;

	if (c->actor.kind == ACTOR_RAW && stored_ok)
		return stored;
	if (!JB_ROOT_IS_OBJECT(stored) || JB_ROOT_IS_SCALAR(stored))
		return stored;			/* refused on write: cannot be there */
	if (c->actor.kind != ACTOR_NOBODY && c->all_visible && !clear)
		return stored;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	if (c->actor.kind != ACTOR_NOBODY)
	{
		it = JsonbIteratorInit(&stored->root);
		while ((r = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			FieldDef   *f;
			char	   *s;
			int			len;

			if (r != WJB_KEY)
				continue;
			(void) JsonbIteratorNext(&it, &v, true);
			f = find_def(t, k.val.string.val, k.val.string.len);
			if (f == NULL || !c->visible[f - t->fields])
				continue;
			pushJsonbValue(&st, WJB_KEY, &k);
			if (f->masked && v.type == jbvBinary)
			{
				if (clear && member_string(v.val.binary.data, "enc", &s, &len))
				{
					char	   *value = decrypt_value(t, f, row_key, s, len);

					if (value == NULL)
						ereport(ERROR,
								(errcode(ERRCODE_DATA_CORRUPTED),
								 errmsg("value of field \"%s\" of row \"%s\" cannot be decrypted", f->name, row_key)));
					push_string(&st, WJB_VALUE, value);
					*unmasked = lappend(*unmasked, f->name);
				}
				else if (member_string(v.val.binary.data, "mask", &s, &len))
					push_string(&st, WJB_VALUE, pnstrdup(s, len));
				else
					push_string(&st, WJB_VALUE, FULL_MASK);
			}
			else
				pushJsonbValue(&st, WJB_VALUE, &v);
		}
	}
	return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

PG_FUNCTION_INFO_V1(crmguard_fields_projection);
Datum
crmguard_fields_projection(PG_FUNCTION_ARGS)
{
	ProjectionCache *c;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	c = projection_cache(fcinfo, PG_GETARG_OID(1));
	PG_RETURN_JSONB_P(project(c, PG_GETARG_JSONB_P(0), true, false, NULL, NULL));
}

PG_FUNCTION_INFO_V1(crmguard_fields_row);
Datum
crmguard_fields_row(PG_FUNCTION_ARGS)
{
	HeapTupleHeader th;
	ProjectionCache *c;
	TupleDesc	desc;
	HeapTupleData tuple;
	HeapTuple	result;
	Datum	   *values;
	bool	   *nulls;
	int			i;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	th = PG_GETARG_HEAPTUPLEHEADER(0);
	c = projection_cache(fcinfo, PG_GETARG_OID(1));
	desc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(th), HeapTupleHeaderGetTypMod(th));
	tuple.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = th;
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	heap_deform_tuple(&tuple, desc, values, nulls);
	i = c->table->attnum - 1;
	if (i < desc->natts && !nulls[i])
		values[i] = JsonbPGetDatum(project(c, DatumGetJsonbP(values[i]), true, false, NULL, NULL));
	result = heap_form_tuple(desc, values, nulls);
	ReleaseTupleDesc(desc);
	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}

/*
 * One field of the reader's projection: fields->'name' and fields->>'name'
 * are rewritten into these, so reading one field costs a lookup, not a
 * rebuilt object.  NULL when the reader may not see the field.
 */
static JsonbValue *
project_one(ProjectionCache *c, Jsonb *stored, text *key, JsonbValue *masked)
{
	JsonbValue	k;
	JsonbValue *v;
	FieldDef   *f;
	char	   *s;
	int			len;

	if (!JB_ROOT_IS_OBJECT(stored) || JB_ROOT_IS_SCALAR(stored) || c->actor.kind == ACTOR_NOBODY)
		return NULL;
	k.type = jbvString;
	k.val.string.val = VARDATA_ANY(key);
	k.val.string.len = VARSIZE_ANY_EXHDR(key);
	v = findJsonbValueFromContainer(&stored->root, JB_FOBJECT, &k);
	if (v == NULL || c->actor.kind == ACTOR_RAW)
		return v;
	f = find_def(c->table, k.val.string.val, k.val.string.len);
	if (f == NULL || !c->visible[f - c->table->fields])
		return NULL;
	if (!f->masked || v->type != jbvBinary)
		return v;
	masked->type = jbvString;
	if (member_string(v->val.binary.data, "mask", &s, &len))
	{
		masked->val.string.val = s;
		masked->val.string.len = len;
	}
	else
	{
		masked->val.string.val = FULL_MASK;
		masked->val.string.len = strlen(FULL_MASK);
	}
	return masked;
}

PG_FUNCTION_INFO_V1(crmguard_fields_get);
Datum
crmguard_fields_get(PG_FUNCTION_ARGS)
{
	JsonbValue	masked;
	JsonbValue *v;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	v = project_one(projection_cache(fcinfo, PG_GETARG_OID(1)), PG_GETARG_JSONB_P(0),
					PG_GETARG_TEXT_PP(2), &masked);
	if (v == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(JsonbValueToJsonb(v));
}

PG_FUNCTION_INFO_V1(crmguard_fields_get_text);
Datum
crmguard_fields_get_text(PG_FUNCTION_ARGS)
{
	JsonbValue	masked;
	JsonbValue *v;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	v = project_one(projection_cache(fcinfo, PG_GETARG_OID(1)), PG_GETARG_JSONB_P(0),
					PG_GETARG_TEXT_PP(2), &masked);
	if (v == NULL || v->type == jbvNull)
		PG_RETURN_NULL();
	if (v->type == jbvBinary)
		PG_RETURN_TEXT_P(cstring_to_text(JsonbToCString(NULL, v->val.binary.data, v->val.binary.len)));
	PG_RETURN_TEXT_P(cstring_to_text(scalar_text(v)));
}

/* ---------------------------------------------------------------------------
 * The planner hook: every read of a fields column becomes its projection
 * ---------------------------------------------------------------------------
 */
typedef struct RewriteContext
{
	List	   *queries;		/* innermost first: varlevelsup indexes it */
} RewriteContext;

static bool
raw_rte(RangeTblEntry *rte)
{
	return raw_depth > 0 && rte->alias != NULL && strcmp(rte->alias->aliasname, raw_alias) == 0;
}

/* The fields table whose fields column (or whole row, attnum 0) the Var reads, or NULL */
static FieldsTable *
fields_var(Var *var, RewriteContext *ctx, Oid *relid)
{
	Query	   *q;
	RangeTblEntry *rte;
	FieldsTable *t;

	if ((int) var->varlevelsup >= list_length(ctx->queries))
		return NULL;
	q = list_nth(ctx->queries, var->varlevelsup);
	if (var->varno <= 0 || var->varno > list_length(q->rtable))
		return NULL;
	rte = rt_fetch(var->varno, q->rtable);
	if (rte->rtekind != RTE_RELATION || (t = fields_lookup(rte->relid)) == NULL || raw_rte(rte))
		return NULL;
	/* a table whose fields column cannot be found is unreadable, not readable raw */
	if (!t->broken && var->varattno != 0 && var->varattno != t->attnum)
		return NULL;
	if (t->broken || !OidIsValid(projection_func) || !OidIsValid(row_func) ||
		!OidIsValid(get_func) || !OidIsValid(get_text_func))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("contact fields of table %s cannot be served%s%s", get_rel_name(rte->relid),
						t->broken ? ": " : "", t->broken ? t->broken : "")));
	*relid = rte->relid;
	return t;
}

static Node *
rewrite_mutator(Node *node, RewriteContext *ctx)
{
	if (node == NULL)
		return NULL;
	/* fields->'name', fields->>'name': one field of the projection */
	if (IsA(node, OpExpr) && list_length(((OpExpr *) node)->args) == 2)
	{
		OpExpr	   *op = (OpExpr *) node;
		Node	   *left = linitial(op->args);
		Node	   *right = lsecond(op->args);
		Oid			relid;

		set_opfuncid(op);
		if ((op->opfuncid == F_JSONB_OBJECT_FIELD || op->opfuncid == F_JSONB_OBJECT_FIELD_TEXT) &&
			IsA(left, Var) && ((Var *) left)->varattno != 0 && IsA(right, Const) &&
			((Const *) right)->consttype == TEXTOID && fields_var((Var *) left, ctx, &relid) != NULL)
		{
			FuncExpr   *f;

			f = makeFuncExpr(op->opfuncid == F_JSONB_OBJECT_FIELD ? get_func : get_text_func,
							 op->opresulttype,
							 list_make3(copyObject(left),
										makeConst(OIDOID, -1, InvalidOid, sizeof(Oid),
												  ObjectIdGetDatum(relid), false, true),
										copyObject(right)),
							 InvalidOid, op->inputcollid, COERCE_EXPLICIT_CALL);
			f->location = op->location;
			return (Node *) f;
		}
	}
	if (IsA(node, Query))
	{
		Query	   *q = (Query *) node;

		ctx->queries = lcons(q, ctx->queries);
		q = query_tree_mutator(q, rewrite_mutator, ctx, QTW_DONT_COPY_QUERY);
		ctx->queries = list_delete_first(ctx->queries);
		return (Node *) q;
	}
	if (IsA(node, Var))
	{
		Var		   *var = (Var *) node;
		Oid			reloid;
		Const	   *relid;
		FuncExpr   *f;

		if (fields_var(var, ctx, &reloid) == NULL)
			return (Node *) copyObject(var);
		relid = makeConst(OIDOID, -1, InvalidOid, sizeof(Oid), ObjectIdGetDatum(reloid), false, true);
		f = makeFuncExpr(var->varattno == 0 ? row_func : projection_func, var->vartype,
						 list_make2(copyObject(var), relid), InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
		f->location = var->location;
		return (Node *) f;
	}
	return expression_tree_mutator(node, rewrite_mutator, ctx);
}

/* Does the query (its subqueries, CTEs and sublinks included) read a fields table? */
static bool
reads_fields_table(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, Query))
	{
		Query	   *q = (Query *) node;
		ListCell   *lc;

		foreach(lc, q->rtable)
		{
			RangeTblEntry *rte = (RangeTblEntry *) lfirst(lc);

			if (rte->rtekind == RTE_RELATION &&
				hash_search(fields_tables, &rte->relid, HASH_FIND, NULL) != NULL)
				return true;
		}
		return query_tree_walker(q, reads_fields_table, context, 0);
	}
	return expression_tree_walker(node, reads_fields_table, context);
}

static PlannedStmt *
fields_planner(Query *parse, const char *query_string, int cursorOptions, ParamListInfo boundParams)
{
	if (!fields_loading && IsTransactionState() && OidIsValid(get_namespace_oid("crmguard", true)))
	{
		if (!fields_valid)
			fields_load();
		/* other tables' queries are planned as they are, uncopied */
		if (OidIsValid(field_table_rel) && hash_get_num_entries(fields_tables) > 0 &&
			reads_fields_table((Node *) parse, NULL))
		{
			RewriteContext ctx = {NIL};

			parse = (Query *) rewrite_mutator((Node *) parse, &ctx);
		}
	}
	if (prev_planner)
		return prev_planner(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

/*
 * COPY table TO reads the heap directly: make it COPY (SELECT ... FROM ONLY
 * table) TO, as PostgreSQL itself does for tables with row-level security,
 * so that the planner hook projects it.
 */
static void
fields_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			   ProcessUtilityContext context, ParamListInfo params,
			   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, CopyStmt) && !((CopyStmt *) parsetree)->is_from &&
		((CopyStmt *) parsetree)->relation != NULL && IsTransactionState() &&
		OidIsValid(get_namespace_oid("crmguard", true)))
	{
		CopyStmt   *copy = (CopyStmt *) parsetree;
		Oid			relid = RangeVarGetRelid(copy->relation, NoLock, true);

		if (OidIsValid(relid) && fields_lookup(relid) != NULL)
		{
			CopyStmt   *rewritten = copyObject(copy);
			SelectStmt *select = makeNode(SelectStmt);
			RangeVar   *from = makeRangeVar(get_namespace_name(get_rel_namespace(relid)),
											get_rel_name(relid), -1);
			List	   *targets = NIL;
			ListCell   *lc;

			if (copy->attlist != NIL)
				foreach(lc, copy->attlist)
				{
					ColumnRef  *cr = makeNode(ColumnRef);
					ResTarget  *target = makeNode(ResTarget);

					cr->fields = list_make1(lfirst(lc));
					cr->location = -1;
					target->val = (Node *) cr;
					target->location = -1;
					targets = lappend(targets, target);
				}
			else
			{
				ColumnRef  *cr = makeNode(ColumnRef);
				ResTarget  *target = makeNode(ResTarget);

				cr->fields = list_make1(makeNode(A_Star));
				cr->location = -1;
				target->val = (Node *) cr;
				target->location = -1;
				targets = list_make1(target);
			}
			from->inh = false;
			select->targetList = targets;
			select->fromClause = list_make1(from);
			rewritten->relation = NULL;
			rewritten->attlist = NIL;
			rewritten->query = (Node *) select;
			pstmt = copyObject(pstmt);
			pstmt->utilityStmt = (Node *) rewritten;
			readOnlyTree = false;
		}
	}
	if (prev_utility)
		prev_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

/*
 * A constraint that fails on a written row reports the row in its DETAIL
 * ("Failing row contains ..."), and an updated row holds the fields the
 * writer cannot see, merged back by the guard: such a detail is replaced.
 */
static void
hide_failing_row(void *arg)
{
	int			code = geterrcode();

	if (code == ERRCODE_NOT_NULL_VIOLATION || code == ERRCODE_CHECK_VIOLATION ||
		code == ERRCODE_WITH_CHECK_OPTION_VIOLATION || code == ERRCODE_EXCLUSION_VIOLATION)
		errdetail("The failing row is not shown: it holds contact fields.");
}

static void
fields_executor_run(QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once)
{
	PlannedStmt *stmt = queryDesc->plannedstmt;
	ErrorContextCallback callback;
	bool		writes_fields = false;
	ListCell   *lc;

	if (stmt->commandType != CMD_SELECT && fields_valid && fields_tables != NULL &&
		hash_get_num_entries(fields_tables) > 0)
		foreach(lc, stmt->resultRelations)
		{
			Oid			relid = rt_fetch(lfirst_int(lc), stmt->rtable)->relid;

			if (hash_search(fields_tables, &relid, HASH_FIND, NULL) != NULL)
				writes_fields = true;
		}
	if (writes_fields)
	{
		callback.callback = hide_failing_row;
		callback.arg = NULL;
		callback.previous = error_context_stack;
		error_context_stack = &callback;
	}
	if (prev_executor_run)
		prev_executor_run(queryDesc, direction, count, execute_once);
	else
		standard_ExecutorRun(queryDesc, direction, count, execute_once);
	if (writes_fields)
		error_context_stack = callback.previous;
}

void
cg_fields_init(void)
{
	unsigned char token[8];
	char		hex[17];

	randombytes_buf(token, sizeof(token));
	sodium_bin2hex(hex, sizeof(hex), token, sizeof(token));
	snprintf(raw_alias, sizeof(raw_alias), "crmguard_raw_%s", hex);
	prev_planner = planner_hook;
	planner_hook = fields_planner;
	prev_utility = ProcessUtility_hook;
	ProcessUtility_hook = fields_utility;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = fields_executor_run;
}

/* ---------------------------------------------------------------------------
 * The row trigger
 * ---------------------------------------------------------------------------
 */

/* One field of the row being written, as it will be stored */
typedef struct OutField
{
	FieldDef   *def;			/* NULL: a key kept as it was */
	JsonbValue	key;
	JsonbValue *value;
	char	   *lookup;			/* what the field's index holds: normalised text or blind index */
} OutField;

static char *
datum_text(FmgrInfo *out, HeapTuple tuple, TupleDesc desc, AttrNumber attnum)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, attnum, desc, &isnull);

	return isnull ? NULL : OutputFunctionCall(out, d);
}

static JsonbValue *
copy_scalar(const JsonbValue *v)
{
	JsonbValue *c = palloc(sizeof(JsonbValue));

	*c = *v;
	return c;
}

static bool
scalars_equal(const JsonbValue *a, const JsonbValue *b)
{
	if (a->type != b->type)
		return false;
	switch (a->type)
	{
		case jbvString:
			return a->val.string.len == b->val.string.len &&
				memcmp(a->val.string.val, b->val.string.val, a->val.string.len) == 0;
		case jbvNumeric:
			return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(a->val.numeric),
													NumericGetDatum(b->val.numeric)));
		case jbvBool:
			return a->val.boolean == b->val.boolean;
		case jbvNull:
			return true;
		case jbvBinary:
			return a->val.binary.len == b->val.binary.len &&
				memcmp(a->val.binary.data, b->val.binary.data, a->val.binary.len) == 0;
		default:
			return false;
	}
}

static JsonbValue *
old_member(Jsonb *old, const JsonbValue *key)
{
	if (old == NULL || !JB_ROOT_IS_OBJECT(old) || JB_ROOT_IS_SCALAR(old))
		return NULL;
	return findJsonbValueFromContainer(&old->root, JB_FOBJECT, (JsonbValue *) key);
}

/* A masked value kept from the old row, sealed again if the row key changed */
static JsonbValue *
keep_masked(FieldsTable *t, FieldDef *f, JsonbValue *old, const char *old_key, const char *new_key,
			char **lookup)
{
	char	   *s;
	int			len;
	char	   *clear;

	if (old->type != jbvBinary || !member_string(old->val.binary.data, "enc", &s, &len))
		return copy_scalar(old);
	if (strcmp(old_key, new_key) == 0)
	{
		if (member_string(old->val.binary.data, "blind", &s, &len))
			*lookup = pnstrdup(s, len);
		return copy_scalar(old);
	}
	clear = decrypt_value(t, f, old_key, s, len);
	if (clear == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("value of field \"%s\" of row \"%s\" cannot be decrypted", f->name, old_key)));
	*lookup = blind_index(t, f, clear);
	return sealed_value(t, f, new_key, clear, NULL);
}

/*
 * Is the value already in the field's index for another row?  Probes the
 * index with a dirty snapshot, waiting for a writer in progress, as a
 * unique index does, so the error names the field, never the other row.
 */
static void
check_unique(Relation rel, FieldDef *f, const char *lookup, ItemPointer self)
{
	Relation	index;
	ScanKeyData skey;
	SnapshotData dirty;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	TransactionId xwait;

	if (!OidIsValid(f->indexoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("index \"%s\" of unique field \"%s\" is missing", f->index_name, f->name),
				 errhint("Drop the field and define it again.")));
	index = index_open(f->indexoid, AccessShareLock);
	slot = table_slot_create(rel, NULL);
retry:
	xwait = InvalidTransactionId;
	InitDirtySnapshot(dirty);
	ScanKeyInit(&skey, 1, BTEqualStrategyNumber, F_TEXTEQ, CStringGetTextDatum(lookup));
	skey.sk_collation = index->rd_indcollation[0];
	scan = index_beginscan(rel, index, &dirty, 1, 0);
	index_rescan(scan, &skey, 1, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		if (self != NULL && ItemPointerEquals(&slot->tts_tid, self))
			continue;
		xwait = TransactionIdIsValid(dirty.xmin) ? dirty.xmin : dirty.xmax;
		if (TransactionIdIsValid(xwait))
			break;
		index_endscan(scan);
		ExecDropSingleTupleTableSlot(slot);
		index_close(index, AccessShareLock);
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("duplicate value for field \"%s\"", f->name),
				 errdetail("Another row of table %s already holds this value of field \"%s\".",
						   RelationGetRelationName(rel), f->name),
				 errtableconstraint(rel, f->index_name)));
	}
	index_endscan(scan);
	if (TransactionIdIsValid(xwait))
	{
		XactLockTableWait(xwait, rel, &slot->tts_tid, XLTW_InsertIndex);
		goto retry;
	}
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
}

PG_FUNCTION_INFO_V1(crmguard_fields_guard);
Datum
crmguard_fields_guard(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	FieldsTable *t;
	HeapTuple	newtup;
	HeapTuple	oldtup = NULL;
	bool		is_update;
	bool		isnull;
	bool		old_isnull = true;
	Datum		newval;
	Datum		oldval = (Datum) 0;
	Jsonb	   *in = NULL;
	Jsonb	   *old = NULL;
	Actor		actor;
	char	   *new_key;
	char	   *old_key;
	char	   *project;
	OutField   *out;
	int			nout = 0;
	int			cap;
	int			i;
	JsonbParseState *st = NULL;
	Datum		result;
	bool		result_null;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) || TRIGGER_FIRED_BY_DELETE(td->tg_event) ||
		TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		elog(ERROR, "crmguard_fields_guard: must be fired BEFORE INSERT OR UPDATE FOR EACH ROW");
	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	is_update = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
	newtup = is_update ? td->tg_newtuple : td->tg_trigtuple;
	if (fields_internal == RelationGetRelid(rel))
		return PointerGetDatum(newtup);
	t = fields_lookup(RelationGetRelid(rel));
	if (t == NULL)
		return PointerGetDatum(newtup); /* fields were switched off */
	if (t->broken)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("contact fields of table %s cannot be written: %s", RelationGetRelationName(rel), t->broken)));

	newval = heap_getattr(newtup, t->attnum, desc, &isnull);
	if (is_update)
	{
		oldtup = td->tg_trigtuple;
		oldval = heap_getattr(oldtup, t->attnum, desc, &old_isnull);
		/* untouched fields, same key, same project: nothing to do */
		if (isnull == old_isnull && (isnull || datumIsEqual(newval, oldval, false, -1)))
		{
			Form_pg_attribute pk = TupleDescAttr(desc, t->pk_attnum - 1);
			bool		n1,
						n2;
			Datum		k1 = heap_getattr(newtup, t->pk_attnum, desc, &n1);
			Datum		k2 = heap_getattr(oldtup, t->pk_attnum, desc, &n2);
			bool		same_key = n1 == n2 && (n1 || datumIsEqual(k1, k2, pk->attbyval, pk->attlen));
			bool		same_project = true;

			if (t->project_attnum != InvalidAttrNumber)
			{
				Form_pg_attribute pa = TupleDescAttr(desc, t->project_attnum - 1);

				k1 = heap_getattr(newtup, t->project_attnum, desc, &n1);
				k2 = heap_getattr(oldtup, t->project_attnum, desc, &n2);
				same_project = n1 == n2 && (n1 || datumIsEqual(k1, k2, pa->attbyval, pa->attlen));
			}
			if (same_key && (same_project || isnull))
				return PointerGetDatum(newtup);
		}
		if (!old_isnull)
			old = DatumGetJsonbP(oldval);
	}
	if (!isnull)
		in = DatumGetJsonbP(newval);

	actor_init(&actor);
	if (cg_review_approving == RelationGetRelid(rel))
		actor.kind = ACTOR_RAW; /* an approved draft, checked when it was submitted */
	new_key = datum_text(&t->pk_out, newtup, desc, t->pk_attnum);
	if (new_key == NULL)
		new_key = "";
	old_key = is_update ? datum_text(&t->pk_out, oldtup, desc, t->pk_attnum) : new_key;
	project = t->project_attnum != InvalidAttrNumber ?
		datum_text(&t->project_out, newtup, desc, t->project_attnum) : NULL;

	if (in != NULL && (!JB_ROOT_IS_OBJECT(in) || JB_ROOT_IS_SCALAR(in)))
		refuse(NULL, NULL, psprintf("column \"%s\" must hold a JSON object of contact fields",
									NameStr(TupleDescAttr(desc, t->attnum - 1)->attname)), NULL);
	cap = (in ? JB_ROOT_COUNT(in) : 0) + (old && JB_ROOT_IS_OBJECT(old) ? JB_ROOT_COUNT(old) : 0) + 1;
	out = palloc0(sizeof(OutField) * cap);

	/* what the writer wrote */
	if (in != NULL)
	{
		JsonbIterator *it = JsonbIteratorInit(&in->root);
		JsonbValue	k;
		JsonbValue	v;
		JsonbIteratorToken r;

		while ((r = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			FieldDef   *f;
			JsonbValue *prev;
			char	   *name;
			OutField   *o;

			if (r != WJB_KEY)
				continue;
			(void) JsonbIteratorNext(&it, &v, true);
			name = pnstrdup(k.val.string.val, k.val.string.len);
			f = find_def(t, k.val.string.val, k.val.string.len);
			prev = old_member(old, &k);
			if (f == NULL)
			{
				/* a key crmguard does not know, unchanged: not the writer's to lose */
				if (prev != NULL && scalars_equal(prev, &v))
				{
					o = &out[nout++];
					o->key = k;
					o->value = copy_scalar(prev);
					continue;
				}
				refuse(NULL, name, psprintf("unknown field \"%s\"", name),
					   psprintf("Table %s has no contact field \"%s\".", RelationGetRelationName(rel), name));
			}
			if (v.type == jbvNull)
				continue;		/* null removes a field */
			if (!actor_sees(&actor, f))
			{
				if (prev != NULL && scalars_equal(prev, &v))
					continue;	/* kept below with the other hidden fields */
				refuse(f, name, psprintf("field \"%s\" belongs to another project", name),
					   actor.kind == ACTOR_NOBODY ?
					   "A session without a principal writes no contact fields." :
					   "The acting principal's projects do not include the field's projects.");
			}
			if (project != NULL && f->nprojects >= 0 && !project_listed(f, project))
				refuse(f, name, psprintf("field \"%s\" belongs to another project", name),
					   psprintf("The row belongs to project \"%s\".", project));
			if (t->project_attnum != InvalidAttrNumber && project == NULL && f->nprojects >= 0)
				refuse(f, name, psprintf("field \"%s\" belongs to another project", name),
					   "The row belongs to no project.");

			o = &out[nout++];
			o->def = f;
			o->key = k;
			if (f->masked)
			{
				char	   *s;
				int			len;

				/* as the writer saw it, masked or sealed: keep the old value */
				if (prev != NULL && prev->type == jbvBinary &&
					((v.type == jbvString && member_string(prev->val.binary.data, "mask", &s, &len) &&
					  len == v.val.string.len && memcmp(s, v.val.string.val, len) == 0) ||
					 scalars_equal(prev, &v)))
				{
					o->value = keep_masked(t, f, prev, old_key, new_key, &o->lookup);
					continue;
				}
				if (v.type == jbvBinary)
				{
					char	   *clear = NULL;

					/* a sealed value of this very row and field (pg_restore, an approved draft) */
					if (member_string(v.val.binary.data, "enc", &s, &len))
						clear = decrypt_value(t, f, new_key, s, len);
					if (clear == NULL)
						refuse(f, name, psprintf("invalid value for field \"%s\" of type %s", name,
												 field_type_names[f->type]),
							   "An encrypted value belongs to one row and field of one table.");
					o->lookup = blind_index(t, f, clear);
					o->value = sealed_value(t, f, new_key, clear, pnstrdup(s, len));
					continue;
				}
				{
					JsonbValue	norm;
					char	   *canonical = normalise_value(f, &v, &norm);

					o->lookup = blind_index(t, f, canonical);
					o->value = sealed_value(t, f, new_key, canonical, NULL);
				}
			}
			else
			{
				JsonbValue *norm = palloc(sizeof(JsonbValue));

				(void) normalise_value(f, &v, norm);
				o->value = norm;
				o->lookup = scalar_text(norm);
			}
		}
	}

	/* what the writer cannot see of the old row stays as it was */
	if (old != NULL && JB_ROOT_IS_OBJECT(old) && !JB_ROOT_IS_SCALAR(old))
	{
		JsonbIterator *it = JsonbIteratorInit(&old->root);
		JsonbValue	k;
		JsonbValue	v;
		JsonbIteratorToken r;

		while ((r = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
		{
			FieldDef   *f;
			OutField   *o;

			if (r != WJB_KEY)
				continue;
			(void) JsonbIteratorNext(&it, &v, true);
			f = find_def(t, k.val.string.val, k.val.string.len);
			if (f != NULL && actor_sees(&actor, f))
				continue;		/* the writer's to change or remove */
			if (f == NULL)
			{
				bool		written = false;

				for (i = 0; i < nout; i++)
					if (out[i].key.val.string.len == k.val.string.len &&
						memcmp(out[i].key.val.string.val, k.val.string.val, k.val.string.len) == 0)
						written = true;
				if (written)
					continue;
			}
			/* a kept field must still belong to the row's project */
			if (f != NULL && t->project_attnum != InvalidAttrNumber && f->nprojects >= 0 &&
				(project == NULL || !project_listed(f, project)))
				refuse(NULL, NULL, "the row holds contact fields of another project",
					   "Its project cannot change while it holds fields the new project does not have.");
			o = &out[nout++];
			o->def = f;
			o->key = k;
			if (f != NULL && f->masked)
				o->value = keep_masked(t, f, &v, old_key, new_key, &o->lookup);
			else
			{
				o->value = copy_scalar(&v);
				if (f != NULL && v.type != jbvBinary)
					o->lookup = scalar_text(&v);
			}
		}
	}

	/* required fields: of the row's project, or (rows shared) those the writer sees */
	for (i = 0; i < t->nfields; i++)
	{
		FieldDef   *f = &t->fields[i];
		bool		applies;
		bool		present = false;
		int			j;

		if (!f->required)
			continue;
		if (t->project_attnum != InvalidAttrNumber)
			applies = f->nprojects < 0 || (project != NULL && project_listed(f, project));
		else
			applies = actor_sees(&actor, f);
		if (!applies)
			continue;
		for (j = 0; j < nout; j++)
			if (out[j].def == f)
				present = true;
		if (!present)
			refuse(f, f->name, psprintf("field \"%s\" is required", f->name),
				   project ? psprintf("Every row of project \"%s\" holds field \"%s\".", project, f->name) : NULL);
	}

	/* unique fields whose value is new to this row */
	for (i = 0; i < nout; i++)
	{
		FieldDef   *f = out[i].def;

		if (f == NULL || !f->unique || out[i].lookup == NULL)
			continue;
		if (is_update && old != NULL)
		{
			JsonbValue *prev = old_member(old, &out[i].key);
			char	   *s;
			int			len;

			if (prev != NULL && strcmp(old_key, new_key) == 0 &&
				((f->masked && prev->type == jbvBinary && member_string(prev->val.binary.data, "blind", &s, &len) &&
				  len == (int) strlen(out[i].lookup) && memcmp(s, out[i].lookup, len) == 0) ||
				 (!f->masked && prev->type != jbvBinary && strcmp(scalar_text(prev), out[i].lookup) == 0)))
				continue;
		}
		check_unique(rel, f, out[i].lookup, is_update ? &oldtup->t_self : NULL);
	}

	if (in == NULL && nout == 0)
		return PointerGetDatum(newtup);
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < nout; i++)
	{
		pushJsonbValue(&st, WJB_KEY, &out[i].key);
		pushJsonbValue(&st, WJB_VALUE, out[i].value);
	}
	result = JsonbPGetDatum(JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL)));
	result_null = false;
	{
		int			col = t->attnum;

		return PointerGetDatum(heap_modify_tuple_by_cols(newtup, desc, 1, &col, &result, &result_null));
	}
}

/* ---------------------------------------------------------------------------
 * SQL functions
 * ---------------------------------------------------------------------------
 */

static void
invalid_fields(Oid relid, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_CG_INVALID_RULE),
			 errmsg("invalid contact fields for table \"%s\": %s", get_rel_name(relid), detail)));
}

static char *
qualified_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

/*
 * Run a statement of crmguard's own over a fields table: its alias is this
 * backend's raw token, so the planner hook leaves its column references raw.
 */
static int
run_raw(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, bool read_only)
{
	int			rc;

	raw_depth++;
	PG_TRY();
	{
		rc = SPI_execute_with_args(sql, nargs, types, values, nulls, read_only, 0);
	}
	PG_FINALLY();
	{
		raw_depth--;
	}
	PG_END_TRY();
	return rc;
}

/* Act as the caller, with crmguard's search_path: its rights, its rows */
static int
enter_caller(void)
{
	int			nest = NewGUCNestLevel();

	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nest;
}

/* {"field": name[, "reason": reason]} for the audit log */
static Jsonb *
field_detail(const char *field, const char *reason)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"field\": ");
	escape_json(&buf, field);
	if (reason != NULL)
	{
		appendStringInfoString(&buf, ", \"reason\": ");
		escape_json(&buf, reason);
	}
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

PG_FUNCTION_INFO_V1(crmguard_enable_fields);
Datum
crmguard_enable_fields(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *column;
	char	   *project = PG_ARGISNULL(2) ? NULL : NameStr(*PG_GETARG_NAME(2));
	AttrNumber	attnum;
	Bitmapset  *pk;
	Oid			constraint;
	CgPrivilegedContext priv;
	unsigned char key[TABLE_KEY_BYTES];
	bytea	   *keyval;
	Oid			types[4] = {OIDOID, NAMEOID, NAMEOID, BYTEAOID};
	Datum		values[4];
	char		nulls[4] = "    ";
	char		relkind;

	cg_require_preload();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("target and fields_column must not be NULL")));
	relid = PG_GETARG_OID(0);
	column = NameStr(*PG_GETARG_NAME(1));
	relkind = get_rel_relkind(relid);
	if (relkind == '\0')
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("relation with OID %u does not exist", relid)));
	cg_require_table_owner(relid);
	if (relkind != RELKIND_RELATION)
		invalid_fields(relid, "only plain tables can hold contact fields (not partitioned tables, views or foreign tables)");
	if (get_rel_relispartition(relid) || has_subclass(relid) || has_superclass(relid))
		invalid_fields(relid, "an inherited or partitioned table would show its rows around the fields projection");
	attnum = get_attnum(relid, column);
	if (attnum <= 0)
		invalid_fields(relid, psprintf("column \"%s\" does not exist", column));
	if (get_atttype(relid, attnum) != JSONBOID)
		invalid_fields(relid, psprintf("column \"%s\" is not of type jsonb", column));
	if (project != NULL)
	{
		AttrNumber	pattnum = get_attnum(relid, project);
		Oid			ptype;

		if (pattnum <= 0)
			invalid_fields(relid, psprintf("project column \"%s\" does not exist", project));
		ptype = getBaseType(get_atttype(relid, pattnum));
		if (ptype != TEXTOID && ptype != VARCHAROID && ptype != BPCHAROID && ptype != NAMEOID &&
			!type_is_enum(ptype))
			invalid_fields(relid, psprintf("project column \"%s\" must be of a text or enum type", project));
		if (pattnum == attnum)
			invalid_fields(relid, "the project column cannot be the fields column");
	}
	pk = get_primary_key_attnos(relid, false, &constraint);
	if (bms_num_members(pk) != 1)
		invalid_fields(relid, "a table with contact fields needs a single-column primary key, the row key of its encrypted values");

	LockRelationOid(relid, ShareRowExclusiveLock);
	if (fields_lookup(relid) != NULL)
		invalid_fields(relid, "contact fields are already enabled");

	/* the column starts empty: every value in it is checked on its way in */
	cg_enter_table_owner(&priv, relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_plan(cg_prepare_all_rows(psprintf("SELECT 1 FROM ONLY %s t WHERE t.%s IS NOT NULL"
													  " AND t.%s OPERATOR(pg_catalog.<>) '{}'::pg_catalog.jsonb LIMIT 1",
													  qualified_name(relid), quote_identifier(column),
													  quote_identifier(column)), 0, NULL),
						 NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read table %s", get_rel_name(relid));
	if (SPI_processed > 0)
		invalid_fields(relid, psprintf("column \"%s\" already holds values", column));
	SPI_finish();
	cg_leave_owner(&priv);

	randombytes_buf(key, sizeof(key));
	keyval = palloc(VARHDRSZ + sizeof(key));
	SET_VARSIZE(keyval, VARHDRSZ + sizeof(key));
	memcpy(VARDATA(keyval), key, sizeof(key));
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetDatum(column);
	values[2] = project ? CStringGetDatum(project) : (Datum) 0;
	nulls[2] = project ? ' ' : 'n';
	values[3] = PointerGetDatum(keyval);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO crmguard.field_table (target, fields_column, project_column, table_key)"
							  " VALUES ($1::pg_catalog.regclass, $2, $3, $4)",
							  4, types, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not store the fields table");
	cg_guard_install(relid, FIELDS_GUARD, "fields_guard", "BEFORE INSERT OR UPDATE", NULL);
	/* ANALYZE keeps no sample of the column: pg_stats shows none of its values */
	if (SPI_execute(psprintf("ALTER TABLE %s ALTER COLUMN %s SET STATISTICS 0", qualified_name(relid),
							 quote_identifier(column)), false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set the statistics target of column \"%s\"", column);
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	fields_invalidate();
	cg_audit("enable_fields", get_rel_name(relid), NULL, NULL);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(crmguard_define_field);
Datum
crmguard_define_field(PG_FUNCTION_ARGS)
{
	Oid			relid;
	FieldsTable *t;
	char	   *name;
	char	   *type;
	ArrayType  *projects = PG_ARGISNULL(3) ? NULL : PG_GETARG_ARRAYTYPE_P(3);
	bool		unique = PG_ARGISNULL(4) ? false : PG_GETARG_BOOL(4);
	bool		masked = PG_ARGISNULL(5) ? false : PG_GETARG_BOOL(5);
	char	   *mask = PG_ARGISNULL(6) ? "partial" : text_to_cstring(PG_GETARG_TEXT_PP(6));
	bool		required = PG_ARGISNULL(7) ? false : PG_GETARG_BOOL(7);
	FieldType	ftype;
	char	   *column;
	char	   *index_name;
	char	   *expr;
	CgPrivilegedContext priv;
	Oid			types[9] = {OIDOID, TEXTOID, TEXTOID, TEXTARRAYOID, BOOLOID, BOOLOID, TEXTOID, BOOLOID, NAMEOID};
	Datum		values[9];
	char		nulls[9] = "         ";
	int64		id;
	bool		isnull;
	const char *c;

	cg_require_preload();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("target, field_name and field_type must not be NULL")));
	relid = PG_GETARG_OID(0);
	name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	type = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (get_rel_relkind(relid) == '\0')
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("relation with OID %u does not exist", relid)));
	cg_require_table_owner(relid);
	LockRelationOid(relid, ShareRowExclusiveLock);
	t = fields_table_or_error(relid);
	if (name[0] == '\0' || strlen(name) >= NAMEDATALEN)
		invalid_fields(relid, "a field name has 1 to 63 bytes");
	for (c = name; *c; c++)
		if ((unsigned char) *c < ' ')
			invalid_fields(relid, "a field name has no control characters");
	ftype = parse_field_type(type);
	if ((int) ftype < 0)
		invalid_fields(relid, psprintf("unknown field type \"%s\"", type));
	if ((int) parse_mask(mask) < 0)
		invalid_fields(relid, psprintf("unknown mask \"%s\"", mask));
	if (strcmp(mask, "email") == 0 && ftype != FT_EMAIL)
		invalid_fields(relid, "mask \"email\" is for fields of type email");
	if (projects != NULL)
	{
		Datum	   *elems;
		bool	   *elem_nulls;
		int			n;
		int			i;

		deconstruct_array(projects, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &n);
		if (n == 0)
			invalid_fields(relid, "projects is NULL for every project, or a list of project names");
		for (i = 0; i < n; i++)
			if (elem_nulls[i] || VARSIZE_ANY_EXHDR(DatumGetTextPP(elems[i])) == 0)
				invalid_fields(relid, "a project name must not be NULL or empty");
	}
	if (find_def(t, name, strlen(name)) != NULL)
		invalid_fields(relid, psprintf("field \"%s\" is already defined", name));

	column = get_attname(relid, t->attnum, false);
	if (required)
	{
		/* rows that would already break the rule (the field is new: they lack it) */
		StringInfoData sql;
		Oid			ptypes[1] = {TEXTARRAYOID};
		Datum		pvalues[1];

		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT 1 FROM ONLY %s t", qualified_name(relid));
		if (t->project_attnum != InvalidAttrNumber && projects != NULL)
			appendStringInfo(&sql, " WHERE t.%s::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)",
							 quote_identifier(get_attname(relid, t->project_attnum, false)));
		appendStringInfoString(&sql, " LIMIT 1");
		pvalues[0] = PointerGetDatum(projects);
		cg_enter_table_owner(&priv, relid);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute_plan(cg_prepare_all_rows(sql.data, 1, ptypes), pvalues,
							 projects ? " " : "n", true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read table %s", get_rel_name(relid));
		if (SPI_processed > 0)
			invalid_fields(relid, psprintf("required field \"%s\" would be missing from rows already in the table", name));
		SPI_finish();
		cg_leave_owner(&priv);
	}

	/* the lookup index of find_by_field, unique for unique fields */
	index_name = ChooseRelationName(get_rel_name(relid), name, "cgfield", get_rel_namespace(relid), false);
	if (masked)
		expr = psprintf("((%s OPERATOR(pg_catalog.->) %s) OPERATOR(pg_catalog.->>) 'blind')",
						quote_identifier(column), quote_literal_cstr(name));
	else
		expr = psprintf("(%s OPERATOR(pg_catalog.->>) %s)", quote_identifier(column), quote_literal_cstr(name));

	/*
	 * As the extension owner, like the guard triggers: the owner of the table
	 * may lack CREATE on its schema.  CREATE INDEX itself builds the index as
	 * the table's owner in a security-restricted operation.
	 */
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* byte order: exact matches need no linguistic comparison */
	if (SPI_execute(psprintf("CREATE %sINDEX %s ON %s ((%s COLLATE pg_catalog.\"C\")) WHERE %s OPERATOR(pg_catalog.?) %s",
							 unique ? "UNIQUE " : "", quote_identifier(index_name), qualified_name(relid),
							 expr, quote_identifier(column), quote_literal_cstr(name)),
					false, 0) != SPI_OK_UTILITY ||
		SPI_execute(psprintf("ALTER INDEX %s ALTER COLUMN 1 SET STATISTICS 0",
							 quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), index_name)),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not create the index of field \"%s\"", name);
	SPI_finish();
	cg_leave_owner(&priv);

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(name);
	values[2] = CStringGetTextDatum(type);
	values[3] = projects ? PointerGetDatum(projects) : (Datum) 0;
	nulls[3] = projects ? ' ' : 'n';
	values[4] = BoolGetDatum(unique);
	values[5] = BoolGetDatum(masked);
	values[6] = CStringGetTextDatum(mask);
	values[7] = BoolGetDatum(required);
	values[8] = CStringGetDatum(index_name);
	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO crmguard.field_def (target, field_name, field_type, projects,"
							  " unique_values, masked, mask, required, index_name)"
							  " VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
							  9, types, values, nulls, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not store the field");
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	fields_invalidate();
	cg_audit("define_field", get_rel_name(relid), NULL, field_detail(name, NULL));
	PG_RETURN_INT64(id);
}

PG_FUNCTION_INFO_V1(crmguard_drop_field);
Datum
crmguard_drop_field(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	FieldsTable *t;
	FieldDef   *f;
	char	   *column;
	char	   *index_name;
	char	   *sql;
	CgPrivilegedContext priv;
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2];

	cg_require_preload();
	if (get_rel_relkind(relid) == '\0')
		ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("relation with OID %u does not exist", relid)));
	cg_require_table_owner(relid);
	LockRelationOid(relid, ShareRowExclusiveLock);
	t = fields_table_or_error(relid);
	f = find_def(t, name, strlen(name));
	if (f == NULL)
		invalid_fields(relid, psprintf("field \"%s\" does not exist", name));
	column = get_attname(relid, t->attnum, false);
	index_name = pstrdup(f->index_name);

	/* the values go with the field, as a column's do with DROP COLUMN */
	sql = psprintf("UPDATE ONLY %s AS %s SET %s = %s.%s OPERATOR(pg_catalog.-) $2"
				   " WHERE %s.%s OPERATOR(pg_catalog.?) $2",
				   qualified_name(relid), raw_alias, quote_identifier(column), raw_alias,
				   quote_identifier(column), raw_alias, quote_identifier(column));
	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(name);
	cg_enter_table_owner(&priv, relid);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	raw_depth++;
	fields_internal = relid;
	PG_TRY();
	{
		if (SPI_execute_plan(cg_prepare_all_rows(sql, 2, types), values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not remove the values of field \"%s\"", name);
		if (OidIsValid(f->indexoid) &&
			SPI_execute(psprintf("DROP INDEX %s",
								 quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), index_name)),
						false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not drop the index of field \"%s\"", name);
	}
	PG_FINALLY();
	{
		raw_depth--;
		fields_internal = InvalidOid;
	}
	PG_END_TRY();
	SPI_finish();
	cg_leave_owner(&priv);

	cg_enter_owner(&priv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("DELETE FROM crmguard.field_def WHERE target::pg_catalog.oid OPERATOR(pg_catalog.=) $1"
							  " AND field_name OPERATOR(pg_catalog.=) $2", 2, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not drop the field");
	SPI_finish();
	cg_leave_owner(&priv);
	CacheInvalidateRelcacheByRelid(relid);
	fields_invalidate();
	cg_audit("drop_field", get_rel_name(relid), NULL, field_detail(name, NULL));
	PG_RETURN_VOID();
}

/*
 * The stored fields of a row as the caller reads it: its rights, its
 * visibility rules (a hidden row is answered like a missing one).
 */
static Jsonb *
read_row(FieldsTable *t, Oid relid, const char *row_key)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	Jsonb	   *stored = NULL;
	bool		found;
	int			nest;
	char	   *sql;

	sql = psprintf("SELECT %s.%s FROM ONLY %s AS %s WHERE %s.%s OPERATOR(pg_catalog.=) $1::%s",
				   raw_alias, quote_identifier(get_attname(relid, t->attnum, false)),
				   qualified_name(relid), raw_alias,
				   raw_alias, quote_identifier(get_attname(relid, t->pk_attnum, false)),
				   format_type_be_qualified(t->pk_type));
	values[0] = CStringGetTextDatum(row_key);
	nest = enter_caller();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (run_raw(sql, 1, types, values, NULL, true) != SPI_OK_SELECT)
		elog(ERROR, "could not read table %s", get_rel_name(relid));
	found = SPI_processed > 0;
	if (found)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(caller);

			stored = DatumGetJsonbPCopy(d);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();
	AtEOXact_GUC(true, nest);
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("row \"%s\" of table %s does not exist", row_key, get_rel_name(relid))));
	return stored;
}

static void
audit_unmasked(Oid relid, const char *row_key, const char *field, const char *reason)
{
	Jsonb	   *detail = field_detail(field, reason);

	cg_audit_durable("field_unmasked", get_rel_name(relid), row_key,
					 JsonbToCString(NULL, &detail->root, VARSIZE(detail)));
}

PG_FUNCTION_INFO_V1(crmguard_field_values);
Datum
crmguard_field_values(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *row_key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	FieldsTable *t;
	ProjectionCache *c;
	Jsonb	   *stored;
	Jsonb	   *result;
	List	   *unmasked = NIL;
	ListCell   *lc;
	bool		clear;

	cg_require_preload();
	t = fields_table_or_error(relid);
	stored = read_row(t, relid, row_key);
	if (stored == NULL)
		PG_RETURN_NULL();
	c = projection_cache(fcinfo, relid);
	clear = c->actor.kind == ACTOR_PRINCIPAL && c->actor.view_masked;
	result = project(c, stored, false, clear, row_key, &unmasked);
	foreach(lc, unmasked)
		audit_unmasked(relid, row_key, (const char *) lfirst(lc), NULL);
	PG_RETURN_JSONB_P(result);
}

PG_FUNCTION_INFO_V1(crmguard_set_field);
Datum
crmguard_set_field(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *row_key;
	char	   *name;
	FieldsTable *t;
	const char *column;
	char	   *sql;
	Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = "   ";
	int			nest;
	uint64		n;

	cg_require_preload();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("target, row_key and field_name must not be NULL")));
	relid = PG_GETARG_OID(0);
	row_key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	name = text_to_cstring(PG_GETARG_TEXT_PP(2));
	t = fields_table_or_error(relid);
	if (find_def(t, name, strlen(name)) == NULL)
		refuse(NULL, name, psprintf("unknown field \"%s\"", name),
			   psprintf("Table %s has no contact field \"%s\".", get_rel_name(relid), name));
	column = quote_identifier(get_attname(relid, t->attnum, false));

	/* an UPDATE of the caller's projection: the guard keeps what it cannot see */
	sql = psprintf("UPDATE ONLY %s AS t SET %s = %s WHERE t.%s OPERATOR(pg_catalog.=) $1::%s",
				   qualified_name(relid), column,
				   PG_ARGISNULL(3) ?
				   psprintf("t.%s OPERATOR(pg_catalog.-) $2", column) :
				   psprintf("COALESCE(t.%s, '{}'::pg_catalog.jsonb) OPERATOR(pg_catalog.||)"
							" pg_catalog.jsonb_build_object($2, $3)", column),
				   quote_identifier(get_attname(relid, t->pk_attnum, false)),
				   format_type_be_qualified(t->pk_type));
	values[0] = CStringGetTextDatum(row_key);
	values[1] = CStringGetTextDatum(name);
	values[2] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[2] = PG_ARGISNULL(3) ? 'n' : ' ';
	nest = enter_caller();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(sql, 3, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update table %s", get_rel_name(relid));
	n = SPI_processed;
	SPI_finish();
	AtEOXact_GUC(true, nest);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("row \"%s\" of table %s does not exist", row_key, get_rel_name(relid))));
	PG_RETURN_VOID();
}

/* The field a principal asks about: known, and of one of its projects */
static FieldDef *
visible_def(FieldsTable *t, Oid relid, const Actor *a, const char *name)
{
	FieldDef   *f = find_def(t, name, strlen(name));

	if (f == NULL)
		refuse(NULL, name, psprintf("unknown field \"%s\"", name),
			   psprintf("Table %s has no contact field \"%s\".", get_rel_name(relid), name));
	if (a->kind == ACTOR_PRINCIPAL && !actor_sees(a, f))
		refuse(f, name, psprintf("field \"%s\" belongs to another project", name),
			   "The acting principal's projects do not include the field's projects.");
	return f;
}

PG_FUNCTION_INFO_V1(crmguard_find_by_field);
Datum
crmguard_find_by_field(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *value = text_to_cstring(PG_GETARG_TEXT_PP(2));
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	FieldsTable *t;
	FieldDef   *f;
	Actor		actor;
	JsonbValue	in;
	JsonbValue	norm;
	char	   *canonical;
	char	   *lookup;
	char	   *column;
	char	   *expr;
	char	   *sql;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	int			nest;
	uint64		i;

	cg_require_preload();
	t = fields_table_or_error(relid);
	actor_init(&actor);
	f = visible_def(t, relid, &actor, name);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (actor.kind == ACTOR_NOBODY)
		return (Datum) 0;		/* sees no field */
	in.type = jbvString;
	in.val.string.val = value;
	in.val.string.len = strlen(value);
	canonical = normalise_value(f, &in, &norm);
	lookup = f->masked ? blind_index(t, f, canonical) : scalar_text(&norm);

	column = psprintf("%s.%s", raw_alias, quote_identifier(get_attname(relid, t->attnum, false)));
	if (f->masked)
		expr = psprintf("((%s OPERATOR(pg_catalog.->) %s) OPERATOR(pg_catalog.->>) 'blind')",
						column, quote_literal_cstr(f->name));
	else
		expr = psprintf("(%s OPERATOR(pg_catalog.->>) %s)", column, quote_literal_cstr(f->name));
	sql = psprintf("SELECT %s.%s FROM ONLY %s AS %s WHERE (%s COLLATE pg_catalog.\"C\") OPERATOR(pg_catalog.=) $1"
				   " AND %s OPERATOR(pg_catalog.?) %s",
				   raw_alias, quote_identifier(get_attname(relid, t->pk_attnum, false)),
				   qualified_name(relid), raw_alias, expr, column, quote_literal_cstr(f->name));
	values[0] = CStringGetTextDatum(lookup);
	nest = enter_caller();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (run_raw(sql, 1, types, values, NULL, true) != SPI_OK_SELECT)
		elog(ERROR, "could not read table %s", get_rel_name(relid));
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
		Datum		d = CStringGetTextDatum(key);
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &d, &isnull);
	}
	SPI_finish();
	AtEOXact_GUC(true, nest);
	return (Datum) 0;
}

static char *
refusal_detail(const char *field, const char *problem)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"field\": ");
	escape_json(&buf, field);
	appendStringInfoString(&buf, ", \"problem\": ");
	escape_json(&buf, problem);
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

PG_FUNCTION_INFO_V1(crmguard_unmask);
Datum
crmguard_unmask(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *row_key;
	char	   *name;
	char	   *reason = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	FieldsTable *t;
	FieldDef   *f;
	Actor		actor;
	Jsonb	   *stored;
	JsonbValue	k;
	JsonbValue *v;
	char	   *s;
	int			len;
	char	   *clear;
	const char *r;

	cg_require_preload();
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						errmsg("target, row_key and field_name must not be NULL")));
	relid = PG_GETARG_OID(0);
	row_key = text_to_cstring(PG_GETARG_TEXT_PP(1));
	name = text_to_cstring(PG_GETARG_TEXT_PP(2));
	t = fields_table_or_error(relid);
	actor_init(&actor);
	for (r = reason; r && isspace((unsigned char) *r); r++)
		;
	if (reason == NULL || *r == '\0')
	{
		cg_audit_durable("field_unmask_refused", get_rel_name(relid), row_key,
						 refusal_detail(name, "no reason"));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a reason is required to unmask a value"),
				 errhint("Say why, as in crmguard.unmask(target, row_key, field, 'inbound call, caller verified').")));
	}
	if (actor.kind != ACTOR_PRINCIPAL || !actor.view_masked)
	{
		cg_audit_durable("field_unmask_refused", get_rel_name(relid), row_key,
						 refusal_detail(name, "no view_masked role"));
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to unmask field \"%s\"", name),
				 errdetail("Only principals with the CRM role \"view_masked\" read masked values.")));
	}
	f = visible_def(t, relid, &actor, name);
	stored = read_row(t, relid, row_key);
	if (stored == NULL || !JB_ROOT_IS_OBJECT(stored) || JB_ROOT_IS_SCALAR(stored))
		PG_RETURN_NULL();
	k.type = jbvString;
	k.val.string.val = f->name;
	k.val.string.len = f->namelen;
	v = findJsonbValueFromContainer(&stored->root, JB_FOBJECT, &k);
	if (v == NULL || v->type == jbvNull)
		PG_RETURN_NULL();
	if (!f->masked || v->type != jbvBinary)
		PG_RETURN_TEXT_P(cstring_to_text(scalar_text(v)));
	if (!member_string(v->val.binary.data, "enc", &s, &len) ||
		(clear = decrypt_value(t, f, row_key, s, len)) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("value of field \"%s\" of row \"%s\" cannot be decrypted", f->name, row_key)));
	audit_unmasked(relid, row_key, f->name, reason);
	PG_RETURN_TEXT_P(cstring_to_text(clear));
}

/*
 * One mapped value: a string that is exactly one placeholder takes the
 * source's value as it is; placeholders within text are replaced by text.
 */
static bool
map_value(JsonbValue *tmpl, Jsonb *source, JsonbValue *out)
{
	const char *s = tmpl->val.string.val;
	int			len = tmpl->val.string.len;
	StringInfoData buf;
	int			i = 0;

	initStringInfo(&buf);
	while (i < len)
	{
		const char *close;
		JsonbValue	k;
		JsonbValue *v = NULL;

		if (i + 1 < len && s[i] == '{' && s[i + 1] == '{' &&
			(close = memchr(s + i + 2, '}', len - i - 2)) != NULL &&
			close + 1 < s + len && close[1] == '}')
		{
			k.type = jbvString;
			k.val.string.val = (char *) s + i + 2;
			k.val.string.len = close - (s + i + 2);
			if (source != NULL && JB_ROOT_IS_OBJECT(source) && !JB_ROOT_IS_SCALAR(source))
				v = findJsonbValueFromContainer(&source->root, JB_FOBJECT, &k);
			if (v == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_CG_FIELD_REFUSED),
						 errmsg("unknown placeholder \"{{%.*s}}\"", k.val.string.len, k.val.string.val),
						 errdetail("The source row has no value named \"%.*s\"; placeholders are case-sensitive.",
								   k.val.string.len, k.val.string.val)));
			/* the whole string is this placeholder: the value itself */
			if (i == 0 && close + 2 == s + len)
			{
				if (v->type == jbvNull || (v->type == jbvString && v->val.string.len == 0))
					return false;
				*out = *v;
				return true;
			}
			if (v->type != jbvNull && v->type != jbvBinary)
				appendStringInfoString(&buf, scalar_text(v));
			i = close + 2 - s;
			continue;
		}
		appendStringInfoChar(&buf, s[i++]);
	}
	if (buf.len == 0)
		return false;
	out->type = jbvString;
	out->val.string.val = buf.data;
	out->val.string.len = buf.len;
	return true;
}

PG_FUNCTION_INFO_V1(crmguard_map_fields);
Datum
crmguard_map_fields(PG_FUNCTION_ARGS)
{
	Jsonb	   *mapping;
	Jsonb	   *source = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	JsonbParseState *st = NULL;
	JsonbIterator *it;
	JsonbValue	k;
	JsonbValue	v;
	JsonbIteratorToken r;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	mapping = PG_GETARG_JSONB_P(0);
	if (!JB_ROOT_IS_OBJECT(mapping) || JB_ROOT_IS_SCALAR(mapping))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a field mapping must be a JSON object of field names and values")));
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	it = JsonbIteratorInit(&mapping->root);
	while ((r = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		JsonbValue	mapped;

		if (r != WJB_KEY)
			continue;
		(void) JsonbIteratorNext(&it, &v, true);
		if (v.type == jbvBinary)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("mapping of field \"%.*s\" must be a placeholder or a constant",
							k.val.string.len, k.val.string.val)));
		if (v.type == jbvString)
		{
			if (!map_value(&v, source, &mapped))
				continue;
		}
		else if (v.type == jbvNull)
			continue;
		else
			mapped = v;
		pushJsonbValue(&st, WJB_KEY, &k);
		pushJsonbValue(&st, WJB_VALUE, &mapped);
	}
	PG_RETURN_JSONB_P(JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL)));
}
