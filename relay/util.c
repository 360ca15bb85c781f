/*
 * util.c
 *		Logging, memory and the two things the log must never show in clear:
 *		recipients are masked, and a provider's answer is stripped of the
 *		message it may echo (an OTP code).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "relay.h"

/* the marker after which an OTP message holds its code (src/otp.c) */
#define OTP_CODE_MARK "your code is "

/* One line on stderr (the journal under systemd), with time and pid */
void
relay_log(const char *fmt,...)
{
	char		stamp[32];
	time_t		now = time(NULL);
	struct tm	tm;
	va_list		ap;

	localtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
	fprintf(stderr, "%s crmguard-relay[%d]: ", stamp, (int) getpid());
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
}

void *
xmalloc(size_t n)
{
	void	   *p = malloc(n ? n : 1);

	if (p == NULL)
	{
		relay_log("out of memory");
		exit(RELAY_EXIT_RUNTIME);
	}
	return p;
}

char *
xstrdup(const char *s)
{
	size_t		n = strlen(s) + 1;

	return memcpy(xmalloc(n), s, n);
}

/*
 * A recipient for the log: an e-mail keeps its first letter and domain, a
 * phone number its last three digits ("c***@example.com", "+** *** ***123").
 */
char *
mask_recipient(const char *recipient)
{
	char	   *out = xstrdup(recipient);
	char	   *at = strchr(out, '@');
	size_t		len = strlen(out);
	size_t		digits = 0;
	size_t		i;

	if (at != NULL)
	{
		for (i = 1; out + i < at; i++)
			out[i] = '*';
		return out;
	}
	for (i = len; i > 0; i--)
	{
		if (isdigit((unsigned char) out[i - 1]) && ++digits > 3)
			out[i - 1] = '*';
	}
	return out;
}

/* Replace every occurrence of needle in text by "[redacted]" (text shrinks or stays) */
static void
cut_out(char *text, const char *needle)
{
	size_t		n = strlen(needle);
	char	   *p;

	if (n < sizeof("[redacted]"))
		return;
	while ((p = strstr(text, needle)) != NULL)
	{
		memcpy(p, "[redacted]", 10);
		memmove(p + 10, p + n, strlen(p + n) + 1);
	}
}

/*
 * A provider's answer goes into last_error and the log: take out the body it
 * may echo, and any OTP code after the marker.
 */
void
redact_excerpt(char *text, const Message *m)
{
	char	   *p = text;

	if (m->body != NULL)
		cut_out(text, m->body);
	while ((p = strstr(p, OTP_CODE_MARK)) != NULL)
	{
		char	   *code = p + strlen(OTP_CODE_MARK);
		char	   *end = code;

		while (isalnum((unsigned char) *end))
			end++;
		if (end > code)
		{
			memset(code, '*', end - code);
		}
		p = end;
	}
}
