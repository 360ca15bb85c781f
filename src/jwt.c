/*
 * jwt.c
 *		Identity from a JWT: HS256 (a shared secret) or EdDSA (an Ed25519
 *		public key), verified with libsodium against the JWK or JWK Set in
 *		the file named by crmguard.jwt_key_file, as PostgREST's jwt-secret.
 *
 * JSON is parsed by PostgreSQL's own parser (validated first, so that a
 * malformed token is refused with CG031 rather than a parse error), base64url
 * by libsodium.  The keys are cached per backend and read again when the
 * file changes.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <math.h>
#include <sodium.h>

#include "commands/dbcommands.h"
#include "common/jsonapi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "crmguard.h"

/* a JWT longer than this is refused unread */
#define JWT_MAX_LENGTH	16384

static char *jwt_key_file = NULL;
static char *jwt_principal_claim = NULL;
static char *jwt_audience = NULL;

typedef enum JwtAlg
{
	JWT_HS256,
	JWT_EDDSA
} JwtAlg;

typedef struct JwtKey
{
	JwtAlg		alg;
	char	   *kid;			/* NULL when the JWK has none */
	unsigned char *key;			/* HMAC secret, or Ed25519 public key */
	size_t		len;
} JwtKey;

static MemoryContext key_context = NULL;
static JwtKey *keys = NULL;
static int	nkeys = 0;
static bool keys_loaded = false;
static struct stat keys_stat;

void
cg_jwt_init(void)
{
	DefineCustomStringVariable("crmguard.jwt_key_file",
							   "Path of the JWK or JWK Set that verifies JWTs, relative to the data directory.",
							   "HS256 keys are \"kty\": \"oct\", EdDSA keys \"kty\": \"OKP\" with \"crv\": \"Ed25519\".",
							   &jwt_key_file,
							   "",
							   PGC_POSTMASTER,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("crmguard.jwt_principal_claim",
							   "JWT claim that names the principal.",
							   "Set in the server configuration only: a session cannot choose which claim it is trusted on.",
							   &jwt_principal_claim,
							   "sub",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("crmguard.jwt_audience",
							   "Audience a JWT must name in its \"aud\" claim to be accepted in this database.",
							   "Empty means the current database's name.  Principals are per database and the key file serves the whole cluster: the audience keeps a JWT to the database it was issued for.",
							   &jwt_audience,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);
}

/* A key file error: the DBA's to fix, never the client's token */
static void
bad_key_file(const char *path, const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIG_FILE_ERROR),
			 errmsg("invalid JWT key file \"%s\"", path),
			 errdetail("%s", why)));
}

/* Whether text is one JSON value, checked without raising an error */
static bool
json_is_valid(const char *text, int len)
{
	JsonLexContext *lex;

	if ((int) strlen(text) != len || !pg_verifymbstr(text, len, true))
		return false;
	lex = makeJsonLexContextCstringLen((char *) text, len, GetDatabaseEncoding(), true);
	return pg_parse_json(lex, &nullSemAction) == JSON_SUCCESS;
}

/* A JSON object from text, or NULL when it is not one */
static Jsonb *
parse_json_object(const char *text, int len)
{
	Jsonb	   *j;

	if (!json_is_valid(text, len))
		return NULL;
	j = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
	return JB_ROOT_IS_OBJECT(j) ? j : NULL;
}

