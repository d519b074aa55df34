// The Silo console: a single-page app over the JSON API.
//
// Rules this file keeps:
// - The admin token lives in sessionStorage only, and leaves the page only
//   as the Authorization header of API calls: never in a cookie, a URL or
//   the page's markup.
// - No HTML is built from strings. Elements are made with createElement and
//   every value goes in as text (h() appends strings as text nodes), so
//   tenant-controlled text (ids, key names, error messages, audit
//   parameters) cannot become markup.
// - Links are built from fixed prefixes and encodeURIComponent.
'use strict';

(() => {
  const TOKEN_KEY = 'silo.adminToken';
  const PAGE = 100; // rows per API page

  // ---- elements and formatting ----

  // h makes an element: attrs are attributes (on* keys are listeners, class
  // the class name), children are nodes or strings (made text nodes).
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'class') e.className = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    return add(e, ...children);
  }

  // add appends children to e as h does: nodes, and strings as text; null,
  // undefined and false are left out.
  function add(e, ...children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  const enc = encodeURIComponent;
  const tenantLink = (id) => h('a', { href: '#/tenants/' + enc(id), class: 'mono' }, id);
  const shardLink = (name) => name ? h('a', { href: '#/tenants?shard=' + enc(name) }, name) : '—';
  const badge = (text) => h('span', { class: 'badge ' + String(text).replace(/[^a-z-]/g, '') }, text);

  function when(s) {
    if (!s) return '—';
    const d = new Date(s);
    if (isNaN(d)) return String(s);
    return d.toISOString().replace('T', ' ').slice(0, 19) + 'Z';
  }

  function bytes(n) {
    if (n === undefined || n === null) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = Number(n);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? String(v) : v.toFixed(1)) + ' ' + units[i];
  }

  function table(headers, rows, empty) {
    const head = h('tr', null, headers.map((c) => {
      const [text, cls] = Array.isArray(c) ? c : [c];
      return h('th', { class: cls }, text);
    }));
    const body = rows.length ? rows : [h('tr', null, h('td', { colspan: headers.length, class: 'muted' }, empty || 'None.'))];
    return h('table', null, h('thead', null, head), h('tbody', null, body));
  }

  const td = (content, cls) => h('td', { class: cls }, content);

  function facts(pairs) {
    return h('dl', { class: 'facts' }, pairs.map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
  }

  // ---- the API ----

  class APIError extends Error {
    constructor(status, code, detail) {
      super(detail);
      this.status = status;
      this.code = code;
    }
  }

  function describe(err) {
    if (err instanceof APIError) return err.message + ' (' + err.code + ')';
    return String(err && err.message || err);
  }

  // api calls the JSON API with the token and returns the decoded body; a
  // problem is thrown as an APIError. A 401 means the token is no good any
  // more: the console forgets it and asks for another.
  async function api(method, path, body) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new APIError(401, 'EUNAUTHORIZED', 'not logged in');
    const headers = { Authorization: 'Bearer ' + token, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new APIError(0, 'EUNAVAILABLE', 'the Silo API cannot be reached: ' + e.message);
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!resp.ok) {
      const code = (data && data.code) || String(resp.status);
      const detail = (data && (data.detail || data.title)) || resp.statusText || 'request failed';
      if (resp.status === 401) logout('The API refused the token: ' + detail);
      throw new APIError(resp.status, code, detail);
    }
    return data;
  }

  // all follows a list's cursors, up to max items.
  async function all(path, max) {
    const items = [];
    let cursor = null;
    const sep = path.includes('?') ? '&' : '?';
    do {
      const page = await api('GET', path + sep + 'limit=' + PAGE + (cursor ? '&cursor=' + enc(cursor) : ''));
      items.push(...page.items);
      cursor = page.nextCursor;
    } while (cursor && items.length < max);
    return items;
  }

  // operationsOf reads the operations that audit entries name (the
  // `operation` parameter of tenant changes), newest first, at most max.
  async function operationsOf(entries, max) {
    const ids = [];
    for (const e of entries) {
      const id = e.params && e.params.operation;
      if (typeof id === 'string' && !ids.includes(id)) ids.push(id);
      if (ids.length >= max) break;
    }
    const ops = await Promise.all(ids.map((id) =>
      api('GET', '/v1/operations/' + enc(id)).catch((err) => ({ id, missing: describe(err) }))));
    return ops;
  }

  // ---- flash messages, confirmations ----

  function flash(text, isError) {
    const box = document.getElementById('flash');
    box.replaceChildren(h('p', { class: isError ? 'error' : null }, text));
  }

  let confirming = 0; // confirmations open: auto-refresh waits for them

  // action is a button that asks before it acts: a click shows the question
  // with Confirm and Cancel; Confirm runs act, flashes what it answered, and
  // shows the page again.
  function action(label, question, act, opts) {
    const o = opts || {};
    const wrap = h('span', { class: 'actions' });
    const button = h('button', { type: 'button', class: o.danger ? 'danger' : null, 'data-action': o.name || label }, label);
    const ask = () => {
      confirming++;
      const done = () => { confirming = Math.max(0, confirming - 1); wrap.replaceChildren(button); };
      const yes = h('button', { type: 'button', class: 'danger', 'data-confirm': o.name || label }, 'Confirm');
      const no = h('button', { type: 'button' }, 'Cancel');
      no.addEventListener('click', done);
      yes.addEventListener('click', async () => {
        yes.disabled = true;
        no.disabled = true;
        try {
          flash(await act(), false);
        } catch (err) {
          flash(label + ' failed: ' + describe(err), true);
        }
        done();
        render();
      });
      wrap.replaceChildren(h('span', { class: 'confirm' }, question, yes, no));
    };
    button.addEventListener('click', ask);
    wrap.append(button);
    return wrap;
  }

  // outcome says how a tenant change answered: the tenant (done) or its
  // operation (202, still running).
  function outcome(verb, id, body) {
    if (body && body.kind && body.state === 'running') {
      return 'Tenant ' + id + ': ' + verb + ' still running as operation ' + body.id + '; it goes on in the background.';
    }
    return 'Tenant ' + id + ' is now ' + (body && body.state) + '.';
  }

  // ---- pages ----

  async function shardsPage(view) {
    const [shards, plan] = await Promise.all([
      all('/v1/shards', 10000),
      // The plan weighs active shards by their active tenants' databases:
      // the only size of a shard the API has.
      api('GET', '/v1/rebalance/plan').catch((err) => ({ error: describe(err) })),
    ]);
    const size = new Map((plan.shards || []).map((s) => [s.shard, s.bytes]));
    const rows = shards.map((s) => {
      const pool = s.pool;
      const acts = h('span', { class: 'actions' });
      if (s.state === 'active') {
        acts.append(action('Drain', 'Drain ' + s.name + ' and move its active tenants off?', async () => {
          await api('POST', '/v1/shards/' + enc(s.name) + '/drain');
          return 'Shard ' + s.name + ' is draining: its active tenants are moving off (see Moves).';
        }, { danger: true, name: 'drain-' + s.name }));
      } else {
        acts.append(action('Activate', 'Return ' + s.name + ' to service?', async () => {
          await api('POST', '/v1/shards/' + enc(s.name) + '/activate');
          return 'Shard ' + s.name + ' is active.';
        }, { name: 'activate-' + s.name }));
      }
      return h('tr', { 'data-shard': s.name },
        td(s.name, 'mono'), td(badge(s.state)), td(s.region), td(s.weight, 'num'),
        td(h('a', { href: '#/tenants?shard=' + enc(s.name) }, String(s.tenantCount)), 'num'),
        td(size.has(s.name) ? bytes(size.get(s.name)) : '—', 'num'),
        td(pool ? badge(pool.breakerOpen ? 'open' : 'closed') : h('span', { class: 'muted' }, 'not served')),
        td(pool ? pool.connectionsInUse : '—', 'num'), td(pool ? pool.connectionsIdle : '—', 'num'),
        td(acts));
    });
    add(view,
      h('h1', null, 'Shards'),
      table(['Name', 'State', 'Region', ['Weight', 'num'], ['Tenants', 'num'], ['Size', 'num'], 'Breaker',
        ['Connections in use', 'num'], ['Idle', 'num'], ''], rows, 'No shards registered.'),
      h('p', { class: 'note' }, 'Size: the databases of a shard\'s active tenants, for active shards. ',
        'Breaker and connections: this server\'s, for tenant queries (the data API and the PostgreSQL endpoint); ',
        '"not served" until it has served a tenant of the shard.'),
      plan.error ? h('p', { class: 'error' }, 'Sizes unavailable: ' + plan.error) : null);
  }

  const tenantStates = ['provisioning', 'active', 'suspended', 'moving', 'deleted', 'purged'];

  async function tenantsPage(view, query) {
    const f = {
      prefix: query.get('prefix') || '', shard: query.get('shard') || '',
      state: query.get('state') || '', region: query.get('region') || '',
    };
    const shards = await all('/v1/shards', 10000);
    const regions = [...new Set(shards.map((s) => s.region))].sort();
    const select = (name, values, current) => h('select', { name, id: 'filter-' + name },
      h('option', { value: '' }, 'any'),
      values.map((v) => {
        const o = h('option', { value: v }, v);
        o.selected = v === current;
        return o;
      }));
    const search = h('input', { name: 'prefix', id: 'filter-prefix', type: 'search', placeholder: 'id starts with', autocomplete: 'off' });
    search.value = f.prefix;
    const form = h('form', { class: 'filters', id: 'tenant-filters' },
      h('label', null, 'Search', search),
      h('label', null, 'Shard', select('shard', shards.map((s) => s.name), f.shard)),
      h('label', null, 'State', select('state', tenantStates, f.state)),
      h('label', null, 'Region', select('region', regions, f.region)),
      h('button', { type: 'submit' }, 'Filter'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
      const s = q.toString();
      location.hash = '#/tenants' + (s ? '?' + s : '');
    });
    form.addEventListener('change', (ev) => { if (ev.target.tagName === 'SELECT') form.requestSubmit(); });

    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
    const tbody = h('tbody');
    const more = h('button', { type: 'button', id: 'more-tenants', hidden: true }, 'More');
    const count = h('span', { class: 'muted' });
    let cursor = null;
    let shown = 0;
    const load = async () => {
      const page = await api('GET', '/v1/tenants?limit=' + PAGE + (q.toString() ? '&' + q : '') + (cursor ? '&cursor=' + enc(cursor) : ''));
      for (const t of page.items) {
        tbody.append(h('tr', { 'data-tenant': t.id },
          td(tenantLink(t.id)), td(badge(t.state)), td(shardLink(t.shard)), td(t.region),
          td(t.schemaVersion, 'num'), td(when(t.createdAt))));
      }
      shown += page.items.length;
      cursor = page.nextCursor || null;
      more.hidden = !cursor;
      count.textContent = shown + (cursor ? '+' : '') + ' tenant' + (shown === 1 ? '' : 's');
      if (!shown) tbody.append(h('tr', null, h('td', { colspan: 6, class: 'muted' }, 'No tenants match.')));
    };
    more.addEventListener('click', () => load().catch((err) => flash(describe(err), true)));
    await load();
    add(view, h('h1', null, 'Tenants'), form,
      h('table', { id: 'tenants' },
        h('thead', null, h('tr', null, ['Id', 'State', 'Shard', 'Region', ['Schema version', 'num'], 'Created']
          .map((c) => Array.isArray(c) ? h('th', { class: c[1] }, c[0]) : h('th', null, c)))),
        tbody),
      h('p', { class: 'toolbar' }, count, more));
  }

  function operationRows(ops) {
    return ops.map((op) => {
      if (op.missing) return h('tr', null, td(op.id, 'mono'), h('td', { colspan: 6, class: 'error' }, op.missing));
      const last = op.steps.length ? op.steps[op.steps.length - 1] : null;
      const steps = h('details', null, h('summary', null, op.steps.length + ' steps' + (last && op.state === 'running' ? ', at ' + last.name : '')),
        table(['Step', 'State', ['Attempts', 'num'], 'Started', 'Finished', 'Error'], op.steps.map((s) => h('tr', null,
          td(s.name, 'mono'), td(badge(s.state)), td(s.attempts, 'num'), td(when(s.startedAt)), td(when(s.finishedAt)),
          td(s.error || '', 'wrap error')))));
      return h('tr', { 'data-operation': op.id },
        td(op.kind), td(badge(op.state)), td(when(op.createdAt)), td(when(op.finishedAt)), td(steps),
        td(op.error ? op.error + (op.errorCode ? ' (' + op.errorCode + ')' : '') : '', 'wrap error'),
        td(op.id, 'mono muted'));
    });
  }

  function auditRows(entries, withTarget) {
    return entries.map((e) => h('tr', null,
      td(when(e.time)), td(e.actor), td(e.action, 'mono'),
      withTarget ? td(targetLink(e.target)) : null,
      td(badge(e.result === 'ok' ? 'ok' : 'error'), null),
      td(e.result === 'ok' ? '' : e.result + ': ' + (e.error || ''), 'wrap error'),
      td(Object.keys(e.params || {}).length ? JSON.stringify(e.params) : '', 'wrap mono'),
      td(e.requestId || '', 'mono muted')));
  }

  function targetLink(target) {
    const t = String(target);
    if (t.startsWith('tenant/')) return h('a', { href: '#/tenants/' + enc(t.slice(7)), class: 'mono' }, t);
    if (t.startsWith('shard/')) return h('a', { href: '#/tenants?shard=' + enc(t.slice(6)), class: 'mono' }, t);
    return h('span', { class: 'mono' }, t);
  }

  async function tenantPage(view, query, id) {
    let t;
    let sizeError = null;
    try {
      t = await api('GET', '/v1/tenants/' + enc(id) + '?size=true');
    } catch (err) {
      if (err.status !== 503) throw err;
      sizeError = describe(err); // its shard does not answer: the rest is the catalog's
      t = await api('GET', '/v1/tenants/' + enc(id));
    }
    const [keys, audit, opsPage] = await Promise.all([
      t.state === 'purged' ? { items: [] } : api('GET', '/v1/tenants/' + enc(id) + '/keys?limit=' + PAGE),
      api('GET', '/v1/audit?limit=' + PAGE + '&target=' + enc('tenant/' + id)),
      api('GET', '/v1/operations?limit=20&tenant=' + enc(id)),
    ]);
    const ops = opsPage.items;

    const acts = h('div', { class: 'actions' });
    if (t.state === 'active') {
      acts.append(action('Suspend', 'Suspend ' + t.id + '? Its role stops logging in and its sessions end.', async () =>
        outcome('suspend', t.id, await api('POST', '/v1/tenants/' + enc(t.id) + '/suspend?wait=20s')),
      { danger: true, name: 'suspend' }));
    }
    if (t.state === 'suspended') {
      acts.append(action('Resume', 'Resume ' + t.id + '?', async () =>
        outcome('resume', t.id, await api('POST', '/v1/tenants/' + enc(t.id) + '/resume?wait=20s')),
      { name: 'resume' }));
    }
    const lim = (n, unit) => n < 0 ? 'no limit' : n + (unit || '');
    add(view,
      h('p', { class: 'muted' }, h('a', { href: '#/tenants' }, 'Tenants'), ' / ', t.id),
      h('h1', null, 'Tenant ', h('span', { class: 'mono', id: 'tenant-id' }, t.id), ' ', h('span', { id: 'tenant-state' }, badge(t.state))),
      acts,
      h('h2', null, 'Details'),
      facts([
        ['Shard', shardLink(t.shard)], ['Region', t.region], ['Database', h('span', { class: 'mono' }, t.database)],
        ['Schema version', h('span', { id: 'tenant-version' }, String(t.schemaVersion))],
        ['Size', h('span', { id: 'tenant-size' }, sizeError ? 'unavailable: ' + sizeError : bytes(t.sizeBytes))],
        ['Connections', lim(t.limits.connections)], ['Temp files', lim(t.limits.tempFileMB, ' MiB per session')],
        ['Epoch', String(t.epoch)], ['Created', when(t.createdAt)], ['Updated', when(t.updatedAt)],
        t.deletedAt ? ['Deleted', when(t.deletedAt)] : null, t.purgeAfter ? ['Purged after', when(t.purgeAfter)] : null,
      ].filter(Boolean)),
      h('h2', null, 'Keys'),
      h('p', { class: 'note' }, 'Secrets are shown once, when a key is made, and never again.'),
      h('div', { id: 'tenant-keys' }, table(['Id', 'Name', 'Created', 'Last used', 'Revoked'], keys.items.map((k) => h('tr', null,
        td(k.id, 'mono'), td(k.name, 'wrap'), td(when(k.createdAt)), td(when(k.lastUsedAt)), td(k.revokedAt ? when(k.revokedAt) : '')),
      ), 'No keys.')),
      h('h2', null, 'Operations'),
      h('p', { class: 'note' }, 'The last 20, newest first.'),
      h('div', { id: 'tenant-operations' },
        table(['Kind', 'State', 'Created', 'Finished', 'Steps', 'Error', 'Id'], operationRows(ops), 'No operations.')),
      h('h2', null, 'Audit'),
      table(['Time', 'Actor', 'Action', 'Result', 'Error', 'Parameters', 'Request'], auditRows(audit.items, false), 'No entries.'));
  }

  const inProgress = (run) => ['preparing', 'canary', 'running'].includes(run.state);

  function progressBar(p) {
    const bar = h('span', { class: 'progress', title: p.done + ' done, ' + p.failed + ' failed, ' + p.skipped + ' skipped of ' + p.total });
    let left = 0;
    for (const part of ['done', 'failed', 'skipped']) {
      const w = p.total ? 100 * p[part] / p.total : 0;
      const seg = h('span', { class: part });
      seg.style.left = left + '%'; // CSSOM, which the policy allows; a style attribute it would not
      seg.style.width = w + '%';
      left += w;
      bar.append(seg);
    }
    return bar;
  }

  async function migrationsPage(view) {
    const [status, runs] = await Promise.all([api('GET', '/v1/migrations/status'), api('GET', '/v1/migrations/runs?limit=20')]);
    const rows = runs.items.map((r) => {
      const p = r.progress;
      return h('tr', { 'data-run': r.id },
        td(r.id.slice(0, 8), 'mono'), td(badge(r.state)), td(r.direction + ' to ' + r.targetVersion),
        td([progressBar(p), ' ', p.done + '/' + p.total + ' done',
          p.running ? ', ' + p.running + ' running' : '', p.pending ? ', ' + p.pending + ' pending' : '',
          p.failed ? ', ' + p.failed + ' failed' : '', p.skipped ? ', ' + p.skipped + ' skipped' : '',
          r.etaSeconds !== undefined && inProgress(r) ? ', about ' + r.etaSeconds + 's left' : ''], 'run-progress'),
        td(r.createdBy), td(when(r.createdAt)), td(when(r.finishedAt)), td(r.error || '', 'wrap error'),
        td(inProgress(r) ? action('Stop', 'Stop this run? Tenants being migrated finish; the others are skipped.', async () => {
          const stopped = await api('POST', '/v1/migrations/runs/' + enc(r.id) + '/stop');
          return 'Run ' + stopped.id + ' is ' + stopped.state + '.';
        }, { danger: true, name: 'stop-run' }) : ''));
    });
    const failures = status.failures.map((f) => h('tr', null,
      td(tenantLink(f.tenantId)), td(f.shard), td(f.runId.slice(0, 8), 'mono'), td(f.version, 'num'),
      td(f.error, 'wrap error'), td(f.sqlstate, 'mono'), td(when(f.finishedAt))));
    const versions = status.shards.map((s) => h('tr', null, td(s.shard, 'mono'),
      td(s.versions.map((v) => 'version ' + v.version + ': ' + v.tenants + ' tenant' + (v.tenants === 1 ? '' : 's')).join('; '))));

    const num = (name, label, min, max, placeholder) => h('label', null, label,
      h('input', { type: 'number', name, min, max, placeholder }));
    const form = h('form', { class: 'inline', id: 'start-run' },
      num('to', 'Target version', 0, null, 'latest'),
      num('concurrency', 'Concurrency', 1, 256, '8'),
      num('perShard', 'Per shard', 1, 256, '4'),
      num('canary', 'Canary tenants', 0, 10000, '1 per shard'),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'continueOnError' }), 'Go on past failures'),
      h('button', { type: 'submit', class: 'primary', id: 'start-run-button' }, 'Start a run up'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { direction: 'up' };
      for (const k of ['to', 'concurrency', 'perShard', 'canary']) {
        const v = form.elements[k].value;
        if (v !== '') body[k] = Number(v);
      }
      if (form.elements.continueOnError.checked) body.continueOnError = true;
      try {
        const run = await api('POST', '/v1/migrations/runs', body);
        flash('Run ' + run.id + ' started: up to version ' + run.targetVersion + '.', false);
      } catch (err) {
        flash('The run did not start: ' + describe(err), true);
      }
      render();
    });
    add(view,
      h('h1', null, 'Migrations'),
      facts([['Latest file', String(status.latestVersion)], ['Target version', String(status.targetVersion)],
        ['Tenants behind', h('span', { id: 'migrations-behind' }, String(status.behind))]]),
      h('h2', null, 'Start a run'), form,
      h('p', { class: 'note' }, 'Files are read and tried on a scratch copy of a template first; a run refuses them before any tenant is touched.'),
      h('h2', null, 'Runs'),
      h('div', { id: 'runs' }, table(['Run', 'State', 'Target', 'Progress', 'By', 'Started', 'Finished', 'Error', ''], rows, 'No runs yet.')),
      h('h2', null, 'Failures not yet fixed'),
      h('div', { id: 'failures' }, table(['Tenant', 'Shard', 'Run', ['Version', 'num'], 'Error', 'SQLSTATE', 'When'], failures, 'None.')),
      h('h2', null, 'Versions by shard'),
      table(['Shard', 'Tenants'], versions, 'No tenants.'));
    return runs.items.some(inProgress);
  }

  async function movesPage(view) {
    // Moves are operations; the audit log names each one started.
    const audit = await api('GET', '/v1/audit?limit=' + PAGE + '&action=tenant.move');
    const ops = await operationsOf(audit.items.filter((e) => e.result === 'ok'), 50);
    const from = new Map(audit.items.filter((e) => e.params && e.params.operation).map((e) => [e.params.operation, e.params]));
    const row = (op) => {
      if (op.missing) return h('tr', null, td(op.id, 'mono'), h('td', { colspan: 7, class: 'error' }, op.missing));
      const p = from.get(op.id) || {};
      const last = op.steps.length ? op.steps[op.steps.length - 1] : null;
      const m = op.move || {};
      return h('tr', { 'data-operation': op.id },
        td(tenantLink(op.tenantId)), td(p.from || '—'), td(p.to || '—'), td(badge(op.state)),
        td(last ? last.name : '—', 'mono'), td(m.path ? m.path + (m.pauseMs !== undefined ? ', paused ' + m.pauseMs + ' ms' : '') : '—'),
        td(when(op.createdAt)), td(op.error ? op.error + (op.errorCode ? ' (' + op.errorCode + ')' : '') : '', 'wrap error'));
    };
    const running = ops.filter((op) => op.state === 'running');
    const done = ops.filter((op) => op.state !== 'running');
    const headers = ['Tenant', 'From', 'To', 'State', 'Step', 'Path', 'Started', 'Error'];
    add(view,
      h('h1', null, 'Moves'),
      h('h2', null, 'In flight'),
      h('div', { id: 'moves-running' }, table(headers, running.map(row), 'No move in flight.')),
      h('h2', null, 'Recent moves'),
      h('div', { id: 'moves-recent' }, table(headers, done.map(row), 'No moves yet.')),
      h('p', { class: 'note' }, 'The moves started last, as the audit log names them: ' + ops.length + ' (50 at most).'));
    return running.length > 0;
  }

  async function auditPage(view, query) {
    const f = { action: query.get('action') || '', target: query.get('target') || '', actor: query.get('actor') || '' };
    const input = (name, placeholder) => {
      const i = h('input', { name, id: 'audit-' + name, placeholder, autocomplete: 'off' });
      i.value = f[name];
      return h('label', null, name[0].toUpperCase() + name.slice(1), i);
    };
    const form = h('form', { class: 'filters' }, input('action', 'tenant.suspend'), input('target', 'tenant/acme'),
      input('actor', 'admin'), h('button', { type: 'submit' }, 'Filter'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      for (const [k, v] of new FormData(form)) if (v) q.set(k, v);
      const s = q.toString();
      location.hash = '#/audit' + (s ? '?' + s : '');
    });
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
    const tbody = h('tbody');
    const more = h('button', { type: 'button', hidden: true }, 'Older entries');
    let cursor = null;
    const load = async () => {
      const page = await api('GET', '/v1/audit?limit=' + PAGE + (q.toString() ? '&' + q : '') + (cursor ? '&cursor=' + enc(cursor) : ''));
      tbody.append(...auditRows(page.items, true));
      if (!page.items.length && !cursor) tbody.append(h('tr', null, h('td', { colspan: 8, class: 'muted' }, 'No entries.')));
      cursor = page.nextCursor || null;
      more.hidden = !cursor;
    };
    more.addEventListener('click', () => load().catch((err) => flash(describe(err), true)));
    await load();
    add(view, h('h1', null, 'Audit log'), form,
      h('table', { id: 'audit' }, h('thead', null, h('tr', null,
        ['Time', 'Actor', 'Action', 'Target', 'Result', 'Error', 'Parameters', 'Request'].map((c) => h('th', null, c)))), tbody),
      h('p', { class: 'toolbar' }, more));
  }

  // ---- routing, login ----

  // decode undoes encodeURIComponent, and leaves text that is not encoded
  // (typed into the address bar) as it is.
  function decode(s) {
    try { return decodeURIComponent(s); } catch (e) { return s; }
  }

  // Each route: the hash's path, the page's name (its view is #view-NAME),
  // the navigation link it lights, and the function that fills the view.
  // A function returns true to be shown again in a few seconds (something
  // is in progress).
  const routes = [
    [/^shards$/, 'shards', 'shards', shardsPage],
    [/^tenants$/, 'tenants', 'tenants', tenantsPage],
    [/^tenants\/([^/]+)$/, 'tenant', 'tenants', tenantPage],
    [/^migrations$/, 'migrations', 'migrations', migrationsPage],
    [/^moves$/, 'moves', 'moves', movesPage],
    [/^audit$/, 'audit', 'audit', auditPage],
  ];

  let generation = 0; // of the page shown: a slower, older render is dropped
  let refreshTimer = null;

  // render shows the page the hash names. auto is a refresh of the page in
  // view, which waits while the operator answers a confirmation.
  async function render(auto) {
    const gen = ++generation;
    clearTimeout(refreshTimer);
    if (!auto) confirming = 0; // a new page, or after an action: no question is open
    const token = sessionStorage.getItem(TOKEN_KEY);
    const login = document.getElementById('login');
    const page = document.getElementById('page');
    document.getElementById('nav').hidden = !token;
    document.getElementById('logout').hidden = !token;
    if (!token) {
      page.hidden = true;
      page.replaceChildren();
      login.hidden = false;
      document.getElementById('token').focus();
      return;
    }
    login.hidden = true;
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, qs] = raw.split('?', 2);
    let match = null;
    for (const [re, name, nav, fn] of routes) {
      const m = re.exec(path);
      if (m) { match = [name, nav, fn, m.slice(1).map(decode)]; break; }
    }
    if (!match) {
      location.replace('#/shards');
      return;
    }
    const [name, nav, fn, args] = match;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('current', a.dataset.page === nav);
    const view = h('div', { id: 'view-' + name, 'data-page': name });
    let again = false;
    try {
      again = await fn(view, new URLSearchParams(qs || ''), ...args);
    } catch (err) {
      if (gen !== generation) return;
      if (err instanceof APIError && err.status === 401) return; // logout() showed the login form
      view.replaceChildren(h('h1', null, 'Something went wrong'), h('p', { class: 'error', id: 'page-error' }, describe(err)));
    }
    if (gen !== generation) return;
    if (!(auto && confirming > 0)) { // else the question stays, and the refresh waits
      page.replaceChildren(view);
      page.hidden = false;
      document.title = 'Silo: ' + name;
    }
    if (again) refreshTimer = setTimeout(function tick() {
      if (gen !== generation) return;
      if (confirming > 0) { refreshTimer = setTimeout(tick, 3000); return; }
      render(true);
    }, 3000);
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    document.getElementById('flash').replaceChildren();
    document.getElementById('login-error').textContent = message || '';
    render();
  }

  async function login(ev) {
    ev.preventDefault();
    const input = document.getElementById('token');
    const token = input.value.trim();
    input.value = '';
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    try {
      await api('GET', '/v1/shards?limit=1'); // is it the admin token?
    } catch (err) {
      if (!(err instanceof APIError && err.status === 401)) {
        sessionStorage.removeItem(TOKEN_KEY);
        document.getElementById('login-error').textContent = describe(err);
      }
      return;
    }
    document.getElementById('login-error').textContent = '';
    if (!location.hash || location.hash === '#') location.replace('#/shards');
    render();
  }

  document.getElementById('login-form').addEventListener('submit', login);
  document.getElementById('logout').addEventListener('click', () => logout('Logged out.'));
  window.addEventListener('hashchange', () => {
    document.getElementById('flash').replaceChildren();
    render();
  });
  render();
})();
