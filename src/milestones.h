/*-------------------------------------------------------------------------
 *
 * src/milestones.h
 *		Declarations shared by the C files of the milestones extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MILESTONES_H
#define MILESTONES_H

#include "postgres.h"
#include "utils/timestamp.h"

/* milestones.c */
extern TimestampTz MilestonesNow(void);

/* guard.c */
extern void GuardInit(void);

/* events.c: the channel every notification is sent on */
#define EVENTS_CHANNEL "milestones"

/* relay.c */
extern void RelayInit(void);
extern bool RelayServesThisDatabase(void);
extern void RelayWakeAtCommit(void);

#endif							/* MILESTONES_H */