/* A string member of an object, NUL-terminated, or NULL */
static char *
string_member(JsonbContainer *object, const char *key)
{
	JsonbValue *v = cg_jsonb_member(object, key);

	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* base64url without padding, as JOSE writes it; NULL when not that */
static unsigned char *
base64url_decode(const char *b64, size_t b64_len, size_t *len)
{
	unsigned char *bin = palloc(b64_len * 3 / 4 + 1);

	if (sodium_base642bin(bin, b64_len * 3 / 4 + 1, b64, b64_len, NULL, len, NULL,
						  sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
		return NULL;
	return bin;
}

/* One JWK into keys[nkeys]; keys of other types are skipped */
static void
load_jwk(const char *path, JsonbContainer *jwk)
{
	char	   *kty = string_member(jwk, "kty");
	char	   *alg = string_member(jwk, "alg");
	char	   *material;
	JwtKey	   *k = &keys[nkeys];

	if (kty == NULL)
		bad_key_file(path, "A key has no \"kty\".");
	if (strcmp(kty, "oct") == 0)
	{
		if (alg != NULL && strcmp(alg, "HS256") != 0)
			return;
		k->alg = JWT_HS256;
		material = string_member(jwk, "k");
	}
	else if (strcmp(kty, "OKP") == 0)
	{
		char	   *crv = string_member(jwk, "crv");

		if (crv == NULL || strcmp(crv, "Ed25519") != 0 ||
			(alg != NULL && strcmp(alg, "EdDSA") != 0))
			return;
		k->alg = JWT_EDDSA;
		material = string_member(jwk, "x");
	}
	else
		return;
	if (material == NULL ||
		(k->key = base64url_decode(material, strlen(material), &k->len)) == NULL)
		bad_key_file(path, psprintf("A key of type \"%s\" has no valid base64url key material.", kty));
	if (k->alg == JWT_HS256 && k->len < 32)
		bad_key_file(path, "An HS256 key must be at least 32 bytes long.");
	if (k->alg == JWT_EDDSA && k->len != crypto_sign_PUBLICKEYBYTES)
		bad_key_file(path, "An Ed25519 key must be 32 bytes long.");
	k->kid = string_member(jwk, "kid");
	nkeys++;
}

/* Read the key file, unless what was read is still current */
static void
load_keys(void)
{
	const char *path = jwt_key_file;
	struct stat st;
	FILE	   *file;
	StringInfoData text;
	char		chunk[4096];
	size_t		n;
	Jsonb	   *set;
	JsonbValue *list;
	MemoryContext old;
	int			i;

	if (path == NULL || path[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no JWT key is configured"),
				 errhint("Set \"crmguard.jwt_key_file\" to a JWK or JWK Set file and restart the server.")));
	if (stat(path, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat JWT key file \"%s\": %m", path)));
	if (keys_loaded && st.st_mtime == keys_stat.st_mtime && st.st_size == keys_stat.st_size &&
		st.st_ino == keys_stat.st_ino)
		return;

	if (key_context == NULL)
		key_context = AllocSetContextCreate(TopMemoryContext, "crmguard JWT keys",
											ALLOCSET_SMALL_SIZES);
	for (i = 0; i < nkeys; i++)
		sodium_memzero(keys[i].key, keys[i].len);
	MemoryContextReset(key_context);
	keys_loaded = false;
	nkeys = 0;

	old = MemoryContextSwitchTo(key_context);
	file = AllocateFile(path, "r");
	if (file == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open JWT key file \"%s\": %m", path)));
	initStringInfo(&text);
	while ((n = fread(chunk, 1, sizeof(chunk), file)) > 0)
		appendBinaryStringInfo(&text, chunk, n);
	FreeFile(file);

	set = parse_json_object(text.data, text.len);
	if (set == NULL)
		bad_key_file(path, "The file is not a JSON object.");
	list = cg_jsonb_member(&set->root, "keys");
	if (list != NULL)
	{
		int			count;

		if (list->type != jbvBinary || !JsonContainerIsArray(list->val.binary.data))
			bad_key_file(path, "\"keys\" must be an array of JWKs.");
		count = JsonContainerSize(list->val.binary.data);
		keys = palloc0(sizeof(JwtKey) * Max(count, 1));
		for (i = 0; i < count; i++)
		{
			JsonbValue *jwk = getIthJsonbValueFromContainer(list->val.binary.data, i);

			if (jwk->type != jbvBinary || !JsonContainerIsObject(jwk->val.binary.data))
				bad_key_file(path, "Each member of \"keys\" must be a JWK object.");
			load_jwk(path, jwk->val.binary.data);
		}
	}
	else
	{
		keys = palloc0(sizeof(JwtKey));
		load_jwk(path, &set->root);
	}
	sodium_memzero(text.data, text.len);
	MemoryContextSwitchTo(old);
	if (nkeys == 0)
		bad_key_file(path, "It holds no HS256 (\"oct\") or Ed25519 (\"OKP\") key.");
	keys_stat = st;
	keys_loaded = true;
}

