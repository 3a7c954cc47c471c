/*-------------------------------------------------------------------------
 *
 * src/actions.c
 *		The order actions of SPEC section 3, in C: create_offer,
 *		withdraw_offer, decline_offer, place_order, deliver, accept,
 *		request_revision, stop, cancel and expire_overdue.
 *
 * Each action checks its arguments, claims its idempotency key, locks the
 * order row FOR UPDATE, reads the whole order, refuses what the state
 * machine (states.c) does not allow, writes, declares its writes to the
 * commit check (check.c), appends the event and returns the order's
 * order_status row.  The behaviour is 1.0's PL/pgSQL engine's, message for
 * message; notifications are not sent here (the events table's trigger or
 * the relay sends them).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "engine.h"

PG_FUNCTION_INFO_V1(milestones_create_offer);
PG_FUNCTION_INFO_V1(milestones_withdraw_offer);
PG_FUNCTION_INFO_V1(milestones_decline_offer);
PG_FUNCTION_INFO_V1(milestones_place_order);
PG_FUNCTION_INFO_V1(milestones_deliver);
PG_FUNCTION_INFO_V1(milestones_accept);
PG_FUNCTION_INFO_V1(milestones_request_revision);
PG_FUNCTION_INFO_V1(milestones_stop);
PG_FUNCTION_INFO_V1(milestones_cancel);
PG_FUNCTION_INFO_V1(milestones_expire_overdue);
PG_FUNCTION_INFO_V1(milestones_cancel_milestone);

#define ARG_INT64(n, isnull) ((isnull) = PG_ARGISNULL(n), (isnull) ? 0 : PG_GETARG_INT64(n))
#define ARG_TEXT(n) (PG_ARGISNULL(n) ? NULL : PG_GETARG_TEXT_PP(n))

/*
 * s: milestone $21 starts at $10 (due_at in UTC, as LedgerStart), returning
 * its due_at; with the charge's ledger legs (WRITE_POST_CTE) and the
 * event, place_order and accept write in one statement.
 */
#define START_CTE \
	" s AS (UPDATE milestones.order_milestones SET state = 'in_progress', started_at = $10," \
	" due_at = pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', $10)" \
	" OPERATOR(pg_catalog.+) pg_catalog.make_interval(days => days))" \
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $21" \
	" RETURNING due_at)"

/*
 * WriteCharge sets the charge of milestone next (buyer -> escrow, R4) and
 * its position ($21) in a combined write statement.
 */
static void
WriteCharge(EngineWrite *w, EngineOrder *o, EngineMilestone *next)
{
	static const char *const accounts[] = {"buyer", "escrow"};
	Datum		amounts[2];

	amounts[0] = DirectFunctionCall1(numeric_uminus, next->amount);
	amounts[1] = next->amount;
	LedgerWriteLegs(w, o, next->position, "charge", accounts, amounts, 2);
	EngineWriteSet(w, WP_POS_B, Int16GetDatum((int16) next->position), false);
}

/*
 * Started records in the engine's picture, and declares, the start and
 * charge (w's legs) of milestone next that the last statement wrote; col
 * is the statement's column holding next's due_at.
 */
static void
Started(EngineOrder *o, EngineMilestone *next, int col, EngineWrite *w)
{
	ColumnsCheckResult(SPI_tuptable, 1, col, "order_milestones",
					   &EngineMilestoneColumns[MC_DUE_AT], 1);
	next->due_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
													 col, &next->due_at_null));
	EngineSetMilestone(o, next, MS_IN_PROGRESS);
	LedgerDeclare(o, &w->legs);
}

/* NoteLeft is left(note, 200) as text, or NULL. */
static char *
NoteLeft(text *note)
{
	char	   *s;

	if (note == NULL)
		return NULL;
	s = text_to_cstring(note);
	return pnstrdup(s, pg_mbcharcliplen(s, strlen(s), 200));
}

/*
 * CheckReason refuses (22023) a cancellation reason that is not an active
 * code of milestones.cancellation_reasons, listing the valid ones; cancel
 * and cancel_milestone call it after the idempotency key.
 */
static void
CheckReason(text *reason, const char *reason_s)
{
	static EnginePlan reason_plan = {
		"SELECT EXISTS (SELECT FROM milestones.cancellation_reasons cr"
		" WHERE cr.code OPERATOR(pg_catalog.=) $1 AND cr.active)",
		1, {TEXTOID}
	};
	static EnginePlan reasons_plan = {
		"SELECT pg_catalog.string_agg(code, ', ' ORDER BY code)"
		" FROM milestones.cancellation_reasons WHERE active",
		0, {InvalidOid}
	};
	Datum		values[1];
	bool		isnull;

	values[0] = PointerGetDatum(reason);
	EngineExec(&reason_plan, values, NULL, SPI_OK_SELECT, 0);
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
	{
		char	   *list;

		EngineExec(&reasons_plan, NULL, NULL, SPI_OK_SELECT, 0);
		list = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown cancellation reason %s", EngineQuoteLiteral(reason_s, 100)),
				 errdetail("Valid reasons: %s.", list ? list : ""),
				 errhint("Support maintains the list with milestones.set_cancellation_reason().")));
	}
}

/* CheckNote refuses a note over 2000 characters (1.0's inline test). */
static void
CheckNote(text *note)
{
	if (note != NULL && EngineTextLength(note) > 2000)
		EngineCheckText(false, note, "note", 2000, false);
}

/* JsonClose ends a JSON object built with the JsonAdd helpers. */
static char *
JsonClose(StringInfo buf)
{
	if (buf->len == 0)
		return "";
	appendStringInfoChar(buf, '}');
	return buf->data;
}

/* OrderArgs is the key arguments {"order_id": .., "<role>_id": ..}. */
static char *
OrderArgs(int64 order_id, const char *idkey, int64 actor_id)
{
	StringInfoData buf;

	initStringInfo(&buf);
	JsonAddInt(&buf, "order_id", false, order_id);
	JsonAddInt(&buf, idkey, false, actor_id);
	return JsonClose(&buf);
}

/* OrderNoteArgs adds "note" to OrderArgs (deliver, request_revision). */
static char *
OrderNoteArgs(int64 order_id, const char *idkey, int64 actor_id, text *note)
{
	StringInfoData buf;

	initStringInfo(&buf);
	JsonAddInt(&buf, "order_id", false, order_id);
	JsonAddInt(&buf, idkey, false, actor_id);
	JsonAddText(&buf, "note", note ? text_to_cstring(note) : NULL);
	return JsonClose(&buf);
}

/*
 * EndOffer is the shared body of withdraw_offer and decline_offer: an
 * offer ends before it is placed (1.0's _end_offer).
 */
static Datum
EndOffer(FunctionCallInfo fcinfo, const char *role, const char *idkey,
		 int to, const char *function)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull,
				actornull;
	int64		order_id = ARG_INT64(0, idnull);
	int64		actor_id = ARG_INT64(1, actornull);
	text	   *key = ARG_TEXT(2);
	EngineOrder *o = palloc(sizeof(EngineOrder));
	Datum		result;
	int			i;
	static EnginePlan skip_all_plan = {
		"UPDATE milestones.order_milestones SET state = 'skipped'"
		" WHERE order_id OPERATOR(pg_catalog.=) $1",
		1, {INT8OID}
	};
	static EnginePlan end_plan = {
		"UPDATE milestones.orders SET state = $2, completed_at = $3"
		" WHERE order_id OPERATOR(pg_catalog.=) $1",
		3, {INT8OID, TEXTOID, TIMESTAMPTZOID}
	};
	Datum		values[3];

	EngineRefuseOnStandby(function);
	if (idnull || order_id <= 0)
		EngineCheckId(idnull, order_id, "order_id");
	if (actornull || actor_id <= 0)
		EngineCheckId(actornull, actor_id, idkey);
	EngineConnect();
	if (EngineRetried(fcinfo, caller, key, function, OrderArgs(order_id, idkey, actor_id), &result))
		return result;
	EngineLockOrder(o, order_id, actor_id, role);
	if (o->state != ORDER_OFFERED)
		EngineStateError(o, function, "an offered order that was not placed");
	EngineReadMilestones(o);
	/*
	 * Confirmed mode: a checkout not paid yet is still an offer; its charge
	 * is voided (expired when its pay_by passed, as the sweep leaves it).
	 */
	if (PaymentsDeadlinePassed(o))
		PaymentsExpire(o, "system");
	PaymentsVoid(o, to == ORDER_WITHDRAWN ? "withdrawn" : "declined", MilestonesNow(), role, false,
				 actor_id, NULL);
	values[0] = Int64GetDatum(order_id);
	EngineExec(&skip_all_plan, values, NULL, SPI_OK_UPDATE, 0);
	if ((int) SPI_processed != o->nmilestones)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " skipped %d milestones",
			 order_id, (int) SPI_processed);
	for (i = 0; i < o->nmilestones; i++)
		EngineSetMilestone(o, &o->ms[i], MS_SKIPPED);
	values[1] = CStringGetTextDatum(StateName(&OrderMachine, to));
	values[2] = TimestampTzGetDatum(MilestonesNow());
	EngineExec(&end_plan, values, NULL, SPI_OK_UPDATE, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " not ended", order_id);
	EngineSetOrder(o, to, true);
	EngineSetEnded(o, NULL, NULL, DatumGetTimestampTz(values[2]));
	result = EngineEventStatus(fcinfo, caller, o, -1, StateName(&OrderMachine, to), role, false, actor_id, NULL, -1, "", key);
	EngineFinish();
	return result;
}

/* milestones_withdraw_offer: the seller withdraws an offer not placed. */
Datum
milestones_withdraw_offer(PG_FUNCTION_ARGS)
{
	return EndOffer(fcinfo, "seller", "seller_id", ORDER_WITHDRAWN, "withdraw_offer");
}

/* milestones_decline_offer: the buyer declines an offer. */
Datum
milestones_decline_offer(PG_FUNCTION_ARGS)
{
	return EndOffer(fcinfo, "buyer", "buyer_id", ORDER_DECLINED, "decline_offer");
}

