/*
 * config.c
 *		The INI configuration: a [relay] section (database, lease, batch) and
 *		one [channel NAME] section per outbox channel.  The file holds
 *		credentials, so it must not be readable by group or others.  Every
 *		error names the file and line.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "relay.h"

#define MAX_CHANNELS 64
#define MAX_HEADERS 32

static char *
trim(char *s)
{
	char	   *end;

	while (isspace((unsigned char) *s))
		s++;
	end = s + strlen(s);
	while (end > s && isspace((unsigned char) end[-1]))
		*--end = '\0';
	return s;
}

/* A whole number in [min, max] */
static int
parse_int(const char *value, long min, long max, long *out)
{
	char	   *end;
	long		v;

	errno = 0;
	v = strtol(value, &end, 10);
	if (errno != 0 || end == value || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

/* The address inside "Name <address>", or the whole value */
static char *
address_of(const char *from)
{
	const char *lt = strchr(from, '<');
	const char *gt = lt ? strchr(lt, '>') : NULL;
	char	   *a;

	if (lt == NULL || gt == NULL)
		return xstrdup(from);
	a = xmalloc(gt - lt);
	memcpy(a, lt + 1, gt - lt - 1);
	a[gt - lt - 1] = '\0';
	return a;
}

#define FAIL(...) \
	do { \
		int		n_ = snprintf(err, errlen, "%s:%d: ", path, lineno); \
		snprintf(err + n_, errlen - n_, __VA_ARGS__); \
		goto fail; \
	} while (0)

/* A channel section is complete and consistent (checked at its end) */
static int
channel_check(const char *path, Channel *ch, char *err, size_t errlen)
{
	int			lineno = ch->line;

	if ((int) ch->type < 0)
		FAIL("channel \"%s\" has no type (smtp or http)", ch->name);
	if (ch->type == CHANNEL_SMTP)
	{
		if (ch->host == NULL)
			FAIL("smtp channel \"%s\" has no host", ch->name);
		if (ch->from == NULL)
			FAIL("smtp channel \"%s\" has no from address", ch->name);
		if ((ch->username == NULL) != (ch->password == NULL))
			FAIL("smtp channel \"%s\" needs both username and password, or neither", ch->name);
		if (ch->port == 0)
			ch->port = ch->tls == TLS_IMPLICIT ? 465 : (ch->tls == TLS_STARTTLS ? 587 : 25);
	}
	else
	{
		if (ch->url == NULL)
			FAIL("http channel \"%s\" has no url", ch->name);
		if (ch->body == NULL)
			ch->body = xstrdup(ch->format == FORMAT_JSON
							   ? "{\"to\": \"{{recipient}}\", \"subject\": \"{{subject}}\", \"body\": \"{{body}}\", \"id\": \"{{idempotency_key}}\"}"
							   : "to={{recipient}}&subject={{subject}}&body={{body}}&id={{idempotency_key}}");
	}
	return 0;
fail:
	return -1;
}

int
config_load(const char *path, Config *cfg, char *err, size_t errlen)
{
	FILE	   *f;
	struct stat st;
	char		line[8192];
	int			lineno = 0;
	Channel    *ch = NULL;
	int			in_relay = 0;

	memset(cfg, 0, sizeof(*cfg));
	cfg->path = xstrdup(path);
	cfg->lease_s = 120;
	cfg->batch = 10;
	cfg->poll_s = 5;
	cfg->channels = xmalloc(sizeof(Channel) * MAX_CHANNELS);

	f = fopen(path, "r");
	if (f == NULL)
	{
		snprintf(err, errlen, "could not open configuration file \"%s\": %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fileno(f), &st) != 0)
	{
		snprintf(err, errlen, "could not stat configuration file \"%s\": %s", path, strerror(errno));
		fclose(f);
		return -1;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO))
	{
		snprintf(err, errlen, "configuration file \"%s\" has group or world access (mode %04o); it holds credentials: chmod 600 it",
				 path, (unsigned) (st.st_mode & 07777));
		fclose(f);
		return -1;
	}

	while (fgets(line, sizeof(line), f) != NULL)
	{
		char	   *s;
		char	   *eq;
		char	   *key;
		char	   *value;
		long		n;

		lineno++;
		if (strchr(line, '\n') == NULL && !feof(f))
			FAIL("line too long");
		s = trim(line);
		if (*s == '\0' || *s == '#' || *s == ';')
			continue;
		if (*s == '[')
		{
			char	   *close = strchr(s, ']');
			char	   *name;

			if (close == NULL || close[1] != '\0')
				FAIL("malformed section header");
			*close = '\0';
			name = trim(s + 1);
			if (ch != NULL && channel_check(path, ch, err, errlen) != 0)
				goto fail_quiet;
			ch = NULL;
			in_relay = 0;
			if (strcmp(name, "relay") == 0)
				in_relay = 1;
			else if (strncmp(name, "channel", 7) == 0 && isspace((unsigned char) name[7]))
			{
				char	   *cname = trim(name + 8);
				char	   *c;
				int			i;

				if (*cname == '\0')
					FAIL("channel section without a name");
				for (c = cname; *c; c++)
					if (!isalnum((unsigned char) *c) && *c != '_' && *c != '-' && *c != '.')
						FAIL("channel name \"%s\" may hold only letters, digits, _ - and .", cname);
				for (i = 0; i < cfg->nchannels; i++)
					if (strcmp(cfg->channels[i].name, cname) == 0)
						FAIL("channel \"%s\" is defined twice (first on line %d)", cname, cfg->channels[i].line);
				if (cfg->nchannels == MAX_CHANNELS)
					FAIL("too many channels (at most %d)", MAX_CHANNELS);
				ch = &cfg->channels[cfg->nchannels++];
				memset(ch, 0, sizeof(*ch));
				ch->name = xstrdup(cname);
				ch->line = lineno;
				ch->type = (ChannelType) -1;
				ch->tls = TLS_STARTTLS;
				ch->timeout_ms = 10000;
				ch->method = xstrdup("POST");
				ch->format = FORMAT_JSON;
				ch->idempotency_header = xstrdup("Idempotency-Key");
				ch->headers = xmalloc(sizeof(char *) * MAX_HEADERS);
			}
			else
				FAIL("unknown section \"[%s]\" (expected [relay] or [channel NAME])", name);
			continue;
		}
		eq = strchr(s, '=');
		if (eq == NULL)
			FAIL("expected \"key = value\"");
		*eq = '\0';
		key = trim(s);
		value = trim(eq + 1);
		if (!in_relay && ch == NULL)
			FAIL("\"%s\" outside a section", key);

		if (in_relay)
		{
			if (strcmp(key, "conninfo") == 0)
				cfg->conninfo = xstrdup(value);
			else if (strcmp(key, "lease") == 0)
			{
				if (parse_int(value, 1, 86400, &n) != 0)
					FAIL("lease must be a number of seconds from 1 to 86400");
				cfg->lease_s = (int) n;
				cfg->lease_line = lineno;
			}
			else if (strcmp(key, "batch") == 0)
			{
				if (parse_int(value, 1, 1000, &n) != 0)
					FAIL("batch must be a number from 1 to 1000");
				cfg->batch = (int) n;
			}
			else if (strcmp(key, "poll") == 0)
			{
				if (parse_int(value, 1, 3600, &n) != 0)
					FAIL("poll must be a number of seconds from 1 to 3600");
				cfg->poll_s = (int) n;
			}
			else
				FAIL("unknown key \"%s\" in [relay] (expected conninfo, lease, batch or poll)", key);
			continue;
		}

		if (strcmp(key, "type") == 0)
		{
			if (strcmp(value, "smtp") == 0)
				ch->type = CHANNEL_SMTP;
			else if (strcmp(value, "http") == 0)
				ch->type = CHANNEL_HTTP;
			else
				FAIL("unknown channel type \"%s\" (expected smtp or http)", value);
		}
		else if (strcmp(key, "timeout") == 0)
		{
			if (parse_int(value, 1, 600, &n) != 0)
				FAIL("timeout must be a number of seconds from 1 to 600");
			ch->timeout_ms = n * 1000;
		}
		else if (strcmp(key, "ca_file") == 0)
		{
			FILE	   *ca = fopen(value, "r");

			if (ca == NULL)
				FAIL("could not open ca_file \"%s\": %s", value, strerror(errno));
			fclose(ca);
			ch->ca_file = xstrdup(value);
		}
		else if (strcmp(key, "host") == 0)
			ch->host = xstrdup(value);
		else if (strcmp(key, "port") == 0)
		{
			if (parse_int(value, 1, 65535, &n) != 0)
				FAIL("port must be a number from 1 to 65535");
			ch->port = (int) n;
		}
		else if (strcmp(key, "tls") == 0)
		{
			if (strcmp(value, "none") == 0)
				ch->tls = TLS_NONE;
			else if (strcmp(value, "starttls") == 0)
				ch->tls = TLS_STARTTLS;
			else if (strcmp(value, "tls") == 0)
				ch->tls = TLS_IMPLICIT;
			else
				FAIL("tls must be none, starttls or tls");
		}
		else if (strcmp(key, "username") == 0)
			ch->username = xstrdup(value);
		else if (strcmp(key, "password") == 0)
			ch->password = xstrdup(value);
		else if (strcmp(key, "from") == 0)
		{
			if (strpbrk(value, "\r\n") != NULL || strchr(value, '@') == NULL)
				FAIL("from must be an e-mail address, optionally as \"Name <address>\"");
			ch->from = xstrdup(value);
			ch->from_address = address_of(value);
		}
		else if (strcmp(key, "url") == 0)
		{
			if (strncmp(value, "http://", 7) != 0 && strncmp(value, "https://", 8) != 0)
				FAIL("url must start with http:// or https://");
			ch->url = xstrdup(value);
		}
		else if (strcmp(key, "method") == 0)
		{
			if (strcmp(value, "POST") != 0 && strcmp(value, "PUT") != 0 && strcmp(value, "PATCH") != 0)
				FAIL("method must be POST, PUT or PATCH");
			free(ch->method);
			ch->method = xstrdup(value);
		}
		else if (strcmp(key, "header") == 0)
		{
			char		terr[256];

			if (strchr(value, ':') == NULL)
				FAIL("header must be \"Name: value\"");
			if (template_check(value, terr, sizeof(terr)) != 0)
				FAIL("%s", terr);
			if (ch->nheaders == MAX_HEADERS)
				FAIL("too many headers (at most %d)", MAX_HEADERS);
			ch->headers[ch->nheaders++] = xstrdup(value);
		}
		else if (strcmp(key, "basic_auth") == 0)
		{
			if (strchr(value, ':') == NULL)
				FAIL("basic_auth must be \"user:password\"");
			ch->basic_auth = xstrdup(value);
		}
		else if (strcmp(key, "format") == 0)
		{
			if (strcmp(value, "json") == 0)
				ch->format = FORMAT_JSON;
			else if (strcmp(value, "form") == 0)
				ch->format = FORMAT_FORM;
			else
				FAIL("format must be json or form");
		}
		else if (strcmp(key, "body") == 0)
		{
			char		terr[256];

			if (template_check(value, terr, sizeof(terr)) != 0)
				FAIL("%s", terr);
			ch->body = xstrdup(value);
		}
		else if (strcmp(key, "idempotency_header") == 0)
		{
			free(ch->idempotency_header);
			ch->idempotency_header = xstrdup(value);
		}
		else
			FAIL("unknown key \"%s\" in channel \"%s\"", key, ch->name);

		/* a key of the other type of channel is a mistake worth naming */
		if ((int) ch->type >= 0)
		{
			static const char *const smtp_only[] = {"host", "port", "tls", "username", "password", "from", NULL};
			static const char *const http_only[] = {"url", "method", "header", "basic_auth", "format", "body", "idempotency_header", NULL};
			const char *const *wrong = ch->type == CHANNEL_SMTP ? http_only : smtp_only;
			int			i;

			for (i = 0; wrong[i]; i++)
				if (strcmp(key, wrong[i]) == 0)
					FAIL("\"%s\" does not apply to a %s channel", key, ch->type == CHANNEL_SMTP ? "smtp" : "http");
		}
	}
	if (ch != NULL && channel_check(path, ch, err, errlen) != 0)
		goto fail_quiet;
	fclose(f);
	if (cfg->conninfo == NULL)
	{
		snprintf(err, errlen, "%s: no conninfo in [relay]", path);
		return -1;
	}
	if (cfg->nchannels == 0)
	{
		snprintf(err, errlen, "%s: no [channel NAME] section: nothing to deliver", path);
		return -1;
	}
	for (lineno = 0; lineno < cfg->nchannels; lineno++)
	{
		Channel    *c = &cfg->channels[lineno];

		/* a claim must outlive a batch of deliveries that all time out */
		if ((long) cfg->lease_s * 1000 < cfg->batch * c->timeout_ms + 1000)
		{
			snprintf(err, errlen, "%s:%d: lease (%d s) must be longer than batch (%d) times the timeout of channel \"%s\" (%ld s)",
					 path, cfg->lease_line ? cfg->lease_line : c->line, cfg->lease_s, cfg->batch, c->name, c->timeout_ms / 1000);
			return -1;
		}
	}
	return 0;

fail:
fail_quiet:
	fclose(f);
	return -1;
}
