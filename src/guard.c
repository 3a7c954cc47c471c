/*-------------------------------------------------------------------------
 *
 * src/guard.c
 *		The transition guard: triggers that no write path can bypass.
 *
 * Every write to an order, a milestone or the ledger, whether it comes from
 * an API function, the expiry sweep or a DBA's hand-written statement, goes
 * through these triggers:
 *
 *	- milestones_guard_order / milestones_guard_milestone (BEFORE ROW) allow
 *	  only the state transitions of the static tables below, keep the
 *	  identifying and priced columns immutable, freeze ended rows and refuse
 *	  DELETE and TRUNCATE;
 *	- milestones_guard_append_only (BEFORE ROW/TRUNCATE) makes the ledger and
 *	  the events table append-only;
 *	- milestones_check_order (deferred constraint trigger, AFTER ROW) checks,
 *	  once per touched order and at commit, the order-level invariants that
 *	  no single row can show: milestone positions 1..n, one active milestone,
 *	  milestone k started only after every earlier one ended, the order state matching
 *	  its milestones, and (after an UPDATE or a ledger write) the money:
 *	  balanced transactions, one charge per started milestone, one payout.
 *
 * The order-level check is deferred so that pg_restore, which loads rows
 * in any order, and multi-statement transitions see the finished picture.
 * Its rules live in one SQL function, milestones._order_problems(), which
 * check_invariants() shares, so the backstop and the DBA's report agree.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "catalog/pg_proc.h"
#include "miscadmin.h"

#include "milestones.h"

PG_FUNCTION_INFO_V1(milestones_guard_order);
PG_FUNCTION_INFO_V1(milestones_guard_milestone);
PG_FUNCTION_INFO_V1(milestones_guard_ledger);
PG_FUNCTION_INFO_V1(milestones_guard_append_only);
PG_FUNCTION_INFO_V1(milestones_check_order);

/* One allowed state change. */
typedef struct Transition
{
	const char *from;
	const char *to;
} Transition;

/* Order states and the only ways between them (SPEC section 2). */
static const char *const order_states[] = {
	"offered", "active", "completed", "withdrawn", "declined", "cancelled", NULL
};
static const char *const order_final_states[] = {
	"completed", "withdrawn", "declined", "cancelled", NULL
};
static const Transition order_transitions[] = {
	{"offered", "active"},
	{"offered", "withdrawn"},
	{"offered", "declined"},
	{"offered", "cancelled"},
	{"active", "completed"},
	{"active", "cancelled"},
	{NULL, NULL}
};

/*
 * Milestone states and their transitions.  "cancelled" (1.1): support
 * cancelled a pending milestone alone (cancel_milestone); a running one
 * is refunded instead, so no running state leads to it.
 */
static const char *const milestone_states[] = {
	"pending", "in_progress", "delivered", "completed", "skipped", "refunded",
	"cancelled", NULL
};
static const char *const milestone_final_states[] = {
	"completed", "skipped", "refunded", "cancelled", NULL
};
static const Transition milestone_transitions[] = {
	{"pending", "in_progress"},
	{"pending", "skipped"},
	{"pending", "cancelled"},
	{"in_progress", "delivered"},
	{"in_progress", "refunded"},
	{"delivered", "completed"},
	{"delivered", "in_progress"},	/* revision requested */
	{"delivered", "refunded"},
	{NULL, NULL}
};

/* Columns that never change once a row exists. */
static const char *const order_immutable[] = {
	"order_id", "seller_id", "buyer_id", "category", "currency",
	"revisions_allowed", "fee_rate", "created_at", NULL
};
static const char *const milestone_immutable[] = {
	"order_id", "position", "name", "days", "amount", "final", NULL
};

/*
 * Orders touched by the current transaction and whether their deferred
 * check has run since the last write.  Lives in TopTransactionContext and
 * is forgotten at transaction end.
 */
typedef struct DirtyOrder
{
	int64		order_id;		/* hash key */
	bool		checked;		/* checked since the last write */
	bool		money;			/* an UPDATE or ledger write happened */
	bool		updated;		/* an order or milestone row was UPDATEd */
} DirtyOrder;

static HTAB *dirty_orders = NULL;
static SPIPlanPtr check_plan = NULL;

/*
 * GuardXactCallback forgets the dirty-order table when the transaction
 * ends; its memory goes with TopTransactionContext.
 */
