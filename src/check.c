/*-------------------------------------------------------------------------
 *
 * src/check.c
 *		The commit check: order-level invariants, in proportion to the change.
 *
 * The BEFORE ROW guard triggers (guard.c) record every row write they
 * allow as a "fact" of the order it belongs to: table, INSERT or UPDATE,
 * position, old and new state, and for the ledger the transaction, kind,
 * account and amount; and they count the rows they allowed, per table.  An
 * order action of the C engine (actions.c), which locked the order and
 * read all of it before writing, declares the facts of the writes it meant
 * to make, from its own picture and arithmetic (never from what its
 * statements returned).  At commit (the deferred constraint trigger
 * milestones_check_order, once per touched order):
 *
 *	- observed facts == declared facts (as multisets), every ledger
 *	  transaction among them balances, and the guard saw every row this
 *	  transaction wrote to the fact tables (its counts equal the
 *	  transaction's own insert/update/delete counts in the statistics
 *	  collector's per-transaction counters: the row balance of
 *	  rowbalance.c, which the seller check shares): the order was
 *	  written by the engine only, from a state that satisfied the
 *	  invariants (it was committed by a transaction that passed this
 *	  check, or created by the engine in this one), so it passes without
 *	  a query;
 *	- anything else (a hand-written statement, a restore's INSERTs, an API
 *	  call mixed with hand edits, a subtransaction rolled back, a write no
 *	  guard saw: session_replication_role = replica, a disabled guard, a
 *	  BEFORE trigger that fires after the guard and may rewrite the row)
 *	  falls back to the full check of that order:
 *	  milestones._order_problems(), the very rules check_invariants()
 *	  reports, so the two agree.  A write no guard saw cannot be traced to
 *	  its order: every order the transaction touched gets the full check.
 *
 * An order that a transaction only INSERTed is checked with the money
 * rules too, but not refused for them: pg_restore loads the milestones and
 * the ledger in separate transactions.  When its money does not hold yet,
 * the order is listed in milestones.unchecked_orders (1.2); the engine's
 * order lock looks it up (CheckLockedOrder), and a listed order's next
 * engine write gets the full check with the money.  A full check with the
 * money that passes lifts the listing, and is a new baseline: the order's
 * facts are forgotten, and later engine writes in the same transaction are
 * judged against it.  A mismatch only ever costs a query; it never lets an
 * order through.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "milestones.h"

const char *const LedgerKinds[] = {"charge", "payout", "refund", NULL};
const char *const LedgerAccounts[] = {"buyer", "escrow", "seller", "platform", NULL};

/*
 * The tables the check reads, by CheckRel - 1: the fact tables (by
 * FactTable - 1), whose row balance (rowbalance.c) says whether the guard
 * saw every row this transaction wrote to them, and the list of unchecked
 * orders, only looked up with them.  The payment tables and the list are
 * 1.2's: missing before the upgrade.
 */
static const char *const CheckRelNames[CHECK_REL_COUNT - 1] = {
	"orders", "order_milestones", "ledger_entries",
	"order_charges", "charge_attempts", "order_refunds", "unchecked_orders"
};
static RowSet OrderRows = ROWSET(CheckRelNames, CHECK_REL_COUNT - 1, FACT_NTABLES - 1,
								 FACT_CHARGE - 1);

/*
 * Orders touched by the current transaction.  Lives in
 * TopTransactionContext and is forgotten at transaction end.
 */
typedef struct DirtyOrder
{
	int64		order_id;		/* hash key */
	bool		checked;		/* checked since the last write */
	bool		money;			/* an UPDATE or ledger write happened */
	bool		updated;		/* an order or milestone row was UPDATEd */
	bool		tainted;		/* facts are stale or incomplete */
	int			nobserved;
	int			ndeclared;
	int			maxobserved;
	int			maxdeclared;
	WriteFact  *observed;		/* what the guard triggers allowed */
	WriteFact  *declared;		/* what engine actions say they wrote */
	RowBalance	base;			/* the balance the facts start from */
	RowBalance	at_check;		/* the balance when last checked */
	CommandId	check_cid;		/* the command in which it was last checked */
} DirtyOrder;

/* Where a full check left an order. */
typedef enum CheckResult
{
	CHECKED_NOT,				/* no milestones yet: not checked */
	CHECKED_STRUCTURE,			/* only INSERTed, sound but for its money: listed */
	CHECKED_ALL					/* every rule holds */
} CheckResult;

