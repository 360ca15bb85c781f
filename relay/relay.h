/*
 * relay.h
 *		crmguard-relay: the one place messages leave the database.  It claims
 *		crmguard.outbox messages per channel and delivers them over SMTP or
 *		HTTP, as its configuration file says.
 */
#ifndef CRMGUARD_RELAY_H
#define CRMGUARD_RELAY_H

#include <stddef.h>
#include <curl/curl.h>

#define RELAY_EXIT_RUNTIME	1		/* the database or the program failed */
#define RELAY_EXIT_USAGE	2		/* bad command line */
#define RELAY_EXIT_CONFIG	78		/* bad configuration (sysexits EX_CONFIG) */

typedef enum
{
	CHANNEL_SMTP,
	CHANNEL_HTTP
} ChannelType;

typedef enum
{
	TLS_NONE,					/* plain SMTP (a local sink, a relay on loopback) */
	TLS_STARTTLS,				/* upgrade with STARTTLS, refuse to go on without it */
	TLS_IMPLICIT				/* smtps: TLS from the first byte */
} TlsMode;

typedef enum
{
	FORMAT_JSON,				/* placeholders JSON-escaped, application/json */
	FORMAT_FORM					/* placeholders URL-encoded, x-www-form-urlencoded */
} BodyFormat;

/* One [channel NAME] section: the outbox channel of that name */
typedef struct Channel
{
	char	   *name;
	int			line;			/* of its section header */
	ChannelType type;
	long		timeout_ms;
	char	   *ca_file;		/* trust these CAs instead of the system's */
	/* smtp */
	char	   *host;
	int			port;
	TlsMode		tls;
	char	   *username;
	char	   *password;
	char	   *from;			/* as written in the From: header */
	char	   *from_address;	/* the envelope sender */
	/* http */
	char	   *url;
	char	   *method;
	char	  **headers;		/* "Name: value" templates */
	int			nheaders;
	char	   *basic_auth;		/* user:password */
	BodyFormat	format;
	char	   *body;			/* template */
	char	   *idempotency_header; /* "" when the provider takes none */
	/* state */
	CURL	   *curl;			/* reused: keeps the connection open */
} Channel;

typedef struct Config
{
	char	   *path;
	char	   *conninfo;
	int			lease_s;		/* a claim lasts this long */
	int			lease_line;
	int			batch;			/* messages claimed at once per channel */
	int			poll_s;			/* look for due retries at least this often */
	Channel    *channels;
	int			nchannels;
} Config;

/* A claimed message */
typedef struct Message
{
	long long	id;
	const char *recipient;
	const char *subject;
	const char *body;
	const char *key;			/* idempotency key, the same on every attempt */
	int			attempt;
} Message;

/* config.c */
extern int	config_load(const char *path, Config *cfg, char *err, size_t errlen);

/* template.c */
extern int	template_check(const char *tmpl, char *err, size_t errlen);
extern char *template_expand(const char *tmpl, const Message *m, const char *channel,
							 int escape_json_values, int escape_form_values);

/* smtp.c, http.c: 0 when delivered, else -1 with a short reason in err */
extern int	deliver_smtp(Channel *ch, const Message *m, char *err, size_t errlen);
extern int	deliver_http(Channel *ch, const Message *m, char *err, size_t errlen);

/* util.c */
extern void relay_log(const char *fmt,...) __attribute__((format(printf, 1, 2)));
extern char *xstrdup(const char *s);
extern void *xmalloc(size_t n);
extern char *mask_recipient(const char *recipient);
extern void redact_excerpt(char *text, const Message *m);

#endif							/* CRMGUARD_RELAY_H */
