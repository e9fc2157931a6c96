CREATE SCHEMA mnemo;

CREATE FUNCTION mnemo.assert_moved(finished jsonb, must_move bigint[]) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
declare
  missing bigint[];
begin
  select array_agg(m) into missing from unnest(must_move) as m
  where not exists (
    select 1 from jsonb_array_elements(finished -> 'moved') as e where (e ->> 0)::bigint = m);
  if missing is not null then
    raise exception using errcode = 'MNL01',
      message = format('jobs %s are no longer held by this worker', missing);
  end if;
  return finished;
end
$$;

CREATE FUNCTION mnemo.claim_jobs(lim integer, lease_ms integer, worker text, kinds text[]) RETURNS TABLE(id bigint, tenant_id text, kind text, payload jsonb, lane text, attempts integer, max_attempts integer, lease_token bigint, timeout_ms integer, parent_id bigint, waited_s double precision)
    LANGUAGE plpgsql
    AS $$
begin
  -- For the rest of the calling transaction, which the worker ends right after the claim.
  -- (A SET clause on the function would be undone on exit but costs more per call.)
  perform set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true);
  -- PL/pgSQL keeps this statement's plan for the session: it is parsed and planned once.
  return query
  with picked as (
    select j.id from jobs j
    where j.status = 'pending' and j.ready and j.run_at <= now() and j.kind = any(kinds)
    order by j.run_at, j.id
    limit lim
    for update skip locked
  ),
  claimed as (
    update jobs j set status = 'running', attempts = j.attempts + 1,
      lease_token = j.lease_token + 1,
      lease_expires_at = now() + make_interval(secs => lease_ms / 1000.0),
      locked_by = worker, started_at = now(), updated_at = now()
    from picked where j.id = picked.id
    returning j.id, j.tenant_id, j.kind, j.payload, j.lane, j.attempts, j.max_attempts,
      j.lease_token, j.timeout_ms, j.parent_id,
      greatest(0, extract(epoch from now() - j.run_at))::float8 as waited_s
  ),
  parents as (
    update jobs p set status = 'running', started_at = now(), updated_at = now()
    where p.id in (select c.parent_id from claimed c where c.parent_id is not null)
      and p.status = 'pending'
    returning p.id
  )
  select c.id, c.tenant_id, c.kind, c.payload, c.lane, c.attempts, c.max_attempts, c.lease_token,
    c.timeout_ms, c.parent_id, c.waited_s
  from claimed c;
end
$$;

CREATE TABLE mnemo.jobs (
    id bigint NOT NULL,
    tenant_id text NOT NULL,
    kind text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    lane text,
    status text DEFAULT 'pending'::text NOT NULL,
    ready boolean DEFAULT false NOT NULL,
    is_parent boolean DEFAULT false NOT NULL,
    parent_id bigint,
    attempts integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 3 NOT NULL,
    run_at timestamp with time zone DEFAULT now() NOT NULL,
    timeout_ms integer,
    lease_token bigint DEFAULT 0 NOT NULL,
    lease_expires_at timestamp with time zone,
    locked_by text,
    idempotency_key text,
    payload_hash text,
    result jsonb,
    error jsonb,
    children_total integer DEFAULT 0 NOT NULL,
    children_succeeded integer DEFAULT 0 NOT NULL,
    children_failed integer DEFAULT 0 NOT NULL,
    children_cancelled integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    waiter text,
    CONSTRAINT jobs_kind_length_chk CHECK (((length(kind) >= 1) AND (length(kind) <= 200))),
    CONSTRAINT jobs_lane_length_chk CHECK (((lane IS NULL) OR ((length(lane) >= 1) AND (length(lane) <= 600)))),
    CONSTRAINT jobs_max_attempts_chk CHECK (((max_attempts >= 1) AND (max_attempts <= 1000))),
    CONSTRAINT jobs_parent_has_no_lane_chk CHECK (((NOT is_parent) OR ((lane IS NULL) AND (NOT ready)))),
    CONSTRAINT jobs_status_chk CHECK ((status = ANY (ARRAY['pending'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text])))
);

