/** Quotes an identifier for the few statements that cannot take parameters (LISTEN). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
