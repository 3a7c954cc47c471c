/*-------------------------------------------------------------------------
 *
 * src/ledger.c
 *		The engine's money: balanced ledger transactions, the end of an
 *		order and its payout.
 *
 * Every movement is one ledger transaction whose legs sum to zero
 * (SPEC section 4); each leg is declared to the commit check (check.c)
 * with its kind, account, position and amount as the engine computed them
 * before the statement ran, and the transaction id the statement drew, so
 * an order the engine alone wrote needs no query at commit, and a leg
 * written otherwise than computed (a trigger that changed it) does not
 * match its declaration.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/numeric.h"

#include "engine.h"

static EnginePlan post_plan = {
	"WITH t AS (SELECT pg_catalog.nextval('milestones.ledger_txn_id_seq'::pg_catalog.regclass) AS txn)"
	" INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount,"
	" currency, created_at)"
	" SELECT t.txn, $1, $2, $3, a.account, a.amount, $4, $5"
	" FROM t, (VALUES (1, $6, $7), (2, $8, $9), (3, $10, $11)) AS a(n, account, amount)"
	" WHERE a.amount OPERATOR(pg_catalog.<>) 0"
	" RETURNING txn_id, account, amount",
	11, {INT8OID, INT2OID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
	TEXTOID, NUMERICOID, TEXTOID, NUMERICOID, TEXTOID, NUMERICOID}
};

/*
 * LedgerLegsInit computes the legs of one ledger transaction from the
 * engine's amounts, before anything is written: zero legs are left out
 * (the statements skip them), every amount must be whole cents, and the
 * legs must balance.
 */
static void
LedgerLegsInit(LedgerLegs *legs, EngineOrder *o, int position, const char *kind,
			   const char *const *accounts, Datum *amounts, int nlegs)
{
	int64		sum = 0;
	int			i;

	legs->nlegs = 0;
	legs->position = position < 0 ? -1 : position;
	legs->kind = LedgerCode(LedgerKinds, kind);
	for (i = 0; i < nlegs; i++)
	{
		bool		exact;
		int64		cents = NumericToCents(amounts[i], &exact);

		if (!exact)
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("ledger amount %s of order " INT64_FORMAT " is not a whole number of cents",
							EngineNumericOut(amounts[i]), o->order_id),
					 errdetail("Money is numeric with two decimals; the %s leg of the %s cannot be booked.",
							   accounts[i], kind),
					 errhint("Check the order's milestone amounts and fee rate.")));
		if (cents == 0)
			continue;
		legs->account[legs->nlegs] = LedgerCode(LedgerAccounts, accounts[i]);
		legs->cents[legs->nlegs] = cents;
		legs->nlegs++;
		sum += cents;
	}
	if (sum != 0)
		elog(ERROR, "milestones engine: ledger transaction of order " INT64_FORMAT " does not balance",
			 o->order_id);
}

/*
 * LedgerPost writes one balanced ledger transaction of up to three legs
 * (zero legs omitted, as 1.0's _post); position < 0 is NULL.  Returns the
 * transaction id, or 0 when every leg was zero.
 */
int64
LedgerPost(EngineOrder *o, int position, const char *kind,
		   const char *const *accounts, Datum *amounts, int nlegs)
{
	Datum		values[11];
	char		nulls[11];
	int			i;
	LedgerLegs	legs;

	Assert(nlegs >= 1 && nlegs <= 3);
	LedgerLegsInit(&legs, o, position, kind, accounts, amounts, nlegs);
	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int16GetDatum((int16) position);
	if (position < 0)
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(kind);
	values[3] = CStringGetTextDatum(o->currency);
	values[4] = TimestampTzGetDatum(MilestonesNow());
	for (i = 0; i < 3; i++)
	{
		if (i < nlegs)
		{
			values[5 + 2 * i] = CStringGetTextDatum(accounts[i]);
			values[6 + 2 * i] = amounts[i];
		}
		else
		{
			values[5 + 2 * i] = values[6 + 2 * i] = (Datum) 0;
			nulls[5 + 2 * i] = nulls[6 + 2 * i] = 'n';
		}
	}
	EngineExec(&post_plan, values, nulls, SPI_OK_INSERT_RETURNING, 0);
	return LedgerDeclare(o, &legs);
}

