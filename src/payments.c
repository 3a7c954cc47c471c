/*-------------------------------------------------------------------------
 *
 * src/payments.c
 *		Payments confirmed by the provider (SPEC section 11) and the refunds
 *		it executes (section 12): record_charge, retry_charge, record_refund,
 *		retry_refund, and the charge steps the order actions share.
 *
 * In confirmed mode the database requests a charge and the application's
 * payment worker reports the provider's answer.  A charge is one
 * milestone's amount; its milestone waits in state awaiting_payment, and
 * nothing is booked while the charge is only requested.  The worker's
 * report of a success books it (buyer -> escrow) and starts the milestone;
 * a failure leaves the milestone waiting for the buyer's retry.  At pay_by
 * the charge is void whether or not the sweep has run: every function
 * decides with milestones.now() after taking the order's lock, so a race
 * with the sweep ends the same whichever call took the lock first.  No
 * money the provider took is ever dropped: a success the order no longer
 * wants (the charge voided, or paid by another attempt) is booked and
 * refunded at once, with its own events and a refund row the worker then
 * executes.
 *
 * Every write goes through the guard triggers (src/guard.c) and is
 * declared to the commit check (src/check.c) as a fact of its order.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"

#include "engine.h"

PG_FUNCTION_INFO_V1(milestones_record_charge);
PG_FUNCTION_INFO_V1(milestones_retry_charge);
PG_FUNCTION_INFO_V1(milestones_record_refund);
PG_FUNCTION_INFO_V1(milestones_retry_refund);

#define ARG_INT64(n, isnull) ((isnull) = PG_ARGISNULL(n), (isnull) ? 0 : PG_GETARG_INT64(n))
#define ARG_TEXT(n) (PG_ARGISNULL(n) ? NULL : PG_GETARG_TEXT_PP(n))

/*
 * The columns of the payment tables the statements below return, each
 * checked (ColumnsCheckResult) before it is read by position: a column a
 * DBA retyped or emptied is refused (42804, 22004), never misread.
 */
static const ColumnSpec requested_charge_columns[] =
{
	{"charge_id", INT8OID, true}, {"pay_by", TIMESTAMPTZOID, true}
};
static const ColumnSpec paid_charge_columns[] =
{
	{"charge_id", INT8OID, true}, {"attempt", INT4OID, true}
};
static const ColumnSpec refund_id_column[] = {{"refund_id", INT8OID, true}};
static const ColumnSpec order_id_column[] = {{"order_id", INT8OID, true}};
static const ColumnSpec charge_read_columns[] =
{
	{"state", TEXTOID, true}, {"attempts", INT4OID, true}, {"position", INT2OID, true},
	{"amount", NUMERICOID, true}
};
static const ColumnSpec attempt_read_columns[] =
{
	{"state", TEXTOID, false}, {"wanted", BOOLOID, false}
};
static const ColumnSpec refund_read_columns[] =
{
	{"state", TEXTOID, true}, {"attempts", INT4OID, true}, {"position", INT2OID, true},
	{"amount", NUMERICOID, true}
};
static const ColumnSpec due_at_column[] = {{"due_at", TIMESTAMPTZOID, false}};

/*
 * PaymentsDeadlinePassed says whether the order's open charge is void by
 * now (pay_by reached), whether or not the sweep has run.
 */
bool
PaymentsDeadlinePassed(EngineOrder *o)
{
	return o->charge_id != 0 && MilestonesNow() >= o->pay_by;
}

/*
 * Declare a write of a charge, an attempt or a refund to the commit check:
 * table, insert or update, old and new state, position, and the row's id.
 */
static void
DeclarePayment(EngineOrder *o, FactTable table, bool insert, int from, int to, int position,
			   int64 id)
{
	WriteFact	f = StateFact(table, insert, from, to, position);

	if (!insert)
		StateAssertTransition(table == FACT_CHARGE ? &ChargeMachine :
							  table == FACT_ATTEMPT ? &AttemptMachine : &RefundMachine, from, to);
	f.txn = id;
	CheckDeclare(o->order_id, &f);
}

/*
 * request_plan: a new charge of milestone $20 ($15 its amount, $13 the
 * currency) with its first attempt, requested at $10 with pay_by =
 * $10 + settings.payment_window (in UTC, as due_at, so that a time zone's
 * daylight saving time cannot stretch it); the milestone moves to
 * awaiting_payment when $24; the event charge_requested with the charge's
 * id, attempt and pay_by added to the detail the engine built ($9).
 */
static EnginePlan request_plan = {
	"WITH c AS (INSERT INTO milestones.order_charges (order_id, position, amount, currency,"
	" requested_at, pay_by)"
	" VALUES ($1, $20, $15, $13, $10, pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', $10)"
	" OPERATOR(pg_catalog.+) (SELECT s.payment_window FROM milestones.settings s)))"
	" RETURNING charge_id, pay_by),"
	" a AS (INSERT INTO milestones.charge_attempts (charge_id, attempt, order_id, requested_at)"
	" SELECT c.charge_id, 1, $1, $10 FROM c RETURNING 1),"
	" m AS (UPDATE milestones.order_milestones SET state = 'awaiting_payment'"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $20 AND $24"
	" RETURNING 1),"
	" e AS (INSERT INTO " EVENT_COLUMNS
	" SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 OPERATOR(pg_catalog.||)"
	" pg_catalog.jsonb_build_object('charge_id', c.charge_id, 'attempt', 1, 'pay_by', c.pay_by),"
	" $10 FROM c RETURNING 1)"
	" SELECT c.charge_id, c.pay_by, (SELECT pg_catalog.count(*) FROM m) FROM c",
	ENGINE_WRITE_ARGS, ENGINE_WRITE_ARGTYPES
};

/*
 * PaymentsRequest requests the charge of milestone m (SPEC section 11):
 * a pending m moves to awaiting_payment; one already awaiting (its last
 * charge voided at pay_by, place_order again) keeps waiting under the new
 * charge.  Event charge_requested.  Nothing is booked.
 */
