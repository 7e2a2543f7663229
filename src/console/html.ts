// HTML building blocks for the console: escaping (every value goes through it), the page layout, the stylesheet and the security headers of every answer.
import type { AdminResponse } from '../admin/server.js';

/** Escapes text for element content and quoted attribute values. */
export function esc(v: unknown): string {
  return String(v ?? '').replace(/[&<>"'`]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A tagged template whose interpolations are escaped unless they are Html already. */
export class Html {
  constructor(readonly s: string) {}
  toString(): string {
    return this.s;
  }
}

export function html(strings: TemplateStringsArray, ...vals: unknown[]): Html {
  let out = strings[0]!;
  vals.forEach((v, i) => {
    out += render(v) + strings[i + 1]!;
  });
  return new Html(out);
}

function render(v: unknown): string {
  if (v instanceof Html) return v.s;
  if (Array.isArray(v)) return v.map(render).join('');
  if (v === null || v === undefined || v === false) return '';
  return esc(v);
}

/**
 * No script at all (the console works without JavaScript), nothing from elsewhere, forms only to
 * ourselves, never framed. `sandbox` on top removes scripts and plugins even if markup slipped through.
 */
export const CSP =
  "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; sandbox allow-forms allow-same-origin allow-downloads";

export const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CSP,
  // same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on our own form posts, and the
  // Origin check is part of the CSRF defence. Nothing leaves for other sites either way.
  'referrer-policy': 'same-origin',
  'x-frame-options': 'DENY',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'permissions-policy': 'camera=(), microphone=(), geolocation=()',
};

export function page(status: number, body: Html, headers: Record<string, string> = {}): AdminResponse {
  return { status, text: body.s, headers: { ...SECURITY_HEADERS, 'content-type': 'text/html; charset=utf-8', ...headers } };
}

export function redirect(location: string, headers: Record<string, string> = {}): AdminResponse {
  return { status: 303, text: '', headers: { ...SECURITY_HEADERS, location, ...headers } };
}

export interface LayoutUser {
  user: string;
  role: string;
  csrf: string;
}

export function layout(base: string, title: string, content: Html, who: LayoutUser | null): Html {
  const nav = who
    ? html`<nav>
        <a href="${base}/messages">Messages</a>${who.role === 'admin' ? html` <a href="${base}/audit">Audit</a>` : ''}
        <span class="who">${who.user} (${who.role})</span>
        <form method="post" action="${base}/logout" class="inline"><input type="hidden" name="_csrf" value="${who.csrf}" /><button>Sign out</button></form>
      </nav>`
    : html``;
  return html`<!doctype html>
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="same-origin" />
        <title>${title} · dlp-relay</title>
        <link rel="stylesheet" href="${base}/static/console.css" />
      </head>
      <body>
        <header><strong>dlp-relay</strong> quarantine ${nav}</header>
        <main>
          <h1>${title}</h1>
          ${content}
        </main>
      </body>
    </html> `;
}

export const CSS = `
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1f3a5f;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:center;flex-wrap:wrap}
header nav{display:flex;gap:1em;align-items:center;flex:1}
header a{color:#fff}
header .who{margin-left:auto;opacity:.85}
main{padding:1em 1.5em;max-width:1400px}
h1{font-size:1.3em;margin:.2em 0 .8em}
h2{font-size:1.1em;margin:1.4em 0 .5em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #d8dce3;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
tr:nth-child(even) td{background:#fafbfc}
form.inline{display:inline}
fieldset{border:1px solid #d8dce3;background:#fff;margin:0 0 1em;padding:.6em 1em}
fieldset label{display:inline-block;margin:.2em 1em .2em 0}
input,select,button,textarea{font:inherit}
input[type=text],input[type=search],input[type=password],input[type=datetime-local],select,textarea{padding:.25em .4em;border:1px solid #b9c0cc;border-radius:3px}
button{padding:.3em .9em;border:1px solid #1f3a5f;background:#1f3a5f;color:#fff;border-radius:3px;cursor:pointer}
button.danger{background:#a61b1b;border-color:#a61b1b}
pre.body{white-space:pre-wrap;word-break:break-word;background:#fff;border:1px solid #d8dce3;padding:.8em;max-height:40em;overflow:auto}
iframe.body{display:block;width:100%;height:40em;background:#fff;border:1px solid #d8dce3}
.notice{padding:.6em 1em;border-radius:3px;margin:0 0 1em}
.ok{background:#e3f4e6;border:1px solid #9ad0a5}
.err{background:#fbe4e4;border:1px solid #e0a1a1}
.muted{color:#667085}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;background:#fff;padding:.6em 1em;border:1px solid #d8dce3}
dl.kv dt{font-weight:600}
dl.kv dd{margin:0;word-break:break-word}
.pager{margin:.8em 0}
.login{max-width:24em;background:#fff;border:1px solid #d8dce3;padding:1em 1.5em}
.login label{display:block;margin:.5em 0}
.login input{width:100%}
`;
