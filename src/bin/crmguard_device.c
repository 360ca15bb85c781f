/*
 * crmguard-device
 *		A device's side of crmguard's trusted devices, so that a DBA or a
 *		script can use them without writing crypto: make an Ed25519 key,
 *		enroll it with a one-time code, sign a challenge, attest a session
 *		(and run statements in it), or mint a token for an application.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sodium.h>

static const char *progname = "crmguard-device";

static void
usage(FILE *out)
{
	fprintf(out,
			"%s: the device side of crmguard's trusted devices (Ed25519, libsodium).\n"
			"\n"
			"Usage:\n"
			"  %s keygen KEYFILE\n"
			"      Make a new device key.  The secret key is written to KEYFILE, created\n"
			"      with mode 0600 (an existing file is never overwritten); the public key\n"
			"      is printed as a bytea literal (\\x + 64 hex digits) for\n"
			"      crmguard.register_device or crmguard.enroll_device.\n"
			"  %s pubkey --key KEYFILE\n"
			"      Print the public key of KEYFILE again.\n"
			"  %s enroll --dsn DSN --key KEYFILE [--label LABEL] CODE\n"
			"      Register the key with a one-time enrollment code from an administrator\n"
			"      (crmguard.enrollment_code); prints the device id.\n"
			"  %s sign --key KEYFILE [CHALLENGE]\n"
			"      Sign the bytes crmguard.device_challenge() returned (\\x hex, as an\n"
			"      argument or on standard input); prints the 64-byte signature as \\x hex.\n"
			"  %s attest --dsn DSN --key KEYFILE --device ID [-c SQL]...\n"
			"      Connect, fetch a challenge for the acting principal, sign it, attest the\n"
			"      session, then run each SQL statement in that session and print its rows\n"
			"      (tab-separated).\n"
			"  %s token --dsn DSN --key KEYFILE --device ID --principal NAME [--valid-for INTERVAL]\n"
			"      For an application: as its login role (which may call issue_token), mint a\n"
			"      token for NAME carrying this device's signature; prints the token.\n"
			"\n"
			"A key file must be readable by its owner only (mode 0600 or 0400): a looser\n"
			"one is refused.  DSN is a libpq connection string or URI.\n"
			"Exit status: 0 on success, 1 on a refusal or error, 2 on bad usage.\n",
			progname, progname, progname, progname, progname, progname, progname);
}

static void
die(const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: ", progname);
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(1);
}

static void
print_hex(const unsigned char *bytes, size_t len)
{
	char	   *hex = malloc(len * 2 + 1);

	sodium_bin2hex(hex, len * 2 + 1, bytes, len);
	printf("\\x%s\n", hex);
	free(hex);
}

/* Decode "\x..." (or bare) hex; returns the length, or -1 */
static long
from_hex(const char *text, unsigned char *out, size_t max)
{
	size_t		len = 0;

	while (*text == ' ' || *text == '\n' || *text == '\t')
		text++;
	if (text[0] == '\\' && text[1] == 'x')
		text += 2;
	if (sodium_hex2bin(out, max, text, strlen(text), " \n\t", &len, NULL) != 0)
		return -1;
	return (long) len;
}

static void
keygen(const char *path)
{
	unsigned char pk[crypto_sign_PUBLICKEYBYTES];
	unsigned char sk[crypto_sign_SECRETKEYBYTES];
	char		hex[crypto_sign_SECRETKEYBYTES * 2 + 2];
	int			fd;
	size_t		len;

	crypto_sign_keypair(pk, sk);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, S_IRUSR | S_IWUSR);
	if (fd < 0)
		die("could not create key file \"%s\" (it must not exist yet)", path);
	sodium_bin2hex(hex, sizeof(hex), sk, sizeof(sk));
	sodium_memzero(sk, sizeof(sk));
	len = strlen(hex);
	hex[len++] = '\n';
	if (write(fd, hex, len) != (ssize_t) len || fsync(fd) != 0)
	{
		sodium_memzero(hex, sizeof(hex));
		close(fd);
		unlink(path);
		die("could not write key file \"%s\"", path);
	}
	sodium_memzero(hex, sizeof(hex));
	close(fd);
	print_hex(pk, sizeof(pk));
}