void
PaymentsRequest(EngineOrder *o, EngineMilestone *m, const char *actor_role, bool actor_null,
				int64 actor_id)
{
	EngineWrite w;
	StringInfoData detail;
	bool		move = m->state == MS_PENDING;
	bool		isnull;

	if (!move && m->state != MS_AWAITING_PAYMENT)
		elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " cannot await payment from %s",
			 m->position, o->order_id, StateName(&MilestoneMachine, m->state));
	initStringInfo(&detail);
	JsonAddNumeric(&detail, "amount", m->amount);
	JsonAddText(&detail, "currency", o->currency);
	JsonAddInt(&detail, "buyer_id", false, o->buyer_id);
	appendStringInfoChar(&detail, '}');
	EngineWriteInit(&w, o, m->position, "charge_requested", actor_role, actor_null, actor_id, NULL,
					o->state, MS_AWAITING_PAYMENT, detail.data);
	EngineWriteSet(&w, 13, CStringGetTextDatum(o->currency), false);
	EngineWriteSet(&w, 15, m->amount, false);
	EngineWriteSet(&w, WP_POS_A, Int16GetDatum((int16) m->position), false);
	EngineWriteSet(&w, WP_BOOL, BoolGetDatum(move), false);
	EngineWriteExec(&request_plan, &w);
	if (SPI_processed != 1 || EngineResultInt(3) != (move ? 1 : 0))
		elog(ERROR, "milestones engine: the charge of milestone %d of order " INT64_FORMAT " was not requested",
			 m->position, o->order_id);
	ColumnsCheckResult(SPI_tuptable, 1, 1, "order_charges", requested_charge_columns,
					   lengthof(requested_charge_columns));
	o->charge_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	o->pay_by = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	o->charge_attempts = 1;
	o->charge_state = PAY_REQUESTED;
	DeclarePayment(o, FACT_CHARGE, true, -1, PAY_REQUESTED, m->position, o->charge_id);
	DeclarePayment(o, FACT_ATTEMPT, true, -1, PAY_REQUESTED, 1, o->charge_id);
	if (move)
		EngineSetMilestone(o, m, MS_AWAITING_PAYMENT);
	o->awaiting = (int) (m - o->ms);
}

static EnginePlan void_plan = {
	"UPDATE milestones.order_charges SET state = 'voided', void_reason = $2, ended_at = $3"
	" WHERE charge_id OPERATOR(pg_catalog.=) $1"
	" AND state OPERATOR(pg_catalog.=) ANY ('{requested,failed}'::pg_catalog.text[])",
	3, {INT8OID, TEXTOID, TIMESTAMPTZOID}
};

/*
 * PaymentsVoid voids the order's open charge for reason (expired,
 * withdrawn, declined, stopped, cancelled, milestone_cancelled) at the time
 * at, with the event charge_voided; milestone_state is the state the
 * charge's milestone has after the caller's action (for the event).  The
 * caller moves the milestone.
 */
static void
VoidCharge(EngineOrder *o, const char *reason, TimestampTz at, int milestone_state,
		   const char *actor_role, bool actor_null, int64 actor_id, const char *agent)
{
	Datum		values[3];
	StringInfoData detail;
	EngineMilestone *m = &o->ms[o->awaiting];

	values[0] = Int64GetDatum(o->charge_id);
	values[1] = CStringGetTextDatum(reason);
	values[2] = TimestampTzGetDatum(at);
	EngineExec(&void_plan, values, NULL, SPI_OK_UPDATE, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: charge " INT64_FORMAT " of order " INT64_FORMAT " not voided",
			 o->charge_id, o->order_id);
	DeclarePayment(o, FACT_CHARGE, false, o->charge_state, PAY_VOIDED, m->position, o->charge_id);
	initStringInfo(&detail);
	JsonAddInt(&detail, "charge_id", false, o->charge_id);
	JsonAddText(&detail, "reason", reason);
	appendStringInfoChar(&detail, '}');
	EngineEvent(o, m->position, "charge_voided", actor_role, actor_null, actor_id, agent,
				milestone_state, detail.data);
	o->charge_id = 0;
	o->charge_state = -1;
}

/*
 * PaymentsVoid voids the open charge of the milestone awaiting payment
 * because the order ends or that milestone is cancelled (see VoidCharge);
 * the milestone is skipped or cancelled by the caller afterwards.
 */
void
PaymentsVoid(EngineOrder *o, const char *reason, TimestampTz at, const char *actor_role,
			 bool actor_null, int64 actor_id, const char *agent)
{
	if (o->charge_id == 0 || o->awaiting < 0)
		return;
	VoidCharge(o, reason, at, strcmp(reason, "milestone_cancelled") == 0 ? MS_CANCELLED : MS_SKIPPED,
			   actor_role, actor_null, actor_id, agent);
}

static EnginePlan unawait_plan = {
	"UPDATE milestones.order_milestones SET state = 'pending'"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $2"
	" AND state OPERATOR(pg_catalog.=) 'awaiting_payment'",
	2, {INT8OID, INT2OID}
};
static EnginePlan end_unpaid_plan = {
	"UPDATE milestones.orders SET state = 'completed', end_reason = $2, completed_at = $3"
	" WHERE order_id OPERATOR(pg_catalog.=) $1",
	3, {INT8OID, TEXTOID, TIMESTAMPTZOID}
};

/*
 * PaymentsEndOrder ends an active confirmed-mode order whose next milestone
 * awaits payment, without completing a milestone: the charge is voided,
 * that milestone and the pending ones are skipped, the order is completed
 * for reason at the time at, and the seller is paid what the completed
 * milestones earned (R7).  The buyer's stop (reason stopped) and the
 * payment window's end (unpaid, at pay_by) end it so.
 */
