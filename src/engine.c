/*-------------------------------------------------------------------------
 *
 * src/engine.c
 *		Shared helpers of the order engine: the SPI plan cache, argument
 *		checks and their errors, idempotency keys, the order lock and read,
 *		events and the order_status row every action returns.
 *
 * Every statement is prepared once per backend and kept (SPI_keepplan),
 * schema-qualified with its operators, and every result code is checked.
 * The messages, DETAILs and HINTs are those of the 1.0 PL/pgSQL engine,
 * byte for byte; values in DETAILs are printed with the type output
 * functions, as format('%s') did, so they follow DateStyle and TimeZone.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/datum.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "engine.h"

PG_FUNCTION_INFO_V1(milestones_refuse_on_standby);

/*
 * EnginePlanGet prepares a statement on first use and keeps the plan;
 * cursor_options (CURSOR_OPT_FAST_PLAN) asks the planner for the plan that
 * returns its first rows soonest.
 */
static SPIPlanPtr
EnginePlanGet(EnginePlan *p)
{
	if (p->plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare_cursor(p->sql, p->nargs, p->argtypes,
											  p->cursor_options);

		if (plan == NULL)
			elog(ERROR, "milestones engine: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "milestones engine: SPI_keepplan failed");
		p->plan = plan;
	}
	return p->plan;
}

/*
 * EngineExec runs a kept statement and checks its result code (expect);
 * tcount limits the rows as in SPI_execute_plan.  Never read-only: each
 * statement sees the writes of the ones before it.
 */
void
EngineExec(EnginePlan *p, Datum *values, const char *nulls, int expect, long tcount)
{
	int			ret = SPI_execute_plan(EnginePlanGet(p), values, nulls, false, tcount);

	if (ret != expect)
		elog(ERROR, "milestones engine: statement failed (%s): %s",
			 SPI_result_code_string(ret), p->sql);
}

/*
 * EngineRefuseOnStandby refuses a writing action on a server in recovery
 * (a hot standby): 25006, as PostgreSQL's own refusal, but naming the
 * action and saying why, where PostgreSQL would name whichever statement
 * of the action happened to write first ("cannot execute SELECT FOR
 * UPDATE in a read-only transaction").  Every function that writes calls
 * it first (SPEC section 13); RecoveryInProgress() costs nothing once the
 * server has left recovery.
 */
void
EngineRefuseOnStandby(const char *action)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("%s is not allowed: this server is a standby", action),
				 errdetail("A standby is read-only: it replays the primary's changes and accepts no writes."),
				 errhint("Send writes to the primary; the views and reports work here.")));
}

/*
 * milestones_refuse_on_standby is SQL milestones._refuse_on_standby(action):
 * EngineRefuseOnStandby for the functions written in PL/pgSQL, so that
 * both kinds refuse with one text.
 */
Datum
milestones_refuse_on_standby(PG_FUNCTION_ARGS)
{
	EngineRefuseOnStandby(PG_ARGISNULL(0) ? "this call" : text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/* EngineConnect opens the action's SPI connection. */
void
EngineConnect(void)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "milestones engine: SPI_connect failed");
}

/* EngineFinish closes it. */
void
EngineFinish(void)
{
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "milestones engine: SPI_finish failed");
}

/* EngineNotNull refuses a NULL argument (1.0's _not_null). */
void
EngineNotNull(bool isnull, const char *argument)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be NULL", argument),
				 errdetail("The argument %s was NULL.", argument),
				 errhint("Pass a value; the milestones API never treats NULL as \"nothing to do\".")));
}

/* EngineCheckId refuses a NULL or non-positive id (1.0's _check_id). */
void
EngineCheckId(bool isnull, int64 value, const char *argument)
{
	EngineNotNull(isnull, argument);
	if (value <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a positive id", argument),
				 errdetail("%s was " INT64_FORMAT ".", argument, value)));
}

/* EngineTextLength is length(text): characters, not bytes. */
int
EngineTextLength(text *value)
{
	return pg_mbstrlen_with_len(VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value));
}

/*
 * EngineIsBlank says whether a text has no character but white space,
 * with the regular expression 1.0 used, so "space" means the same.
 */
static bool
EngineIsBlank(text *value)
{
	return DatumGetBool(DirectFunctionCall2Coll(textregexne, DEFAULT_COLLATION_OID,
												PointerGetDatum(value),
												CStringGetTextDatum("[^[:space:]]")));
}

/* EngineCheckText refuses missing, blank or over-long text (1.0's _check_text). */
void
EngineCheckText(bool isnull, text *value, const char *argument, int max_length,
				bool required)
{
	int			len;

	if (required)
	{
		EngineNotNull(isnull, argument);
		if (EngineIsBlank(value))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must not be blank", argument),
					 errdetail("%s holds only white space.", argument)));
	}
	if (isnull)
		return;
	len = EngineTextLength(value);
	if (len > max_length)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", argument),
				 errdetail("%s has %d characters; at most %d are allowed.",
						   argument, len, max_length)));
}

/* EngineLeft is left(s, n): the first n characters. */
static char *
EngineLeft(const char *s, int max_chars)
{
	int			len = strlen(s);
	int			clip = pg_mbcharcliplen(s, len, max_chars);

	return pnstrdup(s, clip);
}

/* EngineQuoteLiteral is quote_literal(left(s, max_chars)); max_chars < 0: all. */
char *
EngineQuoteLiteral(const char *s, int max_chars)
{
	return quote_literal_cstr(max_chars >= 0 ? EngineLeft(s, max_chars) : s);
}

/* EngineNumericOut prints a numeric as format('%s') does. */
char *
EngineNumericOut(Datum num)
{
	return DatumGetCString(DirectFunctionCall1(numeric_out, num));
}

/* EngineTimestampOut prints a timestamptz as format('%s') does ('' for NULL). */
char *
EngineTimestampOut(bool isnull, TimestampTz ts)
{
	if (isnull)
		return "";
	return DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(ts)));
}

/*
 * JSON text builders: the engine writes an event's detail and a key's
 * arguments as JSON text and parses it into jsonb, which gives the same
 * value as 1.0's jsonb_build_object (numbers keep their scale, keys are
 * sorted by jsonb itself).  The buffer holds "{" and the members so far.
 */
void
JsonAddKey(StringInfo buf, const char *key)
{
	if (buf->len == 0)
		appendStringInfoChar(buf, '{');
	else
		appendStringInfoString(buf, ", ");
	escape_json(buf, key);
	appendStringInfoString(buf, ": ");
}

