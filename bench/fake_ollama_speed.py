"""How fast is the fake Ollama? It must not be the bottleneck of the benchmarks it serves.

Starts `python -m jobpipe.sim.ollama` as its own process (as bench/embedder.py does), then
embeds batches of realistic posting texts from several client threads through jobpipe's own
EmbeddingClient, with zero simulated latency, and prints one line:

    fake_ollama_speed: 5400 embeds/s (169 requests/s) model=nomic-embed-text dim=768 batch=32 threads=4 ...

Usage: python bench/fake_ollama_speed.py [--seconds 5] [--batch 32] [--threads 4] [--in-process]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobpipe.models import make_embedding_client  # noqa: E402
from jobpipe.sim.ollama import FakeOllama  # noqa: E402

_VOCABULARY = (
    "Koch Köchin Vollzeit Teilzeit Berlin München Hamburg Pflegefachkraft Softwareentwickler Java "
    "Lagerlogistik Fachkraft Kundenservice Erfahrung Team Aufgaben Profil Wir bieten unbefristet "
    "Arbeitsvertrag Weiterbildung Schichtdienst Führerschein Klasse Elektroniker Betriebstechnik "
    "Steuerfachangestellte Buchhaltung Verkäufer Einzelhandel Medizinische Fachangestellte Praxis"
)
WORDS = _VOCABULARY.split()


def posting_text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:chars]


def start_process(capacity: int | None) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "jobpipe.sim.ollama", "--port", "0"]
    if capacity:
        cmd += ["--capacity", str(capacity)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"fake did not start: {url!r}")
    return proc, url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--chars", type=int, default=400, help="characters per text (a posting's embed text)")
    ap.add_argument("--model", default="nomic-embed-text")
    ap.add_argument("--in-process", action="store_true", help="run the fake in this process (shares the GIL)")
    a = ap.parse_args()

    rng = random.Random(7)
    texts = [posting_text(rng, a.chars) for _ in range(a.batch * 64)]
    proc = None
    fake = None
    if a.in_process:
        fake = FakeOllama().start()
        url = fake.url
    else:
        proc, url = start_process(None)
    client = make_embedding_client("ollama", [url], a.model, a.threads, 3.0, 30.0)
    client.embed(texts[: a.batch])  # warm up: connections, numpy

    counts = [0] * a.threads
    requests = [0] * a.threads
    stop_at = time.monotonic() + a.seconds

    def worker(k: int) -> None:
        i = k
        while time.monotonic() < stop_at:
            start = (i * a.batch) % (len(texts) - a.batch)
            vectors = client.embed(texts[start : start + a.batch])
            counts[k] += len(vectors)
            requests[k] += 1
            i += a.threads

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    client.close()
    if fake is not None:
        fake.stop()
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=10)
    total, reqs = sum(counts), sum(requests)
    where = "in-process" if a.in_process else "separate-process"
    print(
        f"fake_ollama_speed: {total / elapsed:.0f} embeds/s ({reqs / elapsed:.0f} requests/s) "
        f"model={a.model} batch={a.batch} threads={a.threads} chars={a.chars} fake={where} "
        f"seconds={elapsed:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