static void
PaymentsEndOrder(EngineOrder *o, const char *reason, TimestampTz at, const char *event,
				 const char *actor_role, bool actor_null, int64 actor_id)
{
	EngineMilestone *m = &o->ms[o->awaiting];
	int			position = m->position;
	Datum		values[3];
	int			skipped;
	StringInfoData detail;
	StringInfoData payout;

	VoidCharge(o, strcmp(reason, "unpaid") == 0 ? "expired" : reason, at, MS_SKIPPED,
			   actor_role, actor_null, actor_id, NULL);
	skipped = LedgerSkipPending(o);
	values[0] = Int64GetDatum(o->order_id);
	values[1] = CStringGetTextDatum(reason);
	values[2] = TimestampTzGetDatum(at);
	EngineExec(&end_unpaid_plan, values, NULL, SPI_OK_UPDATE, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " not completed", o->order_id);
	EngineSetOrder(o, ORDER_COMPLETED, true);
	EngineSetEnded(o, reason, NULL, at);
	initStringInfo(&detail);
	JsonAddInt(&detail, "skipped", false, skipped);
	initStringInfo(&payout);
	LedgerSettle(o, &payout);
	JsonAddKey(&detail, "payout");
	appendStringInfoString(&detail, payout.data);
	if (strcmp(reason, "unpaid") == 0)
		JsonAddTimestamp(&detail, "pay_by", at);
	appendStringInfoChar(&detail, '}');
	EngineEvent(o, position, event, actor_role, actor_null, actor_id, NULL, MS_SKIPPED, detail.data);
}

/*
 * PaymentsExpire does what the sweep does at a charge's pay_by (SPEC
 * section 11): the charge is voided (expired); for milestone 1 the
 * milestone goes back to pending and the order stays offered (the buyer
 * may place it again); for a later milestone the order is completed as
 * unpaid at completed_at = pay_by, the completed milestones paid, the later
 * ones skipped.  Every function that meets a charge past its pay_by does
 * the same first, so the outcome does not depend on the sweep's schedule.
 */
void
PaymentsExpire(EngineOrder *o, const char *actor_role)
{
	TimestampTz at = o->pay_by;

	if (o->charge_id == 0 || o->awaiting < 0)
		return;
	if (o->state == ORDER_OFFERED)
	{
		EngineMilestone *m = &o->ms[o->awaiting];
		Datum		values[2];

		VoidCharge(o, "expired", at, MS_PENDING, actor_role, true, 0, NULL);
		values[0] = Int64GetDatum(o->order_id);
		values[1] = Int16GetDatum((int16) m->position);
		EngineExec(&unawait_plan, values, NULL, SPI_OK_UPDATE, 0);
		if (SPI_processed != 1)
			elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " not back to pending",
				 m->position, o->order_id);
		EngineSetMilestone(o, m, MS_PENDING);
		o->awaiting = -1;
		return;
	}
	PaymentsEndOrder(o, "unpaid", at, "unpaid", actor_role, true, 0);
}

/*
 * PaymentsStop is the buyer's stop while the next milestone awaits payment
 * (its delivery was accepted; SPEC section 11): the charge is voided
 * (stopped), the order completed as stopped now.
 */
void
PaymentsStop(EngineOrder *o, int64 buyer_id)
{
	PaymentsEndOrder(o, "stopped", MilestonesNow(), "stopped", "buyer", false, buyer_id);
}

/*
 * PaymentsAwaitingError raises the 55000 of an action that needs a running
 * milestone while the order waits for a payment: deliver (the seller waits
 * for the money), and the buyer's answers.
 */
void
PaymentsAwaitingError(EngineOrder *o, const char *action)
{
	EngineMilestone *m = &o->ms[o->awaiting];

	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("%s is not allowed: milestone %d of order " INT64_FORMAT " awaits payment",
					action, m->position, o->order_id),
			 errdetail("Charge " INT64_FORMAT " (attempt %d) is %s; it must succeed by %s.",
					   o->charge_id, o->charge_attempts,
					   o->charge_id ? StateName(&ChargeMachine, o->charge_state) : "none",
					   EngineTimestampOut(o->charge_id == 0, o->pay_by)),
			 errhint("The milestone starts when the payment worker records the provider's success; after a failed attempt the buyer calls retry_charge().")));
	pg_unreachable();
}

static EnginePlan paid_charge_plan = {
	"SELECT c.charge_id, a.attempt FROM milestones.order_charges c"
	" JOIN milestones.charge_attempts a ON a.charge_id OPERATOR(pg_catalog.=) c.charge_id AND a.wanted"
	" WHERE c.order_id OPERATOR(pg_catalog.=) $1 AND c.position OPERATOR(pg_catalog.=) $2"
	" AND c.state OPERATOR(pg_catalog.=) 'succeeded'",
	2, {INT8OID, INT2OID}
};

static EnginePlan refund_insert_plan = {
	"INSERT INTO milestones.order_refunds (order_id, position, charge_id, charge_attempt, buyer_id,"
	" amount, currency, reason, requested_at, ledger_txn)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING refund_id",
	10, {INT8OID, INT2OID, INT8OID, INT4OID, INT8OID, NUMERICOID, TEXTOID, TEXTOID,
	TIMESTAMPTZOID, INT8OID}
};

/*
 * Refund books the refund of one success (escrow -> buyer, with its charge
 * and attempt), writes its refund row (requested: the payment worker sends
 * it) and the event refund_requested.  Returns the refund id.
 */
