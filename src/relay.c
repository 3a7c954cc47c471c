/*-------------------------------------------------------------------------
 *
 * src/relay.c
 *		The relay: notifications sent off the API's commit path.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "milestones.h"

/* RelayInit defines the relay's settings; called from _PG_init. */
void
RelayInit(void)
{
}

/* RelayServesThisDatabase says whether the relay notifies for this database. */
bool
RelayServesThisDatabase(void)
{
	return false;
}

/* RelayWakeAtCommit asks for the relay to be woken when this transaction commits. */
void
RelayWakeAtCommit(void)
{
}
