import { describe, expect, it } from 'vitest';

import { ErrorCode, isMnemoError } from '../../src/core/errors.ts';
import { splitServerOptions } from '../../src/store/postgres.ts';

describe('splitServerOptions', () => {
  it('leaves a URL without options as it is', () => {
    const plain = 'postgres://user:p%40ss@db.example:6543/mnemo?sslmode=require';
    expect(splitServerOptions(plain)).toEqual({ url: plain, options: undefined });
  });

  it('takes the options out and keeps the rest of the URL', () => {
    const split = splitServerOptions(
      'postgres://user:p%40ss@db.example:6543/mnemo?options=-c%20work_mem%3D8MB&sslmode=require',
    );
    expect(split.options).toBe('-c work_mem=8MB');
    const rest = new URL(split.url);
    expect([rest.username, rest.password, rest.host, rest.pathname]).toEqual([
      'user',
      'p%40ss',
      'db.example:6543',
      '/mnemo',
    ]);
    expect([...rest.searchParams]).toEqual([['sslmode', 'require']]);
  });

  it('passes on the last of repeated options, as pg would read them, and removes them all', () => {
    const split = splitServerOptions(
      'postgres://h/db?options=-c%20work_mem%3D8MB&options=-c%20work_mem%3D16MB',
    );
    expect(split.options).toBe('-c work_mem=16MB');
    expect(new URL(split.url).searchParams.has('options')).toBe(false);
  });

  it('refuses options it cannot take out, instead of losing the schema', () => {
    let caught: unknown;
    try {
      splitServerOptions('postgres://user@/mnemo?host=/var/run/postgresql&options=-c%20x%3Dy');
    } catch (err) {
      caught = err;
    }
    // Not a URL WHATWG can read (no host): pg reads it, Mnemo cannot rewrite it.
    expect(isMnemoError(caught, ErrorCode.InvalidConfig)).toBe(true);
  });
});
