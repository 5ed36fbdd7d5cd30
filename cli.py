"""Command line for a running server: place outbound calls, read a call's progress.

Usage::

    python -m cli call +15551234567 --preset survey
    python -m cli call +15551234567 --prompt "Confirm Ana's table for four at 8 pm" \\
        --context name=Ana --context party=4 --wait
    python -m cli status CA0123...

``call`` POSTs ``/twilio/outbound-call`` (the server places the call through Twilio's
REST API and handles its callbacks and media stream, so it must be running and
reachable by Twilio); ``status`` reads ``GET /api/calls/{sid}``. The server is
``--server`` (default ``http://127.0.0.1:$PORT``) and the key ``--api-key`` (default
``$API_KEY``); both are also read from ``.env``.

Exit status: 0 on success, 1 when the server refused or failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx

__all__ = ["main"]

#: Call statuses after which ``--wait`` stops.
_FINAL = {"completed", "busy", "no-answer", "failed", "canceled", "refused"}


def _load_dotenv() -> None:
    try:
        from dotenv import load_dotenv
    except ImportError:  # python-dotenv is a dependency; be lenient anyway
        return
    load_dotenv(Path.cwd() / ".env", override=False)


def _context(pairs: list[str]) -> dict[str, str]:
    context = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"--context takes key=value, got {pair!r}")
        context[key.strip()] = value
    return context


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.server.rstrip("/"), headers=headers, timeout=30.0)


def _explain(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail)
    return f"HTTP {response.status_code}: {detail}"


def _call(args: argparse.Namespace) -> int:
    body: dict = {"to": args.to, "task": {"prompt": args.prompt or "", "context": _context(args.context)}}
    if args.preset:
        body["preset"] = args.preset
    if args.voicemail:
        body["voicemail_message"] = args.voicemail
    if args.from_number:
        body["from"] = args.from_number
    with _client(args) as client:
        response = client.post("/twilio/outbound-call", json=body)
        if response.status_code != 201:
            print(f"call not placed: {_explain(response)}", file=sys.stderr)
            return 1
        call = response.json()
        print(f"{call['call_sid']} queued: calling {call['to']} from {call['from']}"
              + (f" ({call['preset']})" if call.get("preset") else ""))
        if not args.wait:
            return 0
        seen = 0
        deadline = time.monotonic() + args.wait_timeout
        while time.monotonic() < deadline:
            record = client.get(f"/api/calls/{call['call_sid']}").json()
            history = record.get("status_history") or []
            for event in history[seen:]:
                print(f"  {event['at']}  {event['status']}")
            seen = len(history)
            if record.get("status") in _FINAL:
                if record.get("answered_by"):
                    print(f"answered by {record['answered_by']}")
                return 0
            time.sleep(1.0)
        print("still not finished; see: python -m cli status " + call["call_sid"], file=sys.stderr)
        return 1


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.get(f"/api/calls/{args.call_sid}")
    if response.status_code != 200:
        print(f"no status: {_explain(response)}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    _load_dotenv()
    parser = argparse.ArgumentParser(prog="python -m cli", description=__doc__.split("\n")[0])
    parser.add_argument("--server", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}",
                        help="the server's base URL (default http://127.0.0.1:$PORT)")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY") or None,
                        help="the server's API_KEY (default $API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)

    call = commands.add_parser("call", help="place an outbound call")
    call.add_argument("to", help="number to call, E.164 (+15551234567)")
    call.add_argument("--preset", choices=["transit_booking", "appointment_reminder", "survey"])
    call.add_argument("--prompt", help="what the agent is to do on the call")
    call.add_argument("--context", action="append", default=[], metavar="KEY=VALUE",
                      help="a fact for the call (repeatable), e.g. name=Ana")
    call.add_argument("--voicemail", help="message to leave on an answering machine")
    call.add_argument("--from", dest="from_number", help="caller ID (default TWILIO_FROM_NUMBER)")
    call.add_argument("--wait", action="store_true", help="print the call's progress until it ends")
    call.add_argument("--wait-timeout", type=float, default=600.0, help="seconds (with --wait)")
    call.set_defaults(run=_call)

    status = commands.add_parser("status", help="print a call's record and progress")
    status.add_argument("call_sid")
    status.set_defaults(run=_status)

    args = parser.parse_args(argv)
    if args.command == "call" and not (args.preset or args.prompt):
        parser.error("call needs --preset, --prompt, or both")
    try:
        return args.run(args)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    except httpx.HTTPError as e:
        print(f"cannot reach the server at {args.server}: {e}", file=sys.stderr)
        return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