static HTAB *dirty_orders = NULL;
static SPIPlanPtr check_plan = NULL;
static SPIPlanPtr list_plan = NULL;
static SPIPlanPtr unlist_plan = NULL;

/* The owners of the checks' trigger functions, looked up once (CheckFunctionOwner). */
static Oid	cached_fn[2] = {InvalidOid, InvalidOid};
static Oid	cached_owner[2];

/* CheckXactCallback forgets the touched orders when the transaction ends. */
static void
CheckXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			dirty_orders = NULL;
			break;
		default:
			break;
	}
}

/*
 * CheckSubXactCallback: when a subtransaction aborts, the rows it wrote
 * are gone, but an order it checked keeps "checked", and its facts still
 * list the vanished writes.  Forget every "checked" mark (the order's
 * earlier, still unchecked writes fire their deferred events again at
 * commit) and taint every order's facts, so each gets the full check.  (The
 * guard's row counts follow the subtransaction's end in rowbalance.c.)
 */
static void
CheckSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS status;
	DirtyOrder *entry;

	if (event != SUBXACT_EVENT_ABORT_SUB || dirty_orders == NULL)
		return;
	hash_seq_init(&status, dirty_orders);
	while ((entry = (DirtyOrder *) hash_seq_search(&status)) != NULL)
	{
		entry->checked = false;
		entry->tainted = true;
	}
}

/*
 * CheckRelid returns the oid of one of the check's tables in schema
 * milestones (InvalidOid when there is none), and whether it has
 * inheritance children (children: may be NULL).
 */
Oid
CheckRelid(CheckRel which, bool *children)
{
	return RowSetRelid(&OrderRows, which - 1, children);
}

/*
 * FunctionOwnerInvalidate forgets the cached owner of the trigger function
 * when any function's catalog row changes (ALTER FUNCTION ... OWNER,
 * REASSIGN OWNED): a pooled backend must not switch to a dropped role.
 */
static void
FunctionOwnerInvalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	cached_fn[0] = cached_fn[1] = InvalidOid;
}

/* CheckInit registers the transaction callbacks; called from _PG_init. */
void
CheckInit(void)
{
	RegisterXactCallback(CheckXactCallback, NULL);
	RegisterSubXactCallback(CheckSubXactCallback, NULL);
	CacheRegisterSyscacheCallback(PROCOID, FunctionOwnerInvalidate, (Datum) 0);
	RowBalanceInit();
}

/* LedgerCode returns the index of a ledger kind or account, or -1. */
int
LedgerCode(const char *const *list, const char *name)
{
	int			i;

	if (name == NULL)
		return -1;
	for (i = 0; list[i] != NULL; i++)
		if (strcmp(list[i], name) == 0)
			return i;
	return -1;
}

/* StateFact builds the fact of an order or milestone row write. */
WriteFact
StateFact(FactTable table, bool insert, int from, int to, int position)
{
	WriteFact	f;

	memset(&f, 0, sizeof(f));
	f.table = table;
	f.insert = insert ? 1 : 0;
	f.from = from;
	f.to = to;
	f.position = position;
	f.kind = -1;
	f.account = -1;
	return f;
}

/*
 * NumericToCents turns a ledger amount into whole cents; *exact is false
 * when it is not a whole number of cents or out of range (the fact then
 * cannot match any declared one, so the full check runs).
 */
int64
NumericToCents(Datum amount, bool *exact)
{
	Numeric		num = DatumGetNumeric(amount);
	Datum		scaled;
	Datum		rounded;

	*exact = false;
	if (numeric_is_nan(num) || numeric_is_inf(num))
		return 0;
	scaled = DirectFunctionCall2(numeric_mul, amount,
								 NumericGetDatum(int64_to_numeric(100)));
	rounded = DirectFunctionCall2(numeric_round, scaled, Int32GetDatum(0));
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, scaled, rounded)) != 0)
		return 0;
	/* |amount| < 10^12 in numeric(14,2): always fits */
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, DirectFunctionCall1(numeric_abs, rounded),
										  NumericGetDatum(int64_to_numeric(PG_INT64_MAX / 4)))) > 0)
		return 0;
	*exact = true;
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, rounded));
}

