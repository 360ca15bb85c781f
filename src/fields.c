/*
 * fields.c
 *		Contact fields: project-scoped, typed, unique and masked custom fields
 *		kept in a jsonb column of a user table.  This file: the per-backend
 *		cache of fields tables, who acts (a principal's projects and rights),
 *		values (validation, normalisation, masks), sealing and the blind index.
 *
 * Reads (fields_read.c): a planner hook rewrites every reference to a fields
 * column (and every whole-row reference to its table) into
 * crmguard.fields_projection() (crmguard.fields_row()), whatever the query
 * shape: plain SELECT, jsonb operators, views (their stored query is planned
 * with the outer one), SQL and PL/pgSQL functions, RETURNING, COPY (SELECT
 * ...) TO, and COPY table TO, which a utility hook turns into COPY (SELECT
 * ...) TO.  The projection holds only the fields of the principal's projects,
 * masked values masked.
 *
 * Writes (fields_write.c): a BEFORE INSERT OR UPDATE row trigger in C
 * validates and normalises each value, encrypts masked values
 * (XChaCha20-Poly1305, associated data = table identity, field and row key)
 * next to a keyed blind index and their mask, probes the unique fields'
 * indexes, and merges an UPDATE with the old row so that fields the writer
 * cannot see, and masked values written back as it saw them, are kept.
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
#include "fields.h"

const char *const fld_type_names[] = {"text", "int", "numeric", "date", "bool", "phone", "email"};

/* the per-backend cache of fields tables, reloaded after any change */
static MemoryContext fields_context = NULL;
HTAB	   *fld_tables = NULL;
bool		fld_valid = false;
bool		fld_loading = false;
uint64		fld_generation = 0;
Oid			fld_table_rel = InvalidOid;
static Oid	field_def_rel = InvalidOid;
Oid			fld_projection_func = InvalidOid;
Oid			fld_row_func = InvalidOid;
Oid			fld_get_func = InvalidOid;
Oid			fld_get_text_func = InvalidOid;
static bool callbacks_registered = false;
char		fld_raw_alias[32];
int			fld_raw_depth = 0;
Oid			fld_internal = InvalidOid;

/* the two subkeys, derived once per backend */
static unsigned char *cipher_key = NULL;
static unsigned char *blind_root = NULL;

/* ---------------------------------------------------------------------------
 * Cache
 * ---------------------------------------------------------------------------
 */

void
fld_invalidate(void)
{
	fld_valid = false;
}

static void
fields_relcache_callback(Datum arg, Oid relid)
{
	if (!fld_valid)
		return;
	if (relid == InvalidOid || relid == fld_table_rel || relid == field_def_rel ||
		!OidIsValid(fld_table_rel) ||
		(fld_tables && hash_search(fld_tables, &relid, HASH_FIND, NULL) != NULL))
		fld_invalidate();
}

static void
fields_syscache_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	fld_invalidate();
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

FieldType
fld_parse_type(const char *s)
{
	int			i;

	for (i = 0; i < (int) lengthof(fld_type_names); i++)
		if (strcmp(s, fld_type_names[i]) == 0)
			return (FieldType) i;
	return (FieldType) -1;
}

MaskKind
fld_parse_mask(const char *s)
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
	for (i = 0; i < t->nfields; i++)
		t->fields[i].indexoid = get_relname_relid(t->fields[i].index_name, nsp);
}

