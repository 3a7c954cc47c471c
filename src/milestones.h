/*-------------------------------------------------------------------------
 *
 * src/milestones.h
 *		Declarations shared by the C files of the milestones extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MILESTONES_H
#define MILESTONES_H

#include "postgres.h"
#include "access/tupdesc.h"
#include "catalog/pg_class.h"
#include "executor/spi.h"
#include "utils/relcache.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

/*
 * Symbol visibility.  The library is built with -fvisibility=hidden (see
 * the Makefile): PostgreSQL loads it with RTLD_GLOBAL, so every global
 * symbol of ours could interpose on, or be interposed by, a symbol of the
 * same name in another library (CheckInit, ColumnMapFind ...).  Only what
 * PostgreSQL looks up by name is exported: the SQL-callable functions and
 * their pg_finfo_ records, _PG_init, Pg_magic_func and the relay's entry
 * point.  PostgreSQL 16 does this itself with PGDLLEXPORT; on 15,
 * PGDLLEXPORT is empty outside Windows, so it is given the default
 * visibility here, and PG_FUNCTION_INFO_V1 is redefined as 16 defines it
 * (the function's own declaration carries PGDLLEXPORT too).  Every C file
 * includes this header before its PG_FUNCTION_INFO_V1 lines.
 */
#ifndef WIN32
#undef PGDLLEXPORT
#define PGDLLEXPORT __attribute__((visibility("default")))
#endif
#undef PG_FUNCTION_INFO_V1
#define PG_FUNCTION_INFO_V1(funcname) \
extern PGDLLEXPORT Datum funcname(PG_FUNCTION_ARGS); \
extern PGDLLEXPORT const Pg_finfo_record * CppConcat(pg_finfo_,funcname)(void); \
const Pg_finfo_record * \
CppConcat(pg_finfo_,funcname) (void) \
{ \
	static const Pg_finfo_record my_finfo = { 1 }; \
	return &my_finfo; \
} \
extern int no_such_variable

/* milestones.c */
extern TimestampTz MilestonesNow(void);

/* states.c: the state machines (SPEC section 2) as data */
typedef enum OrderState
{
	ORDER_OFFERED,
	ORDER_ACTIVE,
	ORDER_COMPLETED,
	ORDER_WITHDRAWN,
	ORDER_DECLINED,
	ORDER_CANCELLED,
	ORDER_NSTATES
} OrderState;

typedef enum MilestoneState
{
	MS_PENDING,
	MS_IN_PROGRESS,
	MS_DELIVERED,
	MS_COMPLETED,
	MS_SKIPPED,
	MS_REFUNDED,
	MS_CANCELLED,
	MS_AWAITING_PAYMENT,		/* confirmed payment mode (1.2) */
	MS_NSTATES
} MilestoneState;

/* The states of a charge, a charge attempt, a refund, a withdrawal (1.2). */
typedef enum PaymentState
{
	PAY_REQUESTED,
	PAY_SUCCEEDED,
	PAY_FAILED,
	PAY_VOIDED,					/* charges only */
	PAY_NSTATES
} PaymentState;

typedef struct StateTransition
{
	int			from;
	int			to;
} StateTransition;

typedef struct StateMachine
{
	const char *what;			/* "order" or "milestone" */
	int			nstates;
	const char *const *names;	/* indexed by state number */
	const bool *final;			/* indexed by state number */
	const StateTransition *transitions; /* ends with {-1, -1} */
	const char *const *immutable;	/* columns fixed at INSERT, NULL-ended */
} StateMachine;

extern const StateMachine OrderMachine;
extern const StateMachine MilestoneMachine;
extern const StateMachine ChargeMachine;
extern const StateMachine AttemptMachine;
extern const StateMachine RefundMachine;
extern const StateMachine WithdrawalMachine;
extern int	StateCode(const StateMachine *machine, const char *name);
extern const char *StateName(const StateMachine *machine, int state);
extern bool StateIsFinal(const StateMachine *machine, int state);
extern bool StateTransitionAllowed(const StateMachine *machine, int from, int to);
extern void StateAssertTransition(const StateMachine *machine, int from, int to);

