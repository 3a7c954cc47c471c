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
 *	  only the state transitions of the state table (states.c), keep the
 *	  identifying and priced columns immutable, freeze ended rows and refuse
 *	  DELETE and TRUNCATE;
 *	- milestones_guard_append_only (BEFORE ROW/TRUNCATE) makes the ledger and
 *	  the events table append-only;
 *	- milestones_check_order (deferred constraint trigger, AFTER ROW) checks,
 *	  once per touched order and at commit, the order-level invariants that
 *	  no single row can show: milestone positions 1..n, one active milestone,
 *	  milestone k started only after every earlier one ended (completed,
 *	  refunded or cancelled), the order state matching its milestones, and (after an UPDATE or a ledger write) the money:
 *	  balanced transactions, one charge per started milestone, one payout.
 *
 * The order-level check is deferred so that pg_restore, which loads rows
 * in any order, and multi-statement transitions see the finished picture.
 * The guards record every write they allow as a fact of its order, and
 * count the rows they allowed per table; the check (check.c) passes an
 * order written only by the engine's actions from those facts when the
 * guards saw every row the transaction wrote, and checks any other with
 * milestones._order_problems(), which check_invariants() shares, so the
 * backstop and the DBA's report agree.  A row that another BEFORE ROW
 * trigger, firing after the guard, may still change is recorded as a
 * write that matches no declaration: its order gets the full check.
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
#include "catalog/pg_trigger.h"
#include "miscadmin.h"

#include "milestones.h"

PG_FUNCTION_INFO_V1(milestones_guard_order);
PG_FUNCTION_INFO_V1(milestones_guard_milestone);
PG_FUNCTION_INFO_V1(milestones_guard_ledger);
PG_FUNCTION_INFO_V1(milestones_guard_append_only);
PG_FUNCTION_INFO_V1(milestones_check_order);
PG_FUNCTION_INFO_V1(milestones_guard_payment);

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

/*
 * The columns each guard reads, by name and type (columns.c): a table of
 * the guard, with where its columns sit in the relation it fires for.  The
 * order and milestone guards read the state machine's immutable columns
 * (states.c) too.  A column dropped, renamed or retyped by hand is refused
 * (42703, 42804), whatever write it was: the guard cannot check a row it
 * cannot read.
 */
typedef struct GuardTable
{
	const char *table;
	const ColumnSpec *columns;
	int			ncolumns;
	ColumnMap	map;
	TupleDesc	desc;			/* the relation's, for this call */
} GuardTable;

static const ColumnSpec guard_order_columns[] =
{
	{"order_id", INT8OID}, {"state", TEXTOID}, {"revisions_used", INT4OID},
	{"placed_at", TIMESTAMPTZOID}, {"seller_id", INT8OID}, {"buyer_id", INT8OID},
	{"category", TEXTOID}, {"currency", TEXTOID}, {"revisions_allowed", INT4OID},
	{"fee_rate", NUMERICOID}, {"created_at", TIMESTAMPTZOID},
	{"payment_mode", TEXTOID, false, true}	/* 1.2; a 1.1 table has none */
};
static const ColumnSpec guard_milestone_columns[] =
{
	{"order_id", INT8OID}, {"position", INT2OID}, {"state", TEXTOID}, {"name", TEXTOID},
	{"days", INT2OID}, {"amount", NUMERICOID}, {"final", BOOLOID}
};
static const ColumnSpec guard_ledger_columns[] =
{
	{"order_id", INT8OID}, {"position", INT2OID}, {"kind", TEXTOID}, {"account", TEXTOID},
	{"txn_id", INT8OID}, {"amount", NUMERICOID}
};
static const ColumnSpec guard_order_id_column[] = {{"order_id", INT8OID}};

