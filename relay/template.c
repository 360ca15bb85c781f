/*
 * template.c
 *		Body and header templates of http channels: {{recipient}}, {{subject}},
 *		{{body}}, {{id}}, {{idempotency_key}}, {{channel}}, {{attempt}}.  In a
 *		JSON body a value is inserted JSON-escaped (the template writes the
 *		quotes), in a form body URL-encoded; {{raw:NAME}} inserts it as it is
 *		(a webhook's JSON document).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay.h"

static const char *const names[] = {
	"recipient", "subject", "body", "id", "idempotency_key", "channel", "attempt", NULL
};

/* Growable string */
typedef struct Buf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} Buf;

static void
buf_add(Buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap)
	{
		size_t		cap = b->cap ? b->cap : 256;
		char	   *data;

		while (b->len + n + 1 > cap)
			cap *= 2;
		data = xmalloc(cap);
		if (b->data)
			memcpy(data, b->data, b->len);
		free(b->data);
		b->data = data;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void
add_json_escaped(Buf *b, const char *s)
{
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;
		char		esc[8];

		switch (c)
		{
			case '"':
				buf_add(b, "\\\"", 2);
				break;
			case '\\':
				buf_add(b, "\\\\", 2);
				break;
			case '\n':
				buf_add(b, "\\n", 2);
				break;
			case '\r':
				buf_add(b, "\\r", 2);
				break;
			case '\t':
				buf_add(b, "\\t", 2);
				break;
			default:
				if (c < 0x20)
				{
					snprintf(esc, sizeof(esc), "\\u%04x", c);
					buf_add(b, esc, 6);
				}
				else
					buf_add(b, (const char *) s, 1);
		}
	}
}

static void
add_form_escaped(Buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;
		char		esc[3];

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '-' || c == '_' || c == '.' || c == '~')
			buf_add(b, (const char *) s, 1);
		else if (c == ' ')
			buf_add(b, "+", 1);
		else
		{
			esc[0] = '%';
			esc[1] = hex[c >> 4];
			esc[2] = hex[c & 15];
			buf_add(b, esc, 3);
		}
	}
}

/* Index of a placeholder name of length n, or -1 */
static int
lookup(const char *name, size_t n)
{
	int			i;

	for (i = 0; names[i]; i++)
		if (strlen(names[i]) == n && strncmp(names[i], name, n) == 0)
			return i;
	return -1;
}

/* Every placeholder of a template is known; otherwise say which is not */
int
template_check(const char *tmpl, char *err, size_t errlen)
{
	const char *p = tmpl;

	while ((p = strstr(p, "{{")) != NULL)
	{
		const char *name = p + 2;
		const char *end = strstr(name, "}}");

		if (end == NULL)
		{
			snprintf(err, errlen, "unterminated placeholder \"%.20s\"", p);
			return -1;
		}
		if (strncmp(name, "raw:", 4) == 0)
			name += 4;
		if (lookup(name, end - name) < 0)
		{
			snprintf(err, errlen, "unknown placeholder \"{{%.*s}}\" (known: recipient, subject, body, id, idempotency_key, channel, attempt)",
					 (int) (end - (p + 2)), p + 2);
			return -1;
		}
		p = end + 2;
	}
	return 0;
}

/* The template with the message's values; a checked template, a malloc'd result */
char *
template_expand(const char *tmpl, const Message *m, const char *channel,
				int escape_json_values, int escape_form_values)
{
	Buf			b = {NULL, 0, 0};
	const char *p = tmpl;
	char		id[32];
	char		attempt[16];

	snprintf(id, sizeof(id), "%lld", m->id);
	snprintf(attempt, sizeof(attempt), "%d", m->attempt);
	buf_add(&b, "", 0);
	for (;;)
	{
		const char *open = strstr(p, "{{");
		const char *name;
		const char *end;
		const char *value = "";
		int			raw = 0;

		if (open == NULL)
		{
			buf_add(&b, p, strlen(p));
			break;
		}
		buf_add(&b, p, open - p);
		name = open + 2;
		end = strstr(name, "}}");
		if (strncmp(name, "raw:", 4) == 0)
		{
			raw = 1;
			name += 4;
		}
		switch (lookup(name, end - name))
		{
			case 0:
				value = m->recipient;
				break;
			case 1:
				value = m->subject;
				break;
			case 2:
				value = m->body;
				break;
			case 3:
				value = id;
				break;
			case 4:
				value = m->key;
				break;
			case 5:
				value = channel;
				break;
			case 6:
				value = attempt;
				break;
		}
		if (raw)
			buf_add(&b, value, strlen(value));
		else if (escape_json_values)
			add_json_escaped(&b, value);
		else if (escape_form_values)
			add_form_escaped(&b, value);
		else
			buf_add(&b, value, strlen(value));
		p = end + 2;
	}
	return b.data;
}
