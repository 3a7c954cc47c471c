/*-------------------------------------------------------------------------
 *
 * src/payout.c
 *		Payout arithmetic: what the seller earns for an order.
 *
 * gross = sum of the order's completed milestones
 * fee   = gross * fee rate captured on the order, rounded half-up to cents
 * net   = gross - fee
 *
 * Everything is numeric; nothing passes through floating point.  The same
 * function answers "what has this running order earned so far" and records
 * the payout when the order ends (LedgerSettle in ledger.c), so the two can never
 * disagree.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/numeric.h"

#include "milestones.h"

PG_FUNCTION_INFO_V1(milestones_payout);
PG_FUNCTION_INFO_V1(milestones_fee);

static SPIPlanPtr payout_plan = NULL;

/* The columns payout()'s statement reads (columns.c). */
static const ColumnSpec payout_order_columns[2] =
{
	{"currency", TEXTOID, true}, {"fee_rate", NUMERICOID, true}
};
static const ColumnSpec payout_amount_column = {"amount", NUMERICOID, true};

/*
 * ComputeFee returns gross * rate rounded half-up to two decimals.
 * numeric_round rounds halves away from zero, which is half-up for the
 * non-negative amounts a payout has.
 */
static Numeric
ComputeFee(Numeric gross, Numeric rate)
{
	Datum		product = DirectFunctionCall2(numeric_mul,
											  NumericGetDatum(gross),
											  NumericGetDatum(rate));

	return DatumGetNumeric(DirectFunctionCall2(numeric_round, product,
											   Int32GetDatum(2)));
}

/*
 * CheckRate refuses a fee rate outside [0, 1): a rate of 1 would pay the
 * seller nothing, and NaN would poison every sum.
 */
static void
CheckRate(Numeric rate)
{
	Numeric		zero = int64_to_numeric(0);
	Numeric		one = int64_to_numeric(1);

	if (numeric_is_nan(rate) || numeric_is_inf(rate) ||
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(rate),
										  NumericGetDatum(zero))) < 0 ||
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(rate),
										  NumericGetDatum(one))) >= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("fee rate must be at least 0 and below 1"),
				 errdetail("The rate is %s.",
						   DatumGetCString(DirectFunctionCall1(numeric_out,
															   NumericGetDatum(rate))))));
}

/*
 * milestones_fee is SQL milestones._fee(gross, rate): the rounding rule on
 * its own, for check_invariants and for tests of the arithmetic.
 */
Datum
milestones_fee(PG_FUNCTION_ARGS)
{
	Numeric		gross;
	Numeric		rate;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gross and rate must not be NULL"),
				 errdetail("The %s argument was NULL.", PG_ARGISNULL(0) ? "gross" : "rate")));
	gross = PG_GETARG_NUMERIC(0);
	rate = PG_GETARG_NUMERIC(1);
	if (numeric_is_nan(gross) || numeric_is_inf(gross))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("gross must be a finite amount"),
				 errdetail("The gross is %s.",
						   DatumGetCString(DirectFunctionCall1(numeric_out,
															   NumericGetDatum(gross))))));
	CheckRate(rate);
	PG_RETURN_NUMERIC(ComputeFee(gross, rate));
}

/*
 * milestones_payout is SQL milestones.payout(order_id): gross, fee, net and
 * currency of the order's completed milestones.
 */
Datum
milestones_payout(PG_FUNCTION_ARGS)
{
	int64		order_id;
	TupleDesc	tupdesc;
	Datum		args[1];
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	bool		isnull;
	int			ret;
	Numeric		gross;
	Numeric		rate;
	Numeric		fee;
	char	   *currency;
	HeapTuple	result;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("order_id must not be NULL"),
				 errdetail("The argument order_id was NULL."),
				 errhint("Pass the id create_offer returned.")));
	order_id = PG_GETARG_INT64(0);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "milestones.payout: return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "milestones.payout: SPI_connect failed");
	if (payout_plan == NULL)
	{
		Oid			argtypes[1] = {INT8OID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("SELECT o.currency, o.fee_rate,"
						   " COALESCE((SELECT pg_catalog.sum(m.amount)"
						   "   FROM milestones.order_milestones m"
						   "  WHERE m.order_id OPERATOR(pg_catalog.=) o.order_id"
						   "    AND m.state OPERATOR(pg_catalog.=) 'completed'),"
						   "  0)"
						   " FROM milestones.orders o"
						   " WHERE o.order_id OPERATOR(pg_catalog.=) $1",
						   1, argtypes);
		if (plan == NULL)
			elog(ERROR, "milestones.payout: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "milestones.payout: SPI_keepplan failed");
		payout_plan = plan;
	}

	args[0] = Int64GetDatum(order_id);
	ret = SPI_execute_plan(payout_plan, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "milestones.payout: query failed: %s", SPI_result_code_string(ret));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("order " INT64_FORMAT " does not exist", order_id),
				 errdetail("No milestone order has id " INT64_FORMAT ".", order_id)));

	/*
	 * The kept plan is planned again after ALTER TABLE: a retyped column
	 * would arrive as its new type (a sum of another type too: the
	 * COALESCE's 0 adopts the sum's type).
	 */
	ColumnsCheckResult(SPI_tuptable, 1, 1, "orders", payout_order_columns, 2);
	ColumnsCheckResult(SPI_tuptable, 1, 3, "order_milestones", &payout_amount_column, 1);
	currency = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	rate = DatumGetNumeric(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 2, &isnull));
	gross = DatumGetNumeric(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 3, &isnull));

	/* Copy what we keep out of SPI memory before SPI_finish frees it. */
	gross = DatumGetNumeric(SPI_datumTransfer(NumericGetDatum(gross), false, -1));
	rate = DatumGetNumeric(SPI_datumTransfer(NumericGetDatum(rate), false, -1));
	currency = SPI_palloc(strlen(currency) + 1);
	strcpy(currency, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();

	CheckRate(rate);
	fee = ComputeFee(gross, rate);
	/* Two decimals for every money column, whatever the inputs' scale. */
	values[0] = DirectFunctionCall2(numeric_round, NumericGetDatum(gross), Int32GetDatum(2));
	values[1] = NumericGetDatum(fee);
	values[2] = DirectFunctionCall2(numeric_round,
									DirectFunctionCall2(numeric_sub,
														NumericGetDatum(gross),
														NumericGetDatum(fee)),
									Int32GetDatum(2));
	values[3] = CStringGetTextDatum(currency);
	result = heap_form_tuple(tupdesc, values, nulls);
	PG_RETURN_DATUM(HeapTupleGetDatum(result));
}

/*
 * PayoutAmounts is payout()'s arithmetic for the engine, which has the
 * completed milestones' sum in hand: gross rounded to cents, the fee at
 * the order's rate and the net, exactly as milestones.payout() returns
 * them.
 */
void
PayoutAmounts(Numeric gross_raw, Numeric rate, Numeric *gross, Numeric *fee, Numeric *net)
{
	CheckRate(rate);
	*fee = ComputeFee(gross_raw, rate);
	*gross = DatumGetNumeric(DirectFunctionCall2(numeric_round, NumericGetDatum(gross_raw),
												 Int32GetDatum(2)));
	*net = DatumGetNumeric(DirectFunctionCall2(numeric_round,
											   DirectFunctionCall2(numeric_sub,
																   NumericGetDatum(gross_raw),
																   NumericGetDatum(*fee)),
											   Int32GetDatum(2)));
}
