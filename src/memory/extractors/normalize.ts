/** What the extractors share: attribute names and dates as the store takes them. */

/** Attribute names longer than this are not profile attributes. */
export const MAX_KEY = 100;

/**
 * An attribute's words as its key: composed (NFC), lower case, letters and digits of any
 * script kept (`größe`, `город`), runs of anything else as one `_`.
 */
export function snakeCase(attribute: string): string {
  return attribute
    .normalize('NFC')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{M}\p{N}]+/gu, '_')
    .replace(/^_+|_+$/g, '');
}

/** A real calendar day written YYYY-MM-DD, in the years PostgreSQL's `date` reads (1–9999). */
export function isValidDate(iso: string): boolean {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(iso)) {
    return false;
  }
  const date = new Date(`${iso}T00:00:00Z`);
  // Year 0 is valid in JavaScript but not in PostgreSQL.
  return (
    Number(iso.slice(0, 4)) >= 1 &&
    !Number.isNaN(date.getTime()) &&
    date.toISOString().startsWith(iso)
  );
}
