/*
 * redact.c
 *		Tokens, JWTs and OTP codes never reach the server log.
 *
 * An emit_log_hook rewrites every server log line before it is written:
 * crmguard tokens ("cg1." and base64url), JWTs (three base64url segments,
 * the first a JSON object however spaced) and the secret arguments of
 * crmguard's identity and OTP functions (verify_otp's code, assume's and
 * assume_jwt's token, however spelt) and the code in an OTP message's body
 * (pgaudit logs the parameters of crmguard's own outbox insert) become
 * "[redacted]"; the rest of the line stays readable.  When the secret
 * argument is not written in the call (a column, a variable, a $n, an
 * EXECUTE of a prepared secret call), every literal of the statement is
 * redacted: the secret is one of them.
 * That covers the message (log_statement, log_min_duration_statement,
 * pgaudit's AUDIT lines and their parameter field), detail (bind
 * parameters), hint, context and internal query.  The "STATEMENT:" line is printed from debug_query_string
 * after the hook returns: the hook points it at a redacted copy.
 */
#include "postgres.h"

#include <sodium.h>

#include "commands/prepare.h"
#include "lib/stringinfo.h"
#include "tcop/tcopprot.h"
#include "utils/elog.h"
#include "utils/memutils.h"

#include "crmguard.h"

#define REDACTED "[redacted]"

static emit_log_hook_type prev_emit_log_hook = NULL;

/* The redacted copy debug_query_string points to, while it does */
static char *redacted_query = NULL;

/* Calls whose secret argument is redacted: name, position, parameter name */
typedef struct SecretCall
{
	const char *name;
	int			position;		/* 0-based */
	const char *param;
} SecretCall;

static const SecretCall secret_calls[] = {
	{"verify_otp", 1, "code"},
	{"assume_jwt", 0, "jwt"},
	{"assume", 0, "token"},
};

static bool
ident_char(char c)
{
	return IS_HIGHBIT_SET(c) || isalnum((unsigned char) c) || c == '_' || c == '$';
}

static bool
b64url_char(char c)
{
	return isalnum((unsigned char) c) || c == '-' || c == '_';
}

/* Length of a run of base64url characters at s */
static int
b64url_run(const char *s)
{
	int			n = 0;

	while (b64url_char(s[n]))
		n++;
	return n;
}

/*
 * Whether a base64url segment decodes to a JSON object, as a JWT's header
 * does: '{' after optional JSON whitespace ('{"' encodes as "eyJ", but
 * '{ "' or a leading newline do not).
 */
