/*-------------------------------------------------------------------------
 *
 * src/earnings.c
 *		Seller earnings (SPEC section 12): the credit at a confirmed-mode
 *		order's payout, clearance, balances, holds and withdrawals, and the
 *		guard trigger of their tables.
 *
 * Each seller's money sits in seller_accounts (one row per seller and
 * currency: pending, available, withdrawing, withdrawn), which always
 * equals the sums of the journal seller_ledger, where every movement is
 * one balanced transaction of two legs:
 *
 *	earning               earnings -> pending      EarningsCredit (the order's payout)
 *	clearance             pending -> available     clear_earnings, request_withdrawal,
 *	                                               release_clearance
 *	withdrawal            available -> withdrawing request_withdrawal
 *	withdrawal_succeeded  withdrawing -> withdrawn record_withdrawal
 *	withdrawal_failed     withdrawing -> available record_withdrawal
 *
 * Locks.  Every writer takes the account row's lock (FOR UPDATE) before it
 * writes an earning, a withdrawal or the journal of that account (a
 * report locks its withdrawal first, which only it and the request that
 * created it ever touch), so the writers of one seller serialize, never
 * overdraw, and never deadlock; the sweep takes the account with SKIP
 * LOCKED and never waits.  A statement that decides after a lock (is the
 * seller held? what is due?) runs after the locking statement, so its
 * snapshot sees everything committed before the lock was granted.
 *
 * Times.  An earning clears when its clears_at (the order's end +
 * clearance_period, in UTC) is at or before the caller's as_of, which is
 * never after milestones.now(); cleared_at is when it was cleared (the
 * clearing call's milestones.now()).  A hold starts no earlier than the
 * seller's last clearance, so "cleared while held" means exactly that.
 *
 * The commit check.  Each write statement runs inside SellerCheckWriting
 * and its rows are declared to sellercheck.c as facts, which the guard
 * trigger observes too; at commit a seller written only by these
 * functions passes without a query.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "engine.h"
#include "earnings.h"

PG_FUNCTION_INFO_V1(milestones_seller_balance);
PG_FUNCTION_INFO_V1(milestones_request_withdrawal);
PG_FUNCTION_INFO_V1(milestones_record_withdrawal);
PG_FUNCTION_INFO_V1(milestones_hold_clearance);
PG_FUNCTION_INFO_V1(milestones_release_clearance);
PG_FUNCTION_INFO_V1(milestones_clear_earnings);
PG_FUNCTION_INFO_V1(milestones_credit_earning);
PG_FUNCTION_INFO_V1(milestones_guard_seller);

#define ARG_TEXT(n) (PG_ARGISNULL(n) ? NULL : PG_GETARG_TEXT_PP(n))
#define NEXT_TXN "pg_catalog.nextval('milestones.seller_txn_id_seq'::pg_catalog.regclass)"
#define ACCOUNT_IS(seller, currency) \
	" c.seller_id OPERATOR(pg_catalog.=) " seller " AND c.currency OPERATOR(pg_catalog.=) " currency

/*-------------------------------------------------------------------------
 * Statements
 *-------------------------------------------------------------------------
 */

/*
 * The account of a seller and currency, opened empty when it is missing.
 * Only then is a row proposed: the guard trigger fires for a row that ON
 * CONFLICT DO NOTHING then drops, which the row balance would count as a
 * write the guard saw but nobody made (sellercheck.c: the full check).
 */
static EnginePlan account_open_plan = {
	"INSERT INTO milestones.seller_accounts (seller_id, currency, opened_at) SELECT $1, $2, $3"
	" WHERE NOT EXISTS (SELECT FROM milestones.seller_accounts c WHERE" ACCOUNT_IS("$1", "$2") ")"
	" ON CONFLICT (seller_id, currency) DO NOTHING",
	3, {INT8OID, TEXTOID, TIMESTAMPTZOID}
};

/* The account's lock and balances: every writer's first step. */
static EnginePlan account_lock_plan = {
	"SELECT c.pending, c.available, c.withdrawing, c.withdrawn FROM milestones.seller_accounts c"
	" WHERE" ACCOUNT_IS("$1", "$2") " FOR UPDATE",
	2, {INT8OID, TEXTOID}
};

/* The sweep's: an account a concurrent call holds is left for the next run. */
static EnginePlan account_lock_skip_plan = {
	"SELECT 1 FROM milestones.seller_accounts c"
	" WHERE" ACCOUNT_IS("$1", "$2") " FOR UPDATE SKIP LOCKED",
	2, {INT8OID, TEXTOID}
};

/* All accounts of a seller, locked in currency order (holds and releases). */
static EnginePlan seller_lock_plan = {
	"SELECT c.currency FROM milestones.seller_accounts c"
	" WHERE c.seller_id OPERATOR(pg_catalog.=) $1 ORDER BY c.currency FOR UPDATE",
	1, {INT8OID}
};

/* The currencies a seller holds, for the DETAIL of a refusal. */
static EnginePlan currencies_plan = {
	"SELECT pg_catalog.string_agg(c.currency, ', ' ORDER BY c.currency) FROM milestones.seller_accounts c"
	" WHERE c.seller_id OPERATOR(pg_catalog.=) $1",
	1, {INT8OID}
};

/*
 * The credit of a payout's net ($4) to the account of seller $1 in
 * currency $2, for order $3 that ended at $5, booked at $6: the earning
 * (clearance_period captured from the settings, clears_at in UTC), the
 * journal transaction earnings -> pending, the account.
 */
