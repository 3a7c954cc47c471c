/*-------------------------------------------------------------------------
 *
 * src/relay_batch.c
 *		The relay's common batch in C: the consumer mechanism without PL/pgSQL.
 *
 * The relay (src/relay.c) reads the events as the consumer "_relay" of
 * the durable consumer mechanism (sql/1.1/30_events.sql: ticks, a range,
 * a batch finished in the same transaction).  Through the SQL functions a
 * batch cost about a dozen PL/pgSQL statements, three of them planned
 * again on every call, and a payload built through jsonb_each and
 * jsonb_object_agg: some 3 ms of CPU per batch.  This file does the same
 * work for the relay's common case directly:
 *
 *	- "anything new?" and the tick range through the events' transaction id
 *	  index (events_txid_idx), read in C with the same snapshot tests as
 *	  pg_visible_in_snapshot(), and the orders through their primary key;
 *	- the range ends where it reaches a batch (sql/1.2/20_consumers.sql:
 *	  the new tick cut by _range_bound()'s rule, WalkRange and CutTick
 *	  here), so a backlog after a pause is sent a batch per transaction,
 *	  each moving the position, holding at most a batch of rows in memory;
 *	- the payloads written in C, in the key order and the text jsonb gives
 *	  _payloads() (money as strings), without building jsonb values;
 *	- the consumer's new position in one statement from a saved plan: its
 *	  tick takes the new snapshot in place, and the position this worker's
 *	  last committed batch left is known, so the consumer is neither read
 *	  nor locked first (the update checks that it is still there), and the
 *	  relay's NOTIFYs and its position commit together, exactly as
 *	  _relay_batch() leaves them.
 *
 * The common case is: no open batch, no range being drained, both ticks of
 * this cluster, every detail a JSON object.  Anything else (a restore from
 * another cluster, a range of more than milestones.relay_batch_size events
 * (one transaction larger than a batch) to be drained, an open batch) is
 * left to the SQL functions, which stay the one definition of the
 * mechanism; test/shell/23_relay.t checks that the payloads sent are byte
 * for byte those of _payloads(), test/shell/28_backlog.t that the C path
 * cuts its ranges as _range_bound() does.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/xid8.h"

#include "milestones.h"

/* A tick's snapshot (pg_snapshot), as full transaction ids. */
typedef struct TickSnap
{
	uint64		xmin;
	uint64		xmax;
	int			nxip;
	uint64	   *xip;			/* ascending, no duplicates */
} TickSnap;

/* One event of the range: its id, its transaction and a copy of its row. */
typedef struct RangeEvent
{
	int64		event_id;
	uint64		txid;
	HeapTuple	tuple;
} RangeEvent;

/*
 * An order's parties and currency, for the payload; none: a seller-level
 * event (order_id NULL, 1.2), whose order fields are null and come from
 * its detail.
 */
typedef struct OrderParties
{
	bool		none;
	int64		order_id;
	int64		seller_id;
	int64		buyer_id;
	char	   *currency;
} OrderParties;

/* The columns of milestones.events the relay reads. */
typedef struct EventsColumns
{
	AttrNumber	event_id;
	AttrNumber	order_id;
	AttrNumber	position;
	AttrNumber	event;
	AttrNumber	actor_role;
	AttrNumber	actor_id;
	AttrNumber	order_state;
	AttrNumber	milestone_state;
	AttrNumber	detail;
	AttrNumber	created_at;
	AttrNumber	txid;
	AttrNumber	txid_cluster;
} EventsColumns;

/* The batch's statements; %1$s is the extension's schema (quoted). */
typedef enum BatchStmt
{
	BSTMT_CONSUMER,
	BSTMT_LOCK,
	BSTMT_TICK,
	BSTMT_TICK_MOVE,
	BSTMT_MOVE_FINISH,
	BSTMT_MOVE_KNOWN,
	BSTMT_POSITION,
	BSTMT_PRUNE,
	BSTMT_COUNT
} BatchStmt;

typedef struct BatchStmtDef
{
	const char *sql;
	int			nargs;
	Oid			argtypes[7];
	int			expect;			/* the SPI_OK_* code it returns */
} BatchStmtDef;