static int64
Refund(EngineOrder *o, int position, int milestone_state, int64 charge_id, int32 attempt,
	   Datum amount, const char *reason, const char *actor_role, bool actor_null, int64 actor_id,
	   const char *agent)
{
	int64		txn = LedgerPostCharge(o, position, "refund", amount, charge_id, attempt);
	Datum		values[10];
	bool		isnull;
	int64		refund_id;
	StringInfoData detail;

	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int16GetDatum((int16) position);
	values[2] = Int64GetDatum(charge_id);
	values[3] = Int32GetDatum(attempt);
	values[4] = Int64GetDatum(o->buyer_id);
	values[5] = amount;
	values[6] = CStringGetTextDatum(o->currency);
	values[7] = CStringGetTextDatum(reason);
	values[8] = TimestampTzGetDatum(MilestonesNow());
	values[9] = Int64GetDatum(txn);
	EngineExec(&refund_insert_plan, values, NULL, SPI_OK_INSERT_RETURNING, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: refund of charge " INT64_FORMAT " not written", charge_id);
	ColumnsCheckResult(SPI_tuptable, 1, 1, "order_refunds", refund_id_column, 1);
	refund_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	DeclarePayment(o, FACT_REFUND, true, -1, PAY_REQUESTED, position, refund_id);
	initStringInfo(&detail);
	JsonAddInt(&detail, "refund_id", false, refund_id);
	JsonAddInt(&detail, "attempt", false, 1);
	JsonAddNumeric(&detail, "amount", amount);
	JsonAddText(&detail, "currency", o->currency);
	JsonAddInt(&detail, "buyer_id", false, o->buyer_id);
	JsonAddInt(&detail, "charge_id", false, charge_id);
	JsonAddText(&detail, "reason", reason);
	appendStringInfoChar(&detail, '}');
	EngineEvent(o, position, "refund_requested", actor_role, actor_null, actor_id, agent,
				milestone_state, detail.data);
	return refund_id;
}

/*
 * PaymentsRefundMilestone refunds the paid charge of milestone m, which
 * support's cancel or cancel_milestone has just refunded (reason cancelled
 * or milestone_cancelled): the ledger books it with its charge and attempt,
 * and a refund row asks the payment worker to execute it.
 */
void
PaymentsRefundMilestone(EngineOrder *o, EngineMilestone *m, const char *reason, const char *agent)
{
	Datum		values[2];
	bool		isnull;
	int64		charge_id;
	int32		attempt;

	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int16GetDatum((int16) m->position);
	EngineExec(&paid_charge_plan, values, NULL, SPI_OK_SELECT, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " has %d paid charges",
			 m->position, o->order_id, (int) SPI_processed);
	ColumnsCheckResult(SPI_tuptable, 1, 1, "order_charges", paid_charge_columns,
					   lengthof(paid_charge_columns));
	charge_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	attempt = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	Refund(o, m->position, m->state, charge_id, attempt, m->amount, reason, "support", true, 0, agent);
}

/*-------------------------------------------------------------------------
 * record_charge
 *-------------------------------------------------------------------------
 */

/* CheckOutcome refuses (22023) an outcome other than succeeded or failed. */
static bool
CheckOutcome(text *outcome)
{
	char	   *s = text_to_cstring(outcome);

	if (strcmp(s, "succeeded") == 0)
		return true;
	if (strcmp(s, "failed") == 0)
		return false;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("outcome must be succeeded or failed"),
			 errdetail("Got %s.", EngineQuoteLiteral(s, 40)),
			 errhint("Report the provider's final answer; a payment still processing is reported when it settles.")));
	return false;
}

/*
 * CheckReportText refuses (22023) an empty or over-long provider_ref or
 * failure text, and a failure report without its failure text.
 */
static void
CheckReportText(text *provider_ref, text *failure, bool succeeded)
{
	if (provider_ref != NULL && EngineTextLength(provider_ref) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("provider_ref must have 1 to 255 characters"),
				 errdetail("provider_ref is empty."),
				 errhint("Pass NULL when the provider gave no reference.")));
	EngineCheckText(provider_ref == NULL, provider_ref, "provider_ref", 255, false);
	if (!succeeded)
		EngineNotNull(failure == NULL, "failure");
	if (failure != NULL && EngineTextLength(failure) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("failure must have 1 to 2000 characters"),
				 errdetail("failure is empty.")));
	EngineCheckText(failure == NULL, failure, "failure", 2000, false);
}

static EnginePlan charge_order_plan = {
	"SELECT c.order_id FROM milestones.order_charges c WHERE c.charge_id OPERATOR(pg_catalog.=) $1",
	1, {INT8OID}
};

/* The charge and one of its attempts, read under the order's lock. */
static EnginePlan charge_read_plan = {
	"SELECT c.state, c.attempts, c.position, c.amount, a.state, a.wanted"
	" FROM milestones.order_charges c LEFT JOIN milestones.charge_attempts a"
	" ON a.charge_id OPERATOR(pg_catalog.=) c.charge_id AND a.attempt OPERATOR(pg_catalog.=) $2"
	" WHERE c.charge_id OPERATOR(pg_catalog.=) $1",
	2, {INT8OID, INT4OID}
};

static EnginePlan charges_row_plan = {
	"SELECT * FROM milestones.charges c"
	" WHERE c.charge_id OPERATOR(pg_catalog.=) $1 AND c.attempt OPERATOR(pg_catalog.=) $2",
	2, {INT8OID, INT4OID}
};

static EnginePlan attempt_report_plan = {
	"UPDATE milestones.charge_attempts SET state = $3, reported_at = $4,"
	" provider_ref = COALESCE($5, provider_ref), failure = COALESCE($6, failure), wanted = $7"
	" WHERE charge_id OPERATOR(pg_catalog.=) $1 AND attempt OPERATOR(pg_catalog.=) $2",
	7, {INT8OID, INT4OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, BOOLOID}
};

static EnginePlan charge_state_plan = {
	"UPDATE milestones.order_charges SET state = $2,"
	" ended_at = CASE WHEN $2 OPERATOR(pg_catalog.=) 'succeeded' THEN $3 ELSE ended_at END,"
	" attempts = $4"
	" WHERE charge_id OPERATOR(pg_catalog.=) $1",
	4, {INT8OID, TEXTOID, TIMESTAMPTZOID, INT4OID}
};

static EnginePlan start_paid_plan = {
	"UPDATE milestones.order_milestones SET state = 'in_progress', started_at = $3,"
	" due_at = pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', $3)"
	" OPERATOR(pg_catalog.+) pg_catalog.make_interval(days => days))"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $2"
	" AND state OPERATOR(pg_catalog.=) 'awaiting_payment'"
	" RETURNING due_at",
	3, {INT8OID, INT2OID, TIMESTAMPTZOID}
};

static EnginePlan place_paid_plan = {
	"UPDATE milestones.orders SET state = 'active', placed_at = $2"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'offered'",
	2, {INT8OID, TIMESTAMPTZOID}
};

static EnginePlan attempt_add_plan = {
	"INSERT INTO milestones.charge_attempts (charge_id, attempt, order_id, requested_at)"
	" VALUES ($1, $2, $3, $4)",
	4, {INT8OID, INT4OID, INT8OID, TIMESTAMPTZOID}
};