static EnginePlan post_charge_plan = {
	"WITH t AS (SELECT pg_catalog.nextval('milestones.ledger_txn_id_seq'::pg_catalog.regclass) AS txn)"
	" INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount,"
	" currency, created_at, charge_id, charge_attempt)"
	" SELECT t.txn, $1, $2, $3, a.account, a.amount, $4, $5, $8, $9"
	" FROM t, (VALUES (1, 'buyer', $6), (2, 'escrow', $7)) AS a(n, account, amount)"
	" RETURNING txn_id, account, amount",
	9, {INT8OID, INT2OID, TEXTOID, TEXTOID, TIMESTAMPTZOID, NUMERICOID, NUMERICOID, INT8OID, INT4OID}
};

/*
 * LedgerPostCharge writes the ledger transaction of one charge attempt of
 * a confirmed-mode order (SPEC section 11): kind "charge" moves amount from
 * the buyer into escrow (the provider's success booked), kind "refund"
 * moves it back; both legs carry the charge and the attempt.  Returns the
 * transaction id.
 */
int64
LedgerPostCharge(EngineOrder *o, int position, const char *kind, Datum amount,
				 int64 charge_id, int32 attempt)
{
	Datum		values[9];
	Datum		minus = DirectFunctionCall1(numeric_uminus, amount);
	bool		charge = strcmp(kind, "charge") == 0;
	const char *const accounts[2] = {"buyer", "escrow"};
	Datum		amounts[2];
	LedgerLegs	legs;

	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int16GetDatum((int16) position);
	values[2] = CStringGetTextDatum(kind);
	values[3] = CStringGetTextDatum(o->currency);
	values[4] = TimestampTzGetDatum(MilestonesNow());
	amounts[0] = charge ? minus : amount;	/* buyer */
	amounts[1] = charge ? amount : minus;	/* escrow */
	LedgerLegsInit(&legs, o, position, kind, accounts, amounts, 2);
	if (legs.nlegs != 2)
		elog(ERROR, "milestones engine: charge %lld of order " INT64_FORMAT " has no amount",
			 (long long) charge_id, o->order_id);
	values[5] = amounts[0];
	values[6] = amounts[1];
	values[7] = Int64GetDatum(charge_id);
	values[8] = Int32GetDatum(attempt);
	EngineExec(&post_charge_plan, values, NULL, SPI_OK_INSERT_RETURNING, 0);
	if (SPI_processed != 2)
		elog(ERROR, "milestones engine: charge %lld attempt %d of order " INT64_FORMAT " not booked",
			 (long long) charge_id, attempt, o->order_id);
	return LedgerDeclare(o, &legs);
}

/*
 * LedgerWriteLegs sets the ledger transaction of a combined write
 * statement ($11-$19 of WRITE_POST_CTE), as LedgerPost takes it, and
 * computes its legs (w->legs) for LedgerDeclare.
 */
void
LedgerWriteLegs(EngineWrite *w, EngineOrder *o, int position, const char *kind,
				const char *const *accounts, Datum *amounts, int nlegs)
{
	int			i;

	Assert(nlegs >= 1 && nlegs <= 3);
	LedgerLegsInit(&w->legs, o, position, kind, accounts, amounts, nlegs);
	EngineWriteSet(w, 11, Int16GetDatum((int16) position), position < 0);
	EngineWriteSet(w, 12, CStringGetTextDatum(kind), false);
	EngineWriteSet(w, 13, CStringGetTextDatum(o->currency), false);
	for (i = 0; i < 3; i++)
	{
		EngineWriteSet(w, 14 + 2 * i, i < nlegs ? CStringGetTextDatum(accounts[i]) : (Datum) 0, i >= nlegs);
		EngineWriteSet(w, 15 + 2 * i, i < nlegs ? amounts[i] : (Datum) 0, i >= nlegs);
	}
}

/* The column of the legs a statement returns that LedgerDeclare reads. */
static const ColumnSpec leg_txn_column = {"txn_id", INT8OID, false};