static GuardTable guard_orders = {"orders", guard_order_columns, lengthof(guard_order_columns)};
static GuardTable guard_milestones =
{"order_milestones", guard_milestone_columns, lengthof(guard_milestone_columns)};
static GuardTable guard_ledger = {"ledger_entries", guard_ledger_columns, lengthof(guard_ledger_columns)};
/* The commit check's trigger reads order_id of the six tables it fires for. */
static GuardTable guard_order_ids[6] =
{
	{"orders", guard_order_id_column, 1},
	{"order_milestones", guard_order_id_column, 1},
	{"ledger_entries", guard_order_id_column, 1},
	{"order_charges", guard_order_id_column, 1},
	{"charge_attempts", guard_order_id_column, 1},
	{"order_refunds", guard_order_id_column, 1}
};

/* The tables of confirmed payments (1.2): their state and immutable columns. */
static const ColumnSpec guard_charge_columns[] =
{
	{"charge_id", INT8OID}, {"order_id", INT8OID}, {"position", INT2OID}, {"state", TEXTOID},
	{"amount", NUMERICOID}, {"currency", TEXTOID}, {"requested_at", TIMESTAMPTZOID},
	{"pay_by", TIMESTAMPTZOID}
};
static const ColumnSpec guard_attempt_columns[] =
{
	{"charge_id", INT8OID}, {"attempt", INT4OID}, {"order_id", INT8OID}, {"state", TEXTOID},
	{"requested_at", TIMESTAMPTZOID}
};
static const ColumnSpec guard_refund_columns[] =
{
	{"refund_id", INT8OID}, {"order_id", INT8OID}, {"position", INT2OID}, {"state", TEXTOID},
	{"charge_id", INT8OID}, {"charge_attempt", INT4OID}, {"buyer_id", INT8OID},
	{"amount", NUMERICOID}, {"currency", TEXTOID}, {"reason", TEXTOID},
	{"requested_at", TIMESTAMPTZOID}, {"ledger_txn", INT8OID}
};
static GuardTable guard_charges = {"order_charges", guard_charge_columns, lengthof(guard_charge_columns)};
static GuardTable guard_attempts = {"charge_attempts", guard_attempt_columns, lengthof(guard_attempt_columns)};
static GuardTable guard_refunds = {"order_refunds", guard_refund_columns, lengthof(guard_refund_columns)};

/*
 * GuardOpen makes g ready for a row of rel: every column of g found as
 * specified (ColumnMapRequire: found by name once per backend, a
 * comparison of names and type oids on every call), or the write refused.
 */
static GuardTable *
GuardOpen(GuardTable *g, Relation rel)
{
	g->desc = RelationGetDescr(rel);
	ColumnMapRequire(&g->map, g->desc, RelationGetRelid(rel), 0, RelationGetRelationName(rel),
					 g->columns, g->ncolumns);
	return g;
}

/* GuardColumn is the index in g's list of the column named name. */
static int
GuardColumn(GuardTable *g, const char *name)
{
	int			c;

	for (c = 0; c < g->ncolumns; c++)
		if (strcmp(g->columns[c].name, name) == 0)
			return c;
	elog(ERROR, "milestones guard: column \"%s\" of %s is not in the guard's list", name, g->table);
	return -1;					/* keep compiler quiet */
}

/* ColumnNumber is the attribute number (1-based) of a column of g. */
static int
ColumnNumber(GuardTable *g, const char *name)
{
	return g->map.attnum[GuardColumn(g, name)] + 1;
}

/* TextColumn returns a text column as a C string, or NULL. */
static char *
TextColumn(HeapTuple tuple, GuardTable *g, const char *name)
{
	int			c = GuardColumn(g, name);
	bool		isnull;
	Datum		d;

	if (g->columns[c].type != TEXTOID)
		elog(ERROR, "milestones guard: column \"%s\" is not read as text", name);
	d = heap_getattr(tuple, g->map.attnum[c] + 1, g->desc, &isnull);
	return isnull ? NULL : TextDatumGetCString(d);
}

