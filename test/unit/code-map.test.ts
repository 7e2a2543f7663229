// The README's code map names every src/ file over 500 lines and every function over 80 lines (issue 12): a new one fails here until it is split or explained.
import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import ts from 'typescript';

const ROOT = join(import.meta.dirname, '..', '..');
const SRC = join(ROOT, 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

/** Functions, methods and arrow functions longer than `max` lines, first to last line, named by what holds them. */
function longFunctions(file: string, text: string, max: number): Array<{ name: string; lines: number }> {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const found: Array<{ name: string; lines: number }> = [];
  const visit = (node: ts.Node, holder: string | undefined): void => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const lines = sf.getLineAndCharacterOfPosition(node.getEnd()).line - sf.getLineAndCharacterOfPosition(node.getStart()).line + 1;
      const own = ts.isConstructorDeclaration(node) ? 'constructor' : node.name?.getText(sf);
      if (lines > max) found.push({ name: own ?? holder ?? '(anonymous)', lines });
    }
    const next = ts.isVariableDeclaration(node) || ts.isPropertyDeclaration(node) || ts.isPropertyAssignment(node) ? node.name.getText(sf) : holder;
    ts.forEachChild(node, (child) => visit(child, next));
  };
  visit(sf, undefined);
  return found;
}

describe('README code map', () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const files = sourceFiles(SRC).map((f) => ({ rel: relative(SRC, f), text: readFileSync(f, 'utf8') }));

  it('names every src/ file over 500 lines', () => {
    const long = files.filter((f) => f.text.split('\n').length - (f.text.endsWith('\n') ? 1 : 0) > 500).map((f) => f.rel);
    expect(long.filter((rel) => !readme.includes(`\`${rel}\``))).toEqual([]);
  });

  it('names every function over 80 lines with its file', () => {
    const missing = files.flatMap((f) =>
      longFunctions(f.rel, f.text, 80)
        .filter((fn) => !readme.includes(`\`${fn.name}\` (`) || !readme.includes(`\`${f.rel}\``))
        .map((fn) => `${f.rel} ${fn.name} (${fn.lines})`),
    );
    expect(missing).toEqual([]);
  });
});
