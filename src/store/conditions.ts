/**
 * A WHERE clause made of the conditions a call asks for, with their bind parameters.
 *
 * A condition absent from the statement is better than `($n is null or …)`: PostgreSQL may
 * keep one plan for a named statement after five calls, and in that plan a condition hidden behind
 * `$n is null` cannot bound an index scan. Each shape of the statement gets its own plan.
 */
export class Conditions {
  readonly params: unknown[];
  readonly #where: string[];

  /** `params`: the statement's first parameters ($1, $2, …), which `where` may use. */
  constructor(where: readonly string[], params: readonly unknown[]) {
    this.#where = [...where];
    this.params = [...params];
  }

  /** Adds a condition on `values`, which `condition` receives as `$n` references. */
  add(condition: (...refs: string[]) => string, ...values: unknown[]): void {
    const first = this.params.length + 1;
    this.params.push(...values);
    this.#where.push(condition(...values.map((_, i) => `$${first + i}`)));
  }

  /** The conditions joined with `and`. */
  get sql(): string {
    return this.#where.join(' and ');
  }
}