/* SetAttempt records the provider's answer on an attempt. */
static void
SetAttempt(EngineOrder *o, int64 charge_id, int32 attempt, int from, bool succeeded,
		   text *provider_ref, text *failure, bool wanted)
{
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(charge_id);
	values[1] = Int32GetDatum(attempt);
	values[2] = CStringGetTextDatum(succeeded ? "succeeded" : "failed");
	values[3] = TimestampTzGetDatum(MilestonesNow());
	values[4] = PointerGetDatum(provider_ref);
	nulls[4] = provider_ref == NULL ? 'n' : ' ';
	values[5] = PointerGetDatum(failure);
	nulls[5] = failure == NULL ? 'n' : ' ';
	values[6] = BoolGetDatum(wanted);
	nulls[6] = succeeded ? ' ' : 'n';
	EngineExec(&attempt_report_plan, values, nulls, SPI_OK_UPDATE, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: attempt %d of charge " INT64_FORMAT " not updated", attempt, charge_id);
	DeclarePayment(o, FACT_ATTEMPT, false, from, succeeded ? PAY_SUCCEEDED : PAY_FAILED, attempt, charge_id);
}

/* SetCharge moves a charge to state to (attempts as given). */
static void
SetCharge(EngineOrder *o, int64 charge_id, int position, int from, int to, int32 attempts)
{
	Datum		values[4];

	values[0] = Int64GetDatum(charge_id);
	values[1] = CStringGetTextDatum(StateName(&ChargeMachine, to));
	values[2] = TimestampTzGetDatum(MilestonesNow());
	values[3] = Int32GetDatum(attempts);
	EngineExec(&charge_state_plan, values, NULL, SPI_OK_UPDATE, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: charge " INT64_FORMAT " not updated", charge_id);
	DeclarePayment(o, FACT_CHARGE, false, from, to, position, charge_id);
}

/* PaymentEvent appends an event of a charge or refund with its detail. */
static void
PaymentEvent(EngineOrder *o, int position, const char *event, const char *actor_role,
			 bool actor_null, int64 actor_id, const char *agent, StringInfo detail)
{
	EngineMilestone *m = NULL;
	int			i;

	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].position == position)
			m = &o->ms[i];
	appendStringInfoChar(detail, '}');
	EngineEvent(o, position, event, actor_role, actor_null, actor_id, agent,
				m ? m->state : -1, detail->data);
}

/*
 * Succeeded books a success reported for attempt of charge charge_id
 * (amount, milestone position): wanted, it pays the milestone, which
 * starts (milestone 1 places the order); not wanted, it is booked and
 * refunded at once.
 */
static void
Succeeded(EngineOrder *o, int64 charge_id, int32 attempt, int position, Datum amount,
		  int charge_state, int32 charge_attempts, int attempt_from, text *provider_ref)
{
	bool		wanted = charge_state == PAY_REQUESTED || charge_state == PAY_FAILED;
	bool		placed = false;
	StringInfoData detail;
	EngineMilestone *m = NULL;
	int			i;

	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].position == position)
			m = &o->ms[i];
	if (m == NULL)
		elog(ERROR, "milestones engine: charge " INT64_FORMAT " names no milestone of order " INT64_FORMAT,
			 charge_id, o->order_id);
	if (wanted && m->state != MS_AWAITING_PAYMENT)
		elog(ERROR, "milestones engine: open charge " INT64_FORMAT " of milestone %d, which is %s",
			 charge_id, position, StateName(&MilestoneMachine, m->state));

	/* The provider took the money: booked, whatever happens next. */
	LedgerPostCharge(o, position, "charge", amount, charge_id, attempt);
	SetAttempt(o, charge_id, attempt, attempt_from, true, provider_ref, NULL, wanted);
	if (wanted)
	{
		Datum		values[3];

		SetCharge(o, charge_id, position, charge_state, PAY_SUCCEEDED, charge_attempts);
		values[0] = Int64GetDatum(o->order_id);
		values[1] = Int16GetDatum((int16) position);
		values[2] = TimestampTzGetDatum(MilestonesNow());
		EngineExec(&start_paid_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
		if (SPI_processed != 1)
			elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " not started",
				 position, o->order_id);
		ColumnsCheckResult(SPI_tuptable, 1, 1, "order_milestones", due_at_column, 1);
		m->due_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
													  &m->due_at_null));
		EngineSetMilestone(o, m, MS_IN_PROGRESS);
		o->current = (int) (m - o->ms);
		o->awaiting = -1;
		o->charge_id = 0;
		o->charge_state = -1;
		if (o->state == ORDER_OFFERED)
		{
			values[1] = TimestampTzGetDatum(MilestonesNow());
			EngineExec(&place_paid_plan, values, NULL, SPI_OK_UPDATE, 0);
			if (SPI_processed != 1)
				elog(ERROR, "milestones engine: order " INT64_FORMAT " not placed", o->order_id);
			EngineSetOrder(o, ORDER_ACTIVE, true);
			o->placed_at = MilestonesNow();
			o->placed_at_null = false;
			placed = true;
		}
	}
	initStringInfo(&detail);
	JsonAddInt(&detail, "charge_id", false, charge_id);
	JsonAddInt(&detail, "attempt", false, attempt);
	JsonAddNumeric(&detail, "amount", amount);
	JsonAddText(&detail, "provider_ref", provider_ref ? text_to_cstring(provider_ref) : NULL);
	JsonAddBool(&detail, "wanted", wanted);
	PaymentEvent(o, position, "charge_succeeded", "payments", true, 0, NULL, &detail);
	if (placed)
	{
		/* Milestone 1 paid: the order is placed (the event 1.1 wrote at place_order). */
		initStringInfo(&detail);
		JsonAddNumeric(&detail, "charged", amount);
		JsonAddInt(&detail, "charge_id", false, charge_id);
		PaymentEvent(o, position, "placed", "payments", true, 0, NULL, &detail);
	}
	if (!wanted)
	{
		int64		refund_id = Refund(o, position, m->state, charge_id, attempt, amount, "late_success",
									   "payments", true, 0, NULL);

		o->late = o->late == (Datum) 0 ? amount : DirectFunctionCall2(numeric_add, o->late, amount);
		initStringInfo(&detail);
		JsonAddInt(&detail, "charge_id", false, charge_id);
		JsonAddInt(&detail, "attempt", false, attempt);
		JsonAddNumeric(&detail, "amount", amount);
		JsonAddInt(&detail, "refund_id", false, refund_id);
		PaymentEvent(o, position, "charge_refunded", "payments", true, 0, NULL, &detail);
	}
}