static const BatchStmtDef batch_stmts[BSTMT_COUNT] = {
	/* The consumer, its tick, and whether a batch or a range is open. */
	[BSTMT_CONSUMER] = {
		"SELECT c.consumer_id, c.tick_id,"
		" c.upper_tick_id IS NOT NULL OR EXISTS (SELECT FROM %1$s.consumer_batches b"
		" WHERE b.consumer_id OPERATOR(pg_catalog.=) c.consumer_id),"
		" t.snapshot::pg_catalog.text, t.cluster_id"
		" FROM %1$s.consumers c JOIN %1$s.consumer_ticks t ON t.tick_id OPERATOR(pg_catalog.=) c.tick_id"
		" WHERE c.name OPERATOR(pg_catalog.=) $1",
	1, {TEXTOID}, SPI_OK_SELECT},
	/*
	 * The same, locked (one worker at a time moves a consumer), and
	 * settings.notify as _relay_batch() reads it.
	 */
	[BSTMT_LOCK] = {
		"SELECT c.consumer_id, c.tick_id,"
		" c.upper_tick_id IS NOT NULL OR EXISTS (SELECT FROM %1$s.consumer_batches b"
		" WHERE b.consumer_id OPERATOR(pg_catalog.=) c.consumer_id),"
		" t.snapshot::pg_catalog.text, t.cluster_id,"
		" (SELECT s.notify FROM %1$s.settings s)"
		" FROM %1$s.consumers c JOIN %1$s.consumer_ticks t ON t.tick_id OPERATOR(pg_catalog.=) c.tick_id"
		" WHERE c.name OPERATOR(pg_catalog.=) $1 FOR UPDATE OF c",
	1, {TEXTOID}, SPI_OK_SELECT},
	/* _take_tick()'s insert. */
	[BSTMT_TICK] = {
		"INSERT INTO %1$s.consumer_ticks (snapshot, cluster_id) VALUES ($1, $2) RETURNING tick_id",
	2, {PG_SNAPSHOTOID, INT8OID}, SPI_OK_INSERT_RETURNING},
	/*
	 * A new tick and the prune of the consumer's old one, in one update:
	 * the old tick takes the new snapshot when nothing but this consumer
	 * stands on it (always, for the relay), which spares an insert, a
	 * delete and the foreign key checks of both.
	 */
	[BSTMT_TICK_MOVE] = {
		"UPDATE %1$s.consumer_ticks t SET snapshot = $2, taken_at = pg_catalog.clock_timestamp()"
		" WHERE t.tick_id OPERATOR(pg_catalog.=) $1 AND t.cluster_id OPERATOR(pg_catalog.=) $4"
		" AND NOT EXISTS (SELECT FROM %1$s.consumers c WHERE c.consumer_id OPERATOR(pg_catalog.<>) $3"
		" AND (c.tick_id OPERATOR(pg_catalog.=) t.tick_id OR c.upper_tick_id OPERATOR(pg_catalog.=) t.tick_id))"
		" AND NOT EXISTS (SELECT FROM %1$s.consumer_batches b"
		" WHERE b.lower_tick_id OPERATOR(pg_catalog.=) t.tick_id OR b.upper_tick_id OPERATOR(pg_catalog.=) t.tick_id)",
	4, {INT8OID, PG_SNAPSHOTOID, INT8OID, INT8OID}, SPI_OK_UPDATE},
	/* The same, and the consumer's counters for the batch it finished. */
	[BSTMT_MOVE_FINISH] = {
		"WITH t AS (UPDATE %1$s.consumer_ticks t SET snapshot = $2, taken_at = pg_catalog.clock_timestamp()"
		" WHERE t.tick_id OPERATOR(pg_catalog.=) $1 AND t.cluster_id OPERATOR(pg_catalog.=) $4"
		" AND NOT EXISTS (SELECT FROM %1$s.consumers c WHERE c.consumer_id OPERATOR(pg_catalog.<>) $3"
		" AND (c.tick_id OPERATOR(pg_catalog.=) t.tick_id OR c.upper_tick_id OPERATOR(pg_catalog.=) t.tick_id))"
		" AND NOT EXISTS (SELECT FROM %1$s.consumer_batches b"
		" WHERE b.lower_tick_id OPERATOR(pg_catalog.=) t.tick_id OR b.upper_tick_id OPERATOR(pg_catalog.=) t.tick_id)"
		" RETURNING t.tick_id)"
		" UPDATE %1$s.consumers c"
		" SET batches_done = c.batches_done OPERATOR(pg_catalog.+) 1,"
		" events_done = c.events_done OPERATOR(pg_catalog.+) $5,"
		" last_finished_at = pg_catalog.clock_timestamp()"
		" FROM t WHERE c.consumer_id OPERATOR(pg_catalog.=) $3 AND c.tick_id OPERATOR(pg_catalog.=) t.tick_id",
	5, {INT8OID, PG_SNAPSHOTOID, INT8OID, INT8OID, INT8OID}, SPI_OK_UPDATE},

	/*
	 * The same without the lock read first, for a consumer whose position
	 * this worker knows from its own last batch ($6: the tick's snapshot
	 * then): one row when the consumer still stands there, its range
	 * closed and no batch open (the caller raises an error otherwise, which
	 * undoes the tick's move too), with settings.notify.  A tick belongs to
	 * the one consumer that took it (_take_tick), so no other consumer or
	 * batch can stand on it.
	 */
	[BSTMT_MOVE_KNOWN] = {
		"WITH t AS (UPDATE %1$s.consumer_ticks t SET snapshot = $2, taken_at = pg_catalog.clock_timestamp()"
		" WHERE t.tick_id OPERATOR(pg_catalog.=) $1 AND t.cluster_id OPERATOR(pg_catalog.=) $4"
		" AND t.snapshot::pg_catalog.text OPERATOR(pg_catalog.=) $6"
		" RETURNING t.tick_id)"
		" UPDATE %1$s.consumers c"
		" SET batches_done = c.batches_done OPERATOR(pg_catalog.+) $7,"
		" events_done = c.events_done OPERATOR(pg_catalog.+) $5,"
		" last_finished_at = CASE WHEN $7 OPERATOR(pg_catalog.>) 0"
		" THEN pg_catalog.clock_timestamp() ELSE c.last_finished_at END"
		" FROM t WHERE c.consumer_id OPERATOR(pg_catalog.=) $3 AND c.tick_id OPERATOR(pg_catalog.=) t.tick_id"
		" AND c.upper_tick_id IS NULL"
		" AND NOT EXISTS (SELECT FROM %1$s.consumer_batches b WHERE b.consumer_id OPERATOR(pg_catalog.=) $3)"
		" RETURNING (SELECT s.notify FROM %1$s.settings s)",
	7, {INT8OID, PG_SNAPSHOTOID, INT8OID, INT8OID, INT8OID, TEXTOID, INT8OID}, SPI_OK_UPDATE_RETURNING},
	/* The consumer's position after _next_batch() and _finish_batch(). */
	[BSTMT_POSITION] = {
		"UPDATE %1$s.consumers"
		" SET tick_id = $2, upper_tick_id = $3, after_event_id = $4,"
		" batches_done = batches_done OPERATOR(pg_catalog.+) $5,"
		" events_done = events_done OPERATOR(pg_catalog.+) $6,"
		" last_finished_at = CASE WHEN $5 OPERATOR(pg_catalog.>) 0"
		" THEN pg_catalog.clock_timestamp() ELSE last_finished_at END"
		" WHERE consumer_id OPERATOR(pg_catalog.=) $1",
	6, {INT8OID, INT8OID, INT8OID, INT8OID, INT8OID, INT8OID}, SPI_OK_UPDATE},
	/* _prune_ticks(ARRAY[$1]). */
	[BSTMT_PRUNE] = {
		"DELETE FROM %1$s.consumer_ticks t WHERE t.tick_id OPERATOR(pg_catalog.=) $1"
		" AND NOT EXISTS (SELECT FROM %1$s.consumers c"
		" WHERE c.tick_id OPERATOR(pg_catalog.=) t.tick_id OR c.upper_tick_id OPERATOR(pg_catalog.=) t.tick_id)"
		" AND NOT EXISTS (SELECT FROM %1$s.consumer_batches b"
		" WHERE b.lower_tick_id OPERATOR(pg_catalog.=) t.tick_id OR b.upper_tick_id OPERATOR(pg_catalog.=) t.tick_id)",
	1, {INT8OID}, SPI_OK_DELETE},
};

/*
 * RelayPlan returns the kept plan of statement stmt of cache (sql with
 * %1$s for schema), preparing it on first use, and every plan of the cache
 * again when the extension's schema changed.  The worker (relay.c) keeps
 * its SQL-path statements with it too: it lives here, below the worker,
 * so that relay.c calls this file and never the other way round.
 */
SPIPlanPtr
RelayPlan(RelayPlans *cache, int stmt, const char *schema, const char *sql,
		  int nargs, const Oid *argtypes, int cursor_options)
{
	int			i;

	if (strcmp(schema, cache->schema) != 0)
	{
		for (i = 0; i < cache->count; i++)
			if (cache->plans[i] != NULL)
			{
				SPI_freeplan(cache->plans[i]);
				cache->plans[i] = NULL;
			}
		strlcpy(cache->schema, schema, sizeof(cache->schema));
	}
	if (cache->plans[stmt] == NULL)
	{
		StringInfoData text;
		SPIPlanPtr	plan;

		initStringInfo(&text);
		appendStringInfo(&text, sql, cache->schema);
		plan = SPI_prepare_cursor(text.data, nargs, (Oid *) argtypes, cursor_options);
		if (plan == NULL)
			elog(ERROR, "milestones relay: SPI_prepare failed for \"%s\": %s",
				 text.data, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "milestones relay: SPI_keepplan failed");
		cache->plans[stmt] = plan;
		pfree(text.data);
	}
	return cache->plans[stmt];
}

/* The saved plans, and the schema they were prepared for. */
static SPIPlanPtr batch_plan_slots[BSTMT_COUNT];
static RelayPlans batch_plans = {BSTMT_COUNT, batch_plan_slots, ""};

/*
 * Where this worker's last batch left the consumer: its id and tick (the
 * tick keeps its id, with a new snapshot, when moved in place), valid
 * while the events table is the same one.  Set when that batch's
 * transaction committed (RelayBatchCommitted), forgotten after an error
 * or when the SQL functions did the work, so the next batch neither reads
 * nor locks the consumer first: its final update checks that the consumer
 * is still there.
 */
typedef struct KnownPosition
{
	bool		valid;
	Oid			events_relid;
	int64		consumer_id;
	int64		tick_id;
	char		tick_text[1024];	/* the tick's snapshot, as text */
} KnownPosition;

static KnownPosition known;		/* committed */
static KnownPosition known_pending;	/* this transaction's, until it commits */

/* The money keys of a detail and of its payout object (SPEC section 5). */
static const char *const detail_money_keys[] = {"total", "charged", "refunded", "amount", NULL};
static const char *const payout_money_keys[] = {"gross", "fee", "net", NULL};

/*
 * The table columns the batch's statements return, read by position
 * (columns.c checks each result before it is read; a kept plan is planned
 * again after ALTER TABLE).
 */
static const ColumnSpec consumer_result[2] =
{
	{"consumer_id", INT8OID, true}, {"tick_id", INT8OID, true}
};
static const ColumnSpec tick_cluster_result = {"cluster_id", INT8OID, true};
static const ColumnSpec tick_id_result = {"tick_id", INT8OID, true};
static const ColumnSpec notify_result = {"notify", BOOLOID, false};