static EnginePlan credit_plan = {
	"WITH s AS (SELECT st.clearance_period AS p FROM milestones.settings st LIMIT 1),"
	" e AS (INSERT INTO milestones.seller_earnings (seller_id, currency, order_id, amount, earned_at,"
	" clearance_period, clears_at)"
	" SELECT $1, $2, $3, $4, $5, s.p,"
	" pg_catalog.timezone('UTC', pg_catalog.timezone('UTC', $5) OPERATOR(pg_catalog.+) s.p) FROM s"
	" RETURNING earning_id, clears_at),"
	" t AS MATERIALIZED (SELECT " NEXT_TXN " AS txn),"
	" l AS (INSERT INTO milestones.seller_ledger (txn_id, seller_id, currency, account, amount, kind,"
	" order_id, earning_id, created_at)"
	" SELECT t.txn, $1, $2, v.account, v.amount, 'earning', $3, e.earning_id, $6"
	" FROM t, e, (VALUES ('earnings'::pg_catalog.text, OPERATOR(pg_catalog.-) $4), ('pending', $4))"
	" AS v(account, amount) RETURNING 1),"
	" a AS (UPDATE milestones.seller_accounts c SET pending = c.pending OPERATOR(pg_catalog.+) $4"
	" WHERE" ACCOUNT_IS("$1", "$2") " RETURNING 1)"
	" SELECT e.earning_id, e.clears_at, t.txn, (SELECT pg_catalog.count(*) FROM l),"
	" (SELECT pg_catalog.count(*) FROM a) FROM e, t",
	6, {INT8OID, TEXTOID, INT8OID, NUMERICOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
};

/*
 * Clearance of the account of seller $1 in currency $2 at $3 (cleared_at)
 * of the earnings due by $4, unless the seller is held: each earning its
 * journal transaction pending -> available, the account once.  The e CTE
 * picks the earnings: all that are due (CLEAR_ACCOUNT) or one ($5,
 * CLEAR_ONE, the sweep's).
 */
#define CLEAR_DUE \
	" x.seller_id OPERATOR(pg_catalog.=) $1 AND x.currency OPERATOR(pg_catalog.=) $2" \
	" AND x.cleared_at IS NULL AND x.clears_at OPERATOR(pg_catalog.<=) $4" \
	" AND NOT EXISTS (SELECT FROM milestones.seller_holds h WHERE h.seller_id OPERATOR(pg_catalog.=) $1" \
	" AND h.released_at IS NULL)"
#define CLEAR_WRITE \
	" t AS MATERIALIZED (SELECT e.earning_id, e.order_id, e.amount, " NEXT_TXN " AS txn FROM e)," \
	" l AS (INSERT INTO milestones.seller_ledger (txn_id, seller_id, currency, account, amount, kind," \
	" earning_id, created_at)" \
	" SELECT t.txn, $1, $2, v.account," \
	" CASE WHEN v.account OPERATOR(pg_catalog.=) 'pending' THEN OPERATOR(pg_catalog.-) t.amount ELSE t.amount END," \
	" 'clearance', t.earning_id, $3" \
	" FROM t, (VALUES ('pending'::pg_catalog.text), ('available')) AS v(account) RETURNING 1)," \
	" s AS (SELECT pg_catalog.sum(t.amount) AS total FROM t)," \
	" a AS (UPDATE milestones.seller_accounts c SET pending = c.pending OPERATOR(pg_catalog.-) s.total," \
	" available = c.available OPERATOR(pg_catalog.+) s.total" \
	" FROM s WHERE" ACCOUNT_IS("$1", "$2") " AND s.total IS NOT NULL RETURNING 1)" \
	" SELECT t.earning_id, t.order_id, t.amount, t.txn, (SELECT pg_catalog.count(*) FROM l)," \
	" (SELECT pg_catalog.count(*) FROM a) FROM t ORDER BY t.earning_id"

static EnginePlan clear_account_plan = {
	"WITH e AS (UPDATE milestones.seller_earnings x SET cleared_at = $3 WHERE" CLEAR_DUE
	" RETURNING x.earning_id, x.order_id, x.amount)," CLEAR_WRITE,
	4, {INT8OID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID}
};
static EnginePlan clear_one_plan = {
	"WITH e AS (UPDATE milestones.seller_earnings x SET cleared_at = $3"
	" WHERE x.earning_id OPERATOR(pg_catalog.=) $5 AND" CLEAR_DUE
	" RETURNING x.earning_id, x.order_id, x.amount)," CLEAR_WRITE,
	5, {INT8OID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID}
};

/*
 * The sweep's work list: the earnings due by $1 of sellers not held,
 * oldest first (seller_earnings_due_idx), $2 at most.  No row lock: each
 * item locks its account first (SKIP LOCKED), then clears (CLEAR_ONE).
 */
static EnginePlan work_plan = {
	"SELECT e.earning_id, e.seller_id, e.currency FROM milestones.seller_earnings e"
	" WHERE e.cleared_at IS NULL AND e.clears_at OPERATOR(pg_catalog.<=) $1"
	" AND NOT EXISTS (SELECT FROM milestones.seller_holds h WHERE h.seller_id OPERATOR(pg_catalog.=) e.seller_id"
	" AND h.released_at IS NULL)"
	" ORDER BY e.clears_at LIMIT $2",
	2, {TIMESTAMPTZOID, INT4OID}, NULL, CURSOR_OPT_FAST_PLAN
};

/*
 * A withdrawal of $3 by seller $1 in currency $2 at $5, $4 available
 * before it: the row, the journal transaction available -> withdrawing,
 * the account, the event withdrawal_requested.
 */
static EnginePlan withdraw_plan = {
	"WITH w AS (INSERT INTO milestones.seller_withdrawals (seller_id, currency, amount, available_before,"
	" requested_at) VALUES ($1, $2, $3, $4, $5) RETURNING withdrawal_id),"
	" t AS MATERIALIZED (SELECT " NEXT_TXN " AS txn),"
	" l AS (INSERT INTO milestones.seller_ledger (txn_id, seller_id, currency, account, amount, kind,"
	" withdrawal_id, created_at)"
	" SELECT t.txn, $1, $2, v.account, v.amount, 'withdrawal', w.withdrawal_id, $5"
	" FROM t, w, (VALUES ('available'::pg_catalog.text, OPERATOR(pg_catalog.-) $3), ('withdrawing', $3))"
	" AS v(account, amount) RETURNING 1),"
	" a AS (UPDATE milestones.seller_accounts c SET available = c.available OPERATOR(pg_catalog.-) $3,"
	" withdrawing = c.withdrawing OPERATOR(pg_catalog.+) $3 WHERE" ACCOUNT_IS("$1", "$2") " RETURNING 1),"
	" ev AS (INSERT INTO " EVENT_COLUMNS
	" SELECT NULL, NULL, 'withdrawal_requested', 'seller', $1, NULL, NULL, NULL,"
	" pg_catalog.jsonb_build_object('withdrawal_id', w.withdrawal_id, 'seller_id', $1, 'amount', $3,"
	" 'currency', $2), $5 FROM w RETURNING 1)"
	" SELECT w.withdrawal_id, t.txn, (SELECT pg_catalog.count(*) FROM l), (SELECT pg_catalog.count(*) FROM a),"
	" (SELECT pg_catalog.count(*) FROM ev) FROM w, t",
	5, {INT8OID, TEXTOID, NUMERICOID, NUMERICOID, TIMESTAMPTZOID}
};

/* A withdrawal, locked: the report's first step. */
static EnginePlan withdrawal_lock_plan = {
	"SELECT w.seller_id, w.currency, w.amount, w.state, w.provider_ref, w.reported_at, w.available_before"
	" FROM milestones.seller_withdrawals w WHERE w.withdrawal_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
	1, {INT8OID}
};

/*
 * The provider's answer ($2) to withdrawal $1 at $3: the row, the journal
 * transaction ($9: withdrawal_succeeded or _failed) withdrawing -> $10,
 * the account ($11 back to available, $12 to withdrawn), the event $13
 * with detail $14.  $6-$8: the withdrawal's seller, currency and amount.
 */
static EnginePlan report_plan = {
	"WITH w AS (UPDATE milestones.seller_withdrawals x SET state = $2, reported_at = $3, provider_ref = $4,"
	" failure = $5 WHERE x.withdrawal_id OPERATOR(pg_catalog.=) $1 AND x.state OPERATOR(pg_catalog.=) 'requested'"
	" RETURNING 1),"
	" t AS MATERIALIZED (SELECT " NEXT_TXN " AS txn),"
	" l AS (INSERT INTO milestones.seller_ledger (txn_id, seller_id, currency, account, amount, kind,"
	" withdrawal_id, created_at)"
	" SELECT t.txn, $6, $7, v.account, v.amount, $9, $1, $3"
	" FROM t, (VALUES ('withdrawing'::pg_catalog.text, OPERATOR(pg_catalog.-) $8), ($10, $8))"
	" AS v(account, amount) RETURNING 1),"
	" a AS (UPDATE milestones.seller_accounts c SET withdrawing = c.withdrawing OPERATOR(pg_catalog.-) $8,"
	" available = c.available OPERATOR(pg_catalog.+) $11, withdrawn = c.withdrawn OPERATOR(pg_catalog.+) $12"
	" WHERE" ACCOUNT_IS("$6", "$7") " RETURNING 1),"
	" ev AS (INSERT INTO " EVENT_COLUMNS
	" VALUES (NULL, NULL, $13, 'payments', NULL, NULL, NULL, NULL, $14, $3) RETURNING 1)"
	" SELECT t.txn, (SELECT pg_catalog.count(*) FROM w), (SELECT pg_catalog.count(*) FROM l),"
	" (SELECT pg_catalog.count(*) FROM a), (SELECT pg_catalog.count(*) FROM ev) FROM t",
	14, {INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, INT8OID, TEXTOID, NUMERICOID, TEXTOID,
	TEXTOID, NUMERICOID, NUMERICOID, TEXTOID, JSONBOID}
};

/*
 * A hold of seller $1 at $3 with note $2: it takes effect no earlier than
 * the seller's last clearance (one the hold waited for); nothing when a
 * hold is open already.
 */
static EnginePlan hold_plan = {
	"INSERT INTO milestones.seller_holds (seller_id, note, held_at)"
	" SELECT $1, $2, GREATEST($3, (SELECT pg_catalog.max(e.cleared_at) FROM milestones.seller_earnings e"
	" WHERE e.seller_id OPERATOR(pg_catalog.=) $1))"
	" ON CONFLICT (seller_id) WHERE released_at IS NULL DO NOTHING RETURNING hold_id",
	3, {INT8OID, TEXTOID, TIMESTAMPTZOID}
};

/* The open hold of seller $1, for a DETAIL. */
static EnginePlan open_hold_plan = {
	"SELECT h.hold_id, h.held_at, h.note FROM milestones.seller_holds h"
	" WHERE h.seller_id OPERATOR(pg_catalog.=) $1 AND h.released_at IS NULL",
	1, {INT8OID}
};

/* The release of seller $1's open hold at $2 (never before it started). */
static EnginePlan release_plan = {
	"UPDATE milestones.seller_holds h SET released_at = GREATEST($2, h.held_at)"
	" WHERE h.seller_id OPERATOR(pg_catalog.=) $1 AND h.released_at IS NULL RETURNING h.released_at",
	2, {INT8OID, TIMESTAMPTZOID}
};

/* What the functions return: rows of the views. */
static EnginePlan balances_plan = {
	"SELECT b.* FROM milestones.seller_balances b WHERE b.seller_id OPERATOR(pg_catalog.=) $1"
	" ORDER BY b.currency",
	1, {INT8OID}
};
static EnginePlan balance_plan = {
	"SELECT b.* FROM milestones.seller_balances b WHERE b.seller_id OPERATOR(pg_catalog.=) $1"
	" AND b.currency OPERATOR(pg_catalog.=) $2",
	2, {INT8OID, TEXTOID}
};
static EnginePlan withdrawal_row_plan = {
	"SELECT w.* FROM milestones.withdrawals w WHERE w.withdrawal_id OPERATOR(pg_catalog.=) $1",
	1, {INT8OID}
};

/* An order, locked, with its payout net and earning (_credit_earning). */
static EnginePlan credit_order_plan = {
	"SELECT o.seller_id, o.currency, o.state, o.payment_mode, o.completed_at,"
	" (SELECT pg_catalog.sum(l.amount) FROM milestones.ledger_entries l"
	" WHERE l.order_id OPERATOR(pg_catalog.=) o.order_id AND l.kind OPERATOR(pg_catalog.=) 'payout'"
	" AND l.account OPERATOR(pg_catalog.=) 'seller'),"
	" (SELECT e.earning_id FROM milestones.seller_earnings e WHERE e.order_id OPERATOR(pg_catalog.=) o.order_id)"
	" FROM milestones.orders o WHERE o.order_id OPERATOR(pg_catalog.=) $1 FOR UPDATE OF o",
	1, {INT8OID}
};

/*-------------------------------------------------------------------------
 * Helpers
 *-------------------------------------------------------------------------
 */

/* NumCmp compares two numerics. */
static int
NumCmp(Datum a, Datum b)
{
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, a, b));
}

