// The console's pages as pure functions of their data: sign-in, message list, message detail, action results and audit. No script anywhere.
import type { MessagePreview } from '../quarantine/operations.js';
import type { AuditRecord, QuarantineRecord } from '../quarantine/types.js';
import { html, layout, type Html, type LayoutUser } from './html.js';

export interface ListView {
  items: QuarantineRecord[];
  nextCursor: string | null;
  /** The filter as typed (re-shown in the form, carried in the paging link). */
  query: Record<string, string>;
  canDecide: boolean;
}

const FILTERS = ['from', 'to', 'sender', 'recipient', 'policy', 'actionCode', 'status', 'limit'] as const;

function fmtTime(iso: string): string {
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function size(n: number): string {
  return n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function recipients(r: QuarantineRecord): string {
  const all = r.envelope.to.map((t) => t.address);
  return all.length > 3 ? `${all.slice(0, 3).join(', ')} +${all.length - 3}` : all.join(', ');
}

/** One column of a table: its heading and how an item fills its cell (text is escaped, Html kept). */
type Column<T> = readonly [heading: string, cell: (item: T) => unknown];

/**
 * A table: a heading row, then a row per item, or one full-width row saying `empty` when there are none.
 * A column given as `false` is left out (one only some roles see); `rowClass` styles a row by its item (ok/err).
 */
function table<T>(
  items: readonly T[],
  columns: ReadonlyArray<Column<T> | false>,
  opts: { id?: string; rowClass?: (item: T) => string; empty?: string } = {},
): Html {
  const cols = columns.filter((c): c is Column<T> => c !== false);
  const rows = items.map((x) => html`<tr${opts.rowClass ? html` class="${opts.rowClass(x)}"` : ''}>${cols.map(([, cell]) => html`<td>${cell(x)}</td>`)}</tr>`);
  const none =
    opts.empty !== undefined && rows.length === 0
      ? html`<tr>
          <td colspan="${cols.length}" class="muted">${opts.empty}</td>
        </tr>`
      : '';
  return html`<table${opts.id ? html` id="${opts.id}"` : ''}>
    <thead>
      <tr>${cols.map(([heading]) => html`<th>${heading}</th>`)}</tr>
    </thead>
    <tbody>${rows}${none}</tbody>
  </table>`;
}

export function loginPage(base: string, loginToken: string, error: string | null, name = ''): Html {
  return layout(
    base,
    'Sign in',
    html`${error ? html`<p class="notice err" role="alert">${error}</p>` : ''}
      <form method="post" action="${base}/login" class="login">
        <input type="hidden" name="_login" value="${loginToken}" />
        <label>User <input type="text" name="user" value="${name}" autocomplete="username" required maxlength="64" /></label>
        <label>Password <input type="password" name="password" autocomplete="current-password" required maxlength="1024" /></label>
        <button type="submit">Sign in</button>
      </form>`,
    null,
  );
}

export function listPage(base: string, who: LayoutUser, v: ListView, notice: Html | null = null): Html {
  const q = v.query;
  const statusSel = (s: string) => html`<option value="${s}" ${q['status'] === s ? html` selected` : ''}>${s || 'any'}</option>`;
  const filterForm = html`<form method="get" action="${base}/messages">
    <fieldset>
      <legend>Filter</legend>
      <label>From (UTC) <input type="datetime-local" name="from" value="${q['from'] ?? ''}" /></label>
      <label>To (UTC) <input type="datetime-local" name="to" value="${q['to'] ?? ''}" /></label>
      <label>Sender <input type="search" name="sender" value="${q['sender'] ?? ''}" maxlength="320" /></label>
      <label>Recipient <input type="search" name="recipient" value="${q['recipient'] ?? ''}" maxlength="320" /></label>
      <label>Policy <input type="search" name="policy" value="${q['policy'] ?? ''}" maxlength="320" /></label>
      <label>actionCode <input type="text" name="actionCode" value="${q['actionCode'] ?? ''}" size="4" maxlength="4" /></label>
      <label
        >Status
        <select name="status">
          ${['', 'held', 'released'].map(statusSel)}
        </select></label
      >
      <button type="submit">Apply</button> <a href="${base}/messages">Clear</a>
    </fieldset>
  </form>`;
  const messages = table(
    v.items,
    [
      v.canDecide && ['Select', (r) => html`<input type="checkbox" name="id" value="${r.id}" form="bulk" aria-label="select ${r.id}" />`],
      ['Quarantined', (r) => fmtTime(r.quarantinedAt)],
      ['Sender', (r) => r.envelope.from || '<>'],
      ['Recipients', recipients],
      ['Subject', (r) => html`<a href="${base}/messages/${r.id}">${r.subject ?? '(no subject)'}</a>`],
      ['Policies', (r) => r.policies.map((p) => p.name).join(', ')],
      ['actionCode', (r) => r.actionCode ?? '—'],
      ['Status', (r) => r.status],
      ['Size', (r) => size(r.size)],
    ],
    { id: 'messages', empty: 'No messages match.' },
  );
  const keep = new URLSearchParams();
  for (const k of FILTERS) if (q[k]) keep.set(k, q[k]);
  const next = v.nextCursor ? new URLSearchParams(keep) : null;
  next?.set('cursor', v.nextCursor!);
  const bulk = v.canDecide
    ? html`<form method="post" action="${base}/messages/bulk" id="bulk">
        <input type="hidden" name="_csrf" value="${who.csrf}" />
        <fieldset>
          <legend>Selected messages (up to 500)</legend>
          <button type="submit" name="action" value="release">Release selected</button>
          <button type="submit" name="action" value="delete" class="danger">Delete selected</button>
        </fieldset>
      </form>`
    : '';
  return layout(
    base,
    'Quarantined messages',
    html`${notice ?? ''}${filterForm}${bulk} ${messages}
      <p class="pager">
        ${v.items.length} shown.
        ${keep.size || q['cursor'] ? html`<a href="${base}/messages?${keep.toString()}">First page</a> ` : ''}${next ? html`<a href="${base}/messages?${next.toString()}" rel="next">Next page</a>` : ''}
      </p>`,
    who,
  );
}

export interface MessageView {
  record: QuarantineRecord;
  preview: MessagePreview;
  canDecide: boolean;
  /** text (default): the text part, or HTML reduced to text; html: the HTML part in a sandboxed frame. */
  view?: 'text' | 'html';
}

/**
 * The frame's own policy, first in its head so it holds before any of the message's markup is parsed. It adds to the
 * console page's policy, which an about:srcdoc frame inherits: nothing may load except data: images.
 */
export const FRAME_CSP = "default-src 'none'; img-src data:; form-action 'none'; base-uri 'none'";

/** The srcdoc document: our CSP and referrer meta, then the message's HTML as sent (the sandbox and CSP make it inert). */
export function frameDocument(source: string): string {
  return `<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="${FRAME_CSP}"><meta name="referrer" content="no-referrer"></head><body>${source}`;
}

function bodySection(base: string, id: string, p: MessagePreview, view: 'text' | 'html'): Html {
  const href = `${base}/messages/${id}`;
  const views = p.html
    ? html`<p class="views" id="views">
        Show:
        ${view === 'html' ? html`<a href="${href}">Text</a> | <strong>HTML (sandboxed)</strong>` : html`<strong>Text</strong> | <a href="${href}?view=html">HTML (sandboxed)</a>`}
      </p>`
    : '';
  if (view === 'html' && p.html)
    return html`<h2>Body</h2>
      ${views}
      <p class="muted">
        The HTML part in a sandboxed frame: no scripts, forms or plugins, and nothing is loaded from anywhere (remote images and styles stay
        blank).${p.html.truncated ? ' Truncated.' : ''}
      </p>
      <iframe
        class="body"
        id="html-body"
        sandbox=""
        referrerpolicy="no-referrer"
        title="HTML body (sandboxed)"
        srcdoc="${frameDocument(p.html.source)}"
      ></iframe>`;
  return html`<h2>Body text</h2>
    ${views}
    <p class="muted">
      ${p.textSource === 'html-stripped' ? 'HTML reduced to text: no markup, scripts or remote content is ever rendered.' : p.textSource === 'none' ? 'No text part.' : 'Plain-text part.'}${p.textTruncated ? ' Truncated.' : ''}
    </p>
    <pre class="body" id="body">${p.text}</pre>`;
}

export function messagePage(base: string, who: LayoutUser, v: MessageView): Html {
  const r = v.record;
  const p = v.preview;
  const id = r.id;
  const env = html`<dl class="kv" id="envelope">
    <dt>Id</dt>
    <dd>${id}</dd>
    <dt>Status</dt>
    <dd>${r.status}${r.releaseClaim ? ' (release in progress)' : ''}</dd>
    <dt>Quarantined</dt>
    <dd>${fmtTime(r.quarantinedAt)}</dd>
    <dt>Sender</dt>
    <dd>${r.envelope.from || '<>'}</dd>
    <dt>Recipients</dt>
    <dd>${r.envelope.to.map((t) => t.address).join(', ')}</dd>
    <dt>Client</dt>
    <dd>${r.clientAddress}${r.heloName ? ` (${r.heloName})` : ''}</dd>
    <dt>Subject</dt>
    <dd>${r.subject ?? '(no subject)'}</dd>
    <dt>Size</dt>
    <dd>${size(r.size)}</dd>
    <dt>SHA-256</dt>
    <dd>${r.sha256}</dd>
    <dt>Verdict</dt>
    <dd>actionCode ${r.actionCode ?? 'none'} — ${r.reason}</dd>
    ${
      r.release
        ? html`<dt>Released</dt>
            <dd>${fmtTime(r.release.at)} by ${r.release.by} to ${r.release.recipients.join(', ')}</dd>`
        : ''
    }
  </dl>`;
  const policies = r.policies.length
    ? table(
        r.policies,
        [
          ['Policy', (x) => x.name],
          ['Severity', (x) => x.severity ?? ''],
          ['Action setting', (x) => x.actionSettingName ?? ''],
          ['Matches', (x) => x.numberOfMatches ?? ''],
        ],
        { id: 'policies' },
      )
    : html`<p class="muted">No policy names were reported.</p>`;
  const results = r.recipientResults?.length
    ? html`<h2>Delivery results</h2>
        ${table(r.recipientResults, [
          ['Recipient', (x) => x.address],
          ['Status', (x) => x.status],
          ['Reply', (x) => x.response],
          ['When', (x) => fmtTime(x.at)],
          ['By', (x) => x.by],
        ])}`
    : '';
  const attachments = p.attachments.length
    ? table(
        p.attachments,
        [
          ['Name', (a) => a.filename ?? '(unnamed)'],
          ['Type', (a) => a.contentType],
          ['Size', (a) => size(a.size)],
        ],
        { id: 'attachments' },
      )
    : html`<p class="muted">None.</p>`;
  const held = r.status === 'held';
  const actions =
    v.canDecide && held
      ? html`<h2>Decide</h2>
          <form method="post" action="${base}/messages/${id}/release" id="release-form">
            <input type="hidden" name="_csrf" value="${who.csrf}" />
            <fieldset>
              <legend>Release</legend>
              ${r.envelope.to.map((t) => html`<label><input type="checkbox" name="recipient" value="${t.address}" checked /> ${t.address}</label>`)}
              <br /><label><input type="checkbox" name="rescan" value="1" /> Re-scan before releasing</label>
              <label>or redirect to <input type="text" name="redirectTo" maxlength="320" placeholder="reviewer@example.org" /></label>
              <button type="submit">Release</button>
            </fieldset>
          </form>
          <form method="post" action="${base}/messages/${id}/delete">
            <input type="hidden" name="_csrf" value="${who.csrf}" />
            <fieldset>
              <legend>Delete</legend>
              <button type="submit" class="danger">Delete this message</button>
            </fieldset>
          </form>`
      : '';
  const download = v.canDecide ? html`<p><a href="${base}/messages/${id}/eml" download>Download the original (.eml)</a></p>` : '';
  return layout(
    base,
    r.subject ?? '(no subject)',
    html`${env}
      <h2>Matched policies</h2>
      ${policies}${results}${actions} ${bodySection(base, id, p, v.view ?? 'text')}
      <h2>Attachments</h2>
      ${attachments}${download}
      <h2>Headers</h2>
      <table id="headers">
        <tbody>
          ${p.headers.map(
            (h) =>
              html`<tr>
                <th>${h.name}</th>
                <td>${h.value}</td>
              </tr>`,
          )}
        </tbody>
      </table>
      ${p.error ? html`<p class="notice err">The message could not be parsed completely: ${p.error}</p>` : ''}`,
    who,
  );
}

export interface ActionResult {
  id: string;
  ok: boolean;
  text: string;
}

export function resultsPage(base: string, who: LayoutUser, title: string, results: ActionResult[]): Html {
  const ok = results.filter((r) => r.ok).length;
  return layout(
    base,
    title,
    html`<p class="notice ${ok === results.length ? 'ok' : 'err'}" role="status" id="summary">${ok} of ${results.length} done.</p>
      ${table(
        results,
        [
          ['Message', (r) => html`<a href="${base}/messages/${r.id}">${r.id}</a>`],
          ['Outcome', (r) => r.text],
        ],
        { id: 'results', rowClass: (r) => (r.ok ? 'ok' : 'err') },
      )}
      <p><a href="${base}/messages">Back to the list</a></p>`,
    who,
  );
}

export function auditPage(base: string, who: LayoutUser, items: AuditRecord[], nextCursor: string | null, query: Record<string, string>): Html {
  const keep = new URLSearchParams();
  for (const k of ['actor', 'action', 'target'] as const) if (query[k]) keep.set(k, query[k]);
  const next = nextCursor ? new URLSearchParams(keep) : null;
  next?.set('cursor', nextCursor!);
  return layout(
    base,
    'Audit',
    html`<form method="get" action="${base}/audit">
        <fieldset>
          <legend>Filter</legend>
          <label>Actor <input type="search" name="actor" value="${query['actor'] ?? ''}" maxlength="200" /></label>
          <label>Action <input type="search" name="action" value="${query['action'] ?? ''}" maxlength="64" /></label>
          <label>Message <input type="search" name="target" value="${query['target'] ?? ''}" maxlength="64" /></label>
          <button type="submit">Apply</button>
        </fieldset>
      </form>
      ${table(
        items,
        [
          ['When', (a) => fmtTime(a.at)],
          ['Actor', (a) => a.actor],
          ['Source', (a) => a.source ?? ''],
          ['Action', (a) => a.action],
          ['Message', (a) => a.target ?? ''],
          ['Result', (a) => a.result],
          ['Detail', (a) => a.detail ?? ''],
        ],
        { id: 'audit' },
      )}
      ${next ? html`<p class="pager"><a href="${base}/audit?${next.toString()}" rel="next">Next page</a></p>` : ''}`,
    who,
  );
}

export function errorPage(base: string, who: LayoutUser | null, status: number, message: string): Html {
  return layout(
    base,
    status === 403 ? 'Not allowed' : status === 404 ? 'Not found' : 'Something went wrong',
    html`<p class="notice err" role="alert">${message}</p>
      <p><a href="${base}/messages">Back to the list</a></p>`,
    who,
  );
}