/*
 * milestones_place_order: the buyer places the offer; milestone 1 is
 * charged and starts (R3).
 */
Datum
milestones_place_order(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull,
				buyernull;
	int64		order_id = ARG_INT64(0, idnull);
	int64		buyer_id = ARG_INT64(1, buyernull);
	text	   *key = ARG_TEXT(2);
	EngineOrder *o = palloc(sizeof(EngineOrder));
	Datum		result;
	EngineWrite w;
	bool		eligible;
	StringInfoData detail;
	/* The order is placed, milestone 1 starts and is charged, the event. */
	static EnginePlan place_plan = {
		"WITH " WRITE_EVENT_CTE ","
		" o AS (UPDATE milestones.orders SET state = 'active', placed_at = $10"
		" WHERE order_id OPERATOR(pg_catalog.=) $1 RETURNING 1),"
		START_CTE ", " WRITE_POST_CTE
		" SELECT l.txn_id, l.account, l.amount, s.due_at FROM e, o, s, l",
		ENGINE_WRITE_ARGS, ENGINE_WRITE_ARGTYPES
	};

	EngineRefuseOnStandby("place_order");
	if (idnull || order_id <= 0)
		EngineCheckId(idnull, order_id, "order_id");
	if (buyernull || buyer_id <= 0)
		EngineCheckId(buyernull, buyer_id, "buyer_id");
	EngineConnect();
	if (EngineRetried(fcinfo, caller, key, "place_order", OrderArgs(order_id, "buyer_id", buyer_id), &result))
		PG_RETURN_DATUM(result);
	eligible = EngineLockOrderEligible(o, order_id, buyer_id, "buyer");
	if (o->state != ORDER_OFFERED)
		EngineStateError(o, "place_order", "an offered order");
	/* Eligibility can be withdrawn between the offer and the order. */
	if (!eligible)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("order " INT64_FORMAT " can no longer be placed as a milestone order", order_id),
				 errdetail("Seller " INT64_FORMAT " or category %s is no longer eligible for milestones.",
						   o->seller_id, quote_literal_cstr(o->category))));
	EngineReadMilestones(o);
	if (o->confirmed)
	{
		/*
		 * Confirmed mode (SPEC section 11): milestone 1's charge is
		 * requested; the order is placed when the provider's success is
		 * reported.  An offer whose charge passed pay_by gets a new one.
		 */
		if (o->awaiting >= 0 && !PaymentsDeadlinePassed(o))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("place_order is not allowed: milestone 1 of order " INT64_FORMAT " awaits payment", order_id),
					 errdetail("Charge " INT64_FORMAT " (attempt %d) is %s and must succeed by %s.",
							   o->charge_id, o->charge_attempts, StateName(&ChargeMachine, o->charge_state),
							   EngineTimestampOut(false, o->pay_by)),
					 errhint("The order is placed when the payment worker records the provider's success; after a failed attempt the buyer calls retry_charge().")));
		if (o->awaiting >= 0)
			PaymentsExpire(o, "system");
		if (o->nmilestones < 1 || o->ms[0].state != MS_PENDING)
			elog(ERROR, "milestones engine: offered order " INT64_FORMAT " has no pending milestone 1", order_id);
		PaymentsRequest(o, &o->ms[0], "buyer", false, buyer_id);
		result = EngineStatus(fcinfo, caller, o, key);
		EngineFinish();
		PG_RETURN_DATUM(result);
	}
	if (o->nmilestones < 1 || o->ms[0].state != MS_PENDING)
		elog(ERROR, "milestones engine: offered order " INT64_FORMAT " has no pending milestone 1", order_id);
	initStringInfo(&detail);
	JsonAddNumeric(&detail, "charged", o->ms[0].amount);
	EngineWriteInit(&w, o, 1, "placed", "buyer", false, buyer_id, NULL, ORDER_ACTIVE,
					MS_IN_PROGRESS, JsonClose(&detail));
	WriteCharge(&w, o, &o->ms[0]);
	EngineWriteExec(&place_plan, &w);
	if (SPI_processed != 2)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " not placed", order_id);
	EngineSetOrder(o, ORDER_ACTIVE, true);
	o->placed_at = DatumGetTimestampTz(w.values[WP_NOW - 1]);
	o->placed_at_null = false;
	Started(o, &o->ms[0], 4, &w);
	result = EngineStatus(fcinfo, caller, o, key);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*
 * milestones_deliver: the seller delivers the milestone in progress; the
 * buyer's response window opens (R5, R8).
 */
Datum
milestones_deliver(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull,
				sellernull;
	int64		order_id = ARG_INT64(0, idnull);
	int64		seller_id = ARG_INT64(1, sellernull);
	text	   *note = ARG_TEXT(2);
	text	   *key = ARG_TEXT(3);
	EngineOrder *o = palloc(sizeof(EngineOrder));
	EngineMilestone *m;
	Datum		result;
	EngineWrite w;
	bool		isnull;
	bool		final;
	TimestampTz respond_by;
	int32		deliveries;
	char	   *note_left;

	/*
	 * The milestone is delivered and the event written in one statement;
	 * the event's detail needs respond_by and the delivery count the UPDATE
	 * computes, so it is built here with jsonb_build_object (the same
	 * jsonb as the engine's JSON text): {"final": $24, "respond_by",
	 * "delivery", "note": $25}.  $22 is the note.
	 */
	static EnginePlan deliver_plan = {
		"WITH u AS (UPDATE milestones.order_milestones"
		" SET state = 'delivered', delivered_at = $10,"
		" deliveries = deliveries OPERATOR(pg_catalog.+) 1, delivery_note = $22,"
		" respond_by = pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', $10)"
		" OPERATOR(pg_catalog.+) (SELECT s.response_window FROM milestones.settings s))"
		" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $2"
		" RETURNING respond_by, deliveries),"
		" e AS (INSERT INTO " EVENT_COLUMNS
		" SELECT $1, $2, $3, $4, $5, $6, $7, $8,"
		" pg_catalog.jsonb_build_object('final', $24, 'respond_by', u.respond_by,"
		" 'delivery', u.deliveries, 'note', $25), $10 FROM u RETURNING 1)"
		" SELECT u.respond_by, u.deliveries FROM u, e",
		ENGINE_WRITE_ARGS, ENGINE_WRITE_ARGTYPES
	};

	EngineRefuseOnStandby("deliver");
	if (idnull || order_id <= 0)
		EngineCheckId(idnull, order_id, "order_id");
	if (sellernull || seller_id <= 0)
		EngineCheckId(sellernull, seller_id, "seller_id");
	CheckNote(note);
	EngineConnect();
	if (EngineRetried(fcinfo, caller, key, "deliver",
					  OrderNoteArgs(order_id, "seller_id", seller_id, note), &result))
		PG_RETURN_DATUM(result);
	EngineLockOrder(o, order_id, seller_id, "seller");
	if (o->state == ORDER_OFFERED && o->awaiting >= 0)
		PaymentsAwaitingError(o, "deliver");	/* placed; milestone 1 waits for the money */
	if (o->state != ORDER_ACTIVE)
		EngineStateError(o, "deliver", "an active order with a milestone in progress");
	EngineReadMilestones(o);
	m = o->current >= 0 ? &o->ms[o->current] : NULL;
	if (m == NULL && o->awaiting >= 0)
		PaymentsAwaitingError(o, "deliver");	/* the seller waits for the money */
	if (m == NULL || m->state != MS_IN_PROGRESS)
	{
		char		pos[32];

		if (m != NULL)
			snprintf(pos, sizeof(pos), "%d", m->position);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("deliver is not allowed: milestone %s of order " INT64_FORMAT " is %s",
						m ? pos : "<NULL>", order_id,
						m ? StateName(&MilestoneMachine, m->state) : "<NULL>"),
				 errdetail("deliver needs a milestone in progress; milestone %s (%s) is %s until %s.",
						   m ? pos : "", m ? m->name : "",
						   m ? StateName(&MilestoneMachine, m->state) : "",
						   m ? EngineTimestampOut(m->respond_by_null, m->respond_by) : ""),
				 errhint("Wait for the buyer to accept, stop or request a revision.")));
	}
	/*
	 * The final delivery is that of the last milestone not cancelled
	 * (issue 11); without cancelled milestones that is the final flag.
	 */
	final = true;
	{
		int			k;

		for (k = 0; k < o->nmilestones; k++)
			if (o->ms[k].position > m->position && o->ms[k].state != MS_CANCELLED)
				final = false;
	}
	note_left = NoteLeft(note);
	EngineWriteInit(&w, o, m->position, "delivered", "seller", false, seller_id, NULL, o->state,
					MS_DELIVERED, "");
	EngineWriteSet(&w, WP_TEXT, PointerGetDatum(note), note == NULL);
	EngineWriteSet(&w, WP_BOOL, BoolGetDatum(final), false);
	EngineWriteSet(&w, WP_TEXT2, note_left ? CStringGetTextDatum(note_left) : (Datum) 0, note_left == NULL);
	EngineExec(&deliver_plan, w.values, w.nulls, SPI_OK_SELECT, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " not delivered",
			 m->position, order_id);
	{
		static const ColumnSpec delivered[2] =
		{
			{"respond_by", TIMESTAMPTZOID, true}, {"deliveries", INT4OID, true}
		};

		ColumnsCheckResult(SPI_tuptable, 1, 1, "order_milestones", delivered, 2);
	}
	respond_by = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	deliveries = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	EngineSetMilestone(o, m, MS_DELIVERED);
	m->respond_by = respond_by;
	m->respond_by_null = false;
	m->delivered_at = DatumGetTimestampTz(w.values[WP_NOW - 1]);
	m->delivered_at_null = false;
	m->deliveries = deliveries;
	result = EngineStatus(fcinfo, caller, o, key);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*
 * milestones_accept: the delivered milestone completes; the next one is
 * charged and starts, or the order finishes and the seller is paid (R4, R7).
 */