/* JsonAddInt adds an integer member (null when isnull). */
void
JsonAddInt(StringInfo buf, const char *key, bool isnull, int64 value)
{
	JsonAddKey(buf, key);
	if (isnull)
		appendStringInfoString(buf, "null");
	else
		appendStringInfo(buf, INT64_FORMAT, value);
}

/* JsonAddNumeric adds a numeric member. */
void
JsonAddNumeric(StringInfo buf, const char *key, Datum num)
{
	JsonAddKey(buf, key);
	appendStringInfoString(buf, EngineNumericOut(num));
}

/* JsonAddText adds a string member (null for NULL). */
void
JsonAddText(StringInfo buf, const char *key, const char *value)
{
	JsonAddKey(buf, key);
	if (value == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, value);
}

/* JsonAddBool adds a boolean member. */
void
JsonAddBool(StringInfo buf, const char *key, bool value)
{
	JsonAddKey(buf, key);
	appendStringInfoString(buf, value ? "true" : "false");
}

/* JsonAddTimestamp adds a timestamptz member as to_jsonb writes it. */
void
JsonAddTimestamp(StringInfo buf, const char *key, TimestampTz ts)
{
	char		out[MAXDATELEN + 1];

	JsonAddKey(buf, key);
	JsonEncodeDateTime(out, TimestampTzGetDatum(ts), TIMESTAMPTZOID, NULL);
	escape_json(buf, out);
}

/* EngineJsonb parses JSON text built above ("" is the empty object). */
Datum
EngineJsonb(const char *json)
{
	if (json[0] == '\0')
		json = "{}";
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(json));
}

static EnginePlan idem_claim_plan = {
	"INSERT INTO milestones.idempotency_keys (key, function, arguments, created_at)"
	" VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
	4, {TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID}
};
static EnginePlan idem_read_plan = {
	"SELECT k.function OPERATOR(pg_catalog.<>) $2 OR k.arguments OPERATOR(pg_catalog.<>) $3,"
	" k.function, k.arguments::pg_catalog.text, k.result"
	" FROM milestones.idempotency_keys k WHERE k.key OPERATOR(pg_catalog.=) $1",
	3, {TEXTOID, TEXTOID, JSONBOID}
};
static EnginePlan idem_store_plan = {
	"UPDATE milestones.idempotency_keys SET result = $2 WHERE key OPERATOR(pg_catalog.=) $1",
	2, {TEXTOID, JSONBOID}
};

/*
 * EngineIdemClaim starts an idempotent call (1.0's _idem_claim): false
 * when the caller must do the work (no key, or a new key now reserved by
 * this transaction), true with *result the first call's stored result.  A
 * racing repeat blocks on the key's unique index until the first call
 * commits, then reads its result.  arguments is the JSON text of the same
 * object 1.0 stored, so keys stored before an upgrade still match.
 */
bool
EngineIdemClaim(bool keynull, text *key, const char *function,
				const char *arguments, Datum *result)
{
	Datum		values[4];
	Datum		args;
	int			len;
	bool		isnull;
	HeapTuple	tup;
	TupleDesc	desc;

	if (keynull)
		return false;
	len = EngineTextLength(key);
	if (len < 1 || len > 255)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency_key must have 1 to 255 characters"),
				 errdetail("The key has %d characters.", len)));
	args = EngineJsonb(arguments);
	values[0] = PointerGetDatum(key);
	values[1] = CStringGetTextDatum(function);
	values[2] = args;
	values[3] = TimestampTzGetDatum(MilestonesNow());
	EngineExec(&idem_claim_plan, values, NULL, SPI_OK_INSERT, 0);
	if (SPI_processed > 0)
		return false;
	EngineExec(&idem_read_plan, values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed == 0)
		return false;			/* purged meanwhile: do the work, as 1.0 did */
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	if (DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull)) && !isnull)
	{
		char	   *stored_function = SPI_getvalue(tup, desc, 2);
		char	   *stored_arguments = SPI_getvalue(tup, desc, 3);
		char	   *call_arguments = DatumGetCString(DirectFunctionCall1(jsonb_out, args));

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idempotency key %s was used for another call",
						quote_literal_cstr(text_to_cstring(key))),
				 errdetail("The key was first used for %s(%s); this call is %s(%s).",
						   stored_function, stored_arguments, function, call_arguments),
				 errhint("Use a new key for every distinct call; reuse a key only to retry the same call.")));
	}
	{
		static const ColumnSpec result_column = {"result", JSONBOID, false};

		ColumnsCheckResult(SPI_tuptable, 1, 4, "idempotency_keys", &result_column, 1);
	}
	*result = SPI_getbinval(tup, desc, 4, &isnull);
	return !isnull;
}

/*
 * EngineRetried claims an order action's idempotency key (EngineIdemClaim)
 * and, when the key already holds a result, ends the action there: *result
 * is the stored order_status row and the SPI connection is closed.  Returns
 * whether the caller is a retry that returns *result at once.
 */
bool
EngineRetried(FunctionCallInfo fcinfo, MemoryContext caller, text *key,
			  const char *function, const char *arguments, Datum *result)
{
	Datum		prev;

	if (!EngineIdemClaim(key == NULL, key, function, arguments, &prev))
		return false;
	*result = EngineStoredStatus(fcinfo, caller, prev);
	EngineFinish();
	return true;
}

/* EngineIdemStore records the result of the call that reserved the key. */
void
EngineIdemStore(text *key, Datum result)
{
	Datum		values[2];

	values[0] = PointerGetDatum(key);
	values[1] = result;
	EngineExec(&idem_store_plan, values, NULL, SPI_OK_UPDATE, 0);
}

/*
 * The order lock.  The usual statement locks the order row and reads it
 * together with all its milestones (one executor start instead of two).
 * It also locks the milestone rows (FOR NO KEY UPDATE, what the engine's
 * UPDATEs of them take anyway): a row lock waits for a concurrent action
 * on the order and then returns the newest version of every locked row,
 * so the milestones are read as that action left them, as a second
 * statement after the lock would read them.  Columns 1-14: the order
 * (EngineOrderColumns); 15: place_order's eligibility; 16-25: the
 * milestone (EngineMilestoneColumns).  An order without
 * milestones (no row joins) takes the two statements below.
 */
#define ORDER_COLUMNS \
	"SELECT o.order_id, o.seller_id, o.buyer_id, o.category, o.currency, o.state," \
	" o.end_reason, o.cancel_reason, o.revisions_allowed, o.revisions_used, o.fee_rate," \
	" o.created_at, o.placed_at, o.completed_at"
#define ELIGIBLE_COLUMN \
	"," SELLER_ELIGIBLE_SQL("o.seller_id") " AND" CATEGORY_ELIGIBLE_SQL("o.category")
