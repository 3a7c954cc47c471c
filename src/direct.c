/*-------------------------------------------------------------------------
 *
 * src/direct.c
 *		Reads by key without the executor: the order lock (every order
 *		action's first step), the eligibility of a seller and a category,
 *		and the settings row.  And the rows of an order and its milestones
 *		made into the engine's picture (EngineOrderFromRow,
 *		EngineMilestoneFromRow), for these reads and for the locking
 *		statement's result alike (engine.c): engine.c calls this file, never
 *		the other way round.
 *
 * An executor start-up costs more than the few index probes most of the
 * engine's reads are; each read here does the probes itself, and steps
 * aside (the caller runs its statement) whenever the table is not as the
 * extension made it.
 *
 * The order lock.  Every action begins by locking its order's row (so that concurrent calls
 * on one order serialize) and reading the order with its milestones.  As a
 * statement that was a join with row locks, and its executor start-up alone
 * (ExecInitLockRows, two index scans, a nested loop) was a sixth of an API
 * call's CPU.  Here the same work is done as the executor would do it,
 * step by step:
 *
 *	1. a new command and a new snapshot (what SPI does before a statement
 *	   that may write);
 *	2. the order's row found through orders_pkey;
 *	3. the row locked FOR UPDATE with table_tuple_lock, waiting for a
 *	   concurrent action on the order and then following the row's update
 *	   chain to its newest version, as ExecLockRows does under READ
 *	   COMMITTED (the order_id of that version is checked again, as the
 *	   executor's recheck would);
 *	4. a new snapshot, taken after the lock, so that the milestones are
 *	   read as the action that held the lock left them;
 *	5. the milestones read through order_milestones_pkey, in position
 *	   order.
 *
 * Index scans and heap fetches take the predicate locks of SERIALIZABLE
 * themselves.  Nothing here bypasses a rule: the lock writes nothing, and
 * every write still goes through SQL (triggers, constraints, indexes).
 *
 * The milestone rows are read, not locked: every engine writer locks the
 * order's row first, so the lock serializes the actions; a DBA's own
 * UPDATE of a milestone that does not take the order's lock meets the
 * guard triggers and the commit check, as it did in 1.0 (whose lock was
 * the order's row alone).
 *
 * The direct path is taken only in a read-write transaction under READ
 * COMMITTED (the isolation level of every API call made as documented),
 * and when the tables look as the extension made them: both primary keys
 * exactly on the expected columns, every column read found by name with
 * its type (and NOT NULL where the engine relies on it), the privileges a
 * statement would need, no row-level security (whose policies only a
 * statement applies) and no inheritance children.  Otherwise the caller
 * runs the locking statement, which also gives REPEATABLE READ and
 * SERIALIZABLE their serialization failures (40001) and a read-only
 * transaction or a standby its 25006; its result is held to the same
 * column list (engine.h), so a column retyped or made nullable by hand is
 * refused there with a clear error (columns.c), never read as another
 * type.  A table or schema the engine cannot find by name is an error
 * here: every statement of the engine names it.
 *
 * The reads of eligibility and settings are probes by primary key under
 * one snapshot taken after their tables are locked, as one statement's
 * would be; they step aside for the statement under the same conditions
 * of the tables (any isolation level: they lock nothing).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "engine.h"

/* Where each column sits, per table (columns.c). */
static ColumnMap order_map;
static ColumnMap milestone_map;

/*
 * ExtensionSchemaName is the name of the schema the extension milestones
 * is in now, or NULL (for an error message: a catalog scan).
 */
