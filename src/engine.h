/*-------------------------------------------------------------------------
 *
 * src/engine.h
 *		Declarations shared by the order engine's C files (engine.c,
 *		direct.c, ledger.c, actions.c): the plan cache, the order as the engine reads
 *		it, and the helpers every action uses.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MILESTONES_ENGINE_H
#define MILESTONES_ENGINE_H

#include "postgres.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/numeric.h"

#include "milestones.h"

#define ENGINE_MAX_ARGS 26
#define ENGINE_MAX_MILESTONES 20

/*
 * Whether a seller and a category are eligible for milestones, as SQL
 * (the statements that read it when the direct read of direct.c steps
 * aside): a row with eligible = true in each table.
 */
#define SELLER_ELIGIBLE_SQL(seller) \
	" EXISTS (SELECT FROM milestones.eligible_sellers es" \
	" WHERE es.seller_id OPERATOR(pg_catalog.=) " seller " AND es.eligible)"
#define CATEGORY_ELIGIBLE_SQL(category) \
	" EXISTS (SELECT FROM milestones.eligible_categories ec" \
	" WHERE ec.category OPERATOR(pg_catalog.=) " category " AND ec.eligible)"

/*
 * The columns of orders and order_milestones the engine reads, in this
 * order (by name and type, NOT NULL where the engine reads them without a
 * null test, as the tables guarantee): direct.c finds them by name, the
 * locking statements (engine.c) select them in this order, and one reader
 * (EngineOrderFromRow, EngineMilestoneFromRow) turns either into the
 * engine's picture.
 */
enum
{
	OC_ORDER_ID, OC_SELLER_ID, OC_BUYER_ID, OC_CATEGORY, OC_CURRENCY, OC_STATE,
	OC_END_REASON, OC_CANCEL_REASON, OC_REVISIONS_ALLOWED, OC_REVISIONS_USED,
	OC_FEE_RATE, OC_CREATED_AT, OC_PLACED_AT, OC_COMPLETED_AT, OC_COUNT,
	/*
	 * The direct read (direct.c) reads the payment mode with the order (a
	 * 1.2 column, optional: a 1.1 table has none); the locking statements
	 * leave it to engine.c's ReadPayments.
	 */
	OC_PAYMENT_MODE = OC_COUNT, OC_DIRECT_COUNT
};
enum
{
	MC_ORDER_ID, MC_POSITION, MC_STATE, MC_NAME, MC_FINAL, MC_AMOUNT, MC_RESPOND_BY,
	MC_DELIVERED_AT, MC_DELIVERIES, MC_DUE_AT, MC_COUNT
};
extern const ColumnSpec EngineOrderColumns[OC_DIRECT_COUNT];
extern const ColumnSpec EngineMilestoneColumns[MC_COUNT];

/* One SQL statement of the engine, prepared once per backend and kept. */
typedef struct EnginePlan
{
	const char *sql;
	int			nargs;
	Oid			argtypes[ENGINE_MAX_ARGS];
	SPIPlanPtr	plan;
	int			cursor_options; /* planner flags, as SPI_prepare_cursor */
} EnginePlan;

/* The settings create_offer and the fallback NOTIFY read. */
typedef struct EngineSettings
{
	Datum		min_total;		/* numeric */
	int32		max_milestones;
	Datum		fee_rate;		/* numeric */
	bool		notify;			/* settings.notify (NULL reads as off) */
	bool		confirmed;		/* settings.payment_mode = 'confirmed' (1.2) */
} EngineSettings;

/* One milestone as the engine read it under the order's lock. */
typedef struct EngineMilestone
{
	int			position;
	int			state;			/* MilestoneState */
	char	   *name;
	bool		final;
	Datum		amount;			/* numeric */
	bool		respond_by_null;
	TimestampTz respond_by;
	bool		delivered_at_null;
	TimestampTz delivered_at;
	int32		deliveries;
	bool		due_at_null;
	TimestampTz due_at;
} EngineMilestone;

/* One order as the engine read it: locked, with all its milestones. */
typedef struct EngineOrder
{
	int64		order_id;
	int64		seller_id;
	int64		buyer_id;
	char	   *category;
	char	   *currency;
	int			state;			/* OrderState */
	char	   *reason;			/* end_reason or cancel_reason, or NULL */
	char	   *end_reason;		/* end_reason alone, or NULL */
	bool		revisions_unlimited;
	int32		revisions_allowed;
	int32		revisions_used;
	Datum		fee_rate;		/* numeric */
	TimestampTz created_at;
	bool		placed_at_null;
	TimestampTz placed_at;
	bool		completed_at_null;
	TimestampTz completed_at;
	/* Confirmed payment mode (1.2, SPEC section 11); engine.c's ReadPayments. */
	bool		mode_known;		/* payment_mode was read with the order */
	bool		confirmed;		/* payment_mode = 'confirmed' */
	int			awaiting;		/* index of the milestone awaiting payment, or -1 */
	int64		charge_id;		/* the open charge (requested or failed), or 0 */
	int32		charge_attempts;	/* its attempts (the last is the current one) */
	int			charge_state;	/* its PaymentState */
	TimestampTz pay_by;			/* its deadline */
	Datum		late;			/* numeric: late successes, booked and refunded */
	int			nmilestones;
	EngineMilestone ms[ENGINE_MAX_MILESTONES];
	int			current;		/* index of the in-progress or delivered one, or -1 */
} EngineOrder;