/*
 * milestones_record_charge is record_charge(charge_id, attempt, outcome,
 * provider_ref, failure): the payment worker reports the provider's answer
 * to one attempt of a charge (SPEC section 11).  Idempotent per (charge,
 * attempt): the same report again changes nothing and returns the same
 * row; failed after succeeded fails 55000; succeeded after failed is
 * accepted (asynchronous methods settle late).  Returns the attempt's
 * charges row.
 */
Datum
milestones_record_charge(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull;
	int64		charge_id = ARG_INT64(0, idnull);
	bool		attemptnull = PG_ARGISNULL(1);
	int32		attempt = attemptnull ? 0 : PG_GETARG_INT32(1);
	text	   *outcome = ARG_TEXT(2);
	text	   *provider_ref = ARG_TEXT(3);
	text	   *failure = ARG_TEXT(4);
	bool		succeeded;
	EngineOrder *o = palloc0(sizeof(EngineOrder));
	Datum		values[2];
	bool		isnull;
	int64		order_id;
	int			charge_state;
	int32		charge_attempts;
	int			position;
	Datum		amount;
	int			attempt_state;
	Datum		result;

	EngineRefuseOnStandby("record_charge");
	if (idnull || charge_id <= 0)
		EngineCheckId(idnull, charge_id, "charge_id");
	EngineNotNull(attemptnull, "attempt");
	EngineNotNull(outcome == NULL, "outcome");
	succeeded = CheckOutcome(outcome);
	CheckReportText(provider_ref, failure, succeeded);

	EngineConnect();
	values[0] = Int64GetDatum(charge_id);
	values[1] = Int32GetDatum(attempt);
	EngineExec(&charge_order_plan, values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("charge " INT64_FORMAT " does not exist", charge_id),
				 errdetail("No charge has id " INT64_FORMAT ".", charge_id),
				 errhint("Report the charge_id of the charge_requested event.")));
	ColumnsCheckResult(SPI_tuptable, 1, 1, "order_charges", order_id_column, 1);
	order_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	EngineLockOrder(o, order_id, 0, "payments");

	/* The charge and the attempt as the lock's holder left them. */
	EngineExec(&charge_read_plan, values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: charge " INT64_FORMAT " vanished", charge_id);
	ColumnsCheckResult(SPI_tuptable, 1, 1, "order_charges", charge_read_columns,
					   lengthof(charge_read_columns));
	ColumnsCheckResult(SPI_tuptable, 1, 5, "charge_attempts", attempt_read_columns,
					   lengthof(attempt_read_columns));
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *state = SPI_getvalue(tup, desc, 1);

		charge_state = StateCode(&ChargeMachine, state);
		charge_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		position = DatumGetInt16(SPI_getbinval(tup, desc, 3, &isnull));
		amount = datumCopy(SPI_getbinval(tup, desc, 4, &isnull), false, -1);
		state = SPI_getvalue(tup, desc, 5);
		attempt_state = state ? StateCode(&AttemptMachine, state) : -1;
		if (charge_state < 0 || (state != NULL && attempt_state < 0))
			elog(ERROR, "milestones engine: charge " INT64_FORMAT " has an unknown state", charge_id);
	}
	if (attempt_state < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("attempt %d of charge " INT64_FORMAT " was never made", attempt, charge_id),
				 errdetail("Charge " INT64_FORMAT " has attempts 1 to %d.", charge_id, charge_attempts),
				 errhint("Report the attempt of the charge_requested event (the provider's key is charge-<charge_id>-<attempt>).")));

	if ((attempt_state == PAY_SUCCEEDED) == succeeded &&
		(succeeded || attempt_state == PAY_FAILED))
		;						/* the same report again: nothing changes */
	else if (attempt_state == PAY_SUCCEEDED && !succeeded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("record_charge is not allowed: attempt %d of charge " INT64_FORMAT " succeeded already",
						attempt, charge_id),
				 errdetail("A success is final: the money was booked when it was reported."),
				 errhint("If the provider reversed the payment, support cancels the order with a reason.")));
	else
	{
		/* Where the pay_by of an open charge passed: as the sweep leaves it. */
		if (PaymentsDeadlinePassed(o))
		{
			bool		was_open = o->charge_id == charge_id;

			PaymentsExpire(o, "system");
			if (was_open)
				charge_state = PAY_VOIDED;
		}
		if (succeeded)
			Succeeded(o, charge_id, attempt, position, amount, charge_state, charge_attempts,
					  attempt_state, provider_ref);
		else
		{
			StringInfoData detail;

			SetAttempt(o, charge_id, attempt, attempt_state, false, NULL, failure, false);
			/* The charge fails with its current attempt while it is open. */
			if (charge_state == PAY_REQUESTED && attempt == charge_attempts)
			{
				SetCharge(o, charge_id, position, PAY_REQUESTED, PAY_FAILED, charge_attempts);
				o->charge_state = PAY_FAILED;
			}
			initStringInfo(&detail);
			JsonAddInt(&detail, "charge_id", false, charge_id);
			JsonAddInt(&detail, "attempt", false, attempt);
			JsonAddText(&detail, "failure", text_to_cstring(failure));
			PaymentEvent(o, position, "charge_failed", "payments", true, 0, NULL, &detail);
		}
	}

	EngineExec(&charges_row_plan, values, NULL, SPI_OK_SELECT, 1);
	result = EngineResultRow(fcinfo, caller);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*
 * milestones_retry_charge is retry_charge(order_id, buyer_id,
 * idempotency_key): after a failed attempt the buyer tries again; the
 * charge is requested again with attempt n+1, pay_by unchanged (SPEC
 * section 11).
 */
