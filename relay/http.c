/*
 * http.c
 *		SMS, WhatsApp and webhooks through a provider's HTTP API: a URL, a
 *		method, headers and a body template (JSON or form) from the channel's
 *		configuration, and the message's idempotency key in a header.  An
 *		answer other than 2xx is a failure, recorded with its status and a
 *		short excerpt of what the provider said.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "relay.h"

#define EXCERPT_BYTES 200
#define ANSWER_BYTES 4096

typedef struct Answer
{
	char		data[ANSWER_BYTES + 1];
	size_t		len;
} Answer;

/* Keep the start of the provider's answer, drop the rest */
static size_t
write_answer(char *src, size_t size, size_t nmemb, void *arg)
{
	Answer	   *a = arg;
	size_t		n = size * nmemb;
	size_t		room = ANSWER_BYTES - a->len;

	memcpy(a->data + a->len, src, n < room ? n : room);
	a->len += n < room ? n : room;
	a->data[a->len] = '\0';
	return size * nmemb;
}

/* The answer on one line, printable, at most EXCERPT_BYTES */
static void
excerpt(const Answer *a, char *out, size_t outlen)
{
	size_t		i;
	size_t		o = 0;
	int			space = 0;

	for (i = 0; i < a->len && o + 4 < outlen && o < EXCERPT_BYTES; i++)
	{
		unsigned char c = (unsigned char) a->data[i];

		if (isspace(c) || c < 0x20 || c == 0x7f)
		{
			space = 1;
			continue;
		}
		if (space && o > 0)
			out[o++] = ' ';
		space = 0;
		out[o++] = (char) c;
	}
	if (i < a->len)
	{
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

int
deliver_http(Channel *ch, const Message *m, char *err, size_t errlen)
{
	struct curl_slist *headers = NULL;
	char	   *body;
	char		curl_err[CURL_ERROR_SIZE] = "";
	char		line[1024];
	Answer	   *answer = xmalloc(sizeof(Answer));
	int			has_content_type = 0;
	CURLcode	rc;
	long		status = 0;
	int			i;

	answer->len = 0;
	answer->data[0] = '\0';
	if (ch->curl == NULL)
		ch->curl = curl_easy_init();
	else
		curl_easy_reset(ch->curl);
	if (ch->curl == NULL)
	{
		snprintf(err, errlen, "could not initialise libcurl");
		free(answer);
		return -1;
	}
	body = template_expand(ch->body, m, ch->name, ch->format == FORMAT_JSON, ch->format == FORMAT_FORM);
	for (i = 0; i < ch->nheaders; i++)
	{
		char	   *h = template_expand(ch->headers[i], m, ch->name, 0, 0);
		char	   *p;

		for (p = h; *p; p++)	/* a value never adds a header */
			if (*p == '\r' || *p == '\n')
				*p = ' ';
		if (strncasecmp(h, "Content-Type:", 13) == 0)
			has_content_type = 1;
		headers = curl_slist_append(headers, h);
		free(h);
	}
	if (!has_content_type)
		headers = curl_slist_append(headers, ch->format == FORMAT_JSON
									? "Content-Type: application/json"
									: "Content-Type: application/x-www-form-urlencoded");
	if (ch->idempotency_header[0] != '\0')
	{
		snprintf(line, sizeof(line), "%s: %s", ch->idempotency_header, m->key);
		headers = curl_slist_append(headers, line);
	}
	headers = curl_slist_append(headers, "Expect:");

	curl_easy_setopt(ch->curl, CURLOPT_URL, ch->url);
	if (strcmp(ch->method, "POST") != 0)
		curl_easy_setopt(ch->curl, CURLOPT_CUSTOMREQUEST, ch->method);
	curl_easy_setopt(ch->curl, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(ch->curl, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
	curl_easy_setopt(ch->curl, CURLOPT_HTTPHEADER, headers);
	if (ch->basic_auth)
	{
		curl_easy_setopt(ch->curl, CURLOPT_HTTPAUTH, (long) CURLAUTH_BASIC);
		curl_easy_setopt(ch->curl, CURLOPT_USERPWD, ch->basic_auth);
	}
	curl_easy_setopt(ch->curl, CURLOPT_USERAGENT, "crmguard-relay");
	curl_easy_setopt(ch->curl, CURLOPT_WRITEFUNCTION, write_answer);
	curl_easy_setopt(ch->curl, CURLOPT_WRITEDATA, answer);
	curl_easy_setopt(ch->curl, CURLOPT_TIMEOUT_MS, ch->timeout_ms);
	curl_easy_setopt(ch->curl, CURLOPT_CONNECTTIMEOUT_MS, ch->timeout_ms);
	curl_easy_setopt(ch->curl, CURLOPT_NOSIGNAL, 1L);
	if (ch->ca_file)
		curl_easy_setopt(ch->curl, CURLOPT_CAINFO, ch->ca_file);
	curl_easy_setopt(ch->curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(ch->curl, CURLOPT_ERRORBUFFER, curl_err);

	rc = curl_easy_perform(ch->curl);
	curl_easy_getinfo(ch->curl, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_setopt(ch->curl, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(ch->curl, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(ch->curl, CURLOPT_POSTFIELDS, NULL);
	curl_slist_free_all(headers);
	free(body);

	if (rc != CURLE_OK)
		snprintf(err, errlen, "%s", curl_err[0] ? curl_err : curl_easy_strerror(rc));
	else if (status < 200 || status > 299)
	{
		char		ex[EXCERPT_BYTES + 8];

		excerpt(answer, ex, sizeof(ex));
		snprintf(err, errlen, "HTTP %ld: %s", status, ex[0] ? ex : "(empty answer)");
	}
	free(answer);
	if (rc != CURLE_OK || status < 200 || status > 299)
	{
		redact_excerpt(err, m);
		return -1;
	}
	return 0;
}