/* NumZero is 0 as a numeric Datum. */
static Datum
NumZero(void)
{
	return NumericGetDatum(int64_to_numeric(0));
}

/* Cents is an amount the engine wrote, in whole cents (it always is). */
static int64
Cents(Datum amount)
{
	bool		exact;
	int64		cents = NumericToCents(amount, &exact);

	if (!exact)
		elog(ERROR, "milestones earnings: amount %s is not in whole cents", EngineNumericOut(amount));
	return cents;
}

/* ResultDatum reads column col of row r of the last statement. */
static Datum
ResultDatum(uint64 r, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, col, isnull);
}

/* ResultInt64 reads a bigint (or count) column of row r; NULL reads as 0. */
static int64
ResultInt64(uint64 r, int col)
{
	bool		isnull;
	Datum		d = ResultDatum(r, col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

/*
 * WriteExec runs one of the write statements above, of the account of
 * seller_id in currency, inside the commit check's writing mark
 * (sellercheck.c): the facts the guard observes meanwhile are the ones the
 * caller declares next.
 */
static void
WriteExec(EnginePlan *p, Datum *values, const char *nulls, int expect, int64 seller_id,
		  const char *currency)
{
	SellerCheckWriting(true, seller_id, currency);
	EngineExec(p, values, nulls, expect, 0);
	SellerCheckWriting(false, seller_id, currency);
}

/* DeclareLegs declares a journal transaction of two legs: from -> to, cents. */
static void
DeclareLegs(int64 seller_id, const char *currency, SellerKind kind, int64 txn, int64 ref,
			SellerAccount from, SellerAccount to, int64 cents)
{
	SellerFact	f;

	f = SellerFactMake(SFACT_LEG, true, -1, -1, kind, from, txn, ref, -cents);
	SellerCheckDeclare(seller_id, currency, &f);
	f = SellerFactMake(SFACT_LEG, true, -1, -1, kind, to, txn, ref, cents);
	SellerCheckDeclare(seller_id, currency, &f);
}

/*
 * DeclareMove declares one UPDATE of the account: each balance column
 * that changed, by how many cents (the earnings account is not a column).
 */
static void
DeclareMove(int64 seller_id, const char *currency, SellerAccount from, SellerAccount to, int64 cents)
{
	SellerFact	f;

	if (from < SACC_BALANCES)
	{
		f = SellerFactMake(SFACT_ACCOUNT, false, -1, -1, -1, from, 0, 0, -cents);
		SellerCheckDeclare(seller_id, currency, &f);
	}
	if (to < SACC_BALANCES)
	{
		f = SellerFactMake(SFACT_ACCOUNT, false, -1, -1, -1, to, 0, 0, cents);
		SellerCheckDeclare(seller_id, currency, &f);
	}
}

/*
 * CheckCurrency refuses (22023) a NULL currency or one that is not an
 * ISO 4217 code (three capital letters), as create_offer does.
 */
static char *
CheckCurrency(text *currency)
{
	char	   *s;

	EngineNotNull(currency == NULL, "currency");
	s = text_to_cstring(currency);
	if (!(strlen(s) == 3 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z' &&
		  s[2] >= 'A' && s[2] <= 'Z'))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("currency must be an ISO 4217 code"),
				 errdetail("Got %s.", EngineQuoteLiteral(s, 20))));
	return s;
}

/*
 * CheckAmount refuses (22023) an amount that is NULL, not a number, not
 * positive, out of range or with more than 2 decimals (never rounded),
 * and returns it as numeric(14,2).
 */
static Datum
CheckAmount(bool isnull, Datum amount)
{
	EngineNotNull(isnull, "amount");
	if (numeric_is_nan(DatumGetNumeric(amount)) || numeric_is_inf(DatumGetNumeric(amount)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be a decimal number"),
				 errdetail("Got %s.", EngineNumericOut(amount))));
	if (NumCmp(amount, NumZero()) <= 0 ||
		NumCmp(amount, DirectFunctionCall3(numeric_in, CStringGetDatum("999999999999.99"),
										   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1))) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount must be more than 0 and at most 999999999999.99"),
				 errdetail("Got %s.", pnstrdup(EngineNumericOut(amount), 40))));
	if (NumCmp(amount, DirectFunctionCall2(numeric_round, amount, Int32GetDatum(2))) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("amount has more than 2 decimals"),
				 errdetail("Got %s.", EngineNumericOut(amount)),
				 errhint("Amounts are never rounded: send whole cents.")));
	/* numeric(14,2): whole cents, so nothing is rounded here */
	return DirectFunctionCall2(numeric, amount, Int32GetDatum(((14 << 16) | 2) + VARHDRSZ));
}

/*
 * NoBalance raises the refusal of a currency the seller holds no balance
 * in: 22023 for an argument (a withdrawal), P0002 for a lookup.
 */
static void
NoBalance(int sqlstate, int64 seller_id, const char *currency)
{
	Datum		values[1];
	char	   *held;

	values[0] = Int64GetDatum(seller_id);
	EngineExec(&currencies_plan, values, NULL, SPI_OK_SELECT, 1);
	held = SPI_processed > 0 ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
	if (held != NULL)
		ereport(ERROR,
				(errcode(sqlstate),
				 errmsg("seller " INT64_FORMAT " holds no balance in %s", seller_id, currency),
				 errdetail("Seller " INT64_FORMAT " holds balances in %s.", seller_id, held),
				 errhint("See milestones.seller_balances for a seller's currencies.")));
	ereport(ERROR,
			(errcode(sqlstate),
			 errmsg("seller " INT64_FORMAT " holds no balance in %s", seller_id, currency),
			 errdetail("Seller " INT64_FORMAT " holds no balance at all yet.", seller_id),
			 errhint("A seller's balance opens when a confirmed-mode order of theirs ends with a payout.")));
}

/*
 * LockAccount takes the account's row lock and reads its balances into
 * balances[4] (pending, available, withdrawing, withdrawn; NULL: not
 * wanted); false when the seller holds no account in the currency.
 */
static bool
LockAccount(int64 seller_id, const char *currency, Datum *balances)
{
	Datum		values[2];
	int			i;

	values[0] = Int64GetDatum(seller_id);
	values[1] = CStringGetTextDatum(currency);
	EngineExec(&account_lock_plan, values, NULL, SPI_OK_SELECT, 0);
	if (SPI_processed == 0)
		return false;
	if (balances != NULL)
		for (i = 0; i < SACC_BALANCES; i++)
		{
			bool		isnull;
			Datum		d = ResultDatum(0, i + 1, &isnull);

			balances[i] = isnull ? NumZero() : datumCopy(d, false, -1);
		}
	return true;
}

/*
 * ClearDue clears the earnings of an account (its lock held) due by due,
 * at cleared_at, unless the seller is held: all of them (earning_id 0) or
 * the one the sweep picked.  Declares what it wrote; returns how many it
 * cleared and adds their sum to *total (when given).
 */
static int
ClearDue(int64 seller_id, const char *currency, TimestampTz cleared_at, TimestampTz due,
		 int64 earning_id, Datum *total)
{
	Datum		values[5];
	int64		sum = 0;
	uint64		r;
	uint64		n;

	values[0] = Int64GetDatum(seller_id);
	values[1] = CStringGetTextDatum(currency);
	values[2] = TimestampTzGetDatum(cleared_at);
	values[3] = TimestampTzGetDatum(due);
	values[4] = Int64GetDatum(earning_id);
	WriteExec(earning_id > 0 ? &clear_one_plan : &clear_account_plan, values, NULL, SPI_OK_SELECT,
			  seller_id, currency);
	n = SPI_processed;
	if (n == 0)
		return 0;
	if (ResultInt64(0, 5) != (int64) (2 * n) || ResultInt64(0, 6) != 1)
		elog(ERROR, "milestones earnings: clearance of seller " INT64_FORMAT " %s wrote %d legs and %d accounts for %d earnings",
			 seller_id, currency, (int) ResultInt64(0, 5), (int) ResultInt64(0, 6), (int) n);
	for (r = 0; r < n; r++)
	{
		bool		isnull;
		int64		id = ResultInt64(r, 1);
		int64		order_id = ResultInt64(r, 2);
		Datum		amount = ResultDatum(r, 3, &isnull);
		int64		cents = Cents(amount);
		SellerFact	f = SellerFactMake(SFACT_EARNING, false, 0, 1, -1, -1, id, order_id, cents);

		SellerCheckDeclare(seller_id, currency, &f);
		DeclareLegs(seller_id, currency, SKIND_CLEARANCE, ResultInt64(r, 4), id,
					SACC_PENDING, SACC_AVAILABLE, cents);
		sum += cents;
		if (total != NULL)
			*total = DirectFunctionCall2(numeric_add, *total, amount);
	}
	DeclareMove(seller_id, currency, SACC_PENDING, SACC_AVAILABLE, sum);
	return (int) n;
}

