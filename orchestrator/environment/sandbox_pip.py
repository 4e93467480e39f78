"""Runs inside an environment's resolution container, not on the host: that container has
no network and is not root. This program listens on the container's own loopback, carries
each connection to the index proxy (index.py), a unix socket the host mounted at the path
given first, then runs ``python -m pip`` with the remaining arguments, ``{port}`` in them
replaced by the port it listens on, and exits with pip's status.

Standard library only: it runs on the runner image's Python, mounted read-only from the
orchestrator's package, so the runner image needs nothing new for it.
"""

import socket
import subprocess
import sys
import threading


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def relay(listener: socket.socket, path: str) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(path)
        except OSError:
            client.close()
            upstream.close()
            continue
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(source, sink), daemon=True).start()


def main(argv: list) -> int:
    path, *pip_args = argv
    listener = socket.create_server(("127.0.0.1", 0))
    port = str(listener.getsockname()[1])
    threading.Thread(target=relay, args=(listener, path), daemon=True).start()
    return subprocess.call(
        [sys.executable, "-m", "pip", *(a.replace("{port}", port) for a in pip_args)], stdin=subprocess.DEVNULL
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