/* CheckBatchResult checks the result of statement stmt before it is read. */
static void
CheckBatchResult(BatchStmt stmt)
{
	switch (stmt)
	{
		case BSTMT_CONSUMER:
		case BSTMT_LOCK:
			ColumnsCheckResult(SPI_tuptable, SPI_processed, 1, "consumers", consumer_result, 2);
			ColumnsCheckResult(SPI_tuptable, SPI_processed, 5, "consumer_ticks", &tick_cluster_result, 1);
			if (stmt == BSTMT_LOCK)
				ColumnsCheckResult(SPI_tuptable, SPI_processed, 6, "settings", &notify_result, 1);
			break;
		case BSTMT_TICK:
			ColumnsCheckResult(SPI_tuptable, SPI_processed, 1, "consumer_ticks", &tick_id_result, 1);
			break;
		case BSTMT_MOVE_KNOWN:
			ColumnsCheckResult(SPI_tuptable, SPI_processed, 1, "settings", &notify_result, 1);
			break;
		default:
			break;
	}
}

/*
 * RunBatchStmt runs one of the batch's statements from its kept plan
 * (RelayPlan; generic plans, the batch's arguments vary) and checks its
 * result code and the types of what it returns.
 */
static void
RunBatchStmt(BatchStmt stmt, const char *schema, Datum *values, const char *nulls)
{
	int			ret;

	ret = SPI_execute_plan(RelayPlan(&batch_plans, stmt, schema, batch_stmts[stmt].sql,
									 batch_stmts[stmt].nargs, batch_stmts[stmt].argtypes,
									 CURSOR_OPT_GENERIC_PLAN),
						   values, nulls, false, 0);
	if (ret != batch_stmts[stmt].expect)
		elog(ERROR, "milestones relay: batch statement %d failed: %s",
			 (int) stmt, SPI_result_code_string(ret));
	CheckBatchResult(stmt);
}

/* GetInt64 reads a NOT NULL bigint column of SPI's current result. */
static int64
GetInt64(uint64 row, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);

	if (isnull)
		elog(ERROR, "milestones relay: unexpected NULL in column %d", col);
	return DatumGetInt64(d);
}

/* GetBool reads a boolean column of SPI's current result; NULL is false. */
static bool
GetBool(uint64 row, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);

	return !isnull && DatumGetBool(d);
}

/*
 * ParseTick reads a pg_snapshot's text form "xmin:xmax:xip,..." (as
 * pg_snapshot_out writes it: the xip ascending, without duplicates).
 */
static bool
ParseTick(const char *text, TickSnap *tick)
{
	const char *p = text;
	char	   *end;
	int			cap = 8;

	tick->nxip = 0;
	tick->xip = palloc(cap * sizeof(uint64));
	tick->xmin = strtou64(p, &end, 10);
	if (end == p || *end != ':')
		return false;
	p = end + 1;
	tick->xmax = strtou64(p, &end, 10);
	if (end == p || *end != ':')
		return false;
	p = end + 1;
	while (*p != '\0')
	{
		uint64		x = strtou64(p, &end, 10);

		if (end == p)
			return false;
		if (tick->nxip == cap)
		{
			cap *= 2;
			tick->xip = repalloc(tick->xip, cap * sizeof(uint64));
		}
		tick->xip[tick->nxip++] = x;
		p = end;
		if (*p == ',')
			p++;
		else if (*p != '\0')
			return false;
	}
	return true;
}

/* TickSees is pg_visible_in_snapshot(): is a transaction id visible in a tick? */
static bool
TickSees(const TickSnap *tick, uint64 xid)
{
	int			lo = 0;
	int			hi = tick->nxip - 1;

	if (xid < tick->xmin)
		return true;
	if (xid >= tick->xmax)
		return false;
	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (tick->xip[mid] == xid)
			return false;
		if (tick->xip[mid] < xid)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return true;
}

/* WidenXid is xid8funcs.c's widen_snapshot_xid: a snapshot's xid made full. */
static uint64
WidenXid(TransactionId xid, FullTransactionId next)
{
	uint32		epoch = EpochFromFullTransactionId(next);

	if (!TransactionIdIsNormal(xid))
		return U64FromFullTransactionId(FullTransactionIdFromEpochAndXid(0, xid));
	if (xid > XidFromFullTransactionId(next))
		epoch--;
	return U64FromFullTransactionId(FullTransactionIdFromEpochAndXid(epoch, xid));
}