/*
 * RowResult turns the first row of the last statement (a view's row)
 * into the function's result, built in the caller's memory context.
 */
static Datum
RowResult(FunctionCallInfo fcinfo, MemoryContext caller)
{
	TupleDesc	resdesc;
	TupleDesc	desc = SPI_tuptable->tupdesc;
	MemoryContext old;
	Datum	   *values;
	bool	   *nulls;
	HeapTuple	tup;
	int			i;

	old = MemoryContextSwitchTo(caller);
	if (get_call_result_type(fcinfo, NULL, &resdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "milestones earnings: return type must be a row type");
	resdesc = BlessTupleDesc(resdesc);
	if (desc->natts != resdesc->natts)
		elog(ERROR, "milestones earnings: the view has %d columns, the result type %d",
			 desc->natts, resdesc->natts);
	values = palloc(sizeof(Datum) * resdesc->natts);
	nulls = palloc(sizeof(bool) * resdesc->natts);
	for (i = 0; i < resdesc->natts; i++)
	{
		if (TupleDescAttr(desc, i)->atttypid != TupleDescAttr(resdesc, i)->atttypid)
			elog(ERROR, "milestones earnings: column %d of the view has another type than the result's", i + 1);
		values[i] = SPI_getbinval(SPI_tuptable->vals[0], desc, i + 1, &nulls[i]);
	}
	tup = heap_form_tuple(resdesc, values, nulls);
	MemoryContextSwitchTo(old);
	return HeapTupleGetDatum(tup);
}

/*
 * PutBalances puts the seller's seller_balances rows into the set the
 * function returns (InitMaterializedSRF was called).
 */
static void
PutBalances(FunctionCallInfo fcinfo, int64 seller_id)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[1];
	uint64		r;

	values[0] = Int64GetDatum(seller_id);
	EngineExec(&balances_plan, values, NULL, SPI_OK_SELECT, 0);
	if (SPI_tuptable->tupdesc->natts != rsinfo->setDesc->natts)
		elog(ERROR, "milestones earnings: seller_balances has %d columns, the result type %d",
			 SPI_tuptable->tupdesc->natts, rsinfo->setDesc->natts);
	for (r = 0; r < SPI_processed; r++)
	{
		int			natts = rsinfo->setDesc->natts;
		Datum	   *row = palloc(sizeof(Datum) * natts);
		bool	   *nulls = palloc(sizeof(bool) * natts);
		int			i;

		for (i = 0; i < natts; i++)
			row[i] = ResultDatum(r, i + 1, &nulls[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, row, nulls);
	}
}

/*-------------------------------------------------------------------------
 * The credit (the engine's call) and its repair
 *-------------------------------------------------------------------------
 */

/*
 * EarningsCredit records a confirmed-mode order's payout net as its
 * seller's pending earning (nothing for a net of 0, and returns 0), clearing at ended_at + the clearance_period
 * setting (captured here, added in UTC).  The engine calls it inside the
 * order action that ends the order, under the order's lock and in its SPI
 * connection (this opens a level of its own, so the caller's last result
 * stays as it was): the account is opened when missing and locked, then
 * the earning, the journal transaction earnings -> pending and the
 * account's pending are written in one statement.  Returns the earning id.
 */
int64
EarningsCredit(EngineOrder *o, Numeric net, TimestampTz ended_at)
{
	Datum		values[6];
	int64		cents = Cents(NumericGetDatum(net));
	int64		earning_id;
	TimestampTz now = MilestonesNow();
	SellerFact	f;

	if (cents < 0)
		elog(ERROR, "milestones earnings: the net of order " INT64_FORMAT " to credit is negative",
			 o->order_id);
	if (cents == 0)
		return 0;				/* a payout whose fee took it all: nothing to earn */
	EngineConnect();
	values[0] = Int64GetDatum(o->seller_id);
	values[1] = CStringGetTextDatum(o->currency);
	values[2] = TimestampTzGetDatum(now);
	WriteExec(&account_open_plan, values, NULL, SPI_OK_INSERT, o->seller_id, o->currency);
	if (!LockAccount(o->seller_id, o->currency, NULL))
		elog(ERROR, "milestones earnings: the account of seller " INT64_FORMAT " in %s is missing",
			 o->seller_id, o->currency);

	values[2] = Int64GetDatum(o->order_id);
	values[3] = NumericGetDatum(net);
	values[4] = TimestampTzGetDatum(ended_at);
	values[5] = TimestampTzGetDatum(now);
	WriteExec(&credit_plan, values, NULL, SPI_OK_SELECT, o->seller_id, o->currency);
	if (SPI_processed != 1 || ResultInt64(0, 4) != 2 || ResultInt64(0, 5) != 1)
		elog(ERROR, "milestones earnings: the earning of order " INT64_FORMAT " was not written",
			 o->order_id);
	earning_id = ResultInt64(0, 1);
	f = SellerFactMake(SFACT_EARNING, true, -1, 0, -1, -1, earning_id, o->order_id, cents);
	SellerCheckDeclare(o->seller_id, o->currency, &f);
	DeclareLegs(o->seller_id, o->currency, SKIND_EARNING, ResultInt64(0, 3), earning_id,
				SACC_EARNINGS, SACC_PENDING, cents);
	DeclareMove(o->seller_id, o->currency, SACC_EARNINGS, SACC_PENDING, cents);
	EngineFinish();
	return earning_id;
}

/*
 * milestones_credit_earning is _credit_earning(order_id), the owner's
 * repair: credits the payout net of an ended confirmed-mode order that
 * has no earning (check_invariants() names such an order), as the engine
 * does at the payout, with the order's end as earned_at.
 */
Datum
milestones_credit_earning(PG_FUNCTION_ARGS)
{
	int64		order_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	EngineOrder *o = palloc0(sizeof(EngineOrder));
	Datum		values[1];
	bool		isnull;
	bool		net_null;
	bool		earning_null;
	char	   *state;
	char	   *mode;
	Datum		net;
	TimestampTz completed_at;
	int64		earning_id;

	EngineRefuseOnStandby("_credit_earning");
	EngineCheckId(PG_ARGISNULL(0), order_id, "order_id");
	EngineConnect();
	values[0] = Int64GetDatum(order_id);
	EngineExec(&credit_order_plan, values, NULL, SPI_OK_SELECT, 0);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("order " INT64_FORMAT " does not exist", order_id),
				 errdetail("No milestone order has id " INT64_FORMAT ".", order_id)));
	o->order_id = order_id;
	o->seller_id = ResultInt64(0, 1);
	o->currency = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	mode = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	completed_at = DatumGetTimestampTz(ResultDatum(0, 5, &isnull));
	net = ResultDatum(0, 6, &net_null);
	earning_id = DatumGetInt64(ResultDatum(0, 7, &earning_null));
	if (mode == NULL || strcmp(mode, "confirmed") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("order " INT64_FORMAT " is not a confirmed-mode order", order_id),
				 errdetail("Order " INT64_FORMAT " is in %s payment mode.", order_id, mode ? mode : "recorded"),
				 errhint("Seller balances are kept for confirmed-mode orders only; the application pays recorded-mode sellers from the events.")));
	if (state == NULL || (strcmp(state, "completed") != 0 && strcmp(state, "cancelled") != 0) || isnull)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("order " INT64_FORMAT " has not ended", order_id),
				 errdetail("Order " INT64_FORMAT " is %s; a seller earns at the end of an order.", order_id,
						   state ? state : "(null)")));
	if (!earning_null)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("order " INT64_FORMAT " was credited already", order_id),
				 errdetail("Its payout is earning " INT64_FORMAT ".", earning_id)));
	if (net_null || NumCmp(net, NumZero()) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("order " INT64_FORMAT " paid its seller nothing", order_id),
				 errdetail("The ledger holds no payout to the seller of order " INT64_FORMAT ".", order_id)));
	earning_id = EarningsCredit(o, DatumGetNumeric(net), completed_at);
	EngineFinish();
	PG_RETURN_INT64(earning_id);
}

/*-------------------------------------------------------------------------
 * Balances, clearance and holds
 *-------------------------------------------------------------------------
 */

/*
 * milestones_seller_balance is seller_balance(seller_id, currency): the
 * seller_balances row (P0002 when the seller holds no balance in it).
 */