#define MILESTONE_COLUMNS \
	" m.order_id, m.position, m.state, m.name, m.final, m.amount, m.respond_by, m.delivered_at," \
	" m.deliveries, m.due_at"
#define ORDER_MILESTONES_FROM \
	" FROM milestones.orders o JOIN milestones.order_milestones m" \
	" ON m.order_id OPERATOR(pg_catalog.=) o.order_id" \
	" WHERE o.order_id OPERATOR(pg_catalog.=) $1 AND m.order_id OPERATOR(pg_catalog.=) $1" \
	" ORDER BY m.position FOR UPDATE OF o FOR NO KEY UPDATE OF m"
#define ORDER_COLUMN_MILESTONES 16

/* The columns of orders and order_milestones the engine reads (engine.h). */
const ColumnSpec EngineOrderColumns[OC_DIRECT_COUNT] =
{
	{"order_id", INT8OID, true}, {"seller_id", INT8OID, true}, {"buyer_id", INT8OID, true},
	{"category", TEXTOID, true}, {"currency", TEXTOID, true}, {"state", TEXTOID, true},
	{"end_reason", TEXTOID, false}, {"cancel_reason", TEXTOID, false},
	{"revisions_allowed", INT4OID, false}, {"revisions_used", INT4OID, true},
	{"fee_rate", NUMERICOID, true}, {"created_at", TIMESTAMPTZOID, true},
	{"placed_at", TIMESTAMPTZOID, false}, {"completed_at", TIMESTAMPTZOID, false},
	{"payment_mode", TEXTOID, true, true}
};
const ColumnSpec EngineMilestoneColumns[MC_COUNT] =
{
	{"order_id", INT8OID, true}, {"position", INT2OID, true}, {"state", TEXTOID, true},
	{"name", TEXTOID, true}, {"final", BOOLOID, true}, {"amount", NUMERICOID, true},
	{"respond_by", TIMESTAMPTZOID, false}, {"delivered_at", TIMESTAMPTZOID, false},
	{"deliveries", INT4OID, true}, {"due_at", TIMESTAMPTZOID, false}
};

static EnginePlan lock_read_plan = {
	ORDER_COLUMNS ", NULL::pg_catalog.bool," MILESTONE_COLUMNS ORDER_MILESTONES_FROM,
	1, {INT8OID}, NULL, CURSOR_OPT_FAST_PLAN
};
static EnginePlan lock_read_eligible_plan = {
	ORDER_COLUMNS ELIGIBLE_COLUMN "," MILESTONE_COLUMNS ORDER_MILESTONES_FROM,
	1, {INT8OID}, NULL, CURSOR_OPT_FAST_PLAN
};
static EnginePlan lock_plan = {
	ORDER_COLUMNS ", NULL::pg_catalog.bool"
	" FROM milestones.orders o WHERE o.order_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
	1, {INT8OID}
};
static EnginePlan lock_eligible_plan = {
	ORDER_COLUMNS ELIGIBLE_COLUMN
	" FROM milestones.orders o WHERE o.order_id OPERATOR(pg_catalog.=) $1 FOR UPDATE OF o",
	1, {INT8OID}
};
static EnginePlan milestones_plan = {
	"SELECT" MILESTONE_COLUMNS " FROM milestones.order_milestones m"
	" WHERE m.order_id OPERATOR(pg_catalog.=) $1 ORDER BY m.position",
	1, {INT8OID}, NULL, CURSOR_OPT_FAST_PLAN
};
static EnginePlan eligible_plan = {
	"SELECT" SELLER_ELIGIBLE_SQL("$1") " AND" CATEGORY_ELIGIBLE_SQL("$2"),
	2, {INT8OID, TEXTOID}
};
static void LockedOrderChecked(EngineOrder *o);
static bool LockOrder(EngineOrder *o, int64 order_id, int64 actor_id, const char *role,
					  bool eligible);
static bool LockOrderRead(EngineOrder *o, int64 order_id, int64 actor_id, const char *role,
						  bool eligible);
static void CheckActor(EngineOrder *o, int64 actor_id, const char *role);
static void ReadMilestoneRows(EngineOrder *o, int first);

/*
 * EngineLockOrder takes the order's row lock (every action's first step,
 * so that concurrent calls on one order serialize), reads the order and
 * its milestones, and checks the actor (1.0's _lock_order); role is
 * "seller", "buyer" or "support".
 */
void
EngineLockOrder(EngineOrder *o, int64 order_id, int64 actor_id, const char *role)
{
	LockOrder(o, order_id, actor_id, role, false);
	LockedOrderChecked(o);
}

/*
 * EngineLockOrderEligible is EngineLockOrder for place_order, which also
 * needs to know whether the order's seller and category are still
 * eligible: one statement instead of two.
 */
bool
EngineLockOrderEligible(EngineOrder *o, int64 order_id, int64 actor_id, const char *role)
{
	bool		eligible = LockOrder(o, order_id, actor_id, role, true);

	LockedOrderChecked(o);
	return eligible;
}

/*
 * LockedOrderChecked tells the commit check (check.c) whether the locked
 * order's state was ever checked with every rule: not when it has no
 * milestones, nor when it is listed in milestones.unchecked_orders (its
 * money was not checked when it was INSERTed).
 */
static void
LockedOrderChecked(EngineOrder *o)
{
	CheckLockedOrder(o->order_id, o->nmilestones == 0 ||
					 CheckUncheckedListed(o->order_id) == 1);
}

/* NoSuchOrder raises the P0002 of an order id that names no order. */
static void
NoSuchOrder(int64 order_id)
{
	ereport(ERROR,
			(errcode(ERRCODE_NO_DATA_FOUND),
			 errmsg("order " INT64_FORMAT " does not exist", order_id),
			 errdetail("No milestone order has id " INT64_FORMAT ".", order_id)));
}

/*
 * EnginePaymentsSchema says whether this database is at 1.2 or later: the
 * table of charges exists.  (The library also serves databases still at 1.0
 * and 1.1, whose SQL calls the same functions: they are recorded mode.)
 */
bool
EnginePaymentsSchema(void)
{
	Oid			nsp = get_namespace_oid("milestones", true);

	return OidIsValid(nsp) && OidIsValid(get_relname_relid("order_charges", nsp));
}

/* The order's payment mode, when the locking statement read the order. */
static EnginePlan mode_plan = {
	"SELECT o.payment_mode OPERATOR(pg_catalog.=) 'confirmed' FROM milestones.orders o"
	" WHERE o.order_id OPERATOR(pg_catalog.=) $1",
	1, {INT8OID}
};