/*
 * The parameters of an action's combined write statement: the event row
 * ($1-$10), one ledger transaction ($11-$19) and the action's own values
 * ($20-$26).  An action writes its rows, its ledger legs and its event in
 * one statement of data-modifying CTEs (one executor start), built from
 * the fragments below.
 */
#define ENGINE_WRITE_ARGS 26
#define ENGINE_WRITE_ARGTYPES \
	{INT8OID, INT2OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, \
	TIMESTAMPTZOID, INT2OID, TEXTOID, TEXTOID, TEXTOID, NUMERICOID, TEXTOID, NUMERICOID, \
	TEXTOID, NUMERICOID, INT2OID, INT2OID, TEXTOID, TIMESTAMPTZOID, BOOLOID, TEXTOID, \
	INT2ARRAYOID}
#define WP_ORDER 1				/* order_id */
#define WP_NOW 10				/* the action's time (the event's created_at) */
#define WP_POS_A 20				/* a milestone position */
#define WP_POS_B 21				/* another milestone position */
#define WP_TEXT 22				/* a text (note, reason) */
#define WP_AT 23				/* a time */
#define WP_BOOL 24				/* a flag */
#define WP_TEXT2 25				/* another text */
#define WP_POSITIONS 26			/* milestone positions, int2[] */

#define EVENT_COLUMNS \
	"milestones.events (order_id, position, event, actor_role, actor_id, agent," \
	" order_state, milestone_state, detail, created_at)"
/* e: the event row, $1-$10 */
#define WRITE_EVENT_CTE \
	"e AS (INSERT INTO " EVENT_COLUMNS \
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING 1)"
/* t, l: one balanced ledger transaction of up to three legs, $11-$19 */
#define WRITE_POST_CTE \
	"t AS (SELECT pg_catalog.nextval('milestones.ledger_txn_id_seq'::pg_catalog.regclass) AS txn)," \
	" l AS (INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount," \
	" currency, created_at)" \
	" SELECT t.txn, $1, $11, $12, a.account, a.amount, $13, $10" \
	" FROM t, (VALUES (1, $14, $15), (2, $16, $17), (3, $18, $19)) AS a(n, account, amount)" \
	" WHERE a.amount OPERATOR(pg_catalog.<>) 0" \
	" RETURNING txn_id, account, amount)"

/*
 * One ledger transaction as the engine computed it, before it is written:
 * the legs it declares to the commit check (check.c), zero legs left out
 * as the statements leave them out.  Only the transaction id comes from
 * the statement that writes it.
 */
typedef struct LedgerLegs
{
	int			nlegs;
	int			position;		/* -1: none */
	int			kind;			/* index in LedgerKinds */
	int			account[3];		/* indexes in LedgerAccounts */
	int64		cents[3];
} LedgerLegs;

typedef struct EngineWrite
{
	Datum		values[ENGINE_WRITE_ARGS];
	char		nulls[ENGINE_WRITE_ARGS];
	LedgerLegs	legs;			/* the ledger transaction it writes, if any */
} EngineWrite;

/* The end of an order as LedgerCompletePrepare computed it, before it is written. */
typedef struct LedgerPayout
{
	int			skipped;		/* pending milestones to skip */
	Numeric		gross;
	Numeric		fee;
	Numeric		net;
} LedgerPayout;

/* engine.c */
extern void EngineWriteInit(EngineWrite *w, EngineOrder *o, int position, const char *event,
							const char *actor_role, bool actor_null, int64 actor_id,
							const char *agent, int order_state, int milestone_state,
							const char *detail);
extern void EngineWriteSet(EngineWrite *w, int param, Datum value, bool isnull);
extern void EngineWriteExec(EnginePlan *p, EngineWrite *w);
extern int64 EngineResultInt(int col);

extern void EngineExec(EnginePlan *p, Datum *values, const char *nulls,
					   int expect, long tcount);
extern void EngineRefuseOnStandby(const char *action);
extern bool EnginePaymentsSchema(void);
extern void EngineConnect(void);
extern void EngineFinish(void);
extern void EngineCheckId(bool isnull, int64 value, const char *argument);
extern void EngineNotNull(bool isnull, const char *argument);
extern void EngineCheckText(bool isnull, text *value, const char *argument,
							int max_length, bool required);
