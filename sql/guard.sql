-- sql/guard.sql - the C transition guard holds for hand-written SQL too,
-- even a superuser's, and its errors name the states involved.
CREATE EXTENSION milestones;
SET timezone = 'UTC';
SET milestones.fake_now = '2030-01-01 00:00:00+00';
\set SHOW_CONTEXT never
SELECT milestones.set_seller_eligibility(10, true);
SELECT milestones.set_category_eligibility('design', true);
SELECT milestones.create_offer(10, 20, 'design',
    '[{"name":"Logo","days":3,"amount":"120.00"},{"name":"Brand book","days":7,"amount":"80.00"}]') AS order_id;
SELECT state, milestone_state FROM milestones.place_order(1, 20);
SELECT state, milestone_state FROM milestones.deliver(1, 10);

-- Illegal transitions are refused, naming both states.
UPDATE milestones.orders SET state = 'offered' WHERE order_id = 1;
UPDATE milestones.orders SET state = 'withdrawn' WHERE order_id = 1;
UPDATE milestones.order_milestones SET state = 'completed' WHERE order_id = 1 AND position = 2;
UPDATE milestones.order_milestones SET state = 'pending' WHERE order_id = 1 AND position = 1;
UPDATE milestones.order_milestones SET state = 'paid' WHERE order_id = 1 AND position = 1;

-- Priced and identifying columns never change.
UPDATE milestones.order_milestones SET amount = 1.00 WHERE order_id = 1 AND position = 1;
UPDATE milestones.orders SET buyer_id = 21 WHERE order_id = 1;
UPDATE milestones.orders SET fee_rate = 0.5 WHERE order_id = 1;

-- Nothing is deleted or truncated.
DELETE FROM milestones.order_milestones WHERE order_id = 1 AND position = 2;
DELETE FROM milestones.orders WHERE order_id = 1;
TRUNCATE milestones.orders CASCADE;
UPDATE milestones.ledger_entries SET amount = amount * 2;
DELETE FROM milestones.ledger_entries;
DELETE FROM milestones.events;

-- A legal transition that breaks an order-level rule fails at commit:
-- milestone 2 started while milestone 1 is still delivered, never charged.
BEGIN;
UPDATE milestones.order_milestones
   SET state = 'in_progress', started_at = '2030-01-01', due_at = '2030-01-08'
 WHERE order_id = 1 AND position = 2;
COMMIT;

-- A ledger transaction that does not balance fails at commit.
BEGIN;
INSERT INTO milestones.ledger_entries (txn_id, order_id, position, kind, account, amount, currency, created_at)
VALUES (999, 1, 1, 'refund', 'buyer', 10.00, 'USD', '2030-01-01');
COMMIT;

-- An INSERT may carry a later state (that is how a restore loads rows) but
-- must be consistent: an active order needs a running milestone.
BEGIN;
INSERT INTO milestones.orders (order_id, seller_id, buyer_id, category, currency, state, fee_rate, created_at, placed_at)
VALUES (50, 10, 20, 'design', 'USD', 'active', 0, '2030-01-01', '2030-01-01');
INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
VALUES (50, 1, 'Logo', 3, 150.00, true);
COMMIT;

-- A consistent inserted order is accepted.
BEGIN;
INSERT INTO milestones.orders (order_id, seller_id, buyer_id, category, currency, state, fee_rate, created_at)
VALUES (51, 10, 20, 'design', 'USD', 'offered', 0, '2030-01-01');
INSERT INTO milestones.order_milestones (order_id, position, name, days, amount, final)
VALUES (51, 2, 'Brand book', 7, 80.00, true), (51, 1, 'Logo', 3, 120.00, false);
COMMIT;

-- After all that, the books are sound and the order is where the API left it.
SELECT order_id, state, current_milestone, milestone_state, charged FROM milestones.order_status ORDER BY order_id;
SELECT * FROM milestones.check_invariants();
DROP EXTENSION milestones;