/* The open charge's columns, checked before they are read (ColumnsCheckResult). */
static const ColumnSpec open_charge_columns[] =
{
	{"charge_id", INT8OID, false}, {"attempts", INT4OID, false}, {"state", TEXTOID, false},
	{"pay_by", TIMESTAMPTZOID, false}, {"amount", NUMERICOID, false}
};

/*
 * The order's open charge (requested or failed) and the sum of its late
 * successes (booked and refunded), in one row.  The late successes through
 * charge_attempts_late_idx: an order's rare late successes, found in a
 * small index whatever the table holds.
 */
static EnginePlan open_charge_plan = {
	"SELECT c.charge_id, c.attempts, c.state, c.pay_by,"
	" (SELECT pg_catalog.sum(x.amount) FROM milestones.charge_attempts a"
	" JOIN milestones.order_charges x ON x.charge_id OPERATOR(pg_catalog.=) a.charge_id"
	" WHERE a.order_id OPERATOR(pg_catalog.=) $1 AND a.state OPERATOR(pg_catalog.=) 'succeeded'"
	" AND NOT a.wanted)"
	" FROM (SELECT 1) d LEFT JOIN milestones.order_charges c ON c.order_id OPERATOR(pg_catalog.=) $1"
	" AND c.state OPERATOR(pg_catalog.=) ANY ('{requested,failed}'::pg_catalog.text[])",
	1, {INT8OID}
};

/*
 * ReadPayments completes the engine's picture of a locked order with
 * what confirmed payments add: its payment mode (read with the order by the
 * direct read; here when the statement read it), the milestone awaiting
 * payment, the open charge and the late successes.  A recorded-mode order
 * costs nothing more.
 */
static void
ReadPayments(EngineOrder *o)
{
	Datum		values[1];
	bool		isnull;
	int			i;

	o->awaiting = -1;
	o->charge_id = 0;
	o->charge_attempts = 0;
	o->charge_state = -1;
	o->pay_by = 0;
	o->late = (Datum) 0;
	values[0] = Int64GetDatum(o->order_id);
	if (!o->mode_known)
	{
		o->confirmed = false;
		if (EnginePaymentsSchema())
		{
			EngineExec(&mode_plan, values, NULL, SPI_OK_SELECT, 1);
			o->confirmed = SPI_processed == 1 &&
				DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) &&
				!isnull;
		}
		o->mode_known = true;
	}
	if (!o->confirmed)
		return;
	for (i = 0; i < o->nmilestones; i++)
		if (o->ms[i].state == MS_AWAITING_PAYMENT)
			o->awaiting = i;
	EngineExec(&open_charge_plan, values, NULL, SPI_OK_SELECT, 1);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: no charge row for order " INT64_FORMAT, o->order_id);
	ColumnsCheckResult(SPI_tuptable, 1, 1, "order_charges", open_charge_columns,
					   lengthof(open_charge_columns));
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum		id = SPI_getbinval(tup, desc, 1, &isnull);
		Datum		late;

		if (!isnull)
		{
			char	   *state = SPI_getvalue(tup, desc, 3);

			o->charge_id = DatumGetInt64(id);
			o->charge_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
			o->charge_state = StateCode(&ChargeMachine, state);
			if (o->charge_state < 0)
				elog(ERROR, "milestones engine: charge " INT64_FORMAT " has unknown state \"%s\"",
					 o->charge_id, state ? state : "(null)");
			o->pay_by = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull));
		}
		late = SPI_getbinval(tup, desc, 5, &isnull);
		if (!isnull)
			o->late = datumCopy(late, false, -1);
	}
}

/*
 * LockOrder is the body of EngineLockOrder: the lock and read of the order
 * and its milestones (LockOrderRead), then what confirmed payments add to
 * the picture (ReadPayments).
 */
static bool
LockOrder(EngineOrder *o, int64 order_id, int64 actor_id, const char *role, bool eligible)
{
	bool		result = LockOrderRead(o, order_id, actor_id, role, eligible);

	ReadPayments(o);
	return result;
}

/*
 * LockOrderRead locks and reads the order by direct access (direct.c), or,
 * when the tables are not as the extension made them, with the locking
 * statement.  Returns the order's eligibility when asked (eligible), else
 * false.
 */
static bool
LockOrderRead(EngineOrder *o, int64 order_id, int64 actor_id, const char *role, bool eligible)
{
	Datum		values[2];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bool		joined = true;
	bool		result = false;

	switch (EngineLockOrderDirect(o, order_id))
	{
		case 0:
			NoSuchOrder(order_id);
			break;
		case 1:
			CheckActor(o, actor_id, role);
			EngineReadMilestones(o);
			if (!eligible)
				return false;
			{
				bool		seller_ok;
				bool		category_ok;

				if (EngineEligibleDirect(o->seller_id, o->category, &seller_ok, &category_ok, NULL))
					return seller_ok && category_ok;
			}
			values[0] = Int64GetDatum(o->seller_id);
			values[1] = CStringGetTextDatum(o->category);
			EngineExec(&eligible_plan, values, NULL, SPI_OK_SELECT, 1);
			result = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
			SPI_freetuptable(SPI_tuptable);
			return result && !isnull;
		default:
			break;
	}

	values[0] = Int64GetDatum(order_id);
	EngineExec(eligible ? &lock_read_eligible_plan : &lock_read_plan, values, NULL, SPI_OK_SELECT, 0);
	if (SPI_processed == 0)
	{
		joined = false;
		EngineExec(eligible ? &lock_eligible_plan : &lock_plan, values, NULL, SPI_OK_SELECT, 0);
	}
	if (SPI_processed == 0)
		NoSuchOrder(order_id);
	/* A kept plan is planned again after ALTER TABLE: each column as specified? */
	ColumnsCheckResult(SPI_tuptable, 1, 1, "orders", EngineOrderColumns, OC_COUNT);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	{
		Datum		row[OC_COUNT];
		bool		rownulls[OC_COUNT];
		int			att[OC_COUNT];
		int			c;

		for (c = 0; c < OC_COUNT; c++)
		{
			row[c] = SPI_getbinval(tup, desc, c + 1, &rownulls[c]);
			att[c] = c;
		}
		EngineOrderFromRow(o, row, rownulls, att);
	}
	if (eligible)
		result = DatumGetBool(SPI_getbinval(tup, desc, 15, &isnull)) && !isnull;
	CheckActor(o, actor_id, role);

	if (joined)
		ReadMilestoneRows(o, ORDER_COLUMN_MILESTONES);
	else
		EngineReadMilestones(o);	/* the order's row stays until SPI_finish */
	return result;
}

/*
 * CheckActor refuses (42501) an actor who is not the order's party in the
 * given role ("seller" or "buyer"; "support" and "system" act on any order).
 */
