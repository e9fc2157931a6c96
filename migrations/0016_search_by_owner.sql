-- Full-text search reads one user's matches, not every tenant's.
--
-- A search asks for a user's rows matching the words. The GIN indexes on `search` alone gave
-- the planner two ways: every row of every tenant holding the words (then filtered by user),
-- or every row of the user (then each one's tsvector tested). A word common elsewhere but rare
-- for a user with a long history cost the larger of the two: 23 ms in a table of 250,000
-- turns where the user had 50,000 and the word 50,000 other matches, and it grows with the
-- whole table.
--
-- Each row's vector now carries one more lexeme naming its owner (tenant and user), and the
-- search asks for the words AND that lexeme: GIN intersects the two lists (2.6 ms in the same
-- table). The owner lexeme starts with a space, which the built-in parser never puts in a
-- lexeme, so no word matches it (and every search also filters on tenant and user); ranking
-- still uses `search` alone. A btree_gin index on
-- (tenant_id, user_id, search) would do as much, but an extension is one per database and
-- lives in one schema, where Mnemo keeps one schema per deployment (dropping a schema that
-- held it would drop the other schemas' indexes with it).
--
-- The two functions must never change: the indexes hold what they computed. A new owner
-- lexeme would be new functions and new indexes.
--
-- Building the indexes locks memories, events and turns against writes for as long as it
-- takes: on large tables, create them beforehand with `create index concurrently` under the
-- same names and definitions (after creating the two functions).
create or replace function search_owner(p_tenant text, p_user text) returns tsvector
language sql immutable parallel safe
as $$ select array_to_tsvector(array[' ' || md5(p_tenant || chr(31) || p_user)]) $$;

create or replace function search_owner_query(p_tenant text, p_user text) returns tsquery
language sql immutable parallel safe
as $$ select quote_literal(' ' || md5(p_tenant || chr(31) || p_user))::tsquery $$;

create index if not exists memories_owner_search_idx on memories
  using gin ((search || search_owner(tenant_id, user_id))) with (fastupdate = off);
drop index if exists memories_search_idx;
create index if not exists events_owner_search_idx on events
  using gin ((search || search_owner(tenant_id, user_id))) with (fastupdate = off);
drop index if exists events_search_idx;
create index if not exists turns_owner_search_idx on turns
  using gin ((search || search_owner(tenant_id, user_id))) with (fastupdate = off);
drop index if exists turns_search_idx;
