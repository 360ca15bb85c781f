/*
 * crypto.c
 *		The server key: 32 random bytes in a file of the data directory,
 *		created on first use with mode 0600, never returned by any function.
 *		Each purpose (tokens, audit chain, OTP hashes) gets its own subkey.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "miscadmin.h"
#include "storage/fd.h"

#include "crmguard.h"

static unsigned char *server_key = NULL;

void
cg_crypto_init(void)
{
	if (sodium_init() < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not initialize libsodium")));
}

/* Write a new key under a temporary name, then link it into place */
static void
create_key_file(const char *path)
{
	unsigned char key[CG_KEY_BYTES];
	char		tmp[MAXPGPATH];
	int			fd;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, MyProcPid);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | PG_BINARY, S_IRUSR | S_IWUSR);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create key file \"%s\": %m", tmp)));
	randombytes_buf(key, sizeof(key));
	if (write(fd, key, sizeof(key)) != sizeof(key) || pg_fsync(fd) != 0)
	{
		int			save_errno = errno;

		sodium_memzero(key, sizeof(key));
		close(fd);
		unlink(tmp);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write key file \"%s\": %m", tmp)));
	}
	sodium_memzero(key, sizeof(key));
	close(fd);

	/* link() fails if another backend won the race: then use its key */
	if (link(tmp, path) != 0 && errno != EEXIST)
	{
		int			save_errno = errno;

		unlink(tmp);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create key file \"%s\": %m", path)));
	}
	unlink(tmp);
}

/* Load the key once per process, creating the file on first use */
static const unsigned char *
server_key_bytes(void)
{
	const char *path = cg_key_file;
	struct stat st;
	int			fd;

	if (server_key)
		return server_key;

	fd = open(path, O_RDONLY | PG_BINARY, 0);
	if (fd < 0 && errno == ENOENT)
	{
		create_key_file(path);
		fd = open(path, O_RDONLY | PG_BINARY, 0);
	}
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open key file \"%s\": %m", path)));

	if (fstat(fd, &st) != 0 || st.st_size != CG_KEY_BYTES)
	{
		close(fd);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("key file \"%s\" must hold exactly %d bytes", path, CG_KEY_BYTES)));
	}
	/*
	 * As for the data files: readable by the server's user only, or also by
	 * its group when the data directory allows group access (initdb -g), as
	 * pg_basebackup then copies the key to a standby with mode 0640.
	 */
	if ((st.st_mode & (S_IRWXO | S_IWGRP | S_IXGRP)) != 0 ||
		((st.st_mode & S_IRGRP) != 0 && (data_directory_mode & S_IRGRP) == 0))
	{
		close(fd);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("key file \"%s\" has group or world access", path),
				 errdetail("The file must be readable only by the server's operating system user%s.",
						   (data_directory_mode & S_IRGRP) ? " and group" : ""),
				 errhint("Run chmod 0600 on the file.")));
	}

	server_key = sodium_malloc(CG_KEY_BYTES);
	if (server_key == NULL)
	{
		close(fd);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	}
	if (read(fd, server_key, CG_KEY_BYTES) != CG_KEY_BYTES)
	{
		int			save_errno = errno;

		close(fd);
		sodium_free(server_key);
		server_key = NULL;
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read key file \"%s\": %m", path)));
	}
	close(fd);
	sodium_mprotect_readonly(server_key);
	return server_key;
}

/* Derive the subkey of one purpose, so no two uses share key material */
void
cg_subkey(CgKeyPurpose purpose, unsigned char *out)
{
	crypto_kdf_derive_from_key(out, CG_KEY_BYTES, (uint64_t) purpose,
							   "crmguard", server_key_bytes());
}

/* Big-endian integers in signed and MAC'd byte strings (tokens, device challenges) */
void
cg_put_uint(unsigned char *p, uint64 v, int bytes)
{
	int			i;

	for (i = bytes - 1; i >= 0; i--)
	{
		p[i] = (unsigned char) (v & 0xff);
		v >>= 8;
	}
}

uint64
cg_get_uint(const unsigned char *p, int bytes)
{
	uint64		v = 0;
	int			i;

	for (i = 0; i < bytes; i++)
		v = (v << 8) | p[i];
	return v;
}
