-- Offline sync (src/sync): timestamped segments of a device's backlog, assigned to the user's
-- conversations in started_at order, whatever order they arrive or finish transcribing in.

-- One row per user who synced: the lock that orders every assignment of that user, across
-- batches, devices and processes.
create table sync_users (
  tenant_id text not null references tenants (id),
  user_id text not null,
  updated_at timestamptz not null default now(),
  constraint sync_users_pkey primary key (tenant_id, user_id)
);

create table conversations (
  id bigint generated always as identity primary key,
  tenant_id text not null references tenants (id),
  user_id text not null,
  started_at timestamptz not null,
  finished_at timestamptz not null,
  segment_count integer not null default 0,
  summary text,
  -- How many times a summary was written (each batch re-summarizes what it touched once).
  summary_count integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index conversations_user_time_idx on conversations (tenant_id, user_id, started_at);

-- A batch: its parent operation, its progress (how many of its segments, in time order, the
-- cursor has passed) and its counts.
create table sync_batches (
  id bigint generated always as identity primary key,
  tenant_id text not null references tenants (id),
  user_id text not null,
  parent_id bigint,
  total integer not null default 0,
  cursor integer not null default 0,
  merge_window_s integer not null,
  assigned integer not null default 0,
  skipped integer not null default 0,
  failed integer not null default 0,
  duplicate integer not null default 0,
  created bigint[] not null default '{}',
  touched bigint[] not null default '{}',
  finalized boolean not null default false,
  created_at timestamptz not null default now()
);
create index sync_batches_user_idx on sync_batches (tenant_id, user_id);

-- The per-user segment ledger: a segment id is processed once per user, whatever batch
-- carries it. `ord` is the segment's place in its batch's time order.
create table sync_segments (
  tenant_id text not null references tenants (id),
  user_id text not null,
  id text not null,
  batch_id bigint not null,
  ord integer not null,
  started_at timestamptz not null,
  ended_at timestamptz not null,
  -- pending (transcription to come), ready (text to assign), then assigned; skipped and
  -- failed are final states too. `processed`: the batch's cursor has passed it.
  state text not null default 'pending',
  processed boolean not null default false,
  transcript text,
  reason text,
  conversation_id bigint references conversations (id) on delete set null,
  audio_id bigint,
  -- The segment's transcription job: a segment whose job ended without a result (cancelled,
  -- or failed by the reaper) is passed as failed by the cursor.
  job_id bigint,
  created_at timestamptz not null default now(),
  constraint sync_segments_pkey primary key (tenant_id, user_id, id),
  constraint sync_segments_state_chk
    check (state in ('pending', 'ready', 'skipped', 'failed', 'assigned')),
  constraint sync_segments_time_chk check (ended_at >= started_at)
);
create index sync_segments_batch_idx on sync_segments (batch_id, ord) where not processed;
create index sync_segments_conversation_idx on sync_segments (conversation_id, started_at)
  where conversation_id is not null;

-- Uploaded audio, kept until a scheduled job deletes it after the retention delay.
create table sync_audio (
  id bigint generated always as identity primary key,
  tenant_id text not null references tenants (id),
  user_id text not null,
  segment_id text not null,
  wav bytea not null,
  created_at timestamptz not null default now()
);
create index sync_audio_user_idx on sync_audio (tenant_id, user_id);