/* IntColumn returns a bigint, integer or smallint column (NULL as 0). */
static int64
IntColumn(HeapTuple tuple, GuardTable *g, const char *name)
{
	int			c = GuardColumn(g, name);
	bool		isnull;
	Datum		d = heap_getattr(tuple, g->map.attnum[c] + 1, g->desc, &isnull);

	if (isnull)
		return 0;
	switch (g->columns[c].type)
	{
		case INT8OID:
			return DatumGetInt64(d);
		case INT4OID:
			return DatumGetInt32(d);
		case INT2OID:
			return DatumGetInt16(d);
		default:
			elog(ERROR, "milestones guard: column \"%s\" is not read as an integer", name);
	}
	return 0;					/* keep compiler quiet */
}

/*
 * ColumnChanged says whether a column differs between the old and the new
 * row (NULL-aware, comparison of the values' images).
 */
static bool
ColumnChanged(HeapTuple oldtup, HeapTuple newtup, GuardTable *g, const char *name)
{
	int			attnum = ColumnNumber(g, name);
	Form_pg_attribute att = TupleDescAttr(g->desc, attnum - 1);
	bool		oldnull,
				newnull;
	Datum		oldval = heap_getattr(oldtup, attnum, g->desc, &oldnull);
	Datum		newval = heap_getattr(newtup, attnum, g->desc, &newnull);

	if (oldnull || newnull)
		return oldnull != newnull;
	/*
	 * datum_image_eq, not datumIsEqual: a row written before a column was
	 * added reads the column's stored default, whose varlena header may be
	 * of another length than the same value's in the new row.
	 */
	return !datum_image_eq(oldval, newval, att->attbyval, att->attlen);
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
 * LaterTriggerMayRewrite says whether another BEFORE ROW trigger of this
 * event fires after the guard (triggers fire in name order, the order of
 * trigdesc) and so may change the row the guard has checked: then the
 * guard's fact of it is not what is written, and its order (or seller:
 * earnings.c) gets the full check at commit.  Scanned from the end: few
 * triggers sort after the guard.
 */
bool
LaterTriggerMayRewrite(TriggerData *trigdata)
{
	TriggerDesc *trigdesc = trigdata->tg_relation->trigdesc;
	int16		event = TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ?
		TRIGGER_TYPE_INSERT : TRIGGER_TYPE_UPDATE;
	int			i;

	if (trigdesc == NULL)
		return false;
	for (i = trigdesc->numtriggers - 1; i >= 0; i--)
	{
		Trigger    *t = &trigdesc->triggers[i];

		if (t->tgoid == trigdata->tg_trigger->tgoid)
			return false;
		if (t->tgenabled == TRIGGER_DISABLED ||
			!TRIGGER_TYPE_MATCHES(t->tgtype, TRIGGER_TYPE_ROW, TRIGGER_TYPE_BEFORE, event))
			continue;
		/* as trigger.c's TriggerEnabled: by session_replication_role */
		if (SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA ?
			t->tgenabled == TRIGGER_FIRES_ON_ORIGIN :
			t->tgenabled == TRIGGER_FIRES_ON_REPLICA)
			continue;
		return true;
	}
	return false;
}

/*
 * GuardRow is the shared body of the order and milestone guards: it
 * validates a write against the state machine (states.c), the final
 * states and the immutable columns, and records it as a fact of its order
 * for the commit check (check.c).
 */