/* Whether one key signed the signing input */
static bool
signature_ok(const JwtKey *k, const unsigned char *sig, size_t sig_len,
			 const char *input, size_t input_len)
{
	if (k->alg == JWT_HS256)
	{
		crypto_auth_hmacsha256_state state;
		unsigned char mac[crypto_auth_hmacsha256_BYTES];
		bool		ok;

		if (sig_len != crypto_auth_hmacsha256_BYTES)
			return false;
		crypto_auth_hmacsha256_init(&state, k->key, k->len);
		crypto_auth_hmacsha256_update(&state, (const unsigned char *) input, input_len);
		crypto_auth_hmacsha256_final(&state, mac);
		ok = crypto_verify_32(mac, sig) == 0;
		sodium_memzero(mac, sizeof(mac));
		sodium_memzero(&state, sizeof(state));
		return ok;
	}
	return sig_len == crypto_sign_BYTES &&
		crypto_sign_verify_detached(sig, (const unsigned char *) input, input_len, k->key) == 0;
}

/* A NumericDate claim in seconds; false when present but not a finite number */
static bool
numeric_date(JsonbContainer *claims, const char *name, double *seconds, bool *present)
{
	JsonbValue *v = cg_jsonb_member(claims, name);
	char	   *text;

	*present = v != NULL;
	if (v == NULL)
		return true;
	if (v->type != jbvNumeric)
		return false;
	text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	*seconds = strtod(text, NULL);
	return isfinite(*seconds);
}

/*
 * Whether the "aud" claim (a string or an array of strings, RFC 7519)
 * names this database's audience: crmguard.jwt_audience, or the database's
 * name when that is empty.
 */
static bool
audience_ok(JsonbContainer *claims, bool *present)
{
	JsonbValue *aud = cg_jsonb_member(claims, "aud");
	const char *want = jwt_audience && jwt_audience[0] ? jwt_audience
		: get_database_name(MyDatabaseId);
	size_t		want_len = strlen(want);
	int			count;
	int			i;

	*present = aud != NULL;
	if (aud == NULL)
		return false;
	if (aud->type == jbvString)
		return aud->val.string.len == (int) want_len &&
			memcmp(aud->val.string.val, want, want_len) == 0;
	if (aud->type != jbvBinary || !JsonContainerIsArray(aud->val.binary.data))
		return false;
	count = JsonContainerSize(aud->val.binary.data);
	for (i = 0; i < count; i++)
	{
		JsonbValue *v = getIthJsonbValueFromContainer(aud->val.binary.data, i);

		if (v->type == jbvString && v->val.string.len == (int) want_len &&
			memcmp(v->val.string.val, want, want_len) == 0)
			return true;
	}
	return false;
}

/* A JSON part of the token, decoded; refuses the token when it is not an object */
static Jsonb *
token_part(const char *b64, size_t len)
{
	size_t		bin_len;
	unsigned char *bin = base64url_decode(b64, len, &bin_len);
	Jsonb	   *j;

	if (bin == NULL)
		cg_refuse_token("jwt malformed");
	bin[bin_len] = '\0';
	j = parse_json_object((char *) bin, (int) bin_len);
	if (j == NULL)
		cg_refuse_token("jwt malformed");
	return j;
}

/*
 * Verify a JWT and return the id of the principal it names; the identity
 * expires with the token.  Every refusal is CG031, audited.
 */
