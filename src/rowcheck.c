/*-------------------------------------------------------------------------
 *
 * src/rowcheck.c
 *		The row rules of orders, order_milestones, ledger_entries and
 *		events: every rule that 1.0 declared as a CHECK constraint of its
 *		own, evaluated in C by one CHECK constraint per table.
 *
 * PostgreSQL rebuilds a table's CHECK expressions from their stored text
 * for every statement that writes the table (ExecRelCheck: stringToNode and
 * expression planning of each constraint, per statement).  With the 15
 * rules of order_milestones and the 15 of orders that was a third of the CPU
 * of an API call, more than evaluating them.  Here each table has one
 * CHECK constraint calling one function of this file with the row's
 * columns; the function evaluates the same rules, with the same SQL
 * semantics (a rule passes when it is true or NULL), in the order
 * PostgreSQL applies CHECK constraints (by name), and refuses a row exactly
 * as the rule's own constraint would have: SQLSTATE 23514, "new row for
 * relation ... violates check constraint <rule>", the failing row in the
 * DETAIL, and the schema, table and constraint fields.
 *
 * Being CHECK constraints, the rules hold for every writer, API or DBA,
 * also with session_replication_role = replica (which switches off the
 * guard triggers but never a CHECK).  The constraint comments list the
 * rules in SQL, and test/sql/36_row_rules.sql breaks each one.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "milestones.h"

PG_FUNCTION_INFO_V1(milestones_orders_row_valid);
PG_FUNCTION_INFO_V1(milestones_milestones_row_valid);
PG_FUNCTION_INFO_V1(milestones_ledger_row_valid);
PG_FUNCTION_INFO_V1(milestones_events_row_valid);

/* SQL's three truth values: a CHECK fails only on false. */
typedef enum Truth
{
	T_FALSE,
	T_TRUE,
	T_NULL
} Truth;

#define ROW_MAX_COLS COLUMN_MAP_MAX

/*
 * The row being checked, column by column in the order of the table's
 * column list below (not attribute numbers: a table that gained or lost
 * columns since still maps by name).
 */
typedef struct RowArgs
{
	Datum		values[ROW_MAX_COLS];
	bool		isnull[ROW_MAX_COLS];
	Oid			collation[ROW_MAX_COLS];
} RowArgs;

#define ARG(r, n) ((r)->values[n])

/* One rule: its constraint name in 1.0 and its test. */
typedef struct RowRule
{
	const char *name;
	Truth		(*test) (const RowArgs *r);
} RowRule;

/* TAnd is SQL's AND. */
static inline Truth
TAnd(Truth a, Truth b)
{
	if (a == T_FALSE || b == T_FALSE)
		return T_FALSE;
	if (a == T_NULL || b == T_NULL)
		return T_NULL;
	return T_TRUE;
}

/* TOr is SQL's OR. */
static inline Truth
TOr(Truth a, Truth b)
{
	if (a == T_TRUE || b == T_TRUE)
		return T_TRUE;
	if (a == T_NULL || b == T_NULL)
		return T_NULL;
	return T_FALSE;
}

/* TNot is SQL's NOT. */
static inline Truth
TNot(Truth a)
{
	return a == T_NULL ? T_NULL : (a == T_TRUE ? T_FALSE : T_TRUE);
}

/* TEq is SQL's = between two truth values. */
static inline Truth
TEq(Truth a, Truth b)
{
	if (a == T_NULL || b == T_NULL)
		return T_NULL;
	return a == b ? T_TRUE : T_FALSE;
}

/* TOf turns a C condition into a truth value. */
static inline Truth
TOf(bool b)
{
	return b ? T_TRUE : T_FALSE;
}

/* IsNull is "col IS NULL" (never NULL itself). */
static inline bool
IsNull(const RowArgs *r, int col)
{
	return r->isnull[col];
}


/* TextIs is "col = 'value'" for a text column (deterministic collation). */
static Truth
TextIs(const RowArgs *r, int col, const char *value)
{
	text	   *t;
	size_t		len = strlen(value);

	if (IsNull(r, col))
		return T_NULL;
	t = DatumGetTextPP(ARG(r, col));
	return TOf(VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), value, len) == 0);
}

/* TextIn is "col IN (values...)" for a text column; values ends with NULL. */
static Truth
TextIn(const RowArgs *r, int col, const char *const *values)
{
	if (IsNull(r, col))
		return T_NULL;
	for (; *values != NULL; values++)
		if (TextIs(r, col, *values) == T_TRUE)
			return T_TRUE;
	return T_FALSE;
}

