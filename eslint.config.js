// ESLint flat config: typescript-eslint's strict type-checked rules, minus the ones that only churn on this code base.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'coverage/', 'node_modules/', 'bench/results/', 'fixtures/'] },
  js.configs.recommended,
  ...tseslint.configs.strictTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: { allowDefaultProject: ['vitest.config.ts'] }, tsconfigRootDir: import.meta.dirname },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // noUncheckedIndexedAccess makes `!` after a checked index the idiom; banning it would add 500 casts, not safety.
      '@typescript-eslint/no-non-null-assertion': 'off',
      // Numbers and booleans in log and reply templates are intended; objects and nullish values still are not.
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true, allowBoolean: true }],
      // `() => void socket.end()` style arrows everywhere; the rule only asks for braces.
      '@typescript-eslint/no-confusing-void-expression': 'off',
      // Data from sockets, YAML and JSON is checked at runtime even where its declared type says it cannot be missing.
      '@typescript-eslint/no-unnecessary-condition': 'off',
      // Handlers may answer synchronously or with a promise (`void | Promise<void>`), by design of the SMTP hooks.
      '@typescript-eslint/no-invalid-void-type': 'off',
      // async functions without await implement promise-returning interfaces; making them sync changes throw timing.
      '@typescript-eslint/require-await': 'off',
      // Our own @deprecated marks document compatibility fields that are still written on purpose.
      '@typescript-eslint/no-deprecated': 'off',
      // Protocol code matches control characters on purpose (CR, LF, NUL, C0 in headers and commands).
      'no-control-regex': 'off',
      // Readable.from()/PassThrough results typed structurally; the rule flags them though they are real streams.
      '@typescript-eslint/no-unsafe-class-instance-assignment': 'off',
      // Command handlers are passed around unbound by commander and node:net; none of them use `this`.
      '@typescript-eslint/unbound-method': 'off',
      // `unknown | T` is kept as documentation of what a field usually holds.
      '@typescript-eslint/no-redundant-type-constituents': 'off',
      // Config sources delete keys by computed name when layering overrides.
      '@typescript-eslint/no-dynamic-delete': 'off',
      // try/catch already gives `unknown` (strict); `.catch((e) => …)` callbacks only log or rethrow.
      '@typescript-eslint/use-unknown-in-catch-callback-variable': 'off',
      // Same reason as no-unnecessary-condition: String(x ?? '') guards values that arrive from JSON and SQL rows.
      '@typescript-eslint/no-unnecessary-type-conversion': 'off',
      // Initial values (`let token = null`) are kept so every branch below reads the same; not dead code.
      'no-useless-assignment': 'off',
      // A rejection or throw may forward an `unknown` caught value or an AbortSignal's reason unchanged.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true, allowThrowingAny: true }],
      '@typescript-eslint/only-throw-error': ['error', { allowThrowingUnknown: true, allowThrowingAny: true }],
      // Flags every String(v) on parsed JSON after a null check (type `{}`); objects in templates are already
      // caught by restrict-template-expressions.
      '@typescript-eslint/no-base-to-string': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
    },
  },
  {
    // Tests read JSON bodies and log lines as `any` and then assert on them: the assertion is the check.
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-explicit-any': 'off',
    },
  },
  { files: ['**/*.js'], ...tseslint.configs.disableTypeChecked },
);
