"""Compile a bootstrap in a short-lived child process, so the caller never loads the schema.

Parsing needs protobuf and Envoy's generated messages (about 9 MB of a process's memory); the
long-lived main process only needs the compiled model, which the child hands back pickled.

    python -m fastproxy.config.isolated FILE   # pickled model on stdout, or errors on stderr
"""
from __future__ import annotations

import pickle
import subprocess
import sys


def load(path: str):
    """(model.Bootstrap, []) or (None, [error, ...]) for the file at `path`."""
    proc = subprocess.run([sys.executable, "-m", "fastproxy.config.isolated", path],
                          capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return pickle.loads(proc.stdout), []
    errors = [line for line in proc.stderr.decode("utf-8", "replace").splitlines() if line]
    return None, errors or ["configuration compiler exited with status %d" % proc.returncode]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fastproxy.config.isolated FILE", file=sys.stderr)
        return 2
    from fastproxy import config

    path = argv[0]
    try:
        bootstrap = config.load_bootstrap(path)
    except config.ConfigError as exc:
        for error in getattr(exc, "errors", None) or [str(exc)]:
            print(error, file=sys.stderr)
        return 1
    except OSError as exc:
        print("unable to read file: %s (%s)" % (path, exc.strerror or exc), file=sys.stderr)
        return 1
    sys.stdout.buffer.write(pickle.dumps(bootstrap, protocol=pickle.HIGHEST_PROTOCOL))
    return 0


if __name__ == "__main__":
    sys.exit(main())
