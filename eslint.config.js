// @ts-check
import js from '@eslint/js';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';
import importX from 'eslint-plugin-import-x';
import simpleImportSort from 'eslint-plugin-simple-import-sort';
import globals from 'globals';
import tseslint from 'typescript-eslint';

/** Imports each layer may not make (ARCHITECTURE.md "Layers"; STYLE.md §2). */
const layerBans = [
  {
    files: ['src/core/**'],
    patterns: [
      '**/store/**',
      '**/engine/**',
      '**/memory/**',
      '**/sessions/**',
      '**/sync/**',
      '**/server/**',
      '**/cli/**',
      '**/config.ts',
      '**/app.ts',
    ],
    paths: ['pg', '@electric-sql/pglite'],
  },
  {
    files: ['src/store/**'],
    patterns: [
      '**/engine/**',
      '**/memory/**',
      '**/sessions/**',
      '**/sync/**',
      '**/server/**',
      '**/cli/**',
      '**/app.ts',
    ],
    paths: [],
  },
  {
    files: ['src/engine/**'],
    patterns: [
      '**/memory/**',
      '**/sessions/**',
      '**/sync/**',
      '**/server/**',
      '**/cli/**',
      '**/app.ts',
      '**/store/postgres.ts',
      '**/store/pglite.ts',
    ],
    paths: ['pg', '@electric-sql/pglite'],
  },
];

export default tseslint.config(
  {
    ignores: ['dist/**', 'coverage/**', 'node_modules/**', 'bench/results/**', '.mnemo/**'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { ...globals.node } },
    plugins: { 'simple-import-sort': simpleImportSort, 'import-x': importX },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      'simple-import-sort/imports': 'error',
      'simple-import-sort/exports': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_' },
      ],
      eqeqeq: ['error', 'always'],
      curly: ['error', 'all'],
    },
  },
  {
    files: ['src/**/*.ts'],
    extends: [...tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    settings: {
      'import-x/resolver-next': [createTypeScriptImportResolver()],
      'import-x/parsers': { '@typescript-eslint/parser': ['.ts'] },
      'import-x/extensions': ['.ts', '.js'],
    },
    rules: {
      'import-x/no-cycle': ['error', { ignoreExternal: true }],
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/only-throw-error': 'error',
    },
  },
  {
    // Library folders never write to stdout: the CLI and scripts own the terminal.
    files: ['src/**/*.ts'],
    ignores: ['src/cli/**'],
    rules: { 'no-console': 'error' },
  },
  ...layerBans.map(({ files, patterns, paths }) => ({
    files,
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: paths.map((name) => ({
            name,
            message: 'this layer may not import it (STYLE.md §2)',
          })),
          patterns: [{ group: patterns, message: 'this layer may not import it (STYLE.md §2)' }],
        },
      ],
    },
  })),
  {
    // Only the two store engines talk to a driver.
    files: ['src/**/*.ts'],
    ignores: [
      'src/store/postgres.ts',
      'src/store/pglite.ts',
      ...layerBans.map((b) => b.files[0] ?? ''),
    ],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [
            { name: 'pg', message: 'only src/store/postgres.ts imports pg' },
            { name: '@electric-sql/pglite', message: 'only src/store/pglite.ts imports PGlite' },
          ],
        },
      ],
    },
  },
);