/* Load every fields table of this database, as the extension owner */
void
fld_load(void)
{
	Oid			schema;
	CgPrivilegedContext priv;
	MemoryContext old_context = fields_context;
	MemoryContext oldcxt;
	HASHCTL		ctl;
	uint64		i;

	if (!callbacks_registered)
	{
		cg_register_relcache_callback(fields_relcache_callback, (Datum) 0);
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
	fld_tables = hash_create("crmguard fields tables", 16, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	fld_generation++;
	fld_table_rel = InvalidOid;
	field_def_rel = InvalidOid;
	fld_projection_func = InvalidOid;
	fld_row_func = InvalidOid;
	fld_get_func = InvalidOid;
	fld_get_text_func = InvalidOid;

	schema = get_namespace_oid("crmguard", true);
	if (OidIsValid(schema))
	{
		fld_table_rel = get_relname_relid("field_table", schema);
		field_def_rel = get_relname_relid("field_def", schema);
	}
	/* valid from here: invalidations arriving while loading count */
	fld_valid = true;
	if (!OidIsValid(fld_table_rel) || !OidIsValid(field_def_rel))
		return;
	/* a database that never had contact fields: no query (fresh connections) */
	if (cg_catalog_never_written(fld_table_rel))
		return;
	{
		Oid			args[2] = {JSONBOID, OIDOID};
		Oid			rargs[2] = {ANYELEMENTOID, OIDOID};
		Oid			gargs[3] = {JSONBOID, OIDOID, TEXTOID};

		fld_projection_func = cg_function_oid("fields_projection", 2, args);
		fld_row_func = cg_function_oid("fields_row", 2, rargs);
		fld_get_func = cg_function_oid("fields_get", 3, gargs);
		fld_get_text_func = cg_function_oid("fields_get_text", 3, gargs);
	}
	fld_loading = true;
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
			FieldsTable *t = hash_search(fld_tables, &relid, HASH_ENTER, NULL);
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
				f->type = fld_parse_type(SPI_getvalue(d, desc, 6));
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
				f->mask = fld_parse_mask(SPI_getvalue(d, desc, 10));
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
	PG_CATCH();
	{
		/* a partial map would leave tables' fields unguarded: read it all again next time */
		fld_loading = false;
		fld_valid = false;
		PG_RE_THROW();
	}
	PG_END_TRY();
	fld_loading = false;

	/* the blind key of each table, keyed by the server's subkey (read only when needed) */
	if (hash_get_num_entries(fld_tables) > 0)
	{
		HASH_SEQ_STATUS seq;
		FieldsTable *t;

		derive_keys();
		hash_seq_init(&seq, fld_tables);
		while ((t = hash_seq_search(&seq)) != NULL)
			crypto_generichash(t->blind_key, sizeof(t->blind_key), t->table_key, TABLE_KEY_BYTES,
							   blind_root, CG_KEY_BYTES);
	}
}

/* The fields table of relid, or NULL; cheap for every other table */
FieldsTable *
fld_lookup(Oid relid)
{
	if (!fld_valid)
		fld_load();
	if (!OidIsValid(fld_table_rel) || hash_get_num_entries(fld_tables) == 0)
		return NULL;
	return hash_search(fld_tables, &relid, HASH_FIND, NULL);
}

FieldsTable *
fld_table_or_error(Oid relid)
{
	FieldsTable *t = fld_lookup(relid);

	if (t == NULL)
	{
		cg_require_relation(relid);
		ereport(ERROR,
				(errcode(ERRCODE_CG_INVALID_RULE),
				 errmsg("%s has no contact fields", cg_relation_description(relid)),
				 errhint("Call crmguard.enable_fields() first.")));
	}
	/* a stale entry's table may be gone: its OID is then what names it */
	if (t->broken)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("contact fields of %s cannot be served: %s",
						cg_relation_description(relid), t->broken)));
	return t;
}

FieldDef *
fld_find_def(FieldsTable *t, const char *name, int len)
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


static bool
principal_has_role(const CgPrincipal *p, const char *role)
{
	int			i;

	for (i = 0; i < p->nroles; i++)
		if (strcmp(p->roles[i], role) == 0)
			return true;
	return false;
}

void
fld_actor_init(Actor *a)
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

bool
fld_project_listed(const FieldDef *f, const char *project)
{
	int			i;

	for (i = 0; i < f->nprojects; i++)
		if (strcmp(f->projects[i], project) == 0)
			return true;
	return false;
}

bool
fld_actor_sees(const Actor *a, const FieldDef *f)
{
	int			i;

	if (a->kind == ACTOR_RAW || (a->kind == ACTOR_PRINCIPAL && a->admin))
		return true;
	if (a->kind == ACTOR_NOBODY)
		return false;
	if (f->nprojects < 0)
		return true;
	for (i = 0; i < a->nprojects; i++)
		if (fld_project_listed(f, a->projects[i]))
			return true;
	return false;
}

/* ---------------------------------------------------------------------------
 * Values: validation, normalisation, masks
 * ---------------------------------------------------------------------------
 */

void
fld_refuse(const FieldDef *f, const char *name, const char *msg, const char *detail)
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
			 errmsg("invalid value for field \"%s\" of type %s", f->name, fld_type_names[f->type]),
			 errdetail("%s", why),
			 f->type == FT_PHONE ? errhint("Write phone numbers with their country code, as in \"+39 347 555 0123\".") : 0));
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
char *
fld_normalise(const FieldDef *f, const JsonbValue *in, JsonbValue *out)
{
	char	   *s;

	if (in->type == jbvBinary)
		refuse_value(f, "A field holds a single value, not an object or an array.");
	s = cg_jsonb_scalar_text(in);
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

char *
fld_blind_index(const FieldsTable *t, const FieldDef *f, const char *canonical)
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
char *
fld_decrypt(const FieldsTable *t, const FieldDef *f, const char *row_key, const char *b64, int b64len)
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

bool
fld_member_string(JsonbContainer *obj, const char *key, char **val, int *len)
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

void
fld_push_string(JsonbParseState **st, JsonbIteratorToken tok, const char *s)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) s;
	v.val.string.len = strlen(s);
	pushJsonbValue(st, tok, &v);
}

/* The stored form of a masked value: {"blind": ..., "enc": ..., "mask": ...} */
JsonbValue *
fld_sealed_value(const FieldsTable *t, const FieldDef *f, const char *row_key, const char *canonical,
			 const char *enc)
{
	JsonbParseState *st = NULL;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	fld_push_string(&st, WJB_KEY, "blind");
	fld_push_string(&st, WJB_VALUE, fld_blind_index(t, f, canonical));
	fld_push_string(&st, WJB_KEY, "enc");
	fld_push_string(&st, WJB_VALUE, enc ? enc : encrypt_value(t, f, row_key, canonical));
	fld_push_string(&st, WJB_KEY, "mask");
	fld_push_string(&st, WJB_VALUE, mask_value(f, canonical));
	return pushJsonbValue(&st, WJB_END_OBJECT, NULL);
}

