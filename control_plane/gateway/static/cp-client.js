/* The browser client of the control plane: one file, no build step, no dependencies.
 *
 *   <script src="/static/cp-client.js"></script>
 *   const cp = new ControlPlaneClient();              // ws(s)://<this host>/ws, cookie auth
 *   cp.onState((state) => ...);                       // connecting|connected|reconnecting|closed
 *   cp.on("welcome", (data) => ...);                  // each connection's welcome (principal)
 *   cp.on("job.progress", (event) => ...);            // or cp.onEvent(event => ...) for all
 *   await cp.connect();
 *   await cp.subscribe(["job:" + jobId, "jobs"], {since: 0});
 *   await cp.pause(jobId);                            // the ack's data, or an Error with .code
 *
 * The browser answers the server's RFC 6455 pings by itself; this client also pings the
 * server (an application ping, which the page cannot otherwise see: a silent socket is
 * dropped). It reconnects with jittered exponential backoff after a network loss (1006) or
 * a close that protocol.reconnects_after allows (1000, 1011, 1012, 4001, 4008, a proxy's
 * 1001), never after 4401/4403, 1009 or a protocol error; keeps its client_id (a command
 * retried after a reconnect is applied once) and re-subscribes every channel with since =
 * the last seq it saw on that channel and the epoch it saw: the stream resumes with nothing
 * lost, and duplicates are dropped by seq. When the server cannot vouch for the history
 * (recovered: false) handlers get a "client.gap" event: refresh what you show.
 */