static void
GuardXactCallback(XactEvent event, void *arg)
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
 * GuardSubXactCallback: when a subtransaction aborts, the rows it wrote are
 * gone, but an order it checked keeps "checked" in the dirty-order table.
 * The order's earlier, still unchecked writes would then be skipped when
 * their deferred events fire again at commit.  Forget every "checked" mark
 * instead: the next event of each order checks it again.
 */
static void
GuardSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	HASH_SEQ_STATUS status;
	DirtyOrder *entry;

	if (event != SUBXACT_EVENT_ABORT_SUB || dirty_orders == NULL)
		return;
	hash_seq_init(&status, dirty_orders);
	while ((entry = (DirtyOrder *) hash_seq_search(&status)) != NULL)
		entry->checked = false;
}

/* GuardInit registers the transaction callbacks; called from _PG_init. */
void
GuardInit(void)
{
	RegisterXactCallback(GuardXactCallback, NULL);
	RegisterSubXactCallback(GuardSubXactCallback, NULL);
}

/* InList says whether a state name is one of a NULL-terminated list. */
static bool
InList(const char *value, const char *const *list)
{
	for (; *list != NULL; list++)
		if (strcmp(value, *list) == 0)
			return true;
	return false;
}

/* TransitionAllowed looks a state change up in a transition table. */
static bool
TransitionAllowed(const Transition *table, const char *from, const char *to)
{
	for (; table->from != NULL; table++)
		if (strcmp(table->from, from) == 0 && strcmp(table->to, to) == 0)
			return true;
	return false;
}

/*
 * CheckTriggerProtocol refuses to run a guard function as anything but the
 * kind of trigger it was written for (tcn.c convention).
 */
static TriggerData *
CheckTriggerProtocol(FunctionCallInfo fcinfo, const char *funcname,
					 bool allow_truncate)
{
	TriggerData *trigdata;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by trigger manager",
						funcname)));
	trigdata = (TriggerData *) fcinfo->context;
	if (!TRIGGER_FIRED_BEFORE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" must be fired BEFORE", funcname)));
	if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) &&
		!(allow_truncate && TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" must be fired FOR EACH ROW", funcname)));
	return trigdata;
}

/* ColumnNumber finds a column the guard relies on, or fails loudly. */
static int
ColumnNumber(TupleDesc tupdesc, const char *name)
{
	int			attnum = SPI_fnumber(tupdesc, name);

	if (attnum <= 0)
		elog(ERROR, "milestones guard: column \"%s\" not found", name);
	return attnum;
}

/* TextColumn returns a text column as a C string, or NULL. */
static char *
TextColumn(HeapTuple tuple, TupleDesc tupdesc, const char *name)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, ColumnNumber(tupdesc, name), tupdesc, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* Int64Column returns a bigint (or smaller integer) column. */
static int64
IntColumn(HeapTuple tuple, TupleDesc tupdesc, const char *name)
{
	int			attnum = ColumnNumber(tupdesc, name);
	bool		isnull;
	Datum		d = heap_getattr(tuple, attnum, tupdesc, &isnull);
	Oid			typid = TupleDescAttr(tupdesc, attnum - 1)->atttypid;

	if (isnull)
		return 0;
	switch (typid)
	{
		case INT8OID:
			return DatumGetInt64(d);
		case INT4OID:
			return DatumGetInt32(d);
		case INT2OID:
			return DatumGetInt16(d);
		default:
			elog(ERROR, "milestones guard: column \"%s\" is not an integer", name);
	}
	return 0;					/* keep compiler quiet */
}

/*
 * ColumnChanged says whether a column differs between the old and the new
 * row (NULL-aware, binary comparison of the stored values).
 */
static bool
ColumnChanged(HeapTuple oldtup, HeapTuple newtup, TupleDesc tupdesc,
			  const char *name)
{
	int			attnum = ColumnNumber(tupdesc, name);
	Form_pg_attribute att = TupleDescAttr(tupdesc, attnum - 1);
	bool		oldnull,
				newnull;
	Datum		oldval = heap_getattr(oldtup, attnum, tupdesc, &oldnull);
	Datum		newval = heap_getattr(newtup, attnum, tupdesc, &newnull);

	if (oldnull || newnull)
		return oldnull != newnull;
	return !datumIsEqual(oldval, newval, att->attbyval, att->attlen);
}

