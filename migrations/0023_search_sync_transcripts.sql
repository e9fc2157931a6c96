-- Search finds what a device synced: the transcripts of segments assigned to a conversation
-- (src/memory/read.ts, type `conversation`, one hit per conversation). They used to be left
-- out: search read memories, events and ingested turns only, so a user's synced speech could
-- not be found at all.
--
-- An index on the expression, like the owner indexes of 0016 (words AND the owner's lexeme),
-- rather than a stored column: adding one would rewrite the segment ledger. Only assigned
-- segments are in it. A search computes the vector again for each of the user's matching
-- segments to rank them (the other kinds rank a stored vector).
--
-- Building it locks sync_segments against writes for as long as it takes: on a large table,
-- create it beforehand with `create index concurrently` under the same name and definition.
create index if not exists sync_segments_owner_search_idx on sync_segments
  using gin ((to_tsvector('english', coalesce(transcript, '')) || search_owner(tenant_id, user_id)))
  with (fastupdate = off)
  where conversation_id is not null;
