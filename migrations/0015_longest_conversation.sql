-- The longest of a user's conversations, so that a sync's cursor finds the conversations its
-- segments can reach by a range of start times instead of by reading most of the user's.
--
-- Every segment's job looks up the user's conversations overlapping [lo - window, hi + window]
-- (src/sync/sync.ts, `advance`). Through conversations_user_time_idx only `started_at <=
-- hi + window` bounded the read: for new recordings, later than everything stored, that was
-- every conversation of the user, at every segment's job. A conversation that ends at or after
-- lo - window starts at or after lo - window - its length; with the longest length as a lower
-- bound on started_at, the index reads the window, widened by that length.
--
-- Kept by the statements that write conversations (all of them in `advance`, under the user's
-- lock); it only grows, as a bound may. Held as a time without days (`26:00:00`, not `1 day
-- 02:00:00`): a day subtracted from a timestamptz is a calendar day, 23 hours across a change
-- to summer time, and the bound would be an hour short.
--
-- Upgrading: stop the processes of earlier versions before migrating; they would extend
-- conversations without raising this bound.
alter table sync_users add column longest_conversation interval not null default interval '0';
update sync_users u
   set longest_conversation = coalesce(
     (select make_interval(secs => max(extract(epoch from c.finished_at - c.started_at)))
        from conversations c
       where c.tenant_id = u.tenant_id and c.user_id = u.user_id),
     interval '0');
