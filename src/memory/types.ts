/** What an extractor finds in one turn. */
export interface Extraction {
  /** Profile attributes to set (snake_case keys). */
  set: Record<string, string>;
  /** Profile attributes to remove. */
  unset: string[];
  /** Temporal events: an ISO date (YYYY-MM-DD) and a description. */
  events: { date: string; description: string }[];
  /** Facts worth remembering. */
  memories: string[];
}

/** One turn of conversation as the extractor sees it. */
export interface Turn {
  userQuery: string;
  agentResponse?: string | undefined;
  occurredAt?: string | undefined;
}

/** One message of a session transcript. */
export interface Message {
  role: 'user' | 'assistant' | 'system' | 'tool';
  content: string;
}

/** Summaries longer than this are cut. */
export const MAX_SUMMARY = 4000;

/** Turns conversation into memory. Implementations must honour `signal`. */
export interface Extractor {
  readonly name: string;
  extract(turn: Turn, signal: AbortSignal): Promise<Extraction>;
  /** A short prose summary of a transcript (a session archive). */
  summarize(messages: readonly Message[], signal: AbortSignal): Promise<string>;
}

/** Lower-case, single-spaced, without surrounding punctuation: the dedup key of a text. */
export function normalizeText(text: string): string {
  return text
    .toLowerCase()
    .replace(/\s+/g, ' ')
    .replace(/^[\s.,;:!?"'()-]+|[\s.,;:!?"'()-]+$/g, '');
}
