import type { Extraction, Extractor, Message, Turn } from '../types.ts';
import { MAX_SUMMARY, normalizeText } from '../types.ts';
import { isValidDate, MAX_KEY, snakeCase } from './normalize.ts';

const DATE = '(\\d{4}-\\d{2}-\\d{2})';

/** Splits text into sentences, keeping each sentence's final punctuation. */
export function splitSentences(text: string): string[] {
  const out: string[] = [];
  for (const match of text.matchAll(/[^.!?\n]+[.!?]*/g)) {
    const sentence = match[0].trim();
    if (sentence.length > 0) {
      out.push(sentence);
    }
  }
  return out;
}

function clean(value: string): string {
  return value
    .trim()
    .replace(/[.!?,;:]+$/, '')
    .trim();
}

/** Sets a profile attribute; the last word of the turn about it wins. */
function setAttribute(out: Extraction, key: string, value: string): void {
  out.set[key] = value;
  out.unset = out.unset.filter((k) => k !== key);
}

/** Applies the rules of API.md to one sentence, adding what it finds to `out`. */
function readSentence(sentence: string, out: Extraction): void {
  const body = clean(sentence);
  let m: RegExpExecArray | null;
  if ((m = /^forget my (.+)$/i.exec(body)) !== null) {
    const key = snakeCase(m[1] ?? '');
    if (key !== '' && key.length <= MAX_KEY) {
      out.unset.push(key);
      delete out.set[key];
    }
    return;
  }
  if ((m = /^my (.+?) is (.+)$/i.exec(body)) !== null) {
    const key = snakeCase(m[1] ?? '');
    const value = clean(m[2] ?? '');
    if (key !== '' && key.length <= MAX_KEY && value !== '') {
      setAttribute(out, key, value);
      return;
    }
  }
  const onFirst = new RegExp(`^on ${DATE},? (i .+)$`, 'i').exec(body);
  const onLast = new RegExp(`^(i .+?),? on ${DATE}$`, 'i').exec(body);
  const event =
    onFirst !== null
      ? { date: onFirst[1] ?? '', description: clean(onFirst[2] ?? '') }
      : onLast !== null
        ? { date: onLast[2] ?? '', description: clean(onLast[1] ?? '') }
        : undefined;
  if (event !== undefined && isValidDate(event.date) && event.description !== '') {
    out.events.push(event);
    return;
  }
  // After the events: "I moved to Oslo on 2024-05-01" is a dated event.
  if ((m = /^i (?:live in|moved to) (.+)$/i.exec(body)) !== null) {
    setAttribute(out, 'location', clean(m[1] ?? ''));
    return;
  }
  if ((m = /^i am (\d{1,3}) years old$/i.exec(body)) !== null) {
    setAttribute(out, 'age', m[1] ?? '');
    return;
  }
  // Every other declarative sentence: not a question or an exclamation, two words at least.
  if (!/[?!]$/.test(sentence) && body.split(/\s+/).length >= 2) {
    out.memories.push(body);
  }
}

/** Extracts from the user's words alone, deterministically and offline (API.md "rules"). */
export function extractByRules(turn: Turn): Extraction {
  const out: Extraction = { set: {}, unset: [], events: [], memories: [] };
  for (const sentence of splitSentences(turn.userQuery)) {
    readSentence(sentence, out);
  }
  // Within one turn, the same fact said twice is one memory.
  const seen = new Set<string>();
  out.memories = out.memories.filter((m) => {
    const key = normalizeText(m);
    return !seen.has(key) && (seen.add(key), true);
  });
  return out;
}

const ROLE_NAMES: Record<Message['role'], [string, string]> = {
  user: ['from the user', 'from the user'],
  assistant: ['from the assistant', 'from the assistant'],
  system: ['system message', 'system messages'],
  tool: ['tool message', 'tool messages'],
};

/**
 * A deterministic summary: how many messages of each role, then the user's first three
 * sentences. "4 messages (2 from the user, 2 from the assistant). The user said: My name is
 * Ada. I like tea."
 */
export function summarizeByRules(messages: readonly Message[]): string {
  const counts = new Map<Message['role'], number>();
  for (const m of messages) {
    counts.set(m.role, (counts.get(m.role) ?? 0) + 1);
  }
  const parts = (['user', 'assistant', 'system', 'tool'] as const)
    .filter((role) => counts.has(role))
    .map((role) => {
      const n = counts.get(role) ?? 0;
      return `${n} ${ROLE_NAMES[role][n === 1 ? 0 : 1]}`;
    });
  const total = messages.length;
  let summary = `${total} message${total === 1 ? '' : 's'} (${parts.join(', ')}).`;
  const said = splitSentences(
    messages
      .filter((m) => m.role === 'user')
      .map((m) => m.content)
      .join('\n'),
  ).slice(0, 3);
  if (said.length > 0) {
    summary += ` The user said: ${said.join(' ')}`;
  }
  return summary.length > MAX_SUMMARY ? `${summary.slice(0, MAX_SUMMARY - 1)}…` : summary;
}

/** The built-in extractor. */
export const rulesExtractor: Extractor = {
  name: 'rules',
  extract: (turn) => Promise.resolve(extractByRules(turn)),
  summarize: (messages) => Promise.resolve(summarizeByRules(messages)),
};
