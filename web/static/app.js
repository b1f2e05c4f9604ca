// ballot dashboard: polls api/cluster, streams each member's events from
// api/members/<name>/events, and draws the table, the message flow, the
// logs and the timeline. Plain script, no build step, nothing fetched
// from elsewhere. Every list it keeps is bounded.
'use strict';
(function () {
  const POLL_MS = 700;
  const STRIP = 64;          // log cells per member
  const MAX_DOTS = 120;      // messages in flight on screen
  const DOT_MS = 650;        // one message's travel time
  const MAX_TIMELINE = 200;
  const MAX_SEEN = 4000;
  const MAX_APP = 100;       // application events kept on the page

  const COLORS = {
    MsgApp: '#2b7bd6', MsgAppResp: '#8dbbec',
    MsgHeartbeat: '#8a8a8a', MsgHeartbeatResp: '#c8c8c8',
    MsgVote: '#e8822a', MsgVoteResp: '#f4bd8c',
    MsgPreVote: '#c9a227', MsgPreVoteResp: '#e6d48a',
    MsgSnap: '#8e44ad', MsgTimeoutNow: '#d63031',
    MsgProp: '#27ae60', MsgReadIndex: '#16a085', MsgReadIndexResp: '#76d7c4',
    // Multi-Paxos.
    MsgPrepare: '#e8822a', MsgPromise: '#f4bd8c', MsgAccept: '#2b7bd6', MsgAccepted: '#8dbbec',
    MsgDecide: '#8e44ad', MsgDecideResp: '#c39bd3', MsgNack: '#d63031',
  };
  const LEGEND = [['appends', 'MsgApp'], ['append acks', 'MsgAppResp'], ['heartbeats', 'MsgHeartbeat'],
    ['votes', 'MsgVote'], ['pre-votes', 'MsgPreVote'], ['snapshots', 'MsgSnap'], ['transfer', 'MsgTimeoutNow'],
    ['forwarded proposals', 'MsgProp'], ['reads', 'MsgReadIndex'], ['Paxos prepares', 'MsgPrepare'],
    ['Paxos accepts', 'MsgAccept'], ['Paxos nacks', 'MsgNack']];

  const st = {
    members: [], byId: {}, pos: {}, dev: false, partitioned: [], streams: {},
    prevUp: {}, prevAlarms: {}, dots: [], shown: 0, skipped: 0, seen: new Set(), timeline: [],
    app: [], appSeen: new Set(), appSkipped: 0,
  };
  const $ = (s) => document.querySelector(s);
  const SVG = 'http://www.w3.org/2000/svg';

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k.startsWith('data-') || k === 'title' || k === 'type') e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const k of kids) e.append(k);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  function bytes(n) {
    if (n < 1024) return n + ' B';
    const u = ['KiB', 'MiB', 'GiB', 'TiB'];
    let i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
    return n.toFixed(n < 10 ? 1 : 0) + ' ' + u[i];
  }
  function termColor(t) { return 'hsl(' + ((t * 67) % 360) + ', 62%, 55%)'; }
  function nameOf(id) { return st.byId[id] || id; }

  // ---- polling ----

  async function poll() {
    try {
      const r = await fetch('api/cluster', { cache: 'no-store' });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      update(await r.json());
      $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      $('#updated').classList.remove('stale');
    } catch (e) {
      $('#updated').textContent = 'dashboard unreachable (' + e.message + ')';
      $('#updated').classList.add('stale');
    }
    setTimeout(poll, POLL_MS);
  }

  function update(c) {
    $('#title').textContent = c.title || '';
    st.dev = !!c.dev;
    st.partitioned = c.partitioned || [];
    document.body.classList.toggle('dev', st.dev);
    $('#mode').hidden = !st.dev;
    $('#devbar').hidden = !st.dev;
    st.members = c.members || [];
    for (const m of st.members) {
      if (m.state) st.byId[m.state.id] = m.name;
      const was = st.prevUp[m.name];
      if (was !== undefined && was !== m.up) {
        addTimeline(m.name, { what: m.up ? 'up' : 'down', at: Date.now(), detail: m.up ? 'is reachable again' : 'is down or unreachable' });
      }
      st.prevUp[m.name] = m.up;
      if (m.state) {
        const key = (m.state.alarms || []).join(',');
        const prev = st.prevAlarms[m.name];
        if (prev !== undefined && prev !== key) {
          addTimeline(m.name, { what: 'alarm', at: Date.now(), detail: key ? 'alarms: ' + key : 'alarms cleared' });
        }
        st.prevAlarms[m.name] = key;
      }
      if (m.up && !st.streams[m.name]) openStream(m.name);
    }
    layout();
    renderTable();
    renderNodes();
    renderLogs();
  }

  // ---- event streams ----

  function openStream(name) {
    const es = new EventSource('api/members/' + encodeURIComponent(name) + '/events');
    st.streams[name] = es;
    es.onmessage = (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch (_) { return; }
      if (ev.kind === 'msg') onMessage(ev);
      else if (ev.kind === 'timeline') addTimeline(name, ev);
      else if (ev.kind === 'app') addAppEvent(ev);
    };
    es.onerror = () => {
      // Closed here, opened again by the next poll that finds the member up.
      es.close();
      if (st.streams[name] === es) delete st.streams[name];
    };
  }

  function onMessage(ev) {
    st.shown++;
    st.skipped += ev.skipped || 0;
    const from = nameOf(ev.from), to = nameOf(ev.to);
    if (!st.pos[from] || !st.pos[to] || st.dots.length >= MAX_DOTS || document.hidden) return;
    st.dots.push({ from, to, type: ev.type, reject: !!ev.reject, t0: performance.now(), n: ev.entries || 0 });
  }

  // ---- timeline ----

  function addTimeline(name, ev) {
    const key = name + '|' + ev.at + '|' + ev.what + '|' + ev.detail;
    if (st.seen.has(key)) return;
    if (st.seen.size > MAX_SEEN) st.seen.clear();
    st.seen.add(key);
    st.timeline.push({ name, ev });
    st.timeline.sort((a, b) => a.ev.at - b.ev.at);
    if (st.timeline.length > MAX_TIMELINE) st.timeline.splice(0, st.timeline.length - MAX_TIMELINE);
    const ol = $('#timeline');
    ol.replaceChildren(...st.timeline.slice().reverse().map(({ name, ev }) =>
      el('li', { class: 'what-' + ev.what, 'data-what': ev.what },
        el('time', {}, new Date(ev.at).toLocaleTimeString()),
        el('span', { class: 'who' }, name),
        ev.detail)));
  }

  // ---- application events ----

  // Every member's stream carries the same application events (they are
  // keys in the replicated store): one is shown once, by key and revision.
  function addAppEvent(ev) {
    const id = ev.key + '@' + ev.rev;
    st.appSkipped += ev.skipped || 0;
    if (st.appSeen.has(id)) return;
    if (st.appSeen.size > MAX_SEEN) st.appSeen.clear();
    st.appSeen.add(id);
    st.app.push(ev);
    st.app.sort((a, b) => a.rev - b.rev);
    if (st.app.length > MAX_APP) st.app.splice(0, st.app.length - MAX_APP);
    $('#appstats').textContent = st.app.length + ' shown' + (st.appSkipped ? ', ' + st.appSkipped + ' skipped by the rate limit' : '');
    $('#appevents').replaceChildren(...st.app.slice().reverse().map((e) =>
      el('li', { 'data-app': e.app, 'data-event': e.event || '' },
        el('time', {}, new Date(e.at).toLocaleTimeString()),
        el('span', { class: 'who' }, e.app),
        e.event ? el('span', { class: 'kind' }, e.event) : '',
        e.msg)));
  }

  // ---- table ----

  // Rows are kept per member and updated in place, so that a button is
  // never replaced between a press and its release.
  const rows = {};

  function makeRow(name) {
    const tr = el('tr', { 'data-name': name });
    const cells = [];
    for (let i = 0; i < 13; i++) {
      const td = el('td');
      cells.push(td);
      tr.append(td);
    }
    cells[12].className = 'devcol';
    return { tr, cells, sig: '' };
  }

  function setCell(td, text, cls) {
    if (td.textContent !== text) td.textContent = text;
    if (td.className !== (cls || '')) td.className = cls || '';
  }

  function fillRow(r, m) {
    const s = m.state;
    const up = m.up && s;
    const role = up ? s.role : 'down';
    const parted = st.partitioned.includes(m.name);
    r.tr.className = m.up ? '' : 'down';
    r.tr.dataset.role = role;
    const c = r.cells;
    setCell(c[0], m.name + (parted ? ' ✂ partitioned' : ''), parted ? 'partitioned' : '');
    if (c[1].dataset.shown !== role) {
      c[1].replaceChildren(el('span', { class: 'role role-' + role }, role));
      c[1].dataset.shown = role;
    }
    if (up) {
      setCell(c[2], String(s.term), 'num');
      setCell(c[3], s.leader === '0' ? '—' : nameOf(s.leader));
      setCell(c[4], String(s.commit), 'num');
      setCell(c[5], String(s.applied), 'num');
      setCell(c[6], String(s.last_index), 'num');
      setCell(c[7], s.last_contact_ms < 0 ? '?' : s.role === 'leader' ? '—' : s.last_contact_ms + ' ms', 'num');
      setCell(c[8], s.ready ? 'ready' : 'not ready: ' + s.not_ready, s.ready ? 'ok' : 'bad');
      setCell(c[9], String(s.keys), 'num');
      setCell(c[10], bytes(s.bytes), 'num');
      setCell(c[11], s.watchers + ' / ' + s.leases, 'num');
    } else {
      for (let i = 2; i < 12; i++) setCell(c[i], '');
      setCell(c[8], 'down: ' + (m.error || 'unreachable'), 'bad');
    }
    const sig = [st.dev, !!m.up, parted, role].join('|');
    if (r.sig !== sig) {
      r.sig = sig;
      const ctl = [];
      if (st.dev) {
        ctl.push(m.up ? button('stop', m.name, 'Stop') : button('start', m.name, 'Start'));
        ctl.push(parted ? button('heal', m.name, 'Heal') : button('partition', m.name, 'Partition'));
        if (up && role !== 'leader') ctl.push(button('leader', m.name, 'Make leader'));
      }
      c[12].replaceChildren(...ctl);
    }
  }

  function renderTable() {
    const tbody = $('#cluster tbody');
    const want = st.members.map((m) => {
      if (!rows[m.name]) rows[m.name] = makeRow(m.name);
      fillRow(rows[m.name], m);
      return rows[m.name].tr;
    });
    const have = Array.from(tbody.children);
    if (have.length !== want.length || want.some((tr, i) => have[i] !== tr)) tbody.replaceChildren(...want);
  }

  function button(action, member, label) {
    const b = el('button', { type: 'button', 'data-action': action, 'data-member': member }, label);
    b.addEventListener('click', () => act(action, member, b));
    return b;
  }

  async function act(action, member, b) {
    if (b) b.disabled = true;
    const msg = $('#devmsg');
    msg.textContent = action + (member ? ' ' + member : '') + '…';
    try {
      const r = await fetch('api/dev/' + action, {
        method: 'POST',
        headers: { 'X-Ballot-Dashboard': '1', 'Content-Type': 'application/x-www-form-urlencoded' },
        body: 'member=' + encodeURIComponent(member || ''),
      });
      const j = await r.json().catch(() => ({}));
      msg.textContent = r.ok ? (j.ok || 'done') : ('failed: ' + (j.error || r.status));
    } catch (e) {
      msg.textContent = 'failed: ' + e.message;
    } finally {
      if (b) b.disabled = false;
    }
  }

  // ---- message flow ----

  function layout() {
    const names = st.members.map((m) => m.name);
    const cx = 260, cy = 190, r = 140;
    st.pos = {};
    names.forEach((n, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, names.length);
      st.pos[n] = { x: cx + r * Math.cos(a), y: cy + r * Math.sin(a) };
    });
  }

  function renderNodes() {
    const g = $('#nodes'), links = $('#links');
    const names = Object.keys(st.pos);
    const ls = [];
    for (let i = 0; i < names.length; i++) {
      for (let j = i + 1; j < names.length; j++) {
        const a = st.pos[names[i]], b = st.pos[names[j]];
        const cut = st.partitioned.includes(names[i]) || st.partitioned.includes(names[j]);
        ls.push(svg('line', { x1: a.x, y1: a.y, x2: b.x, y2: b.y, stroke: cut ? '#f3b0b0' : '#e3e3e3',
          'stroke-dasharray': cut ? '4 4' : '', 'stroke-width': 2 }));
      }
    }
    links.replaceChildren(...ls);
    const ns = st.members.map((m) => {
      const p = st.pos[m.name];
      const s = m.state;
      const role = m.up && s ? s.role : 'down';
      const fill = { leader: '#fdf0c4', follower: '#e3eefa', candidate: '#fde0c8', 'pre-candidate': '#fdebd9', learner: '#ece6f5' }[role] || '#f0f0f0';
      const stroke = role === 'leader' ? '#d4a017' : role === 'down' ? '#bbb' : '#7a9cc6';
      const grp = svg('g', { 'data-name': m.name });
      grp.append(svg('circle', { cx: p.x, cy: p.y, r: 34, fill, stroke, 'stroke-width': role === 'leader' ? 4 : 2 }));
      const t1 = svg('text', { x: p.x, y: p.y - 4, 'text-anchor': 'middle', 'font-weight': 600 });
      t1.textContent = m.name;
      const t2 = svg('text', { x: p.x, y: p.y + 12, 'text-anchor': 'middle', fill: '#555' });
      t2.textContent = m.up && s ? role + ' · t' + s.term : 'down';
      grp.append(t1, t2);
      return grp;
    });
    g.replaceChildren(...ns);
  }

  function frame(now) {
    const g = $('#dots');
    const keep = [];
    const out = [];
    for (const d of st.dots) {
      const k = (now - d.t0) / DOT_MS;
      if (k >= 1) continue;
      keep.push(d);
      const a = st.pos[d.from], b = st.pos[d.to];
      if (!a || !b) continue;
      // Start and end at the circles' edges, slightly off the centre line
      // so that a request and its reply do not overlap.
      const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
      const ox = (-dy / len) * 6, oy = (dx / len) * 6;
      const sx = a.x + (dx / len) * 36 + ox, sy = a.y + (dy / len) * 36 + oy;
      const ex = b.x - (dx / len) * 36 + ox, ey = b.y - (dy / len) * 36 + oy;
      const c = svg('circle', { cx: sx + (ex - sx) * k, cy: sy + (ey - sy) * k, r: d.n > 0 ? 6 : 4,
        fill: COLORS[d.type] || '#555', stroke: d.reject ? '#d63031' : 'none', 'stroke-width': 2 });
      out.push(c);
    }
    st.dots = keep;
    g.replaceChildren(...out);
    requestAnimationFrame(frame);
  }

  setInterval(() => {
    const total = st.shown + st.skipped;
    $('#flowstats').textContent = total === 0 ? '' :
      'showing ' + st.shown + ' of ' + total + ' messages (the stream is rate limited; the rest are sampled out)';
  }, 1000);

  // ---- logs ----

  function termAt(runs, i) {
    for (let k = runs.length - 1; k >= 0; k--) {
      if (runs[k].first <= i && i <= runs[k].last) return runs[k].term;
      if (runs[k].last < i) return 0;
    }
    return 0;
  }

  function renderLogs() {
    const up = st.members.filter((m) => m.up && m.state);
    const hi = Math.max(0, ...up.map((m) => m.state.last_index));
    const lo = Math.max(1, hi - STRIP + 1);
    const strips = st.members.map((m) => {
      const cells = el('div', { class: 'cells' });
      const s = m.state;
      for (let i = lo; i <= Math.max(hi, lo + STRIP - 1); i++) {
        const cell = el('div', { class: 'cell' });
        if (!m.up || !s || i > s.last_index) {
          cell.classList.add('empty');
        } else if (i <= s.snapshot_index) {
          cell.classList.add('compacted');
          cell.title = 'index ' + i + ': in the snapshot';
        } else {
          const t = termAt(s.log || [], i);
          if (t) cell.style.background = termColor(t); else cell.classList.add('unknown');
          cell.title = 'index ' + i + (t ? ', term ' + t : ', written before this member last started');
          if (i > s.commit) cell.classList.add('uncommitted');
        }
        if (s && m.up && i === s.commit) cell.classList.add('commit');
        if (s && m.up && i === s.snapshot_index) cell.classList.add('snap');
        cells.append(cell);
      }
      const meta = m.up && s ? 'commit ' + s.commit + ' · applied ' + s.applied + ' · snapshot ' + s.snapshot_index : 'down';
      return el('div', { class: 'strip', 'data-name': m.name }, el('span', { class: 'label' }, m.name), cells, el('span', { class: 'meta' }, meta));
    });
    $('#logs').replaceChildren(...strips);
  }

  function renderLegend() {
    $('#legend').replaceChildren(...LEGEND.map(([label, type]) => {
      const i = el('i');
      i.style.background = COLORS[type];
      return el('span', {}, i, label);
    }));
  }

  $('#load').addEventListener('click', (e) => act('load', '', e.currentTarget));
  renderLegend();
  requestAnimationFrame(frame);
  poll();
})();
