/*-------------------------------------------------------------------------
 *
 * src/ledger.c
 *		The engine's money: balanced ledger transactions, the end of an
 *		order and its payout.
 *
 * Every movement is one ledger transaction whose legs sum to zero
 * (SPEC section 4); each leg written is declared to the commit check
 * (check.c) with its transaction, kind, account and amount, so an order
 * the engine alone wrote needs no query at commit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
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
	uint64		r;
	int64		txn = 0;
	int64		sum = 0;

	Assert(nlegs >= 1 && nlegs <= 3);
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
	for (r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		bool		exact;
		WriteFact	f;

		memset(&f, 0, sizeof(f));
		f.table = FACT_LEDGER;
		f.insert = 1;
		f.from = f.to = -1;
		f.position = position < 0 ? -1 : position;
		f.kind = LedgerCode(LedgerKinds, kind);
		f.txn = txn = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		f.account = LedgerCode(LedgerAccounts, SPI_getvalue(tup, desc, 2));
		f.cents = NumericToCents(SPI_getbinval(tup, desc, 3, &isnull), &exact);
		if (!exact)
			elog(ERROR, "milestones engine: ledger amount of order " INT64_FORMAT " is not in cents",
				 o->order_id);
		sum += f.cents;
		CheckDeclare(o->order_id, &f);
	}
	if (sum != 0)
		elog(ERROR, "milestones engine: ledger transaction of order " INT64_FORMAT " does not balance",
			 o->order_id);
	return txn;
}

static EnginePlan skip_plan = {
	"UPDATE milestones.order_milestones SET state = 'skipped'"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'pending'"
	" RETURNING position",
	1, {INT8OID}
};

/*
 * LedgerSkipPending skips the order's pending milestones (an order that
 * ends never charges them) and returns how many.
 */
int
LedgerSkipPending(EngineOrder *o)
{
	Datum		values[1];
	uint64		r;
	int			i;
	int			expected = 0;

	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].state == MS_PENDING)
			expected++;
	values[0] = Int64GetDatum(o->order_id);
	EngineExec(&skip_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	if ((int) SPI_processed != expected)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " skipped %d milestones, expected %d",
			 o->order_id, (int) SPI_processed, expected);
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int			pos = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 1, &isnull));

		for (i = 0; i < o->nmilestones; i++)
			if (o->ms[i].position == pos && o->ms[i].state == MS_PENDING)
			{
				EngineSetMilestone(o, &o->ms[i], MS_SKIPPED);
				break;
			}
		if (i == o->nmilestones)
			elog(ERROR, "milestones engine: skipped an unexpected milestone %d of order " INT64_FORMAT,
				 pos, o->order_id);
	}
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
	}
	JsonAddNumeric(detail, "gross", NumericGetDatum(gross));
	JsonAddNumeric(detail, "fee", NumericGetDatum(fee));
	JsonAddNumeric(detail, "net", NumericGetDatum(net));
	appendStringInfoChar(detail, '}');
}

static EnginePlan complete_plan = {
	"WITH o AS (UPDATE milestones.orders SET state = 'completed', end_reason = $3, completed_at = $4"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 RETURNING 1)"
	" UPDATE milestones.order_milestones"
	" SET state = CASE WHEN position OPERATOR(pg_catalog.=) $2 THEN 'completed' ELSE 'skipped' END,"
	" completed_at = CASE WHEN position OPERATOR(pg_catalog.=) $2 THEN $4 ELSE completed_at END"
	" WHERE order_id OPERATOR(pg_catalog.=) $1"
	" AND (position OPERATOR(pg_catalog.=) $2 OR state OPERATOR(pg_catalog.=) 'pending')"
	" RETURNING position, (SELECT pg_catalog.count(*) FROM o)",
	4, {INT8OID, INT2OID, TEXTOID, TIMESTAMPTZOID}
};

/*
 * LedgerComplete ends an active order whose current milestone is
 * delivered (1.0's _complete): that milestone completes, later ones are
 * skipped, the order completes (one statement for the three), and the
 * seller is paid.  accept (of the last milestone), stop and the expiry
 * sweep all end here.  Appends {"skipped", "payout"} members to detail
 * (left open for the caller's further members).
 */
void
LedgerComplete(EngineOrder *o, EngineMilestone *m, const char *reason,
			   TimestampTz at, StringInfo detail)
{
	Datum		values[4];
	int			skipped = 0;
	int			expected = 0;
	int			i;
	uint64		r;
	bool		done = false;
	StringInfoData payout;

	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].state == MS_PENDING)
			expected++;
	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int16GetDatum((int16) m->position);
	values[2] = CStringGetTextDatum(reason);
	values[3] = TimestampTzGetDatum(at);
	EngineExec(&complete_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	if ((int) SPI_processed != expected + 1)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " completed %d milestones, expected %d",
			 o->order_id, (int) SPI_processed, expected + 1);
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int			pos = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 1, &isnull));

		if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull)) != 1)
			elog(ERROR, "milestones engine: order " INT64_FORMAT " not completed", o->order_id);
		if (pos == m->position)
		{
			EngineSetMilestone(o, m, MS_COMPLETED);
			done = true;
			continue;
		}
		for (i = 0; i < o->nmilestones; i++)
			if (o->ms[i].position == pos && o->ms[i].state == MS_PENDING)
			{
				EngineSetMilestone(o, &o->ms[i], MS_SKIPPED);
				skipped++;
				break;
			}
		if (i == o->nmilestones)
			elog(ERROR, "milestones engine: skipped an unexpected milestone %d of order " INT64_FORMAT,
				 pos, o->order_id);
	}
	if (!done || skipped != expected)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " not completed as read", o->order_id);
	EngineSetOrder(o, ORDER_COMPLETED, true);
	EngineSetEnded(o, reason, NULL, at);
	JsonAddInt(detail, "skipped", false, skipped);
	initStringInfo(&payout);
	LedgerSettle(o, &payout);
	JsonAddKey(detail, "payout");
	appendStringInfoString(detail, payout.data);
}