Datum
milestones_seller_balance(PG_FUNCTION_ARGS)
{
	int64		seller_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	char	   *currency;
	MemoryContext caller = CurrentMemoryContext;
	Datum		values[2];
	Datum		result;

	EngineCheckId(PG_ARGISNULL(0), seller_id, "seller_id");
	currency = CheckCurrency(ARG_TEXT(1));
	EngineConnect();
	values[0] = Int64GetDatum(seller_id);
	values[1] = CStringGetTextDatum(currency);
	EngineExec(&balance_plan, values, NULL, SPI_OK_SELECT, 0);
	if (SPI_processed == 0)
		NoBalance(ERRCODE_NO_DATA_FOUND, seller_id, currency);
	result = RowResult(fcinfo, caller);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*
 * milestones_clear_earnings is clear_earnings(as_of, batch), the sweep of
 * run_expiry: up to batch earnings due by as_of, oldest first, each moved
 * pending -> available.  Owner only (not SECURITY DEFINER), and as_of may
 * not lie after milestones.now(): nothing becomes available before its
 * clears_at.  Held sellers are not in the work list; an account a
 * concurrent call holds is skipped (the next run takes it).  One SPI
 * level per earning: a batch of 100,000 runs in constant memory.
 */
Datum
milestones_clear_earnings(PG_FUNCTION_ARGS)
{
	TimestampTz as_of;
	TimestampTz now = MilestonesNow();
	int32		batch;
	int32		count = 0;
	int64	   *ids;
	int64	   *sellers;
	char	  **currencies;
	uint64		n;
	uint64		i;
	Datum		values[2];

	EngineRefuseOnStandby("clear_earnings");
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
	if (as_of > now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("as_of must not be after milestones.now()"),
				 errdetail("as_of is %s; milestones.now() is %s.", EngineTimestampOut(false, as_of),
						   EngineTimestampOut(false, now)),
				 errhint("Earnings never become available before their clears_at: clear_earnings clears what is due by now.")));

	EngineConnect();
	values[0] = TimestampTzGetDatum(as_of);
	values[1] = Int32GetDatum(batch);
	EngineExec(&work_plan, values, NULL, SPI_OK_SELECT, 0);
	n = SPI_processed;
	ids = palloc(sizeof(int64) * (n + 1));
	sellers = palloc(sizeof(int64) * (n + 1));
	currencies = palloc(sizeof(char *) * (n + 1));
	for (i = 0; i < n; i++)
	{
		ids[i] = ResultInt64(i, 1);
		sellers[i] = ResultInt64(i, 2);
		currencies[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3);
	}
	SPI_freetuptable(SPI_tuptable);

	for (i = 0; i < n; i++)
	{
		Datum		lock[2];

		/*
		 * One SPI level per earning: its results and memory are freed when
		 * it is done.
		 */
		EngineConnect();
		lock[0] = Int64GetDatum(sellers[i]);
		lock[1] = CStringGetTextDatum(currencies[i]);
		EngineExec(&account_lock_skip_plan, lock, NULL, SPI_OK_SELECT, 0);
		if (SPI_processed == 1)
			count += ClearDue(sellers[i], currencies[i], now, as_of, ids[i], NULL);
		EngineFinish();
	}
	EngineFinish();
	PG_RETURN_INT32(count);
}

/*
 * milestones_hold_clearance is hold_clearance(seller_id, note): support
 * stops the seller's clearance until released; available funds stay
 * withdrawable.  The seller's accounts are locked first, so a clearance
 * in flight ends before the hold, and none starts after it unseen.  A
 * second hold fails 55000.  Returns the seller's seller_balances rows
 * (none for a seller who holds no balance yet: the hold applies to their
 * future earnings too).
 */
Datum
milestones_hold_clearance(PG_FUNCTION_ARGS)
{
	int64		seller_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	text	   *note = ARG_TEXT(1);
	Datum		values[3];

	EngineRefuseOnStandby("hold_clearance");
	EngineCheckId(PG_ARGISNULL(0), seller_id, "seller_id");
	EngineCheckText(note == NULL, note, "note", 2000, true);
	InitMaterializedSRF(fcinfo, 0);
	EngineConnect();
	values[0] = Int64GetDatum(seller_id);
	EngineExec(&seller_lock_plan, values, NULL, SPI_OK_SELECT, 0);
	values[1] = PointerGetDatum(note);
	values[2] = TimestampTzGetDatum(MilestonesNow());
	EngineExec(&hold_plan, values, NULL, SPI_OK_INSERT_RETURNING, 0);
	if (SPI_processed == 0)
	{
		EngineExec(&open_hold_plan, values, NULL, SPI_OK_SELECT, 0);
		if (SPI_processed == 0)
			elog(ERROR, "milestones earnings: seller " INT64_FORMAT " is held but has no open hold", seller_id);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("seller " INT64_FORMAT " is held already", seller_id),
				 errdetail("Hold %s has held seller " INT64_FORMAT "'s clearance since %s: %s.",
						   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), seller_id,
						   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2),
						   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3)),
				 errhint("Release it with release_clearance first.")));
	}
	PutBalances(fcinfo, seller_id);
	EngineFinish();
	return (Datum) 0;
}

/*
 * milestones_release_clearance is release_clearance(seller_id): support
 * ends the seller's hold and what is due clears at once, in every
 * currency.  Without an open hold it fails 55000.  Returns the seller's
 * seller_balances rows.
 */
Datum
milestones_release_clearance(PG_FUNCTION_ARGS)
{
	int64		seller_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	TimestampTz now = MilestonesNow();
	TimestampTz released_at;
	Datum		values[2];
	char	  **currencies;
	uint64		n;
	uint64		i;
	bool		isnull;

	EngineRefuseOnStandby("release_clearance");
	EngineCheckId(PG_ARGISNULL(0), seller_id, "seller_id");
	InitMaterializedSRF(fcinfo, 0);
	EngineConnect();
	values[0] = Int64GetDatum(seller_id);
	EngineExec(&seller_lock_plan, values, NULL, SPI_OK_SELECT, 0);
	n = SPI_processed;
	currencies = palloc(sizeof(char *) * (n + 1));
	for (i = 0; i < n; i++)
		currencies[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
	values[1] = TimestampTzGetDatum(now);
	EngineExec(&release_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("seller " INT64_FORMAT " is not held", seller_id),
				 errdetail("No hold on seller " INT64_FORMAT "'s clearance is open.", seller_id),
				 errhint("hold_clearance holds a seller's clearance; see milestones.seller_balances.held.")));
	released_at = DatumGetTimestampTz(ResultDatum(0, 1, &isnull));
	/* cleared at the release, never before it: nothing clears while held */
	for (i = 0; i < n; i++)
		ClearDue(seller_id, currencies[i], released_at, now, 0, NULL);
	PutBalances(fcinfo, seller_id);
	EngineFinish();
	return (Datum) 0;
}

/*-------------------------------------------------------------------------
 * Withdrawals
 *-------------------------------------------------------------------------
 */

/*
 * milestones_request_withdrawal is request_withdrawal(seller_id, amount,
 * currency, idempotency_key): the seller withdraws part of the available
 * balance.  Under the account's lock it first clears the seller's due
 * earnings itself (unless held), so the answer never depends on when the
 * sweep last ran; more than is then available fails 55000 with what is
 * available in the DETAIL.  Writes the withdrawal (available_before: what
 * was available), the journal transaction available -> withdrawing, the
 * account and the event withdrawal_requested.  Returns the withdrawal id;
 * a retry with the same key and arguments returns the first one.
 */
Datum
milestones_request_withdrawal(PG_FUNCTION_ARGS)
{
	int64		seller_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	Datum		amount;
	char	   *currency;
	text	   *key = ARG_TEXT(3);
	TimestampTz now = MilestonesNow();
	StringInfoData args;
	Datum		prev;
	Datum		balances[SACC_BALANCES];
	Datum		cleared = NumZero();
	Datum		available;
	Datum		values[5];
	int64		withdrawal_id;
	int64		cents;
	SellerFact	f;
	char		idbuf[32];

	EngineRefuseOnStandby("request_withdrawal");
	EngineCheckId(PG_ARGISNULL(0), seller_id, "seller_id");
	amount = CheckAmount(PG_ARGISNULL(1), PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1));
	currency = CheckCurrency(ARG_TEXT(2));
	cents = Cents(amount);

	initStringInfo(&args);
	JsonAddInt(&args, "seller_id", false, seller_id);
	JsonAddNumeric(&args, "amount", amount);
	JsonAddText(&args, "currency", currency);
	appendStringInfoChar(&args, '}');

	EngineConnect();
	if (EngineIdemClaim(key == NULL, key, "request_withdrawal", args.data, &prev))
	{
		withdrawal_id = DatumGetInt64(DirectFunctionCall1(jsonb_int8, prev));
		EngineFinish();
		PG_RETURN_INT64(withdrawal_id);
	}

	if (!LockAccount(seller_id, currency, balances))
		NoBalance(ERRCODE_INVALID_PARAMETER_VALUE, seller_id, currency);
	ClearDue(seller_id, currency, now, now, 0, &cleared);
	available = DirectFunctionCall2(numeric_add, balances[SACC_AVAILABLE], cleared);
	if (NumCmp(amount, available) > 0)
	{
		Datum		pending = DirectFunctionCall2(numeric_sub, balances[SACC_PENDING], cleared);

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("seller " INT64_FORMAT " cannot withdraw %s %s: only %s is available",
						seller_id, EngineNumericOut(amount), currency, EngineNumericOut(available)),
				 errdetail("Seller " INT64_FORMAT " has %s %s available, %s pending clearance and %s being withdrawn.",
						   seller_id, EngineNumericOut(available), currency, EngineNumericOut(pending),
						   EngineNumericOut(balances[SACC_WITHDRAWING])),
				 errhint("Withdraw at most the available balance; pending earnings become available at their clears_at (seller_balances.next_clears_at).")));
	}

	values[0] = Int64GetDatum(seller_id);
	values[1] = CStringGetTextDatum(currency);
	values[2] = amount;
	values[3] = available;
	values[4] = TimestampTzGetDatum(now);
	WriteExec(&withdraw_plan, values, NULL, SPI_OK_SELECT, seller_id, currency);
	if (SPI_processed != 1 || ResultInt64(0, 3) != 2 || ResultInt64(0, 4) != 1 || ResultInt64(0, 5) != 1)
		elog(ERROR, "milestones earnings: the withdrawal of seller " INT64_FORMAT " was not written", seller_id);
	withdrawal_id = ResultInt64(0, 1);
	f = SellerFactMake(SFACT_WITHDRAWAL, true, -1, PAY_REQUESTED, -1, -1, withdrawal_id,
					   Cents(available), cents);
	SellerCheckDeclare(seller_id, currency, &f);
	DeclareLegs(seller_id, currency, SKIND_WITHDRAWAL, ResultInt64(0, 2), withdrawal_id,
				SACC_AVAILABLE, SACC_WITHDRAWING, cents);
	DeclareMove(seller_id, currency, SACC_AVAILABLE, SACC_WITHDRAWING, cents);
	if (key != NULL)
	{
		snprintf(idbuf, sizeof(idbuf), INT64_FORMAT, withdrawal_id);
		EngineIdemStore(key, EngineJsonb(idbuf));
	}
	EngineFinish();
	PG_RETURN_INT64(withdrawal_id);
}

