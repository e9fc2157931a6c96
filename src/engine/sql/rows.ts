import { Conditions } from '../../store/conditions.ts';
import type { ChildCounts, Job, JobError, JobFilter, JobStatus } from '../types.ts';

/** The columns every job read selects (as `j`). */
export const JOB_COLUMNS = `j.id, j.tenant_id, j.kind, j.payload, j.lane, j.status, j.is_parent, j.parent_id,
  j.attempts, j.max_attempts, j.run_at, j.lease_token, j.lease_expires_at, j.result, j.error,
  j.children_total, j.children_succeeded, j.children_failed, j.children_cancelled,
  j.created_at, j.started_at, j.finished_at`;

/** A row of {@link JOB_COLUMNS}. */
export interface JobRow {
  id: number;
  tenant_id: string;
  kind: string;
  payload: unknown;
  lane: string | null;
  status: JobStatus;
  is_parent: boolean;
  parent_id: number | null;
  attempts: number;
  max_attempts: number;
  run_at: Date;
  lease_token: number;
  lease_expires_at: Date | null;
  result: unknown;
  error: JobError | null;
  children_total: number;
  children_succeeded: number;
  children_failed: number;
  children_cancelled: number;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
}

/**
 * Maps a row to a {@link Job}. A parent's pending children are those neither finished (its
 * counters, kept by the statements that finish its children) nor running.
 */
export function toJob(row: JobRow, runningChildren = 0): Job {
  let children: ChildCounts | null = null;
  if (row.is_parent) {
    const terminal = row.children_succeeded + row.children_failed + row.children_cancelled;
    children = {
      total: row.children_total,
      pending: row.children_total - terminal - runningChildren,
      running: runningChildren,
      succeeded: row.children_succeeded,
      failed: row.children_failed,
      cancelled: row.children_cancelled,
    };
  }
  return {
    id: row.id,
    tenantId: row.tenant_id,
    kind: row.kind,
    payload: row.payload,
    lane: row.lane,
    status: row.status,
    isParent: row.is_parent,
    parentId: row.parent_id,
    attempts: row.attempts,
    maxAttempts: row.max_attempts,
    runAt: row.run_at,
    leaseToken: row.lease_token,
    leaseExpiresAt: row.lease_expires_at,
    result: row.result,
    error: row.error,
    children,
    createdAt: row.created_at,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
  };
}

/** A row of {@link selectJobs}: a parent's running children beside the job. */
export type JobCountsRow = JobRow & { child_running: number | null };

/**
 * A read of jobs (`j`) with a parent's running children, counted through
 * `jobs_parent_running_idx` (migration 0014): a batch of 10,000 is not read child by child.
 */
export function selectJobs(where: string): string {
  return `select ${JOB_COLUMNS},
    case when j.is_parent then (select count(*) from jobs c where c.parent_id = j.id and c.status = 'running') end::int as child_running
  from jobs j where ${where}`;
}

/** Maps a row of {@link selectJobs}. */
export function toJobWithCounts(row: JobCountsRow): Job {
  return toJob(row, row.child_running ?? 0);
}

/** The statement of `Engine.listJobs`: jobs without a parent, newest first. */
export function listJobsQuery(
  tenantId: string,
  filter: JobFilter,
): { text: string; params: unknown[] } {
  // Each condition only when asked for (see Conditions), so that a plan can read the user's
  // jobs through jobs_user_idx and a status's through jobs_tenant_status_idx.
  const where = new Conditions(
    ['j.tenant_id = $1', 'j.parent_id is null'],
    [tenantId, filter.limit],
  );
  if (filter.userId !== undefined) {
    where.add((user) => `j.payload ->> 'user_id' = ${user}`, filter.userId);
  }
  if (filter.status !== undefined) {
    where.add((status) => `j.status = ${status}`, filter.status);
  }
  if (filter.kind !== undefined) {
    where.add((kind) => `j.kind = ${kind}`, filter.kind);
  }
  if (filter.excludeKinds !== undefined && filter.excludeKinds.length > 0) {
    where.add((kinds) => `j.kind <> all (${kinds}::text[])`, filter.excludeKinds);
  }
  if (filter.beforeId !== undefined) {
    where.add((id) => `j.id < ${id}::bigint`, filter.beforeId);
  }
  return {
    text: selectJobs(`${where.sql} order by j.id desc limit $2`),
    params: where.params,
  };
}
