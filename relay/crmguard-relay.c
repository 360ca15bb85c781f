/*
 * crmguard-relay.c
 *		The main loop: connect, LISTEN crmguard_outbox, claim each channel's
 *		due messages under this relay's lease, deliver them, report each one;
 *		wait for a NOTIFY or the poll interval; reconnect when the database
 *		goes away; stop cleanly on SIGTERM.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "relay.h"

#define RELAY_VERSION "1.1"
#define DEFAULT_CONFIG "/etc/crmguard/relay.conf"

static const char usage_text[] =
"NAME\n"
"    crmguard-relay - deliver crmguard's outbox: e-mail over SMTP, SMS, WhatsApp\n"
"    and webhooks over HTTP\n"
"\n"
"SYNOPSIS\n"
"    crmguard-relay [-c FILE] [--once]\n"
"    crmguard-relay [-c FILE] --check\n"
"    crmguard-relay --help | --version\n"
"\n"
"DESCRIPTION\n"
"    crmguard-relay is the one place messages leave the database. It connects\n"
"    with a libpq connection string, LISTENs on crmguard_outbox, and for each\n"
"    channel of its configuration claims due messages with\n"
"    crmguard.claim_outbox(channel, batch, lease, lease_for), delivers them and\n"
"    reports each with crmguard.mark_sent(id, error, lease).\n"
"\n"
"    Delivery is at least once. A claim is a lease: if the relay dies, its\n"
"    messages go to the next relay when the lease runs out. A failed delivery\n"
"    is retried by the database's schedule (exponential backoff with jitter,\n"
"    crmguard.outbox_retry_delay and crmguard.outbox_max_attempts), then the\n"
"    message is dead with its last error. Each message has an idempotency key\n"
"    that stays the same on every attempt: the Message-ID of an e-mail, and\n"
"    the Idempotency-Key header of an HTTP request.\n"
"\n"
"    It runs in the foreground (for systemd) and logs one line per delivery\n"
"    attempt to standard error: message id, channel, masked recipient,\n"
"    attempt, key, outcome. Never the body.\n"
"\n"
"OPTIONS\n"
"    -c, --config FILE   configuration file (default " DEFAULT_CONFIG ")\n"
"    --check             read the configuration, report problems, exit\n"
"    --once              deliver what is due now, then exit\n"
"    -h, --help          this text\n"
"    -V, --version       the version\n"
"\n"
"CONFIGURATION\n"
"    An INI file; lines starting with # or ; are comments. It holds\n"
"    credentials: it must not be readable by group or others (chmod 600).\n"
"\n"
"    [relay]\n"
"    conninfo = host=/run/postgresql dbname=crm user=crm_relay\n"
"    lease = 120         seconds a claim lasts (more than batch x timeout)\n"
"    batch = 10          messages claimed at once per channel\n"
"    poll = 5            seconds between looks for due retries\n"
"\n"
"    [channel email]     the outbox channel \"email\"\n"
"    type = smtp\n"
"    host = mail.example.com\n"
"    port = 587          default 587 (starttls), 465 (tls), 25 (none)\n"
"    tls = starttls      starttls (required) | tls (smtps) | none\n"
"    username = crm@example.com\n"
"    password = secret\n"
"    from = CRM <crm@example.com>\n"
"    timeout = 10        seconds\n"
"    ca_file = /etc/crmguard/ca.pem   trust these CAs, not the system's (smtp, http)\n"
"\n"
"    [channel sms]\n"
"    type = http\n"
"    url = https://api.example.com/2010-04-01/Accounts/AC123/Messages.json\n"
"    method = POST       POST | PUT | PATCH\n"
"    basic_auth = AC123:token\n"
"    header = Authorization: Bearer token     (repeatable)\n"
"    format = form       json (default) | form\n"
"    body = To={{recipient}}&From=%2B15550001&Body={{body}}\n"
"    idempotency_header = Idempotency-Key     (empty: send none)\n"
"    timeout = 10\n"
"\n"
"    Placeholders in body and header: {{recipient}} {{subject}} {{body}}\n"
"    {{id}} {{idempotency_key}} {{channel}} {{attempt}}; in a json body they\n"
"    are JSON-escaped (write the quotes), in a form body URL-encoded;\n"
"    {{raw:body}} inserts the value as it is (an approval webhook's JSON).\n"
"    An answer other than 2xx is a failure, recorded as \"HTTP status: excerpt\".\n"
"\n"
"DATABASE ROLE\n"
"    The relay's login role needs one grant:  GRANT crmguard_relay TO crm_relay;\n"
"\n"
"SIGNALS\n"
"    SIGTERM, SIGINT   finish the delivery in progress, give the rest of the\n"
"                      batch back (crmguard.release_outbox), exit 0\n"
"\n"
"EXIT STATUS\n"
"    0 stopped cleanly; 1 runtime failure; 2 bad usage; 78 bad configuration\n"
"\n"
"FILES\n"
"    " DEFAULT_CONFIG "\n"
"    crmguard-relay.service (systemd unit), crmguard-relay.conf (example)\n";

static volatile sig_atomic_t stop_requested = 0;
static int	wake_pipe[2] = {-1, -1};

/* Stop after the current delivery; wake the main loop if it waits */
static void
on_stop_signal(int sig)
{
	int			save = errno;

	(void) sig;
	stop_requested = 1;
	if (wake_pipe[1] >= 0)
		(void) !write(wake_pipe[1], "x", 1);
	errno = save;
}

