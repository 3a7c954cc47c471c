/*-------------------------------------------------------------------------
 *
 * src/payments.c
 *		Payments confirmed by the provider (SPEC section 11) and the
 *		refunds it executes (section 12): record_charge, retry_charge,
 *		record_refund, retry_refund, and the charge steps the order actions
 *		share.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"

#include "engine.h"

PG_FUNCTION_INFO_V1(milestones_record_charge);
PG_FUNCTION_INFO_V1(milestones_retry_charge);
PG_FUNCTION_INFO_V1(milestones_record_refund);
PG_FUNCTION_INFO_V1(milestones_retry_refund);

Datum
milestones_record_charge(PG_FUNCTION_ARGS)
{
	ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED), errmsg("record_charge is not implemented yet")));
	PG_RETURN_NULL();
}

Datum
milestones_retry_charge(PG_FUNCTION_ARGS)
{
	ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED), errmsg("retry_charge is not implemented yet")));
	PG_RETURN_NULL();
}

Datum
milestones_record_refund(PG_FUNCTION_ARGS)
{
	ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED), errmsg("record_refund is not implemented yet")));
	PG_RETURN_NULL();
}

Datum
milestones_retry_refund(PG_FUNCTION_ARGS)
{
	ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED), errmsg("retry_refund is not implemented yet")));
	PG_RETURN_NULL();
}