static char *
ExtensionSchemaName(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			nsp = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("milestones"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		nsp = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return OidIsValid(nsp) ? get_namespace_name(nsp) : NULL;
}

/*
 * EngineTableOid finds milestones.name, the table the engine's statements
 * name, refusing with a clear error when the schema or the table is gone
 * (renamed or dropped by hand): every statement of the engine would fail
 * on it, and "relation does not exist" from deep inside an API call would
 * not say why.
 */
static Oid
EngineTableOid(const char *name)
{
	Oid			nsp = get_namespace_oid("milestones", true);
	Oid			relid;

	if (!OidIsValid(nsp))
	{
		char	   *now = ExtensionSchemaName();

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_SCHEMA_NAME),
				 errmsg("schema \"milestones\" does not exist"),
				 errdetail("The milestones engine keeps its tables in schema milestones%s.",
						   now != NULL ? psprintf("; the extension's schema is now called %s",
												  quote_identifier(now)) : ""),
				 errhint("The extension cannot be relocated: rename its schema back with ALTER SCHEMA %s RENAME TO milestones.",
						 now != NULL ? quote_identifier(now) : "...")));
	}
	relid = get_relname_relid(name, nsp);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table milestones.%s does not exist", name),
				 errdetail("The milestones engine reads and writes milestones.%s; it was renamed, moved or dropped.",
						   name),
				 errhint("Rename it back (ALTER TABLE ... RENAME TO %s), or restore the extension's tables from a backup.",
						 quote_identifier(name))));
	return relid;
}

/*
 * OpenDirect opens milestones.name with lockmode for a direct read: a
 * plain table the current user may read (and update, for_update: what
 * FOR UPDATE needs), whose columns are found as specified; NULL otherwise,
 * nothing left open.
 */
static Relation
OpenDirect(const char *name, LOCKMODE lockmode, bool for_update, ColumnMap *map,
		   const ColumnSpec *columns, int ncolumns)
{
	Oid			relid = EngineTableOid(name);
	Relation	rel;

	/* a statement would check these privileges (the owner has them) */
	if (!OidIsValid(relid) ||
		pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK ||
		(for_update && pg_class_aclcheck(relid, GetUserId(), ACL_UPDATE) != ACLCHECK_OK))
		return NULL;
	rel = table_open(relid, lockmode);
	if (!TableIsPlain(rel->rd_rel) ||
		ColumnMapFind(map, RelationGetDescr(rel), relid, 0, columns, ncolumns) >= 0)
	{
		table_close(rel, NoLock);
		return NULL;
	}
	return rel;
}

/* RowText is a text column's value as a C string, or NULL. */
static char *
RowText(const Datum *values, const bool *nulls, int a)
{
	return nulls[a] ? NULL : TextDatumGetCString(values[a]);
}

/*
 * EngineOrderFromRow fills o from a row of the order's columns, whose
 * values are values[att[OC_...]] (of the types of EngineOrderColumns,
 * with a value wherever those are NOT NULL: the caller checked both).
 */
void
EngineOrderFromRow(EngineOrder *o, const Datum *values, const bool *nulls, const int *att)
{
	char	   *state;
	char	   *cancel_reason;

	memset(o, 0, offsetof(EngineOrder, ms));
	o->order_id = DatumGetInt64(values[att[OC_ORDER_ID]]);
	o->seller_id = DatumGetInt64(values[att[OC_SELLER_ID]]);
	o->buyer_id = DatumGetInt64(values[att[OC_BUYER_ID]]);
	o->category = RowText(values, nulls, att[OC_CATEGORY]);
	o->currency = RowText(values, nulls, att[OC_CURRENCY]);
	state = RowText(values, nulls, att[OC_STATE]);
	o->state = StateCode(&OrderMachine, state);
	if (o->state < 0)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " has unknown state \"%s\"",
			 o->order_id, state ? state : "(null)");
	o->end_reason = RowText(values, nulls, att[OC_END_REASON]);
	cancel_reason = RowText(values, nulls, att[OC_CANCEL_REASON]);
	o->reason = o->end_reason != NULL ? o->end_reason : cancel_reason;
	o->revisions_unlimited = nulls[att[OC_REVISIONS_ALLOWED]];
	o->revisions_allowed = o->revisions_unlimited ? 0 :
		DatumGetInt32(values[att[OC_REVISIONS_ALLOWED]]);
	o->revisions_used = DatumGetInt32(values[att[OC_REVISIONS_USED]]);
	o->fee_rate = datumCopy(values[att[OC_FEE_RATE]], false, -1);
	o->created_at = DatumGetTimestampTz(values[att[OC_CREATED_AT]]);
	o->placed_at_null = nulls[att[OC_PLACED_AT]];
	o->placed_at = o->placed_at_null ? 0 : DatumGetTimestampTz(values[att[OC_PLACED_AT]]);
	o->completed_at_null = nulls[att[OC_COMPLETED_AT]];
	o->completed_at = o->completed_at_null ? 0 :
		DatumGetTimestampTz(values[att[OC_COMPLETED_AT]]);
	o->nmilestones = -1;
	o->current = -1;
}

