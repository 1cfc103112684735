"""`projectx simulate`: run the local ProjectX Gateway simulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from projectx_pipeline.domain.contracts import ContractId
from projectx_pipeline.domain.errors import DomainError
from projectx_pipeline.domain.timestamps import parse_iso_time
from projectx_pipeline.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5080, help="port for REST, the hub and /control (default 5080; 0 = any)")
    parser.add_argument("--replay", metavar="PATH", help="bar CSV to replay (default: the MES 5m sample)")
    parser.add_argument("--speed", default="1", help="replay speed: a multiple of real time, or 'max' (default 1)")
    parser.add_argument(
        "--synthetic", nargs="+", metavar="CONTRACT", help="serve a seeded synthetic market for these contract ids instead of a replay"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the trade generator (default 0)")
    parser.add_argument("--username", help="accept only this userName at login (default: any)")
    parser.add_argument("--api-key", help="accept only this apiKey at login (default: any)")
    parser.add_argument("--no-rate-limit", action="store_true", help="disable the gateway's rate limits")
    parser.add_argument(
        "--start",
        metavar="WHEN",
        help="where the clock starts: for a replay an ISO time inside it (with its offset), '+<N>d'/'+<N>h' after its first bar,"
        " or 'end'; history serves everything before it (default: the first bar). For --synthetic an ISO time (default now)",
    )
    parser.add_argument(
        "--shift-to-now",
        action="store_true",
        help="replay the sample moved by whole weeks (New York time: weekdays and session hours kept) so that the clock starts now,"
        " --start lying less than a week before: clients asking for the last N days get bars",
    )
    parser.add_argument("--wait-for-subscriber", action="store_true", help="hold the clock at the start until the first trade subscription")


def run(args: argparse.Namespace) -> int:
    from projectx_pipeline.logs import configure_logging

    from .clock import parse_speed
    from .server import SimulatorServer

    configure_logging()  # its event lines (listening, control actions, hub clients) on stderr, like the daemon's

    try:
        speed = parse_speed(args.speed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.replay and args.synthetic:
        raise UsageError("--replay and --synthetic are exclusive: choose one market source")
    if args.replay and not Path(args.replay).is_file():
        raise UsageError(f"--replay {args.replay}: no such file")
    if args.shift_to_now and args.synthetic:
        raise UsageError("--shift-to-now moves a replay: the synthetic market starts now already")
    start = args.start
    if start is not None and args.synthetic:
        try:
            start = parse_iso_time(start, "--start")
        except DomainError as exc:
            raise UsageError(str(exc)) from None
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected 0..65535")
    try:
        for contract_id in args.synthetic or []:
            ContractId(contract_id)
        simulator = SimulatorServer(
            host=args.host,
            port=args.port,
            replay=args.replay,
            speed=speed,
            synthetic=args.synthetic,
            seed=args.seed,
            username=args.username,
            api_key=args.api_key,
            rate_limits=not args.no_rate_limit,
            wait_for_subscriber=args.wait_for_subscriber,
            start_time=start,
            shift_to_now=args.shift_to_now,
        )
    except (DomainError, ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    try:
        simulator.start()
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"PROJECTX_API_URL={simulator.api_url} PROJECTX_RTC_URL={simulator.rtc_url}", flush=True)
        print(f"control: {simulator.control_url}", flush=True)
        if simulator.weeks_shifted:
            print(f"replay shifted {simulator.weeks_shifted} weeks to now: clock {simulator.clock().isoformat()}", flush=True)
        while not stop.wait(0.5):  # a bounded wait keeps the main thread responsive to signals
            pass
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
