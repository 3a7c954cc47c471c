-- sql/story.sql - a short story of real orders, printed as a DBA sees them.
-- It is both a pg_regress suite and the script `make demo` plays.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS milestones;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set SHOW_CONTEXT never
\pset null '·'

\echo '== Setting up: a 10 % seller fee, two sellers and two categories'
UPDATE milestones.settings SET seller_fee_rate = 0.10;
SELECT milestones.set_seller_eligibility(101, true), milestones.set_seller_eligibility(102, true),
       milestones.set_category_eligibility('logo-design', true),
       milestones.set_category_eligibility('explainer-video', true) \gset

\echo '== Monday 1 June: offers are made'
SET milestones.fake_now = '2026-06-01 09:00:00+00';
-- 1: a logo in three steps, one revision included
SELECT milestones.create_offer(101, 201, 'logo-design',
    '[{"name":"Sketches","days":3,"amount":"60.00"},{"name":"Refinement","days":4,"amount":"50.00"},{"name":"Final files","days":2,"amount":"40.00"}]',
    1) AS logo \gset
-- 2: an explainer video the buyer will stop after two steps
SELECT milestones.create_offer(102, 202, 'explainer-video',
    '[{"name":"Storyboard","days":5,"amount":"200.00"},{"name":"Animation","days":10,"amount":"300.00"},{"name":"Voice-over","days":3,"amount":"150.00"}]',
    2) AS video \gset
-- 3: a buyer who goes silent after the first delivery
SELECT milestones.create_offer(101, 203, 'logo-design',
    '[{"name":"Concepts","days":2,"amount":"80.00"},{"name":"Polish","days":3,"amount":"70.00"}]') AS silent \gset
-- 4: an order support will cancel
SELECT milestones.create_offer(102, 204, 'explainer-video',
    '[{"name":"Script","days":3,"amount":"120.00"},{"name":"Cut","days":6,"amount":"180.00"}]') AS troubled \gset
-- 5 and 6: an offer withdrawn, an offer declined
SELECT milestones.create_offer(101, 205, 'logo-design', '[{"name":"Mascot","days":7,"amount":"250.00"}]') AS withdrawn \gset
SELECT milestones.create_offer(102, 206, 'explainer-video', '[{"name":"Teaser","days":4,"amount":"180.00"}]') AS declined \gset
-- 7: an order still waiting for its buyer at the end of the story
SELECT milestones.create_offer(101, 207, 'logo-design',
    '[{"name":"Icon set","days":5,"amount":"90.00"},{"name":"Guidelines","days":5,"amount":"90.00"}]', NULL) AS waiting \gset
-- 8: a brand kit; support will cancel one of its milestones and the order goes on
SELECT milestones.create_offer(101, 209, 'logo-design',
    '[{"name":"Logo","days":4,"amount":"150.00"},{"name":"Stationery","days":3,"amount":"120.00"},{"name":"Social templates","days":2,"amount":"90.00"}]',
    1) AS brandkit \gset
-- the minimum total and eligibility are enforced
\echo '(two refusals on purpose: a total of 100.00 or less; a seller support has not enabled)'
SELECT milestones.create_offer(101, 208, 'logo-design', '[{"name":"Tiny","days":1,"amount":"100.00"}]');
SELECT milestones.create_offer(103, 208, 'logo-design', '[{"name":"Big","days":1,"amount":"500.00"}]');

\echo '== Buyers place their orders: milestone 1 is charged'
SELECT s.order_id, s.state, s.current_milestone AS ms, s.milestone_state, s.due_at, s.charged
  FROM (VALUES (:logo, 201), (:video, 202), (:silent, 203), (:troubled, 204), (:waiting, 207), (:brandkit, 209)) AS b(order_id, buyer_id),
       LATERAL milestones.place_order(b.order_id, b.buyer_id) AS s
 ORDER BY s.order_id;
SELECT state FROM milestones.withdraw_offer(:withdrawn, 101);
SELECT state FROM milestones.decline_offer(:declined, 206);

\echo '== Wednesday 3 June: first deliveries; the logo buyer asks for a revision'
SET milestones.fake_now = '2026-06-03 15:00:00+00';
SELECT order_id, milestone_state, respond_by FROM milestones.deliver(:logo, 101, 'three sketch directions');
SELECT order_id, milestone_state, respond_by FROM milestones.deliver(:silent, 101, 'four concepts');
SELECT order_id, milestone_state, revisions_left FROM milestones.request_revision(:logo, 201, 'bolder lines, please');
SELECT order_id, milestone_state, respond_by FROM milestones.deliver(:logo, 101, 'sketches, bolder');
SELECT order_id, current_milestone AS ms, milestone_state, charged FROM milestones.accept(:logo, 201);

