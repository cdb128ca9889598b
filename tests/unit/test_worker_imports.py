"""A worker gets the compiled model from the main process and must not load Envoy's schema
(protobuf and xds-protos cost ~9 MB per process): idle memory below Envoy's depends on it."""
import os
import pickle
import subprocess
import sys

from fastproxy.config import load_bootstrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "bootstrap.yaml")

CHILD = r"""
import pickle, sys
import fastproxy.server.worker
import fastproxy._core.connection
from fastproxy.stats import StatsLayout
b = pickle.load(open(sys.argv[1], "rb"))
StatsLayout(b, [l.address.port for l in b.listeners])
heavy = sorted(m for m in sys.modules if m.startswith(("google.protobuf", "envoy.")))
print(",".join(heavy))
"""


def test_worker_does_not_import_the_schema(tmp_path):
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump(load_bootstrap(EXAMPLE), f)
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


MAIN_CHILD = r"""
import sys
import fastproxy.cli
import fastproxy.server.main
import fastproxy.admin.server
import fastproxy.upstream.health
from fastproxy.config import isolated
b, errors = isolated.load(sys.argv[1])
assert b is not None and not errors, errors
heavy = sorted(m for m in sys.modules if m.startswith(("google.protobuf", "envoy.")))
print(",".join(heavy))
"""


def test_main_process_compiles_the_config_in_a_child():
    out = subprocess.run([sys.executable, "-c", MAIN_CHILD, EXAMPLE], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_child_reports_every_error_with_its_path(tmp_path):
    from fastproxy.config import isolated
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(EXAMPLE).read().replace("stat_prefix: ingress_http",
                                                "stat_prefix: ingress_http\n          tracing: {}"))
    model, errors = isolated.load(str(bad))
    assert model is None
    assert any("tracing: not supported" in e for e in errors), errors