static void
CheckActor(EngineOrder *o, int64 actor_id, const char *role)
{
	if ((strcmp(role, "seller") == 0 && o->seller_id != actor_id) ||
		(strcmp(role, "buyer") == 0 && o->buyer_id != actor_id))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("user " INT64_FORMAT " is not the %s of order " INT64_FORMAT,
						actor_id, role, o->order_id),
				 errdetail("Only the order's %s may do this; user " INT64_FORMAT " is %s.",
						   role, actor_id,
						   actor_id == o->buyer_id ? "its buyer" :
						   actor_id == o->seller_id ? "its seller" : "not a party to it")));
}

/*
 * ReadMilestoneRows reads all milestones of the locked order from the
 * rows of the last statement (columns from first on), in position order,
 * and finds the current one (in progress or delivered).
 */
static void
ReadMilestoneRows(EngineOrder *o, int first)
{
	uint64		i;
	int			att[MC_COUNT];
	int			c;

	if (SPI_processed > ENGINE_MAX_MILESTONES)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " has more than %d milestones",
			 o->order_id, ENGINE_MAX_MILESTONES);
	ColumnsCheckResult(SPI_tuptable, SPI_processed, first, "order_milestones",
					   EngineMilestoneColumns, MC_COUNT);
	for (c = 0; c < MC_COUNT; c++)
		att[c] = c;
	o->nmilestones = (int) SPI_processed;
	o->current = -1;
	for (i = 0; i < SPI_processed; i++)
	{
		Datum		row[MC_COUNT];
		bool		rownulls[MC_COUNT];

		for (c = 0; c < MC_COUNT; c++)
			row[c] = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, first + c,
								   &rownulls[c]);
		EngineMilestoneFromRow(o, &o->ms[i], row, rownulls, att);
	}
}

/*
 * EngineReadMilestones makes sure the milestones of the locked order are
 * read: EngineLockOrder reads them with the order, so this only reads
 * when an action's picture was reset.
 */
void
EngineReadMilestones(EngineOrder *o)
{
	Datum		values[1];

	if (o->nmilestones >= 0)
		return;
	values[0] = Int64GetDatum(o->order_id);
	EngineExec(&milestones_plan, values, NULL, SPI_OK_SELECT, 0);
	ReadMilestoneRows(o, 1);
}

/*
 * EngineStateError raises the 55000 of an action refused in the order's
 * state (1.0's _state_error).
 */
void
EngineStateError(EngineOrder *o, const char *action, const char *needs)
{
	const char *state = StateName(&OrderMachine, o->state);
	StringInfoData full;
	char	   *hint;

	initStringInfo(&full);
	appendStringInfoString(&full, state);
	if (o->reason != NULL)
		appendStringInfo(&full, " (%s)", o->reason);
	if (StateIsFinal(&OrderMachine, o->state))
		hint = "An ended order never changes again.";
	else if (o->state == ORDER_OFFERED && o->confirmed && o->charge_id != 0)
		hint = psprintf("The buyer placed the order; its first milestone awaits payment (charge " INT64_FORMAT
						"): the order starts when the payment provider confirms it.", o->charge_id);
	else if (o->state == ORDER_OFFERED)
		hint = "The buyer places the order first.";
	else
		hint = "The order is running; see milestones.order_status for its current milestone.";
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("%s is not allowed: order " INT64_FORMAT " is %s", action, o->order_id, full.data),
			 errdetail("%s needs %s; order " INT64_FORMAT " is %s.", action, needs, o->order_id, state),
			 errhint("%s", hint)));
	pg_unreachable();
}

/*
 * EngineOpenDelivery returns the delivered milestone a buyer answers,
 * refusing (55000) when there is none or its response window has closed
 * (1.0's _open_delivery).  Reads the milestones.
 */
EngineMilestone *
EngineOpenDelivery(EngineOrder *o, const char *action)
{
	EngineMilestone *m;

	if (o->state != ORDER_ACTIVE)
		EngineStateError(o, action, "an active order with a delivered milestone");
	EngineReadMilestones(o);
	m = o->current >= 0 ? &o->ms[o->current] : NULL;
	if (m == NULL || m->state != MS_DELIVERED)
	{
		char		pos[32];

		if (m != NULL)
			snprintf(pos, sizeof(pos), "%d", m->position);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s is not allowed: milestone %s of order " INT64_FORMAT " is %s",
						action, m ? pos : "<NULL>", o->order_id,
						m ? StateName(&MilestoneMachine, m->state) : "<NULL>"),
				 errdetail("%s needs a delivered milestone; milestone %s (%s) is %s.",
						   action, m ? pos : "", m ? m->name : "",
						   m ? StateName(&MilestoneMachine, m->state) : ""),
				 errhint("The buyer answers after the seller delivers.")));
	}
	if (MilestonesNow() >= m->respond_by)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s is not allowed: the response window of order " INT64_FORMAT " has closed",
						action, o->order_id),
				 errdetail("Milestone %d was delivered at %s; the buyer had until %s to respond.",
						   m->position, EngineTimestampOut(m->delivered_at_null, m->delivered_at),
						   EngineTimestampOut(m->respond_by_null, m->respond_by)),
				 errhint("The order will be completed as expired and the delivered milestone paid to the seller.")));
	return m;
}

static EnginePlan event_plan = {
	"INSERT INTO milestones.events (order_id, position, event, actor_role, actor_id, agent,"
	" order_state, milestone_state, detail, created_at)"
	" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
	10, {INT8OID, INT2OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, JSONBOID,
	TIMESTAMPTZOID}
};

/*
 * EventValues fills the parameters of an event row ($1..$10 of the event
 * statements): position < 0 is NULL, milestone_state < 0 is NULL, detail
 * is JSON text.  order_state is the order's state after the action.
 */
static void
EventValues(Datum *values, char *nulls, EngineOrder *o, int position, const char *event,
			const char *actor_role, bool actor_null, int64 actor_id, const char *agent,
			int milestone_state, const char *detail)
{
	memset(nulls, ' ', 10);
	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int16GetDatum((int16) position);
	if (position < 0)
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(event);
	values[3] = CStringGetTextDatum(actor_role);
	values[4] = Int64GetDatum(actor_id);
	if (actor_null)
		nulls[4] = 'n';
	values[5] = agent ? CStringGetTextDatum(agent) : (Datum) 0;
	if (agent == NULL)
		nulls[5] = 'n';
	values[6] = CStringGetTextDatum(StateName(&OrderMachine, o->state));
	if (milestone_state >= 0)
		values[7] = CStringGetTextDatum(StateName(&MilestoneMachine, milestone_state));
	else
	{
		values[7] = (Datum) 0;
		nulls[7] = 'n';
	}
	values[8] = EngineJsonb(detail);
	values[9] = TimestampTzGetDatum(MilestonesNow());
}