/*
 * CheckReportText refuses (22023) a provider_ref or failure that is given
 * but empty, blank or too long.
 */
static void
CheckReportText(text *value, const char *argument, int max_length)
{
	if (value != NULL)
		EngineCheckText(false, value, argument, max_length, true);
}

/*
 * milestones_record_withdrawal is record_withdrawal(withdrawal_id,
 * outcome, provider_ref, failure), the payment worker's report:
 * succeeded moves the amount withdrawing -> withdrawn, failed back to
 * available (a failure text is required).  The same report again changes
 * nothing and returns the same row; the other outcome after one was
 * recorded fails 55000, as does a success with another provider_ref.
 * Returns the withdrawals row.
 */
Datum
milestones_record_withdrawal(PG_FUNCTION_ARGS)
{
	int64		withdrawal_id = PG_ARGISNULL(0) ? 0 : PG_GETARG_INT64(0);
	text	   *outcome_t = ARG_TEXT(1);
	text	   *provider_ref = ARG_TEXT(2);
	text	   *failure = ARG_TEXT(3);
	MemoryContext caller = CurrentMemoryContext;
	TimestampTz now = MilestonesNow();
	char	   *outcome_s;
	int			outcome;
	int			state;
	int64		seller_id;
	char	   *currency;
	Datum		amount;
	char	   *state_s;
	char	   *stored_ref;
	char	   *reported_s;
	int64		available_before;
	int64		cents;
	bool		isnull;
	bool		succeeded;
	Datum		values[14];
	char		nulls[14];
	StringInfoData detail;
	SellerFact	f;
	Datum		result;

	EngineRefuseOnStandby("record_withdrawal");
	EngineCheckId(PG_ARGISNULL(0), withdrawal_id, "withdrawal_id");
	EngineNotNull(outcome_t == NULL, "outcome");
	outcome_s = text_to_cstring(outcome_t);
	outcome = StateCode(&WithdrawalMachine, outcome_s);
	if (outcome != PAY_SUCCEEDED && outcome != PAY_FAILED)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("outcome must be succeeded or failed"),
				 errdetail("Got %s.", EngineQuoteLiteral(outcome_s, 40))));
	succeeded = (outcome == PAY_SUCCEEDED);
	CheckReportText(provider_ref, "provider_ref", 255);
	CheckReportText(failure, "failure", 2000);
	if (!succeeded && failure == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("failure must not be NULL for a failed withdrawal"),
				 errdetail("The argument failure was NULL."),
				 errhint("Pass the provider's reason, such as \"account closed\".")));
	if (succeeded && failure != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("failure is only for a failed withdrawal"),
				 errdetail("The outcome is succeeded but failure was given."),
				 errhint("Pass failure NULL with a success.")));

	EngineConnect();
	values[0] = Int64GetDatum(withdrawal_id);
	EngineExec(&withdrawal_lock_plan, values, NULL, SPI_OK_SELECT, 0);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("withdrawal " INT64_FORMAT " does not exist", withdrawal_id),
				 errdetail("No withdrawal has id " INT64_FORMAT ".", withdrawal_id)));
	seller_id = ResultInt64(0, 1);
	currency = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	amount = datumCopy(ResultDatum(0, 3, &isnull), false, -1);
	state_s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	stored_ref = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5);
	reported_s = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6);
	available_before = Cents(ResultDatum(0, 7, &isnull));
	cents = Cents(amount);
	state = StateCode(&WithdrawalMachine, state_s);
	if (state < 0)
		elog(ERROR, "milestones earnings: withdrawal " INT64_FORMAT " has unknown state \"%s\"",
			 withdrawal_id, state_s ? state_s : "(null)");

	if (state == outcome)
	{
		/* the same report again: nothing changes (a success's reference must match) */
		if (succeeded && provider_ref != NULL && stored_ref != NULL &&
			strcmp(stored_ref, text_to_cstring(provider_ref)) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("withdrawal " INT64_FORMAT " succeeded already with another provider_ref", withdrawal_id),
					 errdetail("It was reported succeeded at %s with provider_ref %s; this report says %s.",
							   reported_s, EngineQuoteLiteral(stored_ref, 255),
							   EngineQuoteLiteral(text_to_cstring(provider_ref), 255)),
					 errhint("A withdrawal is paid once: ask the provider which payout is this withdrawal's.")));
	}
	else if (state != PAY_REQUESTED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("withdrawal " INT64_FORMAT " %s already", withdrawal_id, state_s),
				 errdetail("It was reported %s at %s; a withdrawal's outcome is final.", state_s, reported_s),
				 errhint("%s", state == PAY_SUCCEEDED ?
						 "The money has left: a later failure is a return, which the provider pays as a new transfer." :
						 "Its amount went back to available (the seller may have withdrawn it again): request a new withdrawal instead.")));
	else
	{
		/* requested -> outcome: the account's lock, then the writes */
		if (!LockAccount(seller_id, currency, NULL))
			elog(ERROR, "milestones earnings: the account of withdrawal " INT64_FORMAT " is missing", withdrawal_id);
		initStringInfo(&detail);
		JsonAddInt(&detail, "withdrawal_id", false, withdrawal_id);
		JsonAddInt(&detail, "seller_id", false, seller_id);
		JsonAddNumeric(&detail, "amount", amount);
		JsonAddText(&detail, "currency", currency);
		JsonAddText(&detail, "provider_ref", provider_ref ? text_to_cstring(provider_ref) : NULL);
		if (!succeeded)
			JsonAddText(&detail, "failure", text_to_cstring(failure));
		appendStringInfoChar(&detail, '}');

		memset(nulls, ' ', sizeof(nulls));
		values[0] = Int64GetDatum(withdrawal_id);
		values[1] = CStringGetTextDatum(outcome_s);
		values[2] = TimestampTzGetDatum(now);
		values[3] = provider_ref ? PointerGetDatum(provider_ref) : (Datum) 0;
		nulls[3] = provider_ref ? ' ' : 'n';
		values[4] = failure ? PointerGetDatum(failure) : (Datum) 0;
		nulls[4] = failure ? ' ' : 'n';
		values[5] = Int64GetDatum(seller_id);
		values[6] = CStringGetTextDatum(currency);
		values[7] = amount;
		values[8] = CStringGetTextDatum(succeeded ? "withdrawal_succeeded" : "withdrawal_failed");
		values[9] = CStringGetTextDatum(succeeded ? "withdrawn" : "available");
		values[10] = succeeded ? NumZero() : amount;
		values[11] = succeeded ? amount : NumZero();
		values[12] = CStringGetTextDatum(succeeded ? "withdrawal_succeeded" : "withdrawal_failed");
		values[13] = EngineJsonb(detail.data);
		WriteExec(&report_plan, values, nulls, SPI_OK_SELECT, seller_id, currency);
		if (SPI_processed != 1 || ResultInt64(0, 2) != 1 || ResultInt64(0, 3) != 2 ||
			ResultInt64(0, 4) != 1 || ResultInt64(0, 5) != 1)
			elog(ERROR, "milestones earnings: the report of withdrawal " INT64_FORMAT " was not written",
				 withdrawal_id);
		f = SellerFactMake(SFACT_WITHDRAWAL, false, PAY_REQUESTED, outcome, -1, -1, withdrawal_id,
						   available_before, cents);
		SellerCheckDeclare(seller_id, currency, &f);
		DeclareLegs(seller_id, currency, succeeded ? SKIND_WITHDRAWAL_SUCCEEDED : SKIND_WITHDRAWAL_FAILED,
					ResultInt64(0, 1), withdrawal_id, SACC_WITHDRAWING,
					succeeded ? SACC_WITHDRAWN : SACC_AVAILABLE, cents);
		DeclareMove(seller_id, currency, SACC_WITHDRAWING, succeeded ? SACC_WITHDRAWN : SACC_AVAILABLE, cents);
	}

	values[0] = Int64GetDatum(withdrawal_id);
	EngineExec(&withdrawal_row_plan, values, NULL, SPI_OK_SELECT, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones earnings: withdrawal " INT64_FORMAT " has no withdrawals row", withdrawal_id);
	result = RowResult(fcinfo, caller);
	EngineFinish();
	PG_RETURN_DATUM(result);
}

