#!/usr/bin/env node
// The installed `mnemo` command: runs the compiled CLI (built by `npm install` through the
// `prepare` script, or by `npm run build`).
import { existsSync } from 'node:fs';

const entry = new URL('../dist/cli/main.js', import.meta.url);
if (!existsSync(entry)) {
  process.stderr.write(
    'mnemo: the CLI is not built yet; run `npm run build` in the Mnemo directory\n',
  );
  process.exit(1);
}
const { runCli } = await import(entry.href);
process.exitCode = await runCli(process.argv.slice(2));
