"""Run a Sentinel edge bundle with ONNX Runtime only (no torch, transformers or Ray).

The bundle is what ``sentinel models export-onnx ... --out edge/model.onnx`` writes:
``model.onnx`` and its tokenizer directory ``model.tokenizer/`` (``tokenizer.json``
is read with the ``tokenizers`` library). Install on the device with
``pip install -r deploy/edge/requirements.txt`` (see deploy/EDGE.md).

    python run_bundle.py edge/model.onnx "great phone" "battery died in a day"
    python run_bundle.py edge/model.onnx --bench 200 --json

Prints one line per text (label index and probabilities), or with ``--json`` a
JSON object that also has latency and peak memory figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

META_TOKENIZER = "sentinel.tokenizer_dir"


class EdgeBundle:
    """An exported classifier and its tokenizer."""

    def __init__(self, model: Path, threads: int | None = None, max_length: int = 128) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        tok_dir = model.with_name(meta.get(META_TOKENIZER, model.stem + ".tokenizer"))
        self.tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        config = json.loads((tok_dir / "tokenizer_config.json").read_text()) if (tok_dir / "tokenizer_config.json").is_file() else {}
        limit = int(config.get("model_max_length") or max_length)
        self.tokenizer.enable_truncation(min(max_length, limit if limit < 10**6 else max_length))
        pad_token = config.get("pad_token") or "[PAD]"
        pad_id = self.tokenizer.token_to_id(pad_token if isinstance(pad_token, str) else "[PAD]") or 0
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token if isinstance(pad_token, str) else "[PAD]")
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(list(texts))
        given = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        return self.session.run(["logits"], {name: given[name] for name in self.inputs})[0]


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Reads ``VmHWM`` (the high-water mark of this process's own address space) where
    Linux provides it: ``ru_maxrss`` survives ``exec``, so a runner started from a
    large parent (a Python process with torch loaded) would report the parent's size.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model.onnx of the bundle")
    parser.add_argument("texts", nargs="*", help="texts to classify")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--bench", type=int, default=0, help="also time this many single-text runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_intermixed_args(argv)

    started = time.perf_counter()
    bundle = EdgeBundle(args.model, args.threads, args.max_length)
    load_s = time.perf_counter() - started
    texts = args.texts or ["the battery lasts all day", "it broke after a week"]
    probs = _softmax(bundle.logits(texts))
    result = {"labels": probs.argmax(-1).tolist(), "probabilities": probs.round(4).tolist(), "load_s": round(load_s, 3)}
    if args.bench:
        times = []
        for i in range(args.bench):
            t = time.perf_counter()
            bundle.logits([texts[i % len(texts)]])
            times.append(time.perf_counter() - t)
        result["latency_ms_p50"] = round(float(np.median(times)) * 1000, 3)
        result["latency_ms_p95"] = round(float(np.percentile(times, 95)) * 1000, 3)
    result["peak_rss_mb"] = peak_rss_mb()
    result["torch_loaded"] = "torch" in sys.modules
    if args.json:
        print(json.dumps(result))
    else:
        for text, label, p in zip(texts, result["labels"], result["probabilities"]):
            print(f"{label}\t{p}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
