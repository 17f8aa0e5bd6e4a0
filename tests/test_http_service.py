"""`psml-bench serve` in a subprocess on loopback: same answers as in process, budgets under races, errors, shutdown.

One server per module (it takes a few seconds to start); every request loop is bounded in count
and in time.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from psml_bench import BudgetExhausted, PsmlError, Spec
from psml_bench.serving.http_client import HttpClient, HttpTarget
from psml_bench.serving.http_wire import NPY, SAFETENSORS
from psml_bench.isolation.attack_process import PluginLocator, run_attack
from psml_bench.contract.registries import make_defense
from psml_bench.common.metrics import predict_labels
from psml_bench.contract.target import Knowledge
from psml_bench.serving.frontend import Frontend
from psml_bench.contract.spec import SpecRange

# the server runs `psml-bench serve` (FastAPI); none of the imports above needs fastapi or httpx
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

KEYS = {"attacker": 80, "race": 50, "free": None, "op": {"budget": None, "operator": True}}
START_TIMEOUT_S = 120
MAX_BODY_MB = 1


def _cli(cache_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "psml_bench.cli", "--cache", str(cache_dir), *args]


@pytest.fixture(scope="module")
def live(tiny_zoo, cache_dir, tmp_path_factory):
    """A server on a free loopback port: (process, base URL, stderr lines). It routes with the queue-blind
    policy, so that its answers can equal the in-process server's (the SLO-aware policy's choices depend on
    the queues at the moment: tests/test_slo_serving.py)."""
    keys = tmp_path_factory.mktemp("serve") / "keys.json"
    keys.write_text(json.dumps(KEYS))
    process = subprocess.Popen(_cli(cache_dir, "serve", "fmnist-tiny", "--port", "0", "--keys", str(keys),
                                    "--threads", "1", "--max-wait-ms", "1", "--max-body-mb", str(MAX_BODY_MB),
                                    "--policy", "infaas"),
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + START_TIMEOUT_S
    while url is None and time.monotonic() < deadline and process.poll() is None:
        line = process.stderr.readline()
        lines.append(line)
        match = re.search(r"on (http://\S+)", line)
        url = match.group(1) if match else None
    assert url, f"server did not start: {''.join(lines)}"
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/service", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield process, url, lines
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server's forward passes
    yield
    torch.set_num_threads(threads)


def test_service_describes_what_a_client_may_know(live, tiny_zoo):
    _, url, _ = live
    info = httpx.get(f"{url}/v1/service", timeout=10).json()
    assert info["input_shape"] == list(tiny_zoo.input_shape) and info["num_classes"] == tiny_zoo.num_classes
    assert info["spec_range"] == {"accuracy": list(tiny_zoo.accuracy_range),
                                  "latency_ms": list(tiny_zoo.latency_range_ms)}
    schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/v1/service", "/v1/query", "/v1/budget", "/metrics"} <= set(schema["paths"])


def test_http_answers_equal_the_in_process_server(live, tiny_zoo, one_thread):
    _, url, _ = live
    x = tiny_zoo.splits["attacker_x"][:40]
    specs = SpecRange(tiny_zoo.accuracy_range, tiny_zoo.latency_range_ms).sample(40, np.random.default_rng(3))
    local = Frontend(tiny_zoo, defense=make_defense("none"), rng=np.random.default_rng(0))
    expected = local.query(x, specs)
    target = HttpTarget(url, "free")
    answers = target.query(x, specs)
    assert torch.equal(answers, expected)
    assert not target.last_refused.any() and (target.last_latency_ms > 0).all()
    assert target.remaining_budget is None
    one_spec = target.query(x[:5], specs[0])
    assert torch.equal(one_spec, local.query(x[:5], specs[0]))


def test_isolated_attack_through_http_gives_the_in_process_surrogate(live, tiny_zoo):
    """Identical answers give an identical surrogate: the attack runs as in cells, behind HttpClient."""
    _, url, _ = live
    params = (("epochs", 1), ("min_steps", 20))
    budget = KEYS["attacker"]
    labels, used = [], []
    for remote in (False, True):
        server = HttpClient(url, "attacker") if remote else Frontend(
            tiny_zoo, defense=make_defense("none"), rng=np.random.default_rng(0), budget=budget)
        knowledge = Knowledge(input_shape=tiny_zoo.input_shape, num_classes=tiny_zoo.num_classes,
                              spec_range=SpecRange(tiny_zoo.accuracy_range, tiny_zoo.latency_range_ms),
                              pool=tiny_zoo.splits["attacker_x"], role="rank:2")
        surrogate = run_attack(server, PluginLocator("psml", params), knowledge, budget,
                               np.random.default_rng([0, 1]), timeout_s=300)
        labels.append(predict_labels(surrogate, tiny_zoo.splits["test_x"], tiny_zoo.num_classes))
        used.append(server.sent if remote else server.used)
    assert np.array_equal(labels[0], labels[1])
    assert used[0] == used[1] == budget
    assert httpx.get(f"{url}/v1/budget", headers={"X-API-Key": "attacker"}, timeout=10).json() == \
        {"budget": budget, "used": budget, "remaining": 0, "operator": False}


def test_attack_command_writes_a_surrogate_and_a_scored_summary(live, tiny_zoo, tmp_path):
    from psml_bench.bench.remote_attack import attack_endpoint

    _, url, _ = live
    result = attack_endpoint(url, "free", "naive:epochs=1,min_steps=5", out_dir=tmp_path, budget=30,
                             role="rank:1", zoo=tiny_zoo, timeout_s=300)
    summary = json.loads(result.summary_path.read_text())
    assert summary["queries"] == 30 and summary["victim_model"] == tiny_zoo.role("rank:1")
    assert 0 <= summary["fidelity"] <= 1 and 0 <= summary["accuracy"] <= 1
    state = safetensors.torch.load_file(str(result.surrogate_path))
    assert "mean" in state and len(state) > 2


def test_budget_is_never_exceeded_under_concurrent_clients(live, tiny_zoo):
    _, url, _ = live
    x = tiny_zoo.splits["attacker_x"][:3]
    spec = Spec(float(np.mean(tiny_zoo.accuracy_range)), float(np.mean(tiny_zoo.latency_range_ms)))
    deadline = time.monotonic() + 60

    def client(_: int) -> tuple[int, int]:
        http = HttpClient(url, "race")
        served = rejected = 0
        for _attempt in range(8):  # bounded in count and in time
            if time.monotonic() > deadline:
                break
            try:
                http.query(x, spec)
                served += len(x)
            except BudgetExhausted:
                rejected += 1
        http.close()
        return served, rejected

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(client, range(16)))
    served = sum(s for s, _ in outcomes)
    assert served == 48  # 16 queries of 3 fit in 50; the 17th would not
    assert sum(r for _, r in outcomes) == 16 * 8 - 16
    assert httpx.get(f"{url}/v1/budget", headers={"X-API-Key": "race"}, timeout=10).json()["used"] == 48
    assert 'psml_budget_rejections_total 112.0' in httpx.get(f"{url}/metrics", timeout=10).text


def _safetensors(**tensors) -> bytes:
    return safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()})


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


GOOD_SPEC = torch.tensor([0.8, 1.0], dtype=torch.float64)
IMAGE = (1, 28, 28)
MALFORMED = {
    "bad encoding": ({"content-type": SAFETENSORS}, b"not a safetensors file", 400),
    "unknown content type": ({"content-type": "application/json"}, b"[[0.1]]", 400),
    "bad npy": ({"content-type": NPY}, b"\x93NUMPY garbage", 400),
    "wrong shape": ({"content-type": SAFETENSORS}, _safetensors(inputs=torch.rand(2, 28, 28), spec=GOOD_SPEC), 422),
    "wrong dtype": ({"content-type": SAFETENSORS},
                    _safetensors(inputs=torch.randint(0, 255, (2, *IMAGE), dtype=torch.uint8), spec=GOOD_SPEC), 422),
    "nan": ({"content-type": SAFETENSORS},
            _safetensors(inputs=torch.full((2, *IMAGE), float("nan")), spec=GOOD_SPEC), 422),
    "inf": ({"content-type": NPY}, _npy(np.full((2, *IMAGE), np.inf, dtype=np.float32)), 422),
    "empty batch": ({"content-type": SAFETENSORS}, _safetensors(inputs=torch.rand(0, *IMAGE), spec=GOOD_SPEC), 422),
    "spec outside ranges": ({"content-type": SAFETENSORS},
                            _safetensors(inputs=torch.rand(2, *IMAGE),
                                         spec=torch.tensor([1.5, 1.0], dtype=torch.float64)), 422),
    "spec of the wrong shape": ({"content-type": SAFETENSORS},
                                _safetensors(inputs=torch.rand(2, *IMAGE), spec=torch.rand(3, 2).double()), 422),
    "no spec": ({"content-type": NPY}, _npy(np.zeros((2, *IMAGE), dtype=np.float32)), 422),
    "payload above the limit": ({"content-type": SAFETENSORS},
                                _safetensors(inputs=torch.rand(400, *IMAGE), spec=GOOD_SPEC), 413),
    "missing key": ({"content-type": SAFETENSORS, "X-API-Key": ""}, b"", 401),
    "unknown key": ({"content-type": SAFETENSORS, "X-API-Key": "nobody"}, b"", 403),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_get_a_one_line_4xx_and_the_server_keeps_serving(live, case):
    _, url, _ = live
    headers, body, status = MALFORMED[case]
    response = httpx.post(f"{url}/v1/query", content=body, timeout=30,
                          headers={"X-API-Key": "free", **headers})
    assert response.status_code == status
    assert "\n" not in response.text.strip() and set(response.json()) == {"error"} and response.json()["error"]
    good = httpx.post(f"{url}/v1/query", params={"min_accuracy": 0.8, "max_latency_ms": 1.0}, timeout=30,
                      content=_npy(np.zeros((2, *IMAGE), dtype=np.float32)),
                      headers={"X-API-Key": "free", "content-type": NPY})
    assert good.status_code == 200


def test_metrics_count_batches_per_model_and_latency(live):
    _, url, _ = live
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert re.search(r'psml_batches_total\{model="[^"]+"\} [1-9]', text)
    assert "psml_query_latency_seconds_bucket" in text and 'psml_requests_total{code="200"}' in text


def test_refuses_to_start_on_a_busy_port_or_an_unbuilt_zoo(live, cache_dir, tmp_path):
    _, url, _ = live
    port = url.rsplit(":", 1)[1]
    busy = subprocess.run(_cli(cache_dir, "serve", "fmnist-tiny", "--port", port), capture_output=True, text=True,
                          timeout=120)
    unbuilt = subprocess.run(_cli(tmp_path, "serve", "fmnist-tiny", "--port", "0"), capture_output=True, text=True,
                             timeout=120)
    for result, words in ((busy, "port is busy"), (unbuilt, "not built")):
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr


def test_load_drives_loadgen_server_scenario(live, tiny_zoo, tmp_path):
    from psml_bench.serving.loadgen import measure_capacity, run_load

    _, url, _ = live
    report = run_load(url, "op", tiny_zoo, qps=20, duration_s=1.5, latency_bound_ms=2000,
                      log_dir=tmp_path)
    assert report.issued >= 15 and report.answered == report.issued
    assert report.verdict in ("VALID", "INVALID") and report.valid == (report.verdict == "VALID")
    assert 0 < report.latency_p50_ms <= report.latency_p99_ms and 0 <= report.goodput <= 1
    assert 0 < report.loadgen_p99_ms  # LoadGen saw every sample completed
    assert (tmp_path / "mlperf_log_summary.txt").is_file()
    assert measure_capacity(url, "op", tiny_zoo, seconds=0.5, clients=4) > 0
    with pytest.raises(PsmlError, match="operator key"):
        run_load(url, "free", tiny_zoo, qps=20, duration_s=1.0)


def test_sigterm_shuts_the_server_down_cleanly(live):
    """Runs last in this module: it stops the module's server."""
    process, _, lines = live
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    time.sleep(0.2)
    assert any("stopped" in line for line in lines), "".join(lines)
    assert not any("Traceback" in line for line in lines), "".join(lines)