static int64
verify_jwt(const char *jwt, TimestampTz *expires_at)
{
	size_t		len = strlen(jwt);
	const char *dot1;
	const char *dot2;
	Jsonb	   *header;
	Jsonb	   *claims;
	char	   *alg_name;
	char	   *kid;
	JwtAlg		alg;
	unsigned char *sig;
	size_t		sig_len;
	bool		matched_kid = false;
	bool		tried = false;
	bool		verified = false;
	double		exp_s;
	double		nbf_s;
	bool		has_exp;
	bool		has_nbf;
	bool		has_aud;
	double		now_s;
	char	   *name;
	const CgPrincipal *p;
	int			i;

	load_keys();

	dot1 = len <= JWT_MAX_LENGTH ? strchr(jwt, '.') : NULL;
	dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	if (dot2 == NULL || strchr(dot2 + 1, '.') != NULL)
		cg_refuse_token("jwt malformed");

	header = token_part(jwt, dot1 - jwt);
	alg_name = string_member(&header->root, "alg");
	if (alg_name != NULL && strcmp(alg_name, "HS256") == 0)
		alg = JWT_HS256;
	else if (alg_name != NULL && strcmp(alg_name, "EdDSA") == 0)
		alg = JWT_EDDSA;
	else
		cg_refuse_token("jwt algorithm not accepted");
	kid = string_member(&header->root, "kid");

	sig = base64url_decode(dot2 + 1, len - (dot2 + 1 - jwt), &sig_len);
	if (sig == NULL)
		cg_refuse_token("jwt malformed");

	/*
	 * The token's kid picks its key (a key without kid serves any token); a
	 * key of another algorithm never verifies, whatever the kid says.
	 */
	for (i = 0; i < nkeys && !verified; i++)
	{
		if (kid != NULL && keys[i].kid != NULL && strcmp(kid, keys[i].kid) != 0)
			continue;
		matched_kid = true;
		if (keys[i].alg != alg)
		{
			if (kid != NULL && keys[i].kid != NULL)
				cg_refuse_token("jwt algorithm does not match its key");
			continue;
		}
		tried = true;
		verified = signature_ok(&keys[i], sig, sig_len, jwt, dot2 - jwt);
	}
	if (!matched_kid)
		cg_refuse_token("jwt key id unknown");
	if (!tried)
		cg_refuse_token("jwt algorithm does not match its key");
	if (!verified)
		cg_refuse_token("jwt bad signature");

	claims = token_part(dot1 + 1, dot2 - (dot1 + 1));
	if (!numeric_date(&claims->root, "exp", &exp_s, &has_exp) ||
		!numeric_date(&claims->root, "nbf", &nbf_s, &has_nbf))
		cg_refuse_token("jwt malformed");
	if (!has_exp)
		cg_refuse_token("jwt without exp");
	now_s = (double) (GetCurrentTimestamp() / USECS_PER_SEC) +
		((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY);
	if (now_s >= exp_s)
		cg_refuse_token("jwt expired");
	if (has_nbf && now_s < nbf_s)
		cg_refuse_token("jwt not yet valid");
	if (!audience_ok(&claims->root, &has_aud))
		cg_refuse_token(has_aud ? "jwt for another audience" : "jwt without aud");

	name = string_member(&claims->root, jwt_principal_claim);
	if (name == NULL)
		cg_refuse_token("jwt names no principal");
	p = cg_principal_by_name(name);
	if (p == NULL || !p->active)
		cg_refuse_token("principal inactive or missing");

	/* a far exp is capped at ten years: beyond any token a DBA issues */
	exp_s = Min(exp_s, now_s + 10 * 365.25 * SECS_PER_DAY);
	*expires_at = (TimestampTz) ((exp_s - (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY)
								 * USECS_PER_SEC);
	return p->id;
}

PG_FUNCTION_INFO_V1(crmguard_assume_jwt);
Datum
crmguard_assume_jwt(PG_FUNCTION_ARGS)
{
	TimestampTz expires_at;
	int64		id;

	cg_require_preload();
	if (PG_ARGISNULL(0))
	{
		cg_assume_end();
		PG_RETURN_NULL();
	}
	id = verify_jwt(text_to_cstring(PG_GETARG_TEXT_PP(0)), &expires_at);
	cg_assume_principal(id, expires_at, PG_ARGISNULL(1) || PG_GETARG_BOOL(1), "jwt");
	PG_RETURN_INT64(id);
}

/*
 * PostgREST's db-pre-request: the bearer token of request.headers names who
 * acts for this transaction; without one, nobody does.
 */
PG_FUNCTION_INFO_V1(crmguard_pre_request);
Datum
crmguard_pre_request(PG_FUNCTION_ARGS)
{
	const char *headers;
	Jsonb	   *h;
	char	   *auth;
	char	   *token;
	TimestampTz expires_at;
	int64		id;

	cg_require_preload();
	headers = GetConfigOption("request.headers", true, false);
	h = headers && headers[0] ? parse_json_object(headers, strlen(headers)) : NULL;
	if (headers && headers[0] && h == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("request.headers is not a JSON object")));
	auth = h ? string_member(&h->root, "authorization") : NULL;
	if (auth == NULL || auth[0] == '\0')
	{
		cg_assume_nobody();
		PG_RETURN_VOID();
	}
	if (pg_strncasecmp(auth, "Bearer ", 7) != 0)
		cg_refuse_token("authorization is not a bearer token");
	token = auth + 7;
	while (*token == ' ')
		token++;
	id = verify_jwt(token, &expires_at);
	cg_assume_principal(id, expires_at, true, "jwt");
	PG_RETURN_VOID();
}
