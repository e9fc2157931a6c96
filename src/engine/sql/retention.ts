import { databaseStateOf } from '../../store/errors.ts';
import type { Store } from '../../store/types.ts';
import type { Retention } from '../types.ts';

/**
 * The oldest finished jobs of one kind without a parent ($1 kind), finished more than $2 ms
 * ago, at most $3 of them, locked. Found through `jobs_finished_idx` (migration 0018). Rows
 * another transaction holds are skipped: the next sweep takes them.
 */
const OLDEST_FINISHED = `select id from jobs
     where kind = $1 and parent_id is null and status in ('succeeded', 'failed', 'cancelled')
       and finished_at < now() - $2::bigint * interval '1 millisecond'
     order by finished_at
     limit $3
     for update skip locked`;

/** {@link OLDEST_FINISHED}, deleted with their children (jobs_parent_id_fkey cascades). */
export const DELETE_FINISHED = `with old as (${OLDEST_FINISHED})
  delete from jobs j using old where j.id = old.id
  returning j.id`;

/**
 * Deletes up to `limit` jobs of `kind` finished more than `kept.ms` ago (with their children),
 * after `kept.beforeDelete` if given, in one transaction; returns how many it deleted, 0 if it
 * met a lock held longer than 100 ms.
 *
 * The statement waits that long at most for a lock: the child rows of a batch it deletes may
 * be held by a user's deletion redacting them, and that redaction may want the parent next,
 * which this statement holds; waiting longer would stall both until PostgreSQL broke the
 * deadlock (after `deadlock_timeout`). The sweep gives way and tries again at its next round.
 * The limit covers `beforeDelete` too, whose rows a user's deletion may hold the same way (it
 * deletes a session's archives, then redacts the jobs this transaction holds).
 */
export async function deleteFinished(
  store: Store,
  kind: string,
  kept: Retention,
  limit: number,
): Promise<number> {
  try {
    return await store.transaction(
      async (tx) => {
        await tx.query(`select set_config('lock_timeout', '100ms', true)`);
        if (kept.beforeDelete === undefined) {
          return (await tx.query(DELETE_FINISHED, [kind, kept.ms, limit])).length;
        }
        const ids = (await tx.query<{ id: number }>(OLDEST_FINISHED, [kind, kept.ms, limit])).map(
          (r) => r.id,
        );
        if (ids.length > 0) {
          await kept.beforeDelete(tx, ids);
          await tx.query(`delete from jobs where id = any($1::bigint[])`, [ids]);
        }
        return ids.length;
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
