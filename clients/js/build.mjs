// Builds the package: `tsc` compiles src/ into dist/ (ES modules and .d.ts files, what the
// package exports) and type-checks examples/ (the README's example) against those declarations,
// then esbuild makes dist/switchboard.min.js, the whole client as one minified ES module with
// pusher-js left external, and the size of that file minified and gzipped is printed (README.md
// states it; test/package.test.mjs checks the README against it).
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

import { build } from 'esbuild';

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, 'dist');

rmSync(dist, { recursive: true, force: true });
const tsc = join(root, 'node_modules/.bin/tsc');
execFileSync(tsc, ['-p', root], { stdio: 'inherit' });
execFileSync(tsc, ['-p', join(root, 'examples')], { stdio: 'inherit' });

const bundle = join(dist, 'switchboard.min.js');
await build({
  entryPoints: [join(root, 'src/index.ts')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2020',
  external: ['pusher-js'],
  outfile: bundle,
  legalComments: 'none',
  logLevel: 'warning',
});

const minified = readFileSync(bundle);
const size = { minified: minified.length, gzipped: gzipSync(minified, { level: 9 }).length };
writeFileSync(join(dist, 'size.json'), `${JSON.stringify(size)}\n`);
console.log(
  `dist/switchboard.min.js: ${size.minified} bytes minified, ${size.gzipped} bytes gzipped ` +
    '(pusher-js not included)',
);