Datum
milestones_accept(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull,
				buyernull;
	int64		order_id = ARG_INT64(0, idnull);
	int64		buyer_id = ARG_INT64(1, buyernull);
	text	   *key = ARG_TEXT(2);
	EngineOrder *o = palloc(sizeof(EngineOrder));
	EngineMilestone *m;
	EngineMilestone *next = NULL;
	Datum		result;
	StringInfoData detail;
	EngineWrite w;

	/*
	 * m ($20) completes, next ($21) starts (due_at in UTC, as START_CTE)
	 * and is charged, the event: one statement, with one UPDATE for both
	 * milestones (each UPDATE of a table prepares its constraints anew).
	 * The two positions as one = ANY: an index condition on the primary
	 * key, so the generic plan is one index scan even without statistics
	 * (an OR of the two is a BitmapOr of two scans).
	 */
	static EnginePlan advance_plan = {
		"WITH " WRITE_EVENT_CTE ","
		" s AS (UPDATE milestones.order_milestones"
		" SET state = CASE WHEN position OPERATOR(pg_catalog.=) $20 THEN 'completed' ELSE 'in_progress' END,"
		" completed_at = CASE WHEN position OPERATOR(pg_catalog.=) $20 THEN $10 ELSE completed_at END,"
		" started_at = CASE WHEN position OPERATOR(pg_catalog.=) $20 THEN started_at ELSE $10 END,"
		" due_at = CASE WHEN position OPERATOR(pg_catalog.=) $20 THEN due_at"
		" ELSE pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', $10)"
		" OPERATOR(pg_catalog.+) pg_catalog.make_interval(days => days)) END"
		" WHERE order_id OPERATOR(pg_catalog.=) $1"
		" AND position OPERATOR(pg_catalog.=) ANY (ARRAY[$20, $21])"
		" RETURNING position, due_at), "
		WRITE_POST_CTE
		" SELECT l.txn_id, l.account, l.amount, n.due_at FROM e, s AS c, s AS n, l"
		" WHERE c.position OPERATOR(pg_catalog.=) $20 AND n.position OPERATOR(pg_catalog.=) $21",
		ENGINE_WRITE_ARGS, ENGINE_WRITE_ARGTYPES
	};

	/* Confirmed mode: m ($20) completes, the event; the charge of the next follows. */
	static EnginePlan accept_await_plan = {
		"WITH " WRITE_EVENT_CTE ","
		" s AS (UPDATE milestones.order_milestones SET state = 'completed', completed_at = $10"
		" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $20 RETURNING 1)"
		" SELECT 1 FROM e, s",
		ENGINE_WRITE_ARGS, ENGINE_WRITE_ARGTYPES
	};

	EngineRefuseOnStandby("accept");
	if (idnull || order_id <= 0)
		EngineCheckId(idnull, order_id, "order_id");
	if (buyernull || buyer_id <= 0)
		EngineCheckId(buyernull, buyer_id, "buyer_id");
	EngineConnect();
	if (EngineRetried(fcinfo, caller, key, "accept", OrderArgs(order_id, "buyer_id", buyer_id), &result))
		PG_RETURN_DATUM(result);
	EngineLockOrder(o, order_id, buyer_id, "buyer");
	m = EngineOpenDelivery(o, "accept");
	/*
	 * The next milestone is the first pending one after it (in an active
	 * order every later milestone is pending, or cancelled by issue 11's
	 * cancel_milestone); with none left the order finishes.
	 */
	{
		int			i;

		for (i = 0; i < o->nmilestones; i++)
			if (o->ms[i].position > m->position && o->ms[i].state == MS_PENDING &&
				(next == NULL || o->ms[i].position < next->position))
				next = &o->ms[i];
	}
	initStringInfo(&detail);
	if (next == NULL)
	{
		LedgerPayout payout;

		LedgerCompletePrepare(o, m, &detail, &payout);
		EngineWriteInit(&w, o, m->position, "accepted", "buyer", false, buyer_id, NULL,
						ORDER_COMPLETED, MS_COMPLETED, JsonClose(&detail));
		LedgerCompleteWrite(o, m, "finished", MilestonesNow(), &w, &payout);
	}
	else if (o->confirmed)
	{
		/*
		 * Confirmed mode: m completes and the next milestone's charge is
		 * requested; it starts when the provider's success is reported.
		 */
		JsonAddInt(&detail, "next", false, next->position);
		EngineWriteInit(&w, o, m->position, "accepted", "buyer", false, buyer_id, NULL,
						o->state, MS_COMPLETED, JsonClose(&detail));
		EngineWriteSet(&w, WP_POS_A, Int16GetDatum((int16) m->position), false);
		EngineWriteExec(&accept_await_plan, &w);
		EngineSetMilestone(o, m, MS_COMPLETED);
		o->current = -1;
		PaymentsRequest(o, next, "buyer", false, buyer_id);
	}
	else
	{
		JsonAddInt(&detail, "next", false, next->position);
		JsonAddNumeric(&detail, "charged", next->amount);
		EngineWriteInit(&w, o, m->position, "accepted", "buyer", false, buyer_id, NULL,
						o->state, MS_COMPLETED, JsonClose(&detail));
		EngineWriteSet(&w, WP_POS_A, Int16GetDatum((int16) m->position), false);
		WriteCharge(&w, o, next);
		EngineWriteExec(&advance_plan, &w);
		if (SPI_processed != 2)
			elog(ERROR, "milestones engine: order " INT64_FORMAT " did not move from milestone %d to %d",
				 order_id, m->position, next->position);
		EngineSetMilestone(o, m, MS_COMPLETED);
		Started(o, next, 4, &w);
	}
	result = EngineStatus(fcinfo, caller, o, key);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*
 * milestones_request_revision: uses one of the order's revisions; the
 * milestone goes back in progress and its response window closes (R11).
 */
Datum
milestones_request_revision(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull,
				buyernull;
	int64		order_id = ARG_INT64(0, idnull);
	int64		buyer_id = ARG_INT64(1, buyernull);
	text	   *note = ARG_TEXT(2);
	text	   *key = ARG_TEXT(3);
	EngineOrder *o = palloc(sizeof(EngineOrder));
	EngineMilestone *m;
	Datum		result;
	StringInfoData detail;
	EngineWrite w;

	/* A revision used, the milestone back in progress, the event: one statement. */
	static EnginePlan revise_plan = {
		"WITH " WRITE_EVENT_CTE ","
		" o AS (UPDATE milestones.orders SET revisions_used = revisions_used OPERATOR(pg_catalog.+) 1"
		" WHERE order_id OPERATOR(pg_catalog.=) $1 RETURNING 1),"
		" s AS (UPDATE milestones.order_milestones SET state = 'in_progress', respond_by = NULL"
		" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $20 RETURNING 1)"
		" SELECT 1 FROM e, o, s",
		ENGINE_WRITE_ARGS, ENGINE_WRITE_ARGTYPES
	};

	EngineRefuseOnStandby("request_revision");
	if (idnull || order_id <= 0)
		EngineCheckId(idnull, order_id, "order_id");
	if (buyernull || buyer_id <= 0)
		EngineCheckId(buyernull, buyer_id, "buyer_id");
	CheckNote(note);
	EngineConnect();
	if (EngineRetried(fcinfo, caller, key, "request_revision",
					  OrderNoteArgs(order_id, "buyer_id", buyer_id, note), &result))
		PG_RETURN_DATUM(result);
	EngineLockOrder(o, order_id, buyer_id, "buyer");
	m = EngineOpenDelivery(o, "request_revision");
	if (!o->revisions_unlimited && o->revisions_used >= o->revisions_allowed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("request_revision is not allowed: order " INT64_FORMAT " has no revisions left", order_id),
				 errdetail("The order allows %d revisions and has used %d.",
						   o->revisions_allowed, o->revisions_used),
				 errhint("Accept or stop the delivery instead.")));
	initStringInfo(&detail);
	JsonAddInt(&detail, "revisions_used", false, (int64) o->revisions_used + 1);
	JsonAddText(&detail, "note", NoteLeft(note));
	EngineWriteInit(&w, o, m->position, "revision_requested", "buyer", false, buyer_id, NULL,
					o->state, MS_IN_PROGRESS, JsonClose(&detail));
	EngineWriteSet(&w, WP_POS_A, Int16GetDatum((int16) m->position), false);
	EngineWriteExec(&revise_plan, &w);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " not reopened",
			 m->position, order_id);
	EngineSetOrder(o, ORDER_ACTIVE, true);
	EngineSetMilestone(o, m, MS_IN_PROGRESS);
	m->respond_by_null = true;
	o->revisions_used++;
	result = EngineStatus(fcinfo, caller, o, key);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*
 * milestones_stop: the buyer ends the order after a delivery; that
 * delivery counts as completed, later milestones are skipped and never
 * charged (R6).
 */