/* CompareU64 orders transaction ids for qsort. */
static int
CompareU64(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a;
	uint64		y = *(const uint64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/* TickText is a tick's pg_snapshot text form, as pg_snapshot_out writes it. */
static char *
TickText(const TickSnap *tick)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	appendStringInfo(&buf, UINT64_FORMAT ":" UINT64_FORMAT ":", tick->xmin, tick->xmax);
	for (i = 0; i < tick->nxip; i++)
		appendStringInfo(&buf, "%s" UINT64_FORMAT, i > 0 ? "," : "", tick->xip[i]);
	return buf.data;
}

/*
 * TakeTick is _tick_snapshot(), in memory: the snapshot taken now (after
 * this transaction got its id), with this transaction and every id from
 * the snapshot's xmax up to it counted as in progress, so that no event of
 * an id between them can pass for committed.
 */
static void
TakeTick(Snapshot snap, TickSnap *tick)
{
	FullTransactionId next = ReadNextFullTransactionId();
	uint64		me = U64FromFullTransactionId(GetTopFullTransactionId());
	uint64		xmin = WidenXid(snap->xmin, next);
	uint64		xmax = WidenXid(snap->xmax, next);
	uint64		from = Min(xmax, me);
	int			n = 0;
	int			i;

	tick->xip = palloc((snap->xcnt + (me - from) + 1) * sizeof(uint64));
	for (i = 0; i < (int) snap->xcnt; i++)
		tick->xip[n++] = WidenXid(snap->xip[i], next);
	for (; from <= me; from++)
		tick->xip[n++] = from;
	qsort(tick->xip, n, sizeof(uint64), CompareU64);
	tick->nxip = 0;
	for (i = 0; i < n; i++)
		if (tick->nxip == 0 || tick->xip[tick->nxip - 1] != tick->xip[i])
			tick->xip[tick->nxip++] = tick->xip[i];
	tick->xmin = Min(xmin, me);
	tick->xmax = Max(xmax, me + 1);
}

/*
 * CutTick is _tick_cut(): the tick cut at upto sees what it saw below
 * upto, and nothing from upto on (unchanged when upto is at or past its
 * xmax).  Its xip stays ascending.
 */
static void
CutTick(TickSnap *tick, uint64 upto)
{
	if (upto >= tick->xmax)
		return;
	tick->xmin = Min(tick->xmin, upto);
	tick->xmax = upto;
	while (tick->nxip > 0 && tick->xip[tick->nxip - 1] >= upto)
		tick->nxip--;
}

/*
 * The columns of the events table the relay and the payloads read, with
 * the types they are read as (columns.c checks them on every use), and
 * those of orders that the payloads read.
 */
static const ColumnSpec events_columns[12] =
{
	{"event_id", INT8OID, false}, {"order_id", INT8OID, false}, {"position", INT2OID, false},
	{"event", TEXTOID, false}, {"actor_role", TEXTOID, false}, {"actor_id", INT8OID, false},
	{"order_state", TEXTOID, false}, {"milestone_state", TEXTOID, false},
	{"detail", JSONBOID, false}, {"created_at", TIMESTAMPTZOID, false},
	{"txid", XID8OID, false}, {"txid_cluster", INT8OID, false}
};
static ColumnMap events_map;
static const ColumnSpec orders_columns[4] =
{
	{"order_id", INT8OID, false}, {"seller_id", INT8OID, false}, {"buyer_id", INT8OID, false},
	{"currency", TEXTOID, false}
};
static ColumnMap orders_map;

/*
 * EventsColumnsFind finds, in the open events table rel, the columns the
 * relay and the payloads read (1-based attribute numbers); false when any
 * is missing or of another type.
 */
static bool
EventsColumnsFind(Relation rel, EventsColumns *col)
{
	AttrNumber *const atts[] = {&col->event_id, &col->order_id, &col->position, &col->event,
		&col->actor_role, &col->actor_id, &col->order_state, &col->milestone_state,
	&col->detail, &col->created_at, &col->txid, &col->txid_cluster};
	int			i;

	StaticAssertStmt(lengthof(atts) == lengthof(events_columns), "one spec per events column");
	if (ColumnMapFind(&events_map, RelationGetDescr(rel), RelationGetRelid(rel), 0,
					  events_columns, lengthof(events_columns)) >= 0)
		return false;
	for (i = 0; i < (int) lengthof(atts); i++)
		*atts[i] = events_map.attnum[i] + 1;
	return true;
}

/*
 * OpenEvents opens milestones.events and its transaction id index, and
 * finds the columns the relay reads; false (nothing opened) when the
 * schema lacks any of them, so that the SQL functions take over.
 */
static bool
OpenEvents(Oid nsp, Relation *rel, Relation *idx, EventsColumns *col)
{
	Oid			relid = get_relname_relid("events", nsp);
	Oid			idxid = get_relname_relid("events_txid_idx", nsp);

	if (!OidIsValid(relid) || !OidIsValid(idxid))
		return false;
	*rel = table_open(relid, AccessShareLock);
	if (!EventsColumnsFind(*rel, col))
	{
		table_close(*rel, AccessShareLock);
		*rel = NULL;			/* the caller's cleanup must not close it again */
		return false;
	}
	*idx = index_open(idxid, AccessShareLock);
	if ((*idx)->rd_index->indrelid != relid ||
		(*idx)->rd_rel->relam != BTREE_AM_OID ||
		(*idx)->rd_index->indkey.values[0] != col->txid)
	{
		index_close(*idx, AccessShareLock);
		table_close(*rel, AccessShareLock);
		*idx = NULL;
		*rel = NULL;
		return false;
	}
	return true;
}

/*
 * AnyPending is _has_pending()'s look along events_txid_idx: is there an
 * event of this cluster whose transaction the consumer's tick does not
 * see, one of a transaction in progress at the tick (a probe each) or one
 * at or past its xmax (newest first)?  Read-only, so an idle database
 * costs the relay no transaction id.
 */
static bool
AnyPending(Relation rel, Relation idx, const EventsColumns *col, const TickSnap *lo, int64 here)
{
	ScanKeyData key;
	IndexScanDesc scan;
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	bool		found = false;
	int			i;

	scan = index_beginscan(rel, idx, GetActiveSnapshot(), 1, 0);
	for (i = 0; i < lo->nxip && !found; i++)
	{
		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_XID8EQ, UInt64GetDatum(lo->xip[i]));
		index_rescan(scan, &key, 1, NULL, 0);
		while (!found && index_getnext_slot(scan, ForwardScanDirection, slot))
		{
			bool		isnull;

			found = DatumGetInt64(slot_getattr(slot, col->txid_cluster, &isnull)) == here;
		}
	}
	ScanKeyInit(&key, 1, BTGreaterEqualStrategyNumber, F_XID8GE, UInt64GetDatum(lo->xmax));
	index_rescan(scan, &key, 1, NULL, 0);
	while (!found && index_getnext_slot(scan, BackwardScanDirection, slot))
	{
		bool		isnull;

		found = DatumGetInt64(slot_getattr(slot, col->txid_cluster, &isnull)) == here;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	return found;
}

/* CompareEvents orders the range by event_id. */
static int
CompareEvents(const void *a, const void *b)
{
	int64		x = ((const RangeEvent *) a)->event_id;
	int64		y = ((const RangeEvent *) b)->event_id;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/*
 * RangeWalk is the state of WalkRange: the events collected so far (at
 * most max of them, in walk order) and how many the range counts.
 */
typedef struct RangeWalk
{
	Relation	rel;
	const EventsColumns *col;
	const TickSnap *hi;
	int64		here;
	TupleTableSlot *slot;
	RangeEvent *events;
	int			n;				/* collected */
	int			max;
} RangeWalk;

/*
 * WalkNext reads the next entry of an index scan that belongs to the
 * range (an event of this cluster that hi sees; the caller's keys bound
 * the transaction ids below hi's xmax), setting *txid; false at the end.
 */
static bool
WalkNext(RangeWalk *w, IndexScanDesc scan, uint64 *txid)
{
	while (index_getnext_slot(scan, ForwardScanDirection, w->slot))
	{
		bool		isnull;

		*txid = DatumGetUInt64(slot_getattr(w->slot, w->col->txid, &isnull));
		if (DatumGetInt64(slot_getattr(w->slot, w->col->txid_cluster, &isnull)) == w->here &&
			TickSees(w->hi, *txid))
			return true;
	}
	return false;
}

/*
 * WalkKeep keeps a copy of the event the walk stands on, while there is
 * room (an event_id at or below 0 is counted, never handed out, as
 * _range_events() reads event_id > 0).
 */
static void
WalkKeep(RangeWalk *w, uint64 txid)
{
	bool		isnull;
	int64		event_id = DatumGetInt64(slot_getattr(w->slot, w->col->event_id, &isnull));

	if (event_id <= 0 || w->n >= w->max)
		return;
	w->events[w->n].event_id = event_id;
	w->events[w->n].txid = txid;
	w->events[w->n].tuple = ExecCopySlotHeapTuple(w->slot);
	w->n++;
}

/*
 * WalkRange is _range_bound() and _range_events() at once, for two ticks
 * of this cluster: it walks events_txid_idx with the snapshot hi was taken
 * from (so every event hi sees is there) by _range_bound()'s rule, first
 * the transactions in progress at lo that hi sees, then the ids from
 * lo.xmax up, and stops at the first event that would overflow a batch of
 * max events.  It sets *upto to the transaction id at which hi is to be
 * cut, and *out / *nout to the events of the range (lo, hi cut at *upto],
 * in event_id order.  Memory: at most max copied rows.  false when the
 * range holds more than max events (a transaction larger than a batch, or
 * more events of transactions in progress at lo): the SQL functions drain
 * such a range in several batches.
 */
static bool
WalkRange(Relation rel, Relation idx, const EventsColumns *col, Snapshot snap,
		  const TickSnap *lo, const TickSnap *hi, int64 here, int max,
		  RangeEvent **out, int *nout, uint64 *upto)
{
	RangeWalk	w;
	ScanKeyData keys[2];
	IndexScanDesc scan;
	int64		late = 0;
	int64		walked = 0;
	uint64		txid;
	uint64		first = 0;
	bool		over = false;
	bool		fits = true;
	int			i;

	w.rel = rel;
	w.col = col;
	w.hi = hi;
	w.here = here;
	w.slot = table_slot_create(rel, NULL);
	w.events = palloc(Max(max, 1) * sizeof(RangeEvent));
	w.n = 0;
	w.max = max;

	/* 1. The transactions in progress at lo that hi sees. */
	scan = index_beginscan(rel, idx, snap, 1, 0);
	for (i = 0; i < lo->nxip && late <= max; i++)
	{
		if (lo->xip[i] >= hi->xmax)
			break;
		ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_XID8EQ, UInt64GetDatum(lo->xip[i]));
		index_rescan(scan, keys, 1, NULL, 0);
		while (late <= max && WalkNext(&w, scan, &txid))
		{
			late++;
			WalkKeep(&w, txid);
		}
	}
	index_endscan(scan);

	if (late > max)
		fits = false;
	else if (late == max)
		*upto = lo->xmax;
	else
	{
		/* 2. From lo.xmax up, until an event would overflow the batch. */
		ScanKeyInit(&keys[0], 1, BTGreaterEqualStrategyNumber, F_XID8GE, UInt64GetDatum(lo->xmax));
		ScanKeyInit(&keys[1], 1, BTLessStrategyNumber, F_XID8LT, UInt64GetDatum(hi->xmax));
		scan = index_beginscan(rel, idx, snap, 2, 0);
		index_rescan(scan, keys, 2, NULL, 0);
		while (WalkNext(&w, scan, &txid))
		{
			if (walked == 0)
				first = txid;
			if (late + walked == max)
			{
				over = true;
				break;
			}
			walked++;
			WalkKeep(&w, txid);
		}
		index_endscan(scan);
		if (!over)
			*upto = hi->xmax;	/* everything fits */
		else if (late == 0 && txid == first)
			fits = false;		/* one transaction larger than a batch */
		else
		{
			/* Its transaction comes whole in a later range. */
			*upto = txid;
			while (w.n > 0 && w.events[w.n - 1].txid >= txid)
				w.n--;
		}
	}
	ExecDropSingleTupleTableSlot(w.slot);
	if (!fits)
		return false;
	qsort(w.events, w.n, sizeof(RangeEvent), CompareEvents);
	*out = w.events;
	*nout = w.n;
	return true;
}

/* CompareOrders orders the parties by order_id, for bsearch. */
static int
CompareOrders(const void *a, const void *b)
{
	int64		x = ((const OrderParties *) a)->order_id;
	int64		y = ((const OrderParties *) b)->order_id;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/* CompareInt64 orders ids for qsort. */
static int
CompareInt64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/*
 * ReadOrders reads the parties and currency of the orders of the first n
 * events, sorted by order_id, through the orders' primary key (one probe
 * per order, never a scan); false when the table is not as expected.
 */
static bool
ReadOrders(Oid nsp, Snapshot snap, Relation rel, const EventsColumns *col,
		   const RangeEvent *events, int n, OrderParties **out, int *nout)
{
	Oid			relid = get_relname_relid("orders", nsp);
	Relation	orel;
	Relation	oidx;
	int			keycol[1];
	AttrNumber	att_seller_id;
	AttrNumber	att_buyer_id;
	AttrNumber	att_currency;
	int64	   *ids;
	int			nids = 0;
	OrderParties *orders;
	int			norders = 0;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	int			i;

	if (!OidIsValid(relid))
		return false;
	orel = table_open(relid, AccessShareLock);
	if (ColumnMapFind(&orders_map, RelationGetDescr(orel), relid, 0,
					  orders_columns, lengthof(orders_columns)) >= 0)
	{
		table_close(orel, AccessShareLock);
		return false;
	}
	keycol[0] = orders_map.attnum[0];
	att_seller_id = orders_map.attnum[1] + 1;
	att_buyer_id = orders_map.attnum[2] + 1;
	att_currency = orders_map.attnum[3] + 1;
	oidx = KeyIndexOpen(orel, 1, keycol, INT8OID);
	if (oidx == NULL)
	{
		table_close(orel, AccessShareLock);
		return false;
	}
	ids = palloc(Max(n, 1) * sizeof(int64));

	/* The distinct order ids. */
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		Datum		d = heap_getattr(events[i].tuple, col->order_id,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			ids[nids++] = DatumGetInt64(d);
	}
	qsort(ids, nids, sizeof(int64), CompareInt64);

	orders = palloc(Max(nids, 1) * sizeof(OrderParties));
	slot = table_slot_create(orel, NULL);
	scan = index_beginscan(orel, oidx, snap, 1, 0);
	for (i = 0; i < nids; i++)
	{
		ScanKeyData key;
		bool		isnull;
		Datum		d;

		if (i > 0 && ids[i] == ids[i - 1])
			continue;
		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(ids[i]));
		index_rescan(scan, &key, 1, NULL, 0);
		if (!index_getnext_slot(scan, ForwardScanDirection, slot))
			continue;			/* gone: no payload, as _payloads()'s join */
		orders[norders].none = false;
		orders[norders].order_id = ids[i];
		orders[norders].seller_id = DatumGetInt64(slot_getattr(slot, att_seller_id, &isnull));
		orders[norders].buyer_id = DatumGetInt64(slot_getattr(slot, att_buyer_id, &isnull));
		d = slot_getattr(slot, att_currency, &isnull);
		orders[norders].currency = isnull ? NULL : TextDatumGetCString(d);
		norders++;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(oidx, NoLock);
	table_close(orel, NoLock);
	*out = orders;
	*nout = norders;
	return true;
}

/*
 * The payload's own fields, in the order jsonb keeps an object's keys
 * (shorter keys first, then bytewise): the text jsonb writes, and so
 * _payloads() sends, lists them in this order.
 */
typedef enum PayloadField
{
	PF_AT,
	PF_EVENT,
	PF_ACTOR_ID,
	PF_BUYER_ID,
	PF_CURRENCY,
	PF_EVENT_ID,
	PF_ORDER_ID,
	PF_MILESTONE,
	PF_SELLER_ID,
	PF_ACTOR_ROLE,
	PF_ORDER_STATE,
	PF_MILESTONE_STATE,
	PF_COUNT
} PayloadField;

static const char *const payload_keys[PF_COUNT] = {
	[PF_AT] = "at",
	[PF_EVENT] = "event",
	[PF_ACTOR_ID] = "actor_id",
	[PF_BUYER_ID] = "buyer_id",
	[PF_CURRENCY] = "currency",
	[PF_EVENT_ID] = "event_id",
	[PF_ORDER_ID] = "order_id",
	[PF_MILESTONE] = "milestone",
	[PF_SELLER_ID] = "seller_id",
	[PF_ACTOR_ROLE] = "actor_role",
	[PF_ORDER_STATE] = "order_state",
	[PF_MILESTONE_STATE] = "milestone_state",
};

/* KeyCompare is jsonb's order of object keys: shorter first, then bytewise. */
static int
KeyCompare(const char *a, int alen, const char *b, int blen)
{
	if (alen != blen)
		return alen < blen ? -1 : 1;
	return memcmp(a, b, alen);
}

/* KeyIs says whether a jsonb key is one of a NULL-ended list. */
static bool
KeyIs(const JsonbValue *key, const char *const *names)
{
	for (; *names != NULL; names++)
		if (key->val.string.len == (int) strlen(*names) &&
			memcmp(key->val.string.val, *names, key->val.string.len) == 0)
			return true;
	return false;
}

/*
 * PutString writes a JSON string as jsonb does (escape_json): in one copy
 * when nothing in it needs escaping, else through escape_json itself.
 */
static void
PutString(StringInfo out, const char *s, int len)
{
	int			i;
	char	   *z;

	for (i = 0; i < len; i++)
		if ((unsigned char) s[i] < ' ' || s[i] == '"' || s[i] == '\\')
			break;
	if (i == len)
	{
		appendStringInfoCharMacro(out, '"');
		appendBinaryStringInfo(out, s, len);
		appendStringInfoCharMacro(out, '"');
		return;
	}
	z = pnstrdup(s, len);
	escape_json(out, z);
	pfree(z);
}

/*
 * PutMoney writes a number as _payloads() does: the string of
 * round(number, 2), so that "100.00" keeps its cents in any JSON reader.
 */
static void
PutMoney(StringInfo out, Numeric number)
{
	Datum		rounded = DirectFunctionCall2(numeric_round, NumericGetDatum(number), Int32GetDatum(2));

	escape_json(out, DatumGetCString(DirectFunctionCall1(numeric_out, rounded)));
}

/* PutValue writes a jsonb value (a scalar or a nested container) as jsonb's text. */
static void
PutValue(StringInfo out, const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			appendStringInfoString(out, "null");
			break;
		case jbvString:
			PutString(out, v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			appendStringInfoString(out, DatumGetCString(DirectFunctionCall1(numeric_out,
																			NumericGetDatum(v->val.numeric))));
			break;
		case jbvBool:
			appendStringInfoString(out, v->val.boolean ? "true" : "false");
			break;
		case jbvBinary:
			(void) JsonbToCString(out, v->val.binary.data, v->val.binary.len);
			break;
		default:
			elog(ERROR, "milestones relay: unexpected jsonb value type %d", (int) v->type);
	}
}

/* PutKey writes an object key and its colon, after a comma unless first. */
static void
PutKey(StringInfo out, bool *first, const char *key, int len)
{
	if (!*first)
		appendBinaryStringInfo(out, ", ", 2);
	*first = false;
	PutString(out, key, len);
	appendBinaryStringInfo(out, ": ", 2);
}

/*
 * NextPair reads the next key and value of a jsonb object (a nested
 * container as one binary value, as jsonb_each gives it); false at the end
 * or without an iterator.
 */
static bool
NextPair(JsonbIterator **it, JsonbValue *key, JsonbValue *v)
{
	JsonbIteratorToken tok;

	while (*it != NULL && (tok = JsonbIteratorNext(it, key, true)) != WJB_DONE)
		if (tok == WJB_KEY)
		{
			if (JsonbIteratorNext(it, v, true) != WJB_VALUE)
				elog(ERROR, "milestones relay: malformed jsonb object");
			return true;
		}
	return false;
}

/*
 * PutDetailValue writes a value of the detail as _payloads() converts it:
 * a number under one of money_keys as a money string; with payout_keys,
 * an object under "payout" with its own money keys converted the same way.
 */
static void
PutDetailValue(StringInfo out, const JsonbValue *key, const JsonbValue *v,
			   const char *const *money_keys, const char *const *payout_keys)
{
	static const char *const payout[] = {"payout", NULL};

	if (v->type == jbvNumeric && KeyIs(key, money_keys))
		PutMoney(out, v->val.numeric);
	else if (payout_keys != NULL && v->type == jbvBinary &&
			 JsonContainerIsObject(v->val.binary.data) && KeyIs(key, payout))
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	k;
		JsonbValue	pv;
		bool		first = true;

		/* Its keys are in jsonb's order already, and stay as they are. */
		appendStringInfoChar(out, '{');
		while (NextPair(&it, &k, &pv))
		{
			PutKey(out, &first, k.val.string.val, k.val.string.len);
			PutDetailValue(out, &k, &pv, payout_keys, NULL);
		}
		appendStringInfoChar(out, '}');
	}
	else
		PutValue(out, v);
}

/* FieldText is a text column of the event row as a JSON string, or null. */
static char *
FieldText(HeapTuple tuple, TupleDesc desc, AttrNumber att)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, att, desc, &isnull);
	text	   *t;
	StringInfoData buf;

	if (isnull)
		return "null";
	t = DatumGetTextPP(d);
	initStringInfo(&buf);
	PutString(&buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	return buf.data;
}