/*
 * MarkDirty notes that an order was written in this transaction, so that
 * its deferred check runs (again) at commit.
 */
static void
MarkDirty(int64 order_id, bool money, bool updated)
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
		entry->money = false;
		entry->updated = false;
	}
	entry->checked = false;
	entry->money = entry->money || money;
	entry->updated = entry->updated || updated;
}

/* RefuseDelete is the common answer to DELETE and TRUNCATE on guarded tables. */
static void
RefuseDelete(Relation rel, bool truncate)
{
	ereport(ERROR,
			(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
			 errmsg("rows of %s cannot be %s",
					RelationGetRelationName(rel), truncate ? "truncated" : "deleted"),
			 errdetail("milestones keeps every order, milestone, ledger entry and event as the system of record."),
			 errhint("End an order through the API (withdraw_offer, decline_offer, stop, cancel) instead.")));
}

/*
 * GuardRow is the shared body of the order and milestone guards: it
 * validates an UPDATE against the transition table, the final states and
 * the immutable columns, and records the order for the deferred check.
 */
static Datum
GuardRow(FunctionCallInfo fcinfo, const char *funcname, const char *what,
		 const char *const *states, const char *const *final_states,
		 const Transition *transitions, const char *const *immutable)
{
	TriggerData *trigdata = CheckTriggerProtocol(fcinfo, funcname, true);
	Relation	rel = trigdata->tg_relation;
	TupleDesc	tupdesc = RelationGetDescr(rel);
	HeapTuple	newtup;
	HeapTuple	oldtup;
	char	   *oldstate;
	char	   *newstate;
	int64		order_id;
	bool		is_milestone = (strcmp(what, "milestone") == 0);
	char		label[64];

	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		RefuseDelete(rel, true);
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		RefuseDelete(rel, false);

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		newtup = trigdata->tg_trigtuple;
		newstate = TextColumn(newtup, tupdesc, "state");
		if (newstate == NULL || !InList(newstate, states))
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("invalid %s state \"%s\"", what,
							newstate ? newstate : "(null)")));
		/* A restored or hand-inserted row is checked structurally at commit. */
		MarkDirty(IntColumn(newtup, tupdesc, "order_id"), false, false);
		return PointerGetDatum(newtup);
	}

	/* UPDATE */
	oldtup = trigdata->tg_trigtuple;
	newtup = trigdata->tg_newtuple;
	oldstate = TextColumn(oldtup, tupdesc, "state");
	newstate = TextColumn(newtup, tupdesc, "state");
	order_id = IntColumn(oldtup, tupdesc, "order_id");

	if (is_milestone)
		snprintf(label, sizeof(label), "milestone %lld of order " INT64_FORMAT,
				 (long long) IntColumn(oldtup, tupdesc, "position"), order_id);
	else
		snprintf(label, sizeof(label), "order " INT64_FORMAT, order_id);

	if (newstate == NULL || !InList(newstate, states))
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("invalid %s state \"%s\"", what,
						newstate ? newstate : "(null)"),
				 errdetail("%s is %s.", label, oldstate)));

	if (InList(oldstate, final_states))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s is %s and can no longer change", label, oldstate),
				 errdetail("Attempted change from %s to %s; %s is a final state.",
						   oldstate, newstate, oldstate)));

	if (strcmp(oldstate, newstate) != 0 &&
		!TransitionAllowed(transitions, oldstate, newstate))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s cannot go from %s to %s", label, oldstate, newstate),
				 errdetail("The %s state machine has no transition from %s to %s.",
						   what, oldstate, newstate),
				 errhint("Use the milestones API functions to change orders.")));

	for (; *immutable != NULL; immutable++)
		if (ColumnChanged(oldtup, newtup, tupdesc, *immutable))
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("column \"%s\" of %s cannot change", *immutable, label),
					 errdetail("%s is fixed when the offer is created.", *immutable)));

	if (!is_milestone)
	{
		int64		oldused = IntColumn(oldtup, tupdesc, "revisions_used");
		int64		newused = IntColumn(newtup, tupdesc, "revisions_used");

		if (newused < oldused)
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("revisions used by %s cannot go down", label),
					 errdetail("From %lld to %lld.", (long long) oldused,
							   (long long) newused)));
		if (strcmp(oldstate, "offered") != 0 &&
			ColumnChanged(oldtup, newtup, tupdesc, "placed_at"))
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("column \"placed_at\" of %s cannot change", label),
					 errdetail("The order was placed already.")));
	}

	MarkDirty(order_id, true, true);
	return PointerGetDatum(newtup);
}

