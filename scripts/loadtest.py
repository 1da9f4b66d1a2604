"""Load test a Socket.IO deployment with clients that keep cookies, like browsers do.

    scripts/loadtest --url http://127.0.0.1:8080 --clients 200 --duration 30 --scenario echo --transport websocket

Every simulated client is a python-socketio client with its own HTTP session (cookie jar): it keeps every
cookie the load balancer or the app sets (HAProxy's prefixed `io`, AWS ALB's `AWSALB`/`AWSALBCORS`, ...)
and sends them on every long-polling request and on the WebSocket upgrade, so it works behind sticky load
balancers. `--drop-cookies` makes clients that keep none (the control: they fail behind cookie stickiness).

Scenarios (the stack's probe events, deployment/operations/probes.py):
  connect    clients connect over --ramp-up seconds and stay until --duration; latency = connect time
  echo       each client sends `echo` with an ack in a loop, one in flight, at most --rate per second
             (0: as fast as acks come back); latency = ack round trip
  broadcast  --senders clients emit `broadcast` at --rate per second each once every client is up;
             every client measures the delivery latency; delivered is compared with expected

Progress goes to stderr once a second; a JSON summary goes to stdout at the end. The exit status is 1 when
a client failed to connect or any error happened (0 with --allow-errors), 2 for bad arguments.
Clients run as gevent greenlets in this one process, and latencies include its own scheduling: when the
summary's loadtest_cpu_percent nears 100 (one core), this process set the pace; split the clients over
several processes or machines.
"""

if __name__ == "__main__":  # patch before anything imports socket, ssl or threading (not when imported by tests)
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import http.cookiejar  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections import Counter  # noqa: E402

import engineio  # noqa: E402
import gevent  # noqa: E402
import gevent.event  # noqa: E402
import requests  # noqa: E402
import socketio  # noqa: E402

MAX_CLIENTS = 5000
MAX_DURATION = 24 * 3600
FDS_PER_CLIENT = 3  # a long-poll GET and a POST in flight, or the WebSocket plus an idle pooled connection
SCENARIOS = ("connect", "echo", "broadcast")
# echo: the template's per-connection limit is EVENT_RATE=50 packets/s (deployment/operations/limits.py); stay under it
DEFAULT_RATE = {"echo": 10.0, "broadcast": 1.0}
TRANSPORTS = {"polling": ["polling"], "websocket": ["polling", "websocket"]}


# --- measurements ---------------------------------------------------------------------------------------
class Histogram:
    """Latencies (ms) in logarithmic buckets 1% wide: percentiles within 1%, memory bounded at any rate."""

    FLOOR = 0.001  # ms
    STEP = math.log(1.01)

    def __init__(self):
        self.buckets = Counter()
        self.count = 0
        self.max = 0.0

    def add(self, ms):
        self.count += 1
        self.max = max(self.max, ms)
        index = 0 if ms <= self.FLOOR else int(math.log(ms / self.FLOOR) / self.STEP) + 1
        self.buckets[index] += 1

    def percentile(self, p):
        """The upper edge of the bucket holding the p-th percentile (never above the true maximum)."""
        if not self.count:
            return None
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(self.max, self.FLOOR * math.exp(index * self.STEP))
        return self.max

    def summary(self):
        def rounded(value):
            return None if value is None else round(value, 2)

        return {
            "p50": rounded(self.percentile(50)),
            "p99": rounded(self.percentile(99)),
            "max": rounded(self.max if self.count else None),
            "count": self.count,
        }


ID_LIKE = re.compile(r"[A-Za-z0-9_-]{16,}")


# The template's HAProxy names the per-address limit in each 429 it answers (haproxy/haproxy.cfg)
PER_ADDRESS_LIMITS = {
    "too many new sessions": "HAPROXY_PER_IP_SESSION_RATE (new Socket.IO sessions per 10 s)",
    "too many open connections": "HAPROXY_PER_IP_CONN_CUR (open connections)",
    "too many new connections": "HAPROXY_PER_IP_CONN_RATE (new TCP connections per 10 s)",
}