/* FieldInt is an integer as JSON (as jsonb writes a number: its digits). */
static char *
FieldInt(int64 value)
{
	char	   *buf = palloc(MAXINT8LEN + 1);

	(void) pg_lltoa(value, buf);
	return buf;
}

/*
 * EventPayload writes an event's notification payload exactly as
 * _payloads() does: the object jsonb_build_object makes of the event's
 * fields, the order's parties and currency and the time, joined (||) with
 * the detail, money as strings, as jsonb writes it.  Both objects' keys
 * are in jsonb's order (the fields by construction, the detail as jsonb
 * stores it), so one merge gives jsonb's order, a detail key winning over
 * a field of the same name as with ||.  NULL when the detail is not a JSON
 * object (the SQL functions then decide).
 */
static char *
EventPayload(HeapTuple tuple, TupleDesc desc, const EventsColumns *col, const OrderParties *order)
{
	char	   *field[PF_COUNT];
	Jsonb	   *detail = NULL;
	JsonbIterator *it = NULL;
	JsonbValue	key;
	JsonbValue	v;
	bool		have_pair = false;
	bool		isnull;
	bool		first = true;
	Datum		d;
	int			f = 0;
	StringInfoData out;

	d = heap_getattr(tuple, col->detail, desc, &isnull);
	if (!isnull)
	{
		detail = DatumGetJsonbP(d);
		if (!JB_ROOT_IS_OBJECT(detail))
			return NULL;
	}

	field[PF_EVENT_ID] = FieldInt(DatumGetInt64(heap_getattr(tuple, col->event_id, desc, &isnull)));
	field[PF_ORDER_ID] = order->none ? "null" : FieldInt(order->order_id);
	field[PF_EVENT] = FieldText(tuple, desc, col->event);
	field[PF_ORDER_STATE] = FieldText(tuple, desc, col->order_state);
	d = heap_getattr(tuple, col->position, desc, &isnull);
	field[PF_MILESTONE] = isnull ? "null" : FieldInt(DatumGetInt16(d));
	field[PF_MILESTONE_STATE] = FieldText(tuple, desc, col->milestone_state);
	field[PF_ACTOR_ROLE] = FieldText(tuple, desc, col->actor_role);
	d = heap_getattr(tuple, col->actor_id, desc, &isnull);
	field[PF_ACTOR_ID] = isnull ? "null" : FieldInt(DatumGetInt64(d));
	field[PF_SELLER_ID] = order->none ? "null" : FieldInt(order->seller_id);
	field[PF_BUYER_ID] = order->none ? "null" : FieldInt(order->buyer_id);
	field[PF_CURRENCY] = "null";
	if (order->currency != NULL)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		PutString(&buf, order->currency, strlen(order->currency));
		field[PF_CURRENCY] = buf.data;
	}
	d = heap_getattr(tuple, col->created_at, desc, &isnull);
	field[PF_AT] = "null";
	if (!isnull)
	{
		StringInfoData buf;

		char		at[MAXDATELEN + 1];

		initStringInfo(&buf);
		(void) JsonEncodeDateTime(at, d, TIMESTAMPTZOID, NULL);
		PutString(&buf, at, strlen(at));
		field[PF_AT] = buf.data;
	}

	/* The merge: the next detail pair, or none. */
	if (detail != NULL)
		it = JsonbIteratorInit(&detail->root);
	have_pair = NextPair(&it, &key, &v);

	initStringInfo(&out);
	appendStringInfoChar(&out, '{');
	while (f < PF_COUNT || have_pair)
	{
		int			cmp;

		if (f >= PF_COUNT)
			cmp = 1;
		else if (!have_pair)
			cmp = -1;
		else
			cmp = KeyCompare(payload_keys[f], strlen(payload_keys[f]),
							 key.val.string.val, key.val.string.len);
		if (cmp < 0)
		{
			PutKey(&out, &first, payload_keys[f], strlen(payload_keys[f]));
			appendStringInfoString(&out, field[f]);
			f++;
			continue;
		}
		if (cmp == 0)
			f++;				/* the detail's value wins, as with || */
		PutKey(&out, &first, key.val.string.val, key.val.string.len);
		PutDetailValue(&out, &key, &v, detail_money_keys, payout_money_keys);
		have_pair = NextPair(&it, &key, &v);
	}
	appendStringInfoChar(&out, '}');
	return out.data;
}