/*
 * rowbalance.c: the row balance of a set of guarded tables -- per table,
 * the rows this transaction wrote (the statistics collector's pending
 * counts) minus the rows the guard saw.  A set is a static RowSet of the
 * check that uses it: its relation names in schema milestones, of which
 * the first ntables are balanced (the others are only looked up with
 * them), and from first_optional on may be missing (a newer version's
 * tables: no writes).  The other fields are kept by rowbalance.c.
 */
#define ROWSET_MAX_RELS 8

typedef struct RowBalance
{
	bool		known;			/* false: the counts cannot be had */
	int64		diff[ROWSET_MAX_RELS];	/* written - seen, per table */
} RowBalance;

typedef struct RowSetSeen RowSetSeen;

typedef struct RowSet
{
	const char *const *names;
	int			nrels;
	int			ntables;
	int			first_optional;
	/* kept by rowbalance.c */
	bool		linked;
	bool		valid;
	Oid			oids[ROWSET_MAX_RELS];
	bool		children[ROWSET_MAX_RELS];
	RowSetSeen *seen;			/* per subtransaction, in TopTransactionContext */
	int			nseen;
	int			maxseen;
	struct RowSet *next;
} RowSet;

#define ROWSET(names, nrels, ntables, first_optional) \
	{(names), (nrels), (ntables), (first_optional), false, false, {0}, {0}, NULL, 0, 0, NULL}

extern void RowBalanceInit(void);
extern Oid	RowSetRelid(RowSet *set, int which, bool *children);
extern void RowSetSee(RowSet *set, int table);
extern void RowSetSeeSince(RowSet *set, const RowBalance *before);
extern void RowBalanceNow(RowSet *set, RowBalance *b);
extern void RowBalanceStart(RowBalance *b);
extern bool RowBalanceSame(const RowBalance *a, const RowBalance *b);

/*
 * check.c: one row write to an order, as the guard triggers saw it or as
 * an engine action declares it.  Two facts are equal when all fields are.
 */
typedef enum FactTable
{
	FACT_ORDER = 1,
	FACT_MILESTONE = 2,
	FACT_LEDGER = 3,
	FACT_CHARGE = 4,			/* order_charges (1.2): txn is the charge_id */
	FACT_ATTEMPT = 5,			/* charge_attempts: txn the charge_id, position the attempt */
	FACT_REFUND = 6,			/* order_refunds: txn the refund_id */
	FACT_NTABLES = 7			/* array size: index 0 unused */
} FactTable;

typedef struct WriteFact
{
	int8		table;			/* FactTable */
	int8		insert;			/* 1 for INSERT, 0 for UPDATE */
	int8		from;			/* old state number (-1 for INSERT, ledger) */
	int8		to;				/* new state number (-1 for ledger) */
	int16		position;		/* milestone / ledger position, -1 if none */
	int8		kind;			/* ledger: index in LedgerKinds, else -1 */
	int8		account;		/* ledger: index in LedgerAccounts, else -1 */
	int64		txn;			/* ledger: txn_id, else 0 */
	int64		cents;			/* ledger: amount in cents, else 0 */
} WriteFact;

extern const char *const LedgerKinds[];	/* charge, payout, refund */
extern const char *const LedgerAccounts[];	/* buyer, escrow, seller, platform */
extern int	LedgerCode(const char *const *list, const char *name);

/* The tables the commit check reads (CheckRelid). */
typedef enum CheckRel
{
	CHECK_REL_ORDERS = FACT_ORDER,
	CHECK_REL_MILESTONES = FACT_MILESTONE,
	CHECK_REL_LEDGER = FACT_LEDGER,
	CHECK_REL_CHARGES = FACT_CHARGE,
	CHECK_REL_ATTEMPTS = FACT_ATTEMPT,
	CHECK_REL_REFUNDS = FACT_REFUND,
	CHECK_REL_UNCHECKED = FACT_NTABLES, /* milestones.unchecked_orders (1.2) */
	CHECK_REL_COUNT = FACT_NTABLES + 1
} CheckRel;

/* guard.c: whether a BEFORE ROW trigger firing after the guard may change the row */
struct TriggerData;
extern bool LaterTriggerMayRewrite(struct TriggerData *trigdata);

extern void CheckInit(void);
extern Oid	CheckRelid(CheckRel which, bool *children);
extern Oid	CheckFunctionOwner(Oid fn_oid);
extern void CheckObserve(FactTable table, int64 order_id, const WriteFact *fact, bool money,
						 bool updated);
