/*-------------------------------------------------------------------------
 *
 * src/earnings.h
 *		Declarations shared by the seller earnings (earnings.c) and their
 *		commit check (sellercheck.c): the facts a seller's writes leave.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MILESTONES_EARNINGS_H
#define MILESTONES_EARNINGS_H

#include "postgres.h"
#include "fmgr.h"

/* The tables whose writes are facts of a seller and currency. */
typedef enum SellerFactTable
{
	SFACT_ACCOUNT = 1,			/* seller_accounts: one balance column's change */
	SFACT_LEG = 2,				/* seller_ledger: one journal leg */
	SFACT_EARNING = 3,			/* seller_earnings */
	SFACT_WITHDRAWAL = 4		/* seller_withdrawals */
} SellerFactTable;

/*
 * The tables of the seller facts, for their row balance (sellercheck.c):
 * the guard counts every row of them it allows.  (seller_holds is guarded
 * too, but moves no money.)
 */
typedef enum SellerRowTable
{
	SROW_ACCOUNTS,
	SROW_LEDGER,
	SROW_EARNINGS,
	SROW_WITHDRAWALS,
	SROW_NTABLES
} SellerRowTable;

/*
 * The accounts of the seller journal: the four balance columns of
 * seller_accounts, in this order, then the journal's source.
 */
typedef enum SellerAccount
{
	SACC_PENDING,
	SACC_AVAILABLE,
	SACC_WITHDRAWING,
	SACC_WITHDRAWN,
	SACC_EARNINGS
} SellerAccount;
#define SACC_BALANCES 4

/* The kinds of journal transaction. */
typedef enum SellerKind
{
	SKIND_EARNING,
	SKIND_CLEARANCE,
	SKIND_WITHDRAWAL,
	SKIND_WITHDRAWAL_SUCCEEDED,
	SKIND_WITHDRAWAL_FAILED
} SellerKind;

/*
 * One row write of a seller's money, as a guard trigger saw it or as an
 * earnings function declares it.  Two facts are equal when all fields are.
 *
 *	ACCOUNT     account = the balance column, cents = its change (the new
 *	            value for an INSERT); one fact per column that changed
 *	LEG         id = txn_id, ref = earning_id or withdrawal_id, kind,
 *	            account, cents = the leg's amount
 *	EARNING     id = earning_id, ref = order_id, cents = amount;
 *	            from/to: 0 pending, 1 cleared (from -1 for an INSERT)
 *	WITHDRAWAL  id = withdrawal_id, ref = available_before in cents,
 *	            cents = amount; from/to: states of WithdrawalMachine
 */
typedef struct SellerFact
{
	int8		table;			/* SellerFactTable */
	int8		insert;			/* 1 for INSERT, 0 for UPDATE */
	int8		from;
	int8		to;
	int8		kind;			/* SellerKind, legs only, else -1 */
	int8		account;		/* SellerAccount, accounts and legs, else -1 */
	int64		id;
	int64		ref;
	int64		cents;
} SellerFact;

extern const char *const SellerAccountNames[];	/* pending ... earnings, NULL */
extern const char *const SellerKindNames[];	/* earning ... withdrawal_failed, NULL */

/* sellercheck.c */
extern SellerFact SellerFactMake(SellerFactTable table, bool insert, int from, int to,
								 int kind, int account, int64 id, int64 ref, int64 cents);
extern void SellerCheckObserve(int64 seller_id, const char *currency, const SellerFact *fact,
							   bool updated);
extern void SellerCheckTaint(int64 seller_id, const char *currency);
extern void SellerCheckDeclare(int64 seller_id, const char *currency, const SellerFact *fact);
extern void SellerCheckWriting(bool on, int64 seller_id, const char *currency);
extern void SellerCheckSeen(SellerRowTable table);

#endif							/* MILESTONES_EARNINGS_H */