/* GetEntry finds or makes the touched-order entry of an order. */
static DirtyOrder *
GetEntry(int64 order_id)
{
	DirtyOrder *entry;
	bool		found;

	if (dirty_orders == NULL)
	{
		HASHCTL		ctl;

		MemSet(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(DirtyOrder);
		ctl.hcxt = TopTransactionContext;
		dirty_orders = hash_create("milestones dirty orders", 64, &ctl,
								   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	entry = (DirtyOrder *) hash_search(dirty_orders, &order_id, HASH_ENTER, &found);
	if (!found)
	{
		entry->checked = false;
		entry->money = false;
		entry->updated = false;
		entry->tainted = false;
		entry->nobserved = entry->ndeclared = 0;
		entry->maxobserved = entry->maxdeclared = 0;
		entry->observed = entry->declared = NULL;
		/* the facts start at the transaction's start, where all is seen */
		RowBalanceStart(&entry->base);
		entry->at_check = entry->base;
		entry->check_cid = InvalidCommandId;
	}
	return entry;
}

/* AppendFact adds a fact to a growing array in TopTransactionContext. */
static void
AppendFact(WriteFact **array, int *n, int *max, const WriteFact *fact)
{
	if (*n >= *max)
	{
		int			newmax = *max > 0 ? *max * 2 : 8;

		if (*array == NULL)
			*array = MemoryContextAlloc(TopTransactionContext, newmax * sizeof(WriteFact));
		else
			*array = repalloc(*array, newmax * sizeof(WriteFact));
		*max = newmax;
	}
	(*array)[(*n)++] = *fact;
}

/*
 * CheckObserve records a row write of table a guard trigger allowed (fact
 * may be NULL: a write that can never match a declaration), so that the
 * order's deferred check runs (again) at commit.
 */
void
CheckObserve(FactTable table, int64 order_id, const WriteFact *fact, bool money, bool updated)
{
	DirtyOrder *entry = GetEntry(order_id);

	RowSetSee(&OrderRows, table - FACT_ORDER);
	entry->checked = false;
	entry->money = entry->money || money;
	entry->updated = entry->updated || updated;
	if (fact == NULL)
		entry->tainted = true;
	else if (!entry->tainted)
		AppendFact(&entry->observed, &entry->nobserved, &entry->maxobserved, fact);
}

/*
 * CheckDeclare records a row write an engine action made.  Under
 * session_replication_role = replica no trigger fires: the write is
 * counted as seen (the engine knows it), but its order's facts can no
 * longer match (no guard saw the row as written), so a later check of the
 * order in this transaction is the full one.
 */
void
CheckDeclare(int64 order_id, const WriteFact *fact)
{
	DirtyOrder *entry = GetEntry(order_id);

	if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA)
	{
		RowSetSee(&OrderRows, fact->table - FACT_ORDER);
		entry->tainted = true;
	}
	if (!entry->tainted)
		AppendFact(&entry->declared, &entry->ndeclared, &entry->maxdeclared, fact);
}

/* CompareFacts orders facts field by field (qsort comparator). */
static int
CompareFacts(const void *a, const void *b)
{
	const WriteFact *x = (const WriteFact *) a;
	const WriteFact *y = (const WriteFact *) b;

#define CMP_FIELD(f) if (x->f != y->f) return x->f < y->f ? -1 : 1
	CMP_FIELD(table);
	CMP_FIELD(txn);
	CMP_FIELD(insert);
	CMP_FIELD(from);
	CMP_FIELD(to);
	CMP_FIELD(position);
	CMP_FIELD(kind);
	CMP_FIELD(account);
	CMP_FIELD(cents);
#undef CMP_FIELD
	return 0;
}

/*
 * FactsMatch says whether the order's writes in this transaction that the
 * guard saw are exactly the ones engine actions declared, with every
 * ledger transaction among them balanced.  (Whether the guard saw every
 * write is the row balance's question.)
 */
static bool
FactsMatch(DirtyOrder *entry)
{
	int			i;
	int			j;

	if (entry->tainted || entry->nobserved != entry->ndeclared ||
		entry->nobserved == 0)
		return false;
	qsort(entry->observed, entry->nobserved, sizeof(WriteFact), CompareFacts);
	qsort(entry->declared, entry->ndeclared, sizeof(WriteFact), CompareFacts);
	for (i = 0; i < entry->nobserved; i++)
		if (CompareFacts(&entry->observed[i], &entry->declared[i]) != 0)
			return false;
	/* Sorted by table and txn first: the legs of one txn are adjacent. */
	for (i = 0; i < entry->nobserved; i = j)
	{
		int64		sum = 0;

		for (j = i; j < entry->nobserved &&
			 entry->observed[j].table == entry->observed[i].table &&
			 entry->observed[j].txn == entry->observed[i].txn; j++)
			sum += entry->observed[j].cents;
		if (entry->observed[i].table == FACT_LEDGER && sum != 0)
			return false;
	}
	return true;
}

/*
 * CheckFunctionOwner returns the owner of a trigger function of the commit
 * checks (the extension owner), looked up once per backend for each of
 * them (the order and the seller check) and again after a change of any
 * function's catalog row (FunctionOwnerInvalidate): a pooled backend must
 * not switch to a role that REASSIGN OWNED and DROP ROLE removed.
 */
Oid
CheckFunctionOwner(Oid fn_oid)
{
	HeapTuple	tup;
	int			slot;

	for (slot = 0; slot < (int) lengthof(cached_fn); slot++)
		if (cached_fn[slot] == fn_oid)
			return cached_owner[slot];
	slot = OidIsValid(cached_fn[0]) ? 1 : 0;
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn_oid);
	cached_owner[slot] = ((Form_pg_proc) GETSTRUCT(tup))->proowner;
	cached_fn[slot] = fn_oid;
	ReleaseSysCache(tup);
	return cached_owner[slot];
}

/* KeptPlan prepares a statement of the check once per backend. */
static SPIPlanPtr
KeptPlan(SPIPlanPtr *kept, const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan;

	if (*kept != NULL)
		return *kept;
	plan = SPI_prepare(sql, nargs, argtypes);
	if (plan == NULL)
		elog(ERROR, "milestones guard: SPI_prepare failed: %s",
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "milestones guard: SPI_keepplan failed");
	*kept = plan;
	return plan;
}

/*
 * RunCheck runs milestones._order_problems() for one order, with or
 * without the money rules; returns the number of rows: 0 when the order
 * was not checked at all, else its problems and one last NULL row.
 *
 * An order that has no milestones yet and was only INSERTed in this
 * transaction (never UPDATEd) is not checked: pg_restore loads orders,
 * their milestones and the ledger one table per transaction, so the order
 * row alone is not the finished picture.  It is checked in full when its
 * milestones arrive; an UPDATE of it is always checked (so an order
 * without milestones can never move), the engine's lock makes the order's
 * next write checked in full (CheckLockedOrder), and check_invariants()
 * reports one that never gets any.
 */
static uint64
RunCheck(int64 order_id, bool money, bool updated)
{
	Oid			argtypes[3] = {INT8OID, BOOLOID, BOOLOID};
	Datum		values[3];
	int			ret;
	SPIPlanPtr	plan;

	/* the last row says whether the order was checked at all */
	plan = KeptPlan(&check_plan,
					"SELECT problem FROM milestones._order_problems("
					"pg_catalog.array_append(NULL::pg_catalog.int8[], $1), $2)"
					" WHERE $3 OR EXISTS (SELECT FROM milestones.order_milestones m"
					" WHERE m.order_id OPERATOR(pg_catalog.=) $1)"
					" UNION ALL SELECT NULL::pg_catalog.text"
					" WHERE $3 OR EXISTS (SELECT FROM milestones.order_milestones m"
					" WHERE m.order_id OPERATOR(pg_catalog.=) $1)",
					3, argtypes);
	values[0] = Int64GetDatum(order_id);
	values[1] = BoolGetDatum(money);
	values[2] = BoolGetDatum(updated);
	/*
	 * Not read-only: SPI then takes a new snapshot after a command counter
	 * increment, so the check sees the rows written by the statement that
	 * fired it.  (Read-only reused that statement's snapshot: fired at the
	 * end of the statement, under SET CONSTRAINTS ALL IMMEDIATE, the check
	 * saw the state before the write, passed it, and marked the order
	 * checked, so an illegal write could commit.)
	 */
	ret = SPI_execute_plan(plan, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "milestones guard: order check failed: %s",
			 SPI_result_code_string(ret));
	return SPI_processed;
}

/* RaiseProblems raises the problems RunCheck found as one error. */
static void
RaiseProblems(int64 order_id)
{
	StringInfoData detail;
	uint64		i;

	initStringInfo(&detail);
	for (i = 0; i + 1 < SPI_processed; i++)
	{
		char	   *problem = SPI_getvalue(SPI_tuptable->vals[i],
										   SPI_tuptable->tupdesc, 1);

		if (i > 0)
			appendStringInfoString(&detail, "; ");
		appendStringInfoString(&detail, problem ? problem : "(unknown)");
	}
	ereport(ERROR,
			(errcode(ERRCODE_CHECK_VIOLATION),
			 errmsg("order " INT64_FORMAT " would break the milestones invariants", order_id),
			 errdetail("%s.", detail.data),
			 errhint("Change orders through the milestones API functions; they keep these rules.")));
}

/*
 * The list of orders whose money was never checked (1.2): the order lock
 * looks the order up in it (CheckUncheckedListed), and the commit check
 * keeps it (ListUnchecked).
 */
static const ColumnSpec unchecked_columns[1] =
{
	{"order_id", INT8OID, true}
};
static ColumnMap unchecked_map;

/*
 * CheckUncheckedListed says whether the order is listed in
 * milestones.unchecked_orders: 1 when it is, or when the table is not as
 * the extension made it and cannot be probed (the caller then assumes the
 * worst), 0 when it is not, -1 when there is no such table (a database at
 * 1.0 or 1.1).  A probe by primary key, under a new snapshot that also
 * sees this transaction's own listings; none when the table has no page.
 */
int
CheckUncheckedListed(int64 order_id)
{
	Oid			relid = CheckRelid(CHECK_REL_UNCHECKED, NULL);
	Relation	rel;
	Relation	index;
	IndexScanDesc scan;
	ScanKeyData key;
	TupleTableSlot *slot;
	int			keycol[1];
	bool		found;

	if (!OidIsValid(relid))
		return -1;
	if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		return 1;
	rel = try_table_open(relid, AccessShareLock);
	if (rel == NULL)
		return 1;				/* dropped meanwhile */
	/*
	 * The list is nearly always empty, and then has no page (autovacuum
	 * truncates it, see the table's storage parameters): no page, no row,
	 * without the index probe's snapshot and scan.
	 */
	if (TableIsPlain(rel->rd_rel) && RelationGetNumberOfBlocks(rel) == 0)
	{
		table_close(rel, NoLock);
		return 0;
	}
	index = NULL;
	if (TableIsPlain(rel->rd_rel) &&
		ColumnMapFind(&unchecked_map, RelationGetDescr(rel), relid, 0, unchecked_columns, 1) < 0)
	{
		keycol[0] = unchecked_map.attnum[0];
		index = KeyIndexOpen(rel, 1, keycol, INT8OID);
	}
	if (index == NULL)
	{
		/* not as the extension made it: the caller assumes the worst */
		table_close(rel, NoLock);
		return 1;
	}
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	UpdateActiveSnapshotCommandId();
	slot = table_slot_create(rel, NULL);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(order_id));
	scan = index_beginscan(rel, index, GetActiveSnapshot(), 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	PopActiveSnapshot();
	index_close(index, NoLock);
	table_close(rel, NoLock);
	return found ? 1 : 0;
}

/*
 * ListUnchecked lists (listed true) or unlists the order in
 * milestones.unchecked_orders; a database at 1.0 or 1.1 has no list.
 */
static void
ListUnchecked(int64 order_id, bool listed)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1];
	int			found = CheckUncheckedListed(order_id);
	int			ret;

	if (found < 0 || (listed ? found == 1 : found == 0))
		return;
	values[0] = Int64GetDatum(order_id);
	if (listed)
		ret = SPI_execute_plan(KeptPlan(&list_plan,
										"INSERT INTO milestones.unchecked_orders (order_id) VALUES ($1)"
										" ON CONFLICT DO NOTHING", 1, argtypes),
							   values, NULL, false, 0);
	else
		ret = SPI_execute_plan(KeptPlan(&unlist_plan,
										"DELETE FROM milestones.unchecked_orders"
										" WHERE order_id OPERATOR(pg_catalog.=) $1", 1, argtypes),
							   values, NULL, false, 0);
	if (ret != (listed ? SPI_OK_INSERT : SPI_OK_DELETE))
		elog(ERROR, "milestones guard: unchecked_orders write failed: %s",
			 SPI_result_code_string(ret));
}

