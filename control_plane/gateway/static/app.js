/* The dashboard: jobs table, job detail (#/jobs/<id>), system charts, submit form.
 *
 * Two clients of /static/cp-client.js, the one users get: `main` subscribes to "*" (every
 * job's progress for the table, system events), `detail` to the open job's channel with
 * since 0 (its snapshot and whole retained timeline). Two, because a client drops an event
 * it has already seen: the open job's replay would be dropped as duplicates of what the
 * table saw live. Both resume with `since` after a reconnect; a client.gap refreshes what
 * it covers and says so.
 *
 * Rendering: events only change the model and mark it dirty; one requestAnimationFrame
 * draws. The table is virtualised: a fixed pool of row elements shows the rows in view
 * (a thousand jobs cost the same to draw as twenty), and a cell's DOM is written only when
 * its text changes.
 */
(function () {
  "use strict";

  var ROW = 40; // px, as --row in style.css
  var OVERSCAN = 6;
  var CHART_POINTS = 240;
  var TIMELINE_ROWS = 2000;
  var ACTIVE = ["pending", "running", "pausing", "paused", "suspended"];
  // Where each command is allowed (jobs/lifecycle.py): pause/resume/cancel/suspend.
  var ALLOWED = {
    pause: ["pending", "running"],
    resume: ["pausing", "paused", "suspended"],
    suspend: ["running", "pausing", "paused"],
    cancel: ["pending", "running", "pausing", "paused", "suspended"],
  };
  var STATE_OF = {"job.created": "pending", "job.started": "running", "job.paused": "paused",
    "job.resumed": "running", "job.completed": "completed", "job.failed": "failed",
    "job.cancelled": "cancelled", "job.restarted": "pending", "job.suspended": "suspended"};

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }
  function set(node, prop, value) { if (node[prop] !== value) node[prop] = value; }
  function setAttr(node, name, value) {
    if (node.getAttribute(name) !== value) node.setAttribute(name, value);
  }
  function elapsed(job, now) {
    if (!job.created_at) return "";
    var end = ACTIVE.indexOf(job.state) >= 0 ? now : Date.parse(job.updated_at || job.created_at);
    var s = Math.max(0, Math.round((end - Date.parse(job.created_at)) / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
  }
  function pct(p) { return (Math.round((p || 0) * 10) / 10) + "%"; }
  function clock(iso) { return iso ? iso.slice(11, 23) : ""; }

  /* --- the model ----------------------------------------------------------------------- */

  var jobs = new Map();
  var principal = {sub: "admin", role: "admin"}; // no principal in welcome: the shared admin
  var dirty = {table: true, order: true, detail: false, charts: false};
  var main = new ControlPlaneClient();
  var detail = null; // {id, client, job, agents, events, ...} while a job is open

  function mayControl(owner) {
    return principal.role === "admin" || (principal.role === "operator" && owner === principal.sub);
  }
  function maySubmit() { return principal.role === "admin" || principal.role === "operator"; }

  function job(id) {
    var j = jobs.get(id);
    if (!j) {
      j = {job_id: id, name: id, owner: "", state: "pending", progress: 0, message: "",
        created_at: null, updated_at: null};
      jobs.set(id, j);
      dirty.order = true;
    }
    return j;
  }

  /* Apply one event (or a status) to the job's row. */
  function applyEvent(e) {
    var d = e.data || {};
    if (!d.job_id || !(e.type.indexOf("job.") === 0 || e.type.indexOf("agent.") === 0)) return null;
    var j = job(d.job_id);
    var state = d.status || STATE_OF[e.type];
    if (state && state !== j.state) { j.state = state; dirty.order = true; }
    if (typeof d.progress === "number") j.progress = d.progress;
    if (d.message != null) j.message = String(d.message);
    if (e.type === "job.created") {
      j.name = d.name || j.name; j.owner = d.owner || j.owner;
      j.created_at = j.created_at || e.timestamp;
      dirty.order = true;
    }
    if (e.type === "job.completed") j.progress = 100;
    if (e.type === "job.failed" && d.error) j.message = String(d.error).split("\n")[0];
    if (e.timestamp) j.updated_at = e.timestamp;
    dirty.table = true;
    return j;
  }

  function applyStatus(s, onlyMissing) {
    var j = jobs.get(s.job_id);
    if (j && onlyMissing) { // live events already describe its state: fill in the rest
      j.name = s.name || j.name; j.owner = s.owner || j.owner;
      if (!j.created_at) { j.created_at = s.created_at; dirty.order = true; }
      return;
    }
    j = job(s.job_id);
    ["name", "owner", "state", "progress", "message", "created_at", "updated_at"].forEach(
      function (k) { if (s[k] != null) j[k] = s[k]; });
    dirty.table = dirty.order = true;
  }

  function loadJobs(replace) {
    return fetch("/api/jobs", {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) throw new Error("GET /api/jobs: " + r.status);
      return r.json();
    }).then(function (list) {
      list.forEach(function (s) { applyStatus(s, !replace); });
      render();
    });
  }

  /* --- the jobs table (virtualised) ---------------------------------------------------- */

  var table = {rows: [], view: [], filterText: "", filterState: "", top: null, bottom: null};

  function filtered() {
    var text = table.filterText.toLowerCase();
    var state = table.filterState;
    var out = [];
    jobs.forEach(function (j) {
      if (state === "active" ? ACTIVE.indexOf(j.state) < 0 : state && j.state !== state) return;
      if (text && (j.name + " " + j.owner + " " + j.job_id + " " + j.message + " " + j.state)
        .toLowerCase().indexOf(text) < 0) return;
      out.push(j);
    });
    // newest first; jobs not described yet (no created_at) at the top
    out.sort(function (a, b) {
      var x = a.created_at || "9", y = b.created_at || "9";
      return x < y ? 1 : x > y ? -1 : (a.job_id < b.job_id ? 1 : -1);
    });
    return out;
  }

  function makeRow() {
    var tr = el("tr");
    var name = el("td"), link = el("a"); name.appendChild(link);
    var owner = el("td", {class: "c-owner"});
    var stateTd = el("td"), badge = el("span", {class: "badge"}); stateTd.appendChild(badge);
    var progTd = el("td");
    var bar = el("div", {class: "progress", role: "progressbar", "aria-valuemin": "0",
      "aria-valuemax": "100"});
    var track = el("span", {class: "track"}), fill = el("span", {class: "fill"});
    var label = el("em");
    track.appendChild(fill); bar.appendChild(track); bar.appendChild(label);
    progTd.appendChild(bar);
    var time = el("td", {class: "c-elapsed"}), msg = el("td", {class: "c-msg"});
    [name, owner, stateTd, progTd, time, msg].forEach(function (td) { tr.appendChild(td); });
    return {tr: tr, link: link, owner: owner, badge: badge, bar: bar, fill: fill, label: label,
      time: time, msg: msg};
  }

  function drawTable(now) {
    var scroller = $("jobs-scroll"), body = $("jobs-body");
    if (dirty.order || dirty.filter) {
      table.view = filtered();
      dirty.order = dirty.filter = false;
    }
    var view = table.view;
    $("job-count").textContent = "(" + view.length + (view.length !== jobs.size ?
      " of " + jobs.size : "") + ")";
    $("jobs-empty").hidden = view.length > 0;
    var height = scroller.clientHeight || 600;
    var first = Math.max(0, Math.floor(scroller.scrollTop / ROW) - OVERSCAN);
    var count = Math.min(view.length - first, Math.ceil(height / ROW) + 2 * OVERSCAN);
    if (!table.top) {
      table.top = el("tr", {class: "spacer", "aria-hidden": "true"});
      table.top.appendChild(el("td", {colspan: "6"}));
      table.bottom = table.top.cloneNode(true);
      body.appendChild(table.top);
      body.appendChild(table.bottom);
    }
    while (table.rows.length < count) {
      var r = makeRow();
      table.rows.push(r);
      body.insertBefore(r.tr, table.bottom);
    }
    table.top.firstChild.style.height = first * ROW + "px";
    table.bottom.firstChild.style.height = Math.max(0, view.length - first - count) * ROW + "px";
    table.rows.forEach(function (r, i) {
      var j = view[first + i];
      set(r.tr, "hidden", !j);
      if (!j) return;
      setAttr(r.tr, "data-job", j.job_id);
      setAttr(r.link, "href", "#/jobs/" + j.job_id);
      set(r.link, "textContent", j.name);
      set(r.owner, "textContent", j.owner);
      set(r.badge, "textContent", j.state);
      setAttr(r.badge, "data-state", j.state);
      var p = Math.max(0, Math.min(100, j.progress || 0));
      set(r.fill.style, "width", p + "%");
      set(r.label, "textContent", pct(p));
      setAttr(r.bar, "aria-valuenow", String(Math.round(p)));
      setAttr(r.bar, "aria-label", "Progress of " + j.name);
      set(r.time, "textContent", elapsed(j, now));
      set(r.msg, "textContent", j.message || "");
      setAttr(r.msg, "title", j.message || "");
    });
  }

  /* --- the job detail ------------------------------------------------------------------ */

  function openDetail(id) {
    closeDetail();
    var client = new ControlPlaneClient();
    detail = {id: id, client: client, job: {job_id: id, state: "pending", progress: 0},
      agents: new Map(), seqs: [], pending: [], snapshot: false};
    var d = detail;
    client.on("job.snapshot", function (e) {
      if (detail !== d) return;
      var s = e.data;
      Object.assign(d.job, s);
      d.job.state = s.state || s.status;
      d.agents = new Map();
      (s.agents || []).forEach(function (a) { d.agents.set(a.agent_id, Object.assign({}, a)); });
      (s.recent_outputs || []).forEach(function (o) {
        var a = d.agents.get(o.agent_id);
        if (a) a.output = o.output;
      });
      d.snapshot = true;
      dirty.detail = true;
      schedule();
    });
    client.onEvent(function (e) {
      if (detail !== d || e.seq == null || !e.data || e.data.job_id !== id) return;
      applyDetail(d, e);
      d.seqs.push(e.seq);
      d.pending.push(e);
      dirty.detail = true;
      schedule();
    });
    client.on("client.gap", function () {
      if (detail !== d) return;
      say("The history no longer reaches back to where this job's view stopped: it was " +
        "refreshed from the job's snapshot; the timeline has a hole.");
      // a fresh subscribe (no since) starts with the job's snapshot
      client.unsubscribe(["job:" + id]).then(function () {
        return client.subscribe(["job:" + id]);
      }).catch(function (err) { say("Refreshing the job failed: " + err.message); });
    });
    client.onState(updateConn);
    $("view-jobs").hidden = true;
    $("view-job").hidden = false;
    $("d-id").textContent = id;
    $("job-title").textContent = "Job " + id;
    $("d-timeline").textContent = "";
    $("d-outcome").textContent = "";
    document.querySelectorAll("#controls output").forEach(function (o) { o.textContent = ""; });
    dirty.detail = true;
    client.connect().then(function () {
      return client.subscribe(["job:" + id], {since: 0});
    }).catch(function (err) { say("Opening job " + id + " failed: " + err.message); });
    render();
  }

  function closeDetail() {
    if (detail) detail.client.close();
    detail = null;
    $("view-job").hidden = true;
    $("view-jobs").hidden = false;
  }

  function applyDetail(d, e) {
    var data = e.data, j = d.job;
    var state = data.status || STATE_OF[e.type];
    if (state) j.state = state;
    if (typeof data.progress === "number") j.progress = data.progress;
    if (data.message != null) j.message = data.message;
    if (e.type === "job.created") {
      j.name = data.name; j.owner = data.owner; j.created_at = e.timestamp;
    }
    if (e.type === "job.completed") { j.result = data.result; j.progress = 100; }
    if (e.type === "job.failed") { j.error = data.error; j.traceback = data.traceback; }
    if (e.type === "job.cancelled") j.forced = data.forced;
    j.updated_at = e.timestamp;
    if (e.type.indexOf("agent.") === 0) {
      var a = d.agents.get(data.agent_id) || {agent_id: data.agent_id, name: data.name || "",
        state: "running"};
      if (data.name) a.name = data.name;
      if (e.type === "agent.started") a.state = "running";
      if (e.type === "agent.output") a.output = data.output;
      if (e.type === "agent.completed") a.state = "completed";
      if (e.type === "agent.failed") { a.state = "failed"; a.output = data.error; }
      d.agents.set(data.agent_id, a);
    }
  }

  function describe(e) {
    var d = e.data;
    if (e.type === "job.progress") return pct(d.progress) + (d.message ? " " + d.message : "");
    if (e.type === "job.created") return (d.name || "") + " by " + (d.owner || "?");
    if (e.type === "job.failed") return String(d.error || "").split("\n")[0];
    if (e.type === "job.completed") return JSON.stringify(d.result);
    if (e.type === "job.restarted") return "attempt " + d.attempt + ": " + (d.reason || "");
    if (e.type.indexOf("agent.") === 0) {
      return (d.name || d.agent_id) + (d.output ? ": " + d.output : "") +
        (d.error ? ": " + d.error : "");
    }
    return d.status || "";
  }

  function drawDetail(now) {
    var d = detail, j = d.job;
    var badge = $("d-state");
    badge.textContent = j.state;
    badge.setAttribute("data-state", j.state);
    $("job-title").textContent = (j.name || "Job") + " · " + d.id;
    $("d-owner").textContent = j.owner || "?";
    $("d-elapsed").textContent = elapsed(j, now);
    var p = Math.max(0, Math.min(100, j.progress || 0));
    var bar = $("d-progress");
    bar.querySelector(".fill").style.width = p + "%";
    bar.lastChild.textContent = pct(p);
    bar.setAttribute("aria-valuenow", String(Math.round(p)));
    $("d-message").textContent = j.message || "";
    var allowed = mayControl(j.owner);
    document.querySelectorAll("#controls button").forEach(function (b) {
      var cmd = b.getAttribute("data-cmd");
      b.disabled = !allowed || !d.snapshot && !d.seqs.length || ALLOWED[cmd].indexOf(j.state) < 0;
      b.title = allowed ? "" : "Your role may not control this job";
    });
    // agents and outcome: rebuilt only when they change (a folded traceback stays open)
    var agentsKey = JSON.stringify(Array.from(d.agents.values()));
    if (agentsKey !== d.agentsKey) { d.agentsKey = agentsKey; drawAgents(d); }
    var outcomeKey = JSON.stringify([j.state, j.result, j.error, j.traceback]);
    if (outcomeKey !== d.outcomeKey) { d.outcomeKey = outcomeKey; drawOutcome(j); }
    drawTimeline(d);
  }

  function drawAgents(d) {
    var list = $("d-agents");
    list.textContent = "";
    if (!d.agents.size) list.appendChild(el("li", {class: "muted"}, "none"));
    d.agents.forEach(function (a) {
      var li = el("li");
      li.appendChild(el("strong", null, a.name || a.agent_id));
      li.appendChild(document.createTextNode(" "));
      li.appendChild(el("span", {class: "badge", "data-state": a.state === "failed" ?
        "failed" : a.state === "completed" ? "completed" : "running"}, a.state));
      if (a.output) li.appendChild(el("pre", {tabindex: "0"}, String(a.output).slice(-600)));
      list.appendChild(li);
    });
  }

  function drawOutcome(j) {
    var outcome = $("d-outcome");
    outcome.textContent = "";
    if (j.state === "completed" && j.result !== undefined) {
      var ok = el("div", {class: "outcome"});
      ok.appendChild(el("strong", null, "Result"));
      ok.appendChild(el("pre", {tabindex: "0"}, JSON.stringify(j.result, null, 2)));
      outcome.appendChild(ok);
    } else if (j.error) {
      var bad = el("div", {class: "outcome failed"});
      bad.appendChild(el("strong", null, "Error: "));
      bad.appendChild(document.createTextNode(String(j.error).trim().split("\n")[0]));
      var trace = j.traceback || (String(j.error).indexOf("\n") > 0 ? String(j.error) : "");
      if (trace) {
        var fold = el("details");
        fold.appendChild(el("summary", null, "Traceback"));
        fold.appendChild(el("pre", {tabindex: "0"}, trace));
        bad.appendChild(fold);
      }
      outcome.appendChild(bad);
    }
  }

  function drawTimeline(d) { // new rows on top
    var body = $("d-timeline");
    var frag = document.createDocumentFragment();
    for (var i = d.pending.length - 1; i >= 0; i--) {
      var e = d.pending[i];
      var tr = el("tr", {"data-seq": String(e.seq)});
      tr.appendChild(el("td", null, String(e.seq)));
      tr.appendChild(el("td", null, clock(e.timestamp)));
      tr.appendChild(el("td", null, e.type));
      tr.appendChild(el("td", null, describe(e)));
      frag.appendChild(tr);
    }
    d.pending = [];
    body.insertBefore(frag, body.firstChild);
    while (body.childNodes.length > TIMELINE_ROWS) body.removeChild(body.lastChild);
    $("d-count").textContent = "(" + d.seqs.length + " events" +
      (d.seqs.length > TIMELINE_ROWS ? ", the last " + TIMELINE_ROWS + " shown" : "") + ")";
  }

  function command(button) {
    if (!detail) return;
    var cmd = button.getAttribute("data-cmd");
    var out = document.querySelector('#controls output[data-for="' + cmd + '"]');
    var started = performance.now();
    out.removeAttribute("data-kind");
    out.textContent = "sending…";
    detail.client[cmd](detail.id).then(function (ack) {
      var ms = Math.round(performance.now() - started);
      var state = ack && ack.status ? ack.status.state : "ok";
      out.textContent = "ack: " + state + " (" + ms + " ms)";
    }, function (err) {
      var ms = Math.round(performance.now() - started);
      out.setAttribute("data-kind", "error");
      out.textContent = (err.code || "error") + ": " + err.message + " (" + ms + " ms)";
    });
  }

  /* --- system panel -------------------------------------------------------------------- */

  var charts = null;
  var series = {t: [], cpu: [], mem: [], nodes: [], states: {}};
  var JOB_STATES = ["running", "paused", "pending", "suspended", "completed", "failed", "cancelled"];
  var COLORS = ["#2f7de1", "#d98f00", "#8a8f98", "#8e5bd6", "#1f9d55", "#d64541", "#b5651d"];

  function makeChart(id, names, colors, max) {
    var node = $(id);
    var opts = {
      width: Math.max(120, node.clientWidth || 160), height: 110,
      legend: {show: false}, cursor: {show: false},
      scales: {x: {time: true}, y: max ? {range: [0, max]} : {auto: true}},
      axes: [{show: false}, {size: 36, stroke: "#8a939c", grid: {stroke: "rgba(128,128,128,.2)"},
        ticks: {show: false}}],
      series: [{}].concat(names.map(function (n, i) {
        return {label: n, stroke: colors[i], width: 1.5, points: {show: false}};
      })),
    };
    return new uPlot(opts, [[]].concat(names.map(function () { return []; })), node);
  }

  function onMetrics(e) {
    var d = e.data;
    series.t.push(Date.parse(e.timestamp) / 1000);
    series.cpu.push(d.cpu_total ? 100 * d.cpu_used / d.cpu_total : 0);
    series.mem.push(d.memory_total ? 100 * d.memory_used / d.memory_total : 0);
    series.nodes.push(d.nodes_alive || 0);
    JOB_STATES.forEach(function (s) {
      (series.states[s] = series.states[s] || []).push((d.jobs || {})[s] || 0);
    });
    if (series.t.length > CHART_POINTS) {
      [series.t, series.cpu, series.mem, series.nodes].concat(
        JOB_STATES.map(function (s) { return series.states[s]; })).forEach(function (a) {
        a.shift();
      });
    }
    var counts = Object.keys(d.jobs || {}).map(function (k) { return k + " " + d.jobs[k]; });
    $("sys-summary").textContent = d.nodes_alive + " node(s), CPU " + d.cpu_used + "/" +
      d.cpu_total + " reserved; jobs: " + (counts.join(", ") || "none");
    dirty.charts = true;
    schedule();
  }

  function drawCharts() {
    if (typeof uPlot === "undefined") return;
    if (!charts) {
      charts = {
        cpu: makeChart("chart-cpu", ["CPU %"], ["#2f7de1"], 100),
        mem: makeChart("chart-mem", ["memory %"], ["#8e5bd6"], 100),
        nodes: makeChart("chart-nodes", ["nodes"], ["#1f9d55"]),
        jobs: makeChart("chart-jobs", JOB_STATES, COLORS),
      };
      var legend = $("legend-jobs");
      JOB_STATES.forEach(function (s, i) {
        var item = el("li");
        item.appendChild(el("span", {class: "swatch", style: "background:" + COLORS[i]}));
        item.appendChild(document.createTextNode(s));
        legend.appendChild(item);
      });
    }
    charts.cpu.setData([series.t, series.cpu]);
    charts.mem.setData([series.t, series.mem]);
    charts.nodes.setData([series.t, series.nodes]);
    charts.jobs.setData([series.t].concat(JOB_STATES.map(function (s) {
      return series.states[s] || [];
    })));
  }

  function resizeCharts() {
    if (!charts) return;
    Object.keys(charts).forEach(function (k) {
      var node = charts[k].root.parentNode;
      charts[k].setSize({width: Math.max(120, node.clientWidth), height: 110});
    });
  }

  /* Alerts as dismissible banners: the newest three, and a button for the rest. */
  var alerts = [];
  function onAlert(e) {
    alerts.push({id: e.seq, level: e.data.level || "warning", message: String(e.data.message)});
    if (alerts.length > 200) alerts.shift();
    drawAlerts();
  }

  function drawAlerts() {
    var box = $("alerts");
    box.textContent = "";
    alerts.slice(-3).reverse().forEach(function (a) {
      var banner = el("div", {class: "alert", role: "alert", "data-level": a.level});
      banner.appendChild(el("p", null, a.level.toUpperCase() + ": " + a.message));
      var close = el("button", {type: "button", "aria-label": "Dismiss alert: " + a.message},
        "Dismiss");
      close.addEventListener("click", function () {
        alerts = alerts.filter(function (x) { return x !== a; });
        drawAlerts();
      });
      banner.appendChild(close);
      box.appendChild(banner);
    });
    if (alerts.length > 3) {
      var all = el("button", {type: "button", class: "dismiss-all"},
        "Dismiss all " + alerts.length + " alerts");
      all.addEventListener("click", function () { alerts = []; drawAlerts(); });
      box.appendChild(all);
    }
  }

  /* --- connection indicator, notices --------------------------------------------------- */

  var countdown = null;
  function updateConn() {
    var clients = [main].concat(detail ? [detail.client] : []);
    var states = clients.map(function (c) { return c.state; });
    var state = !navigator.onLine || states.indexOf("closed") >= 0 && main.state === "closed" ?
      "offline" : states.indexOf("reconnecting") >= 0 ? "reconnecting" :
      states.indexOf("connecting") >= 0 ? "connecting" : "connected";
    var box = $("conn");
    box.setAttribute("data-state", state);
    var text = state;
    if (state === "reconnecting") {
      var next = clients.map(function (c) { return c.nextRetryAt; }).filter(Boolean);
      if (next.length) {
        var left = Math.max(0, Math.min.apply(null, next) - Date.now()) / 1000;
        text = "reconnecting in " + left.toFixed(1) + " s";
      } else {
        text = "reconnecting…";
      }
      if (!countdown) countdown = setInterval(updateConn, 100);
    } else if (countdown) {
      clearInterval(countdown);
      countdown = null;
    }
    if (state === "offline" && main.error) text = "offline: " + main.error.message;
    set($("conn-text"), "textContent", text);
  }

  var noticeTimer = null;
  function say(text) {
    var n = $("notice");
    n.textContent = text;
    n.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(function () { n.hidden = true; }, 15000);
  }

  /* --- submit form --------------------------------------------------------------------- */

  var jobTypes = [];
  function loadJobTypes() {
    return fetch("/api/job-types", {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.json() : [];
    }).then(function (types) {
      jobTypes = types;
      var select = $("submit-type");
      select.textContent = "";
      types.forEach(function (t) { select.appendChild(el("option", {value: t.name}, t.name)); });
      buildFields();
    });
  }

  function buildFields() {
    var t = jobTypes.find(function (x) { return x.name === $("submit-type").value; });
    var box = $("submit-fields");
    box.textContent = "";
    $("submit-summary").textContent = t ? t.summary.replace(/``/g, "") : "";
    if (!t) return;
    t.params.forEach(function (p) {
      var label = el("label", p.kind === "bool" ? {class: "check"} : null);
      var input;
      if (p.kind === "bool") {
        input = el("input", {type: "checkbox", name: p.name});
        input.checked = !!p.default;
        label.appendChild(input);
        label.appendChild(document.createTextNode(p.name));
      } else {
        label.appendChild(document.createTextNode(p.name + " (" + p.kind + (p.required ?
          ", required" : "") + ")"));
        input = el("input", {name: p.name, type: p.kind === "str" ? "text" : "number"});
        if (p.kind === "int") input.step = "1";
        if (p.kind === "float") input.step = "any";
        if (p.default != null) input.value = String(p.default);
        if (p.required) input.required = true;
        label.appendChild(input);
      }
      input.setAttribute("data-kind", p.kind);
      box.appendChild(label);
    });
  }

  function submit(ev) {
    ev.preventDefault();
    var params = {}, out = $("submit-result"), bad = null;
    $("submit-fields").querySelectorAll("input").forEach(function (input) {
      var kind = input.getAttribute("data-kind");
      if (kind === "bool") { params[input.name] = input.checked; return; }
      if (input.value === "") return; // its default
      if (kind === "str") { params[input.name] = input.value; return; }
      var n = Number(input.value);
      if (!isFinite(n) || kind === "int" && !Number.isInteger(n)) bad = bad || input.name;
      params[input.name] = n;
    });
    out.removeAttribute("data-kind");
    if (bad) {
      out.setAttribute("data-kind", "error");
      out.textContent = bad + " must be a number (a whole one for an int)";
      return;
    }
    out.textContent = "submitting…";
    fetch("/api/submit", {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({type: $("submit-type").value, params: params})})
      .then(function (r) {
        return r.json().then(function (body) { return {ok: r.ok, status: r.status, body: body}; });
      }).then(function (r) {
        out.textContent = "";
        if (!r.ok) {
          out.setAttribute("data-kind", "error");
          out.textContent = "refused (" + r.status + "): " + (r.body.detail || JSON.stringify(r.body));
          return;
        }
        applyStatus(r.body, true);
        render();
        out.appendChild(document.createTextNode("submitted "));
        out.appendChild(el("a", {href: "#/jobs/" + r.body.job_id}, r.body.job_id));
      }, function (err) {
        out.setAttribute("data-kind", "error");
        out.textContent = "failed: " + err.message;
      });
  }

  function applyRole() {
    var submitOk = maySubmit();
    $("submit-form").hidden = !submitOk;
    $("submit-denied").hidden = submitOk;
    $("who").textContent = principal.sub + " (" + principal.role + ")";
    dirty.detail = !!detail;
  }

  /* --- routing, the frame loop --------------------------------------------------------- */

  function route() {
    var m = /^#\/jobs\/([A-Za-z0-9_.-]+)/.exec(location.hash);
    if (m) {
      if (!detail || detail.id !== m[1]) openDetail(m[1]);
    } else if (detail || $("view-jobs").hidden) {
      closeDetail();
      dirty.table = true;
      render();
    }
    updateConn();
  }

  // The page's own work, for the frame-time test: time spent drawing and handling events.
  var perf = {renders: 0, renderMs: 0, renderMax: 0, events: 0, eventMs: 0};
  var frame = null;
  function schedule() { if (frame == null) frame = requestAnimationFrame(render); }
  function render() {
    if (frame != null) { cancelAnimationFrame(frame); frame = null; }
    var started = performance.now(), now = Date.now();
    if (!detail && (dirty.table || dirty.order || dirty.filter)) {
      dirty.table = false;
      drawTable(now);
    }
    if (detail && dirty.detail) { dirty.detail = false; drawDetail(now); }
    if (dirty.charts) { dirty.charts = false; drawCharts(); }
    var took = performance.now() - started;
    perf.renders += 1;
    perf.renderMs += took;
    perf.renderMax = Math.max(perf.renderMax, took);
  }

  function onMainEvent(e) {
    var started = performance.now();
    if (e.type === "system.metrics") onMetrics(e);
    else if (e.type === "system.alert") onAlert(e);
    else if (applyEvent(e)) schedule();
    perf.events += 1;
    perf.eventMs += performance.now() - started;
  }

  function start() {
    main.onState(updateConn);
    main.on("welcome", function (data) {
      principal = data.principal || {sub: "admin", role: "admin"};
      applyRole();
      schedule();
    });
    main.onEvent(onMainEvent);
    main.on("client.gap", function () {
      say("The history no longer reaches back to where the page stopped: the jobs table " +
        "was refreshed from the server.");
      loadJobs(true);
    });
    $("filter-text").addEventListener("input", function (ev) {
      table.filterText = ev.target.value; dirty.filter = true; schedule();
    });
    $("filter-state").addEventListener("change", function (ev) {
      table.filterState = ev.target.value; dirty.filter = true; schedule();
    });
    $("jobs-scroll").addEventListener("scroll", function () { dirty.table = true; schedule(); },
      {passive: true});
    $("controls").addEventListener("click", function (ev) {
      var b = ev.target.closest("button");
      if (b && !b.disabled) command(b);
    });
    $("submit-type").addEventListener("change", buildFields);
    $("submit-form").addEventListener("submit", submit);
    window.addEventListener("hashchange", route);
    window.addEventListener("online", updateConn);
    window.addEventListener("offline", updateConn);
    window.addEventListener("resize", function () { resizeCharts(); dirty.table = true; schedule(); });
    setInterval(function () { // elapsed times
      dirty.table = true; if (detail) dirty.detail = true; schedule();
    }, 1000);
    applyRole();
    route();
    main.connect().then(function () {
      // live first, then the list: an event in between is not lost, the list only fills in
      return main.subscribe(["*"]);
    }).then(function () { return loadJobs(false); }).catch(function (err) {
      say("Connecting failed: " + err.message);
    });
    loadJobTypes();
  }

  // For tests and the curious: the model and both clients.
  window.dashboard = {
    jobs: jobs, main: main, perf: perf,
    get detail() { return detail; },
    get principal() { return principal; },
  };
  start();
})();