static Datum
GuardRow(FunctionCallInfo fcinfo, const char *funcname,
		 const StateMachine *machine)
{
	TriggerData *trigdata = CheckTriggerProtocol(fcinfo, funcname, true);
	Relation	rel = trigdata->tg_relation;
	GuardTable *tupdesc;		/* the row's columns, as the guard reads them */
	HeapTuple	newtup;
	HeapTuple	oldtup;
	char	   *oldstate;
	char	   *newstate;
	int			oldcode;
	int			newcode;
	int64		order_id;
	int64		position = -1;
	bool		is_milestone = (machine == &MilestoneMachine);
	const char *const *immutable;
	const char *what = machine->what;
	char		label[64];
	WriteFact	fact;

	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		RefuseDelete(rel, true);
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		RefuseDelete(rel, false);
	tupdesc = GuardOpen(is_milestone ? &guard_milestones : &guard_orders, rel);

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		newtup = trigdata->tg_trigtuple;
		newstate = TextColumn(newtup, tupdesc, "state");
		newcode = StateCode(machine, newstate);
		if (newcode < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("invalid %s state \"%s\"", what,
							newstate ? newstate : "(null)")));
		if (is_milestone)
			position = IntColumn(newtup, tupdesc, "position");
		/* A restored or hand-inserted row is checked structurally at commit. */
		fact = StateFact(is_milestone ? FACT_MILESTONE : FACT_ORDER, true,
						 -1, newcode, (int) position);
		CheckObserve(fact.table, IntColumn(newtup, tupdesc, "order_id"),
					 LaterTriggerMayRewrite(trigdata) ? NULL : &fact, false, false);
		return PointerGetDatum(newtup);
	}

	/* UPDATE */
	oldtup = trigdata->tg_trigtuple;
	newtup = trigdata->tg_newtuple;
	oldstate = TextColumn(oldtup, tupdesc, "state");
	newstate = TextColumn(newtup, tupdesc, "state");
	order_id = IntColumn(oldtup, tupdesc, "order_id");

	if (is_milestone)
	{
		position = IntColumn(oldtup, tupdesc, "position");
		snprintf(label, sizeof(label), "milestone %lld of order " INT64_FORMAT,
				 (long long) position, order_id);
	}
	else
		snprintf(label, sizeof(label), "order " INT64_FORMAT, order_id);

	newcode = StateCode(machine, newstate);
	if (newcode < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("invalid %s state \"%s\"", what,
						newstate ? newstate : "(null)"),
				 errdetail("%s is %s.", label, oldstate)));
	oldcode = StateCode(machine, oldstate);
	if (oldcode < 0)
		elog(ERROR, "milestones guard: %s has unknown state \"%s\"", label,
			 oldstate ? oldstate : "(null)");

	if (StateIsFinal(machine, oldcode))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s is %s and can no longer change", label, oldstate),
				 errdetail("Attempted change from %s to %s; %s is a final state.",
						   oldstate, newstate, oldstate)));

	if (oldcode != newcode &&
		!StateTransitionAllowed(machine, oldcode, newcode))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s cannot go from %s to %s", label, oldstate, newstate),
				 errdetail("The %s state machine has no transition from %s to %s.",
						   what, oldstate, newstate),
				 errhint("Use the milestones API functions to change orders.")));

	for (immutable = machine->immutable; *immutable != NULL; immutable++)
		if (tupdesc->map.attnum[GuardColumn(tupdesc, *immutable)] >= 0 &&	/* 1.1 tables lack 1.2's columns */
			ColumnChanged(oldtup, newtup, tupdesc, *immutable))
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
		if (oldcode != ORDER_OFFERED &&
			ColumnChanged(oldtup, newtup, tupdesc, "placed_at"))
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("column \"placed_at\" of %s cannot change", label),
					 errdetail("The order was placed already.")));
	}

	fact = StateFact(is_milestone ? FACT_MILESTONE : FACT_ORDER, false,
					 oldcode, newcode, (int) position);
	CheckObserve(fact.table, order_id, LaterTriggerMayRewrite(trigdata) ? NULL : &fact,
				 true, true);
	return PointerGetDatum(newtup);
}

/*
 * The tables of confirmed payments (1.2): the state machine of each, the
 * column that identifies a row, and the column that places it in its order
 * (a charge's or refund's milestone, an attempt's number).
 */
typedef struct PaymentTable
{
	const char *table;
	const StateMachine *machine;
	FactTable	fact;
	const char *id;
	const char *position;
	GuardTable *columns;
} PaymentTable;

static const PaymentTable payment_tables[] = {
	{"order_charges", &ChargeMachine, FACT_CHARGE, "charge_id", "position", &guard_charges},
	{"charge_attempts", &AttemptMachine, FACT_ATTEMPT, "charge_id", "attempt", &guard_attempts},
	{"order_refunds", &RefundMachine, FACT_REFUND, "refund_id", "position", &guard_refunds},
	{NULL, NULL, 0, NULL, NULL, NULL}
};