/*
 * LedgerDeclare declares to the commit check the legs the engine computed
 * (LedgerLegsInit), under the transaction id the last statement drew: the
 * first non-NULL value of its first column (its rows' txn_id; a row with a
 * NULL there is not a leg).  Nothing else is taken from the statement: a
 * leg it wrote otherwise does not match, and the order gets the full
 * check.  Returns the transaction id, or 0 when no leg was written.
 */
int64
LedgerDeclare(EngineOrder *o, const LedgerLegs *legs)
{
	uint64		r;
	int64		txn = 0;
	int			i;

	ColumnsCheckResult(SPI_tuptable, SPI_processed, 1, "ledger_entries", &leg_txn_column, 1);
	for (r = 0; r < SPI_processed && txn == 0; r++)
	{
		bool		isnull;
		Datum		id = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			txn = DatumGetInt64(id);
	}
	for (i = 0; i < legs->nlegs; i++)
	{
		WriteFact	f;

		memset(&f, 0, sizeof(f));
		f.table = FACT_LEDGER;
		f.insert = 1;
		f.from = f.to = -1;
		f.position = legs->position;
		f.kind = legs->kind;
		f.account = legs->account[i];
		f.txn = txn;
		f.cents = legs->cents[i];
		CheckDeclare(o->order_id, &f);
	}
	return txn;
}

static EnginePlan skip_plan = {
	"UPDATE milestones.order_milestones SET state = 'skipped'"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'pending'"
	" RETURNING position",
	1, {INT8OID}
};
static EnginePlan skip_awaiting_plan = {
	"UPDATE milestones.order_milestones SET state = 'skipped'"
	" WHERE order_id OPERATOR(pg_catalog.=) $1"
	" AND state OPERATOR(pg_catalog.=) ANY ('{pending,awaiting_payment}'::pg_catalog.text[])"
	" RETURNING position",
	1, {INT8OID}
};

/*
 * LedgerSkipPending skips the order's pending milestones, and a milestone
 * awaiting payment (confirmed mode), as an order that ends never charges
 * them; returns how many.
 */
int
LedgerSkipPending(EngineOrder *o)
{
	Datum		values[1];
	uint64		r;
	int			i;
	int			expected = 0;

	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].state == MS_PENDING || o->ms[i].state == MS_AWAITING_PAYMENT)
			expected++;
	values[0] = Int64GetDatum(o->order_id);
	EngineExec(o->awaiting >= 0 ? &skip_awaiting_plan : &skip_plan, values, NULL,
			   SPI_OK_UPDATE_RETURNING, 0);
	ColumnsCheckResult(SPI_tuptable, SPI_processed, 1, "order_milestones",
					   &EngineMilestoneColumns[MC_POSITION], 1);
	if ((int) SPI_processed != expected)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " skipped %d milestones, expected %d",
			 o->order_id, (int) SPI_processed, expected);
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int			pos = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 1, &isnull));

		for (i = 0; i < o->nmilestones; i++)
			if (o->ms[i].position == pos &&
				(o->ms[i].state == MS_PENDING || o->ms[i].state == MS_AWAITING_PAYMENT))
			{
				EngineSetMilestone(o, &o->ms[i], MS_SKIPPED);
				break;
			}
		if (i == o->nmilestones)
			elog(ERROR, "milestones engine: skipped an unexpected milestone %d of order " INT64_FORMAT,
				 pos, o->order_id);
	}
	o->awaiting = -1;
	return expected;
}

/*
 * LedgerSettle records the payout of an ended order (R7, 1.0's _settle):
 * escrow pays the seller the net and the platform the fee; nothing is
 * posted for a zero gross.  Appends {"gross", "fee", "net"} to detail.
 */