/* This relay's lease: random, kept across reconnections */
static void
make_lease(char out[37])
{
	unsigned char b[16];
	size_t		got = 0;

	while (got < sizeof(b))
	{
		ssize_t		n = getrandom(b + got, sizeof(b) - got, 0);

		if (n < 0 && errno != EINTR)
		{
			relay_log("could not read random bytes: %s", strerror(errno));
			exit(RELAY_EXIT_RUNTIME);
		}
		if (n > 0)
			got += n;
	}
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* libpq's message on one line */
static const char *
pq_error(PGconn *conn, PGresult *res)
{
	static char buf[512];
	const char *m = res ? PQresultErrorMessage(res) : PQerrorMessage(conn);
	char	   *p;

	snprintf(buf, sizeof(buf), "%s", m && *m ? m : "unknown error");
	for (p = buf; *p; p++)
		if (*p == '\n')
			*p = ' ';
	while (p > buf && p[-1] == ' ')
		*--p = '\0';
	return buf;
}

/* The server's notices and warnings as log lines of ours */
static void
log_notice(void *arg, const char *message)
{
	char		line[512];
	char	   *p;

	(void) arg;
	snprintf(line, sizeof(line), "%s", message);
	for (p = line; *p; p++)
		if (*p == '\n')
			*p = ' ';
	while (p > line && p[-1] == ' ')
		*--p = '\0';
	relay_log("server: %s", line);
}

static PGconn *
connect_db(const Config *cfg, int quiet)
{
	const char *keys[] = {"dbname", "fallback_application_name", NULL};
	const char *values[] = {cfg->conninfo, "crmguard-relay", NULL};
	PGconn	   *conn = PQconnectdbParams(keys, values, 1);
	PGresult   *res;

	if (PQstatus(conn) != CONNECTION_OK)
	{
		if (!quiet)
			relay_log("could not connect to the database: %s", pq_error(conn, NULL));
		PQfinish(conn);
		return NULL;
	}
	/*
	 * A report lost in a database crash only means a second delivery, which
	 * at-least-once allows: do not wait for a disk flush per message.
	 */
	res = PQexec(conn, "SET synchronous_commit TO off; LISTEN crmguard_outbox");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		relay_log("could not listen on crmguard_outbox: %s", pq_error(conn, res));
		PQclear(res);
		PQfinish(conn);
		return NULL;
	}
	PQclear(res);
	PQsetNoticeProcessor(conn, log_notice, NULL);
	relay_log("connected to database \"%s\" as \"%s\"; listening on crmguard_outbox", PQdb(conn), PQuser(conn));
	return conn;
}