extern void CheckDeclare(int64 order_id, const WriteFact *fact);
extern void CheckFireDeferred(FunctionCallInfo fcinfo, int64 order_id, bool is_update);
extern void CheckLockedOrder(int64 order_id, bool unchecked);
extern int	CheckUncheckedListed(int64 order_id);
extern WriteFact StateFact(FactTable table, bool insert, int from, int to, int position);
extern int64 NumericToCents(Datum amount, bool *exact);

/*
 * columns.c: the columns the C code reads, found and checked by name and
 * type, and a table's primary key.  Every read of a column of the
 * extension's tables goes through a ColumnSpec: by name (ColumnMap) or by
 * position in a statement's result (ColumnsCheckResult).  A column that is
 * missing, of another type or NULL where a value is needed is refused with
 * ColumnRefuse's error, never read as something else.
 */
#define COLUMN_MAP_MAX 20

typedef struct ColumnSpec
{
	const char *name;			/* NULL: an expression, not checked */
	Oid			type;
	bool		notnull;		/* must be NOT NULL (read without a null test) */
	bool		optional;		/* may be missing (a 1.2 column in an older
								 * table): its attnum is then -1 */
} ColumnSpec;

typedef struct ColumnMap
{
	Oid			key;			/* the relation or row type it was found for */
	int32		keymod;
	int			natts;
	int			attnum[COLUMN_MAP_MAX]; /* 0-based, in ColumnSpec order */
} ColumnMap;

/* What is wrong with a column, as ColumnProblemOf finds it. */
typedef enum ColumnProblem
{
	COLUMN_OK,
	COLUMN_MISSING,				/* dropped or renamed */
	COLUMN_TYPE,				/* another type */
	COLUMN_NULLABLE,			/* not NOT NULL where the spec needs it */
	COLUMN_NULL					/* a NULL read where a value is needed */
} ColumnProblem;

extern int	ColumnMapFind(ColumnMap *map, TupleDesc desc, Oid key, int32 keymod,
						  const ColumnSpec *columns, int ncolumns);
extern void ColumnMapRequire(ColumnMap *map, TupleDesc desc, Oid key, int32 keymod,
							 const char *table, const ColumnSpec *columns, int ncolumns);
extern ColumnProblem ColumnProblemOf(TupleDesc desc, const ColumnSpec *spec);
extern void ColumnRefuse(const char *table, const ColumnSpec *spec, TupleDesc desc) pg_attribute_noreturn();
extern void ColumnsCheckResult(SPITupleTable *result, uint64 nrows, int first,
							   const char *table, const ColumnSpec *columns, int ncolumns);
extern Relation KeyIndexOpen(Relation rel, int nkeys, const int *attnums, Oid keytype);
extern bool TableIsPlain(Form_pg_class c);

/* payout.c */
extern void PayoutAmounts(Numeric gross_raw, Numeric rate,
						  Numeric *gross, Numeric *fee, Numeric *net);

/* events.c: the channel every notification is sent on */
#define EVENTS_CHANNEL "milestones"

/* relay.c */
extern void RelayInit(void);
extern bool RelayServesThisDatabase(void);
extern void RelayWakeAtCommit(void);

/* relay_batch.c: the batch in C, and the kept plans of both relay files */
/*
 * The relay's kept plans (relay.c's statements and relay_batch.c's): the
 * statements' %1$s is the extension's quoted schema; each is prepared on
 * first use, and all again when the schema changed.
 */
typedef struct RelayPlans
{
	int			count;
	SPIPlanPtr *plans;			/* count entries */
	char		schema[2 * NAMEDATALEN + 3];
} RelayPlans;

extern SPIPlanPtr RelayPlan(RelayPlans *cache, int stmt, const char *schema, const char *sql,
							int nargs, const Oid *argtypes, int cursor_options);
extern int	RelayBatchSend(Oid nsp, const char *schema, const char *consumer,
						   bool woken, int max_events, bool *fallback);
extern void RelayBatchCommitted(void);
extern void RelayBatchForget(void);
extern bool RelayEventPayload(Relation rel, HeapTuple tuple, char **payload);

#endif							/* MILESTONES_H */
