/*-------------------------------------------------------------------------
 *
 * src/engine.h
 *		Declarations shared by the order engine's C files (engine.c,
 *		ledger.c, actions.c): the plan cache, the order as the engine reads
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

#include "milestones.h"

#define ENGINE_MAX_ARGS 12
#define ENGINE_MAX_MILESTONES 20

/* One SQL statement of the engine, prepared once per backend and kept. */
typedef struct EnginePlan
{
	const char *sql;
	int			nargs;
	Oid			argtypes[ENGINE_MAX_ARGS];
	SPIPlanPtr	plan;
} EnginePlan;

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
	int			nmilestones;
	EngineMilestone ms[ENGINE_MAX_MILESTONES];
	int			current;		/* index of the in-progress or delivered one, or -1 */
} EngineOrder;

/* engine.c */
extern void EngineExec(EnginePlan *p, Datum *values, const char *nulls,
					   int expect, long tcount);
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
extern void EngineLockOrder(EngineOrder *o, int64 order_id, int64 actor_id,
							const char *role);
extern bool EngineLockOrderEligible(EngineOrder *o, int64 order_id, int64 actor_id,
									const char *role);
extern void EngineReadMilestones(EngineOrder *o);
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
extern int64 LedgerPost(EngineOrder *o, int position, const char *kind,
						const char *const *accounts, Datum *amounts, int nlegs);
extern void LedgerComplete(EngineOrder *o, EngineMilestone *m, const char *reason,
						   TimestampTz at, StringInfo detail);
extern void LedgerSettle(EngineOrder *o, StringInfo detail);
extern int	LedgerSkipPending(EngineOrder *o);
extern Datum LedgerAdvance(EngineOrder *o, EngineMilestone *m, EngineMilestone *next);
extern Datum LedgerStart(EngineOrder *o, EngineMilestone *m);

#endif							/* MILESTONES_ENGINE_H */
