import { ErrorCode, MnemoError } from '../core/errors.ts';
import { migrations as embeddedMigrations } from './generated/migrations.ts';
import type { Queryable, Store } from './types.ts';

/** One embedded migration. */
export interface Migration {
  id: number;
  name: string;
  sql: string;
  /** sha256 of `sql`, hex. */
  checksum: string;
}

/** Where the database stands against this build's migrations. */
export interface MigrationStatus {
  applied: number[];
  pending: number[];
}

const LEDGER_SQL = `create table if not exists migrations (
  id integer primary key,
  name text not null,
  checksum text not null,
  applied_at timestamptz not null default now()
)`;

/** The migrations compiled into this build. */
export function bundledMigrations(): readonly Migration[] {
  return embeddedMigrations;
}

function compare(
  applied: ReadonlyMap<number, string>,
  migrations: readonly Migration[],
): MigrationStatus {
  const known = new Map(migrations.map((m) => [m.id, m]));
  const unknown = [...applied.keys()].filter((id) => !known.has(id)).sort((a, b) => a - b);
  if (unknown.length > 0) {
    throw new MnemoError(
      ErrorCode.SchemaMismatch,
      `the database has migrations this build does not know (${unknown.join(', ')}): it was migrated by a newer Mnemo; upgrade this one`,
      { details: { unknown } },
    );
  }
  for (const [id, checksum] of applied) {
    const m = known.get(id);
    if (m !== undefined && m.checksum !== checksum) {
      throw new MnemoError(
        ErrorCode.SchemaMismatch,
        `migration ${id} (${m.name}) was edited after it was applied: migrations are append-only; restore the original file and add a new migration`,
        { details: { id, applied: checksum, bundled: m.checksum } },
      );
    }
  }
  return {
    applied: [...applied.keys()].sort((a, b) => a - b),
    pending: migrations.filter((m) => !applied.has(m.id)).map((m) => m.id),
  };
}

async function readLedger(q: Queryable, schema: string): Promise<Map<number, string> | undefined> {
  const [exists] = await q.query<{ present: boolean }>(
    `select to_regclass($1) is not null as present`,
    [`${schema}.migrations`],
  );
  if (exists?.present !== true) {
    return undefined;
  }
  const rows = await q.query<{ id: number; checksum: string }>(
    'select id, checksum from migrations order by id',
  );
  return new Map(rows.map((r) => [r.id, r.checksum]));
}

/**
 * Applies pending migrations in one transaction and returns the ids it applied. Safe when
 * many processes start at once: they queue on an advisory lock and only the first applies.
 * @throws MnemoError `schema_mismatch` if an applied migration was edited or the database
 *   is newer than this build; `unavailable` if the database cannot be reached
 */
export async function migrate(
  store: Store,
  migrations: readonly Migration[] = embeddedMigrations,
): Promise<number[]> {
  return store.transaction(async (tx) => {
    // Neither a wait for another process's migration nor a long index build may be cut short
    // by a timeout the database URL sets for Mnemo's ordinary statements.
    await tx.exec('set local statement_timeout = 0; set local lock_timeout = 0');
    // Lock before reading the ledger: computing "pending" first would let two processes
    // both decide to apply the same migration.
    await tx.query('select pg_advisory_xact_lock(hashtextextended($1, 0))', [
      `mnemo:migrate:${store.schema}`,
    ]);
    await tx.exec(`create schema if not exists ${store.schema}; ${LEDGER_SQL}`);
    const applied = (await readLedger(tx, store.schema)) ?? new Map<number, string>();
    const status = compare(applied, migrations);
    for (const m of migrations) {
      if (!status.pending.includes(m.id)) {
        continue;
      }
      await tx.exec(m.sql);
      await tx.query('insert into migrations (id, name, checksum) values ($1, $2, $3)', [
        m.id,
        m.name,
        m.checksum,
      ]);
    }
    return status.pending;
  });
}

/**
 * Reads where the database stands without changing anything.
 * @throws MnemoError `schema_mismatch` as {@link migrate} does
 */
export async function migrationStatus(
  store: Store,
  migrations: readonly Migration[] = embeddedMigrations,
): Promise<MigrationStatus> {
  const applied = (await readLedger(store, store.schema)) ?? new Map<number, string>();
  return compare(applied, migrations);
}

/**
 * Refuses to go on unless every bundled migration is applied and none was edited.
 * @throws MnemoError `schema_mismatch`
 */
export async function assertMigrated(store: Store): Promise<void> {
  const status = await migrationStatus(store);
  if (status.pending.length > 0) {
    throw new MnemoError(
      ErrorCode.SchemaMismatch,
      `migrations ${status.pending.join(', ')} are not applied: run \`mnemo migrate\``,
      { details: status },
    );
  }
}
