-- The memory of each user (tenant_id, user_id), written only by the memory jobs of the
-- user's lane (src/memory), so every write below happens in ingest order.

-- Facts: one row per normalized text per user (the dedup key).
create table memories (
  id bigint generated always as identity primary key,
  tenant_id text not null references tenants (id),
  user_id text not null,
  text text not null,
  norm text not null,
  source text,
  operation_id bigint,
  occurred_at timestamptz,
  created_at timestamptz not null default now(),
  -- A btree entry must stay small: the dedup key is the hash of the normalized text.
  norm_key text generated always as (md5(norm)) stored,
  search tsvector generated always as (to_tsvector('english', text)) stored,
  constraint memories_dedup_uniq unique (tenant_id, user_id, norm_key)
);
create index memories_user_idx on memories (tenant_id, user_id, id);
create index memories_search_idx on memories using gin (search);

create table profile_attributes (
  tenant_id text not null references tenants (id),
  user_id text not null,
  key text not null,
  value text not null,
  operation_id bigint,
  updated_at timestamptz not null default now(),
  constraint profile_attributes_pkey primary key (tenant_id, user_id, key)
);

-- Temporal events: dedup on date + normalized description.
create table events (
  id bigint generated always as identity primary key,
  tenant_id text not null references tenants (id),
  user_id text not null,
  date date not null,
  description text not null,
  norm text not null,
  operation_id bigint,
  created_at timestamptz not null default now(),
  norm_key text generated always as (md5(norm)) stored,
  search tsvector generated always as (to_tsvector('english', description)) stored,
  constraint events_dedup_uniq unique (tenant_id, user_id, date, norm_key)
);
create index events_user_date_idx on events (tenant_id, user_id, date);
create index events_search_idx on events using gin (search);

-- Every ingested turn, for conversation search.
create table turns (
  id bigint generated always as identity primary key,
  tenant_id text not null references tenants (id),
  user_id text not null,
  user_query text not null,
  agent_response text,
  source text,
  session_id text,
  operation_id bigint,
  occurred_at timestamptz not null default now(),
  search tsvector generated always as (
    to_tsvector('english', user_query || ' ' || coalesce(agent_response, ''))) stored
);
create index turns_user_idx on turns (tenant_id, user_id, id);
create index turns_search_idx on turns using gin (search);

create table user_summaries (
  tenant_id text not null references tenants (id),
  user_id text not null,
  turn_count integer not null default 0,
  last_ingested_at timestamptz,
  constraint user_summaries_pkey primary key (tenant_id, user_id)
);
