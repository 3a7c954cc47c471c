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
	"revisions_allowed", "fee_rate", "created_at", "payment_mode", NULL
};

static const char *const milestone_state_names[] = {
	"pending", "in_progress", "delivered", "completed", "skipped", "refunded",
	"cancelled", "awaiting_payment"
};
static const bool milestone_state_final[] = {
	false, false, false, true, true, true, true, false
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
	/* confirmed payment mode (1.2, SPEC section 11) */
	{MS_PENDING, MS_AWAITING_PAYMENT},	/* its charge is requested */
	{MS_AWAITING_PAYMENT, MS_IN_PROGRESS},	/* the provider confirmed it */
	{MS_AWAITING_PAYMENT, MS_PENDING},	/* milestone 1 unpaid at pay_by */
	{MS_AWAITING_PAYMENT, MS_SKIPPED},	/* the order ended meanwhile */
	{MS_AWAITING_PAYMENT, MS_CANCELLED},	/* cancel_milestone */
	{-1, -1}
};
static const char *const milestone_immutable[] = {
	"order_id", "position", "name", "days", "amount", "final", NULL
};

/*
 * Charges, their attempts, refunds and withdrawals (1.2, SPEC sections 11
 * and 12).  A charge that failed is requested again by the buyer's retry,
 * and a failed attempt may still succeed (asynchronous methods settle
 * late); a failed refund is sent again by support, or settles late; a
 * withdrawal's outcome is final (a failed one went back to available).
 */
static const char *const payment_state_names[] = {
	"requested", "succeeded", "failed", "voided"
};
static const bool charge_state_final[] = {false, true, false, true};
static const StateTransition charge_transitions[] = {
	{PAY_REQUESTED, PAY_SUCCEEDED},
	{PAY_REQUESTED, PAY_FAILED},
	{PAY_REQUESTED, PAY_VOIDED},
	{PAY_FAILED, PAY_REQUESTED},
	{PAY_FAILED, PAY_SUCCEEDED},
	{PAY_FAILED, PAY_VOIDED},
	{-1, -1}
};
static const char *const charge_immutable[] = {
	"charge_id", "order_id", "position", "amount", "currency", "requested_at", "pay_by", NULL
};
static const bool attempt_state_final[] = {false, true, false, true};
static const StateTransition attempt_transitions[] = {
	{PAY_REQUESTED, PAY_SUCCEEDED},
	{PAY_REQUESTED, PAY_FAILED},
	{PAY_FAILED, PAY_SUCCEEDED},
	{-1, -1}
};
static const char *const attempt_immutable[] = {
	"charge_id", "attempt", "order_id", "requested_at", NULL
};
static const StateTransition refund_transitions[] = {
	{PAY_REQUESTED, PAY_SUCCEEDED},
	{PAY_REQUESTED, PAY_FAILED},
	{PAY_FAILED, PAY_REQUESTED},
	{PAY_FAILED, PAY_SUCCEEDED},
	{-1, -1}
};
static const char *const refund_immutable[] = {
	"refund_id", "order_id", "position", "charge_id", "charge_attempt", "buyer_id",
	"amount", "currency", "reason", "requested_at", "ledger_txn", NULL
};
static const bool withdrawal_state_final[] = {false, true, true, true};
static const StateTransition withdrawal_transitions[] = {
	{PAY_REQUESTED, PAY_SUCCEEDED},
	{PAY_REQUESTED, PAY_FAILED},
	{-1, -1}
};
static const char *const withdrawal_immutable[] = {
	"withdrawal_id", "seller_id", "currency", "amount", "available_before", "requested_at", NULL
};

/* A charge (order_charges). */
const StateMachine ChargeMachine = {
	"charge", PAY_NSTATES, payment_state_names, charge_state_final,
	charge_transitions, charge_immutable
};

/* An attempt of a charge (charge_attempts); voided is not one of its states. */
const StateMachine AttemptMachine = {
	"charge attempt", PAY_VOIDED, payment_state_names, attempt_state_final,
	attempt_transitions, attempt_immutable
};

/* A refund (order_refunds). */
const StateMachine RefundMachine = {
	"refund", PAY_VOIDED, payment_state_names, attempt_state_final,
	refund_transitions, refund_immutable
};

/* A withdrawal (seller_withdrawals). */
const StateMachine WithdrawalMachine = {
	"withdrawal", PAY_VOIDED, payment_state_names, withdrawal_state_final,
	withdrawal_transitions, withdrawal_immutable
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
