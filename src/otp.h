/*
 * otp.h
 *		What the OTP modules share: the counters in shared memory
 *		(otp_shmem.c) used by the guard and the SQL functions (otp.c).
 */
#ifndef CRMGUARD_OTP_H
#define CRMGUARD_OTP_H

#include "datatype/timestamp.h"

typedef enum OtpAttemptResult
{
	OTP_ATTEMPT_ALLOWED,
	OTP_ATTEMPT_LOCKED,
	OTP_ATTEMPT_UNKNOWN
} OtpAttemptResult;

typedef enum OtpRateResult
{
	OTP_RATE_OK,
	OTP_RATE_ROW,				/* too many challenges for the row */
	OTP_RATE_PRINCIPAL,			/* too many challenges by the principal */
	OTP_RATE_FULL				/* no room to count: refused, fails closed */
} OtpRateResult;

extern void otp_attempts_register(int64 challenge, int64 principal, int max_attempts,
								  TimestampTz expires_at, bool undo_on_abort);
extern OtpAttemptResult otp_attempts_take(int64 challenge, int *used, int *max);
extern void otp_attempts_refund(int64 challenge);
extern void otp_attempts_release_at_commit(int64 challenge);
extern void otp_attempts_forget(int64 challenge);
extern bool otp_attempts_get(int64 challenge, int *attempts, bool *locked);
extern OtpRateResult otp_rate_take(int64 rule, int64 principal, const char *row_key,
								   int per_row, int per_principal, const Interval *window);

#endif							/* CRMGUARD_OTP_H */
