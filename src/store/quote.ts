/** Quotes an identifier for the few statements that cannot take parameters (LISTEN). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * A value as a quoted SQL literal of unknown type, resolved by its context the way a text
 * bind parameter is: strings, finite numbers, booleans, dates, `null`, flat arrays of those,
 * and other objects as JSON.
 */
export function quoteLiteral(value: unknown): string {
  if (value === null || value === undefined) {
    return 'NULL';
  }
  if (Array.isArray(value)) {
    const items = value.map((item: unknown) => {
      if (item === null || item === undefined) {
        return 'NULL';
      }
      if (Array.isArray(item) || (typeof item === 'object' && !(item instanceof Date))) {
        throw new TypeError('only flat arrays of scalars can be inlined');
      }
      return `"${scalarText(item).replace(/[\\"]/g, '\\$&')}"`;
    });
    return escapeLiteral(`{${items.join(',')}}`);
  }
  if (typeof value === 'object' && !(value instanceof Date)) {
    return escapeLiteral(JSON.stringify(value));
  }
  return escapeLiteral(scalarText(value));
}

function scalarText(value: unknown): string {
  if (typeof value === 'string') {
    return value;
  }
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) {
      throw new TypeError(`cannot inline ${value}`);
    }
    return String(value);
  }
  if (typeof value === 'boolean' || typeof value === 'bigint') {
    return String(value);
  }
  if (value instanceof Date) {
    return value.toISOString();
  }
  throw new TypeError(`cannot inline a value of type ${typeof value}`);
}

/** `'…'` with quotes doubled; with a backslash inside, an E'…' string with it doubled too. */
function escapeLiteral(text: string): string {
  if (text.includes('\0')) {
    throw new TypeError('a literal cannot hold a NUL character');
  }
  const quoted = text.replace(/'/g, "''");
  return text.includes('\\') ? ` E'${quoted.replace(/\\/g, '\\\\')}'` : `'${quoted}'`;
}

/**
 * `sql` with `$1`, `$2`, … replaced by the literals of `params`, for a statement that must
 * travel in one simple-protocol message with others. Placeholders inside quoted strings or
 * identifiers are left alone; dollar-quoted bodies are refused.
 */
export function inlineParameters(sql: string, params: readonly unknown[]): string {
  let out = '';
  let i = 0;
  while (i < sql.length) {
    const ch = sql[i] as string;
    if (ch === "'" || ch === '"') {
      const end = sql.indexOf(ch, i + 1);
      if (end < 0) {
        throw new TypeError('unterminated quote in a statement to inline');
      }
      out += sql.slice(i, end + 1);
      i = end + 1;
      continue;
    }
    if (ch === '$') {
      const match = /^\$(\d+)/.exec(sql.slice(i));
      if (match === null) {
        throw new TypeError('dollar quoting cannot be inlined');
      }
      const n = Number(match[1]);
      if (n < 1 || n > params.length) {
        throw new TypeError(
          `statement refers to $${n}, but ${params.length} parameters were given`,
        );
      }
      out += quoteLiteral(params[n - 1]);
      i += match[0].length;
      continue;
    }
    out += ch;
    i += 1;
  }
  return out;
}