def limit_notes(errors):
    """What the summary says when clients got 429: which per-address limit, and why a load test meets it."""
    refused = [kind for kind in errors if kind.startswith("http 429")]
    notes = [
        f"HTTP 429 from the template HAProxy's per-address limit {setting}: every client of this run comes from "
        "one address, which honest traffic from one address does not do at this size; for the test, raise it "
        "on the stack under test (e.g. " + setting.split()[0] + "=1000000 scripts/stack up), connect more slowly "
        "(--ramp-up), or split the clients over several machines"
        for phrase, setting in PER_ADDRESS_LIMITS.items()
        if any(phrase in kind for kind in refused)
    ]
    if refused and not notes:
        notes.append("HTTP 429: the deployment refused requests for their rate; every client here has one address")
    return notes


def error_kind(text, limit=80):
    """A short, countable error kind: Engine.IO sids and other long ids replaced by <id>."""
    text = re.sub(r"<[^>]*>", " ", str(text).replace('"', ""))  # HTML error pages: their text only
    text = ID_LIKE.sub("<id>", " ".join(text.split()))
    return text[:limit]


class Run:
    """Everything measured during one run; greenlets share it without locks (gevent switches only on I/O)."""

    def __init__(self, args):
        self.args = args
        self.id = uuid.uuid4().hex
        self.errors = Counter()
        self.instances = Counter()
        self.transports = Counter()
        self.cookies_seen = set()
        self.cookies_kept = set()
        self.connect_latency = Histogram()
        self.latency = Histogram()
        self.window = Histogram()  # the last progress interval
        self.connected = 0
        self.failed = 0
        self.live = 0  # connected and not disconnected since
        self.messages = 0
        self.sent = 0
        self.expected = 0
        self.not_started = 0
        self.interrupted = False
        self.closed = False  # set once the measured phase is over: teardown errors are not counted
        self.stop = gevent.event.Event()  # --duration reached or Ctrl-C
        self.all_started = gevent.event.Event()  # every client has tried to connect

    def error(self, kind):
        if not self.closed:
            self.errors[error_kind(kind)] += 1

    def record(self, ms):
        self.messages += 1
        self.latency.add(ms)
        self.window.add(ms)


# --- clients --------------------------------------------------------------------------------------------
class RecordingSession(requests.Session):
    """One client's HTTP session: its cookie jar is the client's, and every HTTP error is counted."""

    def __init__(self, run, keep_cookies=True):
        super().__init__()
        self.run = run
        if not keep_cookies:
            # a policy that accepts no domain: Set-Cookie is read (and reported) but never stored
            self.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))

    def request(self, method, url, *args, **kwargs):
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException as exc:
            self.run.error(f"http {method} {type(exc).__name__}")
            raise
        self.run.cookies_seen.update(response.cookies.keys())
        if response.status_code >= 400:
            self.run.error(f"http {response.status_code} {method}: {response.text}")
        return response


def cookie_header(session, url):
    """The Cookie header `session` sends to `url` (ws:// and wss:// are matched as http:// and https://)."""
    http_url = re.sub(r"^ws", "http", url)
    return session.prepare_request(requests.Request("GET", http_url)).headers.get("Cookie")


class CookieKeepingEngineIOClient(engineio.Client):
    """python-engineio builds the WebSocket upgrade's Cookie header with http.cookies.SimpleCookie, which wraps
    values holding characters such as / or = in double quotes. AWS ALB's AWSALB values are base64 with / and
    =, so the load balancer would see another value than the one it set. Send the cookies exactly as the
    session sends them on long-polling requests (and as browsers do)."""

    def _connect_websocket(self, url, headers, engineio_path):
        if self.http is not None:
            ws_url = self._get_engineio_url(url, engineio_path, "websocket")
            # websocket_extra_options is applied after python-engineio's own cookie option
            self.websocket_extra_options["cookie"] = cookie_header(self.http, ws_url)
        return super()._connect_websocket(url, headers, engineio_path)


class LoadTestSocketIOClient(socketio.Client):
    def _engineio_client_class(self):
        return CookieKeepingEngineIOClient