extern int	EngineTextLength(text *value);
extern char *EngineQuoteLiteral(const char *s, int max_chars);
extern char *EngineNumericOut(Datum num);
extern char *EngineTimestampOut(bool isnull, TimestampTz ts);
extern void JsonAddKey(StringInfo buf, const char *key);
extern void JsonAddInt(StringInfo buf, const char *key, bool isnull, int64 value);
extern void JsonAddNumeric(StringInfo buf, const char *key, Datum num);
extern void JsonAddText(StringInfo buf, const char *key, const char *value);
extern void JsonAddBool(StringInfo buf, const char *key, bool value);
extern void JsonAddTimestamp(StringInfo buf, const char *key, TimestampTz ts);
extern Datum EngineJsonb(const char *json);
extern bool EngineIdemClaim(bool keynull, text *key, const char *function,
							const char *arguments, Datum *result);
extern void EngineIdemStore(text *key, Datum result);
extern bool EngineRetried(FunctionCallInfo fcinfo, MemoryContext caller, text *key,
						  const char *function, const char *arguments, Datum *result);
extern void EngineLockOrder(EngineOrder *o, int64 order_id, int64 actor_id,
							const char *role);
extern bool EngineLockOrderEligible(EngineOrder *o, int64 order_id, int64 actor_id,
									const char *role);
extern void EngineReadMilestones(EngineOrder *o);
extern void EngineOrderFromRow(EngineOrder *o, const Datum *values, const bool *nulls,
							   const int *att);
extern void EngineMilestoneFromRow(EngineOrder *o, EngineMilestone *m, const Datum *values,
								   const bool *nulls, const int *att);
extern int	EngineLockOrderDirect(EngineOrder *o, int64 order_id);
extern bool EngineEligibleDirect(int64 seller_id, const char *category, bool *seller_ok,
								 bool *category_ok, EngineSettings *settings);
extern bool EngineNotifyDirect(Oid events_nsp, bool *notify);
extern void EngineSettingsRowsError(int rows) pg_attribute_noreturn();
extern void EngineStateError(EngineOrder *o, const char *action, const char *needs) pg_attribute_noreturn();
extern EngineMilestone *EngineOpenDelivery(EngineOrder *o, const char *action);
extern void EngineEvent(EngineOrder *o, int position, const char *event,
						const char *actor_role, bool actor_null, int64 actor_id,
						const char *agent, int milestone_state, const char *detail);
extern Datum EngineEventStatus(FunctionCallInfo fcinfo, MemoryContext caller, EngineOrder *o,
							   int position, const char *event, const char *actor_role,
							   bool actor_null, int64 actor_id, const char *agent,
							   int milestone_state, const char *detail, text *key);
extern Datum EngineStatus(FunctionCallInfo fcinfo, MemoryContext caller, EngineOrder *o,
						  text *key);
extern void EngineSetEnded(EngineOrder *o, const char *end_reason, const char *cancel_reason,
						   TimestampTz at);
extern Datum EngineStoredStatus(FunctionCallInfo fcinfo, MemoryContext caller,
								Datum stored);
extern void EngineSetMilestone(EngineOrder *o, EngineMilestone *m, int to);
extern void EngineSetOrder(EngineOrder *o, int to, bool updated);

/* ledger.c */
extern void LedgerWriteLegs(EngineWrite *w, EngineOrder *o, int position, const char *kind,
							const char *const *accounts, Datum *amounts, int nlegs);
extern int64 LedgerDeclare(EngineOrder *o, const LedgerLegs *legs);
extern void LedgerCompletePrepare(EngineOrder *o, EngineMilestone *m, StringInfo detail,
								  LedgerPayout *p);
extern void LedgerCompleteWrite(EngineOrder *o, EngineMilestone *m, const char *reason,
								TimestampTz at, EngineWrite *w, LedgerPayout *p);
extern int64 LedgerPost(EngineOrder *o, int position, const char *kind,
						const char *const *accounts, Datum *amounts, int nlegs);
extern int64 LedgerPostCharge(EngineOrder *o, int position, const char *kind, Datum amount,
							  int64 charge_id, int32 attempt);
extern void LedgerSettle(EngineOrder *o, StringInfo detail);
extern int	LedgerSkipPending(EngineOrder *o);
extern Datum LedgerStart(EngineOrder *o, EngineMilestone *m);

extern Datum EngineResultRow(FunctionCallInfo fcinfo, MemoryContext caller);

/* payments.c (1.2, SPEC section 11) */
extern bool PaymentsDeadlinePassed(EngineOrder *o);
extern void PaymentsRequest(EngineOrder *o, EngineMilestone *m, const char *actor_role,
							bool actor_null, int64 actor_id);
extern void PaymentsVoid(EngineOrder *o, const char *reason, TimestampTz at,
						 const char *actor_role, bool actor_null, int64 actor_id, const char *agent);
extern void PaymentsExpire(EngineOrder *o, const char *actor_role);
extern void PaymentsStop(EngineOrder *o, int64 buyer_id);
extern void PaymentsRefundMilestone(EngineOrder *o, EngineMilestone *m, const char *reason,
									const char *agent);
extern void PaymentsAwaitingError(EngineOrder *o, const char *action) pg_attribute_noreturn();

/* earnings.c (1.2, SPEC section 12) */
extern int64 EarningsCredit(EngineOrder *o, Numeric net, TimestampTz ended_at);

#endif							/* MILESTONES_ENGINE_H */
