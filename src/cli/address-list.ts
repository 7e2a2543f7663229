// Extracts the bare addresses from an RFC 5322 address-list header value (From/To/Cc/Bcc) for the send harness.

/**
 * Returns the addresses of `value` in order: `Name <a@b>` gives a@b, groups (`team: a@b, c@d;`) are
 * flattened, quoted display names may hold commas, comments `( ... )` (nested, with escapes) are
 * dropped. A mailbox without angle brackets is its last word containing '@' (or its only word).
 * Lenient by design: this only picks envelope defaults for a test harness, never validates mail.
 */
export function parseAddressList(value: string): string[] {
  const out: string[] = [];
  let text = '';
  let angle: string | null = null;
  const flush = (): void => {
    const addr = angle !== null ? angle.trim() : bareAddress(text);
    if (addr) out.push(addr);
    text = '';
    angle = null;
  };
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c === '"') {
      // A quoted string: a display name, or a quoted local part when '@' follows right after it.
      let q = '';
      for (i++; i < value.length && value[i] !== '"'; i++) q += value[i] === '\\' ? (value[++i] ?? '') : value[i]!;
      // Blanks inside the quotes are masked so the word split below keeps the local part whole.
      text += value[i + 1] === '@' ? `"${q.replace(/\s/g, '\u0000')}"` : ' ';
    } else if (c === '(') {
      let depth = 1;
      for (i++; i < value.length && depth > 0; i++) {
        if (value[i] === '\\') i++;
        else if (value[i] === '(') depth++;
        else if (value[i] === ')') depth--;
      }
      i--;
      text += ' ';
    } else if (c === '<') {
      const end = value.indexOf('>', i);
      angle = value.slice(i + 1, end === -1 ? value.length : end);
      i = end === -1 ? value.length : end;
    } else if (c === ',' || c === ';') {
      flush();
    } else if (c === ':' && angle === null) {
      // "group-name:" opens a group; the name is not an address.
      text = '';
    } else {
      text += c;
    }
  }
  flush();
  return out;
}

function bareAddress(text: string): string {
  const words = text
    .trim()
    .split(/\s+/)
    .filter((w) => w !== '');
  const withAt = words.filter((w) => w.includes('@'));
  if (withAt.length > 0) return withAt[withAt.length - 1]!.replace(/\u0000/g, ' ');
  // "To: postmaster" names a local mailbox; several words without '@' are a name without an address.
  return words.length === 1 ? words[0]! : '';
}