(function (root) {
  "use strict";

  var SEEN_WINDOW = 65536;
  var STATES = ["connecting", "connected", "reconnecting", "closed"];

  // Ports of control_plane/core/protocol.py; tests/unit/test_protocol_facts.py runs this file
  // under node and checks each against the Python source, so they cannot drift apart.

  // protocol.LIFECYCLE_TYPES: what the "jobs" channel carries, every job's lifecycle.
  var LIFECYCLE = ["job.created", "job.started", "job.completed", "job.failed", "job.paused",
    "job.resumed", "job.cancelled", "job.restarted", "job.suspended"];
  // protocol.CloseCode, by its members' names in lower case.
  var CLOSE_CODES = {normal: 1000, too_big: 1009, server_error: 1011, restarting: 1012,
    no_subscribe: 4001, slow_consumer: 4008, too_many_connections: 4029, bad_request: 4400,
    unauthorized: 4401,
    forbidden_origin: 4403};
  // The codes of CloseCode whose retry is false: coming back as it is would end the same way.
  var NO_RETRY = [1009, 4400, 4401, 4403];
  // protocol.REFUSAL_CODES: the token or the page's origin was refused.
  var REFUSED = [4401, 4403];
  // protocol.NETWORK_LOSS: RFC 6455's code for a socket that ended without a close frame.
  var NETWORK_LOSS = 1006;

  /* protocol.receiving_channels: the subscription channels that receive an event on
   * `channel` of `type`: the channel itself, "*", and "jobs" for a lifecycle type. */
  /* Two cursors combined with pick (Math.max, Math.min): seqs, or with a sharded hub one
   * seq per shard ({"0": 120, "1": 95}); a number is that seq on every shard. */
  function combine(a, b, pick) {
    if (typeof a === "number" && typeof b === "number") return pick(a, b);
    var keys = Object.keys(typeof a === "number" ? b : a);
    if (typeof a !== "number" && typeof b !== "number") {
      Object.keys(b).forEach(function (k) { if (keys.indexOf(k) < 0) keys.push(k); });
    }
    var out = {};
    keys.forEach(function (k) {
      var x = typeof a === "number" ? a : (a[k] || 0);
      var y = typeof b === "number" ? b : (b[k] || 0);
      out[k] = pick(x, y);
    });
    return out;
  }

  function receivingChannels(channel, type) {
    return LIFECYCLE.indexOf(type) >= 0 ? [channel, "*", "jobs"] : [channel, "*"];
  }

  /* Whether a subscription to `subscription` receives `event` ({channel, type}). */
  function matches(subscription, event) {
    return receivingChannels(event.channel || "", event.type).indexOf(subscription) >= 0;
  }

  // protocol.PROTOCOL_ERRORS: RFC 6455's codes for a peer that broke the protocol.
  var PROTOCOL_ERRORS = [1002, 1003, 1007, 1008];

  /* protocol.reconnects_after: after a lost network, a code CloseCode says to retry, or a
   * code the gateway does not send itself (a proxy's 1001); never after a protocol error,
   * a CloseCode that says no, or any 44xx. */
  function reconnectsAfter(code) {
    if (code == null || code === NETWORK_LOSS) return true;
    if (PROTOCOL_ERRORS.indexOf(code) >= 0 || (code >= 4400 && code < 4500)) return false;
    return NO_RETRY.indexOf(code) < 0;
  }

  /* The CloseCode name of `code` ("unauthorized"), or null for a code the gateway never sends. */
  function closeName(code) {
    for (var name in CLOSE_CODES) if (CLOSE_CODES[name] === code) return name;
    return null;
  }

  function cpError(code, message, extra) {
    var err = new Error(message);
    err.name = "ControlPlaneError";
    err.code = code;
    return Object.assign(err, extra || {});
  }

  function defaultUrl() {
    return (root.location.protocol === "https:" ? "wss://" : "ws://") + root.location.host + "/ws";
  }

  class ControlPlaneClient {
    constructor(options) {
      var o = options || {};
      this.url = o.url || defaultUrl();
      this.reconnect = o.reconnect !== false;
      this.backoffInitial = o.backoffInitial || 200; // ms
      this.backoffMax = o.backoffMax || 10000;
      this.pingInterval = o.pingInterval || 10000;
      this.pingTimeout = o.pingTimeout || 30000;
      this.requestTimeout = o.requestTimeout || 30000;
      this.clientId = o.clientId || Math.random().toString(16).slice(2, 10) +
        Math.random().toString(16).slice(2, 10);
      this.state = "closed";
      this.epoch = null;
      this.recovered = true; // false when the last subscribe with since could not recover
      this.gaps = 0;
      this.duplicates = 0;
      this.reconnects = 0;
      this.error = null; // why the client closed for good
      this.welcome = null; // the last welcome frame's data (client_id, epoch, principal, ...)
      this.nextRetryAt = null; // while reconnecting: Date.now() of the next attempt
      // channel -> where it resumes: the last seq seen on it, or the seq it started from.
      // Per channel, because only within a channel do events arrive in seq order.
      this.cursors = new Map();
      this._seen = new Set();
      this._seenOrder = [];
      this._pending = new Map();
      this._waiters = [];
      this._handlers = new Map();
      this._ids = 0;
      this._ws = null;
      this._closing = false;
      this._attempt = 0;
    }

    /* --- the public API ------------------------------------------------------------- */

    connect() {
      if (this.state === "closed") {
        this._closing = false;
        this.error = null;
        this._setState("connecting");
        this._open();
      }
      return this._waitConnected(Date.now() + this.requestTimeout).then(function () {});
    }

    close() {
      this._closing = true;
      clearTimeout(this._retryTimer);
      if (this._session) this._session.ws.close(1000, "client closing");
      this._finish(null);
    }

    on(type, handler) {
      if (!this._handlers.has(type)) this._handlers.set(type, new Set());
      this._handlers.get(type).add(handler);
      var handlers = this._handlers.get(type);
      return function () { handlers.delete(handler); };
    }

    onEvent(handler) { return this.on("*", handler); }

    onState(handler) { return this.on("state", handler); }

    /* Subscribe; with {since}, the retained events after it are replayed (they follow the
     * ack). Resolves with the ack's data; rejects with an Error carrying .code. */
    subscribe(channels, options) {
      var message = {type: "subscribe", channels: channels.slice()};
      if (options && options.since != null) {
        message.since = options.since;
        message.epoch = this.epoch;
      }
      return this._request(message, true).then(checked);
    }

    unsubscribe(channels) {
      channels.forEach((c) => this.cursors.delete(c));
      return this._request({type: "unsubscribe", channels: channels}, false).then(checked);
    }

    pause(jobId) { return this._command("job.pause", jobId); }

    resume(jobId) { return this._command("job.resume", jobId); }

    cancel(jobId) { return this._command("job.cancel", jobId); }

    suspend(jobId) { return this._command("job.suspend", jobId); }

    /* The round trip to the gateway in milliseconds. */
    ping() {
      var started = performance.now();
      return this._request({type: "ping"}, false).then(function () {
        return performance.now() - started;
      });
    }

    /* --- requests ------------------------------------------------------------------- */

    _command(type, jobId) {
      // A retry after a reconnect reuses the id with the same client_id: applied once.
      return this._request({type: type, job_id: jobId}, true).then(function (frame) {
        return checked(frame, jobId);
      });
    }

    /* Send with a fresh id; resolve with the ack/error/pong carrying it. Waits for the
     * connection; with retry, sends again on the next connection after a drop. */
    async _request(message, retry, ws) {
      var id = "b" + (++this._ids);
      var text = JSON.stringify(Object.assign({}, message, {id: id}));
      var deadline = Date.now() + this.requestTimeout;
      for (;;) {
        var socket = ws || await this._waitConnected(deadline);
        try {
          return await new Promise((resolve, reject) => {
            var timer = setTimeout(function () {
              reject(cpError("timeout", "no reply to " + message.type + " in time"));
            }, Math.max(0, deadline - Date.now()));
            this._pending.set(id, {
              message: message,
              resolve: function (f) { clearTimeout(timer); resolve(f); },
              reject: function (e) { clearTimeout(timer); reject(e); },
            });
            socket.send(text);
          });
        } catch (err) {
          if (err.code !== "dropped" || !retry || ws) throw err;
        } finally {
          this._pending.delete(id);
        }
      }
    }

    _waitConnected(deadline) {
      if (this.state === "connected" && this._ws) return Promise.resolve(this._ws);
      if (this.state === "closed") {
        return Promise.reject(this.error || cpError("connection_lost", "the client is closed"));
      }
      return new Promise((resolve, reject) => {
        var waiter = {resolve: resolve, reject: reject};
        waiter.timer = setTimeout(() => {
          this._waiters = this._waiters.filter(function (w) { return w !== waiter; });
          reject(cpError("timeout", "not connected in time"));
        }, Math.max(0, deadline - Date.now()));
        this._waiters.push(waiter);
      });
    }

    _setState(state) {
      if (state === this.state) return;
      this.state = state;
      var waiters = this._waiters;
      if (state === "connected" || state === "closed") {
        this._waiters = [];
        waiters.forEach((w) => {
          clearTimeout(w.timer);
          if (state === "connected") w.resolve(this._ws);
          else w.reject(this.error || cpError("connection_lost", "the client is closed"));
        });
      }
      this._dispatch("state", state);
    }

    /* --- the connection ------------------------------------------------------------- */

    _open() {
      var sep = this.url.indexOf("?") < 0 ? "?" : "&";
      var ws = new WebSocket(this.url + sep + "client_id=" + encodeURIComponent(this.clientId));
      var session = {ws: ws, lastHeard: Date.now(), welcome: null, connected: false};
      session.welcomed = new Promise(function (resolve) { session.welcome = resolve; });
      this._session = session;
      ws.onmessage = (e) => this._onMessage(session, e.data);
      ws.onclose = (e) => this._onClose(session, e.code, e.reason);
      ws.onopen = () => {
        session.beat = setInterval(() => this._heartbeat(session), Math.min(
          this.pingInterval, this.pingTimeout / 2));
        session.welcomed.then(() => this._resume(session)).then(() => {
          if (this._session !== session) return;
          session.connected = true;
          this._attempt = 0;
          this._ws = ws;
          this._setState("connected");
        }, function () { /* dropped while resuming: onclose takes over */ });
      };
    }

    /* Re-subscribe every channel from where it left off (one subscribe per distinct since);
     * the replays follow the acks. */
    async _resume(session) {
      var groups = new Map(); // JSON of the since (a seq, or one per shard) -> [since, channels]
      this.cursors.forEach(function (since, channel) {
        var key = JSON.stringify(since);
        if (!groups.has(key)) groups.set(key, [since, []]);
        groups.get(key)[1].push(channel);
      });
      var requests = Array.from(groups.keys()).sort()
        .map((key) => ({type: "subscribe", channels: groups.get(key)[1],
          since: groups.get(key)[0], epoch: this.epoch}));
      // The gateway takes 4 subscribes in flight per socket (protocol limits): in groups.
      var replies = [];
      for (var at = 0; at < requests.length; at += 4) {
        var group = requests.slice(at, at + 4);
        replies = replies.concat(
          await Promise.all(group.map((m) => this._request(m, false, session.ws))));
      }
      replies.forEach((reply, i) => {
        if (reply.type !== "error") return;
        console.warn("control plane: resubscribing failed", reply.data);
        requests[i].channels.forEach((c) => this.cursors.delete(c));
      });
    }

    _heartbeat(session) {
      if (Date.now() - session.lastHeard > this.pingTimeout) {
        this._abandon(session, NETWORK_LOSS, "no frame from the server in time");
      } else if (session.ws.readyState === WebSocket.OPEN) {
        session.ws.send('{"type":"ping"}');
      }
    }

    /* Give up on a socket at once (a dead network can hold a close for minutes). */
    _abandon(session, code, reason) {
      var ws = session.ws;
      ws.onmessage = ws.onclose = null;
      try { ws.close(); } catch (e) { /* already closing */ }
      this._onClose(session, code, reason);
    }

    _onClose(session, code, reason) {
      if (this._session !== session) return;
      clearInterval(session.beat);
      this._session = null;
      this._ws = null;
      this._pending.forEach(function (p) { p.reject(cpError("dropped", "connection lost")); });
      this._pending.clear();
      if (this._closing) return this._finish(null);
      if (REFUSED.indexOf(code) >= 0) {
        return this._finish(cpError(closeName(code), "refused with " + code + ": " + reason,
          {closeCode: code}));
      }
      if (!reconnectsAfter(code) || !this.reconnect) {
        return this._finish(cpError("connection_lost", "closed with " + code + ": " + reason,
          {closeCode: code}));
      }
      if (this.state === "connected") this._setState("reconnecting");
      this._attempt = session.connected ? 0 : this._attempt + 1;
      var delay = Math.min(this.backoffMax, this.backoffInitial * Math.pow(2, this._attempt));
      var wait = delay / 2 + Math.random() * delay / 2;
      this.nextRetryAt = Date.now() + wait;
      this._retryTimer = setTimeout(() => {
        this.nextRetryAt = null;
        this.reconnects += 1;
        this._open();
      }, wait);
    }

    _finish(error) {
      this.error = this.error || error;
      if (this._session) clearInterval(this._session.beat);
      this._setState("closed");
    }

    _onMessage(session, raw) {
      if (this._session !== session) return;
      session.lastHeard = Date.now();
      var frame;
      try { frame = JSON.parse(raw); } catch (e) { return; }
      var data = frame.data || (frame.data = {});
      switch (frame.type) {
        case "ack":
        case "error":
        case "pong":
          return this._onReply(frame, data);
        case "welcome":
          if (this.epoch == null) this.epoch = data.epoch;
          this.welcome = data;
          session.welcome(data);
          this._dispatch("welcome", data);
          return;
        default:
          return this._onEvent(frame);
      }
    }

    _onReply(frame, data) {
      var pending = this._pending.get(String(data.request_id));
      if (!pending) {
        if (frame.type === "error") console.warn("control plane error", data);
        return;
      }
      if (frame.type === "ack" && pending.message.type === "subscribe") {
        this._onSubscribeAck(data, pending.message); // before the replay that follows it
      }
      pending.resolve(frame);
    }

    _onSubscribeAck(data, message) {
      var head = data.seq || 0; // a seq, or with a sharded hub one per shard {"0": 12, ...}
      var changed = data.epoch != null && this.epoch != null && data.epoch !== this.epoch;
      if (changed) { // a new hub log: its seqs start over
        this.cursors.forEach((seq, c) => this.cursors.set(c, combine(seq, head, Math.min)));
      }
      if (data.epoch != null) this.epoch = data.epoch;
      // A live subscribe starts at the ack's seq; with since, at since.
      var start = message.since == null ? head : message.since;
      message.channels.forEach((c) => {
        this.cursors.set(c, combine(this.cursors.has(c) ? this.cursors.get(c) : start, start,
          Math.max));
      });
      if ("recovered" in data) this.recovered = !!data.recovered;
      if (changed || data.recovered === false) {
        this.gaps += 1;
        this._onEvent({type: "client.gap", timestamp: new Date().toISOString(), data: {
          channels: message.channels, since: message.since, epoch: data.epoch,
          oldest: data.oldest,
        }});
      }
    }

    _onEvent(event) {
      if (typeof event.seq === "number") {
        var sharded = typeof event.shard === "number"; // seqs are per shard then
        var key = this.epoch + ":" + (sharded ? event.shard + "/" : "") + event.seq;
        if (this._seen.has(key)) { this.duplicates += 1; return; }
        this._seen.add(key);
        this._seenOrder.push(key);
        if (this._seenOrder.length > SEEN_WINDOW) {
          var seen = this._seen;
          this._seenOrder.splice(0, SEEN_WINDOW / 4).forEach(function (k) { seen.delete(k); });
        }
        var receivers = receivingChannels(event.channel || "", event.type);
        var read = {};
        if (sharded) read[event.shard] = event.seq;
        this.cursors.forEach((cursor, c) => {
          if (receivers.indexOf(c) < 0) return;
          if (sharded) this.cursors.set(c, combine(cursor, read, Math.max));
          else if (typeof cursor === "number" && event.seq > cursor) this.cursors.set(c, event.seq);
        });
      }
      this._dispatch(event.type, event);
      this._dispatch("*", event);
    }

    _dispatch(type, payload) {
      var handlers = this._handlers.get(type);
      if (!handlers) return;
      handlers.forEach(function (handler) {
        try { handler(payload); } catch (e) { console.error("control plane handler", e); }
      });
    }
  }

  function checked(frame, jobId) {
    if (frame.type !== "error") return frame.data;
    var d = frame.data;
    throw cpError(d.code, d.message, {requestId: d.request_id, jobId: jobId});
  }

  ControlPlaneClient.STATES = STATES;
  // The protocol facts above, for tests/unit/test_protocol_facts.py (and curious pages).
  ControlPlaneClient.LIFECYCLE = LIFECYCLE;
  ControlPlaneClient.CLOSE_CODES = CLOSE_CODES;
  ControlPlaneClient.NO_RETRY = NO_RETRY;
  ControlPlaneClient.REFUSED = REFUSED;
  ControlPlaneClient.NETWORK_LOSS = NETWORK_LOSS;
  ControlPlaneClient.receivingChannels = receivingChannels;
  ControlPlaneClient.matches = matches;
  ControlPlaneClient.reconnectsAfter = reconnectsAfter;
  root.ControlPlaneClient = ControlPlaneClient;
  if (typeof module === "object" && module.exports) module.exports = ControlPlaneClient;
})(typeof window !== "undefined" ? window : this);