/*
 * EngineWriteInit starts the parameters of a combined write statement
 * with its event ($1-$10, as EventValues; order_state is the order's
 * state after the action); every other parameter is NULL until set.
 */
void
EngineWriteInit(EngineWrite *w, EngineOrder *o, int position, const char *event,
				const char *actor_role, bool actor_null, int64 actor_id, const char *agent,
				int order_state, int milestone_state, const char *detail)
{
	int			saved = o->state;

	memset(w->values, 0, sizeof(w->values));
	memset(w->nulls, 'n', sizeof(w->nulls));
	w->legs.nlegs = 0;
	o->state = order_state;
	EventValues(w->values, w->nulls, o, position, event, actor_role, actor_null, actor_id,
				agent, milestone_state, detail);
	o->state = saved;
}

/* EngineWriteSet sets parameter $param of a combined write statement. */
void
EngineWriteSet(EngineWrite *w, int param, Datum value, bool isnull)
{
	Assert(param >= 1 && param <= ENGINE_WRITE_ARGS);
	w->values[param - 1] = isnull ? (Datum) 0 : value;
	w->nulls[param - 1] = isnull ? 'n' : ' ';
}

/*
 * EngineWriteExec runs a combined write statement: a SELECT over
 * data-modifying CTEs.  Its FROM joins the CTEs that write one row each
 * (the event, the order), so a write that did not happen returns no row,
 * which is refused here as an impossible state.
 */
void
EngineWriteExec(EnginePlan *p, EngineWrite *w)
{
	EngineExec(p, w->values, w->nulls, SPI_OK_SELECT, 0);
	if (SPI_processed == 0)
		elog(ERROR, "milestones engine: write statement returned no row: %s", p->sql);
}

/*
 * EngineResultInt reads an integer column (a count, a position) of the
 * first row of the last statement; NULL reads as -1.
 */
int64
EngineResultInt(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	if (isnull)
		return -1;
	switch (SPI_gettypeid(SPI_tuptable->tupdesc, col))
	{
		case INT2OID:
			return DatumGetInt16(d);
		case INT4OID:
			return DatumGetInt32(d);
		case INT8OID:
			return DatumGetInt64(d);
		default:
			elog(ERROR, "milestones engine: column %d of the result is not an integer", col);
	}
	return -1;					/* keep compiler quiet */
}

/*
 * EngineEvent appends the event of an action (1.0's _event, without the
 * NOTIFY: the events table's own trigger or relay sends notifications).
 */
void
EngineEvent(EngineOrder *o, int position, const char *event, const char *actor_role,
			bool actor_null, int64 actor_id, const char *agent, int milestone_state,
			const char *detail)
{
	Datum		values[10];
	char		nulls[10];

	EventValues(values, nulls, o, position, event, actor_role, actor_null, actor_id,
				agent, milestone_state, detail);
	EngineExec(&event_plan, values, nulls, SPI_OK_INSERT, 0);
	if (SPI_processed != 1)
		elog(ERROR, "milestones engine: event of order " INT64_FORMAT " not written", o->order_id);
}

static EnginePlan populate_plan = {
	"SELECT s.* FROM pg_catalog.jsonb_populate_record(NULL::milestones.order_status, $1) s",
	1, {JSONBOID}
};

/*
 * EngineResultRow turns the first row of the last SPI result into the
 * function's row result (order_status, charges, refunds ...), built in the
 * caller's memory context.
 */