/*
 * FullCheck runs the full check of one order as owner and raises the
 * problems it finds as one error.  money asks for the money rules; without
 * it (an order only INSERTed in this transaction) they are checked too,
 * and when they alone fail the order is listed as unchecked rather than
 * refused.  A pass with the money rules unlists the order.
 */
static CheckResult
FullCheck(int64 order_id, bool money, bool updated, Oid owner)
{
	Oid			save_userid;
	int			save_sec_context;
	uint64		rows;
	CheckResult result;

	/*
	 * Run the check as the extension owner: it fires at COMMIT, outside the
	 * API's SECURITY DEFINER functions, as a role that may not read the
	 * tables.  Switching here rather than declaring the trigger function
	 * SECURITY DEFINER keeps the many firings that find the order already
	 * checked free of the definer call's GUC save and restore.  An error
	 * restores the user with the transaction abort.
	 */
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "milestones guard: SPI_connect failed");

	rows = RunCheck(order_id, true, updated);
	if (rows == 0)
		result = CHECKED_NOT;
	else if (rows == 1)
	{
		ListUnchecked(order_id, false);
		result = CHECKED_ALL;
	}
	else if (money)
	{
		RaiseProblems(order_id);
		result = CHECKED_NOT;	/* keep compiler quiet */
	}
	else
	{
		/* only INSERTed: its structure must hold, its money may follow */
		if (RunCheck(order_id, false, updated) > 1)
			RaiseProblems(order_id);
		ListUnchecked(order_id, true);
		result = CHECKED_STRUCTURE;
	}

	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec_context);
	return result;
}

