-- write_turn as in 0009, but its unset finds the keys it names by index. As
-- `key in (select jsonb_array_elements_text(p->'unset'))` the planner, which takes the array's
-- elements for 100 rows, read every profile attribute of the user and probed the list with
-- each (a semi join), even when the list was empty, as it is for almost every turn: a user
-- with 6,000 attributes paid 11 ms a turn for it. As `key = any(array(…))` the keys are an
-- index condition of profile_attributes_pkey (tenant_id, user_id, key), and an empty list
-- reads nothing (test/integration/indexes.pg.test.ts). The rest is unchanged.
create or replace function write_turn(p jsonb) returns jsonb
language plpgsql
as $$
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