/*-------------------------------------------------------------------------
 * The guard trigger
 *-------------------------------------------------------------------------
 */

/* The seller table the guard fires for (set per call), for its errors. */
static const char *guard_table = NULL;

/*
 * GuardColumn finds a column the guard relies on, of the given type: a
 * column dropped, renamed or retyped by hand is refused as every reader of
 * the engine refuses it (columns.c: 42703, 42804), whatever the write was.
 */
static int
GuardColumn(TupleDesc desc, const char *name, Oid type)
{
	int			attnum = SPI_fnumber(desc, name);

	if (attnum <= 0 || TupleDescAttr(desc, attnum - 1)->atttypid != type)
	{
		ColumnSpec	spec = {name, type, false};

		ColumnRefuse(guard_table ? guard_table : "seller tables", &spec, desc);
	}
	return attnum;
}

/* WithdrawalColumnType is the type of an immutable column of seller_withdrawals. */
static Oid
WithdrawalColumnType(const char *name)
{
	if (strcmp(name, "currency") == 0)
		return TEXTOID;
	if (strcmp(name, "amount") == 0 || strcmp(name, "available_before") == 0)
		return NUMERICOID;
	if (strcmp(name, "requested_at") == 0)
		return TIMESTAMPTZOID;
	return INT8OID;				/* withdrawal_id, seller_id */
}

/* GuardText returns a text column as a C string, or NULL. */
static char *
GuardText(HeapTuple tuple, TupleDesc desc, const char *name)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, GuardColumn(desc, name, TEXTOID), desc, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* GuardInt returns a bigint column (0 for NULL; *isnull when asked). */
static int64
GuardInt(HeapTuple tuple, TupleDesc desc, const char *name, bool *isnull)
{
	int			attnum = GuardColumn(desc, name, INT8OID);
	bool		null;
	Datum		d = heap_getattr(tuple, attnum, desc, &null);

	if (isnull != NULL)
		*isnull = null;
	if (null)
		return 0;
	return DatumGetInt64(d);
}

/*
 * GuardCents returns a numeric column in cents; *exact is false when it
 * is NULL or not whole cents (a column the DBA changed).
 */
static int64
GuardCents(HeapTuple tuple, TupleDesc desc, const char *name, bool *exact)
{
	int			attnum = GuardColumn(desc, name, NUMERICOID);
	bool		isnull;
	Datum		d = heap_getattr(tuple, attnum, desc, &isnull);

	*exact = false;
	if (isnull)
		return 0;
	return NumericToCents(d, exact);
}

/* GuardChanged says whether a column differs between the old and the new row. */
static bool
GuardChanged(HeapTuple oldtup, HeapTuple newtup, TupleDesc desc, int attnum)
{
	Form_pg_attribute att = TupleDescAttr(desc, attnum - 1);
	bool		oldnull;
	bool		newnull;
	Datum		oldval = heap_getattr(oldtup, attnum, desc, &oldnull);
	Datum		newval = heap_getattr(newtup, attnum, desc, &newnull);

	if (oldnull || newnull)
		return oldnull != newnull;
	return !datumIsEqual(oldval, newval, att->attbyval, att->attlen);
}

/*
 * GuardOtherChanged returns the first column, other than the listed ones
 * (NULL-ended), that differs between the old and the new row, or NULL.
 */
static const char *
GuardOtherChanged(HeapTuple oldtup, HeapTuple newtup, TupleDesc desc, const char *const *except)
{
	int			i;

	for (i = 1; i <= desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i - 1);
		const char *const *e;
		bool		skip = false;

		if (att->attisdropped)
			continue;
		for (e = except; *e != NULL; e++)
			if (strcmp(NameStr(att->attname), *e) == 0)
				skip = true;
		if (!skip && GuardChanged(oldtup, newtup, desc, i))
			return NameStr(att->attname);
	}
	return NULL;
}

/* GuardRefuseDelete is the answer to DELETE and TRUNCATE on the seller tables. */
static void
GuardRefuseDelete(Relation rel, bool truncate)
{
	ereport(ERROR,
			(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
			 errmsg("rows of %s cannot be %s", RelationGetRelationName(rel),
					truncate ? "truncated" : "deleted"),
			 errdetail("milestones keeps every seller balance, earning, withdrawal, hold and journal entry as the system of record."),
			 errhint("Seller balances change only through the API (clear_earnings, request_withdrawal, record_withdrawal, hold_clearance, release_clearance).")));
}

/* GuardImmutable refuses a change of a column fixed when the row was written. */
static void
GuardImmutable(const char *column, const char *label)
{
	ereport(ERROR,
			(errcode(ERRCODE_CHECK_VIOLATION),
			 errmsg("column \"%s\" of %s cannot change", column, label),
			 errdetail("%s is fixed when the row is written.", column),
			 errhint("Seller balances change only through the milestones API functions.")));
}

/*
 * GuardAccount: an account's identity is fixed; each balance column that
 * changes is a fact (INSERT: from 0).
 */
static void
GuardAccount(HeapTuple oldtup, HeapTuple newtup, TupleDesc desc)
{
	static const char *const balance_columns[] = {"pending", "available", "withdrawing", "withdrawn"};
	static const char *const changeable[] = {"pending", "available", "withdrawing", "withdrawn", NULL};
	int64		seller_id = GuardInt(newtup, desc, "seller_id", NULL);
	char	   *currency = GuardText(newtup, desc, "currency");
	bool		any = false;
	int			i;

	if (oldtup != NULL)
	{
		const char *changed = GuardOtherChanged(oldtup, newtup, desc, changeable);

		if (changed != NULL)
			GuardImmutable(changed, psprintf("the account of seller " INT64_FORMAT " in %s",
											 GuardInt(oldtup, desc, "seller_id", NULL),
											 GuardText(oldtup, desc, "currency")));
	}
	for (i = 0; i < SACC_BALANCES; i++)
	{
		bool		exact_new;
		bool		exact_old = true;
		int64		new_cents = GuardCents(newtup, desc, balance_columns[i], &exact_new);
		int64		old_cents = oldtup ? GuardCents(oldtup, desc, balance_columns[i], &exact_old) : 0;

		if (!exact_new || !exact_old)
		{
			SellerCheckTaint(seller_id, currency);
			any = true;
			continue;
		}
		if (new_cents != old_cents)
		{
			SellerFact	f = SellerFactMake(SFACT_ACCOUNT, oldtup == NULL, -1, -1, -1, i, 0, 0,
										   new_cents - old_cents);

			SellerCheckObserve(seller_id, currency, &f, oldtup != NULL);
			any = true;
		}
	}
	if (!any)
		SellerCheckObserve(seller_id, currency, NULL, oldtup != NULL);
}

/* GuardLedger: the journal is append-only; each new leg is a fact. */
static void
GuardLedger(Relation rel, HeapTuple newtup, TupleDesc desc)
{
	int64		seller_id = GuardInt(newtup, desc, "seller_id", NULL);
	char	   *currency = GuardText(newtup, desc, "currency");
	char	   *kind = GuardText(newtup, desc, "kind");
	char	   *account = GuardText(newtup, desc, "account");
	int			kind_code = LedgerCode(SellerKindNames, kind);
	int			account_code = LedgerCode(SellerAccountNames, account);
	bool		earning_null;
	bool		withdrawal_null;
	int64		earning_id = GuardInt(newtup, desc, "earning_id", &earning_null);
	int64		withdrawal_id = GuardInt(newtup, desc, "withdrawal_id", &withdrawal_null);
	bool		exact;
	int64		cents = GuardCents(newtup, desc, "amount", &exact);
	SellerFact	f;

	(void) rel;
	if (!exact || kind_code < 0 || account_code < 0)
	{
		SellerCheckTaint(seller_id, currency);
		return;
	}
	f = SellerFactMake(SFACT_LEG, true, -1, -1, kind_code, account_code,
					   GuardInt(newtup, desc, "txn_id", NULL),
					   !earning_null ? earning_id : withdrawal_id, cents);
	SellerCheckObserve(seller_id, currency, &f, false);
}

/*
 * GuardEarning: an earning changes once, when it clears (cleared_at from
 * NULL to a time); every other column is fixed.
 */