class SimClient:
    def __init__(self, run, index):
        self.run = run
        self.index = index
        args = run.args
        self.http = RecordingSession(run, keep_cookies=not args.drop_cookies)
        if args.insecure:
            self.http.verify = False
        self.sio = LoadTestSocketIOClient(
            reconnection=False,  # a dropped client is an error to report, not something to hide
            http_session=self.http,
            request_timeout=args.timeout,
            ssl_verify=not args.insecure,
            handle_sigint=False,
        )
        self.sio.on("disconnect", self.on_disconnect)
        self.sio.on("broadcast", self.on_broadcast)
        self.sio.on("error", self.on_server_error)
        self.state = "waiting"  # then connecting, and up or failed
        self.up = False
        self.up_since = None  # perf_counter() when the connect completed
        self.closing = False

    # events
    def on_disconnect(self, reason=None):
        if self.up and not self.closing:
            self.up = False
            self.run.live -= 1
            self.run.error(f"disconnected: {reason or 'unknown reason'}")

    def on_server_error(self, data=None):
        # the template's `error` event (deployment/operations/limits.py: rate limit, malformed packet)
        text = data.get("error", data) if isinstance(data, dict) else data
        self.run.error(f"server error event: {text}")

    def on_broadcast(self, data=None, *_offset):  # CONNECTION_STATE_RECOVERY appends an offset argument
        # only messages sent while this client counted as connected are expected, so only those are counted
        if isinstance(data, dict) and data.get("run") == self.run.id and not self.run.closed:
            if self.up_since is not None and data["t"] >= self.up_since:
                self.run.record((time.perf_counter() - data["t"]) * 1000)

    # phases
    def connect(self):
        args, run = self.run.args, self.run
        started = time.perf_counter()
        self.state = "connecting"
        try:
            self.sio.connect(
                args.url, transports=TRANSPORTS[args.transport], socketio_path=args.path, wait_timeout=args.timeout
            )
        except Exception as exc:  # socketio.exceptions.ConnectionError mostly; never let one client stop the run
            self.state = "failed"
            run.failed += 1
            reason = exc.args[0] if getattr(exc, "args", None) else type(exc).__name__
            run.error(f"connect failed: {reason}")
            return False
        self.state = "up"
        ms = (time.perf_counter() - started) * 1000
        run.connect_latency.add(ms)
        if args.scenario == "connect":  # the scenario's latency, but not a message
            run.latency.add(ms)
            run.window.add(ms)
        self.up = True
        self.up_since = time.perf_counter()
        run.connected += 1
        run.live += 1
        transport = self.sio.transport()
        run.transports[transport] += 1
        if args.transport == "websocket" and transport != "websocket":
            run.error("websocket upgrade failed: stayed on polling")
        try:
            instance = self.sio.call("whoami", timeout=args.timeout)
            run.instances[str(instance)] += 1
        except socketio.exceptions.TimeoutError:
            run.error("whoami: no ack within --timeout")
        except Exception as exc:
            run.error(f"whoami: {type(exc).__name__}")
        return True

    def echo_loop(self):
        args, run = self.run.args, self.run
        pad = "x" * args.message_size
        period = 1.0 / args.rate if args.rate else 0.0
        next_at = time.monotonic()
        sequence = 0
        while self.up and not run.stop.is_set():
            payload = {"client": self.index, "n": sequence, "pad": pad}
            sequence += 1
            started = time.perf_counter()
            try:
                reply = self.sio.call("echo", payload, timeout=args.timeout)
            except socketio.exceptions.TimeoutError:
                run.error("echo: no ack within --timeout")
                continue
            except socketio.exceptions.BadNamespaceError:
                break  # disconnected: counted by on_disconnect
            if isinstance(reply, dict) and "error" in reply:  # e.g. the app's per-connection rate limit
                run.error(f"echo: {reply['error']}")
            elif reply != payload:
                run.error("echo: reply differs from the message")
            elif not run.closed:
                run.record((time.perf_counter() - started) * 1000)
            if period:  # paced; a late ack is not made up for with a burst
                next_at = max(next_at + period, time.monotonic())
                run.stop.wait(next_at - time.monotonic())

    def broadcast_loop(self):
        args, run = self.run.args, self.run
        run.all_started.wait()
        period = 1.0 / args.rate
        next_at = time.monotonic()
        sequence = 0
        while self.up and not run.stop.is_set():
            payload = {"run": run.id, "sender": self.index, "n": sequence, "t": time.perf_counter()}
            sequence += 1
            expected = run.live  # the server broadcasts to every connected client, the sender included
            try:
                self.sio.emit("broadcast", payload)
            except socketio.exceptions.BadNamespaceError:
                break
            run.sent += 1
            run.expected += expected
            next_at += period
            run.stop.wait(max(0.0, next_at - time.monotonic()))

    def main(self):
        if not self.connect():
            return
        scenario = self.run.args.scenario
        if scenario == "echo":
            self.echo_loop()
        elif scenario == "broadcast" and self.index < self.run.args.senders:
            self.broadcast_loop()

    def close(self):
        self.closing = True
        self.run.cookies_kept.update(cookie.name for cookie in self.http.cookies)
        try:
            if self.sio.connected:
                self.sio.disconnect()
        except Exception:
            pass


