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

#endif							/* MILESTONES_H */