/* Read a secret key from a file only its owner can read */
static void
read_key(const char *path, unsigned char *sk)
{
	struct stat st;
	char		hex[crypto_sign_SECRETKEYBYTES * 2 + 8];
	ssize_t		n;
	int			fd;

	if (path == NULL)
		die("%s", "a key file is required (--key KEYFILE)");
	fd = open(path, O_RDONLY);
	if (fd < 0)
		die("could not open key file \"%s\"", path);
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
		die("key file \"%s\" is not a regular file", path);
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
		die("key file \"%s\" has group or world access: run chmod 0600 on it", path);
	n = read(fd, hex, sizeof(hex) - 1);
	close(fd);
	if (n <= 0)
		die("could not read key file \"%s\"", path);
	hex[n] = '\0';
	if (from_hex(hex, sk, crypto_sign_SECRETKEYBYTES) != crypto_sign_SECRETKEYBYTES)
	{
		sodium_memzero(hex, sizeof(hex));
		die("key file \"%s\" does not hold an Ed25519 secret key", path);
	}
	sodium_memzero(hex, sizeof(hex));
}

static PGconn *
connect_db(const char *dsn)
{
	PGconn	   *conn;

	if (dsn == NULL)
		die("%s", "a connection string is required (--dsn DSN)");
	conn = PQconnectdb(dsn);
	if (PQstatus(conn) != CONNECTION_OK)
		die("could not connect: %s", PQerrorMessage(conn));
	return conn;
}

/* Run a parameterised statement; on error print the server's message and exit */
static PGresult *
run(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
	PGresult   *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);

	if (PQresultStatus(res) != PGRES_TUPLES_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		fprintf(stderr, "%s: %s%s%s", progname, state ? state : "", state ? ": " : "",
				PQresultErrorMessage(res));
		PQclear(res);
		PQfinish(conn);
		exit(1);
	}
	return res;
}

/* Sign a challenge in bytea text form; the signature in bytea text form */
static char *
sign_challenge(const unsigned char *sk, const char *challenge_text)
{
	unsigned char challenge[1024];
	unsigned char sig[crypto_sign_BYTES];
	char	   *out = malloc(crypto_sign_BYTES * 2 + 3);
	long		len = from_hex(challenge_text, challenge, sizeof(challenge));

	if (len <= 0)
		die("%s", "the challenge is not hex (\\x...)");
	crypto_sign_detached(sig, NULL, challenge, (unsigned long long) len, sk);
	out[0] = '\\';
	out[1] = 'x';
	sodium_bin2hex(out + 2, crypto_sign_BYTES * 2 + 1, sig, sizeof(sig));
	return out;
}

static void
print_rows(PGresult *res)
{
	int			r;
	int			c;

	for (r = 0; r < PQntuples(res); r++)
	{
		for (c = 0; c < PQnfields(res); c++)
			printf("%s%s", c ? "\t" : "", PQgetisnull(res, r, c) ? "" : PQgetvalue(res, r, c));
		putchar('\n');
	}
}

