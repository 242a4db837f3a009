/* regrow dashboard: the browser side.
 *
 * Reads `api/state` once (a snapshot; a 401 there sends the browser to `login`), then
 * follows `api/stream` (Server-Sent Events: a `snapshot`, then `delta`s).  All URLs are
 * relative, so the page also works behind a proxy prefix.  No build step, no framework:
 * uPlot (vendored in static/) draws the two charts, a canvas the task stream, and the
 * tables are updated in place, keyed by worker address, group name and event seq.
 */
(function () {
  "use strict";

  var MAX_STREAM = 10000;        // stream items kept in memory
  var MAX_EVENTS = 1000;         // events kept in memory
  var STREAM_WINDOW = 60;        // seconds shown by the task stream
  var CHART_WINDOW = 300;        // seconds shown by the charts
  var STATUS_EVENTS = 10;        // events shown on the status tab (see the CSS)
  var STALE_AFTER = 10;          // a worker silent for longer is marked
  var TABS = ["status", "workers", "progress", "stream", "timeline"];
  var WORKER_FIELDS = ["name", "status", "nthreads", "processing", "nkeys", "memory",
    "spilled", "rss", "memory_limit", "cpu", "transferred"];
  var FILTERS = ["workers", "recovery", "warnings"];

  // ------------------------------------------------------------------ small helpers

  function isNum(x) { return typeof x === "number" && isFinite(x); }
  function num(x, d) { return isNum(x) ? x : (d === undefined ? 0 : d); }
  function arr(x) { return Array.isArray(x) ? x : []; }
  function isObj(x) { return x !== null && typeof x === "object" && !Array.isArray(x); }
  function obj(x) { return isObj(x) ? x : {}; }
  function str(x) {
    if (x === null || x === undefined) return "";
    if (typeof x === "object") { try { return JSON.stringify(x); } catch (e) { return ""; } }
    return String(x);
  }
  function has(o, k) { return isObj(o) && Object.prototype.hasOwnProperty.call(o, k); }
  function byId(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function setText(e, t) { if (e && e.textContent !== t) e.textContent = t; }
  function setAttr(e, k, v) { if (e && e.getAttribute(k) !== v) e.setAttribute(k, v); }
  function clamp(x, lo, hi) { return x < lo ? lo : x > hi ? hi : x; }

  var collator = (typeof Intl !== "undefined" && Intl.Collator) ?
    new Intl.Collator(undefined, { numeric: true, sensitivity: "base" }) : null;
  function natCompare(a, b) {
    if (collator) return collator.compare(a, b);
    return a < b ? -1 : a > b ? 1 : 0;
  }

  var UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  function humanBytes(n) {
    if (!isNum(n)) return "–";
    var neg = n < 0, v = Math.abs(n), i = 0;
    while (v >= 1024 && i < UNITS.length - 1) { v /= 1024; i++; }
    var s = i === 0 ? String(Math.round(v)) : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
    return (neg ? "-" : "") + s + " " + UNITS[i];
  }
  function humanNumber(n) {
    if (!isNum(n)) return "–";
    return Math.round(n) === n ? n.toLocaleString() : n.toLocaleString(undefined, { maximumFractionDigits: 2 });
  }
  function humanDuration(s) {
    if (!isNum(s)) return "–";
    if (s < 0) s = 0;
    if (s < 0.001) return "<1 ms";
    if (s < 0.01) return (s * 1000).toFixed(1) + " ms";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 10) return s.toFixed(2) + " s";
    if (s < 60) return s.toFixed(1) + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "m " + pad2(Math.floor(s % 60)) + "s";
    var h = Math.floor(m / 60);
    if (h < 48) return h + "h " + pad2(m % 60) + "m";
    return Math.floor(h / 24) + "d " + (h % 24) + "h";
  }
  function pad2(n) { return n < 10 ? "0" + n : String(n); }
  function clockTime(t) {
    if (!isNum(t)) return "--:--:--";
    var d = new Date(t * 1000);
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }
  function fullTime(t) {
    if (!isNum(t)) return "";
    try { return new Date(t * 1000).toLocaleString(); } catch (e) { return ""; }
  }
  function shortAddr(a) { return str(a).replace(/^[a-z]+:\/\//, ""); }
  function plural(n, one, many) { return humanNumber(n) + " " + (n === 1 ? one : (many || one + "s")); }

  // A stable colour per task group: FNV-1a into a palette without reds (red means erred).
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#6b8e23", "#aec7e8", "#98df8a", "#c5b0d5", "#ffbb78", "#d4a373", "#86bcb6"];
  var colorCache = new Map();
  function groupColor(name) {
    name = str(name);
    var c = colorCache.get(name);
    if (c) return c;
    var h = 0x811c9dc5;
    for (var i = 0; i < name.length; i++) {
      h ^= name.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    c = PALETTE[h % PALETTE.length];
    if (colorCache.size > 5000) colorCache.clear();
    colorCache.set(name, c);
    return c;
  }

  // Errors inside a frame or a message handler must not stop the page: report each once.
  var reported = new Set();
  function safe(fn) {
    return function () {
      try { return fn.apply(this, arguments); } catch (e) {
        var m = (e && e.message) || String(e);
        if (!reported.has(m) && window.console) { reported.add(m); console.warn("regrow dashboard:", e); }
      }
    };
  }

  // ------------------------------------------------------------------ state

  function emptyState() {
    return { version: 1, now: null, scheduler: {}, workers: [], tasks: {}, groups: [],
      groups_more: 0, counts: {}, stream: [], events: [], stream_dropped: 0 };
  }
  var state = emptyState();
  var messages = 0;
  var clockOffset = 0;      // server clock minus local clock, seconds
  var haveClock = false;
  function serverNow() { return Date.now() / 1000 + clockOffset; }

  var api = { snapshot: function () { return state; }, messages: 0 };
  window.regrowDashboard = api;

  var eventKeys = new Set();   // keys of the events held, for de-duplication
  var eventSeqFallback = 0;
  function eventKey(ev) {
    if (!has(ev, "_key")) {
      var k = isNum(ev.seq) || (typeof ev.seq === "string" && ev.seq) ? "s" + ev.seq : "x" + (++eventSeqFallback);
      try { Object.defineProperty(ev, "_key", { value: k, enumerable: false }); } catch (e) { return k; }
    }
    return ev._key;
  }

  function validItem(it) {
    return isObj(it) && isNum(it.start) && isNum(it.stop);
  }

  // stream_dropped per message, kept for the last minute
  var dropLog = [];
  var dropTotal = 0;

  // Chart series (local recording; a fresh snapshot does not erase history).
  var rateData = [[], []];
  var memData = [[], [], [], []];
  var ratePrev = null;   // {t, f}

  function applyMessage(msg, full) {
    msg = obj(msg);
    var changed = { scheduler: false, workers: false, tasks: false, groups: false, counts: false };
    var newEvents = [];
    if (full) {
      var old = state;
      state = emptyState();
      // a snapshot replaces everything; fields it lacks keep their old value
      ["scheduler", "workers", "tasks", "groups", "groups_more", "counts"].forEach(function (k) {
        if (!has(msg, k)) state[k] = old[k];
      });
      eventKeys.clear();
      dropLog = [];
      dropTotal = 0;
      ratePrev = null;
      changed = { scheduler: true, workers: true, tasks: true, groups: true, counts: true };
    }
    if (isNum(msg.now)) {
      clockOffset = msg.now - Date.now() / 1000;
      haveClock = true;
      state.now = msg.now;
    } else if (haveClock) {
      state.now = serverNow();
    }
    if (has(msg, "version")) state.version = msg.version;
    ["scheduler", "tasks", "counts"].forEach(function (k) {
      if (has(msg, k)) { state[k] = obj(msg[k]); changed[k] = true; }
    });
    if (has(msg, "workers")) {
      state.workers = arr(msg.workers).filter(function (w) { return isObj(w) && (str(w.address) !== "" || str(w.name) !== ""); });
      changed.workers = true;
    }
    if (has(msg, "groups")) { state.groups = arr(msg.groups).filter(isObj); changed.groups = true; }
    if (has(msg, "groups_more")) { state.groups_more = num(msg.groups_more); changed.groups = true; }

    // stream: append, keep the last MAX_STREAM
    var items = arr(msg.stream);
    var s = state.stream;
    for (var i = 0; i < items.length; i++) if (validItem(items[i])) s.push(items[i]);
    if (s.length > MAX_STREAM) s.splice(0, s.length - MAX_STREAM);

    // events: append new ones (by seq), keep the last MAX_EVENTS
    var evs = arr(msg.events);
    for (var j = 0; j < evs.length; j++) {
      var ev = evs[j];
      if (!isObj(ev)) continue;
      var k = eventKey(ev);
      if (eventKeys.has(k)) continue;
      eventKeys.add(k);
      state.events.push(ev);
      newEvents.push(ev);
    }
    var removedEvents = [];
    if (state.events.length > MAX_EVENTS) {
      removedEvents = state.events.splice(0, state.events.length - MAX_EVENTS);
      removedEvents.forEach(function (e) { eventKeys.delete(eventKey(e)); });
    }

    state.stream_dropped = num(msg.stream_dropped);
    if (state.stream_dropped > 0) {
      dropLog.push([serverNow(), state.stream_dropped]);
      dropTotal += state.stream_dropped;
    }

    sample(full);
    render(changed, full, newEvents, removedEvents);
  }

  function sample(full) {
    var t = haveClock ? state.now : Date.now() / 1000;
    if (!isNum(t)) return;
    var fin = obj(state.counts).finished;
    if (isNum(fin)) {
      if (full || !ratePrev || fin < ratePrev.f || t < ratePrev.t) {
        ratePrev = { t: t, f: fin };
      } else if (t - ratePrev.t >= 0.25) {
        pushPoint(rateData, t, [(fin - ratePrev.f) / (t - ratePrev.t)]);
        ratePrev = { t: t, f: fin };
      }
    }
    var mem = 0, spill = 0, rss = 0;
    state.workers.forEach(function (w) { mem += num(w.memory); spill += num(w.spilled); rss += num(w.rss); });
    var last = memData[0].length ? memData[0][memData[0].length - 1] : -Infinity;
    if (t - last >= 0.25) pushPoint(memData, t, [mem, spill, rss]);
    else if (t >= last) { // same instant: keep the newest values
      var n = memData[0].length - 1;
      memData[1][n] = mem; memData[2][n] = spill; memData[3][n] = rss;
    }
  }

  function pushPoint(data, t, ys) {
    var xs = data[0];
    if (xs.length && t < xs[xs.length - 1]) return;  // clock went back: skip
    xs.push(t);
    for (var i = 0; i < ys.length; i++) data[i + 1].push(ys[i]);
    var cut = 0, lo = t - CHART_WINDOW - 10;
    while (cut < xs.length && xs[cut] < lo) cut++;
    if (cut > 0) for (var k = 0; k < data.length; k++) data[k].splice(0, cut);
  }

  // ------------------------------------------------------------------ rendering

  function render(changed, full, newEvents, removedEvents) {
    if (changed.scheduler || changed.workers || changed.tasks || changed.counts) renderHeader();
    if (changed.workers) { renderWorkers(); updateLanes(); }
    if (changed.groups) renderProgress();
    if (full) rebuildTimeline(); else if (newEvents.length || removedEvents.length) updateTimeline(newEvents, removedEvents);
    renderDropped();
  }

  // header ---------------------------------------------------------------

  function setStat(id, value, text) {
    var e = byId(id);
    if (!e) return;
    setAttr(e, "data-value", str(value));
    setText(e, text);
  }

  function renderHeader() {
    var sch = obj(state.scheduler), tasks = obj(state.tasks), counts = obj(state.counts);
    var addr = str(sch.address);
    setText(byId("scheduler-address"), addr || "scheduler");
    var threads = 0, memory = 0;
    state.workers.forEach(function (w) { threads += num(w.nthreads); memory += num(w.memory); });
    var inflight = 0;
    Object.keys(tasks).forEach(function (k) {
      if (k === "waiting" || k === "queued" || k === "processing") inflight += num(tasks[k]);
    });
    setStat("total-workers", state.workers.length, humanNumber(state.workers.length));
    setStat("total-threads", threads, humanNumber(threads));
    setStat("total-inflight", inflight, humanNumber(inflight));
    setStat("total-memory", memory, humanBytes(memory));
    setStat("total-finished", num(counts.finished), humanNumber(num(counts.finished)));
    setStat("total-erred", num(counts.erred), humanNumber(num(counts.erred)));
    setStat("total-recomputed", num(counts.recomputed), humanNumber(num(counts.recomputed)));
    var erredBox = byId("total-erred");
    if (erredBox) erredBox.classList.toggle("bad", num(counts.erred) > 0);

    var bits = [];
    if (sch.recovering) bits.push("recovering…");
    if (isNum(sch.started) && haveClock) bits.push("up " + humanDuration(serverNow() - sch.started));
    if (isNum(sch.clients)) bits.push(plural(sch.clients, "client"));
    if (sch.journal) bits.push("journal on");
    var lost = num(counts.workers_lost), stolen = num(counts.stolen), lostRes = num(counts.lost);
    if (lost) bits.push(plural(lost, "worker") + " lost");
    if (lostRes) bits.push(plural(lostRes, "result") + " lost");
    if (stolen) bits.push(humanNumber(stolen) + " stolen");
    var info = byId("scheduler-info");
    setText(info, bits.join(" · "));
    if (info) {
      info.classList.toggle("warn", !!sch.recovering);
      setAttr(info, "title", "scheduler id " + str(sch.id) + (isNum(sch.started) ? ", started " + fullTime(sch.started) : ""));
    }
    document.title = (addr ? "regrow · " + shortAddr(addr) : "regrow dashboard");
  }

  // workers ----------------------------------------------------------------

  var workerRows = new Map();  // address -> {tr, cells, vals}
  var workerOrder = [];        // addresses, as in the tbody
  var sortedWorkers = [];

  function workerKey(w) { return str(w.address) || ("name:" + str(w.name)); }
  function workerLabel(w) { return str(w.name) || shortAddr(w.address); }

  function sortWorkers(list) {
    return list.slice().sort(function (a, b) {
      return natCompare(str(a.name), str(b.name)) || natCompare(str(a.address), str(b.address));
    });
  }

  function createWorkerRow(key) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-address", key);
    var cells = {};
    WORKER_FIELDS.forEach(function (f) {
      var td = document.createElement("td");
      td.setAttribute("data-field", f);
      td.setAttribute("data-value", "");
      if (f === "memory") {
        td.className = "mem";
        var txt = el("span", "memtext");
        var bar = el("span", "membar");
        bar.setAttribute("data-level", "ok");
        bar.appendChild(el("span", "m-held"));
        bar.appendChild(el("span", "m-spill"));
        bar.appendChild(el("span", "m-rss"));
        td.appendChild(txt);
        td.appendChild(bar);
      } else if (f === "status") {
        td.appendChild(el("span", "pill"));
      } else if (f !== "name") {
        td.className = "num";
      }
      cells[f] = td;
      tr.appendChild(td);
    });
    return { tr: tr, cells: cells, vals: {}, cls: "" };
  }

  function updateWorkerRow(row, w, scaleMax) {
    var cells = row.cells, vals = row.vals;
    WORKER_FIELDS.forEach(function (f) {
      var raw = str(w[f]);
      var td = cells[f];
      if (vals[f] === raw) return;
      vals[f] = raw;
      td.setAttribute("data-value", raw);
      var v = w[f];
      switch (f) {
        case "name":
          setText(td, raw || shortAddr(w.address));
          break;
        case "status":
          var pill = td.firstChild;
          setText(pill, raw || "unknown");
          pill.className = "pill st-" + (raw || "unknown").replace(/[^a-z0-9_-]/gi, "");
          break;
        case "memory": setText(td.firstChild, humanBytes(v)); break;
        case "spilled": case "rss": case "transferred":
          setText(td, humanBytes(v));
          td.classList.toggle("zero", v === 0);
          break;
        case "memory_limit":
          setText(td, v === 0 ? "none" : humanBytes(v));
          td.classList.toggle("zero", v === 0);
          break;
        case "cpu": setText(td, isNum(v) ? Math.round(v) + "%" : "–"); break;
        default: setText(td, humanNumber(v));
      }
    });
    // processing: say how many run now
    var exe = isNum(w.executing) ? humanNumber(w.executing) + " executing" : "";
    setAttr(cells.processing, "title", exe);
    // the memory bar
    var limit = num(w.memory_limit), mem = num(w.memory), spill = num(w.spilled), rss = num(w.rss);
    var scale = limit > 0 ? limit : scaleMax;
    var sig = [mem, spill, rss, limit, scale].join(",");
    if (row.barSig !== sig) {
      row.barSig = sig;
      var td = cells.memory, bar = td.lastChild;
      var held = scale > 0 ? clamp(mem / scale, 0, 1) : 0;
      var sp = scale > 0 ? clamp(spill / scale, 0, 1 - held) : 0;
      var rs = scale > 0 ? clamp(rss / scale, 0, 1) : 0;
      bar.children[0].style.width = (held * 100).toFixed(2) + "%";
      bar.children[1].style.width = (sp * 100).toFixed(2) + "%";
      bar.children[2].style.left = (rs * 100).toFixed(2) + "%";
      bar.children[2].style.display = rss > 0 && scale > 0 ? "" : "none";
      var level = "nolimit";
      if (limit > 0) level = mem / limit > 0.8 ? "high" : mem / limit > 0.6 ? "warn" : "ok";
      bar.setAttribute("data-level", level);
      td.setAttribute("data-level", level);
      bar.classList.toggle("rss-high", limit > 0 && rss / limit > 0.8);
      var t = "held " + humanBytes(mem) + ", spilled " + humanBytes(spill) + ", rss " + humanBytes(rss);
      t += limit > 0 ? " of " + humanBytes(limit) + " limit (" + Math.round(100 * mem / limit) + "% held, " +
        Math.round(100 * rss / limit) + "% rss)" : " (no memory limit)";
      td.setAttribute("title", t);
    }
    // row state
    var status = str(w.status) || "unknown";
    var stale = num(w.last_seen) > STALE_AFTER;
    var cls = "st-" + status.replace(/[^a-z0-9_-]/gi, "") + (stale ? " stale" : "");
    if (row.cls !== cls) { row.cls = cls; row.tr.className = cls; }
    setAttr(row.tr, "data-status", status);
    var title = str(w.address) + (stale ? " — silent for " + humanDuration(num(w.last_seen)) : "");
    setAttr(cells.name, "title", title);
  }

  function renderWorkers() {
    var table = byId("workers");
    var tbody = table && table.tBodies[0];
    if (!tbody) return;
    sortedWorkers = sortWorkers(state.workers);
    var scaleMax = 0;
    sortedWorkers.forEach(function (w) {
      scaleMax = Math.max(scaleMax, num(w.memory) + num(w.spilled), num(w.rss));
    });
    var seen = new Set(), order = [];
    sortedWorkers.forEach(function (w) {
      var key = workerKey(w);
      if (seen.has(key)) return;
      seen.add(key);
      order.push(key);
      var row = workerRows.get(key);
      if (!row) { row = createWorkerRow(key); workerRows.set(key, row); }
      updateWorkerRow(row, w, scaleMax);
    });
    workerRows.forEach(function (row, key) {
      if (!seen.has(key)) { row.tr.remove(); workerRows.delete(key); }
    });
    var same = order.length === workerOrder.length && order.every(function (k, i) { return k === workerOrder[i]; });
    if (!same || tbody.children.length !== order.length) {
      var frag = document.createDocumentFragment();
      order.forEach(function (k) { frag.appendChild(workerRows.get(k).tr); });
      tbody.appendChild(frag);
      workerOrder = order;
    }
    var empty = byId("workers-empty");
    if (empty) empty.hidden = order.length > 0;
    var paused = 0, retiring = 0, threads = 0;
    state.workers.forEach(function (w) {
      threads += num(w.nthreads);
      if (w.status === "paused") paused++;
      if (w.status === "retiring" || w.status === "closing") retiring++;
    });
    var bits = [plural(order.length, "worker"), plural(threads, "thread")];
    if (paused) bits.push(paused + " paused");
    if (retiring) bits.push(retiring + " leaving");
    setText(byId("workers-summary"), bits.join(" · "));
  }

  // progress ---------------------------------------------------------------

  var groupRows = new Map();   // name -> {div, ...}
  var groupOrder = [];
  var GROUP_ATTRS = ["total", "done", "erred", "processing", "waiting", "queued", "memory", "released"];

  function groupDone(g) { return isNum(g.done) ? g.done : num(g.memory); }
  function groupUnfinished(g) { return groupDone(g) + num(g.erred) < num(g.total); }

  function createGroupRow(name) {
    var div = el("div", "group");
    div.setAttribute("data-group", name);
    var label = el("div", "glabel");
    var sw = el("span", "swatch");
    sw.style.background = groupColor(name);
    var gname = el("span", "gname", name);
    gname.title = name;
    var count = el("span", "gcount");
    var err = el("span", "gerr");
    label.appendChild(sw);
    label.appendChild(gname);
    label.appendChild(document.createTextNode("  "));
    label.appendChild(count);
    var head = el("div", "ghead");
    head.appendChild(label);
    head.appendChild(document.createTextNode(" "));
    head.appendChild(err);
    var bar = el("div", "gbar");
    var segs = {};
    ["done", "processing", "waiting", "erred"].forEach(function (k) {
      var s = el("span", "seg seg-" + k);
      segs[k] = s;
      bar.appendChild(s);
    });
    div.appendChild(head);
    div.appendChild(bar);
    return { div: div, count: count, err: err, bar: bar, segs: segs, sig: "" };
  }

  function updateGroupRow(row, g) {
    var done = groupDone(g), total = num(g.total), erred = num(g.erred), proc = num(g.processing);
    var waiting = num(g.queued) + num(g.waiting);
    var sig = [total, done, erred, proc, num(g.waiting), num(g.queued), num(g.memory), num(g.released)].join(",");
    if (row.sig === sig) return;
    row.sig = sig;
    GROUP_ATTRS.forEach(function (k) {
      var v = k === "done" ? done : g[k];
      setAttr(row.div, "data-" + k, isNum(v) ? String(v) : str(v) || "0");
    });
    setText(row.count, String(done) + "/" + String(total));
    setText(row.err, erred > 0 ? humanNumber(erred) + " erred" : "");
    var denom = Math.max(total, done + erred + proc + waiting, 1);
    row.segs.done.style.width = (100 * done / denom).toFixed(3) + "%";
    row.segs.processing.style.width = (100 * proc / denom).toFixed(3) + "%";
    row.segs.waiting.style.width = (100 * waiting / denom).toFixed(3) + "%";
    row.segs.erred.style.width = (100 * erred / denom).toFixed(3) + "%";
    row.div.classList.toggle("finished", !groupUnfinished(g));
    row.div.classList.toggle("has-erred", erred > 0);
    row.bar.title = humanNumber(done) + " done · " + humanNumber(proc) + " processing · " +
      humanNumber(num(g.queued)) + " queued · " + humanNumber(num(g.waiting)) + " waiting · " +
      humanNumber(erred) + " erred" + (num(g.released) ? " · " + humanNumber(num(g.released)) + " released" : "") +
      " of " + humanNumber(total);
  }

  function renderProgress() {
    var box = byId("progress");
    if (!box) return;
    var groups = state.groups.filter(function (g) { return str(g.name) !== ""; });
    groups.sort(function (a, b) {
      var ua = groupUnfinished(a), ub = groupUnfinished(b);
      if (ua !== ub) return ua ? -1 : 1;
      return natCompare(str(a.name), str(b.name));
    });
    var seen = new Set(), order = [];
    var totals = { total: 0, done: 0, erred: 0 };
    groups.forEach(function (g) {
      var name = str(g.name);
      if (seen.has(name)) return;
      seen.add(name);
      order.push(name);
      var row = groupRows.get(name);
      if (!row) { row = createGroupRow(name); groupRows.set(name, row); }
      updateGroupRow(row, g);
      totals.total += num(g.total); totals.done += groupDone(g); totals.erred += num(g.erred);
    });
    groupRows.forEach(function (row, name) {
      if (!seen.has(name)) { row.div.remove(); groupRows.delete(name); }
    });
    var same = order.length === groupOrder.length && order.every(function (k, i) { return k === groupOrder[i]; });
    if (!same) {
      var frag = document.createDocumentFragment();
      order.forEach(function (k) { frag.appendChild(groupRows.get(k).div); });
      box.appendChild(frag);
      groupOrder = order;
    }
    var empty = byId("progress-empty");
    if (empty) empty.hidden = order.length > 0;
    var more = byId("groups-more");
    if (more) {
      var n = num(state.groups_more);
      more.hidden = n <= 0;
      setText(more, n > 0 ? "… and " + plural(n, "older group") + " not shown" : "");
    }
    setText(byId("progress-summary"), order.length ?
      plural(order.length, "group") + " · " + humanNumber(totals.done) + "/" + humanNumber(totals.total) + " done" +
      (totals.erred ? " · " + humanNumber(totals.erred) + " erred" : "") : "");
  }

  // timeline ---------------------------------------------------------------

  // action -> [kind (colour), filters it belongs to]
  var ACTIONS = {
    "worker-added": ["join", "workers"],
    "worker-lost": ["failure", "workers recovery"],
    "worker-retiring": ["join", "workers"],
    "worker-retired": ["join", "workers"],
    "worker-not-retired": ["warning", "workers warnings"],
    "nanny-replaced": ["info", "workers recovery"],
    "tasks-recomputed": ["recovery", "recovery"],
    "task-suspected": ["warning", "warnings"],
    "task-isolated": ["info", "warnings recovery"],
    "task-blamed": ["failure", "warnings"],
    "results-lost": ["failure", "recovery"],
    "scheduler-recovered": ["recovery", "recovery"],
    "impure-recomputed": ["warning", "warnings recovery"],
    "pipeline-restarted": ["recovery", "recovery"]
  };
  // extra fields shown first, per action (the rest follow in the order received)
  var FIELD_ORDER = {
    "worker-added": ["name", "worker", "nthreads", "memory_limit"],
    "worker-lost": ["name", "worker", "reason", "out_of_memory", "rescheduled", "recomputing"],
    "worker-retiring": ["name", "worker"],
    "worker-retired": ["name", "worker", "reason"],
    "worker-not-retired": ["name", "worker", "why"],
    "nanny-replaced": ["name", "nanny", "replaces"],
    "tasks-recomputed": ["count", "worker", "groups", "keys"],
    "task-suspected": ["key", "worker", "reason", "deaths", "allowed"],
    "task-isolated": ["key", "worker"],
    "task-blamed": ["key", "workers"],
    "results-lost": ["count", "keys"],
    "scheduler-recovered": ["tasks", "recomputed"],
    "impure-recomputed": ["key"],
    "pipeline-restarted": ["job", "stage", "task", "consumers"]
  };
  var SKIP_FIELDS = { seq: 1, time: 1, topic: 1, action: 1, text: 1 };

  function classify(ev) {
    var action = str(ev.action);
    var known = ACTIONS[action];
    var kind, cats;
    if (known) { kind = known[0]; cats = known[1].split(" "); }
    else {
      var a = action.toLowerCase();
      if (/lost|fail|error|kill|dead|died|crash|blame|oom/.test(a)) kind = "failure";
      else if (/recover|restart|recompute|replace|resum|heal/.test(a)) kind = "recovery";
      else if (/warn|suspect|slow|stuck|not-|pause/.test(a)) kind = "warning";
      else if (/added|join|retir|connect|start/.test(a)) kind = "join";
      else kind = "other";
      cats = [];
      if (/^worker|nanny/.test(a)) cats.push("workers");
      if (kind === "recovery" || kind === "failure") cats.push("recovery");
      if (kind === "warning") cats.push("warnings");
    }
    if (ev.out_of_memory === true && kind !== "failure") kind = "failure";
    var topic = str(ev.topic).toLowerCase();
    if (topic === "warning") topic = "warnings";
    if (FILTERS.indexOf(topic) >= 0 && cats.indexOf(topic) < 0) cats = cats.concat([topic]);
    return { kind: kind, cats: cats };
  }

  function sample3(list, n) {
    var a = arr(list).map(str);
    n = n || 3;
    return a.slice(0, n).join(", ") + (a.length > n ? ", … (" + humanNumber(a.length) + ")" : "");
  }

  function formatField(k, v, ev) {
    if (v === null || v === undefined || v === "") return null;
    switch (k) {
      case "memory_limit": return v === 0 ? "no memory limit" : "limit " + humanBytes(v);
      case "nthreads": return isNum(v) ? plural(v, "thread") : null;
      case "out_of_memory": return v === true ? "OUT OF MEMORY" : null;
      case "rescheduled": return isNum(v) ? humanNumber(v) + " rescheduled" : null;
      case "recomputing": return isNum(v) ? humanNumber(v) + " recomputing" : null;
      case "recomputed": return isNum(v) ? humanNumber(v) + " recomputed" : null;
      case "tasks": return isNum(v) ? plural(v, "task") : null;
      case "count": return isNum(v) ? (ev.action === "results-lost" ? plural(v, "result") : plural(v, "task")) : null;
      case "deaths":
        return isNum(v) ? "deaths " + humanNumber(v) + (isNum(ev.allowed) ? "/" + humanNumber(ev.allowed) + " allowed" : "") : null;
      case "allowed": return isNum(ev.deaths) ? null : "allowed " + str(v);
      case "groups":
        if (isObj(v)) {
          var ks = Object.keys(v);
          return "groups: " + ks.slice(0, 5).map(function (g) { return g + " ×" + str(v[g]); }).join(", ") +
            (ks.length > 5 ? ", …" : "");
        }
        return "groups: " + sample3(v, 5);
      case "keys": return Array.isArray(v) ? "keys: " + sample3(v) : "keys: " + str(v);
      case "workers": return Array.isArray(v) ? "workers: " + v.map(shortAddr).join(", ") : "workers: " + str(v);
      case "worker": case "nanny": case "replaces": return k + " " + shortAddr(v);
      case "name": return "name " + str(v);
      case "consumers": return Array.isArray(v) ? "consumers: " + sample3(v) : "consumers " + str(v);
      default:
        if (v === null || v === undefined || v === "") return null;
        if (typeof v === "boolean") return v ? k.replace(/_/g, " ") : null;
        if (Array.isArray(v)) return k + ": " + sample3(v);
        if (isObj(v)) { var s = str(v); return k + " " + (s.length > 80 ? s.slice(0, 77) + "…" : s); }
        return k + " " + str(v);
    }
  }

  function eventDetails(ev) {
    var order = FIELD_ORDER[str(ev.action)] || [];
    var keys = order.filter(function (k) { return has(ev, k); });
    Object.keys(ev).forEach(function (k) { if (!SKIP_FIELDS[k] && keys.indexOf(k) < 0) keys.push(k); });
    var parts = [];
    keys.forEach(function (k) {
      var s = null;
      try { s = formatField(k, ev[k], ev); } catch (e) { s = null; }
      if (s) parts.push(s);
    });
    return parts;
  }

  function eventText(ev) {
    var t = str(ev.text);
    if (t) return t;
    var w = ev.worker ? " " + shortAddr(ev.worker) : ev.key ? " " + str(ev.key) : "";
    return (str(ev.action) || "event").replace(/-/g, " ") + w;
  }

  var eventLis = new Map();  // key -> li
  var filterCounts = { all: 0, workers: 0, recovery: 0, warnings: 0 };

  function makeEventLi(ev) {
    var c = classify(ev);
    var li = el("li", "ev kind-" + c.kind);
    c.cats.forEach(function (k) { li.classList.add("f-" + k); });
    li.setAttribute("data-action", str(ev.action));
    li.setAttribute("data-seq", isNum(ev.seq) || typeof ev.seq === "string" ? String(ev.seq) : "");
    if (ev.worker !== undefined && ev.worker !== null && ev.worker !== "") li.setAttribute("data-worker", str(ev.worker));
    li.setAttribute("data-kind", c.kind);
    if (ev.topic) li.setAttribute("data-topic", str(ev.topic));
    var time = el("time", "ev-time", clockTime(ev.time));
    if (isNum(ev.time)) {
      time.setAttribute("datetime", new Date(ev.time * 1000).toISOString());
      time.title = fullTime(ev.time);
    }
    var body = el("div", "ev-body");
    var text = el("div", "ev-text", eventText(ev));
    body.appendChild(text);
    var details = eventDetails(ev);
    if (details.length) body.appendChild(el("div", "ev-details", details.join(" · ")));
    var tag = el("span", "ev-tag", str(ev.action) || "event");
    li.appendChild(time);
    li.appendChild(tag);
    li.appendChild(body);
    li._cats = c.cats;
    return li;
  }

  function countLi(li, d) {
    filterCounts.all += d;
    (li._cats || []).forEach(function (k) { if (has(filterCounts, k)) filterCounts[k] += d; });
  }

  function seqOf(ev) { return isNum(ev.seq) ? ev.seq : num(ev.time, 0); }

  function rebuildTimeline() {
    var ol = byId("timeline");
    if (!ol) return;
    eventLis.clear();
    filterCounts = { all: 0, workers: 0, recovery: 0, warnings: 0 };
    var evs = state.events.slice().sort(function (a, b) { return seqOf(b) - seqOf(a); });
    var frag = document.createDocumentFragment();
    evs.forEach(function (ev) {
      var li = makeEventLi(ev);
      li._seq = seqOf(ev);
      eventLis.set(eventKey(ev), li);
      countLi(li, 1);
      frag.appendChild(li);
    });
    ol.textContent = "";
    ol.appendChild(frag);
    timelineChrome();
  }

  function updateTimeline(newEvents, removedEvents) {
    var ol = byId("timeline");
    if (!ol) return;
    removedEvents.forEach(function (ev) {
      var k = eventKey(ev), li = eventLis.get(k);
      if (li) { countLi(li, -1); li.remove(); eventLis.delete(k); }
    });
    var evs = newEvents.slice().sort(function (a, b) { return seqOf(b) - seqOf(a); });
    var first = ol.firstElementChild;
    var topSeq = first ? first._seq : -Infinity;
    var frag = document.createDocumentFragment();
    var late = [];
    evs.forEach(function (ev) {
      if (!eventKeys.has(eventKey(ev))) return;  // trimmed already
      var li = makeEventLi(ev);
      li._seq = seqOf(ev);
      eventLis.set(eventKey(ev), li);
      countLi(li, 1);
      if (li._seq >= topSeq) frag.appendChild(li); else late.push(li);
    });
    ol.insertBefore(frag, ol.firstChild);
    late.forEach(function (li) {  // out of order: put it where its seq belongs
      var n = ol.firstElementChild;
      while (n && n._seq > li._seq) n = n.nextElementSibling;
      ol.insertBefore(li, n);
    });
    timelineChrome();
  }

  function timelineChrome() {
    var ol = byId("timeline");
    var filter = ol ? ol.getAttribute("data-filter") || "all" : "all";
    var tab = document.body.getAttribute("data-tab");
    var shown = tab === "status" || filter === "all" ? filterCounts.all : (filterCounts[filter] || 0);
    var empty = byId("timeline-empty");
    if (empty) {
      empty.hidden = shown > 0;
      setText(empty, filterCounts.all === 0 || tab === "status" ? "No failures or recoveries yet." : "No events of this kind.");
    }
    var btns = document.querySelectorAll("#timeline-filter [data-count]");
    for (var i = 0; i < btns.length; i++) {
      var k = btns[i].getAttribute("data-count");
      setText(btns[i], humanNumber(filterCounts[k] || 0));
    }
  }

  function setFilter(f) {
    if (f !== "all" && FILTERS.indexOf(f) < 0) f = "all";
    var ol = byId("timeline");
    if (ol) ol.setAttribute("data-filter", f);
    var btns = document.querySelectorAll("#timeline-filter button");
    for (var i = 0; i < btns.length; i++) {
      btns[i].setAttribute("aria-pressed", btns[i].getAttribute("data-filter") === f ? "true" : "false");
    }
    timelineChrome();
  }

  // dropped stream items ---------------------------------------------------

  function renderDropped() {
    var e = byId("stream-dropped");
    if (!e) return;
    var lo = serverNow() - STREAM_WINDOW, n = 0;
    while (dropLog.length && dropLog[0][0] < lo) dropLog.shift();
    dropLog.forEach(function (d) { n += d[1]; });
    setAttr(e, "data-value", String(state.stream_dropped));
    setAttr(e, "data-total", String(dropTotal));
    e.hidden = n <= 0;
    setText(e, n > 0 ? humanNumber(n) + " tasks not sent in the last minute (rate limit)" : "");
    setAttr(e, "title", humanNumber(dropTotal) + " stream items left out by the server since connecting");
  }

  // ------------------------------------------------------------------ task stream (canvas)

  var LABEL_W = 120, AXIS_H = 20, PAD_TOP = 4, PAD_RIGHT = 10;
  var ts = {
    canvas: null, ctx: null, wrap: null, tip: null, legend: null,
    w: 0, h: 0, mouse: null, hits: [], hitItems: [], geom: null,
    lanes: [], laneIndex: new Map(), lastDraw: 0, redraw: function () {}, hovered: null, legendAt: 0, attrs: {}
  };

  function updateLanes() {
    ts.lanes = sortedWorkers.map(function (w) {
      return { address: str(w.address), label: workerLabel(w), status: str(w.status), gone: false };
    });
    ts.laneIndex = new Map();
    ts.lanes.forEach(function (l, i) { if (!ts.laneIndex.has(l.address)) ts.laneIndex.set(l.address, i); });
    sizeStream();
  }

  function streamVisible() {
    var tab = document.body.getAttribute("data-tab");
    return (tab === "status" || tab === "stream") && !document.hidden;
  }

  function sizeStream() {
    if (!ts.wrap) return;
    var tab = document.body.getAttribute("data-tab");
    var n = Math.max(1, ts.lanes.length);
    var h;
    if (tab === "stream") {
      var top = ts.wrap.getBoundingClientRect().top + (window.scrollY || 0);
      h = Math.max(320, Math.min(window.innerHeight - top - 56, Math.max(320, AXIS_H + PAD_TOP + n * 44)));
    } else {
      h = clamp(AXIS_H + PAD_TOP + n * 18, 150, 320);
    }
    h = Math.round(h);
    if (ts.wrap.style.height !== h + "px") ts.wrap.style.height = h + "px";
  }

  function tsAttr(k, v) {
    if (ts.attrs[k] !== v) { ts.attrs[k] = v; ts.canvas.setAttribute(k, v); }
  }

  function drawStream() {
    var c = ts.canvas, ctx = ts.ctx;
    if (!c || !ctx) return;
    var W = ts.w, H = ts.h;
    if (W <= 0 || H <= 0) return;
    var dpr = window.devicePixelRatio || 1;
    var bw = Math.round(W * dpr), bh = Math.round(H * dpr);
    if (c.width !== bw || c.height !== bh) { c.width = bw; c.height = bh; }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);

    var t1 = haveClock ? serverNow() : Date.now() / 1000, t0 = t1 - STREAM_WINDOW;
    var left = Math.min(LABEL_W, Math.round(W * 0.25)), right = W - PAD_RIGHT;
    var top = PAD_TOP, bottom = H - AXIS_H;
    var pw = Math.max(1, right - left), xs = pw / STREAM_WINDOW;

    // which items show, and lanes for workers no longer in the list
    var items = state.stream, vis = [];
    var laneIndex = ts.laneIndex, nBase = ts.lanes.length, extra = [], extraIdx = null;
    for (var i = 0; i < items.length; i++) {
      var it = items[i];
      if (it.stop < t0 || it.start > t1) continue;
      vis.push(i);
      var wk = it.worker;
      if (!laneIndex.has(wk)) {
        if (!extraIdx) extraIdx = new Map();
        if (!extraIdx.has(wk)) { extraIdx.set(wk, nBase + extra.length); extra.push(wk); }
      }
    }
    var nl = Math.max(1, nBase + extra.length);
    var laneH = (bottom - top) / nl;
    var pad = laneH >= 8 ? Math.max(1, laneH * 0.12) : laneH >= 3 ? 0.5 : 0;

    // lanes: stripes and labels
    ctx.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
    ctx.textBaseline = "middle";
    var every = laneH >= 11 ? 1 : Math.ceil(11 / Math.max(laneH, 0.1));
    for (var l = 0; l < nl; l++) {
      var y = top + l * laneH;
      if (l % 2 === 1) { ctx.fillStyle = "#f7f8fa"; ctx.fillRect(left, y, pw, laneH); }
      if (l % every !== 0) continue;
      var lane = l < nBase ? ts.lanes[l] : null;
      var label = lane ? lane.label : extra[l - nBase] !== undefined ? shortAddr(extra[l - nBase]) + " (gone)" : "";
      ctx.fillStyle = lane ? (lane.status && lane.status !== "running" ? "#b45309" : "#374151") : "#9ca3af";
      ctx.fillText(fitText(ctx, label, left - 10), 4, y + laneH / 2);
    }

    // time grid every 10 s, labelled with the clock
    ctx.strokeStyle = "#e5e7eb";
    ctx.lineWidth = 1;
    ctx.fillStyle = "#6b7280";
    ctx.textBaseline = "top";
    ctx.textAlign = "center";
    ctx.beginPath();
    for (var g = Math.ceil(t0 / 10) * 10; g <= t1; g += 10) {
      var gx = Math.round(left + (g - t0) * xs) + 0.5;
      ctx.moveTo(gx, top);
      ctx.lineTo(gx, bottom);
      if (gx > left + 72 && gx < right - 52) ctx.fillText(clockTime(g), gx, bottom + 5);
    }
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.fillText("now", right, bottom + 5);
    ctx.textAlign = "left";
    ctx.fillText("−60 s", left + 2, bottom + 5);
    ctx.strokeStyle = "#d1d5db";
    ctx.beginPath();
    ctx.moveTo(left + 0.5, top);
    ctx.lineTo(left + 0.5, bottom + 0.5);
    ctx.lineTo(right, bottom + 0.5);
    ctx.stroke();

    // the tasks, batched by colour; in each lane, runs of one colour that touch at this
    // scale are one rectangle (thousands of tiny ones cost the rasteriser, not the eye)
    var byColor = new Map(), open = new Map(), erred = [], hits = [], hitItems = [];
    var flush = function (run) {
      var list = byColor.get(run[4]);
      if (!list) { list = []; byColor.set(run[4], list); }
      list.push(run[0], run[1], run[2] - run[0], run[3]);
    };
    for (var v = 0; v < vis.length; v++) {
      var item = items[vis[v]];
      var li = laneIndex.get(item.worker);
      if (li === undefined) li = extraIdx.get(item.worker);
      var x0 = left + (Math.max(item.start, t0) - t0) * xs;
      var x1 = left + (Math.min(item.stop, t1) - t0) * xs;
      var w = x1 - x0;
      if (w < 1) w = 1;
      var ry = top + li * laneH + pad, rh = Math.max(1, laneH - 2 * pad);
      var col = groupColor(item.group);
      var slot = col + "|" + li, run = open.get(slot);
      if (run && x0 <= run[2] + 0.5 && x0 >= run[0]) {
        if (x0 + w > run[2]) run[2] = x0 + w;
      } else {
        if (run) flush(run);
        open.set(slot, [x0, ry, x0 + w, rh, col]);
      }
      if (item.ok === false) erred.push(x0, ry, w, rh);
      hits.push(x0, ry, w, rh);
      hitItems.push(item);
    }
    open.forEach(flush);
    byColor.forEach(function (rects, col) {
      ctx.fillStyle = col;
      ctx.beginPath();
      for (var r = 0; r < rects.length; r += 4) ctx.rect(rects[r], rects[r + 1], rects[r + 2], rects[r + 3]);
      ctx.fill();
    });
    if (erred.length) {
      ctx.strokeStyle = "#dc2626";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      for (var e = 0; e < erred.length; e += 4) ctx.rect(erred[e] + 0.75, erred[e + 1] + 0.75, Math.max(0.5, erred[e + 2] - 1.5), Math.max(0.5, erred[e + 3] - 1.5));
      ctx.stroke();
    }
    if (!vis.length) {
      ctx.fillStyle = "#9ca3af";
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText(items.length ? "No tasks ran in the last minute." : "No tasks yet.", left + pw / 2, top + (bottom - top) / 2);
      ctx.textAlign = "left";
    }
    ts.hits = hits;
    ts.hitItems = hitItems;
    ts.geom = { laneH: laneH, top: top, left: left, lanes: ts.lanes.slice(0, nBase), extra: extra };

    // hovered item: outline it, and keep the tooltip on it
    var hov = hitTest();
    if (hov >= 0) {
      ctx.strokeStyle = "#111827";
      ctx.lineWidth = 1;
      ctx.strokeRect(hits[hov * 4] - 0.5, hits[hov * 4 + 1] - 0.5, hits[hov * 4 + 2] + 1, hits[hov * 4 + 3] + 1);
    }
    showTip(hov >= 0 ? hitItems[hov] : null);

    tsAttr("data-items", String(items.length));
    tsAttr("data-visible", String(vis.length));
    tsAttr("data-lanes", String(nl));

    if (performance.now() - ts.legendAt > 1000) { ts.legendAt = performance.now(); renderLegend(vis); }
  }

  var fitCache = new Map();
  function fitText(ctx, s, maxW) {
    var k = s + "|" + maxW;
    var r = fitCache.get(k);
    if (r !== undefined) return r;
    r = s;
    if (ctx.measureText(s).width > maxW) {
      var lo = 0, hi = s.length;
      while (lo < hi) {
        var mid = (lo + hi + 1) >> 1;
        if (ctx.measureText(s.slice(0, mid) + "…").width <= maxW) lo = mid; else hi = mid - 1;
      }
      r = s.slice(0, lo) + "…";
    }
    if (fitCache.size > 2000) fitCache.clear();
    fitCache.set(k, r);
    return r;
  }

  function hitTest() {
    var m = ts.mouse, hits = ts.hits;
    if (!m || !hits.length) return -1;
    var best = -1;
    for (var i = hits.length - 4; i >= 0; i -= 4) {
      if (m.y >= hits[i + 1] && m.y <= hits[i + 1] + hits[i + 3] &&
          m.x >= hits[i] - 1.5 && m.x <= hits[i] + hits[i + 2] + 1.5) { best = i / 4; break; }
    }
    return best;
  }

  function showTip(item) {
    var tip = ts.tip;
    if (!tip) return;
    if (!item || !ts.mouse) {
      if (!tip.hidden) tip.hidden = true;
      ts.hovered = null;
      return;
    }
    if (ts.hovered !== item) {
      ts.hovered = item;
      tip.textContent = "";
      var head = el("div", "tip-key", str(item.key) || "(no key)");
      tip.appendChild(head);
      var w = null;
      for (var i = 0; i < sortedWorkers.length; i++) if (str(sortedWorkers[i].address) === str(item.worker)) { w = sortedWorkers[i]; break; }
      var rows = [
        ["group", str(item.group)],
        ["worker", (w && str(w.name) ? str(w.name) + " — " : "") + shortAddr(item.worker)],
        ["duration", humanDuration(item.stop - item.start)],
        ["started", clockTime(item.start)]
      ];
      if (item.ok === false) rows.push(["status", "erred"]);
      rows.forEach(function (r) {
        var d = el("div", "tip-row");
        d.appendChild(el("span", "tip-k", r[0]));
        d.appendChild(el("span", r[0] === "status" ? "tip-v bad" : "tip-v", r[1]));
        tip.appendChild(d);
      });
      var sw = el("span", "swatch");
      sw.style.background = groupColor(item.group);
      head.insertBefore(sw, head.firstChild);
    }
    tip.hidden = false;
    var tw = tip.offsetWidth, th = tip.offsetHeight;
    var x = ts.mouse.x + 14, y = ts.mouse.y + 14;
    if (x + tw > ts.w - 4) x = Math.max(4, ts.mouse.x - tw - 14);
    if (y + th > ts.h) y = Math.max(0, ts.mouse.y - th - 10);
    tip.style.transform = "translate(" + Math.round(x) + "px," + Math.round(y) + "px)";
  }

  function renderLegend(vis) {
    var box = ts.legend;
    if (!box) return;
    var counts = new Map();
    for (var i = 0; i < vis.length; i++) {
      var g = str(state.stream[vis[i]].group);
      counts.set(g, (counts.get(g) || 0) + 1);
    }
    var groups = Array.from(counts.keys()).sort(function (a, b) { return counts.get(b) - counts.get(a) || natCompare(a, b); });
    var sig = groups.slice(0, 24).join("\u0000");
    if (box._sig === sig) return;
    box._sig = sig;
    box.textContent = "";
    groups.slice(0, 24).forEach(function (g) {
      var s = el("span", "lg");
      var sw = el("span", "swatch");
      sw.style.background = groupColor(g);
      s.appendChild(sw);
      s.appendChild(document.createTextNode(g || "(no group)"));
      box.appendChild(s);
    });
    if (groups.length > 24) box.appendChild(el("span", "lg muted", "+" + (groups.length - 24) + " more"));
  }

  function initStream() {
    ts.canvas = byId("task-stream");
    ts.wrap = byId("task-stream-wrap");
    ts.tip = byId("task-stream-tip");
    ts.legend = byId("stream-legend");
    if (!ts.canvas || !ts.canvas.getContext) return;
    ts.ctx = ts.canvas.getContext("2d");
    var measure = function () {
      var r = ts.canvas.getBoundingClientRect();
      ts.w = r.width; ts.h = r.height;
    };
    if (typeof ResizeObserver !== "undefined") {
      new ResizeObserver(safe(function (entries) {
        var r = entries[0] && entries[0].contentRect;
        if (r) { ts.w = r.width; ts.h = r.height; } else measure();
        ts.redraw();
      })).observe(ts.canvas);
    } else {
      window.addEventListener("resize", measure);
    }
    measure();
    ts.canvas.addEventListener("mousemove", safe(function (e) {
      var r = ts.canvas.getBoundingClientRect();
      ts.mouse = { x: e.clientX - r.left, y: e.clientY - r.top };
      ts.redraw();
    }));
    ts.canvas.addEventListener("mouseleave", safe(function () {
      ts.mouse = null;
      showTip(null);
      ts.redraw();
    }));
    // 4 frames a second, each asked for only then: the window scrolls smoothly enough,
    // and a page left open costs its machine (often the cluster's own) next to nothing
    // between frames (a frame requested on every refresh kept chromium 17% busy idle).
    var pending = false;
    var frame = safe(function (now) {
      pending = false;
      if (streamVisible() && !document.hidden) {
        ts.lastDraw = now;
        drawStream();
      }
    });
    ts.redraw = function () {
      if (!pending) { pending = true; requestAnimationFrame(frame); }
    };
    setInterval(function () { if (streamVisible()) ts.redraw(); }, 250);
  }

  // ------------------------------------------------------------------ charts (uPlot)

  var charts = { rate: null, memory: null };

  var BYTE_INCRS = (function () {
    var out = [];
    for (var p = 0; p <= 5; p++) [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].forEach(function (m) {
      var v = m * Math.pow(1024, p);
      if (out.indexOf(v) < 0) out.push(v);
    });
    return out.sort(function (a, b) { return a - b; });
  })();

  function axisStyle() {
    return {
      stroke: "#6b7280",
      grid: { stroke: "#eef0f3", width: 1 },
      ticks: { stroke: "#e5e7eb", width: 1, size: 4 },
      font: "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
    };
  }
  function timeAxis() {
    return merge(axisStyle(), {
      space: 64,
      incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600],
      values: function (u, splits) {
        return splits.map(function (v) {
          var d = new Date(v * 1000);
          return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + (d.getSeconds() ? ":" + pad2(d.getSeconds()) : "");
        });
      }
    });
  }
  function merge(a, b) { Object.keys(b).forEach(function (k) { a[k] = b[k]; }); return a; }
  function xRange() { var n = haveClock ? serverNow() : Date.now() / 1000; return [n - CHART_WINDOW, n]; }

  function makeChart(box, kind) {
    if (typeof window.uPlot !== "function" || !box) return null;
    var width = Math.floor(box.clientWidth);
    if (width < 50) return null;
    var opts;
    if (kind === "rate") {
      opts = {
        width: width, height: 170,
        scales: {
          x: { time: true, range: function () { return xRange(); } },
          y: { range: function (u, mn, mx) { return [0, mx > 0 ? mx * 1.15 : 1]; } }
        },
        axes: [timeAxis(), merge(axisStyle(), { size: 48, values: function (u, v) { return v.map(function (x) { return humanNumber(x); }); } })],
        series: [
          { value: function (u, v) { return v == null ? "–" : clockTime(v); } },
          { label: "finished / s", stroke: "#16a34a", width: 1.5, fill: "rgba(22,163,74,0.12)", points: { show: false },
            value: function (u, v) { return v == null ? "–" : v.toFixed(v < 10 ? 2 : 1); } }
        ],
        cursor: { drag: { x: false, y: false, setScale: false } },
        legend: { live: true }
      };
    } else {
      var bytes = function (u, v) { return v == null ? "–" : humanBytes(v); };
      opts = {
        width: width, height: 170,
        scales: {
          x: { time: true, range: function () { return xRange(); } },
          y: { range: function (u, mn, mx) { return [0, mx > 0 ? mx * 1.15 : 1024]; } }
        },
        axes: [timeAxis(), merge(axisStyle(), { size: 70, incrs: BYTE_INCRS,
          values: function (u, v) { return v.map(function (x) { return humanBytes(x); }); } })],
        series: [
          { value: function (u, v) { return v == null ? "–" : clockTime(v); } },
          { label: "held", stroke: "#2563eb", width: 1.5, fill: "rgba(37,99,235,0.10)", points: { show: false }, value: bytes },
          { label: "spilled", stroke: "#9333ea", width: 1.5, points: { show: false }, value: bytes },
          { label: "rss", stroke: "#6b7280", width: 1.25, dash: [4, 3], points: { show: false }, value: bytes }
        ],
        cursor: { drag: { x: false, y: false, setScale: false } },
        legend: { live: true }
      };
    }
    var data = kind === "rate" ? rateData : memData;
    return new window.uPlot(opts, data, box);
  }

  // (Re)draw the charts: every second, so that their 5-minute window moves with the clock.
  function refreshCharts() {
    if (document.body.getAttribute("data-tab") !== "status" || document.hidden) return;
    var boxes = { rate: byId("chart-rate"), memory: byId("chart-memory") };
    ["rate", "memory"].forEach(function (k) {
      var box = boxes[k];
      if (!box) return;
      if (!charts[k]) { charts[k] = makeChart(box, k); return; }
      var u = charts[k];
      if (!u) return;
      var width = Math.floor(box.clientWidth);
      if (width >= 50 && Math.abs(width - u.width) > 1) u.setSize({ width: width, height: 170 });
      u.setData(k === "rate" ? rateData : memData);
    });
  }

  // ------------------------------------------------------------------ tabs

  function route() {
    var t = (location.hash || "").replace(/^#\/?/, "").split(/[?&/]/)[0];
    if (TABS.indexOf(t) < 0) t = "status";
    document.body.setAttribute("data-tab", t);
    var links = document.querySelectorAll("#tabs a[data-tab]");
    for (var i = 0; i < links.length; i++) {
      if (links[i].getAttribute("data-tab") === t) links[i].setAttribute("aria-current", "page");
      else links[i].removeAttribute("aria-current");
    }
    sizeStream();
    ts.redraw();
    timelineChrome();
    refreshCharts();
  }

  // ------------------------------------------------------------------ connection

  var es = null, retryTimer = 0, retryDelay = 1000, gotStream = false;

  function setConn(s) {
    var e = byId("connection");
    if (!e) return;
    var text = s === "live" ? "live" : s === "reconnecting" ? "reconnecting…" : s === "login" ? "signing in…" : "connecting…";
    setAttr(e, "data-state", s);
    setText(e, text);
  }

  function goLogin() {
    setConn("login");
    if (es) { es.close(); es = null; }
    // where to come back to: this page (the server takes only a path of its own)
    var search = "";
    try {
      var q = new URLSearchParams(location.search);
      q.delete("token");
      search = q.toString() ? "?" + q.toString() : "";
    } catch (e) { search = ""; }
    var next = (location.pathname || "/") + search + (location.hash || "");
    location.href = "login?next=" + encodeURIComponent(next);
  }

  // GET api/state: "ok" (applied), "login" (401), or "error"
  function fetchState(apply) {
    if (typeof fetch !== "function") return Promise.resolve("error");
    return fetch("api/state", { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { goLogin(); return "login"; }
        if (!r.ok) return "error";
        return r.json().then(function (j) {
          if (apply && !gotStream) safe(applyMessage)(j, true);
          return "ok";
        });
      })
      .catch(function () { return "error"; });
  }

  function onStreamMessage(e, full) {
    var data;
    try { data = JSON.parse(e.data); } catch (err) { return; }
    if (!isObj(data)) return;
    gotStream = true;
    retryDelay = 1000;
    safe(applyMessage)(data, full);
    messages++;
    api.messages = messages;
    setConn("live");
  }

  function openStream() {
    if (es) { es.close(); es = null; }
    if (typeof EventSource !== "function") { setConn("reconnecting"); return; }
    var source = new EventSource("api/stream");
    es = source;
    source.addEventListener("snapshot", function (e) { if (es === source) onStreamMessage(e, true); });
    source.addEventListener("delta", function (e) { if (es === source) onStreamMessage(e, false); });
    source.addEventListener("error", function (e) {
      if (es !== source) return;
      if (e && typeof e.data === "string") return;  // an event the server named "error", not a lost connection
      setConn("reconnecting");
      // CONNECTING: the browser retries by itself.  CLOSED: it gave up (an HTTP error such as
      // a 401 ends an EventSource for good): retry ourselves, after asking api/state whether
      // the login is what failed.
      if (source.readyState === 2) {
        source.close();
        es = null;
        scheduleReconnect();
      }
    });
  }

  function scheduleReconnect() {
    clearTimeout(retryTimer);
    retryTimer = setTimeout(function () {
      fetchState(false).then(function (r) { if (r !== "login") openStream(); });
    }, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 15000);
  }

  // ------------------------------------------------------------------ start

  function start() {
    initStream();
    var filter = byId("timeline-filter");
    if (filter) filter.addEventListener("click", function (e) {
      var b = e.target && e.target.closest ? e.target.closest("button[data-filter]") : null;
      if (b) setFilter(b.getAttribute("data-filter"));
    });
    window.addEventListener("hashchange", safe(route));
    window.addEventListener("resize", safe(function () { sizeStream(); refreshCharts(); }));
    document.addEventListener("visibilitychange", safe(function () { if (!document.hidden) { refreshCharts(); ts.redraw(); } }));
    route();
    renderHeader();
    renderWorkers();
    updateLanes();
    renderProgress();
    rebuildTimeline();
    setInterval(safe(function () {
      refreshCharts();
      renderDropped();
      if (haveClock && obj(state.scheduler).started) renderHeader();
    }), 1000);
    setConn("connecting");
    fetchState(true).then(function (r) { if (r !== "login") openStream(); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", safe(start));
  else safe(start)();
})();