/*
 * BuildPayloads builds the payloads of the first n events (NULL for an
 * event whose order is gone: _payloads() joins the orders); false when an
 * event's payload cannot be built here.  Each payload is written in a
 * context of its own, reset after it (its fields' buffers are some kB),
 * and only the result is kept: a batch costs its payloads, not their
 * scaffolding.
 */
static bool
BuildPayloads(Oid nsp, Snapshot snap, Relation rel, const EventsColumns *col,
			  const RangeEvent *events, int n, char **payloads)
{
	OrderParties *orders;
	int			norders;
	int			i;
	bool		built = true;
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext scratch;

	if (!ReadOrders(nsp, snap, rel, col, events, n, &orders, &norders))
		return false;

	scratch = AllocSetContextCreate(outer, "milestones relay payload", ALLOCSET_DEFAULT_SIZES);
	for (i = 0; i < n && built; i++)
	{
		bool		isnull;
		OrderParties key;
		OrderParties *order;
		char	   *payload;
		Datum		d = heap_getattr(events[i].tuple, col->order_id,
									 RelationGetDescr(rel), &isnull);

		memset(&key, 0, sizeof(key));
		payloads[i] = NULL;
		if (isnull)
		{
			/* a seller-level event: no order to read, as _payloads()'s LEFT JOIN */
			key.none = true;
			order = &key;
		}
		else
		{
			key.order_id = DatumGetInt64(d);
			order = bsearch(&key, orders, norders, sizeof(OrderParties), CompareOrders);
			if (order == NULL)
				continue;		/* gone: no payload, as _payloads()'s join */
		}
		MemoryContextSwitchTo(scratch);
		payload = EventPayload(events[i].tuple, RelationGetDescr(rel), col, order);
		MemoryContextSwitchTo(outer);
		if (payload == NULL)
			built = false;
		else
			payloads[i] = pstrdup(payload);
		MemoryContextReset(scratch);
	}
	MemoryContextDelete(scratch);
	return built;
}