/*
 * EngineMilestoneFromRow fills m, one of o's milestones, from a row of the
 * milestone's columns (values[att[MC_...]], as EngineOrderFromRow), and
 * makes it o's current one when it is in progress or delivered.
 */
void
EngineMilestoneFromRow(EngineOrder *o, EngineMilestone *m, const Datum *values,
					   const bool *nulls, const int *att)
{
	char	   *state;

	m->position = DatumGetInt16(values[att[MC_POSITION]]);
	state = RowText(values, nulls, att[MC_STATE]);
	m->state = StateCode(&MilestoneMachine, state);
	if (m->state < 0)
		elog(ERROR, "milestones engine: milestone %d of order " INT64_FORMAT " has unknown state \"%s\"",
			 m->position, o->order_id, state ? state : "(null)");
	m->name = RowText(values, nulls, att[MC_NAME]);
	m->final = DatumGetBool(values[att[MC_FINAL]]);
	m->amount = datumCopy(values[att[MC_AMOUNT]], false, -1);
	m->respond_by_null = nulls[att[MC_RESPOND_BY]];
	m->respond_by = m->respond_by_null ? 0 : DatumGetTimestampTz(values[att[MC_RESPOND_BY]]);
	m->delivered_at_null = nulls[att[MC_DELIVERED_AT]];
	m->delivered_at = m->delivered_at_null ? 0 :
		DatumGetTimestampTz(values[att[MC_DELIVERED_AT]]);
	m->deliveries = DatumGetInt32(values[att[MC_DELIVERIES]]);
	m->due_at_null = nulls[att[MC_DUE_AT]];
	m->due_at = m->due_at_null ? 0 : DatumGetTimestampTz(values[att[MC_DUE_AT]]);
	if (m->state == MS_IN_PROGRESS || m->state == MS_DELIVERED)
		o->current = (int) (m - o->ms);
}

/*
 * ReadOrder copies the locked order's row into o; false when the row's
 * order_id is not the one asked for (the newest version of a row whose key
 * a DBA changed meanwhile: the order asked for is gone).
 */
static bool
ReadOrder(EngineOrder *o, int64 order_id, TupleTableSlot *slot)
{
	const int  *a = order_map.attnum;

	slot_getallattrs(slot);
	if (slot->tts_isnull[a[OC_ORDER_ID]] ||
		DatumGetInt64(slot->tts_values[a[OC_ORDER_ID]]) != order_id)
		return false;
	EngineOrderFromRow(o, slot->tts_values, slot->tts_isnull, a);
	o->mode_known = true;
	o->confirmed = a[OC_PAYMENT_MODE] >= 0 &&
		strcmp(TextDatumGetCString(slot->tts_values[a[OC_PAYMENT_MODE]]), "confirmed") == 0;
	return true;
}

/* ReadMilestone copies one milestone row into m. */
static void
ReadMilestone(EngineOrder *o, EngineMilestone *m, TupleTableSlot *slot)
{
	slot_getallattrs(slot);
	EngineMilestoneFromRow(o, m, slot->tts_values, slot->tts_isnull, milestone_map.attnum);
}

/*
 * LockTheRow locks the order's row found at *tid for update and leaves its
 * newest version in slot; false when the row is gone.  The flags are the
 * executor's under READ COMMITTED (ExecLockRows in nodeLockRows.c): follow
 * the update chain to the newest version, and lock an update in progress
 * too where the lock modes allow.
 */
