"""Runs inside an environment's unpack container, not on the host: that container has no
network and is not root. This program listens on the container's own loopback, carries
each connection to the index proxy (index.py), a unix socket the host mounted at the path
given first; then runs the command given after the output folder (uv, mounted read-only),
``{port}`` in its arguments replaced by the port it listens on; and, if that went well,
compiles what it installed and writes ``site.json`` into the output folder: where the
image's interpreter keeps its packages and scripts, and the files of each distribution
installed there already (the host lays the unpacked packages over those, layer.py). Exits
with the first status that is not 0.

Standard library only: it runs on the runner image's Python, mounted read-only from the
orchestrator's package, so the runner image needs nothing new for it.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import sysconfig
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


def describe(out: str) -> None:
    purelib = sysconfig.get_path("purelib")
    present = {}
    for name in sorted(os.listdir(purelib)) if os.path.isdir(purelib) else []:
        if name.endswith(".dist-info"):
            try:
                with open(os.path.join(purelib, name, "RECORD"), newline="") as f:
                    present[name] = [row[0] for row in csv.reader(f) if row]
            except OSError:
                present[name] = []
    site = {"purelib": purelib, "scripts": sysconfig.get_path("scripts"), "present": present}
    with open(os.path.join(out, "site.json"), "w") as f:
        json.dump(site, f)


def main(argv: list) -> int:
    path, out, *command = argv
    listener = socket.create_server(("127.0.0.1", 0))
    port = str(listener.getsockname()[1])
    threading.Thread(target=relay, args=(listener, path), daemon=True).start()
    status = subprocess.call([a.replace("{port}", port) for a in command], stdin=subprocess.DEVNULL)
    if status == 0:
        status = compile_all(os.path.join(out, "site"))
    if status == 0:
        describe(out)
    return status


def compile_all(site: str) -> int:
    """Bytecode for what the image's Python will import, made once here rather than in
    memory by every job (pytest's own imports take 0.68 s without it, 0.30 s with it); not
    for the tests that packages carry (half of numpy's files), which a project's suite
    rarely imports."""
    if not os.path.isdir(site):
        return 0
    return subprocess.call(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", "-x", r"[/\\]tests?[/\\]", site],
        stdin=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