static void
GuardEarning(HeapTuple oldtup, HeapTuple newtup, TupleDesc desc)
{
	static const char *const changeable[] = {"cleared_at", NULL};
	int64		seller_id = GuardInt(newtup, desc, "seller_id", NULL);
	char	   *currency = GuardText(newtup, desc, "currency");
	int64		earning_id = GuardInt(newtup, desc, "earning_id", NULL);
	int			cleared_col = GuardColumn(desc, "cleared_at", TIMESTAMPTZOID);
	bool		new_pending;
	bool		old_pending = true;
	bool		exact;
	int64		cents = GuardCents(newtup, desc, "amount", &exact);
	SellerFact	f;
	char		label[64];

	heap_getattr(newtup, cleared_col, desc, &new_pending);
	snprintf(label, sizeof(label), "earning " INT64_FORMAT, earning_id);
	if (oldtup != NULL)
	{
		const char *changed;

		heap_getattr(oldtup, cleared_col, desc, &old_pending);
		if (!old_pending && GuardChanged(oldtup, newtup, desc, cleared_col))
		{
			bool		isnull;
			Datum		at = heap_getattr(oldtup, cleared_col, desc, &isnull);

			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("%s cleared at %s and can no longer change", label,
							EngineTimestampOut(false, DatumGetTimestampTz(at))),
					 errdetail("An earning becomes available once; its cleared_at never changes again.")));
		}
		changed = GuardOtherChanged(oldtup, newtup, desc, changeable);
		if (changed != NULL)
			GuardImmutable(changed, label);
		if (old_pending == new_pending)
		{
			SellerCheckObserve(seller_id, currency, NULL, true);
			return;
		}
	}
	if (!exact)
	{
		SellerCheckTaint(seller_id, currency);
		return;
	}
	f = SellerFactMake(SFACT_EARNING, oldtup == NULL, oldtup == NULL ? -1 : 0, new_pending ? 0 : 1,
					   -1, -1, earning_id, GuardInt(newtup, desc, "order_id", NULL), cents);
	SellerCheckObserve(seller_id, currency, &f, oldtup != NULL);
}

/* GuardHold: a hold is released once (released_at from NULL); nothing else changes. */
static void
GuardHold(HeapTuple oldtup, HeapTuple newtup, TupleDesc desc)
{
	static const char *const changeable[] = {"released_at", NULL};
	int			released_col = GuardColumn(desc, "released_at", TIMESTAMPTZOID);
	bool		old_open;
	const char *changed;
	char		label[64];

	snprintf(label, sizeof(label), "hold " INT64_FORMAT, GuardInt(oldtup, desc, "hold_id", NULL));
	heap_getattr(oldtup, released_col, desc, &old_open);
	if (!old_open && GuardChanged(oldtup, newtup, desc, released_col))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s was released and can no longer change", label),
				 errdetail("A hold is released once; hold the seller again with hold_clearance.")));
	changed = GuardOtherChanged(oldtup, newtup, desc, changeable);
	if (changed != NULL)
		GuardImmutable(changed, label);
}

/*
 * GuardWithdrawal: a withdrawal follows WithdrawalMachine (states.c):
 * requested -> succeeded | failed, with the provider's answer; its
 * identity and amounts are fixed, and an answered one is frozen.
 */
static void
GuardWithdrawal(HeapTuple oldtup, HeapTuple newtup, TupleDesc desc)
{
	static const char *const answer[] = {"state", "reported_at", "provider_ref", "failure", NULL};
	static const char *const no_columns[] = {NULL};
	int64		seller_id = GuardInt(newtup, desc, "seller_id", NULL);
	char	   *currency = GuardText(newtup, desc, "currency");
	int64		withdrawal_id = GuardInt(newtup, desc, "withdrawal_id", NULL);
	char	   *newstate = GuardText(newtup, desc, "state");
	int			newcode = StateCode(&WithdrawalMachine, newstate);
	int			oldcode = -1;
	bool		exact_amount;
	bool		exact_before;
	int64		cents = GuardCents(newtup, desc, "amount", &exact_amount);
	int64		before = GuardCents(newtup, desc, "available_before", &exact_before);
	char		label[64];
	SellerFact	f;

	snprintf(label, sizeof(label), "withdrawal " INT64_FORMAT, withdrawal_id);
	if (newcode < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("invalid withdrawal state \"%s\"", newstate ? newstate : "(null)"),
				 errdetail("A withdrawal is requested, succeeded or failed.")));
	if (oldtup != NULL)
	{
		char	   *oldstate = GuardText(oldtup, desc, "state");
		const char *const *imm;
		const char *changed;

		oldcode = StateCode(&WithdrawalMachine, oldstate);
		if (oldcode < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("%s has an unknown state \"%s\"", label, oldstate ? oldstate : "(null)")));
		for (imm = WithdrawalMachine.immutable; *imm != NULL; imm++)
			if (GuardChanged(oldtup, newtup, desc, GuardColumn(desc, *imm, WithdrawalColumnType(*imm))))
				GuardImmutable(*imm, label);
		changed = GuardOtherChanged(oldtup, newtup, desc, answer);
		if (changed != NULL)
			GuardImmutable(changed, label);
		changed = GuardOtherChanged(oldtup, newtup, desc, no_columns);
		if (changed == NULL)
		{
			SellerCheckObserve(seller_id, currency, NULL, true);
			return;
		}
		if (StateIsFinal(&WithdrawalMachine, oldcode))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("%s is %s and can no longer change", label, oldstate),
					 errdetail("Attempted change of column \"%s\"; %s is a final state.", changed, oldstate)));
		if (oldcode == newcode)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("%s changes only with the provider's answer", label),
					 errdetail("Attempted change of column \"%s\" while the withdrawal stays %s.", changed, oldstate),
					 errhint("The payment worker records the answer with record_withdrawal.")));
		if (!StateTransitionAllowed(&WithdrawalMachine, oldcode, newcode))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("%s cannot go from %s to %s", label, oldstate, newstate),
					 errdetail("The withdrawal state machine has no transition from %s to %s.", oldstate, newstate),
					 errhint("The payment worker records the answer with record_withdrawal.")));
	}
	if (!exact_amount || !exact_before)
	{
		SellerCheckTaint(seller_id, currency);
		return;
	}
	f = SellerFactMake(SFACT_WITHDRAWAL, oldtup == NULL, oldcode, newcode, -1, -1, withdrawal_id,
					   before, cents);
	SellerCheckObserve(seller_id, currency, &f, oldtup != NULL);
}

/*
 * milestones_guard_seller guards seller_accounts, seller_ledger,
 * seller_earnings, seller_holds and seller_withdrawals (BEFORE ROW,
 * TRUNCATE): the journal is append-only, an earning changes only when it
 * clears, a hold only when released, a withdrawal only as WithdrawalMachine
 * allows, an account's identity never; no DELETE or TRUNCATE.  Every write
 * it allows is a fact of its seller and currency for the commit check
 * (sellercheck.c), and a row it saw for the row balance; a row a later
 * BEFORE trigger may rewrite is no fact (the seller gets the full check).
 */
Datum
milestones_guard_seller(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata;
	Relation	rel;
	TupleDesc	desc;
	const char *table;
	HeapTuple	oldtup = NULL;
	HeapTuple	newtup;
	SellerRowTable rows;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_guard_seller\" was not called by trigger manager")));
	trigdata = (TriggerData *) fcinfo->context;
	if (!TRIGGER_FIRED_BEFORE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_guard_seller\" must be fired BEFORE")));
	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) && !TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_guard_seller\" must be fired FOR EACH ROW")));
	rel = trigdata->tg_relation;
	desc = RelationGetDescr(rel);
	table = RelationGetRelationName(rel);
	guard_table = table;
	if (strcmp(table, "seller_accounts") != 0 && strcmp(table, "seller_ledger") != 0 &&
		strcmp(table, "seller_earnings") != 0 && strcmp(table, "seller_holds") != 0 &&
		strcmp(table, "seller_withdrawals") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_guard_seller\" guards only the seller tables"),
				 errdetail("It was fired on table %s.", table)));
	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		GuardRefuseDelete(rel, true);
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		GuardRefuseDelete(rel, false);

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		oldtup = trigdata->tg_trigtuple;
		newtup = trigdata->tg_newtuple;
	}
	else
		newtup = trigdata->tg_trigtuple;

	if (strcmp(table, "seller_ledger") == 0)
	{
		if (oldtup != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
					 errmsg("%s is append-only", table),
					 errdetail("Journal entries are never updated, deleted or truncated."),
					 errhint("Correct a mistake with a new balancing transaction.")));
		GuardLedger(rel, newtup, desc);
		rows = SROW_LEDGER;
	}
	else if (strcmp(table, "seller_accounts") == 0)
	{
		GuardAccount(oldtup, newtup, desc);
		rows = SROW_ACCOUNTS;
	}
	else if (strcmp(table, "seller_earnings") == 0)
	{
		GuardEarning(oldtup, newtup, desc);
		rows = SROW_EARNINGS;
	}
	else if (strcmp(table, "seller_withdrawals") == 0)
	{
		GuardWithdrawal(oldtup, newtup, desc);
		rows = SROW_WITHDRAWALS;
	}
	else
	{
		if (oldtup != NULL)
			GuardHold(oldtup, newtup, desc);
		return PointerGetDatum(newtup);
	}

	/*
	 * The row balance counts the row as seen.  A BEFORE trigger firing
	 * after this one may still change it, so what the guard observed may
	 * not be what is written: the seller gets the full check.
	 */
	SellerCheckSeen(rows);
	if (LaterTriggerMayRewrite(trigdata))
		SellerCheckTaint(GuardInt(newtup, desc, "seller_id", NULL), GuardText(newtup, desc, "currency"));
	return PointerGetDatum(newtup);
}
