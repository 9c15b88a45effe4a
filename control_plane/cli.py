"""The ``control-plane`` console script; the only place that configures logging.

control-plane serve [--host 127.0.0.1] [--port 8000] [--address ADDR]
control-plane demo                       # serve, plus example jobs
control-plane submit jobs.examples:countdown --arg steps=50 --arg delay=0.05
control-plane status|pause|resume|suspend|cancel|watch JOB_ID
control-plane list
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("control_plane.cli")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _env_shards() -> int | None:
    """``CONTROL_PLANE_HUB_SHARDS``, when set: the hub's shard count without the option."""
    value = os.environ.get("CONTROL_PLANE_HUB_SHARDS")
    return int(value) if value else None


def _kv(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--arg takes key=value, got {pair!r}")
        out[key] = _parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="control-plane", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("CONTROL_PLANE_LOG_FORMAT", "text"),
        help="json: one JSON object a line, here and in the control plane's actors",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    for name, help_text in (
        ("serve", "run the control plane until SIGINT/SIGTERM"),
        ("demo", "serve, plus example jobs so there is live work to watch"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--address", default=None, help="Ray cluster to attach to (RAY_ADDRESS)")
        p.add_argument("--token", default=None, help="token to require (CONTROL_PLANE_TOKEN)")
        p.add_argument("--no-auth", action="store_true", help="development only, loopback only")
        p.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN")
        p.add_argument(
            "--allowed-host",
            action="append",
            default=[],
            metavar="NAME",
            help="a Host name clients use beside loopback and the bound address (a DNS name, "
            "a load balancer's); others are refused, against DNS rebinding",
        )
        p.add_argument(
            "--job-type",
            action="append",
            default=[],
            metavar="MODULE:FUNCTION",
            help="a job type the dashboard's submit form offers, beside the examples",
        )
        p.add_argument(
            "--pool-size",
            type=int,
            default=None,
            metavar="N",
            help="job actors kept started ahead of their jobs, so that a submit starts at "
            "once; 0 turns the pool off (default: 2)",
        )
        p.add_argument("--metrics-interval", type=float, default=5.0, metavar="SECONDS")
        # Also after the subcommand (``serve --log-format json``); the global one is the default.
        p.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS)
        p.add_argument(
            "--no-metrics",
            action="store_true",
            help="record no control_plane_* metrics in Ray's metrics system",
        )
        p.add_argument("--stall-after", type=float, default=300.0, metavar="SECONDS")
        p.add_argument(
            "--replicas",
            default="1",
            metavar="N|per-node",
            help="gateway replicas, one per node (per-node: one on each node)",
        )
        p.add_argument(
            "--port-span",
            type=int,
            default=1,
            metavar="N",
            help="each replica listens on the first free port of PORT..PORT+N-1 on its node",
        )
        p.add_argument(
            "--state-dir",
            default=None,
            metavar="PATH",
            help="event log and job registry, on the head node (default: in Ray's session "
            "directory; CONTROL_PLANE_STATE_DIR)",
        )
        p.add_argument(
            "--history-age",
            type=float,
            default=None,
            metavar="SECONDS",
            help="the event log keeps no event older than this (default: kept by count only)",
        )
        p.add_argument(
            "--history-bytes",
            type=int,
            default=None,
            metavar="BYTES",
            help="the event log keeps at most this many bytes of events in memory, the oldest "
            "dropped first (default: 256 MiB)",
        )
        p.add_argument(
            "--hub-shards",
            type=int,
            default=None,
            metavar="N",
            help="N EventHub actors share the events, placed by channel (default: 1; "
            "CONTROL_PLANE_HUB_SHARDS)",
        )
        p.add_argument(
            "--max-event-bytes",
            type=int,
            default=None,
            metavar="BYTES",
            help="the hub refuses an event larger than this (default: 1,000,000)",
        )
        p.add_argument(
            "--socket-option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a socket limit or setting (SocketConfig: max_connections, "
            "max_connections_per_principal, max_subscriptions, max_subscribes_in_flight, "
            "requests_per_second, request_burst, max_depth, max_frame_bytes, "
            "handshake_timeout, subscribe_deadline...); see README 'Limits'",
        )
        if name == "demo":
            p.add_argument(
                "--rounds", type=int, default=0, help="rounds of example jobs (0: until stopped)"
            )
            p.add_argument("--every", type=float, default=20.0, help="seconds between rounds")

    def attach(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS/auto)")

    p = sub.add_parser("submit", help="submit a job: module:function")
    p.add_argument("target")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default=None)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="job options: pause_timeout, cancel_grace, num_cpus, max_restarts",
    )
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    attach(p)
    for name in ("status", "pause", "resume", "suspend", "cancel"):
        p = sub.add_parser(name, help=f"{name} a job")
        p.add_argument("job_id")
        attach(p)
    p = sub.add_parser("list", help="list jobs")
    p.add_argument("--state", action="append", default=[])
    attach(p)
    p = sub.add_parser("watch", help="show a job's live progress")
    p.add_argument("job_id")
    p.add_argument(
        "--url",
        default=os.environ.get("CONTROL_PLANE_URL"),
        help="the gateway's ws://host:port/ws (default: CONTROL_PLANE_URL, else one that the "
        "cluster's gateway replicas announce)",
    )
    p.add_argument("--token", default=None, help="CONTROL_PLANE_TOKEN, else the kept one")
    attach(p)
    p = sub.add_parser("token", help="signed tokens for principals")
    tokens = p.add_subparsers(dest="token_command", required=True)
    p = tokens.add_parser("create", help="print a signed token for a principal")
    p.add_argument("--sub", required=True, help="who it is for (jobs they submit are theirs)")
    p.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    p.add_argument("--ttl", default="8h", help="lifetime: 30m, 8h, 7d (at most 366d)")
    p.add_argument(
        "--see",
        action="append",
        default=[],
        metavar="OWNER",
        help="also see the jobs of OWNER ('*': every owner's); repeatable",
    )
    p.add_argument(
        "--token", default=None, help="the shared token it is signed with (CONTROL_PLANE_TOKEN)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from control_plane.observability import logs

    logs.configure(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    if getattr(args, "no_metrics", False):
        os.environ["CONTROL_PLANE_METRICS"] = "0"  # here, and passed on to the actors
    try:
        if args.command in ("serve", "demo"):
            from control_plane import service

            if not service.supervised():
                return service.supervise(argv)
            service.die_with_parent()
            return _serve(args)
        if args.command == "watch":
            return asyncio.run(_watch(args))
        if args.command == "token":
            return _token_create(args)
        return _job_command(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from control_plane.core.errors import ControlPlaneError

        if isinstance(e, ControlPlaneError):
            print(f"error: {e.message}", file=sys.stderr)
            return 1
        if isinstance(e, OSError):  # the gateway's port is taken, and the like
            print(f"error: {e.strerror or e}", file=sys.stderr)
            return 1
        raise


def _token_create(args: argparse.Namespace) -> int:
    """Sign a token with the key derived from the shared token: no server call."""
    from control_plane.core.tokens import Credentials, parse_ttl
    from control_plane.gateway import auth

    shared = auth.find_token(args.token)
    if shared is None:
        print(
            "error: no shared token to sign with: pass --token, set CONTROL_PLANE_TOKEN, or run "
            "`control-plane serve` once on this machine",
            file=sys.stderr,
        )
        return 1
    try:
        token = Credentials.from_token(shared).sign(
            args.sub, args.role, parse_ttl(args.ttl), args.see
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import ray

    import control_plane
    from control_plane.core.system import SystemConfig
    from control_plane.gateway.session import SocketConfig

    info = control_plane.start(
        host=args.host,
        port=args.port,
        address=args.address,
        token=args.token,
        no_auth=args.no_auth,
        allowed_origins=args.allowed_origin,
        allowed_hosts=args.allowed_host,
        system=SystemConfig(metrics_interval=args.metrics_interval, stall_after=args.stall_after),
        num_replicas=args.replicas,
        port_span=args.port_span,
        state_dir=args.state_dir,
        history_age=args.history_age,
        socket=SocketConfig(**_kv(args.socket_option)) if args.socket_option else None,
        job_types=args.job_type,
        **{
            name: value
            for name, value in (
                ("history_bytes", args.history_bytes),
                ("max_event_bytes", args.max_event_bytes),
                ("pool_size", args.pool_size),
                ("hub_shards", args.hub_shards or _env_shards()),
            )
            if value is not None
        },
    )
    stop = threading.Event()
    # ray.init installs its own SIGTERM handler; ours goes in after it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"Dashboard: {info.url}", flush=True)
    print(f"WebSocket: {info.ws_url}  (Authorization: Bearer <token>)", flush=True)
    print("control plane ready", flush=True)
    demo: threading.Thread | None = None
    if args.command == "demo":
        demo = threading.Thread(
            target=_demo_rounds, args=(args.rounds, args.every, stop), daemon=True
        )
        demo.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        from control_plane import service

        print("stopping", flush=True)
        # A Ray this process started goes with everything on it; on a cluster, only the
        # control plane's parts are stopped.
        started_ray = info.started_ray
        clean = service.stop_within(ray.shutdown if started_ray else control_plane.stop)
        print("stopped" if clean else "stopped (Ray's processes killed)", flush=True)
        service.exit_now(0)  # nothing is left to clean up: don't wait on Ray's exit hooks
    return 0


def _demo_rounds(rounds: int, every: float, stop: threading.Event) -> None:
    import control_plane

    n = 0
    while not stop.is_set() and (rounds == 0 or n < rounds):
        n += 1
        try:
            jobs = [
                control_plane.submit(
                    "jobs.examples:countdown", steps=40, delay=0.25, job_name=f"countdown #{n}"
                ),
                control_plane.submit(
                    "jobs.examples:agents_pipeline", job_name=f"agents pipeline #{n}"
                ),
                control_plane.submit(
                    "jobs.examples:fail", after=5, delay=0.4, job_name=f"fail #{n}"
                ),
            ]
            logger.info("demo round %d: jobs %s", n, ", ".join(j.job_id for j in jobs))
        except Exception:
            if stop.is_set():
                return
            logger.exception("demo round %d failed", n)
        stop.wait(every)


def _connect(address: str | None) -> None:
    import ray

    from control_plane.actors import runtime

    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or "auto"
        ray.init(address=target, logging_level=logging.WARNING, namespace=runtime.NAMESPACE)


def _print_status(status: Any) -> None:
    print(json.dumps(status.model_dump(mode="json"), indent=2))


def _job_command(args: argparse.Namespace) -> int:
    import ray

    import control_plane

    _connect(args.address)
    if args.command == "submit":
        job = control_plane.submit(
            args.target,
            job_name=args.name,
            job_options=_kv(args.option) or None,
            **_kv(args.arg),
        )
        print(job.job_id, flush=True)
        if args.wait:
            print(json.dumps(ray.get(job.result), default=str))
        return 0
    if args.command == "list":
        from rich.console import Console
        from rich.table import Table

        table = Table("job", "name", "state", "progress", "owner", "updated")
        for s in control_plane.list_jobs(args.state or None):
            table.add_row(
                s.job_id, s.name, s.state.value, f"{s.progress:.0f}%", s.owner, s.updated_at
            )
        Console().print(table)
        return 0
    handle = control_plane.JobHandle(args.job_id, None)
    method = {
        "status": handle.status,
        "pause": handle.pause,
        "resume": handle.resume,
        "cancel": handle.cancel,
        "suspend": handle.suspend,
    }[args.command]
    _print_status(method())
    return 0


def _find_gateway(address: str | None) -> str:
    """The ws:// URL of a gateway replica that the cluster's replicas announced and that
    answers, nearest first."""
    import urllib.request

    import ray

    from control_plane.actors import gateway_directory

    _connect(address)
    announced = gateway_directory.listed()
    candidates = gateway_directory.nearest_first(announced, ray.util.get_node_ip_address())
    for gateway in candidates:
        try:
            with urllib.request.urlopen(f"{gateway.base_url()}/healthz", timeout=3):
                return gateway.base_url().replace("http", "ws", 1) + "/ws"
        except OSError:
            continue
    found = ", ".join(g.base_url() for g in announced) or "none"
    raise SystemExit(f"error: no gateway of this cluster answers (announced: {found}); use --url")


async def _watch(args: argparse.Namespace) -> int:
    import websockets
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from control_plane.core.protocol import TERMINAL_EVENT_TYPES
    from control_plane.gateway import auth

    token = auth.find_token(args.token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = args.url or await asyncio.to_thread(_find_gateway, args.address)
    with Progress(
        TextColumn("[bold]{task.fields[job]}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[state]}"),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
    ) as progress:
        bar = progress.add_task("job", total=100, job=args.job_id, state="…", note="")
        async with websockets.connect(url, additional_headers=headers) as ws:
            await ws.send(
                json.dumps({"type": "subscribe", "channels": [f"job:{args.job_id}"], "since": 0})
            )
            async for raw in ws:
                msg = json.loads(raw)
                kind, data = msg.get("type", ""), msg.get("data", {})
                if kind == "error":
                    progress.stop()
                    print(f"error: {data.get('message')}", file=sys.stderr)
                    return 1
                if kind == "job.progress":
                    progress.update(
                        bar, completed=data.get("progress", 0), note=data.get("message") or ""
                    )
                elif kind.startswith("agent."):
                    note = data.get("output") or f"{data.get('agent_id')} {kind.split('.')[1]}"
                    progress.update(bar, note=str(note)[:60])
                if "status" in data:
                    progress.update(bar, state=data["status"])
                if kind == "job.completed":
                    progress.update(bar, completed=100)
                if kind in TERMINAL_EVENT_TYPES:
                    progress.stop()
                    outcome = data.get("result") if kind == "job.completed" else data.get("error")
                    print(f"{kind.split('.')[1]}: {json.dumps(outcome, default=str)}")
                    return 0 if kind == "job.completed" else 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