Datum
milestones_stop(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull,
				buyernull;
	int64		order_id = ARG_INT64(0, idnull);
	int64		buyer_id = ARG_INT64(1, buyernull);
	text	   *key = ARG_TEXT(2);
	EngineOrder *o = palloc(sizeof(EngineOrder));
	EngineMilestone *m;
	Datum		result;
	StringInfoData detail;
	LedgerPayout payout;
	EngineWrite w;

	EngineRefuseOnStandby("stop");
	if (idnull || order_id <= 0)
		EngineCheckId(idnull, order_id, "order_id");
	if (buyernull || buyer_id <= 0)
		EngineCheckId(buyernull, buyer_id, "buyer_id");
	EngineConnect();
	if (EngineRetried(fcinfo, caller, key, "stop", OrderArgs(order_id, "buyer_id", buyer_id), &result))
		PG_RETURN_DATUM(result);
	EngineLockOrder(o, order_id, buyer_id, "buyer");
	if (o->state == ORDER_ACTIVE && o->awaiting >= 0)
	{
		/*
		 * Confirmed mode: the buyer stops while the next milestone awaits
		 * payment (its delivery was accepted); the charge is voided.
		 */
		if (PaymentsDeadlinePassed(o))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("stop is not allowed: the payment window of order " INT64_FORMAT " has closed", order_id),
					 errdetail("Charge " INT64_FORMAT " of milestone %d had to be paid by %s.",
							   o->charge_id, o->ms[o->awaiting].position, EngineTimestampOut(false, o->pay_by)),
					 errhint("The order is in effect completed as unpaid; the expiry sweep records it.")));
		PaymentsStop(o, buyer_id);
		result = EngineStatus(fcinfo, caller, o, key);
		EngineFinish();
		PG_RETURN_DATUM(result);
	}
	m = EngineOpenDelivery(o, "stop");
	initStringInfo(&detail);
	LedgerCompletePrepare(o, m, &detail, &payout);
	EngineWriteInit(&w, o, m->position, "stopped", "buyer", false, buyer_id, NULL,
					ORDER_COMPLETED, MS_COMPLETED, JsonClose(&detail));
	LedgerCompleteWrite(o, m, "stopped", MilestonesNow(), &w, &payout);
	result = EngineStatus(fcinfo, caller, o, key);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*
 * milestones_cancel: customer support ends an order for a listed reason
 * (R10).  Held funds go back to the buyer; completed milestones are still
 * paid.
 */
Datum
milestones_cancel(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull;
	int64		order_id = ARG_INT64(0, idnull);
	text	   *agent = ARG_TEXT(1);
	text	   *reason = ARG_TEXT(2);
	text	   *note = ARG_TEXT(3);
	text	   *key = ARG_TEXT(4);
	EngineOrder *o = palloc(sizeof(EngineOrder));
	EngineMilestone *m;
	Datum		result;
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			old_state;
	int			skipped;
	char	   *reason_s;
	char	   *agent_s;
	StringInfoData args;
	StringInfoData detail;
	static EnginePlan refund_plan = {
		"UPDATE milestones.order_milestones SET state = 'refunded'"
		" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $2",
		2, {INT8OID, INT2OID}
	};
	static EnginePlan cancel_plan = {
		"UPDATE milestones.orders SET state = 'cancelled', cancel_reason = $2, cancelled_by = $3,"
		" cancel_note = $4, completed_at = $5 WHERE order_id OPERATOR(pg_catalog.=) $1",
		5, {INT8OID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID}
	};

	EngineRefuseOnStandby("cancel");
	if (idnull || order_id <= 0)
		EngineCheckId(idnull, order_id, "order_id");
	EngineCheckText(agent == NULL, agent, "agent", 200, true);
	EngineNotNull(reason == NULL, "reason");
	CheckNote(note);
	reason_s = text_to_cstring(reason);
	agent_s = text_to_cstring(agent);
	EngineConnect();
	initStringInfo(&args);
	JsonAddInt(&args, "order_id", false, order_id);
	JsonAddText(&args, "agent", agent_s);
	JsonAddText(&args, "reason", reason_s);
	JsonAddText(&args, "note", note ? text_to_cstring(note) : NULL);
	if (EngineRetried(fcinfo, caller, key, "cancel", JsonClose(&args), &result))
		PG_RETURN_DATUM(result);
	/* After the key: a retry succeeds even if the reason was retired since. */
	CheckReason(reason, reason_s);
	EngineLockOrder(o, order_id, 0, "support");
	if (o->state != ORDER_OFFERED && o->state != ORDER_ACTIVE)
		EngineStateError(o, "cancel", "an offered or active order");
	EngineReadMilestones(o);
	/* Confirmed mode: a charge past its pay_by, as the sweep leaves it. */
	if (PaymentsDeadlinePassed(o))
	{
		if (o->state == ORDER_ACTIVE)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cancel is not allowed: order " INT64_FORMAT " is unpaid", order_id),
					 errdetail("Charge " INT64_FORMAT " of milestone %d had to be paid by %s.",
							   o->charge_id, o->ms[o->awaiting].position, EngineTimestampOut(false, o->pay_by)),
					 errhint("The order is in effect completed as unpaid; the expiry sweep records it.")));
		PaymentsExpire(o, "system");
	}
	PaymentsVoid(o, "cancelled", MilestonesNow(), "support", true, 0, agent_s);
	m = o->current >= 0 ? &o->ms[o->current] : NULL;
	if (m != NULL && m->state == MS_DELIVERED && MilestonesNow() >= m->respond_by)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cancel is not allowed: order " INT64_FORMAT " has expired", order_id),
				 errdetail("Milestone %d was delivered at %s and the buyer's window closed at %s.",
						   m->position, EngineTimestampOut(m->delivered_at_null, m->delivered_at),
						   EngineTimestampOut(m->respond_by_null, m->respond_by)),
				 errhint("The order is in effect completed as expired; the expiry sweep records it.")));
	initStringInfo(&detail);
	if (m != NULL)
	{
		static const char *const accounts[] = {"escrow", "buyer"};
		Datum		amounts[2];

		values[0] = Int64GetDatum(order_id);
		values[1] = Int16GetDatum((int16) m->position);
		EngineExec(&refund_plan, values, NULL, SPI_OK_UPDATE, 0);
		if (SPI_processed != 1)
			elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " not refunded",
				 m->position, order_id);
		EngineSetMilestone(o, m, MS_REFUNDED);
		if (o->confirmed)
			PaymentsRefundMilestone(o, m, "cancelled", agent_s);
		else
		{
			amounts[0] = DirectFunctionCall1(numeric_uminus, m->amount);
			amounts[1] = m->amount;
			LedgerPost(o, m->position, "refund", accounts, amounts, 2);
		}
		JsonAddNumeric(&detail, "refunded", m->amount);
	}
	skipped = LedgerSkipPending(o);
	values[0] = Int64GetDatum(order_id);
	values[1] = PointerGetDatum(reason);
	values[2] = PointerGetDatum(agent);
	values[3] = note ? PointerGetDatum(note) : (Datum) 0;
	if (note == NULL)
		nulls[3] = 'n';
	values[4] = TimestampTzGetDatum(MilestonesNow());
	EngineExec(&cancel_plan, values, nulls, SPI_OK_UPDATE, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " not cancelled", order_id);
	old_state = o->state;
	EngineSetOrder(o, ORDER_CANCELLED, true);
	EngineSetEnded(o, NULL, reason_s, DatumGetTimestampTz(values[4]));
	if (old_state == ORDER_ACTIVE)
	{
		StringInfoData payout;

		initStringInfo(&payout);
		LedgerSettle(o, &payout);
		JsonAddKey(&detail, "payout");
		appendStringInfoString(&detail, payout.data);
	}
	JsonAddText(&detail, "reason", reason_s);
	JsonAddInt(&detail, "skipped", false, skipped);
	JsonAddText(&detail, "note", NoteLeft(note));
	result = EngineEventStatus(fcinfo, caller, o, m ? m->position : -1, "cancelled", "support", true, 0, agent_s,
				m ? m->state : -1, JsonClose(&detail), key);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*
 * milestones_expire_overdue completes (as expired) up to batch orders
 * whose delivery is at or past its deadline (R8, R9), and purges
 * idempotency keys older than settings.idempotency_ttl, one batch at most.
 * Owner only (not SECURITY DEFINER): an as_of chosen by a caller could
 * expire orders early.  Rows locked by a concurrent buyer call are
 * skipped; the next run sees them again if they are still overdue.
 */