# --- the run --------------------------------------------------------------------------------------------
class Progress:
    def __init__(self, run, stream=sys.stderr):
        self.run = run
        self.stream = stream
        self.tty = stream.isatty()
        self.last_messages = 0

    def line(self, elapsed):
        run, args = self.run, self.run.args
        rate = run.messages - self.last_messages
        self.last_messages = run.messages
        window = run.window
        run.window = Histogram()
        p50, p99 = window.percentile(50), window.percentile(99)
        latency = f"p50 {p50:.1f}ms p99 {p99:.1f}ms" if window.count else "p50 - p99 -"
        return (
            f"loadtest {elapsed:5.0f}s/{args.duration:g}s  clients {run.live} up/{args.clients}, "
            f"{run.failed} failed  msgs {run.messages} ({rate}/s)  {latency}  errors {sum(run.errors.values())}"
        )

    def show(self, elapsed):
        text = self.line(elapsed)
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(
            f"loadtest: {needed} file descriptors needed, `ulimit -n` allows {soft}: "
            f"raise it (ulimit -n {needed}) or use fewer --clients"
        )


def run_load(args):
    run = Run(args)
    progress = None if args.quiet else Progress(run)
    clients = [SimClient(run, index) for index in range(args.clients)]
    started = time.monotonic()
    end = started + args.duration

    def interrupted(*_):
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C stops at once
        print("\nloadtest: interrupted, finishing the summary (Ctrl-C again to quit at once)", file=sys.stderr)
        run.interrupted = True
        run.stop.set()

    signal.signal(signal.SIGINT, interrupted)

    def launch():
        greenlets = []
        for index, client in enumerate(clients):
            at = started + (args.ramp_up * index / args.clients)
            if run.stop.wait(max(0.0, at - time.monotonic())):
                break
            greenlets.append(gevent.spawn(client.main))
        # wait until every client has connected or failed (a connect is bounded by --timeout)
        deadline = time.monotonic() + 2 * args.timeout + 1
        while run.connected + run.failed < len(greenlets) and time.monotonic() < deadline and not run.stop.is_set():
            gevent.sleep(0.05)
        run.all_started.set()
        return greenlets

    launcher = gevent.spawn(launch)
    next_tick = started + 1
    while not run.stop.is_set():
        now = time.monotonic()
        if now >= end:
            break
        run.stop.wait(min(next_tick, end) - now)
        if progress and time.monotonic() >= next_tick:
            progress.show(time.monotonic() - started)
            next_tick += 1
    run.stop.set()
    run.all_started.set()
    elapsed = time.monotonic() - started
    greenlets = launcher.get(timeout=2 * args.timeout + 5) or []
    # acks in flight when the time was up finish (bounded by --timeout); then late broadcasts get a grace
    gevent.joinall(greenlets, timeout=args.timeout + 1)
    if args.scenario == "broadcast":
        grace = time.monotonic() + min(args.timeout, 5)
        while run.messages < run.expected and time.monotonic() < grace:
            gevent.sleep(0.05)
        if run.messages < run.expected:
            run.errors["broadcast: not delivered"] += run.expected - run.messages
    # a connect still under way now is a failure too (each step is bounded by --timeout, but there are several)
    late = [client for client in clients if client.state == "connecting"]
    if late:
        run.failed += len(late)
        run.errors["connect failed: still connecting when the run ended"] += len(late)
    run.not_started = sum(client.state == "waiting" for client in clients)  # only after Ctrl-C
    run.closed = True
    if progress:
        progress.show(elapsed)
        progress.finish()
    closers = [gevent.spawn(client.close) for client in clients]
    gevent.joinall(closers, timeout=10)
    gevent.killall([g for g in greenlets if not g.dead], block=False)
    return summary(run, elapsed)


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summary(run, elapsed):
    args = run.args
    result = {
        "url": args.url,
        "scenario": args.scenario,
        "transport": args.transport,
        "drop_cookies": args.drop_cookies,
        "clients": args.clients,
        "connected": run.connected,
        "failed": run.failed,
        "not_started": run.not_started,
        "duration_s": round(elapsed, 2),
        "messages": run.messages,
        "messages_per_s": round(run.messages / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": run.latency.summary(),
        "connect_ms": run.connect_latency.summary(),
        "errors": dict(run.errors.most_common()),
        "instances": dict(sorted(run.instances.items())),
        "transports": dict(sorted(run.transports.items())),
        "cookies_seen": sorted(run.cookies_seen),
        "cookies_kept": sorted(run.cookies_kept),
        # near 100 (one core) means this process, not the server, set the pace: use more loadtest processes
        "loadtest_cpu_percent": round(100 * cpu_seconds() / elapsed) if elapsed > 0 else None,
    }
    if run.interrupted:
        result["interrupted"] = True
    if notes := limit_notes(result["errors"]):
        result["notes"] = notes
    if args.scenario == "echo":
        result["echo"] = {"rate_per_client": args.rate or None, "message_size": args.message_size}
    if args.scenario == "broadcast":
        result["broadcast"] = {
            "senders": min(args.senders, args.clients),
            "rate": args.rate,
            "sent": run.sent,
            "expected": run.expected,
            "delivered": run.messages,
        }
    return result


# --- command line ---------------------------------------------------------------------------------------
def positive(kind, maximum=None):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is above the limit of {maximum}")
        return value

    return parse


def non_negative(kind=float):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} {kind.__name__}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
        return value

    return parse


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="scripts/loadtest",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the load balancer's URL (default %(default)s)")
    parser.add_argument("--path", default="socket.io", help="the Socket.IO path (default %(default)s)")
    parser.add_argument(
        "--clients",
        type=positive(int),
        default=10,
        help=f"simulated clients, at most {MAX_CLIENTS} per process (default %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=positive(float, MAX_DURATION),
        default=10,
        help="seconds from the first connect to the end, ramp-up included (default %(default)s)",
    )
    parser.add_argument(
        "--ramp-up",
        type=non_negative(),
        default=0,
        help="seconds over which clients connect, evenly spread (default %(default)s: all at once)",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="echo", help="(default %(default)s)")
    parser.add_argument(
        "--transport",
        choices=sorted(TRANSPORTS),
        default="websocket",
        help="polling: long-polling only; websocket: polling handshake, then upgrade, as "
        "browsers do (default %(default)s)",
    )
    parser.add_argument(
        "--senders", type=positive(int), default=1, help="broadcast: clients that emit (default %(default)s)"
    )
    parser.add_argument(
        "--rate",
        type=non_negative(),
        default=None,
        help=f"echo: messages per second per client, 0 for no pacing (default {DEFAULT_RATE['echo']:g}: under "
        f"the template's EVENT_RATE limit); broadcast: emits per second per sender (default "
        f"{DEFAULT_RATE['broadcast']:g})",
    )
    parser.add_argument(
        "--message-size",
        type=non_negative(int),
        default=16,
        help="echo: padding characters in each message (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive(float, 600),
        default=10,
        help="seconds to wait for a connect or an ack (default %(default)s)",
    )
    parser.add_argument(
        "--drop-cookies",
        action="store_true",
        help="clients keep no cookies (a control: it fails behind cookie stickiness)",
    )
    parser.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    parser.add_argument(
        "--allow-errors", action="store_true", help="exit 0 even when clients failed or errors happened"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.clients > MAX_CLIENTS:
        parser.error(
            f"--clients {args.clients} is above the limit of {MAX_CLIENTS} per process: run several "
            "loadtest processes (on several machines for large tests) and add up their summaries"
        )
    if args.ramp_up > args.duration:
        parser.error(f"--ramp-up {args.ramp_up:g} is longer than --duration {args.duration:g}")
    if not re.match(r"^https?://", args.url):
        parser.error(f"--url {args.url!r} must start with http:// or https://")
    if args.rate is None:
        args.rate = DEFAULT_RATE.get(args.scenario, 0.0)
    if args.scenario == "broadcast" and not 0 < args.rate <= 1000:
        parser.error(f"--rate {args.rate:g}: broadcast needs a rate above 0 and at most 1000 per sender")
    args.senders = min(args.senders, args.clients)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_fd_limit(args.clients * FDS_PER_CLIENT + 64)
    result = run_load(args)
    print(json.dumps(result, indent=2))
    sys.stdout.flush()
    ok = result["failed"] == 0 and result["not_started"] == 0 and not result["errors"]
    return 0 if ok or args.allow_errors else 1


if __name__ == "__main__":
    sys.exit(main())
