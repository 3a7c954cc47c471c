/*-------------------------------------------------------------------------
 *
 * src/check.c
 *		The commit check: order-level invariants, in proportion to the change.
 *
 * The BEFORE ROW guard triggers (guard.c) record every row write they
 * allow as a "fact" of the order it belongs to: table, INSERT or UPDATE,
 * position, old and new state, and for the ledger the transaction, kind,
 * account and amount.  An order action of the C engine (actions.c), which
 * locked the order and read all of it before writing, declares the facts
 * of the writes it made.  At commit (the deferred constraint trigger
 * milestones_check_order, once per touched order):
 *
 *	- observed facts == declared facts (as multisets) and every ledger
 *	  transaction among them balances: the order was written by the engine
 *	  only, from a state that satisfied the invariants (it was committed by
 *	  a transaction that passed this check, or created by the engine in
 *	  this one), so it passes without a query;
 *	- anything else (a hand-written statement, a restore's INSERTs, an API
 *	  call mixed with hand edits, a subtransaction rolled back) falls back
 *	  to the full check of that one order: milestones._order_problems(),
 *	  the very rules check_invariants() reports, so the two agree.
 *
 * A passed full check that included the money rules is a new baseline:
 * the order's facts are forgotten, and later engine writes in the same
 * transaction are judged against it.  A mismatch only ever costs a query;
 * it never lets an order through.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/syscache.h"

#include "milestones.h"

const char *const LedgerKinds[] = {"charge", "payout", "refund", NULL};
const char *const LedgerAccounts[] = {"buyer", "escrow", "seller", "platform", NULL};

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
	bool		tainted;		/* a subtransaction rolled back: facts are stale */
	int			nobserved;
	int			ndeclared;
	int			maxobserved;
	int			maxdeclared;
	WriteFact  *observed;		/* what the guard triggers allowed */
	WriteFact  *declared;		/* what engine actions say they wrote */
} DirtyOrder;

static HTAB *dirty_orders = NULL;
static SPIPlanPtr check_plan = NULL;

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
 * commit) and taint every order's facts, so each gets the full check.
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

/* CheckInit registers the transaction callbacks; called from _PG_init. */
void
CheckInit(void)
{
	RegisterXactCallback(CheckXactCallback, NULL);
	RegisterSubXactCallback(CheckSubXactCallback, NULL);
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
 * CheckObserve records a row write a guard trigger allowed (fact may be
 * NULL: a write that can never match a declaration), so that the order's
 * deferred check runs (again) at commit.
 */
void
CheckObserve(int64 order_id, const WriteFact *fact, bool money, bool updated)
{
	DirtyOrder *entry = GetEntry(order_id);

	entry->checked = false;
	entry->money = entry->money || money;
	entry->updated = entry->updated || updated;
	if (fact == NULL)
		entry->tainted = true;
	else if (!entry->tainted)
		AppendFact(&entry->observed, &entry->nobserved, &entry->maxobserved, fact);
}

/* CheckDeclare records a row write an engine action made. */
void
CheckDeclare(int64 order_id, const WriteFact *fact)
{
	DirtyOrder *entry = GetEntry(order_id);

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
 * FactsVouch says whether the order's writes in this transaction are
 * exactly the ones engine actions declared, with every ledger transaction
 * among them balanced: then the invariants hold without reading the order.
 */
static bool
FactsVouch(DirtyOrder *entry)
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
 * FunctionOwner returns the owner of the trigger function (the extension
 * owner), looked up once per backend.
 */
static Oid
FunctionOwner(Oid fn_oid)
{
	static Oid	cached_fn = InvalidOid;
	static Oid	cached_owner = InvalidOid;
	HeapTuple	tup;

	if (fn_oid == cached_fn)
		return cached_owner;
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn_oid);
	cached_owner = ((Form_pg_proc) GETSTRUCT(tup))->proowner;
	cached_fn = fn_oid;
	ReleaseSysCache(tup);
	return cached_owner;
}

/*
 * FullCheck runs milestones._order_problems() for one order and raises
 * the problems it reports as one error; returns whether it checked at all.
 *
 * An order that has no milestones yet and was only INSERTed in this
 * transaction (never UPDATEd) is not checked: pg_restore loads orders,
 * their milestones and the ledger one table per transaction (in parallel
 * with -j), so the order row alone is not the finished picture.  It is
 * checked in full when its milestones arrive; an UPDATE of it is always
 * checked (so an order without milestones can never move), and
 * check_invariants() reports one that never gets any.
 */
static bool
FullCheck(int64 order_id, bool money, bool updated, Oid owner)
{
	Datum		values[3];
	int			ret;
	StringInfoData detail;
	uint64		i;
	Oid			save_userid;
	int			save_sec_context;
	bool		checked;

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

	if (check_plan == NULL)
	{
		Oid			argtypes[3] = {INT8OID, BOOLOID, BOOLOID};
		SPIPlanPtr	plan;

		/* the last row says whether the order was checked at all */
		plan = SPI_prepare("SELECT problem FROM milestones._order_problems("
						   "pg_catalog.array_append(NULL::pg_catalog.int8[], $1), $2)"
						   " WHERE $3 OR EXISTS (SELECT FROM milestones.order_milestones m"
						   " WHERE m.order_id OPERATOR(pg_catalog.=) $1)"
						   " UNION ALL SELECT NULL::pg_catalog.text"
						   " WHERE $3 OR EXISTS (SELECT FROM milestones.order_milestones m"
						   " WHERE m.order_id OPERATOR(pg_catalog.=) $1)",
						   3, argtypes);
		if (plan == NULL)
			elog(ERROR, "milestones guard: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "milestones guard: SPI_keepplan failed");
		check_plan = plan;
	}

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
	ret = SPI_execute_plan(check_plan, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "milestones guard: order check failed: %s",
			 SPI_result_code_string(ret));

	checked = SPI_processed > 0;
	if (SPI_processed > 1)
	{
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

	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec_context);
	return checked;
}

/*
 * CheckFireDeferred is the body of the deferred constraint trigger for
 * one row event of an order: the first event of an order since its last
 * write decides, the others find it checked.
 */
void
CheckFireDeferred(FunctionCallInfo fcinfo, int64 order_id, bool is_update)
{
	DirtyOrder *entry = NULL;

	if (dirty_orders != NULL)
		entry = (DirtyOrder *) hash_search(dirty_orders, &order_id, HASH_FIND, NULL);
	if (entry != NULL && entry->checked)
		return;					/* already checked since its last write */

	if (entry != NULL && FactsVouch(entry))
	{
		entry->checked = true;
		return;
	}

	if (entry == NULL)
	{
		/* no guard saw the write (cannot happen with the triggers on) */
		FullCheck(order_id, is_update, is_update,
				  FunctionOwner(fcinfo->flinfo->fn_oid));
		return;
	}
	if (FullCheck(order_id, entry->money, entry->updated,
				  FunctionOwner(fcinfo->flinfo->fn_oid)) && entry->money)
	{
		/* a sound, fully checked order: later engine writes start here */
		entry->nobserved = entry->ndeclared = 0;
		entry->tainted = false;
	}
	entry->checked = true;
}
