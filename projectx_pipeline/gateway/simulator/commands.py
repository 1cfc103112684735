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
    parser.add_argument(
        "--symbols",
        nargs="+",
        metavar="ROOT",
        help="list these equity-index roots (MES, MNQ, ...): each one's quarterly months around the clock's start, expired ones"
        " included, trading one synthetic market per root with rolls and expiries",
    )
    parser.add_argument(
        "--expired-history",
        metavar="all|hourly",
        help="with --symbols: 'hourly' answers an expired month's seconds and minutes history with no bars, as the real gateway"
        " is reported to (default 'all': every unit)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the trade generator (default 0)")
    parser.add_argument("--username", help="accept only this userName at login (default: any)")
    parser.add_argument("--api-key", help="accept only this apiKey at login (default: any)")
    parser.add_argument("--no-rate-limit", action="store_true", help="disable the gateway's rate limits")
    parser.add_argument(
        "--start",
        metavar="WHEN",
        help="where the clock starts: for a replay an ISO time inside it (with its offset), '+<N>d'/'+<N>h' after its first bar,"
        " or 'end'; history serves everything before it (default: the first bar). For --synthetic and --symbols an ISO time"
        " (default now)",
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
    from .listings import check_listable
    from .rest import EXPIRED_HISTORY_ALL, check_expired_history
    from .server import SimulatorServer

    configure_logging()  # its event lines (listening, control actions, hub clients) on stderr, like the daemon's

    try:
        speed = parse_speed(args.speed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    chosen = [flag for flag, value in (("--replay", args.replay), ("--synthetic", args.synthetic), ("--symbols", args.symbols)) if value]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} are exclusive: choose one market source")
    if args.replay and not Path(args.replay).is_file():
        raise UsageError(f"--replay {args.replay}: no such file")
    synthetic_clock = bool(args.synthetic or args.symbols)
    if args.shift_to_now and synthetic_clock:
        raise UsageError("--shift-to-now moves a replay: the synthetic market starts now already")
    expired_history = EXPIRED_HISTORY_ALL
    if args.expired_history is not None:
        if not args.symbols:
            raise UsageError("--expired-history needs --symbols: replay and synthetic contracts never expire")
        try:
            expired_history = check_expired_history(args.expired_history)
        except ValueError:
            raise UsageError(f"--expired-history {args.expired_history}: expected all or hourly") from None
    for symbol in args.symbols or []:
        try:
            check_listable(symbol)
        except ValueError as exc:
            raise UsageError(f"--symbols: {exc}") from None
    start = args.start
    if start is not None and synthetic_clock:
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
            symbols=args.symbols,
            expired_history=expired_history,
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
        if simulator.mode == "listing":
            for listed in simulator.listed_contracts():
                print(f"listed {listed['id']} expires {listed['expiry']}" + ("" if listed["active"] else " (expired)"), flush=True)
        if simulator.weeks_shifted:
            print(f"replay shifted {simulator.weeks_shifted} weeks to now: clock {simulator.clock().isoformat()}", flush=True)
        while not stop.wait(0.5):  # a bounded wait keeps the main thread responsive to signals
            pass
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
