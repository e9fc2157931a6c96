import { databaseStateOf } from '../../store/errors.ts';
import type { Store } from '../../store/types.ts';

/**
 * The oldest finished jobs of one kind without a parent ($1 kind), finished more than $2 ms
 * ago, at most $3 of them, deleted with their children (jobs_parent_id_fkey cascades). Found
 * through `jobs_finished_idx` (migration 0018). Rows another transaction holds are skipped:
 * the next sweep takes them.
 */
export const DELETE_FINISHED = `with old as (
    select id from jobs
     where kind = $1 and parent_id is null and status in ('succeeded', 'failed', 'cancelled')
       and finished_at < now() - $2::bigint * interval '1 millisecond'
     order by finished_at
     limit $3
     for update skip locked)
  delete from jobs j using old where j.id = old.id
  returning j.id`;

/**
 * Deletes up to `limit` jobs of `kind` finished more than `olderThanMs` ago (with their
 * children); returns how many it deleted, 0 if it met a lock held longer than 100 ms.
 *
 * The statement waits that long at most for a lock: the child rows of a batch it deletes may
 * be held by a user's deletion redacting them, and that redaction may want the parent next,
 * which this statement holds; waiting longer would stall both until PostgreSQL broke the
 * deadlock (after `deadlock_timeout`). The sweep gives way and tries again at its next round.
 */
export async function deleteFinished(
  store: Store,
  kind: string,
  olderThanMs: number,
  limit: number,
): Promise<number> {
  try {
    return await store.transaction(
      async (tx) => {
        await tx.query(`select set_config('lock_timeout', '100ms', true)`);
        return (await tx.query(DELETE_FINISHED, [kind, olderThanMs, limit])).length;
      },
      { maxAttempts: 1 },
    );
  } catch (err) {
    if (databaseStateOf(err) === '55P03') {
      return 0; // lock_not_available: given way, see above
    }
    throw err;
  }
}
