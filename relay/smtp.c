/*
 * smtp.c
 *		E-mail over SMTP with libcurl: STARTTLS (required, never optional) or
 *		implicit TLS, AUTH when the channel has credentials.  The connection
 *		stays open between messages of a batch.  The message's idempotency key
 *		is its Message-ID.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "relay.h"

typedef struct Upload
{
	const char *data;
	size_t		len;
	size_t		pos;
} Upload;

static size_t
read_upload(char *dest, size_t size, size_t nmemb, void *arg)
{
	Upload	   *u = arg;
	size_t		n = size * nmemb;

	if (n > u->len - u->pos)
		n = u->len - u->pos;
	memcpy(dest, u->data + u->pos, n);
	u->pos += n;
	return n;
}

/* RFC 2047 encoded-word for a header value that is not plain ASCII */
static char *
encode_header(const char *value)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *s = (const unsigned char *) value;
	size_t		len = strlen(value);
	size_t		i;
	char	   *out;
	char	   *o;
	int			ascii = 1;

	for (i = 0; i < len; i++)
		if (s[i] >= 0x80)
			ascii = 0;
	if (ascii)
		return xstrdup(value);
	out = xmalloc(len * 4 / 3 + 32);
	o = out + sprintf(out, "=?UTF-8?B?");
	for (i = 0; i < len; i += 3)
	{
		unsigned	v = s[i] << 16 | (i + 1 < len ? s[i + 1] << 8 : 0) | (i + 2 < len ? s[i + 2] : 0);

		*o++ = b64[(v >> 18) & 63];
		*o++ = b64[(v >> 12) & 63];
		*o++ = i + 1 < len ? b64[(v >> 6) & 63] : '=';
		*o++ = i + 2 < len ? b64[v & 63] : '=';
	}
	strcpy(o, "?=");
	return out;
}

/* Header values never carry a line break: no header injection through a subject */
static char *
one_line(const char *value)
{
	char	   *v = xstrdup(value ? value : "");
	char	   *p;

	for (p = v; *p; p++)
		if (*p == '\r' || *p == '\n')
			*p = ' ';
	return v;
}

/* The whole message, headers and body, with CRLF line ends */
static char *
compose(const Channel *ch, const Message *m)
{
	char		date[64];
	time_t		now = time(NULL);
	struct tm	tm;
	char	   *subject_line = one_line(m->subject);
	char	   *subject = encode_header(subject_line);
	const char *b;
	size_t		cap = strlen(m->body) * 2 + strlen(subject) + strlen(ch->from) + strlen(m->recipient) + 512;
	char	   *out = xmalloc(cap);
	char	   *o = out;

	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
	o += sprintf(o,
				 "Date: %s\r\n"
				 "From: %s\r\n"
				 "To: <%s>\r\n"
				 "Subject: %s\r\n"
				 "Message-ID: <%s@crmguard-relay>\r\n"
				 "X-Crmguard-Message: %lld\r\n"
				 "MIME-Version: 1.0\r\n"
				 "Content-Type: text/plain; charset=UTF-8\r\n"
				 "Content-Transfer-Encoding: 8bit\r\n"
				 "\r\n",
				 date, ch->from, m->recipient, subject, m->key, m->id);
	for (b = m->body; *b; b++)
	{
		if (*b == '\n' && (b == m->body || b[-1] != '\r'))
			*o++ = '\r';
		*o++ = *b;
	}
	if (o == out || o[-1] != '\n')
		o += sprintf(o, "\r\n");
	*o = '\0';
	free(subject_line);
	free(subject);
	return out;
}

/* An address a mail server can be given: no spaces, brackets or line breaks */
static int
plain_address(const char *a)
{
	return strchr(a, '@') != NULL && strpbrk(a, " \t\r\n<>,;\"") == NULL;
}

int
deliver_smtp(Channel *ch, const Message *m, char *err, size_t errlen)
{
	char		url[512];
	char		to[512];
	char		from[512];
	char		curl_err[CURL_ERROR_SIZE] = "";
	struct curl_slist *rcpt = NULL;
	Upload		up;
	CURLcode	rc;
	long		code = 0;

	if (!plain_address(m->recipient) || strlen(m->recipient) > 300)
	{
		snprintf(err, errlen, "recipient is not an e-mail address");
		return -1;
	}
	if (ch->curl == NULL)
		ch->curl = curl_easy_init();
	else
		curl_easy_reset(ch->curl);	/* options only: the open connection stays */
	if (ch->curl == NULL)
	{
		snprintf(err, errlen, "could not initialise libcurl");
		return -1;
	}
	/* the URL's path is the name given in EHLO: the sender's domain */
	snprintf(url, sizeof(url), "%s://%s:%d/%s", ch->tls == TLS_IMPLICIT ? "smtps" : "smtp", ch->host, ch->port,
			 strchr(ch->from_address, '@') + 1);
	snprintf(to, sizeof(to), "<%s>", m->recipient);
	snprintf(from, sizeof(from), "<%s>", ch->from_address);
	rcpt = curl_slist_append(NULL, to);
	up.data = compose(ch, m);
	up.len = strlen(up.data);
	up.pos = 0;

	curl_easy_setopt(ch->curl, CURLOPT_URL, url);
	curl_easy_setopt(ch->curl, CURLOPT_USE_SSL, ch->tls == TLS_STARTTLS ? (long) CURLUSESSL_ALL : (long) CURLUSESSL_NONE);
	if (ch->username)
	{
		curl_easy_setopt(ch->curl, CURLOPT_USERNAME, ch->username);
		curl_easy_setopt(ch->curl, CURLOPT_PASSWORD, ch->password);
	}
	curl_easy_setopt(ch->curl, CURLOPT_MAIL_FROM, from);
	curl_easy_setopt(ch->curl, CURLOPT_MAIL_RCPT, rcpt);
	curl_easy_setopt(ch->curl, CURLOPT_READFUNCTION, read_upload);
	curl_easy_setopt(ch->curl, CURLOPT_READDATA, &up);
	curl_easy_setopt(ch->curl, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(ch->curl, CURLOPT_TIMEOUT_MS, ch->timeout_ms);
	curl_easy_setopt(ch->curl, CURLOPT_CONNECTTIMEOUT_MS, ch->timeout_ms);
	curl_easy_setopt(ch->curl, CURLOPT_NOSIGNAL, 1L);
	if (ch->ca_file)
		curl_easy_setopt(ch->curl, CURLOPT_CAINFO, ch->ca_file);
	curl_easy_setopt(ch->curl, CURLOPT_ERRORBUFFER, curl_err);

	rc = curl_easy_perform(ch->curl);
	curl_easy_getinfo(ch->curl, CURLINFO_RESPONSE_CODE, &code);
	/* the buffer and list go away: libcurl must not keep pointers to them */
	curl_easy_setopt(ch->curl, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(ch->curl, CURLOPT_MAIL_RCPT, NULL);
	curl_slist_free_all(rcpt);
	free((char *) up.data);
	if (rc != CURLE_OK)
	{
		if (code >= 400)
			snprintf(err, errlen, "SMTP %ld: %s", code, curl_err[0] ? curl_err : curl_easy_strerror(rc));
		else
			snprintf(err, errlen, "%s", curl_err[0] ? curl_err : curl_easy_strerror(rc));
		redact_excerpt(err, m);
		return -1;
	}
	return 0;
}