/*
 * milestones_guard_payment guards order_charges, charge_attempts and
 * order_refunds (BEFORE ROW, TRUNCATE): only the transitions of their state
 * machines (states.c), immutable identity and amount columns, ended rows
 * frozen, no DELETE or TRUNCATE; each write a fact of its order for the
 * commit check, which holds the money of confirmed payments.
 */
Datum
milestones_guard_payment(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = CheckTriggerProtocol(fcinfo, "milestones_guard_payment", true);
	Relation	rel = trigdata->tg_relation;
	GuardTable *tupdesc;		/* the row's columns, as the guard reads them */
	const PaymentTable *t;
	HeapTuple	newtup;
	HeapTuple	oldtup;
	char	   *oldstate;
	char	   *newstate;
	int			oldcode;
	int			newcode;
	int64		id;
	char		label[96];
	const char *const *immutable;
	WriteFact	fact;

	for (t = payment_tables; t->table != NULL; t++)
		if (strcmp(RelationGetRelationName(rel), t->table) == 0)
			break;
	if (t->table == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_guard_payment\" guards only order_charges, charge_attempts and order_refunds"),
				 errdetail("It was fired on table %s.", RelationGetRelationName(rel))));
	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		RefuseDelete(rel, true);
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		RefuseDelete(rel, false);
	tupdesc = GuardOpen(t->columns, rel);

	newtup = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : trigdata->tg_trigtuple;
	newstate = TextColumn(newtup, tupdesc, "state");
	newcode = StateCode(t->machine, newstate);
	id = IntColumn(newtup, tupdesc, t->id);
	snprintf(label, sizeof(label), "%s " INT64_FORMAT "%s", t->machine->what, id,
			 t->fact == FACT_ATTEMPT ? psprintf(" attempt %lld", (long long) IntColumn(newtup, tupdesc, "attempt")) : "");
	if (newcode < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("invalid %s state \"%s\"", t->machine->what, newstate ? newstate : "(null)"),
				 errdetail("The %s is %s.", label, newstate ? newstate : "(null)")));
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		/* A restored row may carry any state: checked at commit. */
		fact = StateFact(t->fact, true, -1, newcode, (int) IntColumn(newtup, tupdesc, t->position));
		fact.txn = id;
		CheckObserve(t->fact, IntColumn(newtup, tupdesc, "order_id"),
					 LaterTriggerMayRewrite(trigdata) ? NULL : &fact, true, false);
		return PointerGetDatum(newtup);
	}

	oldtup = trigdata->tg_trigtuple;
	oldstate = TextColumn(oldtup, tupdesc, "state");
	oldcode = StateCode(t->machine, oldstate);
	if (oldcode < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CHECK_VIOLATION),
				 errmsg("%s has an unknown state \"%s\"", label, oldstate ? oldstate : "(null)")));
	for (immutable = t->machine->immutable; *immutable != NULL; immutable++)
		if (ColumnChanged(oldtup, newtup, tupdesc, *immutable))
			ereport(ERROR,
					(errcode(ERRCODE_CHECK_VIOLATION),
					 errmsg("column \"%s\" of %s cannot change", *immutable, label),
					 errdetail("%s is fixed when the %s is created.", *immutable, t->machine->what)));
	if (oldcode != newcode && StateIsFinal(t->machine, oldcode))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s is %s and can no longer change", label, oldstate),
				 errdetail("Attempted change from %s to %s; %s is a final state.",
						   oldstate, newstate, oldstate)));
	if (oldcode != newcode && !StateTransitionAllowed(t->machine, oldcode, newcode))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s cannot go from %s to %s", label, oldstate, newstate),
				 errdetail("The %s state machine has no transition from %s to %s.",
						   t->machine->what, oldstate, newstate),
				 errhint("Payments change through record_charge, retry_charge, record_refund and retry_refund.")));
	fact = StateFact(t->fact, false, oldcode, newcode, (int) IntColumn(oldtup, tupdesc, t->position));
	fact.txn = id;
	CheckObserve(t->fact, IntColumn(oldtup, tupdesc, "order_id"),
				 LaterTriggerMayRewrite(trigdata) ? NULL : &fact, true, true);
	return PointerGetDatum(newtup);
}

