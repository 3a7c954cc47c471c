/*-------------------------------------------------------------------------
 *
 * src/milestones.c
 *		Module entry point of the milestones extension: the settings that
 *		live in postgresql.conf (GUCs) and the clock every rule reads.
 *
 * The business settings (minimum total, response window, fee rate ...)
 * live in the milestones.settings table so that they travel with pg_dump.
 * Only the test clock is a GUC: milestones.fake_now lets a superuser move
 * the extension's notion of "now" to check deadlines exactly.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "milestones.h"

PG_MODULE_MAGIC;

PGDLLEXPORT void _PG_init(void);

PG_FUNCTION_INFO_V1(milestones_now);

/* Raw text of milestones.fake_now; empty means "use the real clock". */
static char *fake_now_text = NULL;

/* Parsed value of milestones.fake_now, valid when fake_now_set is true. */
static TimestampTz fake_now_value = 0;
static bool fake_now_set = false;

/*
 * ParseFakeNow parses a candidate value of milestones.fake_now without
 * raising an error, so that a bad value is refused by SET rather than
 * surfacing later inside a business function.
 */
static bool
ParseFakeNow(const char *text, TimestampTz *result)
{
	char		workbuf[MAXDATELEN + MAXDATEFIELDS];
	char	   *field[MAXDATEFIELDS];
	int			ftype[MAXDATEFIELDS];
	int			nf;
	int			dtype;
	int			tz = 0;
	struct pg_tm tt;
	fsec_t		fsec;

	if (strlen(text) >= MAXDATELEN)
		return false;
	if (ParseDateTime(text, workbuf, sizeof(workbuf), field, ftype,
					  MAXDATEFIELDS, &nf) != 0)
		return false;
	if (DecodeDateTime(field, ftype, nf, &dtype, &tt, &fsec, &tz) != 0)
		return false;
	if (dtype != DTK_DATE)
		return false;			/* 'infinity', 'epoch' and the like */
	if (tm2timestamp(&tt, fsec, &tz, result) != 0)
		return false;
	return !TIMESTAMP_NOT_FINITE(*result);
}

/*
 * check_fake_now is the GUC check hook: it accepts an empty string (real
 * clock) or a finite timestamptz, and refuses anything else at SET time.
 */
static bool
check_fake_now(char **newval, void **extra, GucSource source)
{
	TimestampTz ts;
	TimestampTz *stored;

	if (*newval == NULL || (*newval)[0] == '\0')
	{
		*extra = NULL;
		return true;
	}
	if (!ParseFakeNow(*newval, &ts))
	{
		GUC_check_errdetail("milestones.fake_now must be empty or a finite timestamp with time zone.");
		return false;
	}
	/* GUC extra data is malloc()ed: the GUC machinery free()s it. */
	stored = (TimestampTz *) malloc(sizeof(TimestampTz));
	if (stored == NULL)
		return false;
	*stored = ts;
	*extra = stored;
	return true;
}

/* assign_fake_now installs the value the check hook parsed. */
static void
assign_fake_now(const char *newval, void *extra)
{
	if (extra == NULL)
	{
		fake_now_set = false;
		fake_now_value = 0;
	}
	else
	{
		fake_now_set = true;
		fake_now_value = *((TimestampTz *) extra);
	}
}

/*
 * _PG_init defines milestones.fake_now.  It is PGC_SUSET: moving the clock
 * could expire orders early or reopen closed windows, so only a superuser
 * may set it.
 */
void
_PG_init(void)
{
	DefineCustomStringVariable("milestones.fake_now",
							   "Replaces the clock of the milestones extension (tests only).",
							   "Empty means the real transaction timestamp. Superuser only.",
							   &fake_now_text,
							   "",
							   PGC_SUSET,
							   0,
							   check_fake_now,
							   assign_fake_now,
							   NULL);
	RelayInit();
	MarkGUCPrefixReserved("milestones");
	CheckInit();
}

/*
 * MilestonesNow returns the extension's clock: the transaction start time,
 * or milestones.fake_now when a superuser has set it.
 */
TimestampTz
MilestonesNow(void)
{
	if (fake_now_set)
		return fake_now_value;
	return GetCurrentTransactionStartTimestamp();
}

/* milestones_now is SQL milestones.now(). */
Datum
milestones_now(PG_FUNCTION_ARGS)
{
	PG_RETURN_TIMESTAMPTZ(MilestonesNow());
}