/* MarkChecked marks an order checked as of now (balance b). */
static void
MarkChecked(DirtyOrder *entry, const RowBalance *b)
{
	entry->checked = true;
	entry->at_check = *b;
	entry->check_cid = GetCurrentCommandId(false);
}

/*
 * CheckFireDeferred is the body of the deferred constraint trigger for
 * one row event of an order: the first event of an order since its last
 * write decides, the others find it checked.
 *
 * "Checked" holds until a write the guard sees resets it, or one it does
 * not see changes the row balance; within one command nothing can be
 * written between two events, so the balance is only read again when the
 * command changed.
 */
void
CheckFireDeferred(FunctionCallInfo fcinfo, int64 order_id, bool is_update)
{
	DirtyOrder *entry = NULL;
	RowBalance	now;
	bool		have_now = false;
	CheckResult result;

	if (dirty_orders != NULL)
		entry = (DirtyOrder *) hash_search(dirty_orders, &order_id, HASH_FIND, NULL);
	if (entry != NULL && entry->checked)
	{
		if (entry->check_cid == GetCurrentCommandId(false))
			return;				/* already checked since its last write */
		RowBalanceNow(&OrderRows, &now);
		have_now = true;
		if (RowBalanceSame(&now, &entry->at_check))
		{
			entry->check_cid = GetCurrentCommandId(false);
			return;
		}
	}

	if (entry != NULL && FactsMatch(entry))
	{
		if (!have_now)
			RowBalanceNow(&OrderRows, &now);
		have_now = true;
		if (RowBalanceSame(&now, &entry->base))
		{
			MarkChecked(entry, &now);
			return;
		}
	}

	if (entry == NULL)
	{
		/* no guard saw the write: nothing of it can be vouched for */
		entry = GetEntry(order_id);
		entry->tainted = true;
		entry->money = entry->updated = is_update;
	}
	result = FullCheck(order_id, entry->money, entry->updated,
					   CheckFunctionOwner(fcinfo->flinfo->fn_oid));
	RowBalanceNow(&OrderRows, &now);
	if (result == CHECKED_ALL)
	{
		/* a sound, fully checked order: later engine writes start here */
		entry->nobserved = entry->ndeclared = 0;
		entry->tainted = false;
		entry->base = now;
	}
	MarkChecked(entry, &now);
}

/*
 * CheckLockedOrder is called by the engine's order lock (engine.c), once
 * the order and its milestones are read: unchecked says the order is
 * listed in milestones.unchecked_orders (or may be), or has no milestones,
 * so its state was never checked with every rule.  Its writes in this
 * transaction then get the full check with the money at commit.  Under
 * session_replication_role = replica no trigger fires, so there will be no
 * commit check: the engine checks the order itself before it writes, when
 * it is unchecked or the guard missed a write of this transaction.
 */
void
CheckLockedOrder(int64 order_id, bool unchecked)
{
	DirtyOrder *entry;
	RowBalance	now;

	if (SessionReplicationRole != SESSION_REPLICATION_ROLE_REPLICA)
	{
		if (unchecked)
		{
			entry = GetEntry(order_id);
			entry->tainted = true;
			entry->money = entry->updated = true;
		}
		return;
	}
	entry = GetEntry(order_id);
	RowBalanceNow(&OrderRows, &now);
	if (!unchecked && RowBalanceSame(&now, &entry->base))
		return;
	(void) FullCheck(order_id, true, true, GetUserId());
	entry->base = now;
}
