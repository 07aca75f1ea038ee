"""graft audit on the full shared datasets: what it finds of planted problems, and what it finds
in the datasets as they are.

* hymenoptera_256 corrupted (``tests/audit_data.py``: 10 train photos copied into val, every
  other one re-encoded at JPEG quality 60 and resized to 80%; 10 duplicated inside train; 10
  moved to the other class): leaks found (target >= 9), duplicates (10), flipped labels among
  the top 20 label issues (>= 7);
* every shared dataset as it is (hymenoptera_256, caltech101_10_160, sms_spam train+test, trec),
  with its findings by kind and the seconds it took;
* sms_spam with 10 train messages added to test (half with changed case and punctuation).

    python benchmarks/audit.py [--datasets hymenoptera_256,sms_spam]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA_DIR, ROOT, write_result

sys.path.insert(0, str(ROOT))
from tests.audit_data import image_copy, scored, text_copy  # noqa: E402

AS_IS = {
    "hymenoptera_256": [str(DATA_DIR / "hymenoptera_256")],
    "caltech101_10_160": [str(DATA_DIR / "caltech101_10_160")],
    "sms_spam": [str(DATA_DIR / "sms_spam" / "train.csv"), "--test",
                 str(DATA_DIR / "sms_spam" / "test.csv")],
    "trec": [str(DATA_DIR / "trec" / "train.csv"), "--test", str(DATA_DIR / "trec" / "test.csv")],
}


def audit(args: list[str], out: Path) -> tuple[dict, float]:
    """One ``graft audit`` with an empty feature cache of its own: the seconds are a first run's
    (features extracted), not a cache hit."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        subprocess.run([sys.executable, "-m", "graftkit.cli.main", "audit", *args, "--out",
                        str(out), "-q"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "GRAFT_CACHE_DIR": cache})
    return json.loads((out / "audit.json").read_text()), round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default=",".join(AS_IS))
    args = ap.parse_args()
    result: dict = {"load_avg_1m_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        planted = image_copy(DATA_DIR / "hymenoptera_256", tmp / "hym_bad")
        a, seconds = audit([str(tmp / "hym_bad")], tmp / "a_hym_bad")
        result["hymenoptera_256_corrupted"] = {**scored(a, planted), "planted": 10,
                                               "n": a["about"]["n"], "seconds": seconds,
                                               "checks": a["summary"]["checks"]}
        print("hymenoptera_256 corrupted:", result["hymenoptera_256_corrupted"], flush=True)
        planted = text_copy(DATA_DIR / "sms_spam", tmp / "sms_bad")
        a, seconds = audit([str(tmp / "sms_bad" / "train.csv"), "--test",
                            str(tmp / "sms_bad" / "test.csv")], tmp / "a_sms_bad")
        leaks = [f for f in a["findings"] if f["kind"] in ("leak", "near_leak")]
        hits = sum(any(x in f["items"] and y in f["items"] for f in leaks)
                   for x, y in planted["leaks"])
        result["sms_spam_injected"] = {"leaks_found": hits, "planted": 10, "seconds": seconds}
        print("sms_spam injected:", result["sms_spam_injected"], flush=True)
        result["as_is"] = {}
        for name in args.datasets.split(","):
            a, seconds = audit(AS_IS[name], tmp / f"a_{name}")
            top = {k: [{"items": f["items"], "splits": f["splits"], "labels": f["labels"],
                        "score": f["score"], "detail": f.get("detail", "")}
                       for f in a["findings"] if f["kind"] == k][:5]
                   for k in ("leak", "near_leak", "label_conflict", "exact_duplicate",
                             "label_issue")}
            result["as_is"][name] = {"n": a["about"]["n"], "seconds": seconds,
                                     "findings": a["summary"]["findings"],
                                     "imbalance_ratio": a["summary"]["imbalance_ratio"],
                                     "checks": a["summary"]["checks"], "examples": top}
            print(f"{name}: n={a['about']['n']} {seconds}s {a['summary']['findings']}",
                  flush=True)
    print(f"wrote {write_result('audit', result)}")


if __name__ == "__main__":
    main()
