-- lane_lock_key() as the planner can inline it. Its body joined text and an integer with
-- `||` (`anytextcat`, which is only stable), so this immutable function was never inlined:
-- every call ran it as a function of its own, planning its one statement anew: 0.05 ms a
-- lane an enqueue locks, against 0.008 ms inlined (a loop of 20,000 lock statements), about
-- 5 % of `enqueue_jobs` for one job, too little to show end to end. The explicit cast makes
-- every operator immutable; the text, and so every key, is the same as before, and the same
-- as the copy written out in finish_jobs (test/integration/upgrade.pg.test.ts).
create or replace function lane_lock_key(tenant text, lane text) returns bigint
language sql immutable parallel safe
as $$ select hashtextextended('lane:' || length(tenant)::text || ':' || tenant || ':' || lane, 0) $$;