Datum
EngineResultRow(FunctionCallInfo fcinfo, MemoryContext caller)
{
	TupleDesc	resdesc;
	MemoryContext old;
	Datum	   *values;
	bool	   *nulls;
	HeapTuple	tup;
	int			natts;
	int			i;
	TupleDesc	desc = SPI_tuptable->tupdesc;

	if (SPI_processed == 0)
		elog(ERROR, "milestones engine: no order_status row");
	old = MemoryContextSwitchTo(caller);
	if (get_call_result_type(fcinfo, NULL, &resdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "milestones engine: return type must be a row type");
	resdesc = BlessTupleDesc(resdesc);
	natts = resdesc->natts;
	if (desc->natts < natts)
		elog(ERROR, "milestones engine: order_status has %d columns, expected %d",
			 desc->natts, natts);
	values = palloc(natts * sizeof(Datum));
	nulls = palloc(natts * sizeof(bool));
	for (i = 0; i < natts; i++)
		values[i] = SPI_getbinval(SPI_tuptable->vals[0], desc, i + 1, &nulls[i]);
	tup = heap_form_tuple(resdesc, values, nulls);
	MemoryContextSwitchTo(old);
	return HeapTupleGetDatum(tup);
}

/*
 * The columns of milestones.order_status, in order: EngineStatus builds
 * the row from the engine's picture of the order and refuses to run if the
 * view and this list ever part ways.
 */
static const char *const status_columns[] = {
	"order_id", "seller_id", "buyer_id", "category", "currency", "state", "reason",
	"created_at", "placed_at", "completed_at", "milestone_count", "current_milestone",
	"milestone_state", "due_at", "respond_by", "revisions_left", "total", "charged",
	"paid_out", "refunded", "fee", "net", "revisions_used", "milestone_name",
	"final_milestone", "payment_mode", "charge_id", "charge_attempt", "charge_state",
	"pay_by", NULL
};
#define STATUS_NCOLUMNS 30		/* 1.2; 1.1's view has the first 25 */
#define STATUS_NCOLUMNS_11 25

/* StatusNumeric is a money column: the sum coerced to the column's typmod, as the view's cast. */
static Datum
StatusNumeric(Datum num, Form_pg_attribute att)
{
	if (att->atttypmod < 0)
		return num;
	return DirectFunctionCall2(numeric, num, Int32GetDatum(att->atttypmod));
}

/* NumAdd is numeric addition of Datums. */
static Datum
NumAdd(Datum a, Datum b)
{
	return DirectFunctionCall2(numeric_add, a, b);
}

/*
 * StatusRank is the view's choice of the current milestone, as a sort key
 * (lower first): running, then the last completed or refunded, then the
 * first pending or skipped, then the first cancelled.
 */
static int
StatusRank(EngineMilestone *m)
{
	switch (m->state)
	{
		case MS_IN_PROGRESS:
		case MS_DELIVERED:
		case MS_AWAITING_PAYMENT:
			return 0;
		case MS_COMPLETED:
		case MS_REFUNDED:
			return 1;
		case MS_CANCELLED:
			return 3;
		default:
			return 2;
	}
}

/*
 * StatusSums is what EngineStatus derives from the milestones: the current
 * milestone, the last one not cancelled, and the money columns.
 */
typedef struct StatusSums
{
	EngineMilestone *cur;
	int			last_live;
	Datum		total;
	Datum		charged;
	Datum		refunded;
	Datum		paid_out;
	Datum		fee;
	Datum		net;
} StatusSums;

/*
 * StatusDesc returns the caller's result row type, blessed, after checking
 * that it is order_status as 1.1 or 1.2 made it (its column count and
 * names), and sets *ncolumns.
 */
static TupleDesc
StatusDesc(FunctionCallInfo fcinfo, int *ncolumns)
{
	TupleDesc	resdesc;
	int			i;

	if (get_call_result_type(fcinfo, NULL, &resdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "milestones engine: return type must be a row type");
	resdesc = BlessTupleDesc(resdesc);
	*ncolumns = resdesc->natts;
	if (*ncolumns != STATUS_NCOLUMNS && *ncolumns != STATUS_NCOLUMNS_11)
		elog(ERROR, "milestones engine: order_status has %d columns, expected %d",
			 resdesc->natts, STATUS_NCOLUMNS);
	for (i = 0; i < *ncolumns; i++)
		if (strcmp(NameStr(TupleDescAttr(resdesc, i)->attname), status_columns[i]) != 0)
			elog(ERROR, "milestones engine: order_status column %d is \"%s\", expected \"%s\"",
				 i + 1, NameStr(TupleDescAttr(resdesc, i)->attname), status_columns[i]);
	return resdesc;
}

/*
 * StatusSum finds the current milestone (StatusRank) and sums the money
 * columns from the milestones' states, by the invariants the commit check
 * holds (SPEC section 6): a milestone is charged its amount once it has
 * started, refunded its amount when refunded, and an ended order's payout
 * is that of its completed milestones.  zero is numeric 0, allocated by the
 * caller before it switched to its caller's memory context.
 */
static void
StatusSum(EngineOrder *o, Datum zero, StatusSums *s)
{
	Datum		earned = zero;
	int			i;

	s->cur = NULL;
	s->last_live = -1;
	s->total = zero;
	s->charged = zero;
	s->refunded = zero;
	s->paid_out = zero;
	s->fee = zero;
	s->net = zero;
	for (i = 0; i < o->nmilestones; i++)
	{
		EngineMilestone *m = &o->ms[i];
		EngineMilestone *cur = s->cur;

		if (cur == NULL || StatusRank(m) < StatusRank(cur) ||
			(StatusRank(m) == StatusRank(cur) &&
			 (StatusRank(m) == 1 ? m->position > cur->position : m->position < cur->position)))
			s->cur = m;
		if (m->state != MS_CANCELLED)
		{
			s->total = NumAdd(s->total, m->amount);
			if (m->position > s->last_live)
				s->last_live = m->position;
		}
		if (m->state == MS_IN_PROGRESS || m->state == MS_DELIVERED ||
			m->state == MS_COMPLETED || m->state == MS_REFUNDED)
			s->charged = NumAdd(s->charged, m->amount);
		if (m->state == MS_REFUNDED)
			s->refunded = NumAdd(s->refunded, m->amount);
		if (m->state == MS_COMPLETED)
			earned = NumAdd(earned, m->amount);
	}
	/* Late successes were booked and refunded at once (confirmed mode). */
	if (o->confirmed && o->late != (Datum) 0)
	{
		s->charged = NumAdd(s->charged, o->late);
		s->refunded = NumAdd(s->refunded, o->late);
	}
	/* An ended order was paid out what its completed milestones earned. */
	if (StateIsFinal(&OrderMachine, o->state) &&
		DatumGetInt32(DirectFunctionCall2(numeric_cmp, earned, zero)) > 0)
	{
		Numeric		g,
					f,
					n;

		PayoutAmounts(DatumGetNumeric(earned), DatumGetNumeric(o->fee_rate), &g, &f, &n);
		s->paid_out = NumericGetDatum(g);
		s->fee = NumericGetDatum(f);
		s->net = NumericGetDatum(n);
	}
}

/*
 * StatusValues fills the order_status row's values and nulls from the
 * order and its sums; 1.2's payment columns only when the row has them
 * (ncolumns).
 */
static void
StatusValues(EngineOrder *o, const StatusSums *s, TupleDesc resdesc, int ncolumns,
			 Datum *values, bool *nulls)
{
	EngineMilestone *cur = s->cur;

	memset(nulls, false, sizeof(bool) * STATUS_NCOLUMNS);
	values[0] = Int64GetDatum(o->order_id);
	values[1] = Int64GetDatum(o->seller_id);
	values[2] = Int64GetDatum(o->buyer_id);
	values[3] = CStringGetTextDatum(o->category);
	values[4] = CStringGetTextDatum(o->currency);
	values[5] = CStringGetTextDatum(StateName(&OrderMachine, o->state));
	nulls[6] = o->reason == NULL;
	values[6] = o->reason ? CStringGetTextDatum(o->reason) : (Datum) 0;
	values[7] = TimestampTzGetDatum(o->created_at);
	nulls[8] = o->placed_at_null;
	values[8] = TimestampTzGetDatum(o->placed_at);
	nulls[9] = o->completed_at_null;
	values[9] = TimestampTzGetDatum(o->completed_at);
	values[10] = Int32GetDatum(o->nmilestones);
	nulls[11] = nulls[12] = nulls[13] = nulls[14] = nulls[23] = nulls[24] = (cur == NULL);
	values[11] = values[12] = values[13] = values[14] = values[23] = values[24] = (Datum) 0;
	if (cur != NULL)
	{
		values[11] = Int32GetDatum(cur->position);
		values[12] = CStringGetTextDatum(StateName(&MilestoneMachine, cur->state));
		nulls[13] = cur->due_at_null;
		values[13] = TimestampTzGetDatum(cur->due_at);
		nulls[14] = cur->state != MS_DELIVERED || cur->respond_by_null;
		values[14] = TimestampTzGetDatum(cur->respond_by);
		values[23] = CStringGetTextDatum(cur->name);
		nulls[24] = s->last_live < 0;
		values[24] = BoolGetDatum(cur->position == s->last_live);
	}
	nulls[15] = o->revisions_unlimited;
	values[15] = Int32GetDatum(o->revisions_allowed - o->revisions_used);
	values[16] = StatusNumeric(s->total, TupleDescAttr(resdesc, 16));
	values[17] = StatusNumeric(s->charged, TupleDescAttr(resdesc, 17));
	values[18] = StatusNumeric(s->paid_out, TupleDescAttr(resdesc, 18));
	values[19] = StatusNumeric(s->refunded, TupleDescAttr(resdesc, 19));
	values[20] = StatusNumeric(s->fee, TupleDescAttr(resdesc, 20));
	values[21] = StatusNumeric(s->net, TupleDescAttr(resdesc, 21));
	values[22] = Int32GetDatum(o->revisions_used);
	if (ncolumns == STATUS_NCOLUMNS)
	{
		/* 1.2: the payment mode and the open charge */
		values[25] = CStringGetTextDatum(o->confirmed ? "confirmed" : "recorded");
		nulls[26] = nulls[27] = nulls[28] = nulls[29] = o->charge_id == 0;
		values[26] = Int64GetDatum(o->charge_id);
		values[27] = Int32GetDatum(o->charge_attempts);
		values[28] = o->charge_id == 0 ? (Datum) 0 :
			CStringGetTextDatum(StateName(&ChargeMachine, o->charge_state));
		values[29] = TimestampTzGetDatum(o->pay_by);
	}
}

/*
 * StatusStoreKey stores the row as the idempotency key's result, as
 * to_jsonb of the row would write it (built here as JSON text).
 */
static void
StatusStoreKey(text *key, TupleDesc resdesc, int ncolumns, const Datum *values, const bool *nulls)
{
	StringInfoData json;
	int			i;

	initStringInfo(&json);
	for (i = 0; i < ncolumns; i++)
	{
		Form_pg_attribute att = TupleDescAttr(resdesc, i);
		const char *name = NameStr(att->attname);

		if (nulls[i])
		{
			JsonAddKey(&json, name);
			appendStringInfoString(&json, "null");
			continue;
		}
		switch (att->atttypid)
		{
			case INT8OID:
				JsonAddInt(&json, name, false, DatumGetInt64(values[i]));
				break;
			case INT4OID:
				JsonAddInt(&json, name, false, DatumGetInt32(values[i]));
				break;
			case TEXTOID:
				JsonAddText(&json, name, TextDatumGetCString(values[i]));
				break;
			case TIMESTAMPTZOID:
				JsonAddTimestamp(&json, name, DatumGetTimestampTz(values[i]));
				break;
			case NUMERICOID:
				JsonAddNumeric(&json, name, values[i]);
				break;
			case BOOLOID:
				JsonAddBool(&json, name, DatumGetBool(values[i]));
				break;
			default:
				elog(ERROR, "milestones engine: order_status column \"%s\" has an unexpected type %u",
					 name, att->atttypid);
		}
	}
	appendStringInfoChar(&json, '}');
	EngineIdemStore(key, EngineJsonb(json.data));
}

/*
 * EngineStatus returns the action's order_status row, built from what the
 * engine holds under the order's lock (the order row, all its milestones,
 * as they are after the action's writes) instead of querying the view,
 * which aggregates the milestones and the ledger.  The money columns
 * follow from the milestones' states (StatusSum).  With a key the row is
 * also stored as the key's result (StatusStoreKey).
 * test/sql/36_status_row.sql proves the row equal to the view's.
 */
Datum
EngineStatus(FunctionCallInfo fcinfo, MemoryContext caller, EngineOrder *o, text *key)
{
	TupleDesc	resdesc;
	MemoryContext old;
	Datum		values[STATUS_NCOLUMNS];
	bool		nulls[STATUS_NCOLUMNS];
	StatusSums	sums;
	Datum		zero = NumericGetDatum(int64_to_numeric(0));
	HeapTuple	tup;
	int			ncolumns;

	if (o->nmilestones < 0)
		elog(ERROR, "milestones engine: order " INT64_FORMAT " status without its milestones",
			 o->order_id);
	old = MemoryContextSwitchTo(caller);
	resdesc = StatusDesc(fcinfo, &ncolumns);
	StatusSum(o, zero, &sums);
	StatusValues(o, &sums, resdesc, ncolumns, values, nulls);
	tup = heap_form_tuple(resdesc, values, nulls);
	MemoryContextSwitchTo(old);

	if (key != NULL)
		StatusStoreKey(key, resdesc, ncolumns, values, nulls);
	return HeapTupleGetDatum(tup);
}

/*
 * EngineEventStatus appends the action's event and returns the order's
 * order_status row (EngineStatus); with a key the row is stored as the
 * key's result.
 */
Datum
EngineEventStatus(FunctionCallInfo fcinfo, MemoryContext caller, EngineOrder *o,
				  int position, const char *event, const char *actor_role,
				  bool actor_null, int64 actor_id, const char *agent,
				  int milestone_state, const char *detail, text *key)
{
	EngineEvent(o, position, event, actor_role, actor_null, actor_id, agent,
				milestone_state, detail);
	return EngineStatus(fcinfo, caller, o, key);
}

/*
 * EngineSetEnded records in the engine's picture the columns an ending
 * writes to the order row: end_reason or cancel_reason (reason is their
 * COALESCE, as in the view) and completed_at.
 */
void
EngineSetEnded(EngineOrder *o, const char *end_reason, const char *cancel_reason,
			   TimestampTz at)
{
	if (end_reason != NULL)
		o->end_reason = pstrdup(end_reason);
	o->reason = o->end_reason != NULL ? o->end_reason :
		cancel_reason != NULL ? pstrdup(cancel_reason) : o->reason;
	o->completed_at = at;
	o->completed_at_null = false;
}

/*
 * EngineStoredStatus returns a retry's stored result with
 * jsonb_populate_record semantics, as 1.0 did.
 */
Datum
EngineStoredStatus(FunctionCallInfo fcinfo, MemoryContext caller, Datum stored)
{
	Datum		values[1];

	values[0] = stored;
	EngineExec(&populate_plan, values, NULL, SPI_OK_SELECT, 1);
	return EngineResultRow(fcinfo, caller);
}

/*
 * EngineSetMilestone records in the engine's picture, and declares to the
 * commit check, a milestone state write the caller has just made (one row).
 */
void
EngineSetMilestone(EngineOrder *o, EngineMilestone *m, int to)
{
	WriteFact	f = StateFact(FACT_MILESTONE, false, m->state, to, m->position);

	StateAssertTransition(&MilestoneMachine, m->state, to);
	CheckDeclare(o->order_id, &f);
	m->state = to;
}

/* EngineSetOrder does the same for the order row. */
void
EngineSetOrder(EngineOrder *o, int to, bool updated)
{
	WriteFact	f = StateFact(FACT_ORDER, false, o->state, to, -1);

	StateAssertTransition(&OrderMachine, o->state, to);
	CheckDeclare(o->order_id, &f);
	o->state = to;
}
