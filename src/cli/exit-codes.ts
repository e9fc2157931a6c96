import type { ErrorCode } from '../core/errors.ts';

/** The CLI's documented exit codes (see README "CLI"). */
export const ExitCode = {
  Ok: 0,
  /** Any other failure. */
  Failure: 1,
  /** A bad flag, command or configuration value. */
  Usage: 2,
  /** The database could not be reached. */
  Unavailable: 3,
  /** The database schema does not match this build (edited or newer migrations). */
  SchemaMismatch: 4,
} as const;

/** The exit code for a failure with the given error code. */
export function exitCodeFor(code: ErrorCode): number {
  switch (code) {
    case 'invalid_config':
    case 'invalid_request':
      return ExitCode.Usage;
    case 'unavailable':
      return ExitCode.Unavailable;
    case 'schema_mismatch':
      return ExitCode.SchemaMismatch;
    default:
      return ExitCode.Failure;
  }
}