static bool
LockTheRow(Relation rel, ItemPointer tid, Snapshot snapshot, TupleTableSlot *slot,
		   int64 order_id)
{
	TM_FailureData tmfd;
	TM_Result	result;

	result = table_tuple_lock(rel, tid, snapshot, slot, GetCurrentCommandId(true),
							  LockTupleExclusive, LockWaitBlock,
							  TUPLE_LOCK_FLAG_LOCK_UPDATE_IN_PROGRESS |
							  TUPLE_LOCK_FLAG_FIND_LAST_VERSION, &tmfd);
	switch (result)
	{
		case TM_Ok:
			return true;
		case TM_SelfModified:
			/* not possible after CommandCounterIncrement; as ExecLockRows: gone */
			return false;
		case TM_Deleted:
			/* the newest version is deleted: the order is gone */
			return false;
		case TM_Updated:

			/*
			 * FIND_LAST_VERSION follows every update, so this is not
			 * expected (the executor raises an internal error here); a
			 * retry finds the newest version.
			 */
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not lock order " INT64_FORMAT " due to a concurrent update", order_id),
					 errdetail("Its row was updated by another transaction while the lock was taken."),
					 errhint("Retry the call.")));
			return false;
		case TM_Invisible:
			elog(ERROR, "milestones engine: attempted to lock invisible tuple");
			return false;
		default:
			elog(ERROR, "milestones engine: unexpected table_tuple_lock status %u", result);
			return false;
	}
}

/*
 * EngineLockOrderDirect locks the order's row and reads the order and its
 * milestones into o.  Returns 1 when done, 0 when there is no such order
 * (o untouched), and -1 when the tables are not as the extension made them
 * and the caller must use the statement instead.
 */
