"""nginx in front of several server processes on one port, as ``docs/deployment.md`` says.

Each server process runs with its own ``WORKER_PREFIX`` (``/w1``, ``/w2``, ...) and the
same ``PUBLIC_BASE_URL`` (the proxy's origin). The proxy routes:

- ``<prefix>/...`` to that prefix's process, the path passed on unchanged (the server
  checks Twilio's signature against the whole path);
- everything else (the voice webhook, the dashboard, the API) to any process, round robin.

The process that answers a call's voice webhook names its prefix in the TwiML's stream
URL and in the call's callbacks, so the stream and the callbacks reach the process that
issued the call's stream token: no state is shared between the processes but the
databases.

Used by ``tests/test_workers_e2e.py`` and ``make bench`` (``BENCH_WORKERS``). Needs the
``nginx`` binary (Debian package ``nginx-light``; ``make test-deps`` installs it). nginx
directives: https://nginx.org/en/docs/http/ngx_http_proxy_module.html and
https://nginx.org/en/docs/http/websocket.html (the WebSocket upgrade).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from offline.server_process import free_port, server_process, serving

__all__ = ["nginx_binary", "nginx_config", "nginx_proxy", "workers_behind_nginx"]


def nginx_binary() -> str | None:
    """The path of the ``nginx`` program (``/usr/sbin`` is often not on a user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def nginx_config(port: int, workers: dict[str, int], folder: Path) -> str:
    """An nginx configuration for server processes sharing one port.

    Args:
        port: The port nginx listens on (127.0.0.1).
        workers: ``WORKER_PREFIX`` -> the port of that server process, e.g.
            ``{"/w1": 8001, "/w2": 8002}``.
        folder: Where nginx keeps its pid file and temporary files.

    Returns:
        The configuration text (``nginx -c``).
    """
    upstream = "\n".join(f"        server 127.0.0.1:{p};" for p in workers.values())
    locations = "\n".join(
        f"        location {prefix}/ {{ proxy_pass http://127.0.0.1:{p}; }}" for prefix, p in workers.items()
    )
    temp = "\n".join(
        f"    {kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream any_worker {{
{upstream}
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header Host $host;
        proxy_read_timeout 1h;  # a media stream is one connection for the whole call
        proxy_send_timeout 1h;
        proxy_buffering off;
{locations}
        location / {{ proxy_pass http://any_worker; }}
    }}
}}
"""


@contextmanager
def nginx_proxy(port: int, workers: dict[str, int], folder: Path, start_timeout_s: float = 10.0) -> Iterator[str]:
    """Run nginx in front of the server processes; yield its base URL.

    Args:
        port: The port to listen on.
        workers: ``WORKER_PREFIX`` -> server port (see :func:`nginx_config`).
        folder: For the configuration, pid and logs.
        start_timeout_s: How long to wait for ``GET /health`` through the proxy, in s.

    Raises:
        RuntimeError: If nginx is not installed, exits, or does not answer in time
            (with its error log).
    """
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is missing: install it with 'sudo apt-get install nginx-light'")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "nginx.conf"
    config.write_text(nginx_config(port, workers, folder))
    errors = folder / "nginx-error.log"
    url = f"http://127.0.0.1:{port}"
    with serving([binary, "-p", str(folder), "-c", str(config), "-e", str(errors)], url, errors, name="nginx",
                 start_timeout_s=start_timeout_s, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT):
        yield url


@contextmanager
def workers_behind_nginx(workdir: Path, processes: int, **env: str) -> Iterator[tuple[str, list[str]]]:
    """Server processes ``/w1`` .. ``/w<n>`` behind one nginx port, sharing the databases.

    Each runs with ``WORKER_PREFIX=/w<n>`` and the proxy's origin as ``PUBLIC_BASE_URL``.

    Args:
        workdir: Holds the shared databases, a folder per process and nginx's folder.
        processes: How many server processes.
        **env: Environment for every server process (see :func:`server_process`).

    Yields:
        ``(proxy URL, [each process's own URL])``.

    Raises:
        RuntimeError: If a server or nginx does not start.
    """
    port = free_port()
    shared = {"PUBLIC_BASE_URL": f"http://127.0.0.1:{port}", "CALLS_DB_PATH": str(workdir / "calls.db"),
              "DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'booking.db'}"}
    with ExitStack() as stack:
        urls = {}
        for n in range(1, processes + 1):
            folder = workdir / f"w{n}"
            folder.mkdir(exist_ok=True)
            url, _log = stack.enter_context(server_process(folder, **{**env, **shared, "WORKER_PREFIX": f"/w{n}"}))
            urls[f"/w{n}"] = url
        ports = {prefix: int(url.rsplit(":", 1)[1]) for prefix, url in urls.items()}
        yield stack.enter_context(nginx_proxy(port, ports, workdir / "nginx")), list(urls.values())