Datum
milestones_expire_overdue(PG_FUNCTION_ARGS)
{
	TimestampTz as_of;
	int32		batch;
	int32		count = 0;
	int64	   *ids;
	uint64		nids;
	uint64		i;
	Datum		values[2];
	EngineOrder *o = palloc(sizeof(EngineOrder));
	/*
	 * LIMIT above the row locks: a locked (skipped) order must not use up a
	 * place in the batch, or a few busy orders at the head of the queue
	 * would starve the free ones behind them (and stop run_expiry early).
	 */
	static EnginePlan work_plan = {
		"SELECT ord.order_id FROM milestones.orders ord"
		" JOIN milestones.order_milestones w ON w.order_id OPERATOR(pg_catalog.=) ord.order_id"
		" WHERE w.state OPERATOR(pg_catalog.=) 'delivered' AND w.respond_by OPERATOR(pg_catalog.<=) $1"
		" ORDER BY w.respond_by LIMIT $2 FOR UPDATE OF ord SKIP LOCKED",
		2, {TIMESTAMPTZOID, INT4OID}
	};
	static EnginePlan unpaid_plan = {
		"SELECT ord.order_id FROM milestones.orders ord"
		" JOIN milestones.order_charges c ON c.order_id OPERATOR(pg_catalog.=) ord.order_id"
		" WHERE c.state OPERATOR(pg_catalog.=) ANY ('{requested,failed}'::pg_catalog.text[])"
		" AND c.pay_by OPERATOR(pg_catalog.<=) $1"
		" ORDER BY c.pay_by LIMIT $2 FOR UPDATE OF ord SKIP LOCKED",
		2, {TIMESTAMPTZOID, INT4OID}
	};
	static EnginePlan purge_plan = {
		"DELETE FROM milestones.idempotency_keys"
		" WHERE key OPERATOR(pg_catalog.=) ANY (SELECT k.key FROM milestones.idempotency_keys k"
		" WHERE k.created_at OPERATOR(pg_catalog.<) ($1 OPERATOR(pg_catalog.-)"
		" (SELECT s.idempotency_ttl FROM milestones.settings s))"
		" ORDER BY k.created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
		2, {TIMESTAMPTZOID, INT4OID}
	};

	EngineRefuseOnStandby("expire_overdue");
	EngineNotNull(PG_ARGISNULL(0), "as_of");
	EngineNotNull(PG_ARGISNULL(1), "batch");
	as_of = PG_GETARG_TIMESTAMPTZ(0);
	batch = PG_GETARG_INT32(1);
	if (batch < 1 || batch > 100000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch must be between 1 and 100000"),
				 errdetail("Got %d.", batch)));
	if (TIMESTAMP_NOT_FINITE(as_of))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("as_of must be a finite timestamp")));

	EngineConnect();
	values[0] = TimestampTzGetDatum(as_of);
	values[1] = Int32GetDatum(batch);
	EngineExec(&work_plan, values, NULL, SPI_OK_SELECT, 0);
	nids = SPI_processed;
	ColumnsCheckResult(SPI_tuptable, nids, 1, "orders", &EngineOrderColumns[OC_ORDER_ID], 1);
	ids = palloc(sizeof(int64) * (nids + 1));
	for (i = 0; i < nids; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);

	for (i = 0; i < nids; i++)
	{
		EngineMilestone *m = NULL;
		int			k;
		StringInfoData detail;
		LedgerPayout payout;
		EngineWrite w;

		/*
		 * One SPI level per order: its results and memory are freed when the
		 * order is done, so a batch of 100,000 runs in constant memory.
		 */
		EngineConnect();
		/* Re-read under the lock: a buyer may have answered in the meantime. */
		EngineLockOrder(o, ids[i], 0, "system");
		EngineReadMilestones(o);
		for (k = 0; k < o->nmilestones; k++)
			if (o->ms[k].state == MS_DELIVERED && !o->ms[k].respond_by_null &&
				o->ms[k].respond_by <= as_of)
				m = &o->ms[k];
		if (m == NULL || o->state != ORDER_ACTIVE)
		{
			EngineFinish();
			continue;
		}
		initStringInfo(&detail);
		LedgerCompletePrepare(o, m, &detail, &payout);
		JsonAddTimestamp(&detail, "respond_by", m->respond_by);
		EngineWriteInit(&w, o, m->position, "expired", "system", true, 0, NULL,
						ORDER_COMPLETED, MS_COMPLETED, JsonClose(&detail));
		LedgerCompleteWrite(o, m, "expired", m->respond_by, &w, &payout);
		count++;
		EngineFinish();
	}

	/*
	 * Confirmed mode (1.2): charges unpaid at their pay_by, in what is left
	 * of the batch.  The same exactness as the deliveries: the charge is
	 * void at pay_by, and an order that ends as unpaid ends then.
	 */
	if (count < batch && EnginePaymentsSchema())
	{
		values[1] = Int32GetDatum(batch - count);
		EngineExec(&unpaid_plan, values, NULL, SPI_OK_SELECT, 0);
		nids = SPI_processed;
		ids = repalloc(ids, sizeof(int64) * (nids + 1));
		for (i = 0; i < nids; i++)
		{
			bool		isnull;

			ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		}
		SPI_freetuptable(SPI_tuptable);
		for (i = 0; i < nids; i++)
		{
			EngineConnect();
			EngineLockOrder(o, ids[i], 0, "system");
			if (o->charge_id != 0 && o->pay_by <= as_of &&
				(o->state == ORDER_OFFERED || o->state == ORDER_ACTIVE))
			{
				PaymentsExpire(o, "system");
				count++;
			}
			EngineFinish();
		}
	}

	/* Purge expired keys, at most one batch per call like the orders. */
	values[1] = Int32GetDatum(batch);
	EngineExec(&purge_plan, values, NULL, SPI_OK_DELETE, 0);
	EngineFinish();
	PG_RETURN_INT32(count);
}

/* JsonTypeName is jsonb_typeof of a value (NULL value: "absence"). */
static const char *
JsonTypeName(JsonbValue *v)
{
	if (v == NULL)
		return "absence";
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "string";
		case jbvNumeric:
			return "number";
		case jbvBool:
			return "boolean";
		case jbvArray:
			return "array";
		case jbvObject:
			return "object";
		case jbvBinary:
			return JsonContainerIsArray(v->val.binary.data) ? "array" : "object";
		default:
			return "unknown";
	}
}

/* JsonMember finds a key of an object container, or NULL. */
static JsonbValue *
JsonMember(JsonbContainer *obj, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(obj, JB_FOBJECT, &k);
}

/* IsDecimalText is 1.0's amount pattern ^-?[0-9]{1,20}(\.[0-9]{1,20})?$. */
static bool
IsDecimalText(const char *s)
{
	int			n = 0;

	if (*s == '-')
		s++;
	while (*s >= '0' && *s <= '9')
		s++, n++;
	if (n < 1 || n > 20)
		return false;
	if (*s == '\0')
		return true;
	if (*s++ != '.')
		return false;
	n = 0;
	while (*s >= '0' && *s <= '9')
		s++, n++;
	return n >= 1 && n <= 20 && *s == '\0';
}

/* NumCmp compares two numerics. */
static int
NumCmp(Datum a, Datum b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, a, b));
}

/* NumConst makes a numeric from its text. */
static Datum
NumConst(const char *s)
{
	return DirectFunctionCall3(numeric_in, CStringGetDatum(s), ObjectIdGetDatum(InvalidOid),
							   Int32GetDatum(-1));
}

/* LeftOut is left(numeric::text, 40). */
static char *
LeftOut(Datum num)
{
	char	   *s = EngineNumericOut(num);

	return pnstrdup(s, 40);
}

/*
 * Offer holds create_offer's arguments, as given and (category, currency)
 * as C strings, for the steps below.
 */
typedef struct Offer
{
	bool		sellernull;
	bool		buyernull;
	int64		seller_id;
	int64		buyer_id;
	text	   *category;
	Jsonb	   *milestones;
	bool		revisionsnull;
	int32		revisions;
	text	   *currency;
	text	   *key;
	char	   *currency_s;
	char	   *category_s;
} Offer;

/*
 * OfferSettings is what an offer is held to, read before its milestones
 * are checked: the settings, and whether the seller and the category are
 * eligible.
 */
typedef struct OfferSettings
{
	Datum		min_total;
	int32		max_milestones;
	Datum		fee_rate;
	bool		confirmed;		/* settings.payment_mode (1.2) */
	bool		seller_eligible;
	bool		category_eligible;
} OfferSettings;

/*
 * OfferMilestones is an offer's milestones once checked, in the arrays the
 * write statement takes, and their total.
 */
typedef struct OfferMilestones
{
	int			n;
	Datum		total;
	Datum		names[ENGINE_MAX_MILESTONES];
	Datum		days[ENGINE_MAX_MILESTONES];
	Datum		amounts[ENGINE_MAX_MILESTONES];
} OfferMilestones;

/*
 * OfferCheckArgs refuses (22004, 22023) what can be refused from the
 * arguments alone, before any statement runs, and sets the C strings of
 * the currency and the category.
 */
static void
OfferCheckArgs(Offer *of)
{
	EngineRefuseOnStandby("create_offer");
	if (of->sellernull || of->seller_id <= 0)
		EngineCheckId(of->sellernull, of->seller_id, "seller_id");
	if (of->buyernull || of->buyer_id <= 0)
		EngineCheckId(of->buyernull, of->buyer_id, "buyer_id");
	EngineCheckText(of->category == NULL, of->category, "category", 100, true);
	EngineNotNull(of->milestones == NULL, "milestones");
	EngineNotNull(of->currency == NULL, "currency");
	if (of->buyer_id == of->seller_id)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("buyer and seller must be different users"),
				 errdetail("Both are user " INT64_FORMAT ".", of->seller_id)));
	of->currency_s = text_to_cstring(of->currency);
	if (!(strlen(of->currency_s) == 3 &&
		  of->currency_s[0] >= 'A' && of->currency_s[0] <= 'Z' &&
		  of->currency_s[1] >= 'A' && of->currency_s[1] <= 'Z' &&
		  of->currency_s[2] >= 'A' && of->currency_s[2] <= 'Z'))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("currency must be an ISO 4217 code"),
				 errdetail("Got %s.", EngineQuoteLiteral(of->currency_s, 20)),
				 errhint("Use three capital letters, such as USD or EUR.")));
	if (!of->revisionsnull && of->revisions < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("revisions must be 0 or more, or NULL for unlimited"),
				 errdetail("Got %d.", of->revisions)));
	of->category_s = text_to_cstring(of->category);
}

/*
 * OfferArgsJson is the offer's arguments as the JSON its idempotency key
 * is claimed with (a retry must send the same ones).
 */
static char *
OfferArgsJson(const Offer *of)
{
	StringInfoData args;

	initStringInfo(&args);
	JsonAddInt(&args, "seller_id", false, of->seller_id);
	JsonAddInt(&args, "buyer_id", false, of->buyer_id);
	JsonAddText(&args, "category", of->category_s);
	JsonAddKey(&args, "milestones");
	(void) JsonbToCString(&args, &of->milestones->root, VARSIZE(of->milestones));
	JsonAddInt(&args, "revisions", of->revisionsnull, of->revisions);
	JsonAddText(&args, "currency", of->currency_s);
	return JsonClose(&args);
}

/*
 * OfferReadSettings reads the settings and the seller's and category's
 * eligibility: by primary key without the executor (direct.c), or, when
 * the tables are not as the extension made them, with the statement.
 */
static void
OfferReadSettings(const Offer *of, OfferSettings *s)
{
	EngineSettings settings;
	Datum		values[2];
	bool		isnull;

	/* The settings and the seller's and category's eligibility, read at once. */
	static EnginePlan settings_plan = {
		"SELECT s.min_order_total, s.max_milestones, s.seller_fee_rate,"
		SELLER_ELIGIBLE_SQL("$1") "," CATEGORY_ELIGIBLE_SQL("$2")
		" FROM milestones.settings s",
		2, {INT8OID, TEXTOID}
	};
	static EnginePlan mode_setting_plan = {
		"SELECT s.payment_mode OPERATOR(pg_catalog.=) 'confirmed' FROM milestones.settings s",
		0, {InvalidOid}
	};

	s->confirmed = false;
	if (EngineEligibleDirect(of->seller_id, of->category_s, &s->seller_eligible,
							 &s->category_eligible, &settings))
	{
		s->min_total = settings.min_total;
		s->max_milestones = settings.max_milestones;
		s->fee_rate = settings.fee_rate;
		s->confirmed = settings.confirmed;
	}
	else
	{
		static const ColumnSpec settings_columns[3] =
		{
			{"min_order_total", NUMERICOID, true}, {"max_milestones", INT4OID, true},
			{"seller_fee_rate", NUMERICOID, true}
		};

		values[0] = Int64GetDatum(of->seller_id);
		values[1] = PointerGetDatum(of->category);
		EngineExec(&settings_plan, values, NULL, SPI_OK_SELECT, 0);
		if (SPI_processed != 1)
			EngineSettingsRowsError((int) SPI_processed);
		ColumnsCheckResult(SPI_tuptable, 1, 1, "settings", settings_columns, 3);
		s->min_total = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		s->max_milestones = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		s->fee_rate = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		s->seller_eligible = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
		s->category_eligible = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull));
		/* 1.2's payment mode (a 1.1 database is recorded mode) */
		if (EnginePaymentsSchema())
		{
			EngineExec(&mode_setting_plan, NULL, NULL, SPI_OK_SELECT, 1);
			s->confirmed = SPI_processed == 1 &&
				DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) &&
				!isnull;
		}
	}
}