Datum
milestones_retry_charge(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull,
				buyernull;
	int64		order_id = ARG_INT64(0, idnull);
	int64		buyer_id = ARG_INT64(1, buyernull);
	text	   *key = ARG_TEXT(2);
	EngineOrder *o = palloc0(sizeof(EngineOrder));
	EngineMilestone *m;
	Datum		result;
	Datum		values[4];
	StringInfoData args;
	StringInfoData detail;

	EngineRefuseOnStandby("retry_charge");
	if (idnull || order_id <= 0)
		EngineCheckId(idnull, order_id, "order_id");
	if (buyernull || buyer_id <= 0)
		EngineCheckId(buyernull, buyer_id, "buyer_id");
	EngineConnect();
	initStringInfo(&args);
	JsonAddInt(&args, "order_id", false, order_id);
	JsonAddInt(&args, "buyer_id", false, buyer_id);
	appendStringInfoChar(&args, '}');
	if (EngineRetried(fcinfo, caller, key, "retry_charge", args.data, &result))
		PG_RETURN_DATUM(result);
	EngineLockOrder(o, order_id, buyer_id, "buyer");
	if (o->state != ORDER_OFFERED && o->state != ORDER_ACTIVE)
		EngineStateError(o, "retry_charge", "an order whose milestone awaits payment");
	if (o->charge_id == 0 || o->awaiting < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("retry_charge is not allowed: order " INT64_FORMAT " has no charge awaiting payment", order_id),
				 errdetail("Order " INT64_FORMAT " is %s in %s payment mode.", order_id,
						   StateName(&OrderMachine, o->state), o->confirmed ? "confirmed" : "recorded"),
				 errhint("A charge is requested by place_order or accept in confirmed payment mode.")));
	m = &o->ms[o->awaiting];
	if (PaymentsDeadlinePassed(o))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("retry_charge is not allowed: the payment window of order " INT64_FORMAT " has closed", order_id),
				 errdetail("Charge " INT64_FORMAT " of milestone %d had to be paid by %s.",
						   o->charge_id, m->position, EngineTimestampOut(false, o->pay_by)),
				 errhint("%s", o->state == ORDER_OFFERED ?
						 "The charge is void; the buyer may place the order again." :
						 "The order ends as unpaid; the completed milestones are paid to the seller.")));
	if (o->charge_state != PAY_FAILED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("retry_charge is not allowed: attempt %d of charge " INT64_FORMAT " awaits the provider's answer",
						o->charge_attempts, o->charge_id),
				 errdetail("Charge " INT64_FORMAT " is %s; a retry needs its last attempt failed.",
						   o->charge_id, StateName(&ChargeMachine, o->charge_state)),
				 errhint("Wait for the payment worker to report the attempt.")));

	SetCharge(o, o->charge_id, m->position, PAY_FAILED, PAY_REQUESTED, o->charge_attempts + 1);
	o->charge_attempts++;
	o->charge_state = PAY_REQUESTED;
	values[0] = Int64GetDatum(o->charge_id);
	values[1] = Int32GetDatum(o->charge_attempts);
	values[2] = Int64GetDatum(o->order_id);
	values[3] = TimestampTzGetDatum(MilestonesNow());
	EngineExec(&attempt_add_plan, values, NULL, SPI_OK_INSERT, 0);
	DeclarePayment(o, FACT_ATTEMPT, true, -1, PAY_REQUESTED, o->charge_attempts, o->charge_id);
	initStringInfo(&detail);
	JsonAddInt(&detail, "charge_id", false, o->charge_id);
	JsonAddInt(&detail, "attempt", false, o->charge_attempts);
	JsonAddNumeric(&detail, "amount", m->amount);
	JsonAddText(&detail, "currency", o->currency);
	JsonAddTimestamp(&detail, "pay_by", o->pay_by);
	JsonAddInt(&detail, "buyer_id", false, o->buyer_id);
	PaymentEvent(o, m->position, "charge_requested", "buyer", false, buyer_id, NULL, &detail);
	result = EngineStatus(fcinfo, caller, o, key);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*-------------------------------------------------------------------------
 * record_refund, retry_refund
 *-------------------------------------------------------------------------
 */
static EnginePlan refund_order_plan = {
	"SELECT r.order_id FROM milestones.order_refunds r WHERE r.refund_id OPERATOR(pg_catalog.=) $1",
	1, {INT8OID}
};
static EnginePlan refund_read_plan = {
	"SELECT r.state, r.attempts, r.position, r.amount FROM milestones.order_refunds r"
	" WHERE r.refund_id OPERATOR(pg_catalog.=) $1",
	1, {INT8OID}
};
static EnginePlan refund_report_plan = {
	"UPDATE milestones.order_refunds SET state = $2, reported_at = $3,"
	" provider_ref = COALESCE($4, provider_ref), failure = COALESCE($5, failure),"
	" attempts = $6"
	" WHERE refund_id OPERATOR(pg_catalog.=) $1",
	6, {INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, INT4OID}
};
static EnginePlan refunds_row_plan = {
	"SELECT * FROM milestones.refunds r WHERE r.refund_id OPERATOR(pg_catalog.=) $1",
	1, {INT8OID}
};

/* A refund as read under its order's lock. */
typedef struct RefundRow
{
	int64		refund_id;
	int			state;
	int32		attempts;
	int			position;
	Datum		amount;
} RefundRow;

/*
 * LockRefund finds a refund's order (P0002 for an unknown refund), locks
 * it and reads the refund as the lock's holder left it.
 */
static void
LockRefund(EngineOrder *o, int64 refund_id, RefundRow *r)
{
	Datum		values[1];
	bool		isnull;
	char	   *state;

	values[0] = Int64GetDatum(refund_id);
	EngineExec(&refund_order_plan, values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("refund " INT64_FORMAT " does not exist", refund_id),
				 errdetail("No refund has id " INT64_FORMAT ".", refund_id),
				 errhint("Use the refund_id of the refund_requested event, or see milestones.refunds.")));
	ColumnsCheckResult(SPI_tuptable, 1, 1, "order_refunds", order_id_column, 1);
	EngineLockOrder(o, DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
					0, "payments");
	EngineExec(&refund_read_plan, values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: refund " INT64_FORMAT " vanished", refund_id);
	ColumnsCheckResult(SPI_tuptable, 1, 1, "order_refunds", refund_read_columns,
					   lengthof(refund_read_columns));
	state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	r->refund_id = refund_id;
	r->state = StateCode(&RefundMachine, state);
	if (r->state < 0)
		elog(ERROR, "milestones engine: refund " INT64_FORMAT " has unknown state \"%s\"",
			 refund_id, state ? state : "(null)");
	r->attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	r->position = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	r->amount = datumCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull),
						  false, -1);
}

