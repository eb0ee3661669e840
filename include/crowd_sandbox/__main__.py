"""Start the crowd sandbox: ``python -m include.crowd_sandbox --port 8911 --state PATH``.

It binds 127.0.0.1 unless told otherwise, prints its endpoint URL on the first line of
standard output, and stops cleanly on SIGTERM or SIGINT (the state file stays consistent).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from include.crowd_sandbox.core import DEFAULT_BALANCE
from include.crowd_sandbox.faults import FaultConfig


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m include.crowd_sandbox",
        description="A local, MTurk-compatible crowd: requester API, worker page, simulated "
        "workers.",
    )
    parser.add_argument("--port", type=int, default=8911, help="0 picks a free port")
    parser.add_argument("--state", required=True, help="SQLite file that holds all state")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--workers",
        help='simulated workers: counts, e.g. "diligent:6,careless:3,spammer:1", or a total and '
        "shares (largest-remainder rounding), e.g. "
        '"20:diligent=0.7,careless=0.1,spammer=0.1,strategic=0.1"; profiles: diligent, '
        "careless, spammer, strategic (none by default)",
    )
    parser.add_argument(
        "--seconds-per-assignment",
        type=float,
        default=2.0,
        help="how long a simulated worker spends on one assignment",
    )
    parser.add_argument("--worker-seed", type=int, help="seed for the simulated workers")
    parser.add_argument("--balance", default=DEFAULT_BALANCE, help="starting balance in USD")
    parser.add_argument("--throttle-rate", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--slow-rate", type=float, default=0.0)
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    parser.add_argument("--fault-seed", type=int)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from include.crowd_sandbox.server import CrowdSandbox

    try:
        faults = FaultConfig(
            throttle_rate=args.throttle_rate,
            error_rate=args.error_rate,
            slow_rate=args.slow_rate,
            slow_seconds=args.slow_seconds,
            seed=args.fault_seed,
        )
        service = CrowdSandbox(
            args.state,
            host=args.host,
            port=args.port,
            balance=args.balance,
            faults=faults,
            workers=args.workers,
            seconds_per_assignment=args.seconds_per_assignment,
            worker_seed=args.worker_seed,
        )
    except (OSError, ValueError, RuntimeError) as error:
        print(f"crowd sandbox: {error}", file=sys.stderr)
        return 2

    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            logging.getLogger(__name__).info("signal %d: stopping", signum)
            # shutdown() waits for serve_forever to return, so call it from another thread.
            threading.Thread(target=service.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(service.url, flush=True)
    try:
        service.serve_forever()
    finally:
        service.stop_after_serving()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
