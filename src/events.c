/*-------------------------------------------------------------------------
 *
 * src/events.c
 *		The events trigger: who sends the notification of an event.
 *
 * Every state change appends a row to milestones.events.  This AFTER
 * INSERT trigger decides what happens next (SPEC section 5):
 *
 *	- in a database the relay serves (src/relay.c), nothing but a wake-up:
 *	  the relay's latch is set when the transaction commits, and the relay
 *	  sends the notification from its own transaction, so the API's commit
 *	  never takes PostgreSQL's cluster-wide notification lock;
 *	- otherwise (fallback) it sends NOTIFY milestones with the payload of
 *	  milestones._payloads(), delivered by PostgreSQL at commit, when
 *	  settings.notify is on.
 *
 * It also provides milestones._cluster_id(), the system identifier stored
 * with every event so that a transaction id is only ever compared with
 * snapshots of the cluster that issued it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/xid8.h"

#include "engine.h"
#include "milestones.h"

PG_FUNCTION_INFO_V1(milestones_cluster_id);
PG_FUNCTION_INFO_V1(milestones_events_notify);

/* The fallback's saved plan, and the events row type it was prepared for. */
static SPIPlanPtr payload_plan = NULL;
static Oid	payload_plan_rowtype = InvalidOid;

/* milestones_cluster_id is SQL milestones._cluster_id(): pg_control's system identifier. */
Datum
milestones_cluster_id(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) GetSystemIdentifier());
}

/* The columns RestoredRow reads (columns.c), and where they sit. */
static const ColumnSpec restored_columns[2] =
{
	{"txid", XID8OID, false}, {"txid_cluster", INT8OID, false}
};
static ColumnMap restored_map;

/*
 * RestoredRow says whether an inserted event carries another transaction's
 * id or another cluster's, as the rows pg_restore re-inserts do: their
 * notifications were sent when they were first written.  A table without
 * the columns (dropped, renamed: as a 1.0 table) has no restored rows; a
 * column of another type is refused (columns.c).
 */
static bool
RestoredRow(Relation rel, HeapTuple tuple)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	int			c = ColumnMapFind(&restored_map, tupdesc, RelationGetRelid(rel), 0,
								  restored_columns, lengthof(restored_columns));
	bool		isnull;
	Datum		value;

	if (c >= 0)
	{
		if (ColumnProblemOf(tupdesc, &restored_columns[0]) == COLUMN_MISSING ||
			ColumnProblemOf(tupdesc, &restored_columns[1]) == COLUMN_MISSING)
			return false;
		ColumnRefuse(RelationGetRelationName(rel), &restored_columns[c], tupdesc);
	}
	value = heap_getattr(tuple, restored_map.attnum[0] + 1, tupdesc, &isnull);
	if (isnull ||
		U64FromFullTransactionId(DatumGetFullTransactionId(value)) !=
		U64FromFullTransactionId(GetTopFullTransactionId()))
		return true;
	value = heap_getattr(tuple, restored_map.attnum[1] + 1, tupdesc, &isnull);
	return isnull || DatumGetInt64(value) != (int64) GetSystemIdentifier();
}

/*
 * PreparePayloadPlan prepares, once per backend (again only if the events
 * table was re-created), the fallback's query: the payload of the new row
 * when settings.notify is on, no row when it is off.
 */
static void
PreparePayloadPlan(Relation rel)
{
	Oid			rowtype = rel->rd_rel->reltype;
	const char *schema;
	StringInfoData sql;
	SPIPlanPtr	plan;

	if (payload_plan != NULL && payload_plan_rowtype == rowtype)
		return;
	schema = quote_identifier(get_namespace_name(RelationGetNamespace(rel)));
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT p.payload FROM %s.settings s, %s._payloads(ARRAY[$1]) p WHERE s.notify",
					 schema, schema);
	plan = SPI_prepare(sql.data, 1, &rowtype);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for the event payload: %s",
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed for the event payload");
	if (payload_plan != NULL)
		SPI_freeplan(payload_plan);
	payload_plan = plan;
	payload_plan_rowtype = rowtype;
}

/*
 * NotifyFallback sends NOTIFY milestones with the row's payload (PostgreSQL
 * delivers it at commit, never after a rollback), unless settings.notify
 * is off.
 */
static void
NotifyFallback(Relation rel, HeapTuple tuple)
{
	Datum		arg;
	int			ret;
	bool		notify;
	char	   *payload;

	/*
	 * In C where it can be (settings.notify by a direct read, the payload
	 * by the relay's builder: a PL/pgSQL call and a plan less per event);
	 * otherwise the statement through _payloads().  The payload is built
	 * even when notify is off, as the statement ran _payloads() then too:
	 * where that would fail, the statement runs and fails the same way.
	 */
	if (EngineNotifyDirect(RelationGetNamespace(rel), &notify) &&
		RelayEventPayload(rel, tuple, &payload))
	{
		if (notify && payload != NULL)
			Async_Notify(EVENTS_CHANNEL, payload);
		return;
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PreparePayloadPlan(rel);
	arg = heap_copy_tuple_as_datum(tuple, RelationGetDescr(rel));
	ret = SPI_execute_plan(payload_plan, &arg, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed for the event payload: %s",
			 SPI_result_code_string(ret));
	if (SPI_processed == 1)
	{
		char	   *payload = SPI_getvalue(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1);

		if (payload != NULL)
			Async_Notify(EVENTS_CHANNEL, payload);
	}
	SPI_finish();
}

/*
 * milestones_events_notify is the AFTER INSERT FOR EACH ROW trigger on
 * milestones.events: a wake-up for the relay where one serves this
 * database, NOTIFY at commit otherwise.
 */
Datum
milestones_events_notify(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata;
	HeapTuple	tuple;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_events_notify\" was not called by trigger manager")));
	trigdata = (TriggerData *) fcinfo->context;
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"milestones_events_notify\" must be fired AFTER INSERT ... FOR EACH ROW")));

	tuple = trigdata->tg_trigtuple;
	if (RestoredRow(trigdata->tg_relation, tuple))
		return PointerGetDatum(NULL);
	if (RelayServesThisDatabase())
		RelayWakeAtCommit();
	else
		NotifyFallback(trigdata->tg_relation, tuple);
	return PointerGetDatum(NULL);
}