COMMENT ON COLUMN mnemo.jobs.waiter IS 'who waits for the job: null = anyone (announce its finish), '''' = nobody, else the engine id of the process whose caller waits (announced only when another process finishes it)';

CREATE FUNCTION mnemo.enqueue_jobs(p_tenant text, p_jobs jsonb, p_parent bigint, p_lane_limit integer, p_claim_worker text DEFAULT NULL::text, p_lease_ms integer DEFAULT NULL::integer, p_claim_kinds text[] DEFAULT NULL::text[], p_defer_notify boolean DEFAULT false) RETURNS SETOF mnemo.jobs
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
declare
  v record;
begin
  -- Lane locks in one global order (by key), so that two enqueuers cannot deadlock.
  perform count(pg_advisory_xact_lock(keys.k)) from (
    select distinct lane_lock_key(p_tenant, r.lane) as k
    from jsonb_to_recordset(p_jobs) as r(lane text)
    where r.lane is not null
    order by 1) as keys;

  for v in
    select r.lane, count(*)::integer as adding,
      (select count(*) from (select 1 from jobs j
         where j.tenant_id = p_tenant and j.lane = r.lane and j.status in ('pending', 'running')
         limit p_lane_limit + 1) as s)::integer as unfinished
    from jsonb_to_recordset(p_jobs) as r(lane text)
    where r.lane is not null
    group by r.lane
  loop
    if v.unfinished + v.adding > p_lane_limit then
      raise exception using
        errcode = 'MNQ01',
        message = format('lane %s holds %s unfinished jobs (limit %s)',
          to_json(v.lane), v.unfinished, p_lane_limit);
    end if;
  end loop;

  if p_defer_notify then
    perform set_config('mnemo.defer_notify', 'on', true);
  end if;
  return query
  insert into jobs as j (tenant_id, kind, payload, lane, ready, run_at, max_attempts, timeout_ms,
    idempotency_key, payload_hash, parent_id, waiter, status, attempts, lease_token,
    lease_expires_at, locked_by, started_at)
  select p_tenant, c.kind, c.payload, c.lane, c.ready, coalesce(c.run_at, now()), c.max_attempts,
    c.timeout_ms, c.idempotency_key, c.payload_hash, p_parent, c.waiter,
    case when c.claim then 'running' else 'pending' end,
    case when c.claim then 1 else 0 end,
    case when c.claim then (4294967296 + floor(random() * 4.5e15))::bigint else 0 end,
    case when c.claim then now() + make_interval(secs => p_lease_ms / 1000.0) end,
    case when c.claim then p_claim_worker end,
    case when c.claim then now() end
  from (
    select r.*, r.ready and p_claim_worker is not null and p_parent is null
      and jsonb_array_length(p_jobs) = 1 and r.kind = any(p_claim_kinds)
      and (r.run_at is null or r.run_at <= now()) as claim
    from (
      -- A scalar subquery, probed per job through jobs_lane_active_idx: as NOT EXISTS the
      -- planner (which takes jsonb_to_recordset for 100 rows) hashed every active job of
      -- the tenant on each call.
      select r.*, r.lane is null or (r.first and (
          select a.id from jobs a
          where a.tenant_id = p_tenant and a.lane = r.lane and a.status in ('pending', 'running')
          limit 1) is null)
        as ready
      from jsonb_to_recordset(p_jobs) as r(ord integer, kind text, payload jsonb, lane text,
        first boolean, run_at timestamptz, max_attempts integer, timeout_ms integer,
        idempotency_key text, payload_hash text, waiter text)
    ) as r
  ) as c
  order by c.ord
  on conflict (tenant_id, idempotency_key) where idempotency_key is not null do nothing
  returning j.*;
  if p_defer_notify then
    perform set_config('mnemo.defer_notify', '', true);
  end if;
end
$$;

CREATE FUNCTION mnemo.finish_jobs(transitions jsonb, ids bigint[], jobs_channel text, done_channel text, claim_limit integer, lease_ms integer, worker text, kinds text[], announcer text, defer_notify boolean, want bigint[]) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
declare
  result jsonb;
  claimed jsonb := '[]';
  promoted_ids bigint[];
  announce text[];
  wake boolean;
  v_id bigint;
  v_parent bigint;
  parent_ids bigint[];
  v_row jsonb;
  want_rows jsonb := '[]';
begin
  -- Lane locks of every terminal move, in one global order (no deadlock between lockers).
  perform pg_advisory_xact_lock(k) from (
    -- lane_lock_key(), written out: a function call per row costs more than the rest.
    select distinct hashtextextended('lane:' || length(t.tenant_id) || ':' || t.tenant_id || ':' || t.lane, 0) as k
    from jsonb_to_recordset(transitions) as t(tenant_id text, lane text, to_status text)
    where t.lane is not null and t.to_status in ('succeeded', 'failed', 'cancelled')
    order by 1) as keys;

  -- Batch parents in id order, so two completions of children of the same parents queue
  -- instead of deadlocking. A few jobs' parents are read one primary-key lookup at a time.
  if cardinality(ids) <= 16 then
    foreach v_id in array ids loop
      select j.parent_id into v_parent from jobs j where j.id = v_id;
      if v_parent is not null then
        parent_ids := parent_ids || v_parent;
      end if;
    end loop;
    for v_parent in select distinct u from unnest(parent_ids) as u order by u loop
      perform 1 from jobs p where p.id = v_parent for update;
    end loop;
  else
    perform 1 from jobs p
    where p.id in (select c.parent_id from jobs c where c.id = any(ids) and c.parent_id is not null)
    order by p.id for update;
  end if;

  with o as (
    select * from jsonb_to_recordset(transitions) as o(id bigint, token bigint, from_status text,
      to_status text, result jsonb, error jsonb, delay_ms int, expired_only boolean, refund boolean)
  ),
  done as (
    update jobs j set
      status = o.to_status,
      result = case when o.to_status = 'succeeded' then o.result else j.result end,
      error = case when o.to_status = 'succeeded' then null else coalesce(o.error, j.error) end,
      run_at = case when o.to_status = 'pending'
        then now() + make_interval(secs => coalesce(o.delay_ms, 0) / 1000.0) else j.run_at end,
      attempts = j.attempts - case when coalesce(o.refund, false) then 1 else 0 end,
      finished_at = case when o.to_status in ('succeeded', 'failed', 'cancelled') then now() else null end,
      lease_expires_at = null,
      locked_by = null,
      updated_at = now()
    from o
    -- id = any(ids) gives the planner primary-key lookups; a join on the record set alone
    -- is planned as a sequential scan of jobs.
    where j.id = any(ids) and j.id = o.id and j.status = o.from_status and not j.is_parent
      and (o.token is null or j.lease_token = o.token)
      and (not coalesce(o.expired_only, false) or j.lease_expires_at < now())
    returning j.id, j.tenant_id, j.lane, j.parent_id, j.status, j.waiter
  ),
  terminal as (select * from done where status in ('succeeded', 'failed', 'cancelled')),
  lanes as (select distinct t.tenant_id, t.lane from terminal t where t.lane is not null),
  -- The lane's next job is its lowest-id unfinished job once the finished ones are gone;
  -- it becomes claimable unless it already is (or runs).
  heads as (
    select n.id from lanes l cross join lateral (
      select a.id, a.status, a.ready from jobs a
      where a.tenant_id = l.tenant_id and a.lane = l.lane and a.status in ('pending', 'running')
        and a.id not in (select t.id from terminal t)
      order by a.id limit 1) as n
    where n.status = 'pending' and not n.ready
  ),
  promoted as (
    update jobs p set ready = true, updated_at = now() from heads where p.id = heads.id
    returning p.id
  ),
  counts as (
    select t.parent_id,
      count(*) filter (where t.status = 'succeeded')::int as s,
      count(*) filter (where t.status = 'failed')::int as f,
      count(*) filter (where t.status = 'cancelled')::int as c
    from terminal t where t.parent_id is not null group by t.parent_id
  ),
  parents as (
    update jobs p set
      children_succeeded = p.children_succeeded + c.s,
      children_failed = p.children_failed + c.f,
      children_cancelled = p.children_cancelled + c.c,
      status = case
        when p.children_succeeded + p.children_failed + p.children_cancelled + c.s + c.f + c.c
          < p.children_total then p.status
        when p.children_failed + c.f > 0 then 'failed'
        when p.children_cancelled + c.c > 0 then 'cancelled'
        else 'succeeded' end,
      finished_at = case
        when p.children_succeeded + p.children_failed + p.children_cancelled + c.s + c.f + c.c
          >= p.children_total then now() else null end,
      updated_at = now()
    from counts c where p.id = c.parent_id
    returning p.id, p.status, p.waiter
  ),
  finished as (
    select t.id, t.waiter from terminal t
    union all
    select p.id, p.waiter from parents p where p.status in ('succeeded', 'failed', 'cancelled')
  ),
  -- NOTIFY payloads stop at 8000 bytes: 300 ids a notification.
  chunks as (
    select string_agg(x.id::text, ',') as id_list
    from (select fin.id, (row_number() over ()) / 300 as chunk from finished fin
          where fin.waiter is null or (fin.waiter <> '' and fin.waiter <> announcer)) x
    group by x.chunk
  )
  select jsonb_build_object(
    'moved', (select coalesce(jsonb_agg(jsonb_build_array(d.id, d.status)), '[]') from done d),
    'promoted', (select count(*) from promoted),
    'parents', (select coalesce(jsonb_agg(jsonb_build_array(p.id, p.status)), '[]') from parents p)),
    (select array_agg(pr.id) from promoted pr),
    (select coalesce(array_agg(ch.id_list), '{}') from chunks ch)
  into result, promoted_ids, announce;

  if claim_limit > 0 or (claim_limit < 0 and promoted_ids is not null) then
    select coalesce(jsonb_agg(to_jsonb(c)), '[]') into claimed
    from claim_jobs(abs(claim_limit), lease_ms, worker, kinds) c;
  end if;
  wake := promoted_ids is not null
    and exists (select 1 from jobs w where w.id = any(promoted_ids) and w.status = 'pending');
  if not defer_notify then
    if wake then
      perform pg_notify(jobs_channel, '');
    end if;
    perform pg_notify(done_channel, a) from unnest(announce) as a;
  end if;
  if cardinality(want) <= 16 then
    foreach v_id in array want loop
      select to_jsonb(w) into v_row from jobs w
      where w.id = v_id and w.status in ('succeeded', 'failed', 'cancelled');
      if found then
        want_rows := want_rows || jsonb_build_array(v_row);
      end if;
    end loop;
  else
    select coalesce(jsonb_agg(to_jsonb(w)), '[]') into want_rows from jobs w
    where w.id = any(want) and w.status in ('succeeded', 'failed', 'cancelled');
  end if;
  return result || jsonb_build_object('claimed', claimed, 'wake', wake,
    'announce', to_jsonb(announce), 'rows', want_rows);
end
$$;

CREATE FUNCTION mnemo.jobs_notify_insert() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
  if coalesce(current_setting('mnemo.defer_notify', true), '') <> 'on'
     and exists (select 1 from inserted where status = 'pending' and ready) then
    perform pg_notify(tg_table_schema || '_jobs', '');
  end if;
  return null;
end
$$;

CREATE FUNCTION mnemo.lane_lock_key(tenant text, lane text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ select hashtextextended('lane:' || length(tenant)::text || ':' || tenant || ':' || lane, 0) $$;

CREATE FUNCTION mnemo.search_owner(p_tenant text, p_user text) RETURNS tsvector
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ select array_to_tsvector(array[' ' || md5(p_tenant || chr(31) || p_user)]) $$;

CREATE FUNCTION mnemo.search_owner_query(p_tenant text, p_user text) RETURNS tsquery
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ select quote_literal(' ' || md5(p_tenant || chr(31) || p_user))::tsquery $$;

CREATE FUNCTION mnemo.write_turn(p jsonb) RETURNS jsonb
    LANGUAGE plpgsql
    AS $$
declare
  v_tenant text := p->>'tenant_id';
  v_user text := p->>'user_id';
  v_operation bigint := (p->>'operation_id')::bigint;
  v_occurred timestamptz := (p->>'occurred_at')::timestamptz;
  v_out jsonb;
begin
  with
    profile_set as (
      insert into profile_attributes (tenant_id, user_id, key, value, operation_id)
      select v_tenant, v_user, a.key, a.value, v_operation from jsonb_each_text(p->'set') as a
      on conflict (tenant_id, user_id, key)
      do update set value = excluded.value, operation_id = excluded.operation_id, updated_at = now()
      returning key),
    profile_unset as (
      delete from profile_attributes
      where tenant_id = v_tenant and user_id = v_user
        and key = any (array(select jsonb_array_elements_text(p->'unset')))
      returning key),
    facts as (
      insert into memories (tenant_id, user_id, text, norm, source, operation_id, occurred_at)
      select v_tenant, v_user, m.t, m.n, p->>'source', v_operation, v_occurred
      from rows from (jsonb_array_elements_text(p->'memories'),
                      jsonb_array_elements_text(p->'memory_norms')) with ordinality as m(t, n, i)
      order by m.i
      on conflict (tenant_id, user_id, norm_key) do nothing
      returning id, text),
    dated as (
      insert into events (tenant_id, user_id, date, description, norm, operation_id)
      select v_tenant, v_user, (e.value->>'date')::date, e.value->>'description',
             e.value->>'norm', v_operation
      from jsonb_array_elements(p->'events') with ordinality as e(value, i)
      order by e.i
      on conflict (tenant_id, user_id, date, norm_key) do nothing
      returning id, date::text as date, description),
    turn as (
      insert into turns (tenant_id, user_id, user_query, agent_response, source, session_id,
        operation_id, occurred_at)
      values (v_tenant, v_user, p->>'user_query', p->>'agent_response', p->>'source',
        p->>'session_id', v_operation, coalesce(v_occurred, now()))
      returning id),
    summary as (
      insert into user_summaries as s (tenant_id, user_id, turn_count, last_ingested_at)
      values (v_tenant, v_user, 1, now())
      on conflict (tenant_id, user_id)
      do update set turn_count = s.turn_count + 1, last_ingested_at = now()
      returning turn_count)
  select jsonb_build_object(
    'memories', jsonb_build_object(
      'added', (select coalesce(jsonb_agg(jsonb_build_object('id', 'mem_' || f.id, 'text', f.text)
                                          order by f.id), '[]'::jsonb) from facts f),
      'duplicates', jsonb_array_length(p->'memories') - (select count(*) from facts)),
    'profile', jsonb_build_object(
      'set', p->'set',
      'unset', p->'unset'),
    'events', jsonb_build_object(
      'added', (select coalesce(jsonb_agg(jsonb_build_object('id', 'evt_' || d.id, 'date', d.date,
                                                             'description', d.description)
                                          order by d.id), '[]'::jsonb) from dated d),
      'duplicates', jsonb_array_length(p->'events') - (select count(*) from dated)),
    'summary', jsonb_build_object(
      'turn_count', (select turn_count from summary)))
  into v_out;
  -- The turn and the unset run without being read: PostgreSQL runs every data-modifying
  -- WITH to completion.
  return v_out;
end;
$$;

CREATE TABLE mnemo.api_keys (
    id text NOT NULL,
    tenant_id text NOT NULL,
    name text,
    secret_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone
);

CREATE TABLE mnemo.conversations (
    id bigint NOT NULL,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    started_at timestamp with time zone NOT NULL,
    finished_at timestamp with time zone NOT NULL,
    segment_count integer DEFAULT 0 NOT NULL,
    summary text,
    summary_count integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE mnemo.conversations ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME mnemo.conversations_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE mnemo.events (
    id bigint NOT NULL,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    date date NOT NULL,
    description text NOT NULL,
    norm text NOT NULL,
    operation_id bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    norm_key text GENERATED ALWAYS AS (md5(norm)) STORED,
    search tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, description)) STORED
);

ALTER TABLE mnemo.events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME mnemo.events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

ALTER TABLE mnemo.jobs ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME mnemo.jobs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE mnemo.memories (
    id bigint NOT NULL,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    text text NOT NULL,
    norm text NOT NULL,
    source text,
    operation_id bigint,
    occurred_at timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    norm_key text GENERATED ALWAYS AS (md5(norm)) STORED,
    search tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED
);

ALTER TABLE mnemo.memories ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME mnemo.memories_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE mnemo.migrations (
    id integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE mnemo.profile_attributes (
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    operation_id bigint,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE mnemo.session_append_keys (
    tenant_id text NOT NULL,
    key text NOT NULL,
    session_id text NOT NULL,
    payload_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE mnemo.session_archives (
    tenant_id text NOT NULL,
    session_id text NOT NULL,
    archive_index integer NOT NULL,
    message_count integer NOT NULL,
    operation_id bigint NOT NULL,
    summary text,
    request_key text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    summarized_at timestamp with time zone,
    status text
);

CREATE TABLE mnemo.session_messages (
    id bigint NOT NULL,
    tenant_id text NOT NULL,
    session_id text NOT NULL,
    role text NOT NULL,
    content text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    archive_index integer,
    given_back boolean DEFAULT false NOT NULL,
    CONSTRAINT session_messages_role_chk CHECK ((role = ANY (ARRAY['user'::text, 'assistant'::text, 'system'::text, 'tool'::text])))
);

ALTER TABLE mnemo.session_messages ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME mnemo.session_messages_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE mnemo.sessions (
    tenant_id text NOT NULL,
    id text NOT NULL,
    user_id text NOT NULL,
    generation bigint NOT NULL,
    archive_count integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE mnemo.sessions ALTER COLUMN generation ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME mnemo.sessions_generation_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE mnemo.sync_audio (
    id bigint NOT NULL,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    segment_id text NOT NULL,
    wav bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE mnemo.sync_audio ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME mnemo.sync_audio_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE mnemo.sync_batches (
    id bigint NOT NULL,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    parent_id bigint,
    total integer DEFAULT 0 NOT NULL,
    cursor integer DEFAULT 0 NOT NULL,
    merge_window_s integer NOT NULL,
    assigned integer DEFAULT 0 NOT NULL,
    skipped integer DEFAULT 0 NOT NULL,
    failed integer DEFAULT 0 NOT NULL,
    duplicate integer DEFAULT 0 NOT NULL,
    created bigint[] DEFAULT '{}'::bigint[] NOT NULL,
    touched bigint[] DEFAULT '{}'::bigint[] NOT NULL,
    finalized boolean DEFAULT false NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE mnemo.sync_batches ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME mnemo.sync_batches_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE mnemo.sync_segments (
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    id text NOT NULL,
    batch_id bigint NOT NULL,
    ord integer NOT NULL,
    started_at timestamp with time zone NOT NULL,
    ended_at timestamp with time zone NOT NULL,
    state text DEFAULT 'pending'::text NOT NULL,
    processed boolean DEFAULT false NOT NULL,
    transcript text,
    reason text,
    conversation_id bigint,
    audio_id bigint,
    job_id bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT sync_segments_state_chk CHECK ((state = ANY (ARRAY['pending'::text, 'ready'::text, 'skipped'::text, 'failed'::text, 'assigned'::text]))),
    CONSTRAINT sync_segments_time_chk CHECK ((ended_at >= started_at))
);

CREATE TABLE mnemo.sync_users (
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    longest_conversation interval DEFAULT '00:00:00'::interval NOT NULL
);

CREATE TABLE mnemo.tenants (
    id text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT tenants_id_length_chk CHECK (((length(id) >= 1) AND (length(id) <= 256)))
);

CREATE TABLE mnemo.turns (
    id bigint NOT NULL,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    user_query text NOT NULL,
    agent_response text,
    source text,
    session_id text,
    operation_id bigint,
    occurred_at timestamp with time zone DEFAULT now() NOT NULL,
    search tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, ((user_query || ' '::text) || COALESCE(agent_response, ''::text)))) STORED
);

ALTER TABLE mnemo.turns ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME mnemo.turns_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE mnemo.user_summaries (
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    turn_count integer DEFAULT 0 NOT NULL,
    last_ingested_at timestamp with time zone
);

ALTER TABLE ONLY mnemo.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.api_keys
    ADD CONSTRAINT api_keys_secret_hash_uniq UNIQUE (secret_hash);

ALTER TABLE ONLY mnemo.conversations
    ADD CONSTRAINT conversations_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.events
    ADD CONSTRAINT events_dedup_uniq UNIQUE (tenant_id, user_id, date, norm_key);

ALTER TABLE ONLY mnemo.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.memories
    ADD CONSTRAINT memories_dedup_uniq UNIQUE (tenant_id, user_id, norm_key);

ALTER TABLE ONLY mnemo.memories
    ADD CONSTRAINT memories_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.migrations
    ADD CONSTRAINT migrations_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.profile_attributes
    ADD CONSTRAINT profile_attributes_pkey PRIMARY KEY (tenant_id, user_id, key);

ALTER TABLE ONLY mnemo.session_append_keys
    ADD CONSTRAINT session_append_keys_pkey PRIMARY KEY (tenant_id, key);

ALTER TABLE ONLY mnemo.session_archives
    ADD CONSTRAINT session_archives_pkey PRIMARY KEY (tenant_id, session_id, archive_index);

ALTER TABLE ONLY mnemo.session_messages
    ADD CONSTRAINT session_messages_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.sessions
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (tenant_id, id);

ALTER TABLE ONLY mnemo.sync_audio
    ADD CONSTRAINT sync_audio_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.sync_batches
    ADD CONSTRAINT sync_batches_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.sync_segments
    ADD CONSTRAINT sync_segments_pkey PRIMARY KEY (tenant_id, user_id, id);

ALTER TABLE ONLY mnemo.sync_users
    ADD CONSTRAINT sync_users_pkey PRIMARY KEY (tenant_id, user_id);

ALTER TABLE ONLY mnemo.tenants
    ADD CONSTRAINT tenants_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.turns
    ADD CONSTRAINT turns_pkey PRIMARY KEY (id);

ALTER TABLE ONLY mnemo.user_summaries
    ADD CONSTRAINT user_summaries_pkey PRIMARY KEY (tenant_id, user_id);

CREATE INDEX api_keys_active_idx ON mnemo.api_keys USING btree (secret_hash) WHERE (revoked_at IS NULL);

CREATE INDEX conversations_user_time_idx ON mnemo.conversations USING btree (tenant_id, user_id, started_at);

CREATE INDEX events_owner_search_idx ON mnemo.events USING gin (((search || mnemo.search_owner(tenant_id, user_id)))) WITH (fastupdate=off);

CREATE INDEX events_user_date_idx ON mnemo.events USING btree (tenant_id, user_id, date);

CREATE INDEX jobs_claim_idx ON mnemo.jobs USING btree (run_at, id) WHERE ((status = 'pending'::text) AND ready);

CREATE INDEX jobs_finished_idx ON mnemo.jobs USING btree (kind, finished_at) WHERE ((parent_id IS NULL) AND (status = ANY (ARRAY['succeeded'::text, 'failed'::text, 'cancelled'::text])));

CREATE UNIQUE INDEX jobs_idempotency_key_uniq ON mnemo.jobs USING btree (tenant_id, idempotency_key) WHERE (idempotency_key IS NOT NULL);

CREATE INDEX jobs_lane_active_idx ON mnemo.jobs USING btree (tenant_id, lane, id) WHERE ((lane IS NOT NULL) AND (status = ANY (ARRAY['pending'::text, 'running'::text])));

CREATE UNIQUE INDEX jobs_lane_running_uniq ON mnemo.jobs USING btree (tenant_id, lane) WHERE ((lane IS NOT NULL) AND (status = 'running'::text));

CREATE INDEX jobs_lease_expiry_idx ON mnemo.jobs USING btree (lease_expires_at) WHERE (status = 'running'::text);

CREATE INDEX jobs_parent_idx ON mnemo.jobs USING btree (parent_id, id) WHERE (parent_id IS NOT NULL);

CREATE INDEX jobs_parent_running_idx ON mnemo.jobs USING btree (parent_id) WHERE ((status = 'running'::text) AND (parent_id IS NOT NULL));

CREATE INDEX jobs_pending_idx ON mnemo.jobs USING btree (id) WHERE (status = 'pending'::text);

CREATE INDEX jobs_tenant_created_idx ON mnemo.jobs USING btree (tenant_id, id);

CREATE INDEX jobs_tenant_kind_idx ON mnemo.jobs USING btree (tenant_id, kind, id) WHERE ((parent_id IS NULL) AND (kind <> 'memory.ingest'::text));

CREATE INDEX jobs_tenant_status_idx ON mnemo.jobs USING btree (tenant_id, status, id) WHERE (parent_id IS NULL);

CREATE INDEX jobs_user_idx ON mnemo.jobs USING btree (tenant_id, ((payload ->> 'user_id'::text)), id) WHERE ((parent_id IS NULL) AND ((payload ->> 'user_id'::text) IS NOT NULL));

CREATE INDEX memories_owner_search_idx ON mnemo.memories USING gin (((search || mnemo.search_owner(tenant_id, user_id)))) WITH (fastupdate=off);

CREATE INDEX memories_user_idx ON mnemo.memories USING btree (tenant_id, user_id, id);

CREATE INDEX session_append_keys_session_idx ON mnemo.session_append_keys USING btree (tenant_id, session_id);

CREATE UNIQUE INDEX session_archives_request_key_uniq ON mnemo.session_archives USING btree (tenant_id, request_key) WHERE (request_key IS NOT NULL);

CREATE INDEX session_messages_session_idx ON mnemo.session_messages USING btree (tenant_id, session_id, archive_index, id);

CREATE INDEX sessions_user_idx ON mnemo.sessions USING btree (tenant_id, user_id);

CREATE INDEX sync_audio_user_idx ON mnemo.sync_audio USING btree (tenant_id, user_id);

CREATE INDEX sync_batches_user_idx ON mnemo.sync_batches USING btree (tenant_id, user_id);

CREATE INDEX sync_segments_batch_idx ON mnemo.sync_segments USING btree (batch_id, ord) WHERE (NOT processed);

CREATE INDEX sync_segments_conversation_idx ON mnemo.sync_segments USING btree (conversation_id, started_at) WHERE (conversation_id IS NOT NULL);

CREATE INDEX sync_segments_owner_search_idx ON mnemo.sync_segments USING gin (((to_tsvector('english'::regconfig, COALESCE(transcript, ''::text)) || mnemo.search_owner(tenant_id, user_id)))) WITH (fastupdate=off) WHERE (conversation_id IS NOT NULL);

CREATE INDEX turns_owner_search_idx ON mnemo.turns USING gin (((search || mnemo.search_owner(tenant_id, user_id)))) WITH (fastupdate=off);

CREATE INDEX turns_user_idx ON mnemo.turns USING btree (tenant_id, user_id, id);

CREATE TRIGGER jobs_notify_insert_trg AFTER INSERT ON mnemo.jobs REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION mnemo.jobs_notify_insert();

ALTER TABLE ONLY mnemo.api_keys
    ADD CONSTRAINT api_keys_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.conversations
    ADD CONSTRAINT conversations_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.events
    ADD CONSTRAINT events_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.jobs
    ADD CONSTRAINT jobs_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES mnemo.jobs(id) ON DELETE CASCADE;

ALTER TABLE ONLY mnemo.jobs
    ADD CONSTRAINT jobs_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.memories
    ADD CONSTRAINT memories_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.profile_attributes
    ADD CONSTRAINT profile_attributes_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.session_append_keys
    ADD CONSTRAINT session_append_keys_session_fk FOREIGN KEY (tenant_id, session_id) REFERENCES mnemo.sessions(tenant_id, id) ON DELETE CASCADE;

ALTER TABLE ONLY mnemo.session_archives
    ADD CONSTRAINT session_archives_session_fk FOREIGN KEY (tenant_id, session_id) REFERENCES mnemo.sessions(tenant_id, id) ON DELETE CASCADE;

ALTER TABLE ONLY mnemo.session_messages
    ADD CONSTRAINT session_messages_session_fk FOREIGN KEY (tenant_id, session_id) REFERENCES mnemo.sessions(tenant_id, id) ON DELETE CASCADE;

ALTER TABLE ONLY mnemo.sessions
    ADD CONSTRAINT sessions_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.sync_audio
    ADD CONSTRAINT sync_audio_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.sync_batches
    ADD CONSTRAINT sync_batches_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.sync_segments
    ADD CONSTRAINT sync_segments_conversation_id_fkey FOREIGN KEY (conversation_id) REFERENCES mnemo.conversations(id) ON DELETE SET NULL;

ALTER TABLE ONLY mnemo.sync_segments
    ADD CONSTRAINT sync_segments_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.sync_users
    ADD CONSTRAINT sync_users_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.turns
    ADD CONSTRAINT turns_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);

ALTER TABLE ONLY mnemo.user_summaries
    ADD CONSTRAINT user_summaries_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES mnemo.tenants(id);