int
EngineLockOrderDirect(EngineOrder *o, int64 order_id)
{
	Relation	orders;
	Relation	milestones;
	Relation	index;
	IndexScanDesc scan;
	ScanKeyData key;
	TupleTableSlot *slot;
	ItemPointerData tid;
	bool		found;
	int			keycols[2];

	/*
	 * A read-only transaction (also on a standby) gets the statement's
	 * 25006; REPEATABLE READ and SERIALIZABLE its 40001.
	 */
	if (IsolationUsesXactSnapshot() || XactReadOnly)
		return -1;
	orders = OpenDirect("orders", RowShareLock, true, &order_map, EngineOrderColumns, OC_DIRECT_COUNT);
	if (orders == NULL)
		return -1;
	keycols[0] = order_map.attnum[OC_ORDER_ID];
	index = KeyIndexOpen(orders, 1, keycols, INT8OID);
	milestones = index == NULL ? NULL :
		OpenDirect("order_milestones", AccessShareLock, false, &milestone_map,
				   EngineMilestoneColumns, MC_COUNT);
	if (milestones == NULL)
	{
		if (index != NULL)
			index_close(index, NoLock);
		table_close(orders, NoLock);
		return -1;
	}

	/* 1-2: a new command and snapshot, the row through the primary key */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	slot = table_slot_create(orders, NULL);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(order_id));
	scan = index_beginscan(orders, index, GetActiveSnapshot(), 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	if (found)
		tid = slot->tts_tid;
	index_endscan(scan);
	index_close(index, NoLock);

	/* 3: the lock */
	found = found && LockTheRow(orders, &tid, GetActiveSnapshot(), slot, order_id) &&
		ReadOrder(o, order_id, slot);
	ExecDropSingleTupleTableSlot(slot);
	PopActiveSnapshot();
	table_close(orders, NoLock);
	if (!found)
	{
		table_close(milestones, NoLock);
		return 0;
	}

	/* 4-5: the milestones, as the last holder of the lock left them */
	keycols[0] = milestone_map.attnum[MC_ORDER_ID];
	keycols[1] = milestone_map.attnum[MC_POSITION];
	index = KeyIndexOpen(milestones, 2, keycols, INT8OID);
	if (index == NULL)
	{
		/* the statement reads them (o->nmilestones is -1) */
		table_close(milestones, NoLock);
		return 1;
	}
	PushActiveSnapshot(GetTransactionSnapshot());
	slot = table_slot_create(milestones, NULL);
	scan = index_beginscan(milestones, index, GetActiveSnapshot(), 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	o->nmilestones = 0;
	o->current = -1;
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		if (o->nmilestones >= ENGINE_MAX_MILESTONES)
			elog(ERROR, "milestones engine: order " INT64_FORMAT " has more than %d milestones",
				 o->order_id, ENGINE_MAX_MILESTONES);
		ReadMilestone(o, &o->ms[o->nmilestones], slot);
		o->nmilestones++;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	PopActiveSnapshot();
	index_close(index, NoLock);
	table_close(milestones, NoLock);
	return 1;
}

/*
 * Eligibility and settings.  create_offer reads the settings row and the
 * eligibility of its seller and category, place_order the eligibility
 * again; each is one or two probes by primary key.  Like a statement, the
 * reads see a new snapshot taken after a new command, so that they see
 * what this transaction wrote before.
 */
static const ColumnSpec seller_columns[2] =
{
	{"seller_id", INT8OID, true}, {"eligible", BOOLOID, false}
};
static const ColumnSpec category_columns[2] =
{
	{"category", TEXTOID, true}, {"eligible", BOOLOID, false}
};
static const ColumnSpec settings_columns[5] =
{
	{"min_order_total", NUMERICOID, true}, {"max_milestones", INT4OID, true},
	{"seller_fee_rate", NUMERICOID, true}, {"notify", BOOLOID, false},
	{"payment_mode", TEXTOID, true, true}	/* 1.2; a 1.1 table has none */
};
static ColumnMap seller_map;
static ColumnMap category_map;
static ColumnMap settings_map;

/*
 * A primary-key probe opened for a direct read: the table, its key index
 * and the key.
 */
typedef struct KeyProbe
{
	Relation	rel;
	Relation	index;
	ColumnMap  *map;
	ScanKeyData key;
} KeyProbe;

/*
 * OpenProbe opens milestones.table and its primary key (a single column of
 * keytype) for a probe by key with eqproc; false when the statement must
 * read it.
 */
static bool
OpenProbe(KeyProbe *p, const char *table, ColumnMap *map, const ColumnSpec *columns,
		  Datum key, Oid keytype, RegProcedure eqproc)
{
	int			keycol[1];

	p->rel = OpenDirect(table, AccessShareLock, false, map, columns, 2);
	p->map = map;
	if (p->rel == NULL)
		return false;
	keycol[0] = map->attnum[0];
	p->index = KeyIndexOpen(p->rel, 1, keycol, keytype);
	if (p->index == NULL)
	{
		table_close(p->rel, NoLock);
		p->rel = NULL;
		return false;
	}
	ScanKeyEntryInitialize(&p->key, 0, 1, BTEqualStrategyNumber, InvalidOid,
						   p->index->rd_indcollation[0], eqproc, key);
	return true;
}

/* CloseProbe closes what OpenProbe opened (the locks stay until commit). */
static void
CloseProbe(KeyProbe *p)
{
	if (p->rel == NULL)
		return;
	index_close(p->index, NoLock);
	table_close(p->rel, NoLock);
	p->rel = NULL;
}

/*
 * Probe reads the eligible column of the probed row under the active
 * snapshot: true when the row exists and is eligible.
 */
static bool
Probe(KeyProbe *p)
{
	IndexScanDesc scan;
	TupleTableSlot *slot = table_slot_create(p->rel, NULL);
	bool		result = false;

	scan = index_beginscan(p->rel, p->index, GetActiveSnapshot(), 1, 0);
	index_rescan(scan, &p->key, 1, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		eligible = slot_getattr(slot, p->map->attnum[1] + 1, &isnull);

		result = !isnull && DatumGetBool(eligible);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return result;
}

/*
 * EngineSettingsRowsError refuses to read the settings when the table does
 * not have exactly one row (a DBA removed it, or added one, with the
 * table's guards switched off).
 */
void
EngineSettingsRowsError(int rows)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("milestones.settings must have exactly one row"),
			 errdetail("It has %d.", rows),
			 errhint("Restore the row (INSERT INTO milestones.settings DEFAULT VALUES, then set each value with milestones.set_setting()), or remove the extra one.")));
	pg_unreachable();
}