static bool
b64url_is_json_object(const char *s, int len)
{
	unsigned char small[128];
	unsigned char *bin = len * 3 / 4 + 1 <= (int) sizeof(small) ? small : palloc(len * 3 / 4 + 1);
	size_t		bin_len;
	size_t		i = 0;
	bool		result = false;

	if (sodium_base642bin(bin, len * 3 / 4 + 1, s, len, NULL, &bin_len, NULL,
						  sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0)
	{
		while (i < bin_len && (bin[i] == ' ' || bin[i] == '\t' || bin[i] == '\n' || bin[i] == '\r'))
			i++;
		result = i < bin_len && bin[i] == '{';
	}
	if (bin != small)
		pfree(bin);
	return result;
}

/*
 * Length of a JWT at s, or 0: three base64url segments joined by dots, the
 * first a JSON object, whatever its spacing (what assume_jwt accepts).
 */
static int
jwt_at(const char *s)
{
	int			first = b64url_run(s);
	int			n = first;

	if (n < 2 || s[n] != '.')
		return 0;
	n++;
	n += b64url_run(s + n);
	if (s[n] != '.')
		return 0;
	n++;
	n += b64url_run(s + n);
	return b64url_is_json_object(s, first) ? n : 0;
}

/*
 * The end of an SQL argument starting at s: the top-level ',' or ')' that
 * ends it, or the end of the text (a truncated or unbalanced one).
 */
static const char *
argument_end(const char *s)
{
	int			depth = 0;

	while (*s)
	{
		if (*s == '\'' || *s == '"')
		{
			char		q = *s++;

			while (*s && !(*s == q && s[1] != q))
				s += (*s == q) ? 2 : 1;
			if (*s)
				s++;
			continue;
		}
		if (*s == '$' && (s[1] == '$' || isalpha((unsigned char) s[1]) || s[1] == '_'))
		{
			const char *tag_end = s + 1;

			while (ident_char(*tag_end) && *tag_end != '$')
				tag_end++;
			if (*tag_end == '$')
			{
				int			tag_len = tag_end - s + 1;
				const char *close = s + tag_len;

				while (*close && strncmp(close, s, tag_len) != 0)
					close++;
				s = *close ? close + tag_len : close;
				continue;
			}
		}
		if (*s == '(' || *s == '[')
			depth++;
		else if ((*s == ')' || *s == ']') && depth > 0)
			depth--;
		else if ((*s == ',' || *s == ')') && depth == 0)
			return s;
		s++;
	}
	return s;
}

/*
 * Whether an argument is harmless to log as written: NULL, a $n parameter
 * (its value is redacted from the parameters detail) or a variable name.
 */
static bool
argument_is_name(const char *s, int len)
{
	int			i;

	while (len > 0 && isspace((unsigned char) *s))
		s++, len--;
	while (len > 0 && isspace((unsigned char) s[len - 1]))
		len--;
	if (len == 0)
		return true;
	if (s[0] == '$')
	{
		for (i = 1; i < len; i++)
			if (!isdigit((unsigned char) s[i]))
				return false;
		return len > 1;
	}
	if (!(isalpha((unsigned char) s[0]) || s[0] == '_'))
		return false;
	for (i = 1; i < len; i++)
		if (!(isalnum((unsigned char) s[i]) || s[i] == '_' || s[i] == '.'))
			return false;
	return true;
}

/* Whether an argument is given by name (name => value), and which name */
static bool
argument_named(const char *s, int len, const char *param, bool *is_param)
{
	const char *arrow = NULL;
	int			i;

	for (i = 0; i + 1 < len; i++)
		if ((s[i] == '=' && s[i + 1] == '>') || (s[i] == ':' && s[i + 1] == '='))
		{
			arrow = s + i;
			break;
		}
	if (arrow == NULL)
		return false;
	while (isspace((unsigned char) *s))
		s++;
	*is_param = (size_t) (arrow - s) >= strlen(param) &&
		pg_strncasecmp(s, param, strlen(param)) == 0 &&
		!ident_char(s[strlen(param)]);
	return true;
}

/* The secret call whose name starts at s, with its '(' at *paren */
static const SecretCall *
secret_call_at(const char *text, const char *s, const char **paren)
{
	int			i;

	if (s > text && (ident_char(s[-1])))
		return NULL;
	for (i = 0; i < (int) lengthof(secret_calls); i++)
	{
		size_t		n = strlen(secret_calls[i].name);
		const char *p = s + n;

		if (pg_strncasecmp(s, secret_calls[i].name, n) != 0 || ident_char(*p))
			continue;
		if (*p == '"')
			p++;
		while (isspace((unsigned char) *p))
			p++;
		if (*p == '(')
		{
			*paren = p;
			return &secret_calls[i];
		}
	}
	return NULL;
}

static void redact_into(StringInfo out, const char *s, int len);
static bool mentions_secret_call(const char *text);

/*
 * Set while redacting a statement whose secret argument is not written in
 * the call itself (a column, a variable, a $n parameter, an expression): the
 * secret then comes from elsewhere in the statement (VALUES, a subquery,
 * EXECUTE's arguments), so every literal of the statement is redacted.
 */
static bool redact_literals = false;

/* Length of the quoted literal or identifier at s ('...', "...", E'...'), up to stop */
static int
quoted_length(const char *s, const char *stop)
{
	const char *p = s;
	char		q;
	bool		backslash = false;

	if (*p == 'E' || *p == 'e')
	{
		backslash = true;
		p++;
	}
	q = *p++;
	while (p < stop)
	{
		if (backslash && *p == '\\' && p + 1 < stop)
			p += 2;
		else if (*p == q && p + 1 < stop && p[1] == q)
			p += 2;
		else if (*p == q)
			return p + 1 - s;
		else
			p++;
	}
	return stop - s;
}

/* Length of the dollar-quoted literal at s ($tag$...$tag$), up to stop; 0 when none */
static int
dollar_quoted_length(const char *s, const char *stop, int *tag_len)
{
	const char *tag_end = s + 1;
	const char *close;

	if (s > stop - 2 || (s[1] != '$' && !isalpha((unsigned char) s[1]) && s[1] != '_'))
		return 0;
	while (tag_end < stop && ident_char(*tag_end) && *tag_end != '$')
		tag_end++;
	if (tag_end >= stop || *tag_end != '$')
		return 0;
	*tag_len = tag_end - s + 1;
	for (close = s + *tag_len; close + *tag_len <= stop; close++)
		if (strncmp(close, s, *tag_len) == 0)
			return close + *tag_len - s;
	return stop - s;
}

/*
 * A literal of a statement that feeds a secret argument indirectly: SQL
 * text that itself calls a secret function (a function body, a PREPARE
 * string) is redacted within, any other literal as a whole.
 */
static void
redact_literal(StringInfo out, const char *s, int len, int open_len, int close_len)
{
	char	   *content = pnstrdup(s + open_len, Max(len - open_len - close_len, 0));

	if (mentions_secret_call(content))
	{
		appendBinaryStringInfo(out, s, open_len);
		redact_into(out, content, strlen(content));
		appendBinaryStringInfo(out, s + len - close_len, close_len);
	}
	else
		appendStringInfoString(out, "'" REDACTED "'");
	pfree(content);
}

/* The arguments of a secret call, from after its '(' ; returns where it stopped */
static const char *
redact_call_args(StringInfo out, const SecretCall *call, const char *s)
{
	int			position = 0;

	for (;;)
	{
		const char *end = argument_end(s);
		bool		named_param = false;
		bool		secret;

		if (argument_named(s, end - s, call->param, &named_param))
			secret = named_param;
		else
			secret = position == call->position;
		if (secret && !argument_is_name(s, end - s))
		{
			while (isspace((unsigned char) *s))
				appendStringInfoChar(out, *s++);
			appendStringInfoString(out, REDACTED);
		}
		else
			redact_into(out, s, end - s);
		if (*end != ',')
			return end;
		appendStringInfoChar(out, ',');
		s = end + 1;
		position++;
	}
}

/* Copy len bytes of s to out, secrets replaced */
static void
redact_into(StringInfo out, const char *s, int len)
{
	const char *text = s;
	const char *stop = s + len;

	while (s < stop)
	{
		const SecretCall *call;
		const char *paren;
		int			n;

		if ((s == text || !b64url_char(s[-1])) &&
			stop - s >= 4 && strncmp(s, "cg1.", 4) == 0)
		{
			n = 4 + b64url_run(s + 4);
			appendStringInfoString(out, REDACTED);
			s += Min(n, stop - s);
			continue;
		}
		if (*s == 'y' && stop - s >= (int) strlen(CG_OTP_CODE_MARK) &&
			strncmp(s, CG_OTP_CODE_MARK, strlen(CG_OTP_CODE_MARK)) == 0)
		{
			/* an OTP message's body, as pgaudit logs the outbox insert */
			appendStringInfoString(out, CG_OTP_CODE_MARK REDACTED);
			s += strlen(CG_OTP_CODE_MARK);
			while (s < stop && isalnum((unsigned char) *s))
				s++;
			continue;
		}
		if ((s == text || !b64url_char(s[-1])) && (n = jwt_at(s)) > 0)
		{
			appendStringInfoString(out, REDACTED);
			s += Min(n, stop - s);
			continue;
		}
		if (redact_literals && (s == text || !ident_char(s[-1])))
		{
			int			tag_len;

			if (*s == '"')
			{
				/* an identifier: kept as written */
				n = quoted_length(s, stop);
				appendBinaryStringInfo(out, s, n);
				s += n;
				continue;
			}
			if (*s == '\'' || ((*s == 'E' || *s == 'e') && s + 1 < stop && s[1] == '\''))
			{
				n = quoted_length(s, stop);
				redact_literal(out, s, n, *s == '\'' ? 1 : 2, s[n - 1] == '\'' && n > 2 ? 1 : 0);
				s += n;
				continue;
			}
			if (*s == '$' && (n = dollar_quoted_length(s, stop, &tag_len)) > 0)
			{
				redact_literal(out, s, n, tag_len, n >= 2 * tag_len ? tag_len : 0);
				s += n;
				continue;
			}
			if (isdigit((unsigned char) *s))
			{
				/* a number: a numeric code may be written as one */
				while (s < stop && (isdigit((unsigned char) *s) || *s == '.'))
					s++;
				appendStringInfoString(out, REDACTED);
				continue;
			}
		}
		if (*s == '$' && redact_literals)
		{
			/* a $n parameter: kept */
			appendStringInfoChar(out, *s++);
			while (s < stop && isdigit((unsigned char) *s))
				appendStringInfoChar(out, *s++);
			continue;
		}
		if (isalpha((unsigned char) *s) && (call = secret_call_at(text, s, &paren)) != NULL &&
			paren < stop)
		{
			appendBinaryStringInfo(out, s, paren + 1 - s);
			s = redact_call_args(out, call, paren + 1);
			continue;
		}
		appendStringInfoChar(out, *s++);
	}
}

/* Whether text may hold a secret: the cheap test every log line passes */
static bool
may_hold_secret(const char *text)
{
	const char *s;

	for (s = text; *s; s++)
	{
		if ((*s == 'c' && strncmp(s, "cg1.", 4) == 0) ||
			(*s == 'y' && strncmp(s, CG_OTP_CODE_MARK, strlen(CG_OTP_CODE_MARK)) == 0))
			return true;
		if ((*s == 'a' || *s == 'A' || *s == 'v' || *s == 'V'))
		{
			const char *paren;

			if (secret_call_at(s, s, &paren) != NULL)
				return true;
		}
		if (b64url_char(*s) && (s == text || !b64url_char(s[-1])))
		{
			int			run = b64url_run(s);

			if (s[run] == '.' && jwt_at(s) > 0)
				return true;
			s += run - 1;
		}
	}
	return false;
}

/* Whether a secret call's secret argument is something other than a literal written there */
static bool
secret_argument_indirect(const SecretCall *call, const char *s)
{
	int			position = 0;

	for (;;)
	{
		const char *end = argument_end(s);
		bool		named_param = false;
		bool		secret;

		if (argument_named(s, end - s, call->param, &named_param))
		{
			secret = named_param;
			/* the value follows the "=>" or ":=" */
			while (secret && !((s[0] == '=' || s[0] == ':') && (s[1] == '>' || s[1] == '=')))
				s++;
			if (secret)
				s += 2;
		}
		else
			secret = position == call->position;
		if (secret)
		{
			while (s < end && isspace((unsigned char) *s))
				s++;
			if (s == end)
				return false;
			return !(*s == '\'' ||
					 ((*s == 'E' || *s == 'e') && s[1] == '\'') ||
					 (*s == '$' && !isdigit((unsigned char) s[1])));
		}
		if (*end != ',')
			return false;
		s = end + 1;
		position++;
	}
}

/*
 * The prepared statement an EXECUTE at s runs, when it calls a secret
 * function: its arguments are the secret's parameters.
 */
static bool
executes_secret_statement(const char *text, const char *s)
{
	char		name[NAMEDATALEN];
	int			n = 0;
	PreparedStatement *ps;

	if ((s > text && ident_char(s[-1])) || pg_strncasecmp(s, "execute", 7) != 0 ||
		!isspace((unsigned char) s[7]))
		return false;
	s += 7;
	while (isspace((unsigned char) *s))
		s++;
	if (*s == '"')
	{
		for (s++; *s && *s != '"' && n < NAMEDATALEN - 1; s++)
			name[n++] = *s;
	}
	else
		for (; ident_char(*s) && n < NAMEDATALEN - 1; s++)
			name[n++] = pg_tolower((unsigned char) *s);
	name[n] = '\0';
	if (n == 0)
		return false;
	ps = FetchPreparedStatement(name, false);
	return ps != NULL && mentions_secret_call(ps->plansource->query_string);
}

/*
 * Whether a secret reaches a secret call from elsewhere in the statement:
 * the call's secret argument is a name, parameter or expression, or the
 * statement EXECUTEs a prepared statement that calls a secret function.
 */
static bool
feeds_secret_indirectly(const char *text)
{
	const char *s;
	const char *paren;
	const SecretCall *call;

	for (s = text; *s; s++)
	{
		if (!isalpha((unsigned char) *s))
			continue;
		if ((call = secret_call_at(text, s, &paren)) != NULL &&
			secret_argument_indirect(call, paren + 1))
			return true;
		if ((*s == 'e' || *s == 'E') && executes_secret_statement(text, s))
			return true;
	}
	return false;
}

/* Whether text calls one of the functions whose arguments are secret */
static bool
mentions_secret_call(const char *text)
{
	const char *s;
	const char *paren;

	for (s = text; *s; s++)
		if (isalpha((unsigned char) *s) && secret_call_at(text, s, &paren) != NULL)
			return true;
	return false;
}

/*
 * A redacted copy of text, or NULL when it holds no secret.  statement: the
 * text is SQL as sent (not a message quoting it), whose literals are
 * redacted when they may feed a secret argument indirectly.
 */
static char *
redact(const char *s, bool statement)
{
	StringInfoData out;
	bool		indirect;

	if (s == NULL)
		return NULL;
	indirect = statement && feeds_secret_indirectly(s);
	if (!indirect && !may_hold_secret(s))
		return NULL;
	initStringInfo(&out);
	redact_literals = indirect;
	PG_TRY();
	{
		redact_into(&out, s, strlen(s));
	}
	PG_FINALLY();
	{
		redact_literals = false;
	}
	PG_END_TRY();
	return out.data;
}

/* Bind parameters of a statement that calls a secret function: values go */
static char *
redact_parameters(const char *s)
{
	const char *start = s ? strstr(s, "parameters: ") : NULL;
	StringInfoData out;

	if (start == NULL)
		return NULL;
	initStringInfo(&out);
	appendBinaryStringInfo(&out, s, start - s);
	for (s = start; *s; s++)
	{
		if (*s == '\'')
		{
			for (s++; *s && !(*s == '\'' && s[1] != '\''); s += (*s == '\'') ? 2 : 1)
				;
			appendStringInfoString(&out, "'" REDACTED "'");
			if (*s == '\0')
				break;
			continue;
		}
		appendStringInfoChar(&out, *s);
	}
	return out.data;
}

/*
 * pgaudit's line of a statement that calls a secret function: its last CSV
 * field holds the bind parameters (pgaudit.log_parameter), code included.
 * The fields before it are type, statement id, substatement id, class,
 * command, object type, object name and statement.
 */
static char *
redact_audit_parameters(const char *s)
{
	const char *p = s + strlen("AUDIT: ");
	int			field;

	for (field = 0; field < 8; field++)
	{
		if (*p == '"')
		{
			for (p++; *p && !(*p == '"' && p[1] != '"'); p += (*p == '"') ? 2 : 1)
				;
			if (*p)
				p++;
		}
		else
			while (*p && *p != ',')
				p++;
		if (*p != ',')
			return NULL;
		p++;
	}
	if (strcmp(p, "<none>") == 0 || strcmp(p, "<not logged>") == 0)
		return NULL;
	return psprintf("%.*s%s", (int) (p - s), s, REDACTED);
}

/*
 * pgaudit's statement field (the eighth, CSV-quoted when it holds a comma or
 * quote) redacted as a statement; NULL when it needs nothing.
 */
static char *
redact_audit_statement(const char *s)
{
	const char *p = s + strlen("AUDIT: ");
	const char *start;
	StringInfoData field;
	char	   *r;
	int			i;

	for (i = 0; i < 7; i++)
	{
		if (*p == '"')
		{
			for (p++; *p && !(*p == '"' && p[1] != '"'); p += (*p == '"') ? 2 : 1)
				;
			if (*p)
				p++;
		}
		else
			while (*p && *p != ',')
				p++;
		if (*p != ',')
			return NULL;
		p++;
	}
	start = p;
	initStringInfo(&field);
	if (*p == '"')
	{
		for (p++; *p && !(*p == '"' && p[1] != '"'); p++)
		{
			appendStringInfoChar(&field, *p);
			if (*p == '"')
				p++;
		}
		if (*p)
			p++;
	}
	else
		while (*p && *p != ',')
			appendStringInfoChar(&field, *p++);
	r = redact(field.data, true);
	if (r == NULL)
		return NULL;
	resetStringInfo(&field);
	appendBinaryStringInfo(&field, s, start - s);
	appendStringInfoChar(&field, '"');
	for (; *r; r++)
	{
		if (*r == '"')
			appendStringInfoChar(&field, '"');
		appendStringInfoChar(&field, *r);
	}
	appendStringInfoChar(&field, '"');
	appendStringInfoString(&field, p);
	return field.data;
}

static void
redact_field(char **field, bool statement, bool secret_statement)
{
	char	   *r = redact(*field, statement);

	if (r != NULL)
		*field = r;
	if (secret_statement && (r = redact_parameters(*field)) != NULL)
		*field = r;
}

static void
crmguard_emit_log(ErrorData *edata)
{
	const char *query = debug_query_string;
	bool		secret_statement = false;
	bool		audit_line;

	if (query != NULL && query != redacted_query)
	{
		char	   *r = redact(query, true);

		if (r != NULL)
		{
			/* printed as "STATEMENT:" after this hook: print the copy */
			if (redacted_query != NULL)
				pfree(redacted_query);
			redacted_query = MemoryContextStrdup(TopMemoryContext, r);
			debug_query_string = redacted_query;
			secret_statement = true;
		}
	}
	else if (query != NULL)
		secret_statement = true;

	audit_line = edata->message && strncmp(edata->message, "AUDIT: ", 7) == 0;
	if (audit_line)
	{
		char	   *r;

		if (mentions_secret_call(edata->message) &&
			(r = redact_audit_parameters(edata->message)) != NULL)
			edata->message = r;
		if ((r = redact_audit_statement(edata->message)) != NULL)
			edata->message = r;
	}

	/*
	 * The message of log_statement and log_min_duration_statement holds the
	 * statement; pgaudit's holds it in one field, done above.
	 */
	redact_field(&edata->message, !audit_line, secret_statement);
	redact_field(&edata->detail, false, secret_statement);
	redact_field(&edata->detail_log, false, secret_statement);
	redact_field(&edata->hint, false, secret_statement);
	redact_field(&edata->context, false, secret_statement);
	redact_field(&edata->internalquery, true, false);

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
cg_redact_init(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = crmguard_emit_log;
}