void
LedgerSettle(EngineOrder *o, StringInfo detail)
{
	Numeric		raw = NULL;
	Numeric		gross;
	Numeric		fee;
	Numeric		net;
	int			i;

	/* sum(amount) of the completed milestones, or 0 when there is none */
	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].state == MS_COMPLETED)
			raw = raw == NULL ? DatumGetNumeric(o->ms[i].amount) :
				DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(raw),
													o->ms[i].amount));
	if (raw == NULL)
		raw = int64_to_numeric(0);
	PayoutAmounts(raw, DatumGetNumeric(o->fee_rate), &gross, &fee, &net);
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(gross),
										  NumericGetDatum(int64_to_numeric(0)))) > 0)
	{
		static const char *const accounts[] = {"escrow", "seller", "platform"};
		Datum		amounts[3];

		amounts[0] = DirectFunctionCall1(numeric_uminus, NumericGetDatum(gross));
		amounts[1] = NumericGetDatum(net);
		amounts[2] = NumericGetDatum(fee);
		LedgerPost(o, -1, "payout", accounts, amounts, 3);
		/* Confirmed mode: the net becomes the seller's pending earning. */
		if (o->confirmed)
			EarningsCredit(o, net, o->completed_at);
	}
	JsonAddNumeric(detail, "gross", NumericGetDatum(gross));
	JsonAddNumeric(detail, "fee", NumericGetDatum(fee));
	JsonAddNumeric(detail, "net", NumericGetDatum(net));
	appendStringInfoChar(detail, '}');
}

/*
 * complete_plan: $26 lists the positions the order's picture (read under
 * its lock) says the UPDATE of the milestones touches, m and the pending
 * ones; the statement still tests each row.  As an index condition on the
 * primary key it makes the generic plan one index scan even without
 * statistics (on order_id alone it was a bitmap scan).
 */
static EnginePlan complete_plan = {
	"WITH " WRITE_EVENT_CTE ","
	" o AS (UPDATE milestones.orders SET state = 'completed', end_reason = $22, completed_at = $23"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 RETURNING 1),"
	" s AS (UPDATE milestones.order_milestones"
	" SET state = CASE WHEN position OPERATOR(pg_catalog.=) $20 THEN 'completed' ELSE 'skipped' END,"
	" completed_at = CASE WHEN position OPERATOR(pg_catalog.=) $20 THEN $23 ELSE completed_at END"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) ANY ($26)"
	" AND (position OPERATOR(pg_catalog.=) $20 OR state OPERATOR(pg_catalog.=) 'pending')"
	" RETURNING position), "
	WRITE_POST_CTE
	" SELECT l.txn_id, l.account, l.amount, x.done, x.skipped"
	" FROM e CROSS JOIN o CROSS JOIN"
	" (SELECT pg_catalog.count(*) FILTER (WHERE s.position OPERATOR(pg_catalog.=) $20) AS done,"
	" pg_catalog.count(*) FILTER (WHERE s.position OPERATOR(pg_catalog.<>) $20) AS skipped FROM s) x"
	" LEFT JOIN l ON true",
	ENGINE_WRITE_ARGS, ENGINE_WRITE_ARGTYPES
};

/*
 * LedgerCompletePrepare computes the end of an active order whose current
 * milestone m is delivered (1.0's _complete), before anything is written:
 * m completes, the pending milestones are skipped, and the seller is paid
 * what the completed milestones (m among them) earned (R7, 1.0's _settle).
 * Appends the event's {"skipped", "payout"} members to detail (left open
 * for the caller's further members).  accept (of the last milestone), stop
 * and the expiry sweep all end here, then write with LedgerCompleteWrite.
 */
void
LedgerCompletePrepare(EngineOrder *o, EngineMilestone *m, StringInfo detail, LedgerPayout *p)
{
	Numeric		raw = DatumGetNumeric(m->amount);
	StringInfoData payout;
	int			i;

	p->skipped = 0;
	for (i = 0; i < o->nmilestones; i++)
	{
		if (o->ms[i].state == MS_PENDING)
			p->skipped++;
		if (o->ms[i].state == MS_COMPLETED)
			raw = DatumGetNumeric(DirectFunctionCall2(numeric_add, NumericGetDatum(raw),
													  o->ms[i].amount));
	}
	PayoutAmounts(raw, DatumGetNumeric(o->fee_rate), &p->gross, &p->fee, &p->net);
	JsonAddInt(detail, "skipped", false, p->skipped);
	initStringInfo(&payout);
	JsonAddNumeric(&payout, "gross", NumericGetDatum(p->gross));
	JsonAddNumeric(&payout, "fee", NumericGetDatum(p->fee));
	JsonAddNumeric(&payout, "net", NumericGetDatum(p->net));
	appendStringInfoChar(&payout, '}');
	JsonAddKey(detail, "payout");
	appendStringInfoString(detail, payout.data);
}