/* TextLengthBetween is "length(col) BETWEEN lo AND hi" (characters). */
static Truth
TextLengthBetween(const RowArgs *r, int col, int lo, int hi)
{
	text	   *t;
	int			n;

	if (IsNull(r, col))
		return T_NULL;
	t = DatumGetTextPP(ARG(r, col));
	n = pg_mbstrlen_with_len(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	return TOf(n >= lo && n <= hi);
}

/* IsoCurrency is "col ~ '^[A-Z]{3}$'": three letters A to Z. */
static Truth
IsoCurrency(const RowArgs *r, int col)
{
	text	   *t;
	const char *s;

	if (IsNull(r, col))
		return T_NULL;
	t = DatumGetTextPP(ARG(r, col));
	s = VARDATA_ANY(t);
	return TOf(VARSIZE_ANY_EXHDR(t) == 3 &&
			   s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z' &&
			   s[2] >= 'A' && s[2] <= 'Z');
}

/*
 * NotBlank is "col ~ '[^[:space:]]'".  A printable ASCII character (0x21
 * to 0x7E: never a space in any locale or collation provider) decides it
 * at once; anything else (white space, control characters, which ICU
 * counts as spaces from 0x1C to 0x1F, or characters beyond ASCII, whose
 * class depends on the locale) asks the regular expression itself, with
 * the column's collation.
 */
static Truth
NotBlank(const RowArgs *r, int col)
{
	text	   *t;
	const unsigned char *s;
	int			len;
	int			i;

	if (IsNull(r, col))
		return T_NULL;
	t = DatumGetTextPP(ARG(r, col));
	s = (const unsigned char *) VARDATA_ANY(t);
	len = VARSIZE_ANY_EXHDR(t);
	for (i = 0; i < len; i++)
		if (s[i] >= 0x21 && s[i] <= 0x7E)
			return T_TRUE;
	return TOf(DatumGetBool(DirectFunctionCall2Coll(textregexeq,
													OidIsValid(r->collation[col]) ? r->collation[col] : DEFAULT_COLLATION_OID,
													PointerGetDatum(t),
													CStringGetTextDatum("[^[:space:]]"))));
}


/* Int64Positive is "col > 0" for a bigint column. */
static Truth
Int64Positive(const RowArgs *r, int col)
{
	if (IsNull(r, col))
		return T_NULL;
	return TOf(DatumGetInt64(ARG(r, col)) > 0);
}

/* Int32Between is "col BETWEEN lo AND hi" for an integer column. */
static Truth
Int32Between(const RowArgs *r, int col, int32 lo, int32 hi)
{
	int32		v;

	if (IsNull(r, col))
		return T_NULL;
	v = DatumGetInt32(ARG(r, col));
	return TOf(v >= lo && v <= hi);
}

/* Int16Between is the same for a smallint column. */
static Truth
Int16Between(const RowArgs *r, int col, int16 lo, int16 hi)
{
	int16		v;

	if (IsNull(r, col))
		return T_NULL;
	v = DatumGetInt16(ARG(r, col));
	return TOf(v >= lo && v <= hi);
}

/*
 * NumericCmpInt compares a numeric column with a small integer constant
 * the way numeric's operators do (NaN above every number); *cmp gets the
 * sign.  Returns false for NULL.
 */
static bool
NumericCmpInt(const RowArgs *r, int col, int64 value, int *cmp)
{
	if (IsNull(r, col))
		return false;
	*cmp = DatumGetInt32(DirectFunctionCall2(numeric_cmp, ARG(r, col),
											 NumericGetDatum(int64_to_numeric(value))));
	return true;
}

/*
 * TimeGe is "a >= b" for two timestamptz columns (infinities included);
 * NULL when either is NULL.
 */
static Truth
TimeGe(const RowArgs *r, int a, int b)
{
	if (IsNull(r, a) || IsNull(r, b))
		return T_NULL;
	return TOf(timestamp_cmp_internal(DatumGetTimestampTz(ARG(r, a)),
									  DatumGetTimestampTz(ARG(r, b))) >= 0);
}

/*-------------------------------------------------------------------------
 * orders: (order_id, seller_id, buyer_id, category, currency, state,
 * end_reason, cancel_reason, cancelled_by, cancel_note, revisions_allowed,
 * revisions_used, fee_rate, created_at, placed_at, completed_at)
 *-------------------------------------------------------------------------
 */
enum
{
	O_ORDER_ID, O_SELLER_ID, O_BUYER_ID, O_CATEGORY, O_CURRENCY, O_STATE,
	O_END_REASON, O_CANCEL_REASON, O_CANCELLED_BY, O_CANCEL_NOTE,
	O_REVISIONS_ALLOWED, O_REVISIONS_USED, O_FEE_RATE, O_CREATED_AT,
	O_PLACED_AT, O_COMPLETED_AT, O_PAYMENT_MODE, O_NCOLS
};

static const char *const order_states[] =
{"offered", "active", "completed", "withdrawn", "declined", "cancelled", NULL};
static const char *const order_running[] = {"offered", "active", NULL};
static const char *const order_placed[] = {"active", "completed", NULL};
static const char *const order_unplaced[] = {"offered", "withdrawn", "declined", NULL};
static const char *const order_ended_by_reason[] = {"completed", "cancelled", NULL};
static const char *const end_reasons[] = {"finished", "stopped", "expired", "unpaid", NULL};
static const char *const payment_modes[] = {"recorded", "confirmed", NULL};

/* orders_seller_id_positive: seller_id > 0 */
static Truth
OrdersSellerIdPositive(const RowArgs *r)
{
	return Int64Positive(r, O_SELLER_ID);
}

/* orders_buyer_id_positive: buyer_id > 0 */
static Truth
OrdersBuyerIdPositive(const RowArgs *r)
{
	return Int64Positive(r, O_BUYER_ID);
}

/* orders_buyer_is_not_seller: buyer_id <> seller_id */
static Truth
OrdersBuyerIsNotSeller(const RowArgs *r)
{
	if (IsNull(r, O_BUYER_ID) || IsNull(r, O_SELLER_ID))
		return T_NULL;
	return TOf(DatumGetInt64(ARG(r, O_BUYER_ID)) != DatumGetInt64(ARG(r, O_SELLER_ID)));
}

/* orders_currency_iso4217: currency ~ '^[A-Z]{3}$' */
static Truth
OrdersCurrency(const RowArgs *r)
{
	return IsoCurrency(r, O_CURRENCY);
}

/* orders_state_valid: state IN ('offered', ..., 'cancelled') */
static Truth
OrdersStateValid(const RowArgs *r)
{
	return TextIn(r, O_STATE, order_states);
}

/* orders_end_reason_valid: end_reason IN ('finished','stopped','expired','unpaid') */
static Truth
OrdersEndReasonValid(const RowArgs *r)
{
	return TextIn(r, O_END_REASON, end_reasons);
}

/*
 * orders_payment_mode_valid: payment_mode IN ('recorded','confirmed') AND
 * (end_reason <> 'unpaid' OR payment_mode = 'confirmed'); a 1.1 table has
 * no payment_mode (read as NULL: the rule passes, as SQL's would).
 */
static Truth
OrdersPaymentModeValid(const RowArgs *r)
{
	return TAnd(TextIn(r, O_PAYMENT_MODE, payment_modes),
				TOr(TNot(TextIs(r, O_END_REASON, "unpaid")), TextIs(r, O_PAYMENT_MODE, "confirmed")));
}

/* orders_cancelled_by_length: length(cancelled_by) BETWEEN 1 AND 200 */
static Truth
OrdersCancelledByLength(const RowArgs *r)
{
	return TextLengthBetween(r, O_CANCELLED_BY, 1, 200);
}

/* orders_cancel_note_length: length(cancel_note) <= 2000 */
static Truth
OrdersCancelNoteLength(const RowArgs *r)
{
	return TextLengthBetween(r, O_CANCEL_NOTE, 0, 2000);
}

/* orders_revisions_allowed_range: revisions_allowed >= 0 */
static Truth
OrdersRevisionsAllowedRange(const RowArgs *r)
{
	return Int32Between(r, O_REVISIONS_ALLOWED, 0, PG_INT32_MAX);
}

/*
 * orders_revisions_used_range: revisions_used >= 0 AND
 * (revisions_allowed IS NULL OR revisions_used <= revisions_allowed)
 */
static Truth
OrdersRevisionsUsedRange(const RowArgs *r)
{
	Truth		le;

	if (IsNull(r, O_REVISIONS_USED))
		le = T_NULL;
	else if (IsNull(r, O_REVISIONS_ALLOWED))
		le = T_NULL;
	else
		le = TOf(DatumGetInt32(ARG(r, O_REVISIONS_USED)) <= DatumGetInt32(ARG(r, O_REVISIONS_ALLOWED)));
	return TAnd(Int32Between(r, O_REVISIONS_USED, 0, PG_INT32_MAX),
				TOr(TOf(IsNull(r, O_REVISIONS_ALLOWED)), le));
}

/* orders_fee_rate_range: fee_rate >= 0 AND fee_rate < 1 */
static Truth
OrdersFeeRateRange(const RowArgs *r)
{
	int			c0,
				c1;

	if (!NumericCmpInt(r, O_FEE_RATE, 0, &c0) || !NumericCmpInt(r, O_FEE_RATE, 1, &c1))
		return T_NULL;
	return TOf(c0 >= 0 && c1 < 0);
}

/*
 * orders_reason_matches_state:
 *   (state = 'completed' AND end_reason IS NOT NULL AND cancel_reason IS NULL) OR
 *   (state = 'cancelled' AND end_reason IS NULL AND cancel_reason IS NOT NULL
 *    AND cancelled_by IS NOT NULL) OR
 *   (state NOT IN ('completed','cancelled') AND end_reason IS NULL AND cancel_reason IS NULL)
 */
static Truth
OrdersReasonMatchesState(const RowArgs *r)
{
	bool		er = IsNull(r, O_END_REASON);
	bool		cr = IsNull(r, O_CANCEL_REASON);
	bool		cb = IsNull(r, O_CANCELLED_BY);

	return TOr(TOr(TAnd(TextIs(r, O_STATE, "completed"), TOf(!er && cr)),
				   TAnd(TextIs(r, O_STATE, "cancelled"), TOf(er && !cr && !cb))),
			   TAnd(TNot(TextIn(r, O_STATE, order_ended_by_reason)), TOf(er && cr)));
}

/* orders_ended_has_completed_at: (state IN ('offered','active')) = (completed_at IS NULL) */
static Truth
OrdersEndedHasCompletedAt(const RowArgs *r)
{
	return TEq(TextIn(r, O_STATE, order_running), TOf(IsNull(r, O_COMPLETED_AT)));
}

/*
 * orders_placed_at_matches_state:
 *   (state IN ('active','completed') AND placed_at IS NOT NULL) OR
 *   (state IN ('offered','withdrawn','declined') AND placed_at IS NULL) OR
 *   state = 'cancelled'
 */
static Truth
OrdersPlacedAtMatchesState(const RowArgs *r)
{
	bool		pa = IsNull(r, O_PLACED_AT);

	return TOr(TOr(TAnd(TextIn(r, O_STATE, order_placed), TOf(!pa)),
				   TAnd(TextIn(r, O_STATE, order_unplaced), TOf(pa))),
			   TextIs(r, O_STATE, "cancelled"));
}

/*
 * orders_times_ordered: placed_at >= created_at AND completed_at >=
 * created_at AND completed_at >= placed_at
 */
static Truth
OrdersTimesOrdered(const RowArgs *r)
{
	return TAnd(TAnd(TimeGe(r, O_PLACED_AT, O_CREATED_AT),
					 TimeGe(r, O_COMPLETED_AT, O_CREATED_AT)),
				TimeGe(r, O_COMPLETED_AT, O_PLACED_AT));
}

static RowRule order_rules[] =
{
	{"orders_buyer_id_positive", OrdersBuyerIdPositive},
	{"orders_buyer_is_not_seller", OrdersBuyerIsNotSeller},
	{"orders_cancel_note_length", OrdersCancelNoteLength},
	{"orders_cancelled_by_length", OrdersCancelledByLength},
	{"orders_currency_iso4217", OrdersCurrency},
	{"orders_end_reason_valid", OrdersEndReasonValid},
	{"orders_ended_has_completed_at", OrdersEndedHasCompletedAt},
	{"orders_fee_rate_range", OrdersFeeRateRange},
	{"orders_payment_mode_valid", OrdersPaymentModeValid},
	{"orders_placed_at_matches_state", OrdersPlacedAtMatchesState},
	{"orders_reason_matches_state", OrdersReasonMatchesState},
	{"orders_revisions_allowed_range", OrdersRevisionsAllowedRange},
	{"orders_revisions_used_range", OrdersRevisionsUsedRange},
	{"orders_seller_id_positive", OrdersSellerIdPositive},
	{"orders_state_valid", OrdersStateValid},
	{"orders_times_ordered", OrdersTimesOrdered},
	{NULL, NULL}
};

/*-------------------------------------------------------------------------
 * order_milestones: (order_id, position, name, days, amount, final, state,
 * started_at, due_at, delivered_at, respond_by, completed_at, deliveries,
 * delivery_note, cancel_reason, cancelled_by, cancel_note)
 *-------------------------------------------------------------------------
 */
enum
{
	M_ORDER_ID, M_POSITION, M_NAME, M_DAYS, M_AMOUNT, M_FINAL, M_STATE,
	M_STARTED_AT, M_DUE_AT, M_DELIVERED_AT, M_RESPOND_BY, M_COMPLETED_AT,
	M_DELIVERIES, M_DELIVERY_NOTE, M_CANCEL_REASON, M_CANCELLED_BY,
	M_CANCEL_NOTE, M_NCOLS
};

static const char *const milestone_states[] =
{"pending", "in_progress", "delivered", "completed", "skipped", "refunded", "cancelled",
"awaiting_payment", NULL};
static const char *const milestone_unstarted[] =
{"pending", "skipped", "cancelled", "awaiting_payment", NULL};
static const char *const milestone_cancelled[] = {"cancelled", "refunded", NULL};

/* milestones_position_range: position BETWEEN 1 AND 20 */
static Truth
MsPositionRange(const RowArgs *r)
{
	return Int16Between(r, M_POSITION, 1, 20);
}

/* milestones_name_valid: length(name) BETWEEN 1 AND 200 AND name ~ '[^[:space:]]' */
static Truth
MsNameValid(const RowArgs *r)
{
	Truth		len = TextLengthBetween(r, M_NAME, 1, 200);

	if (len == T_FALSE)
		return T_FALSE;
	return TAnd(len, NotBlank(r, M_NAME));
}

/* milestones_days_range: days BETWEEN 1 AND 365 */
static Truth
MsDaysRange(const RowArgs *r)
{
	return Int16Between(r, M_DAYS, 1, 365);
}

/* milestones_amount_positive: amount > 0 */
static Truth
MsAmountPositive(const RowArgs *r)
{
	int			c;

	if (!NumericCmpInt(r, M_AMOUNT, 0, &c))
		return T_NULL;
	return TOf(c > 0);
}

/* milestones_state_valid: state IN ('pending', ..., 'cancelled', 'awaiting_payment') */
static Truth
MsStateValid(const RowArgs *r)
{
	return TextIn(r, M_STATE, milestone_states);
}

/* milestones_deliveries_range: deliveries >= 0 */
static Truth
MsDeliveriesRange(const RowArgs *r)
{
	return Int32Between(r, M_DELIVERIES, 0, PG_INT32_MAX);
}

/* milestones_delivery_note_length: length(delivery_note) <= 2000 */
static Truth
MsDeliveryNoteLength(const RowArgs *r)
{
	return TextLengthBetween(r, M_DELIVERY_NOTE, 0, 2000);
}

/* milestones_cancelled_by_length: length(cancelled_by) BETWEEN 1 AND 200 */
static Truth
MsCancelledByLength(const RowArgs *r)
{
	return TextLengthBetween(r, M_CANCELLED_BY, 1, 200);
}

/* milestones_cancel_note_length: length(cancel_note) <= 2000 */
static Truth
MsCancelNoteLength(const RowArgs *r)
{
	return TextLengthBetween(r, M_CANCEL_NOTE, 0, 2000);
}

/*
 * milestones_started_has_times:
 *   (state IN ('pending','skipped','cancelled','awaiting_payment')) =
 *   (started_at IS NULL AND due_at IS NULL)
 */
static Truth
MsStartedHasTimes(const RowArgs *r)
{
	return TEq(TextIn(r, M_STATE, milestone_unstarted),
			   TOf(IsNull(r, M_STARTED_AT) && IsNull(r, M_DUE_AT)));
}

/*
 * milestones_delivered_has_deadline: state <> 'delivered' OR
 * (delivered_at IS NOT NULL AND respond_by IS NOT NULL AND respond_by > delivered_at)
 */
static Truth
MsDeliveredHasDeadline(const RowArgs *r)
{
	Truth		gt;

	if (IsNull(r, M_RESPOND_BY) || IsNull(r, M_DELIVERED_AT))
		gt = T_NULL;
	else
		gt = TOf(timestamp_cmp_internal(DatumGetTimestampTz(ARG(r, M_RESPOND_BY)),
										DatumGetTimestampTz(ARG(r, M_DELIVERED_AT))) > 0);
	return TOr(TNot(TextIs(r, M_STATE, "delivered")),
			   TAnd(TOf(!IsNull(r, M_DELIVERED_AT) && !IsNull(r, M_RESPOND_BY)), gt));
}

/* milestones_in_progress_has_no_deadline: state <> 'in_progress' OR respond_by IS NULL */
static Truth
MsInProgressHasNoDeadline(const RowArgs *r)
{
	return TOr(TNot(TextIs(r, M_STATE, "in_progress")), TOf(IsNull(r, M_RESPOND_BY)));
}

/*
 * milestones_completed_was_delivered: state <> 'completed' OR
 * (delivered_at IS NOT NULL AND completed_at IS NOT NULL AND deliveries > 0)
 */
static Truth
MsCompletedWasDelivered(const RowArgs *r)
{
	Truth		d = IsNull(r, M_DELIVERIES) ? T_NULL : TOf(DatumGetInt32(ARG(r, M_DELIVERIES)) > 0);

	return TOr(TNot(TextIs(r, M_STATE, "completed")),
			   TAnd(TOf(!IsNull(r, M_DELIVERED_AT) && !IsNull(r, M_COMPLETED_AT)), d));
}

/* milestones_completed_at_matches_state: (state = 'completed') = (completed_at IS NOT NULL) */
static Truth
MsCompletedAtMatchesState(const RowArgs *r)
{
	return TEq(TextIs(r, M_STATE, "completed"), TOf(!IsNull(r, M_COMPLETED_AT)));
}

/*
 * milestones_cancel_matches_state:
 *   (state = 'cancelled' AND cancel_reason IS NOT NULL AND cancelled_by IS NOT NULL) OR
 *   (state = 'refunded' AND (cancel_reason IS NULL) = (cancelled_by IS NULL)
 *    AND (cancel_reason IS NOT NULL OR cancel_note IS NULL)) OR
 *   (state NOT IN ('cancelled','refunded') AND cancel_reason IS NULL
 *    AND cancelled_by IS NULL AND cancel_note IS NULL)
 */
static Truth
MsCancelMatchesState(const RowArgs *r)
{
	bool		cr = IsNull(r, M_CANCEL_REASON);
	bool		cb = IsNull(r, M_CANCELLED_BY);
	bool		cn = IsNull(r, M_CANCEL_NOTE);

	return TOr(TOr(TAnd(TextIs(r, M_STATE, "cancelled"), TOf(!cr && !cb)),
				   TAnd(TextIs(r, M_STATE, "refunded"), TOf(cr == cb && (!cr || cn)))),
			   TAnd(TNot(TextIn(r, M_STATE, milestone_cancelled)), TOf(cr && cb && cn)));
}

static RowRule milestone_rules[] =
{
	{"milestones_amount_positive", MsAmountPositive},
	{"milestones_cancel_matches_state", MsCancelMatchesState},
	{"milestones_cancel_note_length", MsCancelNoteLength},
	{"milestones_cancelled_by_length", MsCancelledByLength},
	{"milestones_completed_at_matches_state", MsCompletedAtMatchesState},
	{"milestones_completed_was_delivered", MsCompletedWasDelivered},
	{"milestones_days_range", MsDaysRange},
	{"milestones_delivered_has_deadline", MsDeliveredHasDeadline},
	{"milestones_deliveries_range", MsDeliveriesRange},
	{"milestones_delivery_note_length", MsDeliveryNoteLength},
	{"milestones_in_progress_has_no_deadline", MsInProgressHasNoDeadline},
	{"milestones_name_valid", MsNameValid},
	{"milestones_position_range", MsPositionRange},
	{"milestones_started_has_times", MsStartedHasTimes},
	{"milestones_state_valid", MsStateValid},
	{NULL, NULL}
};

/*-------------------------------------------------------------------------
 * ledger_entries: (entry_id, txn_id, order_id, position, kind, account,
 * amount, currency, created_at)
 *-------------------------------------------------------------------------
 */
enum
{
	L_ENTRY_ID, L_TXN_ID, L_ORDER_ID, L_POSITION, L_KIND, L_ACCOUNT,
	L_AMOUNT, L_CURRENCY, L_CREATED_AT, L_CHARGE_ID, L_CHARGE_ATTEMPT, L_NCOLS
};

static const char *const ledger_kinds[] = {"charge", "payout", "refund", NULL};
static const char *const ledger_accounts[] = {"buyer", "escrow", "seller", "platform", NULL};

/* ledger_kind_valid: kind IN ('charge','payout','refund') */
static Truth
LedgerKindValid(const RowArgs *r)
{
	return TextIn(r, L_KIND, ledger_kinds);
}

/* ledger_account_valid: account IN ('buyer','escrow','seller','platform') */
static Truth
LedgerAccountValid(const RowArgs *r)
{
	return TextIn(r, L_ACCOUNT, ledger_accounts);
}

/* ledger_amount_nonzero: amount <> 0 */
static Truth
LedgerAmountNonzero(const RowArgs *r)
{
	int			c;

	if (!NumericCmpInt(r, L_AMOUNT, 0, &c))
		return T_NULL;
	return TOf(c != 0);
}

/* ledger_currency_iso4217: currency ~ '^[A-Z]{3}$' */
static Truth
LedgerCurrency(const RowArgs *r)
{
	return IsoCurrency(r, L_CURRENCY);
}

/*
 * ledger_charge_matches_kind: (charge_id IS NULL) = (charge_attempt IS NULL)
 * AND (charge_id IS NULL OR (kind IN ('charge','refund') AND charge_id > 0
 * AND charge_attempt >= 1)); absent in a 1.1 table (NULL).
 */
static Truth
LedgerChargeMatchesKind(const RowArgs *r)
{
	static const char *const charge_kinds[] = {"charge", "refund", NULL};
	bool		cn = IsNull(r, L_CHARGE_ID);

	if (cn != IsNull(r, L_CHARGE_ATTEMPT))
		return T_FALSE;
	if (cn)
		return T_TRUE;
	return TAnd(TextIn(r, L_KIND, charge_kinds),
				TAnd(Int64Positive(r, L_CHARGE_ID),
					 Int32Between(r, L_CHARGE_ATTEMPT, 1, PG_INT32_MAX)));
}

/* ledger_position_matches_kind: (kind = 'payout') = (position IS NULL) */
static Truth
LedgerPositionMatchesKind(const RowArgs *r)
{
	return TEq(TextIs(r, L_KIND, "payout"), TOf(IsNull(r, L_POSITION)));
}

static RowRule ledger_rules[] =
{
	{"ledger_account_valid", LedgerAccountValid},
	{"ledger_amount_nonzero", LedgerAmountNonzero},
	{"ledger_charge_matches_kind", LedgerChargeMatchesKind},
	{"ledger_currency_iso4217", LedgerCurrency},
	{"ledger_kind_valid", LedgerKindValid},
	{"ledger_position_matches_kind", LedgerPositionMatchesKind},
	{NULL, NULL}
};

/*-------------------------------------------------------------------------
 * events: (actor_role); the other columns have no row rule
 *-------------------------------------------------------------------------
 */
enum
{
	E_ACTOR_ROLE, E_ORDER_ID, E_ORDER_STATE, E_NCOLS
};

static const char *const actor_roles[] = {"seller", "buyer", "support", "system", "payments", NULL};

/* events_actor_role_valid: actor_role IN ('seller','buyer','support','system','payments') */
static Truth
EventsActorRoleValid(const RowArgs *r)
{
	return TextIn(r, E_ACTOR_ROLE, actor_roles);
}

/*
 * events_order_matches_state: (order_id IS NULL) = (order_state IS NULL):
 * an order's event names the order's state, a seller's (1.2) neither.
 */
static Truth
EventsOrderMatchesState(const RowArgs *r)
{
	return TOf(IsNull(r, E_ORDER_ID) == IsNull(r, E_ORDER_STATE));
}

static RowRule event_rules[] =
{
	{"events_actor_role_valid", EventsActorRoleValid},
	{"events_order_matches_state", EventsOrderMatchesState},
	{NULL, NULL}
};

/*-------------------------------------------------------------------------
 * The check functions
 *-------------------------------------------------------------------------
 */

/*
 * One checked table: the columns its rules read (by name, with the type
 * they read them as; in enum order) and its rules.
 */
typedef struct RowTable
{
	const char *table;
	const ColumnSpec *columns;
	int			ncolumns;
	const RowRule *rules;
	ColumnMap	map;			/* where each column sits in the row type */
} RowTable;

static const ColumnSpec order_columns[] =
{
	{"order_id", INT8OID}, {"seller_id", INT8OID}, {"buyer_id", INT8OID},
	{"category", TEXTOID}, {"currency", TEXTOID}, {"state", TEXTOID},
	{"end_reason", TEXTOID}, {"cancel_reason", TEXTOID}, {"cancelled_by", TEXTOID},
	{"cancel_note", TEXTOID}, {"revisions_allowed", INT4OID}, {"revisions_used", INT4OID},
	{"fee_rate", NUMERICOID}, {"created_at", TIMESTAMPTZOID}, {"placed_at", TIMESTAMPTZOID},
	{"completed_at", TIMESTAMPTZOID}, {"payment_mode", TEXTOID, false, true}
};
static const ColumnSpec milestone_columns[] =
{
	{"order_id", INT8OID}, {"position", INT2OID}, {"name", TEXTOID}, {"days", INT2OID},
	{"amount", NUMERICOID}, {"final", BOOLOID}, {"state", TEXTOID},
	{"started_at", TIMESTAMPTZOID}, {"due_at", TIMESTAMPTZOID},
	{"delivered_at", TIMESTAMPTZOID}, {"respond_by", TIMESTAMPTZOID},
	{"completed_at", TIMESTAMPTZOID}, {"deliveries", INT4OID}, {"delivery_note", TEXTOID},
	{"cancel_reason", TEXTOID}, {"cancelled_by", TEXTOID}, {"cancel_note", TEXTOID}
};
static const ColumnSpec ledger_columns[] =
{
	{"entry_id", INT8OID}, {"txn_id", INT8OID}, {"order_id", INT8OID},
	{"position", INT2OID}, {"kind", TEXTOID}, {"account", TEXTOID},
	{"amount", NUMERICOID}, {"currency", TEXTOID}, {"created_at", TIMESTAMPTZOID},
	{"charge_id", INT8OID, false, true}, {"charge_attempt", INT4OID, false, true}
};
static const ColumnSpec event_columns[] =
{
	{"actor_role", TEXTOID}, {"order_id", INT8OID}, {"order_state", TEXTOID}
};

static RowTable order_table = {"orders", order_columns, lengthof(order_columns), order_rules};
static RowTable milestone_table =
{"order_milestones", milestone_columns, lengthof(milestone_columns), milestone_rules};
static RowTable ledger_table = {"ledger_entries", ledger_columns, lengthof(ledger_columns), ledger_rules};
static RowTable event_table = {"events", event_columns, lengthof(event_columns), event_rules};

/*
 * RowMap finds the attribute number of each of the table's columns in the
 * row type (ColumnMapRequire: by name, once per backend and again whenever
 * the row type changed); a column that is missing or of another type is
 * refused with columns.c's error (the rules cannot be checked, so the row
 * is not written).
 */
static void
RowMap(RowTable *t, TupleDesc tupdesc, Oid typid, int32 typmod)
{
	ColumnMapRequire(&t->map, tupdesc, typid, typmod, t->table, t->columns, t->ncolumns);
}

/*
 * RowDescription is the DETAIL's "(v1, v2, ...)" of the row, as
 * PostgreSQL's own CHECK error prints it: every column through its type's
 * output function, cut at 64 bytes with "...", NULL as "null".
 */
static char *
RowDescription(TupleDesc tupdesc, Datum *values, bool *nulls)
{
	StringInfoData buf;
	bool		first = true;
	int			i;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '(');
	for (i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		char	   *val;
		int			vallen;

		if (att->attisdropped)
			continue;
		if (!first)
			appendStringInfoString(&buf, ", ");
		first = false;
		if (nulls[i])
			val = "null";
		else
		{
			Oid			typoutput;
			bool		typisvarlena;

			getTypeOutputInfo(att->atttypid, &typoutput, &typisvarlena);
			val = OidOutputFunctionCall(typoutput, values[i]);
		}
		vallen = strlen(val);
		if (vallen <= 64)
			appendStringInfoString(&buf, val);
		else
		{
			vallen = pg_mbcliplen(val, vallen, 64);
			appendBinaryStringInfo(&buf, val, vallen);
			appendStringInfoString(&buf, "...");
		}
	}
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/*
 * RowCheck takes the row (the CHECK passes the whole row: one short
 * expression for PostgreSQL to rebuild per statement), runs the table's
 * rules in name order, the order in which PostgreSQL applies CHECK
 * constraints, and refuses the row at the first rule that is false, as
 * that rule's own constraint would.
 */
static Datum
RowCheck(FunctionCallInfo fcinfo, RowTable *t)
{
	HeapTupleHeader rec;
	HeapTupleData tuple;
	TupleDesc	tupdesc;
	Oid			typid;
	int32		typmod;
	Datum	   *values;
	bool	   *nulls;
	RowArgs		r;
	const RowRule *rule;
	int			c;

	if (PG_NARGS() != 1 || PG_ARGISNULL(0))
		elog(ERROR, "milestones: the row check of %s takes one row", t->table);
	rec = PG_GETARG_HEAPTUPLEHEADER(0);
	typid = HeapTupleHeaderGetTypeId(rec);
	typmod = HeapTupleHeaderGetTypMod(rec);
	tupdesc = lookup_rowtype_tupdesc(typid, typmod);
	tuple.t_len = HeapTupleHeaderGetDatumLength(rec);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = rec;
	values = palloc(tupdesc->natts * sizeof(Datum));
	nulls = palloc(tupdesc->natts * sizeof(bool));
	heap_deform_tuple(&tuple, tupdesc, values, nulls);
	RowMap(t, tupdesc, typid, typmod);
	for (c = 0; c < t->ncolumns; c++)
	{
		int			a = t->map.attnum[c];

		if (a < 0)
		{
			/* an optional column the table does not have (yet) */
			r.values[c] = (Datum) 0;
			r.isnull[c] = true;
			r.collation[c] = InvalidOid;
			continue;
		}
		r.values[c] = values[a];
		r.isnull[c] = nulls[a];
		r.collation[c] = TupleDescAttr(tupdesc, a)->attcollation;
	}
	for (rule = t->rules; rule->name != NULL; rule++)
	{
		if (rule->test(&r) == T_FALSE)
		{
			char	   *schema = get_namespace_name(get_func_namespace(fcinfo->flinfo->fn_oid));

			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("new row for relation \"%s\" violates check constraint \"%s\"",
							t->table, rule->name),
					 errdetail("Failing row contains %s.", RowDescription(tupdesc, values, nulls)),
					 schema ? err_generic_string(PG_DIAG_SCHEMA_NAME, schema) : 0,
					 err_generic_string(PG_DIAG_TABLE_NAME, t->table),
					 err_generic_string(PG_DIAG_CONSTRAINT_NAME, rule->name)));
		}
	}
	ReleaseTupleDesc(tupdesc);
	pfree(values);
	pfree(nulls);
	PG_RETURN_BOOL(true);
}

/*
 * milestones_orders_row_valid is the CHECK of orders (orders_row_rules):
 * true, or the error of the first broken rule.
 */
Datum
milestones_orders_row_valid(PG_FUNCTION_ARGS)
{
	return RowCheck(fcinfo, &order_table);
}

/* milestones_milestones_row_valid is the CHECK of order_milestones. */
Datum
milestones_milestones_row_valid(PG_FUNCTION_ARGS)
{
	return RowCheck(fcinfo, &milestone_table);
}

/* milestones_ledger_row_valid is the CHECK of ledger_entries. */
Datum
milestones_ledger_row_valid(PG_FUNCTION_ARGS)
{
	return RowCheck(fcinfo, &ledger_table);
}

/* milestones_events_row_valid is the CHECK of events. */
Datum
milestones_events_row_valid(PG_FUNCTION_ARGS)
{
	return RowCheck(fcinfo, &event_table);
}
