// Links node_modules/.bin/mnemo to bin/mnemo.js so that `npx mnemo` runs this checkout's CLI.
// (Declaring a `bin` in package.json instead makes npm 11's npx install the project into a
// cache directory shared by every checkout: see docs/decisions/0002.)
import { chmodSync, lstatSync, mkdirSync, symlinkSync, unlinkSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const target = join(root, 'bin', 'mnemo.js');
const link = join(root, 'node_modules', '.bin', 'mnemo');

mkdirSync(dirname(link), { recursive: true });
try {
  lstatSync(link);
  unlinkSync(link);
} catch {
  // no previous link
}
symlinkSync(relative(dirname(link), target), link);
chmodSync(target, 0o755);