/* milestones_guard_order guards milestones.orders (BEFORE ROW, TRUNCATE). */
Datum
milestones_guard_order(PG_FUNCTION_ARGS)
{
	return GuardRow(fcinfo, "milestones_guard_order", "order",
					order_states, order_final_states, order_transitions,
					order_immutable);
}

/* milestones_guard_milestone guards milestones.order_milestones. */
Datum
milestones_guard_milestone(PG_FUNCTION_ARGS)
{
	return GuardRow(fcinfo, "milestones_guard_milestone", "milestone",
					milestone_states, milestone_final_states,
					milestone_transitions, milestone_immutable);
}

/*
 * milestones_guard_ledger keeps the ledger append-only and marks the order
 * of each new entry so that its money is checked at commit.
 */
Datum
milestones_guard_ledger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = CheckTriggerProtocol(fcinfo, "milestones_guard_ledger", true);
	Relation	rel = trigdata->tg_relation;

	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
				 errmsg("%s is append-only", RelationGetRelationName(rel)),
				 errdetail("Ledger entries are never updated, deleted or truncated."),
				 errhint("Correct a mistake with a new balancing transaction.")));
	MarkDirty(IntColumn(trigdata->tg_trigtuple, RelationGetDescr(rel), "order_id"), true, false);
	return PointerGetDatum(trigdata->tg_trigtuple);
}

/* milestones_guard_append_only refuses UPDATE, DELETE and TRUNCATE. */
Datum
milestones_guard_append_only(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = CheckTriggerProtocol(fcinfo, "milestones_guard_append_only", true);
	Relation	rel = trigdata->tg_relation;

	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
				 errmsg("%s is append-only", RelationGetRelationName(rel)),
				 errdetail("Its rows are a history: they are never updated, deleted or truncated.")));
	return PointerGetDatum(trigdata->tg_trigtuple);
}

/*
 * CheckOrder runs milestones._order_problems() for one order and raises
 * the problems it reports as one error.
 *
 * An order that has no milestones yet and was only INSERTed in this
 * transaction (never UPDATEd) is not checked: pg_restore loads orders,
 * their milestones and the ledger one table per transaction (in parallel
 * with -j), so the order row alone is not the finished picture.  It is
 * checked in full when its milestones arrive; an UPDATE of it is always
 * checked (so an order without milestones can never move), and
 * check_invariants() reports one that never gets any.
 */
static void
CheckOrder(int64 order_id, bool money, bool updated, Oid owner)
{
	Datum		values[3];
	int			ret;
	StringInfoData detail;
	uint64		i;
	Oid			save_userid;
	int			save_sec_context;

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

		plan = SPI_prepare("SELECT problem FROM milestones._order_problems("
						   "pg_catalog.array_append(NULL::pg_catalog.int8[], $1), $2)"
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

	if (SPI_processed > 0)
	{
		initStringInfo(&detail);
		for (i = 0; i < SPI_processed; i++)
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
 * milestones_check_order is the deferred constraint trigger on orders,
 * milestones and ledger: at commit it checks each touched order once, with
 * the money rules when the order was updated or got ledger entries.
 */
Datum
milestones_check_order(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata;
	HeapTuple	tuple;
	int64		order_id;
	DirtyOrder *entry = NULL;
	bool		money;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_check_order\" was not called by trigger manager")));
	trigdata = (TriggerData *) fcinfo->context;
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_check_order\" must be fired AFTER ... FOR EACH ROW")));

	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	order_id = IntColumn(tuple, RelationGetDescr(trigdata->tg_relation), "order_id");

	if (dirty_orders != NULL)
		entry = (DirtyOrder *) hash_search(dirty_orders, &order_id, HASH_FIND, NULL);
	if (entry != NULL && entry->checked)
		return PointerGetDatum(NULL);	/* already checked since its last write */

	money = entry != NULL ? entry->money : TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	CheckOrder(order_id, money,
			   entry != NULL ? entry->updated : TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event),
			   FunctionOwner(fcinfo->flinfo->fn_oid));
	if (entry != NULL)
		entry->checked = true;
	return PointerGetDatum(NULL);
}