/*
 * LedgerCompleteWrite writes what LedgerCompletePrepare computed, with the
 * event the caller set in w, in one statement: the order completes for
 * reason at the time at, m completes, the pending milestones are skipped,
 * and the payout is posted (nothing for a zero gross).  Then declares the
 * writes to the commit check.
 */
void
LedgerCompleteWrite(EngineOrder *o, EngineMilestone *m, const char *reason, TimestampTz at,
					EngineWrite *w, LedgerPayout *p)
{
	int			i;
	int			n = 0;
	Datum	   *positions = palloc(sizeof(Datum) * (o->nmilestones + 1));

	positions[n++] = Int16GetDatum((int16) m->position);
	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].state == MS_PENDING)
			positions[n++] = Int16GetDatum((int16) o->ms[i].position);
	EngineWriteSet(w, WP_POSITIONS,
				   PointerGetDatum(construct_array(positions, n, INT2OID, sizeof(int16), true,
												   TYPALIGN_SHORT)), false);
	EngineWriteSet(w, WP_POS_A, Int16GetDatum((int16) m->position), false);
	EngineWriteSet(w, WP_TEXT, CStringGetTextDatum(reason), false);
	EngineWriteSet(w, WP_AT, TimestampTzGetDatum(at), false);
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(p->gross),
										  NumericGetDatum(int64_to_numeric(0)))) > 0)
	{
		static const char *const accounts[] = {"escrow", "seller", "platform"};
		Datum		amounts[3];

		amounts[0] = DirectFunctionCall1(numeric_uminus, NumericGetDatum(p->gross));
		amounts[1] = NumericGetDatum(p->net);
		amounts[2] = NumericGetDatum(p->fee);
		LedgerWriteLegs(w, o, -1, "payout", accounts, amounts, 3);
	}
	EngineWriteExec(&complete_plan, w);
	if (EngineResultInt(4) != 1 || EngineResultInt(5) != p->skipped)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " completed %d milestones, expected %d",
			 o->order_id, (int) (EngineResultInt(4) + EngineResultInt(5)), p->skipped + 1);
	EngineSetMilestone(o, m, MS_COMPLETED);
	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].state == MS_PENDING)
			EngineSetMilestone(o, &o->ms[i], MS_SKIPPED);
	EngineSetOrder(o, ORDER_COMPLETED, true);
	EngineSetEnded(o, reason, NULL, at);
	LedgerDeclare(o, &w->legs);
	/* Confirmed mode: the net becomes the seller's pending earning. */
	if (o->confirmed && DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(p->net),
														  NumericGetDatum(int64_to_numeric(0)))) > 0)
		EarningsCredit(o, p->net, at);
}

static EnginePlan start_plan = {
	"UPDATE milestones.order_milestones SET state = 'in_progress', started_at = $3,"
	" due_at = pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', $3)"
	" OPERATOR(pg_catalog.+) pg_catalog.make_interval(days => days))"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $2"
	" RETURNING due_at",
	3, {INT8OID, INT2OID, TIMESTAMPTZOID}
};

/*
 * LedgerStart starts a pending milestone and charges the buyer for it
 * (R3, R4; 1.0's _start): due_at is computed in UTC, so the caller's
 * TimeZone (DST) cannot stretch or shrink it.  Returns the amount charged:
 * the milestone's amount as read under the order's lock.
 */
Datum
LedgerStart(EngineOrder *o, EngineMilestone *m)
{
	static const char *const accounts[] = {"buyer", "escrow"};
	Datum		values[3];
	Datum		amounts[2];
	Datum		amount = m->amount;

	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int16GetDatum((int16) m->position);
	values[2] = TimestampTzGetDatum(MilestonesNow());
	EngineExec(&start_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " not started",
			 m->position, o->order_id);
	ColumnsCheckResult(SPI_tuptable, 1, 1, "order_milestones", &EngineMilestoneColumns[MC_DUE_AT], 1);
	m->due_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												  &m->due_at_null));
	EngineSetMilestone(o, m, MS_IN_PROGRESS);
	amounts[0] = DirectFunctionCall1(numeric_uminus, amount);
	amounts[1] = amount;
	LedgerPost(o, m->position, "charge", accounts, amounts, 2);
	return amount;
}