/* A delivery's outcome the database has not heard yet (it went away) */
typedef struct Report
{
	long long	id;
	char	   *error;			/* NULL: delivered */
} Report;

static Report *unreported;
static int	nunreported;

/*
 * Tell the database how a delivery went.  0: done (state in *state), 1: the
 * lease was lost (another relay has the message), -1: no connection.
 */
static int
report(PGconn *conn, const char *lease, long long id, const char *error, char *state, size_t statelen)
{
	char		idtext[32];
	const char *params[3];
	PGresult   *res;
	int			result;

	snprintf(idtext, sizeof(idtext), "%lld", id);
	params[0] = idtext;
	params[1] = error;
	params[2] = lease;
	res = PQexecParams(conn, "SELECT crmguard.mark_sent($1::bigint, $2, $3::uuid)", 3, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		snprintf(state, statelen, "%s", PQgetvalue(res, 0, 0));
		result = 0;
	}
	else if (PQstatus(conn) != CONNECTION_OK)
		result = -1;
	else
	{
		snprintf(state, statelen, "%s", pq_error(conn, res));
		result = 1;
	}
	PQclear(res);
	return result;
}

/* Give a claimed message back untried */
static void
release(PGconn *conn, const char *lease, long long id)
{
	char		idtext[32];
	const char *params[2];
	PGresult   *res;

	snprintf(idtext, sizeof(idtext), "%lld", id);
	params[0] = idtext;
	params[1] = lease;
	res = PQexecParams(conn, "SELECT crmguard.release_outbox($1::bigint, $2::uuid)", 2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		relay_log("could not release message %lld: %s", id, pq_error(conn, res));
	PQclear(res);
}

/* The outcomes kept while the database was away; -1 when it is gone again */
static int
flush_unreported(PGconn *conn, const char *lease)
{
	while (nunreported > 0)
	{
		char		state[512];
		int			r = report(conn, lease, unreported[0].id, unreported[0].error, state, sizeof(state));

		if (r < 0)
			return -1;			/* try again after the next reconnection */
		if (r == 0)
			relay_log("message %lld reported after reconnecting: %s", unreported[0].id, state);
		else
			relay_log("message %lld: its lease ran out while the database was away; another relay may deliver it again", unreported[0].id);
		free(unreported[0].error);
		nunreported--;
		memmove(&unreported[0], &unreported[1], sizeof(Report) * nunreported);
	}
	return 0;
}

static long
elapsed_ms(const struct timespec *from)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - from->tv_sec) * 1000 + (now.tv_nsec - from->tv_nsec) / 1000000;
}

/*
 * Claim a batch of a channel's due messages and deliver them.  Returns the
 * number claimed, -1 when the connection is gone, -2 when the claim failed.
 */