/*
 * OfferMilestoneKeys refuses (22023) milestone i when it has a key other
 * than name, days and amount, naming them all.
 */
static void
OfferMilestoneKeys(JsonbContainer *obj, int i)
{
	JsonbIterator *it;
	JsonbValue	kv;
	JsonbIteratorToken tok;
	StringInfoData bad;

	initStringInfo(&bad);
	it = JsonbIteratorInit(obj);
	while ((tok = JsonbIteratorNext(&it, &kv, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			char	   *k = pnstrdup(kv.val.string.val, kv.val.string.len);

			if (strcmp(k, "name") != 0 && strcmp(k, "days") != 0 && strcmp(k, "amount") != 0)
			{
				if (bad.len > 0)
					appendStringInfoString(&bad, ", ");
				appendStringInfoString(&bad, k);
			}
		}
	}
	if (bad.len > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("milestone %d has unknown keys", i),
				 errdetail("Unknown: %s.", pnstrdup(bad.data, pg_mbcharcliplen(bad.data, bad.len, 200))),
				 errhint("Each milestone has exactly name, days and amount.")));
}

/*
 * OfferMilestoneName returns milestone i's name as text: a JSON string of
 * 1..200 characters, not blank (22023 otherwise).
 */
static Datum
OfferMilestoneName(JsonbContainer *obj, int i)
{
	JsonbValue *v = JsonMember(obj, "name");
	char	   *name;

	if (v == NULL || v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("milestone %d needs a name (a JSON string)", i),
				 errdetail("Its name is a JSON %s.", JsonTypeName(v)),
				 errhint("Each milestone is {\"name\": \"...\", \"days\": N, \"amount\": \"0.00\"}.")));
	name = pnstrdup(v->val.string.val, v->val.string.len);
	{
		text	   *t = cstring_to_text(name);
		int			len = EngineTextLength(t);

		if (DatumGetBool(DirectFunctionCall2Coll(textregexne, DEFAULT_COLLATION_OID,
												 PointerGetDatum(t),
												 CStringGetTextDatum("[^[:space:]]"))) ||
			len > 200)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("milestone %d name must have 1 to 200 characters and not be blank", i),
					 errdetail("The name has %d characters.", len)));
		return PointerGetDatum(t);
	}
}

/*
 * OfferMilestoneDays returns milestone i's days as int2: a JSON number,
 * a whole number from 1 to 365 (22023 otherwise).
 */
static Datum
OfferMilestoneDays(JsonbContainer *obj, int i)
{
	JsonbValue *v = JsonMember(obj, "days");
	Datum		days;

	if (v == NULL || v->type != jbvNumeric)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("milestone %d needs days (a JSON number)", i),
				 errdetail("Its days is a JSON %s.", JsonTypeName(v)),
				 errhint("Each milestone is {\"name\": \"...\", \"days\": N, \"amount\": \"0.00\"}.")));
	days = NumericGetDatum(v->val.numeric);
	if (NumCmp(days, DirectFunctionCall2(numeric_trunc, days, Int32GetDatum(0))) != 0 ||
		NumCmp(days, NumericGetDatum(int64_to_numeric(1))) < 0 ||
		NumCmp(days, NumericGetDatum(int64_to_numeric(365))) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("milestone %d days must be a whole number from 1 to 365", i),
				 errdetail("Got %s.", LeftOut(days))));
	return DirectFunctionCall1(numeric_int2, days);
}

/*
 * OfferMilestoneAmount returns milestone i's amount as numeric: a JSON
 * number or decimal string, more than 0, at most 999999999.99, with at
 * most 2 decimals, never rounded (22023 otherwise).
 */
static Datum
OfferMilestoneAmount(JsonbContainer *obj, int i)
{
	JsonbValue *v = JsonMember(obj, "amount");
	Datum		amount;

	if (v != NULL && v->type == jbvNumeric)
		amount = NumericGetDatum(v->val.numeric);
	else if (v != NULL && v->type == jbvString)
	{
		char	   *raw = pnstrdup(v->val.string.val, v->val.string.len);

		if (!IsDecimalText(raw))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("milestone %d amount must be a decimal number", i),
					 errdetail("Got %s.", EngineQuoteLiteral(raw, 40)),
					 errhint("Send an amount such as \"150.00\".")));
		amount = NumConst(raw);
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("milestone %d needs an amount (a JSON number or string)", i),
				 errdetail("Its amount is a JSON %s.", JsonTypeName(v)),
				 errhint("Send the amount as a decimal string such as \"150.00\".")));
	if (NumCmp(amount, NumericGetDatum(int64_to_numeric(0))) <= 0 ||
		NumCmp(amount, NumConst("999999999.99")) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("milestone %d amount must be more than 0 and at most 999999999.99", i),
				 errdetail("Got %s.", LeftOut(amount))));
	if (NumCmp(amount, DirectFunctionCall2(numeric_round, amount, Int32GetDatum(2))) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("milestone %d amount has more than 2 decimals", i),
				 errdetail("Got %s.", EngineNumericOut(amount)),
				 errhint("Amounts are never rounded: send whole cents.")));
	return amount;
}

/*
 * OfferCheckMilestones checks the milestones argument (R1, R12): a JSON
 * array of 1..max_milestones objects, each with exactly a name, days and
 * an amount, checked in that order, milestone by milestone, so that the
 * first fault is the one reported (22023).
 */
static void
OfferCheckMilestones(Jsonb *milestones, int32 max_milestones, OfferMilestones *ms)
{
	int			n;
	int			i;

	if (JB_ROOT_IS_SCALAR(milestones) || !JB_ROOT_IS_ARRAY(milestones))
	{
		const char *type;

		if (JB_ROOT_IS_OBJECT(milestones))
			type = "object";
		else
		{
			JsonbValue	scalar;

			if (!JsonbExtractScalar(&milestones->root, &scalar))
				elog(ERROR, "milestones engine: unexpected JSON root");
			type = JsonTypeName(&scalar);
		}
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("milestones must be a JSON array"),
				 errdetail("Got a JSON %s.", type),
				 errhint("Send [{\"name\": \"Wireframes\", \"days\": 5, \"amount\": \"150.00\"}, ...].")));
	}
	n = JB_ROOT_COUNT(milestones);
	if (n < 1 || n > max_milestones || n > ENGINE_MAX_MILESTONES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an offer needs 1 to %d milestones", max_milestones),
				 errdetail("Got %d milestones.", n)));
	ms->n = n;

	ms->total = NumericGetDatum(int64_to_numeric(0));
	for (i = 1; i <= n; i++)
	{
		JsonbValue *e = getIthJsonbValueFromContainer(&milestones->root, i - 1);
		JsonbContainer *obj;
		Datum		amount;

		if (e == NULL || e->type != jbvBinary || JsonContainerIsArray(e->val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("milestone %d must be a JSON object", i),
					 errdetail("Got a JSON %s.", JsonTypeName(e))));
		obj = e->val.binary.data;
		OfferMilestoneKeys(obj, i);
		ms->names[i - 1] = OfferMilestoneName(obj, i);
		ms->days[i - 1] = OfferMilestoneDays(obj, i);
		amount = OfferMilestoneAmount(obj, i);
		ms->total = DirectFunctionCall2(numeric_add, ms->total, amount);
		ms->amounts[i - 1] = amount;
	}
}

/*
 * OfferCheckAllowed refuses an offer the settings do not allow: a total
 * not above min_order_total (22023, R2), a seller or a category not
 * eligible (0A000).
 */
static void
OfferCheckAllowed(const Offer *of, const OfferSettings *s, const OfferMilestones *ms)
{
	if (NumCmp(ms->total, s->min_total) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("milestone orders must total more than %s", EngineNumericOut(s->min_total)),
				 errdetail("The milestones total %s %s.", EngineNumericOut(ms->total), of->currency_s),
				 errhint("Milestones are for larger orders; send a regular offer instead.")));

	if (!s->seller_eligible)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("seller " INT64_FORMAT " cannot offer milestone orders", of->seller_id),
				 errdetail("Seller " INT64_FORMAT " is not eligible for milestones.", of->seller_id),
				 errhint("Support enables sellers with milestones.set_seller_eligibility().")));
	if (!s->category_eligible)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("category %s does not offer milestone orders", quote_literal_cstr(of->category_s)),
				 errdetail("Category %s is not eligible for milestones.", quote_literal_cstr(of->category_s)),
				 errhint("Support enables categories with milestones.set_category_eligibility().")));
}

/*
 * The order and its milestones (the order_id from the column default)
 * in one statement; one row per milestone written.  The event is a
 * statement of its own, after: the events trigger's fallback NOTIFY
 * builds its payload from the order row, which a trigger fired by the
 * same statement would not see.
 */