static EnginePlan advance_plan = {
	"UPDATE milestones.order_milestones"
	" SET state = CASE WHEN position OPERATOR(pg_catalog.=) $2 THEN 'completed' ELSE 'in_progress' END,"
	" completed_at = CASE WHEN position OPERATOR(pg_catalog.=) $2 THEN $4 ELSE completed_at END,"
	" started_at = CASE WHEN position OPERATOR(pg_catalog.=) $2 THEN started_at ELSE $4 END,"
	" due_at = CASE WHEN position OPERATOR(pg_catalog.=) $2 THEN due_at"
	" ELSE pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', $4)"
	" OPERATOR(pg_catalog.+) pg_catalog.make_interval(days => days)) END"
	" WHERE order_id OPERATOR(pg_catalog.=) $1"
	" AND (position OPERATOR(pg_catalog.=) $2 OR position OPERATOR(pg_catalog.=) $3)"
	" RETURNING position, amount, due_at",
	4, {INT8OID, INT2OID, INT2OID, TIMESTAMPTZOID}
};

/*
 * LedgerAdvance completes the delivered milestone m and starts the next
 * one (one statement for both: due_at in UTC as in LedgerStart), then
 * charges the buyer for it (R4).  Returns the amount charged.
 */
Datum
LedgerAdvance(EngineOrder *o, EngineMilestone *m, EngineMilestone *next)
{
	static const char *const accounts[] = {"buyer", "escrow"};
	Datum		values[4];
	Datum		amounts[2];
	Datum		amount = (Datum) 0;
	bool		started = false;
	bool		completed = false;
	uint64		r;

	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int16GetDatum((int16) m->position);
	values[2] = Int16GetDatum((int16) next->position);
	values[3] = TimestampTzGetDatum(MilestonesNow());
	EngineExec(&advance_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	for (r = 0; r < SPI_processed; r++)
	{
		bool		isnull;
		int			pos = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[r],
													  SPI_tuptable->tupdesc, 1, &isnull));

		if (pos == m->position && !completed)
			completed = true;
		else if (pos == next->position && !started)
		{
			started = true;
			amount = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 2, &isnull);
			next->due_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
															 3, &next->due_at_null));
		}
	}
	if (SPI_processed != 2 || !completed || !started)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " did not move from milestone %d to %d",
			 o->order_id, m->position, next->position);
	EngineSetMilestone(o, m, MS_COMPLETED);
	EngineSetMilestone(o, next, MS_IN_PROGRESS);
	amounts[0] = DirectFunctionCall1(numeric_uminus, amount);
	amounts[1] = amount;
	LedgerPost(o, next->position, "charge", accounts, amounts, 2);
	return amount;
}

static EnginePlan start_plan = {
	"UPDATE milestones.order_milestones SET state = 'in_progress', started_at = $3,"
	" due_at = pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', $3)"
	" OPERATOR(pg_catalog.+) pg_catalog.make_interval(days => days))"
	" WHERE order_id OPERATOR(pg_catalog.=) $1 AND position OPERATOR(pg_catalog.=) $2"
	" RETURNING amount, due_at",
	3, {INT8OID, INT2OID, TIMESTAMPTZOID}
};

/*
 * LedgerStart starts a pending milestone and charges the buyer for it
 * (R3, R4; 1.0's _start): due_at is computed in UTC, so the caller's
 * TimeZone (DST) cannot stretch or shrink it.  Returns the amount charged.
 */
Datum
LedgerStart(EngineOrder *o, EngineMilestone *m)
{
	static const char *const accounts[] = {"buyer", "escrow"};
	Datum		values[3];
	Datum		amounts[2];
	bool		isnull;
	Datum		amount;

	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int16GetDatum((int16) m->position);
	values[2] = TimestampTzGetDatum(MilestonesNow());
	EngineExec(&start_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " not started",
			 m->position, o->order_id);
	amount = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	m->due_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2,
												  &m->due_at_null));
	EngineSetMilestone(o, m, MS_IN_PROGRESS);
	amounts[0] = DirectFunctionCall1(numeric_uminus, amount);
	amounts[1] = amount;
	LedgerPost(o, m->position, "charge", accounts, amounts, 2);
	return amount;
}
