/*-------------------------------------------------------------------------
 *
 * src/earnings.c
 *		Seller earnings: clearance, balances and withdrawals (SPEC
 *		section 12).  PLACEHOLDER: the entry points exist so that the 1.2
 *		scripts install; each refuses until it is written.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "fmgr.h"

#include "engine.h"

PG_FUNCTION_INFO_V1(milestones_seller_balance);
PG_FUNCTION_INFO_V1(milestones_request_withdrawal);
PG_FUNCTION_INFO_V1(milestones_record_withdrawal);
PG_FUNCTION_INFO_V1(milestones_hold_clearance);
PG_FUNCTION_INFO_V1(milestones_release_clearance);
PG_FUNCTION_INFO_V1(milestones_clear_earnings);
PG_FUNCTION_INFO_V1(milestones_guard_seller);
PG_FUNCTION_INFO_V1(milestones_check_seller);

/* NotYet refuses a function that is not written yet. */
static void
NotYet(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s is not implemented yet", what)));
}

/*
 * EarningsCredit records a confirmed-mode order's payout net as the
 * seller's pending earning (called by the engine inside the order action
 * that ends the order, under its lock).
 */
void
EarningsCredit(EngineOrder *o, Numeric net, TimestampTz ended_at)
{
}

Datum
milestones_seller_balance(PG_FUNCTION_ARGS)
{
	NotYet("seller_balance");
	PG_RETURN_NULL();
}

Datum
milestones_request_withdrawal(PG_FUNCTION_ARGS)
{
	NotYet("request_withdrawal");
	PG_RETURN_NULL();
}

Datum
milestones_record_withdrawal(PG_FUNCTION_ARGS)
{
	NotYet("record_withdrawal");
	PG_RETURN_NULL();
}

Datum
milestones_hold_clearance(PG_FUNCTION_ARGS)
{
	NotYet("hold_clearance");
	PG_RETURN_NULL();
}

Datum
milestones_release_clearance(PG_FUNCTION_ARGS)
{
	NotYet("release_clearance");
	PG_RETURN_NULL();
}

Datum
milestones_clear_earnings(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(0);
}

Datum
milestones_guard_seller(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		return PointerGetDatum(trigdata->tg_newtuple);
	return PointerGetDatum(trigdata->tg_trigtuple);
}

Datum
milestones_check_seller(PG_FUNCTION_ARGS)
{
	return PointerGetDatum(NULL);
}