\echo '== Saturday 6 June: the video storyboard is accepted, support cancels the troubled order'
SET milestones.fake_now = '2026-06-06 10:00:00+00';
SELECT order_id, milestone_state FROM milestones.deliver(:video, 102, 'storyboard v1');
SELECT order_id, current_milestone AS ms, milestone_state, charged FROM milestones.accept(:video, 202);
SELECT order_id, state, reason, charged, refunded, paid_out
  FROM milestones.cancel(:troubled, 'agent.kim', 'seller_unresponsive', 'Seller missed the script deadline and stopped answering.');
-- support must give a reason from the cancellation_reasons list
\echo '(refused on purpose: a reason that is not on the list)'
SELECT milestones.cancel(:video, 'agent.kim', 'changed my mind');

\echo '== Saturday 6 June: the brand-kit buyer will make the social templates in-house; support cancels that milestone alone'
SELECT order_id, state, current_milestone AS ms, milestone_state, total, charged, refunded
  FROM milestones.cancel_milestone(:brandkit, 3, 'agent.kim', 'mutual_agreement', 'Buyer will make the social templates in-house.');
SELECT position, name, amount, state, final, reason, agent, note
  FROM milestones.milestone_status WHERE order_id = :brandkit ORDER BY position;
-- a milestone that has ended cannot be cancelled
\echo '(refused on purpose: a milestone that has ended)'
SELECT milestones.cancel_milestone(:logo, 1, 'agent.kim', 'mutual_agreement');

\echo '== Tuesday 9 June: the silent buyer''s window (3 June 15:00 + 5 days) has closed'
SET milestones.fake_now = '2026-06-09 12:00:00+00';
SELECT order_id, milestone, overdue, respond_by FROM milestones.awaiting_response;
\echo '(refused on purpose: an accept after the response window closed)'
SELECT milestones.accept(:silent, 203);
SELECT milestones.expire_overdue() AS expired_orders;
SELECT milestones.expire_overdue() AS expired_again;

\echo '== Friday 12 June: the logo is finished, the video buyer stops after two of three steps'
SET milestones.fake_now = '2026-06-12 09:00:00+00';
SELECT order_id, milestone_state FROM milestones.deliver(:logo, 101, 'refined logo');
SELECT order_id, current_milestone AS ms FROM milestones.accept(:logo, 201);
SELECT order_id, milestone_state, final_milestone FROM milestones.deliver(:logo, 101, 'full project: all final files');
SELECT order_id, state, reason, paid_out FROM milestones.accept(:logo, 201);
SELECT order_id, milestone_state FROM milestones.deliver(:video, 102, 'animation cut');
SELECT order_id, state, reason, charged, paid_out FROM milestones.stop(:video, 202);
\echo '(refused on purpose: a delivery to a stopped order)'
SELECT milestones.deliver(:video, 102, 'voice-over anyway');
SELECT order_id, milestone_state FROM milestones.deliver(:waiting, 101, 'icon set');
-- the brand kit goes on: after the logo, stationery starts and is now the final delivery
SELECT order_id, milestone_state FROM milestones.deliver(:brandkit, 101, 'logo, three colourways');
SELECT order_id, current_milestone AS ms, milestone_state, charged FROM milestones.accept(:brandkit, 209);
SELECT order_id, milestone_state, final_milestone FROM milestones.deliver(:brandkit, 101, 'letterhead and cards');

\echo '== What a DBA sees: order_status'
SELECT order_id, seller_id AS seller, buyer_id AS buyer, state, reason, milestone_count AS n,
       current_milestone AS ms, milestone_state, respond_by, revisions_left AS rev_left,
       total, charged, paid_out, refunded
  FROM milestones.order_status ORDER BY order_id;

\echo '== awaiting_response: deliveries waiting for a buyer, overdue first'
SELECT order_id, milestone, milestone_name, buyer_id, delivered_at, respond_by, overdue
  FROM milestones.awaiting_response;

\echo '== The ledger: every movement a balanced transaction'
SELECT txn_id, order_id, milestone AS ms, kind, account, party_id, debit, credit
  FROM milestones.ledger ORDER BY txn_id, entry_id;

\echo '== payouts: one per ended order'
SELECT order_id, seller_id, gross, fee, net, currency, state, reason, paid_at FROM milestones.payouts ORDER BY order_id;

\echo '== Account balances (the ledger sums to zero)'
SELECT COALESCE(account, '(all accounts)') AS account, sum(amount) AS balance
  FROM milestones.ledger_entries GROUP BY ROLLUP (account) ORDER BY account NULLS LAST;

\echo '== Event history of the video order'
SELECT event_id, event, actor_role, actor_id, order_state, position AS ms, milestone_state, created_at
  FROM milestones.events WHERE order_id = :video ORDER BY event_id;

\echo '== milestone_status of the brand kit: one milestone cancelled, the order went on'
SELECT position, name, state, final, started_at, delivered_at, completed_at, respond_by, reason
  FROM milestones.milestone_status WHERE order_id = :brandkit ORDER BY position;

\echo '== check_invariants(): no rows means the books are sound'
SELECT * FROM milestones.check_invariants();