static int
run_channel(PGconn *conn, const Config *cfg, Channel *ch, const char *lease)
{
	char		batch[16];
	char		lease_for[32];
	const char *params[4];
	PGresult   *res;
	int			n;
	int			i;
	int			lost = 0;
	struct timespec claimed_at;

	snprintf(batch, sizeof(batch), "%d", cfg->batch);
	snprintf(lease_for, sizeof(lease_for), "%d seconds", cfg->lease_s);
	params[0] = ch->name;
	params[1] = batch;
	params[2] = lease;
	params[3] = lease_for;
	res = PQexecParams(conn,
					   "SELECT id, recipient, coalesce(subject, ''), coalesce(body, ''), idempotency_key, attempts,"
					   " coalesce(extract(epoch FROM expires_at - now()) * 1000, -1)::bigint"
					   " FROM crmguard.claim_outbox($1, $2::integer, $3::uuid, $4::interval)",
					   4, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		int			gone = PQstatus(conn) != CONNECTION_OK;

		if (!gone)
			relay_log("could not claim messages of channel \"%s\": %s", ch->name, pq_error(conn, res));
		PQclear(res);
		return gone ? -1 : -2;
	}
	n = PQntuples(res);
	clock_gettime(CLOCK_MONOTONIC, &claimed_at);
	for (i = 0; i < n; i++)
	{
		Message		m;
		char		error[1024];
		char		state[512];
		char	   *who;
		struct timespec start;
		int			rc;
		int			r;
		long		ms;
		long long	ms_left;

		m.id = atoll(PQgetvalue(res, i, 0));
		if (stop_requested)
		{
			if (!lost)
				release(conn, lease, m.id);
			continue;
		}
		m.recipient = PQgetvalue(res, i, 1);
		m.subject = PQgetvalue(res, i, 2);
		m.body = PQgetvalue(res, i, 3);
		m.key = PQgetvalue(res, i, 4);
		m.attempt = atoi(PQgetvalue(res, i, 5));
		who = mask_recipient(m.recipient);
		error[0] = '\0';
		clock_gettime(CLOCK_MONOTONIC, &start);
		ms_left = atoll(PQgetvalue(res, i, 6));
		if (ms_left >= 0 && elapsed_ms(&claimed_at) >= ms_left)
		{
			/* a code that expired while the batch went out: never send it late */
			snprintf(error, sizeof(error), "expired before it was sent");
			rc = -1;
		}
		else
			rc = ch->type == CHANNEL_SMTP ? deliver_smtp(ch, &m, error, sizeof(error))
				: deliver_http(ch, &m, error, sizeof(error));
		ms = elapsed_ms(&start);
		r = lost ? -1 : report(conn, lease, m.id, rc == 0 ? NULL : error, state, sizeof(state));
		if (r < 0)
		{
			lost = 1;
			unreported[nunreported].id = m.id;
			unreported[nunreported].error = rc == 0 ? NULL : xstrdup(error);
			nunreported++;
			snprintf(state, sizeof(state), "unreported");
		}
		if (rc == 0 && r == 1)
			relay_log("message %lld (%s to %s, attempt %d, key %s) delivered in %ld ms, but the lease was lost: %s",
					  m.id, ch->name, who, m.attempt, m.key, ms, state);
		else if (rc == 0)
			relay_log("message %lld (%s to %s, attempt %d, key %s) delivered in %ld ms%s",
					  m.id, ch->name, who, m.attempt, m.key, ms,
					  r < 0 ? "; the database went away before the report, kept for later" : "");
		else
			relay_log("message %lld (%s to %s, attempt %d, key %s) failed in %ld ms: %s; %s",
					  m.id, ch->name, who, m.attempt, m.key, ms, error,
					  r < 0 ? "the database went away before the report, kept for later" :
					  r == 1 ? "the lease was lost" :
					  strcmp(state, "dead") == 0 ? "dead: no more attempts" : "will be retried after a backoff");
		free(who);
	}
	PQclear(res);
	return lost ? -1 : n;
}