int
main(int argc, char **argv)
{
	static struct option long_options[] = {
		{"dsn", required_argument, NULL, 'd'},
		{"key", required_argument, NULL, 'k'},
		{"label", required_argument, NULL, 'l'},
		{"device", required_argument, NULL, 'D'},
		{"principal", required_argument, NULL, 'p'},
		{"valid-for", required_argument, NULL, 'v'},
		{"command", required_argument, NULL, 'c'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	const char *command;
	const char *dsn = NULL;
	const char *keyfile = NULL;
	const char *label = NULL;
	const char *device = NULL;
	const char *principal = NULL;
	const char *valid_for = "1 hour";
	const char **sql = calloc(argc, sizeof(char *));
	int			nsql = 0;
	int			opt;
	unsigned char sk[crypto_sign_SECRETKEYBYTES];

	if (sodium_init() < 0)
		die("%s", "could not initialize libsodium");
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
	{
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	command = argv[1];
	optind = 2;
	while ((opt = getopt_long(argc, argv, "d:k:l:D:p:v:c:h", long_options, NULL)) != -1)
	{
		switch (opt)
		{
			case 'd': dsn = optarg; break;
			case 'k': keyfile = optarg; break;
			case 'l': label = optarg; break;
			case 'D': device = optarg; break;
			case 'p': principal = optarg; break;
			case 'v': valid_for = optarg; break;
			case 'c': sql[nsql++] = optarg; break;
			case 'h': usage(stdout); return 0;
			default: usage(stderr); return 2;
		}
	}

	if (strcmp(command, "keygen") == 0)
	{
		if (optind >= argc && keyfile == NULL)
		{
			usage(stderr);
			return 2;
		}
		keygen(keyfile ? keyfile : argv[optind]);
		return 0;
	}
	if (strcmp(command, "pubkey") == 0)
	{
		read_key(keyfile ? keyfile : (optind < argc ? argv[optind] : NULL), sk);
		print_hex(sk + crypto_sign_SECRETKEYBYTES - crypto_sign_PUBLICKEYBYTES, crypto_sign_PUBLICKEYBYTES);
		sodium_memzero(sk, sizeof(sk));
		return 0;
	}
	if (strcmp(command, "sign") == 0)
	{
		char		buf[4096];
		const char *challenge;

		read_key(keyfile, sk);
		if (optind < argc)
			challenge = argv[optind];
		else
		{
			size_t		n = fread(buf, 1, sizeof(buf) - 1, stdin);

			buf[n] = '\0';
			challenge = buf;
		}
		printf("%s\n", sign_challenge(sk, challenge));
		sodium_memzero(sk, sizeof(sk));
		return 0;
	}
	if (strcmp(command, "enroll") == 0)
	{
		PGconn	   *conn;
		PGresult   *res;
		char		pk[crypto_sign_PUBLICKEYBYTES * 2 + 3];
		const char *params[3];

		if (optind >= argc)
		{
			usage(stderr);
			return 2;
		}
		read_key(keyfile, sk);
		pk[0] = '\\';
		pk[1] = 'x';
		sodium_bin2hex(pk + 2, sizeof(pk) - 2, sk + crypto_sign_SECRETKEYBYTES - crypto_sign_PUBLICKEYBYTES,
					   crypto_sign_PUBLICKEYBYTES);
		sodium_memzero(sk, sizeof(sk));
		conn = connect_db(dsn);
		params[0] = argv[optind];
		params[1] = label ? label : "crmguard-device";
		params[2] = pk;
		res = run(conn, "SELECT crmguard.enroll_device($1, $2, $3::bytea)", 3, params);
		print_rows(res);
		PQclear(res);
		PQfinish(conn);
		return 0;
	}
	if (strcmp(command, "attest") == 0 || strcmp(command, "token") == 0)
	{
		bool		token = strcmp(command, "token") == 0;
		PGconn	   *conn;
		PGresult   *res;
		char	   *signature;
		const char *params[4];
		int			i;

		if (device == NULL || (token && principal == NULL))
		{
			usage(stderr);
			return 2;
		}
		read_key(keyfile, sk);
		conn = connect_db(dsn);
		params[0] = principal;
		res = token ? run(conn, "SELECT crmguard.device_challenge($1)", 1, params)
			: run(conn, "SELECT crmguard.device_challenge()", 0, NULL);
		signature = sign_challenge(sk, PQgetvalue(res, 0, 0));
		sodium_memzero(sk, sizeof(sk));
		PQclear(res);
		if (token)
		{
			params[0] = principal;
			params[1] = valid_for;
			params[2] = device;
			params[3] = signature;
			res = run(conn, "SELECT crmguard.issue_token($1, $2::interval, $3::bigint, $4::bytea)", 4, params);
			print_rows(res);
			PQclear(res);
		}
		else
		{
			params[0] = device;
			params[1] = signature;
			PQclear(run(conn, "SELECT crmguard.attest_device($1::bigint, $2::bytea)", 2, params));
			for (i = 0; i < nsql; i++)
			{
				res = run(conn, sql[i], 0, NULL);
				print_rows(res);
				PQclear(res);
			}
		}
		PQfinish(conn);
		return 0;
	}
	fprintf(stderr, "%s: unknown command \"%s\"\n", progname, command);
	usage(stderr);
	return 2;
}