#define OFFER_CTES OFFER_CTES_MODE("", "")
/* $14: the payment mode, in the confirmed-mode variants (1.2) */
#define OFFER_CTES_MODE(mode_column, mode_value) \
	"WITH o AS (INSERT INTO milestones.orders (seller_id, buyer_id, category, currency," \
	" revisions_allowed, fee_rate, created_at" mode_column ") VALUES ($1, $2, $3, $4, $5, $6, $7" \
	mode_value ") RETURNING order_id)," \
	" m AS (INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)" \
	" SELECT o.order_id, x.ord, x.name, x.days, x.amount, x.ord OPERATOR(pg_catalog.=) $11" \
	" FROM o, ROWS FROM (pg_catalog.unnest($8), pg_catalog.unnest($9), pg_catalog.unnest($10))" \
	" WITH ORDINALITY AS x(name, days, amount, ord)" \
	" RETURNING position)"
#define OFFER_ARGTYPES \
	INT8OID, INT8OID, TEXTOID, TEXTOID, INT4OID, NUMERICOID, TIMESTAMPTZOID, \
	TEXTARRAYOID, INT2ARRAYOID, NUMERICARRAYOID, INT4OID

/*
 * OfferWrite writes the order and its milestones (and, with_event, the
 * 'offered' event with its detail) and declares the new rows to the commit
 * check (check.c).  Returns the new order's id.
 */
static int64
OfferWrite(const Offer *of, const OfferSettings *s, const OfferMilestones *ms,
		   StringInfo detail, bool with_event)
{
	int			n = ms->n;
	int64		order_id;
	bool		isnull;
	WriteFact	f;
	int			i;

	static EnginePlan offer_plan = {
		OFFER_CTES " SELECT o.order_id, m.position FROM o, m",
		11, {OFFER_ARGTYPES}
	};

	/*
	 * Where the relay serves this database, the events trigger only wakes
	 * it, so the 'offered' event ($12 its detail, $13 its time) is written
	 * by the same statement: one executor start fewer.  (The relay stops
	 * serving only when its database, this one, is dropped.)
	 */
	static EnginePlan offer_event_plan = {
		OFFER_CTES ","
		" e AS (INSERT INTO " EVENT_COLUMNS
		" SELECT o.order_id, NULL::pg_catalog.int2, 'offered', 'seller', $1, NULL::pg_catalog.text,"
		" 'offered', NULL::pg_catalog.text, $12, $13 FROM o RETURNING 1)"
		" SELECT o.order_id, m.position FROM o, m, e",
		13, {OFFER_ARGTYPES, JSONBOID, TIMESTAMPTZOID}
	};

	/* The same two for a confirmed-mode offer (1.2): the order's payment_mode. */
	static EnginePlan offer_confirmed_plan = {
		OFFER_CTES_MODE(", payment_mode", ", 'confirmed'") " SELECT o.order_id, m.position FROM o, m",
		11, {OFFER_ARGTYPES}
	};
	static EnginePlan offer_confirmed_event_plan = {
		OFFER_CTES_MODE(", payment_mode", ", 'confirmed'") ","
		" e AS (INSERT INTO " EVENT_COLUMNS
		" SELECT o.order_id, NULL::pg_catalog.int2, 'offered', 'seller', $1, NULL::pg_catalog.text,"
		" 'offered', NULL::pg_catalog.text, $12, $13 FROM o RETURNING 1)"
		" SELECT o.order_id, m.position FROM o, m, e",
		13, {OFFER_ARGTYPES, JSONBOID, TIMESTAMPTZOID}
	};

	{
		Datum		ovalues[13];
		char		onulls[13] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

		ovalues[0] = Int64GetDatum(of->seller_id);
		ovalues[1] = Int64GetDatum(of->buyer_id);
		ovalues[2] = PointerGetDatum(of->category);
		ovalues[3] = PointerGetDatum(of->currency);
		ovalues[4] = Int32GetDatum(of->revisions);
		if (of->revisionsnull)
			onulls[4] = 'n';
		ovalues[5] = s->fee_rate;
		ovalues[6] = TimestampTzGetDatum(MilestonesNow());
		ovalues[7] = PointerGetDatum(construct_array((Datum *) ms->names, n, TEXTOID, -1, false, TYPALIGN_INT));
		ovalues[8] = PointerGetDatum(construct_array((Datum *) ms->days, n, INT2OID, 2, true, TYPALIGN_SHORT));
		ovalues[9] = PointerGetDatum(construct_array((Datum *) ms->amounts, n, NUMERICOID, -1, false, TYPALIGN_INT));
		ovalues[10] = Int32GetDatum(n);
		ovalues[11] = EngineJsonb(JsonClose(detail));
		ovalues[12] = TimestampTzGetDatum(MilestonesNow());
		EngineExec(s->confirmed ? (with_event ? &offer_confirmed_event_plan : &offer_confirmed_plan) :
				   (with_event ? &offer_event_plan : &offer_plan), ovalues, onulls, SPI_OK_SELECT, 0);
	}
	if ((int) SPI_processed != n)
		elog(ERROR, "milestones engine: %d of %d milestones written", (int) SPI_processed, n);
	ColumnsCheckResult(SPI_tuptable, n, 1, "orders", &EngineOrderColumns[OC_ORDER_ID], 1);
	order_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	f = StateFact(FACT_ORDER, true, -1, ORDER_OFFERED, -1);
	CheckDeclare(order_id, &f);
	/* the milestones the engine wrote: positions 1..n (only the id is the statement's) */
	for (i = 0; i < n; i++)
	{
		if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)) != order_id)
			elog(ERROR, "milestones engine: offer written as two orders");
		f = StateFact(FACT_MILESTONE, true, -1, MS_PENDING, i + 1);
		CheckDeclare(order_id, &f);
	}
	return order_id;
}

/*
 * milestones_create_offer: a seller's custom offer with 1..max_milestones
 * milestones (R1, R2, R12).  Returns the new order's id, taken from the
 * orders.order_id column default.  The steps: the arguments (OfferCheckArgs),
 * the idempotency key (a retry returns the first result even if settings
 * changed since), the settings (OfferReadSettings), the milestones
 * (OfferCheckMilestones), what the settings allow (OfferCheckAllowed), the
 * write (OfferWrite), the event, the key's result.
 */
Datum
milestones_create_offer(PG_FUNCTION_ARGS)
{
	Offer		of;
	OfferSettings s;
	OfferMilestones ms;
	Datum		prev;
	StringInfoData detail;
	Datum		values[1];
	bool		isnull;
	int64		order_id;
	bool		with_event;
	EngineOrder *o = palloc0(sizeof(EngineOrder));

	of.seller_id = ARG_INT64(0, of.sellernull);
	of.buyer_id = ARG_INT64(1, of.buyernull);
	of.category = ARG_TEXT(2);
	of.milestones = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	of.revisionsnull = PG_ARGISNULL(4);
	of.revisions = of.revisionsnull ? 0 : PG_GETARG_INT32(4);
	of.currency = ARG_TEXT(5);
	of.key = ARG_TEXT(6);
	OfferCheckArgs(&of);

	EngineConnect();
	/* A retry returns the first result even if settings changed since. */
	if (EngineIdemClaim(of.key == NULL, of.key, "create_offer", OfferArgsJson(&of), &prev))
	{
		static EnginePlan id_plan = {"SELECT $1::pg_catalog.int8", 1, {JSONBOID}};

		values[0] = prev;
		EngineExec(&id_plan, values, NULL, SPI_OK_SELECT, 1);
		order_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		EngineFinish();
		if (isnull)
			PG_RETURN_NULL();
		PG_RETURN_INT64(order_id);
	}

	OfferReadSettings(&of, &s);
	OfferCheckMilestones(of.milestones, s.max_milestones, &ms);
	OfferCheckAllowed(&of, &s, &ms);

	initStringInfo(&detail);
	JsonAddInt(&detail, "milestones", false, ms.n);
	JsonAddNumeric(&detail, "total", ms.total);
	JsonAddInt(&detail, "revisions", of.revisionsnull, of.revisions);
	with_event = RelayServesThisDatabase();
	order_id = OfferWrite(&of, &s, &ms, &detail, with_event);
	o->order_id = order_id;
	o->state = ORDER_OFFERED;
	if (!with_event)
		EngineEvent(o, -1, "offered", "seller", false, of.seller_id, NULL, -1, detail.data);

	if (of.key != NULL)
	{
		char		buf[32];

		snprintf(buf, sizeof(buf), INT64_FORMAT, order_id);
		EngineIdemStore(of.key, EngineJsonb(buf));
	}
	EngineFinish();
	PG_RETURN_INT64(order_id);
}

/*
 * CancelMilestoneTarget returns the milestone cancel_milestone ends, once
 * the order is locked: it refuses (55000) an order that is not active, or
 * whose current milestone's window closed or whose charge is past its
 * pay_by (the sweep will end it), a position with no milestone (P0002),
 * and a milestone that has already ended (55000).
 */