/*
 * ReadSettings reads the settings row under the active snapshot into
 * settings; returns how many rows the table has (exactly one, unless a
 * DBA broke it: each caller says what any other count means).
 */
static int
ReadSettings(Relation rel, EngineSettings *settings)
{
	TableScanDesc scan;
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	const int  *a = settings_map.attnum;
	int			rows = 0;

	scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		if (rows++ > 0)
			continue;
		slot_getallattrs(slot);
		settings->min_total = datumCopy(slot->tts_values[a[0]], false, -1);
		settings->max_milestones = DatumGetInt32(slot->tts_values[a[1]]);
		settings->fee_rate = datumCopy(slot->tts_values[a[2]], false, -1);
		settings->notify = !slot->tts_isnull[a[3]] && DatumGetBool(slot->tts_values[a[3]]);
		settings->confirmed = a[4] >= 0 &&
			strcmp(TextDatumGetCString(slot->tts_values[a[4]]), "confirmed") == 0;
	}
	table_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return rows;
}

/*
 * EngineEligibleDirect reads whether the seller and the category are
 * eligible for milestones (a row with eligible = true in
 * eligible_sellers, eligible_categories) and, when settings is not NULL,
 * the settings row, all under one snapshot taken after the tables are
 * locked, as one statement would.  false when the statement must read
 * them instead (nothing is set then).
 */
bool
EngineEligibleDirect(int64 seller_id, const char *category, bool *seller_ok,
					 bool *category_ok, EngineSettings *settings)
{
	KeyProbe	sellers;
	KeyProbe	categories;
	Relation	settings_rel = NULL;

	categories.rel = NULL;
	if (!OpenProbe(&sellers, "eligible_sellers", &seller_map, seller_columns,
				   Int64GetDatum(seller_id), INT8OID, F_INT8EQ) ||
		!OpenProbe(&categories, "eligible_categories", &category_map, category_columns,
				   CStringGetTextDatum(category), TEXTOID, F_TEXTEQ) ||
		(settings != NULL &&
		 (settings_rel = OpenDirect("settings", AccessShareLock, false, &settings_map,
									settings_columns, lengthof(settings_columns))) == NULL))
	{
		CloseProbe(&sellers);
		CloseProbe(&categories);
		return false;
	}
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	*seller_ok = Probe(&sellers);
	*category_ok = Probe(&categories);
	if (settings != NULL)
	{
		int			rows = ReadSettings(settings_rel, settings);

		if (rows != 1)
			EngineSettingsRowsError(rows);
	}
	PopActiveSnapshot();
	CloseProbe(&sellers);
	CloseProbe(&categories);
	if (settings_rel != NULL)
		table_close(settings_rel, NoLock);
	return true;
}

/*
 * EngineNotifyDirect reads settings.notify under the active snapshot, for
 * the events trigger's fallback NOTIFY (events.c) on a table of schema
 * events_nsp, as its statement did: *notify is true when the settings row
 * says notify.  false when the statement must read it (another schema
 * than the engine's, privileges, row-level security, a changed table, or
 * not exactly one row).
 */
bool
EngineNotifyDirect(Oid events_nsp, bool *notify)
{
	Relation	rel;
	EngineSettings settings;
	int			rows;

	if (!ActiveSnapshotSet() || get_namespace_oid("milestones", true) != events_nsp ||
		(rel = OpenDirect("settings", AccessShareLock, false, &settings_map, settings_columns,
						  lengthof(settings_columns))) == NULL)
		return false;
	rows = ReadSettings(rel, &settings);
	table_close(rel, NoLock);
	if (rows != 1)
		return false;
	*notify = settings.notify;
	return true;
}
