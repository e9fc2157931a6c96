/**
 * A page of a list read with one row more than `limit`: the first `limit` rows, and the cursor
 * of the last of them when that extra row shows that more follow (null on the last page).
 */
export function pageOf<Row>(
  rows: readonly Row[],
  limit: number,
  cursorOf: (last: Row) => string,
): { rows: Row[]; next_cursor: string | null } {
  const page = rows.slice(0, limit);
  const last = page[page.length - 1];
  return {
    rows: page,
    next_cursor: rows.length > limit && last !== undefined ? cursorOf(last) : null,
  };
}