/* milestones_guard_order guards milestones.orders (BEFORE ROW, TRUNCATE). */
Datum
milestones_guard_order(PG_FUNCTION_ARGS)
{
	return GuardRow(fcinfo, "milestones_guard_order", &OrderMachine);
}

/* milestones_guard_milestone guards milestones.order_milestones. */
Datum
milestones_guard_milestone(PG_FUNCTION_ARGS)
{
	return GuardRow(fcinfo, "milestones_guard_milestone", &MilestoneMachine);
}

/*
 * milestones_guard_ledger keeps the ledger append-only and records each
 * new entry as a fact of its order, whose money is checked at commit.
 */
Datum
milestones_guard_ledger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = CheckTriggerProtocol(fcinfo, "milestones_guard_ledger", true);
	Relation	rel = trigdata->tg_relation;
	GuardTable *tupdesc;		/* the row's columns, as the guard reads them */
	HeapTuple	tuple = trigdata->tg_trigtuple;
	WriteFact	fact;
	bool		isnull;
	bool		exact = false;
	Datum		amount;

	if (!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
				 errmsg("%s is append-only", RelationGetRelationName(rel)),
				 errdetail("Ledger entries are never updated, deleted or truncated."),
				 errhint("Correct a mistake with a new balancing transaction.")));

	tupdesc = GuardOpen(&guard_ledger, rel);
	memset(&fact, 0, sizeof(fact));
	fact.table = FACT_LEDGER;
	fact.insert = 1;
	fact.from = fact.to = -1;
	fact.position = -1;
	heap_getattr(tuple, ColumnNumber(tupdesc, "position"), tupdesc->desc, &isnull);
	if (!isnull)
		fact.position = (int16) IntColumn(tuple, tupdesc, "position");
	fact.kind = LedgerCode(LedgerKinds, TextColumn(tuple, tupdesc, "kind"));
	fact.account = LedgerCode(LedgerAccounts, TextColumn(tuple, tupdesc, "account"));
	fact.txn = IntColumn(tuple, tupdesc, "txn_id");
	amount = heap_getattr(tuple, ColumnNumber(tupdesc, "amount"), tupdesc->desc, &isnull);
	if (!isnull)
		fact.cents = NumericToCents(amount, &exact);
	CheckObserve(FACT_LEDGER, IntColumn(tuple, tupdesc, "order_id"),
				 exact && !LaterTriggerMayRewrite(trigdata) ? &fact : NULL, true, false);
	return PointerGetDatum(tuple);
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
 * GuardOrderIds is the order_id column of rel (orders, order_milestones or
 * ledger_entries) for the commit check's trigger: one column map per
 * table, so that a transaction writing all three finds each column once.
 */
static GuardTable *
GuardOrderIds(Relation rel)
{
	static int	next = 0;
	int			i;

	for (i = 0; i < (int) lengthof(guard_order_ids); i++)
		if (guard_order_ids[i].map.key == RelationGetRelid(rel))
			return GuardOpen(&guard_order_ids[i], rel);
	/* first use for this table: a slot by the table's name, else in turn */
	for (i = 0; i < (int) lengthof(guard_order_ids); i++)
		if (strcmp(guard_order_ids[i].table, RelationGetRelationName(rel)) == 0)
			return GuardOpen(&guard_order_ids[i], rel);
	next = (next + 1) % lengthof(guard_order_ids);
	return GuardOpen(&guard_order_ids[next], rel);
}

/*
 * milestones_check_order is the deferred constraint trigger on orders,
 * milestones and ledger: at commit it checks each touched order once
 * (check.c decides how: from the facts, or with the full query).
 */
Datum
milestones_check_order(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata;
	HeapTuple	tuple;

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
	CheckFireDeferred(fcinfo, IntColumn(tuple, GuardOrderIds(trigdata->tg_relation), "order_id"),
					  TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event));
	return PointerGetDatum(NULL);
}
