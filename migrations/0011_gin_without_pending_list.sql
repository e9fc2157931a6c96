-- The full-text indexes of memories, events and turns write each entry into the index at
-- once instead of into a pending list (fastupdate off).
--
-- With the pending list, an insert is cheaper until the list reaches gin_pending_list_limit
-- (4 MB); then the insert that overflows it merges the whole list into the index before it
-- returns. On PostgreSQL autovacuum usually merges it first; PGlite has no autovacuum, and its
-- queries run on the process's event loop, so the merge stalled every request of the embedded
-- server: in the ingest benchmark after 1,800 ingests, the fake extractor's timer fired 226 ms
-- late at p99 and the overhead p99 was 252 ms, against 6.6-12.9 ms and 26.8-47.0 ms without
-- the pending list. Searches no longer scan an unsorted list either.
alter index memories_search_idx set (fastupdate = off);
alter index events_search_idx set (fastupdate = off);
alter index turns_search_idx set (fastupdate = off);
-- Turning it off keeps what the list already holds; merge it now.
select gin_clean_pending_list('memories_search_idx'::regclass);
select gin_clean_pending_list('events_search_idx'::regclass);
select gin_clean_pending_list('turns_search_idx'::regclass);
