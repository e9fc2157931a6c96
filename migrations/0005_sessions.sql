-- Sessions (src/sessions): a live transcript per session, archived by commits.
--
-- A message is live while archive_index is null. A commit locks the session row, sets
-- archive_index on every live message it sees (one statement, one snapshot taken after the
-- lock) and inserts the archive: a message is in exactly one archive or still live, and a
-- message appended while a commit runs is either archived by it (committed before its
-- snapshot) or stays live for the next one. Nothing is copied, nothing is cleared.
create table sessions (
  tenant_id text not null references tenants (id),
  id text not null,
  user_id text not null,
  -- Unique for the life of this row: a session id reused after its user was deleted gets a
  -- new one, so its archive jobs' keys never meet the old ones.
  generation bigint generated always as identity,
  archive_count integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint sessions_pkey primary key (tenant_id, id)
);
create index sessions_user_idx on sessions (tenant_id, user_id);

create table session_messages (
  id bigint generated always as identity primary key,
  tenant_id text not null,
  session_id text not null,
  role text not null,
  content text not null,
  created_at timestamptz not null default now(),
  archive_index integer,
  constraint session_messages_session_fk foreign key (tenant_id, session_id)
    references sessions (tenant_id, id) on delete cascade,
  constraint session_messages_role_chk check (role in ('user', 'assistant', 'system', 'tool'))
);
create index session_messages_live_idx on session_messages (tenant_id, session_id, id)
  where archive_index is null;
create index session_messages_archive_idx on session_messages (tenant_id, session_id, archive_index, id)
  where archive_index is not null;

-- One row per commit that archived something. Its status is its operation's (jobs.status).
create table session_archives (
  tenant_id text not null,
  session_id text not null,
  archive_index integer not null,
  message_count integer not null,
  operation_id bigint not null,
  summary text,
  -- The commit request's idempotency key, if it had one.
  request_key text,
  created_at timestamptz not null default now(),
  summarized_at timestamptz,
  constraint session_archives_pkey primary key (tenant_id, session_id, archive_index),
  constraint session_archives_session_fk foreign key (tenant_id, session_id)
    references sessions (tenant_id, id) on delete cascade
);
create unique index session_archives_request_key_uniq on session_archives (tenant_id, request_key)
  where request_key is not null;

-- Idempotency keys of message appends: a replayed append adds nothing.
create table session_append_keys (
  tenant_id text not null,
  key text not null,
  session_id text not null,
  payload_hash text not null,
  created_at timestamptz not null default now(),
  constraint session_append_keys_pkey primary key (tenant_id, key),
  constraint session_append_keys_session_fk foreign key (tenant_id, session_id)
    references sessions (tenant_id, id) on delete cascade
);