/*
 * RelayEventPayload builds the payload of one new row of the events table
 * (rel) for the events trigger's fallback NOTIFY (events.c), as
 * BuildPayloads does for the relay's batches, with the order read under
 * the active snapshot, as _payloads() reads it in the trigger's statement.
 * false when it cannot be built here and _payloads() must, because only
 * the statement gives the same answer: the current user may not execute
 * _payloads() or read orders (the statement's 42501), orders has
 * row-level security or inheritance children, a column is missing or
 * retyped, or the detail is not a JSON object (the statement's error).
 * *payload is NULL when the order is not visible: no notification, as
 * _payloads()'s join.
 */
bool
RelayEventPayload(Relation rel, HeapTuple tuple, char **payload)
{
	Oid			nsp = RelationGetNamespace(rel);
	Oid			orders_relid = get_relname_relid("orders", nsp);
	Oid			argtype = get_array_type(rel->rd_rel->reltype);
	Oid			payloads_fn;
	EventsColumns col;
	RangeEvent	event;
	HeapTuple	classtup;
	bool		plain;
	bool		isnull;

	if (!ActiveSnapshotSet() || !OidIsValid(orders_relid) || !OidIsValid(argtype) ||
		pg_class_aclcheck(orders_relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		return false;
	payloads_fn = LookupFuncName(list_make2(makeString(get_namespace_name(nsp)),
											makeString("_payloads")),
								 1, &argtype, true);
	if (!OidIsValid(payloads_fn) ||
		pg_proc_aclcheck(payloads_fn, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK ||
		!EventsColumnsFind(rel, &col))
		return false;
	classtup = SearchSysCache1(RELOID, ObjectIdGetDatum(orders_relid));
	if (!HeapTupleIsValid(classtup))
		return false;
	plain = TableIsPlain((Form_pg_class) GETSTRUCT(classtup));
	ReleaseSysCache(classtup);
	if (!plain)
		return false;
	event.event_id = DatumGetInt64(heap_getattr(tuple, col.event_id, RelationGetDescr(rel), &isnull));
	event.tuple = tuple;
	return BuildPayloads(nsp, GetActiveSnapshot(), rel, &col, &event, 1, payload);
}

/* SetPosition runs the consumer's position update (NULL for a 0 id). */
static void
SetPosition(const char *schema, int64 consumer_id, int64 tick_id, int64 upper_tick_id,
			int64 after_event_id, int64 batches, int64 events)
{
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = Int64GetDatum(consumer_id);
	values[1] = Int64GetDatum(tick_id);
	values[2] = Int64GetDatum(upper_tick_id);
	nulls[2] = upper_tick_id == 0 ? 'n' : ' ';
	values[3] = Int64GetDatum(after_event_id);
	nulls[3] = after_event_id == 0 ? 'n' : ' ';
	values[4] = Int64GetDatum(batches);
	values[5] = Int64GetDatum(events);
	RunBatchStmt(BSTMT_POSITION, schema, values, nulls);
	if (SPI_processed != 1)
		elog(ERROR, "milestones relay: the consumer's position was not updated");
}

/* PruneTick deletes a tick no consumer and no open batch stands on. */
static void
PruneTick(const char *schema, int64 tick_id)
{
	Datum		value = Int64GetDatum(tick_id);

	RunBatchStmt(BSTMT_PRUNE, schema, &value, NULL);
}

/*
 * RelayBatchCommitted says the unit's transaction committed: the position
 * its batch left the consumer at is known.
 */
void
RelayBatchCommitted(void)
{
	known = known_pending;
	known_pending.valid = false;
}

/* RelayBatchForget forgets the consumer's position (an error, the SQL path). */
void
RelayBatchForget(void)
{
	known.valid = false;
	known_pending.valid = false;
}

/*
 * Batch is one RelayBatchSend's work, passed between its steps: the events
 * table and index, the consumer and where it stands (lo), the new tick
 * (hi), the range's events and their payloads.
 */
typedef struct Batch
{
	const char *schema;
	const char *consumer;
	Relation	rel;
	Relation	idx;
	EventsColumns col;
	Datum		arg;			/* the consumer's name, as text */
	int64		here;			/* this cluster's system identifier */
	bool		use_known;		/* the position this worker left is known */
	bool		notify_on;		/* settings.notify */
	int64		consumer_id;
	int64		tick_id;
	TickSnap	lo;
	char	   *lo_text;
	TickSnap	hi;
	char	   *hi_text;
	RangeEvent *events;
	int			n;
	char	  **payloads;
} Batch;

/* BatchStep is what a step of RelayBatchSend leaves to do next. */
typedef enum BatchStep
{
	BATCH_GO,					/* go on with the next step */
	BATCH_NOTHING,				/* nothing new: no batch */
	BATCH_SQL					/* not the common case: the SQL functions */
} BatchStep;

/*
 * BatchAnyNew is the look of a relay that was not woken: is there anything
 * new past the consumer's tick?  Read-only (the consumer is read, not
 * locked, unless its position is known), so an idle database costs no
 * transaction id.
 */
static BatchStep
BatchAnyNew(Batch *b)
{
	if (!b->use_known)
	{
		RunBatchStmt(BSTMT_CONSUMER, b->schema, &b->arg, NULL);
		if (SPI_processed != 1)
			return BATCH_NOTHING;	/* as _has_pending(): no such consumer */
		if (GetBool(0, 3) || GetInt64(0, 5) != b->here)
			return BATCH_SQL;
		if (!ParseTick(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4), &b->lo))
			return BATCH_SQL;
	}
	if (!AnyPending(b->rel, b->idx, &b->col, &b->lo, b->here))
		return BATCH_NOTHING;
	return BATCH_GO;
}

/*
 * BatchLockConsumer locks the consumer and reads its tick and the notify
 * setting (when the position this worker left is not known).
 */
static BatchStep
BatchLockConsumer(Batch *b)
{
	RunBatchStmt(BSTMT_LOCK, b->schema, &b->arg, NULL);
	if (SPI_processed != 1)
		return BATCH_NOTHING;
	b->consumer_id = GetInt64(0, 1);
	b->tick_id = GetInt64(0, 2);
	b->lo_text = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4);
	if (GetBool(0, 3) || GetInt64(0, 5) != b->here || !ParseTick(b->lo_text, &b->lo))
		return BATCH_SQL;
	b->notify_on = GetBool(0, 6);
	return BATCH_GO;
}

/*
 * BatchTakeRange takes the new tick and reads the batch's range and,
 * unless notify is off, its payloads.  The new tick: this transaction's id
 * first, then a snapshot; the range and the orders are read with that very
 * snapshot, so every event the tick sees, and its order, are there.  The
 * tick is then cut where the range reaches a batch (_take_range_tick()'s
 * rule), so that a backlog is sent a batch at a time, each moving the
 * consumer's position.  A range longer than a batch (one huge transaction)
 * is drained by the SQL functions.
 */
static BatchStep
BatchTakeRange(Batch *b, Oid nsp, int max_events)
{
	Snapshot	snap;
	uint64		upto;

	(void) GetTopFullTransactionId();
	PushActiveSnapshot(GetTransactionSnapshot());
	snap = GetActiveSnapshot();
	TakeTick(snap, &b->hi);
	if (!WalkRange(b->rel, b->idx, &b->col, snap, &b->lo, &b->hi, b->here, max_events,
				   &b->events, &b->n, &upto))
	{
		PopActiveSnapshot();
		return BATCH_SQL;
	}
	CutTick(&b->hi, upto);
	b->hi_text = TickText(&b->hi);

	/* The payloads, before anything is written (unless notify is off). */
	if (b->n > 0 && b->notify_on)
	{
		b->payloads = palloc(b->n * sizeof(char *));
		if (!BuildPayloads(nsp, snap, b->rel, &b->col, b->events, b->n, b->payloads))
		{
			PopActiveSnapshot();
			return BATCH_SQL;
		}
	}
	PopActiveSnapshot();
	return BATCH_GO;
}

/*
 * BatchMove stores the tick and the consumer's new position: the consumer
 * stands at the new tick and its old one is pruned (in one update of the
 * tick when possible).  Then remembers where the consumer stands once this
 * commits, for the next batch (known_pending).
 */
static void
BatchMove(Batch *b)
{
	Datum		values[7];
	bool		moved;
	bool		isnull;
	int64		new_tick_id;

	values[0] = Int64GetDatum(b->tick_id);
	values[1] = DirectFunctionCall1(pg_snapshot_in, CStringGetDatum(b->hi_text));
	values[2] = Int64GetDatum(b->consumer_id);
	values[3] = Int64GetDatum(b->here);
	values[4] = Int64GetDatum(b->n);
	moved = false;
	if (b->use_known)
	{
		values[5] = CStringGetTextDatum(b->lo_text);
		values[6] = Int64GetDatum(b->n > 0 ? 1 : 0);
		RunBatchStmt(BSTMT_MOVE_KNOWN, b->schema, values, NULL);
		if (SPI_processed != 1)
		{
			known.valid = false;
			ereport(ERROR,
					(errmsg("milestones relay: its consumer \"%s\" was moved by another session", b->consumer),
					 errdetail("The relay reads and locks the consumer again at its next batch.")));
		}
		b->notify_on = GetBool(0, 1);
		moved = true;
	}
	else
	{
		/* n == 0: nothing visible yet (an open transaction's events). */
		RunBatchStmt(b->n > 0 ? BSTMT_MOVE_FINISH : BSTMT_TICK_MOVE, b->schema, values, NULL);
		moved = SPI_processed == 1;
	}
	if (!moved)
	{
		Datum		tick_values[2] = {values[1], Int64GetDatum(b->here)};

		RunBatchStmt(BSTMT_TICK, b->schema, tick_values, NULL);
		if (SPI_processed != 1)
			elog(ERROR, "milestones relay: no tick was stored");
		new_tick_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		SetPosition(b->schema, b->consumer_id, new_tick_id, 0, 0, b->n > 0 ? 1 : 0, b->n);
		PruneTick(b->schema, b->tick_id);
	}

	/* Where the consumer stands once this commits: known to the next batch. */
	if (moved && strlen(b->hi_text) < sizeof(known_pending.tick_text))
	{
		known_pending.valid = true;
		known_pending.events_relid = RelationGetRelid(b->rel);
		known_pending.consumer_id = b->consumer_id;
		known_pending.tick_id = b->tick_id;
		strlcpy(known_pending.tick_text, b->hi_text, sizeof(known_pending.tick_text));
	}
	else
		known.valid = false;
}

/*
 * BatchNotify queues the batch's notifications, delivered when this
 * transaction commits, and returns what RelayBatchSend returns: as
 * _relay_batch(), one per event with an order, or -1 for none.
 */
static int
BatchNotify(Batch *b)
{
	int			total;
	int			i;

	if (b->payloads != NULL && b->notify_on)
		for (i = 0; i < b->n; i++)
			if (b->payloads[i] != NULL)
				Async_Notify(EVENTS_CHANNEL, b->payloads[i]);

	index_close(b->idx, NoLock);
	table_close(b->rel, NoLock);
	if (b->n == 0)
		return -1;
	if (!b->notify_on)
		return b->n;
	/* As _relay_batch(): one row per event with an order. */
	total = 0;
	for (i = 0; i < b->n; i++)
		total += b->payloads[i] != NULL;
	return total > 0 ? total : -1;
}

/*
 * RelayBatchSend sends, in the caller's transaction, the notifications of
 * the consumer's next batch and moves the consumer past it, as
 * _has_pending() then _relay_batch() would.  Unless woken (a commit that
 * wrote events set the relay's latch), it first looks, read-only, for
 * anything new, so that an idle database costs no transaction id.
 * Returns the events of the batch, or -1 when there is nothing new;
 * *fallback is set (and nothing written) when the case is not the common
 * one and the SQL functions must do it.  The steps: where the consumer
 * stands (known, or BatchAnyNew and BatchLockConsumer), the range and its
 * payloads (BatchTakeRange), the new position (BatchMove), the
 * notifications (BatchNotify).
 */
int
RelayBatchSend(Oid nsp, const char *schema, const char *consumer, bool woken,
			   int max_events, bool *fallback)
{
	Batch		b;
	BatchStep	step;

	memset(&b, 0, sizeof(b));
	b.schema = schema;
	b.consumer = consumer;
	b.here = (int64) GetSystemIdentifier();
	b.notify_on = true;
	*fallback = false;
	known_pending.valid = false;
	if (!OpenEvents(nsp, &b.rel, &b.idx, &b.col))
		goto sql;
	b.arg = CStringGetTextDatum(consumer);
	b.use_known = known.valid && known.events_relid == RelationGetRelid(b.rel);
	if (b.use_known)
	{
		b.consumer_id = known.consumer_id;
		b.tick_id = known.tick_id;
		b.lo_text = known.tick_text;
		if (!ParseTick(b.lo_text, &b.lo))
			goto sql;
	}

	/* Not woken: anything new?  A read-only look at the consumer's tick. */
	step = woken ? BATCH_GO : BatchAnyNew(&b);
	/* The consumer, locked, and its tick (unless known). */
	if (step == BATCH_GO && !b.use_known)
		step = BatchLockConsumer(&b);
	if (step == BATCH_GO)
		step = BatchTakeRange(&b, nsp, max_events);
	if (step == BATCH_NOTHING)
		goto nothing;
	if (step == BATCH_SQL)
		goto sql;
	BatchMove(&b);
	return BatchNotify(&b);

nothing:
	index_close(b.idx, NoLock);
	table_close(b.rel, NoLock);
	return -1;

sql:
	if (RelationIsValid(b.rel))
	{
		index_close(b.idx, NoLock);
		table_close(b.rel, NoLock);
	}
	known.valid = false;
	*fallback = true;
	return -1;
}
