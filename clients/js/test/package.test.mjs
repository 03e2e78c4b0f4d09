// The package's facts kept in step: the version in `context.library` and the size the README
// states, against package.json and what the build measured (dist/size.json).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { LIBRARY } from '../dist/index.js';

const read = (path) => readFileSync(new URL(path, import.meta.url), 'utf8');

test('context.library names this package and its version', () => {
  const manifest = JSON.parse(read('../package.json'));
  assert.deepEqual(LIBRARY, { name: manifest.name, version: manifest.version });
});

test('the README states the bundle size the build measured (within 10 %)', () => {
  const measured = JSON.parse(read('../dist/size.json'));
  const stated = read('../README.md').match(
    /\*\*Size: ([\d,]+) bytes minified, ([\d,]+) bytes gzipped\*\*/,
  );
  assert.ok(stated, 'README.md has a "**Size: N bytes minified, M bytes gzipped**" line');
  const [minified, gzipped] = stated.slice(1).map((text) => Number(text.replaceAll(',', '')));
  for (const [what, claimed, actual] of [
    ['minified', minified, measured.minified],
    ['gzipped', gzipped, measured.gzipped],
  ]) {
    assert.ok(
      Math.abs(claimed - actual) <= actual * 0.1,
      `README says ${claimed} bytes ${what}, the build measured ${actual}: update README.md`,
    );
  }
});
