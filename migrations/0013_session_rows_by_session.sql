-- A session's messages and append keys by index, for the cascade that deletes them with the
-- session (a user's deletion deletes the user's sessions).
--
-- PostgreSQL runs a cascading foreign key as one `delete … where tenant_id = $1 and
-- session_id = $2` per deleted session. Neither index of session_messages could serve it
-- (both partial, on whether a message is archived), nor could session_append_keys' primary
-- key beyond its tenant: deleting a user with N sessions read the whole of session_messages N
-- times, and the tenant's append keys N times, inside the deletion's transaction.
--
-- One index on (tenant_id, session_id, archive_index, id) replaces the two partial ones of
-- session_messages: it serves the cascade, the live messages (`archive_index is null`, which
-- sort last) and an archive's messages in order, and a row version enters one index as before.
--
-- Building them locks the two tables against writes for as long as it takes: on large tables,
-- create them beforehand with `create index concurrently` under the same names and definitions.
create index if not exists session_messages_session_idx
  on session_messages (tenant_id, session_id, archive_index, id);
drop index if exists session_messages_live_idx;
drop index if exists session_messages_archive_idx;

create index if not exists session_append_keys_session_idx
  on session_append_keys (tenant_id, session_id);
