-- The durable job engine (src/engine). One row per job; a batch is a parent row (no
-- handler, status derived from its children) plus child rows.
--
-- Lanes: at most one job of a lane (tenant_id, lane) runs at a time, in id order. `ready`
-- marks the jobs a worker may claim: every laneless job, and the head of each lane (its
-- lowest-id pending or running job). Enqueue and every transition to a terminal state
-- hold the lane's advisory lock, so `ready` is computed and handed on without races.
create table jobs (
  id bigint generated always as identity primary key,
  tenant_id text not null references tenants (id),
  kind text not null,
  payload jsonb not null default '{}',
  lane text,
  status text not null default 'pending',
  ready boolean not null default false,
  is_parent boolean not null default false,
  parent_id bigint references jobs (id) on delete cascade,
  attempts integer not null default 0,
  max_attempts integer not null default 3,
  run_at timestamptz not null default now(),
  timeout_ms integer,
  lease_token bigint not null default 0,
  lease_expires_at timestamptz,
  locked_by text,
  idempotency_key text,
  payload_hash text,
  result jsonb,
  error jsonb,
  children_total integer not null default 0,
  children_succeeded integer not null default 0,
  children_failed integer not null default 0,
  children_cancelled integer not null default 0,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz not null default now(),
  constraint jobs_status_chk check (status in ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
  constraint jobs_kind_length_chk check (length(kind) between 1 and 200),
  constraint jobs_lane_length_chk check (lane is null or length(lane) between 1 and 600),
  constraint jobs_max_attempts_chk check (max_attempts between 1 and 1000),
  constraint jobs_parent_has_no_lane_chk check (not is_parent or (lane is null and not ready))
);

-- What a worker claims: ready, pending, due; served oldest first.
create index jobs_claim_idx on jobs (run_at, id) where status = 'pending' and ready;
-- Admission control counts pending jobs.
create index jobs_pending_idx on jobs (id) where status = 'pending';
-- A lane's active jobs in order (head lookups, admission counts).
create index jobs_lane_active_idx on jobs (tenant_id, lane, id)
  where lane is not null and status in ('pending', 'running');
-- The database itself refuses a second running job in a lane.
create unique index jobs_lane_running_uniq on jobs (tenant_id, lane)
  where lane is not null and status = 'running';
create index jobs_lease_expiry_idx on jobs (lease_expires_at) where status = 'running';
create index jobs_parent_idx on jobs (parent_id, id) where parent_id is not null;
create unique index jobs_idempotency_key_uniq on jobs (tenant_id, idempotency_key)
  where idempotency_key is not null;
create index jobs_tenant_created_idx on jobs (tenant_id, id);

-- Wake idle workers when jobs are inserted; delivered when the inserting transaction commits.
create function jobs_notify_insert() returns trigger language plpgsql as $$
begin
  perform pg_notify(tg_table_schema || '_jobs', '');
  return null;
end
$$;

create trigger jobs_notify_insert_trg after insert on jobs
  for each statement execute function jobs_notify_insert();