/* Sleep until a NOTIFY, a signal or the timeout; -1 when the connection broke */
static int
wait_for_work(PGconn *conn, int timeout_s)
{
	fd_set		fds;
	struct timeval tv;
	int			sock = conn ? PQsocket(conn) : -1;
	int			maxfd = wake_pipe[0];
	PGnotify   *note;
	char		drain[64];

	FD_ZERO(&fds);
	FD_SET(wake_pipe[0], &fds);
	if (sock >= 0)
	{
		FD_SET(sock, &fds);
		if (sock > maxfd)
			maxfd = sock;
	}
	tv.tv_sec = timeout_s;
	tv.tv_usec = 0;
	if (select(maxfd + 1, &fds, NULL, NULL, &tv) < 0)
		return 0;				/* EINTR: a signal */
	if (FD_ISSET(wake_pipe[0], &fds))
		(void) !read(wake_pipe[0], drain, sizeof(drain));
	if (sock >= 0 && FD_ISSET(sock, &fds))
	{
		if (!PQconsumeInput(conn))
			return -1;
		while ((note = PQnotifies(conn)) != NULL)
			PQfreemem(note);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const char *config_path = DEFAULT_CONFIG;
	int			check_only = 0;
	int			once = 0;
	Config		cfg;
	char		err[1024];
	char		lease[37];
	PGconn	   *conn = NULL;
	struct sigaction sa;
	int			retry_s = 1;
	int			failing = 0;
	int			i;

	for (i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
		{
			fputs(usage_text, stdout);
			return 0;
		}
		else if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0)
		{
			printf("crmguard-relay %s (libcurl %s, libpq %d)\n", RELAY_VERSION,
				   curl_version_info(CURLVERSION_NOW)->version, PQlibVersion());
			return 0;
		}
		else if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc)
			config_path = argv[++i];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			config_path = argv[i] + 9;
		else if (strcmp(argv[i], "--check") == 0)
			check_only = 1;
		else if (strcmp(argv[i], "--once") == 0)
			once = 1;
		else
		{
			fprintf(stderr, "crmguard-relay: unknown argument \"%s\"\nTry \"crmguard-relay --help\".\n", argv[i]);
			return RELAY_EXIT_USAGE;
		}
	}

	if (config_load(config_path, &cfg, err, sizeof(err)) != 0)
	{
		fprintf(stderr, "crmguard-relay: %s\n", err);
		return RELAY_EXIT_CONFIG;
	}
	if (check_only)
	{
		printf("crmguard-relay: configuration file \"%s\" is valid (%d channels)\n", config_path, cfg.nchannels);
		return 0;
	}

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
	{
		relay_log("could not initialise libcurl");
		return RELAY_EXIT_RUNTIME;
	}
	if (pipe(wake_pipe) != 0)
	{
		relay_log("could not create a pipe: %s", strerror(errno));
		return RELAY_EXIT_RUNTIME;
	}
	fcntl(wake_pipe[0], F_SETFL, O_NONBLOCK);
	fcntl(wake_pipe[1], F_SETFL, O_NONBLOCK);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	unreported = xmalloc(sizeof(Report) * cfg.batch);
	nunreported = 0;
	make_lease(lease);
	relay_log("starting with %d channels, lease %d s, batch %d (configuration \"%s\")",
			  cfg.nchannels, cfg.lease_s, cfg.batch, config_path);

	while (!stop_requested)
	{
		int			claimed = 0;
		int			lost = 0;

		if (conn == NULL)
		{
			conn = connect_db(&cfg, failing > 0 && failing % 10 != 0);
			if (conn == NULL)
			{
				if (once)
					return RELAY_EXIT_RUNTIME;
				failing++;
				wait_for_work(NULL, retry_s);
				retry_s = retry_s < 30 ? retry_s * 2 : 30;
				continue;
			}
			failing = 0;
			retry_s = 1;
			if (flush_unreported(conn, lease) != 0)
			{
				PQfinish(conn);
				conn = NULL;
				continue;
			}
		}
		for (i = 0; i < cfg.nchannels && !stop_requested; i++)
		{
			int			n = run_channel(conn, &cfg, &cfg.channels[i], lease);

			if (n == -1)
			{
				lost = 1;
				break;
			}
			if (n > 0)
				claimed += n;
		}
		if (lost)
		{
			relay_log("connection to the database lost; reconnecting");
			PQfinish(conn);
			conn = NULL;
			continue;
		}
		if (claimed > 0 || stop_requested)
			continue;
		if (once)
			break;
		if (wait_for_work(conn, cfg.poll_s) < 0)
		{
			relay_log("connection to the database lost; reconnecting");
			PQfinish(conn);
			conn = NULL;
		}
	}
	if (conn != NULL && nunreported > 0)
		(void) flush_unreported(conn, lease);
	if (stop_requested)
		relay_log("stopping on a signal: deliveries in progress finished, the rest given back");
	if (nunreported > 0)
		relay_log("%d delivered messages could not be reported; they will be delivered again when their lease runs out", nunreported);
	PQfinish(conn);
	for (i = 0; i < cfg.nchannels; i++)
		if (cfg.channels[i].curl)
			curl_easy_cleanup(cfg.channels[i].curl);
	curl_global_cleanup();
	return 0;
}