/* SetRefund moves a refund to state to with the report's texts. */
static void
SetRefund(EngineOrder *o, RefundRow *r, int to, int32 attempts, text *provider_ref, text *failure)
{
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(r->refund_id);
	values[1] = CStringGetTextDatum(StateName(&RefundMachine, to));
	values[2] = TimestampTzGetDatum(MilestonesNow());
	values[3] = PointerGetDatum(provider_ref);
	nulls[3] = provider_ref == NULL ? 'n' : ' ';
	values[4] = PointerGetDatum(failure);
	nulls[4] = failure == NULL ? 'n' : ' ';
	values[5] = Int32GetDatum(attempts);
	EngineExec(&refund_report_plan, values, nulls, SPI_OK_UPDATE, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: refund " INT64_FORMAT " not updated", r->refund_id);
	DeclarePayment(o, FACT_REFUND, false, r->state, to, r->position, r->refund_id);
	r->state = to;
	r->attempts = attempts;
}

/*
 * milestones_record_refund is record_refund(refund_id, outcome,
 * provider_ref, failure): the payment worker reports the provider's answer
 * to a refund's current attempt (SPEC section 12).  Idempotent; failed
 * after succeeded fails 55000; succeeded after failed is accepted (a
 * refund that settles late).  The ledger booked the refund when it was
 * decided; the row tracks the provider.  Returns the refunds row.
 */
Datum
milestones_record_refund(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull;
	int64		refund_id = ARG_INT64(0, idnull);
	text	   *outcome = ARG_TEXT(1);
	text	   *provider_ref = ARG_TEXT(2);
	text	   *failure = ARG_TEXT(3);
	bool		succeeded;
	EngineOrder *o = palloc0(sizeof(EngineOrder));
	RefundRow	r;
	Datum		values[1];
	Datum		result;

	EngineRefuseOnStandby("record_refund");
	if (idnull || refund_id <= 0)
		EngineCheckId(idnull, refund_id, "refund_id");
	EngineNotNull(outcome == NULL, "outcome");
	succeeded = CheckOutcome(outcome);
	CheckReportText(provider_ref, failure, succeeded);
	EngineConnect();
	LockRefund(o, refund_id, &r);
	if ((r.state == PAY_SUCCEEDED && succeeded) || (r.state == PAY_FAILED && !succeeded))
		;						/* the same report again: nothing changes */
	else if (r.state == PAY_SUCCEEDED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("record_refund is not allowed: refund " INT64_FORMAT " succeeded already", refund_id),
				 errdetail("A success is final: the buyer was paid back (attempt %d).", r.attempts),
				 errhint("Report each attempt's final answer once.")));
	else
	{
		StringInfoData detail;

		SetRefund(o, &r, succeeded ? PAY_SUCCEEDED : PAY_FAILED, r.attempts, provider_ref, failure);
		initStringInfo(&detail);
		JsonAddInt(&detail, "refund_id", false, refund_id);
		JsonAddInt(&detail, "attempt", false, r.attempts);
		JsonAddNumeric(&detail, "amount", r.amount);
		if (succeeded)
			JsonAddText(&detail, "provider_ref", provider_ref ? text_to_cstring(provider_ref) : NULL);
		else
			JsonAddText(&detail, "failure", text_to_cstring(failure));
		PaymentEvent(o, r.position, succeeded ? "refund_succeeded" : "refund_failed", "payments",
					 true, 0, NULL, &detail);
	}
	values[0] = Int64GetDatum(refund_id);
	EngineExec(&refunds_row_plan, values, NULL, SPI_OK_SELECT, 1);
	result = EngineResultRow(fcinfo, caller);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*
 * milestones_retry_refund is retry_refund(refund_id): support sends a
 * failed refund to the provider again (a new attempt, event
 * refund_requested).  Returns the refunds row.
 */
Datum
milestones_retry_refund(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull;
	int64		refund_id = ARG_INT64(0, idnull);
	EngineOrder *o = palloc0(sizeof(EngineOrder));
	RefundRow	r;
	Datum		values[1];
	Datum		result;
	StringInfoData detail;

	EngineRefuseOnStandby("retry_refund");
	if (idnull || refund_id <= 0)
		EngineCheckId(idnull, refund_id, "refund_id");
	EngineConnect();
	LockRefund(o, refund_id, &r);
	if (r.state != PAY_FAILED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("retry_refund is not allowed: refund " INT64_FORMAT " is %s", refund_id,
						StateName(&RefundMachine, r.state)),
				 errdetail("Only a failed refund is sent again; attempt %d is %s.", r.attempts,
						   StateName(&RefundMachine, r.state)),
				 errhint("%s", r.state == PAY_REQUESTED ?
						 "Wait for the payment worker to report the attempt." :
						 "A succeeded refund is done.")));
	SetRefund(o, &r, PAY_REQUESTED, r.attempts + 1, NULL, NULL);
	initStringInfo(&detail);
	JsonAddInt(&detail, "refund_id", false, refund_id);
	JsonAddInt(&detail, "attempt", false, r.attempts);
	JsonAddNumeric(&detail, "amount", r.amount);
	JsonAddText(&detail, "currency", o->currency);
	JsonAddInt(&detail, "buyer_id", false, o->buyer_id);
	PaymentEvent(o, r.position, "refund_requested", "support", true, 0, NULL, &detail);
	values[0] = Int64GetDatum(refund_id);
	EngineExec(&refunds_row_plan, values, NULL, SPI_OK_SELECT, 1);
	result = EngineResultRow(fcinfo, caller);
	EngineFinish();
	PG_RETURN_DATUM(result);
}