static EngineMilestone *
CancelMilestoneTarget(EngineOrder *o, int64 order_id, int32 position)
{
	EngineMilestone *m = NULL;
	EngineMilestone *cur;
	int			i;

	if (o->state != ORDER_ACTIVE)
	{
		const char *state = StateName(&OrderMachine, o->state);

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cancel_milestone is not allowed: order " INT64_FORMAT " is %s%s%s%s", order_id,
						state, o->reason ? " (" : "", o->reason ? o->reason : "", o->reason ? ")" : ""),
				 errdetail("cancel_milestone needs an active order; order " INT64_FORMAT " is %s.", order_id, state),
				 errhint("%s", o->state == ORDER_OFFERED ?
						 "An offer is ended whole: support calls milestones.cancel(), the seller withdraw_offer() or the buyer decline_offer()." :
						 "An ended order never changes again. milestones.cancel() ends a whole order; withdraw_offer() and decline_offer() end an offer.")));
	}
	EngineReadMilestones(o);
	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].position == position)
			m = &o->ms[i];
	if (m == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("milestone %d of order " INT64_FORMAT " does not exist", position, order_id),
				 errdetail("Order " INT64_FORMAT " has milestones 1 to %d.", order_id, o->nmilestones)));
	cur = o->current >= 0 ? &o->ms[o->current] : NULL;
	if (cur != NULL && cur->state == MS_DELIVERED && MilestonesNow() >= cur->respond_by)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cancel_milestone is not allowed: order " INT64_FORMAT " has expired", order_id),
				 errdetail("Milestone %d was delivered at %s and the buyer's window closed at %s.",
						   cur->position, EngineTimestampOut(cur->delivered_at_null, cur->delivered_at),
						   EngineTimestampOut(cur->respond_by_null, cur->respond_by)),
				 errhint("The order is in effect completed as expired; the expiry sweep records it.")));
	/* Confirmed mode: a charge past its pay_by, as the sweep leaves it. */
	if (PaymentsDeadlinePassed(o))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cancel_milestone is not allowed: order " INT64_FORMAT " is unpaid", order_id),
				 errdetail("Charge " INT64_FORMAT " of milestone %d had to be paid by %s.",
						   o->charge_id, o->ms[o->awaiting].position, EngineTimestampOut(false, o->pay_by)),
				 errhint("The order is in effect completed as unpaid; the expiry sweep records it.")));
	if (m->state != MS_PENDING && m->state != MS_IN_PROGRESS && m->state != MS_DELIVERED &&
		m->state != MS_AWAITING_PAYMENT)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cancel_milestone is not allowed: milestone %d of order " INT64_FORMAT " is %s",
						m->position, order_id, StateName(&MilestoneMachine, m->state)),
				 errdetail("Milestone %d (%s) has ended as %s; only a pending, in-progress or delivered milestone can be cancelled.",
						   m->position, m->name, StateName(&MilestoneMachine, m->state)),
				 errhint("See milestones.milestone_status for the order's milestones.")));
	return m;
}

/*
 * CancelMilestoneEndOrder ends the order exactly as cancel ends it, when
 * cancel_milestone ended its last milestone not cancelled: the order is
 * cancelled for the reason, settled (LedgerSettle), and the payout goes
 * into the event's detail.
 */
static void
CancelMilestoneEndOrder(EngineOrder *o, int64 order_id, text *reason, text *agent,
						text *note, const char *reason_s, StringInfo detail)
{
	static EnginePlan cancel_plan = {
		"UPDATE milestones.orders SET state = 'cancelled', cancel_reason = $2, cancelled_by = $3,"
		" cancel_note = $4, completed_at = $5 WHERE order_id OPERATOR(pg_catalog.=) $1",
		5, {INT8OID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID}
	};
	StringInfoData payout;
	Datum		ovalues[5];
	char		onulls[5] = {' ', ' ', ' ', ' ', ' '};

	ovalues[0] = Int64GetDatum(order_id);
	ovalues[1] = PointerGetDatum(reason);
	ovalues[2] = PointerGetDatum(agent);
	ovalues[3] = note ? PointerGetDatum(note) : (Datum) 0;
	if (note == NULL)
		onulls[3] = 'n';
	ovalues[4] = TimestampTzGetDatum(MilestonesNow());
	EngineExec(&cancel_plan, ovalues, onulls, SPI_OK_UPDATE, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " not cancelled", order_id);
	EngineSetOrder(o, ORDER_CANCELLED, true);
	EngineSetEnded(o, NULL, reason_s, DatumGetTimestampTz(ovalues[4]));
	initStringInfo(&payout);
	LedgerSettle(o, &payout);
	JsonAddKey(detail, "payout");
	appendStringInfoString(detail, payout.data);
}

/*
 * milestones_cancel_milestone: customer support ends one milestone of an
 * active order for a listed reason, and the order goes on (R10b, SPEC
 * section 8).  A pending milestone is cancelled (never charged); the
 * running one (in progress, or delivered with its window open) is
 * refunded and the next pending milestone is charged and started as on
 * accept -- or, when none is left, the order ends exactly as cancel ends
 * it.  The behaviour of issue 11's PL/pgSQL version, message for message.
 */
Datum
milestones_cancel_milestone(PG_FUNCTION_ARGS)
{
	MemoryContext caller = CurrentMemoryContext;
	bool		idnull;
	int64		order_id = ARG_INT64(0, idnull);
	bool		posnull = PG_ARGISNULL(1);
	int32		position = posnull ? 0 : PG_GETARG_INT32(1);
	text	   *agent = ARG_TEXT(2);
	text	   *reason = ARG_TEXT(3);
	text	   *note = ARG_TEXT(4);
	text	   *key = ARG_TEXT(5);
	EngineOrder *o = palloc(sizeof(EngineOrder));
	EngineMilestone *m = NULL;
	EngineMilestone *next = NULL;
	Datum		result;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	char	   *reason_s;
	char	   *agent_s;
	int			i;
	int			final = -1;
	Datum		total = (Datum) 0;
	Datum		refunded = NumericGetDatum(int64_to_numeric(0));
	Datum		charged = NumericGetDatum(int64_to_numeric(0));
	StringInfoData args;
	StringInfoData detail;
	static EnginePlan end_milestone_plan = {
		"UPDATE milestones.order_milestones SET state = $3, cancel_reason = $4,"
		" cancelled_by = $5, cancel_note = $6"
		" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $2",
		6, {INT8OID, INT2OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID}
	};

	EngineRefuseOnStandby("cancel_milestone");
	if (idnull || order_id <= 0)
		EngineCheckId(idnull, order_id, "order_id");
	EngineNotNull(posnull, "position");
	if (position < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("position must be 1 or more"),
				 errdetail("Got %d; milestones are numbered from 1.", position)));
	EngineCheckText(agent == NULL, agent, "agent", 200, true);
	EngineNotNull(reason == NULL, "reason");
	CheckNote(note);
	reason_s = text_to_cstring(reason);
	agent_s = text_to_cstring(agent);
	EngineConnect();
	initStringInfo(&args);
	JsonAddInt(&args, "order_id", false, order_id);
	JsonAddInt(&args, "position", false, position);
	JsonAddText(&args, "agent", agent_s);
	JsonAddText(&args, "reason", reason_s);
	JsonAddText(&args, "note", note ? text_to_cstring(note) : NULL);
	if (EngineRetried(fcinfo, caller, key, "cancel_milestone", JsonClose(&args), &result))
		PG_RETURN_DATUM(result);
	/* After the key: a retry succeeds even if the reason was retired since. */
	CheckReason(reason, reason_s);
	EngineLockOrder(o, order_id, 0, "support");
	m = CancelMilestoneTarget(o, order_id, position);

	initStringInfo(&detail);
	/* Confirmed mode: the charge of a milestone awaiting payment is voided. */
	if (m->state == MS_AWAITING_PAYMENT)
		PaymentsVoid(o, "milestone_cancelled", MilestonesNow(), "support", true, 0, agent_s);
	values[0] = Int64GetDatum(order_id);
	values[1] = Int16GetDatum((int16) m->position);
	values[2] = CStringGetTextDatum(m->state == MS_PENDING || m->state == MS_AWAITING_PAYMENT ?
									"cancelled" : "refunded");
	values[3] = PointerGetDatum(reason);
	values[4] = PointerGetDatum(agent);
	values[5] = note ? PointerGetDatum(note) : (Datum) 0;
	if (note == NULL)
		nulls[5] = 'n';
	EngineExec(&end_milestone_plan, values, nulls, SPI_OK_UPDATE, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " not cancelled",
			 m->position, order_id);
	if (m->state == MS_PENDING)
		/* Never charged: nothing moves.  The order goes on as it was. */
		EngineSetMilestone(o, m, MS_CANCELLED);
	else
	{
		if (m->state == MS_AWAITING_PAYMENT)
		{
			/* Never paid: nothing to refund; the next one is charged instead. */
			EngineSetMilestone(o, m, MS_CANCELLED);
			o->awaiting = -1;
		}
		else
		{
			/* The running milestone: its charge goes back to the buyer. */
			static const char *const accounts[] = {"escrow", "buyer"};
			Datum		amounts[2];

			EngineSetMilestone(o, m, MS_REFUNDED);
			if (o->confirmed)
				PaymentsRefundMilestone(o, m, "milestone_cancelled", agent_s);
			else
			{
				amounts[0] = DirectFunctionCall1(numeric_uminus, m->amount);
				amounts[1] = m->amount;
				LedgerPost(o, m->position, "refund", accounts, amounts, 2);
			}
			refunded = m->amount;
		}
		for (i = 0; i < o->nmilestones; i++)
			if (o->ms[i].state == MS_PENDING && (next == NULL || o->ms[i].position < next->position))
				next = &o->ms[i];
		if (next != NULL && o->confirmed)
			PaymentsRequest(o, next, "support", true, 0);	/* it starts when paid */
		else if (next != NULL)
			charged = LedgerStart(o, next);
		else
		{
			/* Nothing left: the order ends exactly as cancel ends it. */
			CancelMilestoneEndOrder(o, order_id, reason, agent, note, reason_s, &detail);
		}
	}

	/* final: the last milestone not cancelled; total: what they add up to */
	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].state != MS_CANCELLED)
		{
			if (o->ms[i].position > final)
				final = o->ms[i].position;
			total = total == (Datum) 0 ? o->ms[i].amount :
				DirectFunctionCall2(numeric_add, total, o->ms[i].amount);
		}
	if (total == (Datum) 0)
		total = NumericGetDatum(int64_to_numeric(0));
	JsonAddText(&detail, "reason", reason_s);
	JsonAddText(&detail, "note", NoteLeft(note));
	JsonAddNumeric(&detail, "amount", m->amount);
	JsonAddNumeric(&detail, "refunded", refunded);
	JsonAddInt(&detail, "next", next == NULL, next ? next->position : 0);
	JsonAddNumeric(&detail, "charged", charged);
	JsonAddInt(&detail, "final", final < 0, final);
	JsonAddNumeric(&detail, "total", total);
	result = EngineEventStatus(fcinfo, caller, o, m->position, "milestone_cancelled", "support", true, 0,
							   agent_s, m->state, JsonClose(&detail), key);
	EngineFinish();
	PG_RETURN_DATUM(result);
}
