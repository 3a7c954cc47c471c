/*-------------------------------------------------------------------------
 *
 * src/states.c
 *		The state machines of orders and milestones, as one table of data.
 *
 * SPEC section 2 as data: the states, which of them are final, and the
 * only transitions between them.  The guard triggers (guard.c) refuse
 * every row write that is not a transition of these tables, and the
 * order actions (actions.c) make only transitions they find here, so the
 * rules live in one place.  The states are numbered by the enums of
 * milestones.h, which the commit check (check.c) uses in its write facts.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "milestones.h"

static const char *const order_state_names[] = {
	"offered", "active", "completed", "withdrawn", "declined", "cancelled"
};
static const bool order_state_final[] = {
	false, false, true, true, true, true
};
static const StateTransition order_transitions[] = {
	{ORDER_OFFERED, ORDER_ACTIVE},
	{ORDER_OFFERED, ORDER_WITHDRAWN},
	{ORDER_OFFERED, ORDER_DECLINED},
	{ORDER_OFFERED, ORDER_CANCELLED},
	{ORDER_ACTIVE, ORDER_COMPLETED},
	{ORDER_ACTIVE, ORDER_CANCELLED},
	{-1, -1}
};
static const char *const order_immutable[] = {
	"order_id", "seller_id", "buyer_id", "category", "currency",
	"revisions_allowed", "fee_rate", "created_at", NULL
};

static const char *const milestone_state_names[] = {
	"pending", "in_progress", "delivered", "completed", "skipped", "refunded",
	"cancelled"
};
static const bool milestone_state_final[] = {
	false, false, false, true, true, true, true
};
static const StateTransition milestone_transitions[] = {
	{MS_PENDING, MS_IN_PROGRESS},
	{MS_PENDING, MS_SKIPPED},
	{MS_PENDING, MS_CANCELLED},		/* cancel_milestone (issue 11) */
	{MS_IN_PROGRESS, MS_DELIVERED},
	{MS_IN_PROGRESS, MS_REFUNDED},
	{MS_DELIVERED, MS_COMPLETED},
	{MS_DELIVERED, MS_IN_PROGRESS},	/* revision requested */
	{MS_DELIVERED, MS_REFUNDED},
	{-1, -1}
};
static const char *const milestone_immutable[] = {
	"order_id", "position", "name", "days", "amount", "final", NULL
};

/* The order state machine (SPEC section 2). */
const StateMachine OrderMachine = {
	"order", ORDER_NSTATES, order_state_names, order_state_final,
	order_transitions, order_immutable
};

/* The milestone state machine (SPEC section 2, issue 11's cancelled). */
const StateMachine MilestoneMachine = {
	"milestone", MS_NSTATES, milestone_state_names, milestone_state_final,
	milestone_transitions, milestone_immutable
};

/* StateCode returns the number of a state name, or -1 when unknown. */
int
StateCode(const StateMachine *machine, const char *name)
{
	int			i;

	if (name == NULL)
		return -1;
	for (i = 0; i < machine->nstates; i++)
		if (strcmp(machine->names[i], name) == 0)
			return i;
	return -1;
}

/* StateName returns the name of a state number. */
const char *
StateName(const StateMachine *machine, int state)
{
	Assert(state >= 0 && state < machine->nstates);
	return machine->names[state];
}

/* StateIsFinal says whether a state never changes again. */
bool
StateIsFinal(const StateMachine *machine, int state)
{
	return machine->final[state];
}

/*
 * StateTransitionAllowed says whether the machine has the transition
 * from -> to (staying in a state is not a transition and is not asked).
 */
bool
StateTransitionAllowed(const StateMachine *machine, int from, int to)
{
	const StateTransition *t;

	for (t = machine->transitions; t->from >= 0; t++)
		if (t->from == from && t->to == to)
			return true;
	return false;
}

/*
 * StateAssertTransition is what an action calls before it writes a state
 * change: the change must be in the table the guard enforces, so a
 * mistake in an action shows up as an internal error here and not as a
 * refused write deep inside its SQL.
 */
void
StateAssertTransition(const StateMachine *machine, int from, int to)
{
	if (from != to && !StateTransitionAllowed(machine, from, to))
		elog(ERROR, "milestones engine: %s transition %s -> %s is not in the state table",
			 machine->what, StateName(machine, from), StateName(machine, to));
}
