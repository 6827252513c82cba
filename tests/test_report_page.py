"""`seal report`'s index.html on a ledger of thousands of self-edits, loaded in headless Chromium, and
the ledger reader's handling of corrupt lines."""

import html
import json
import random
import re
import shutil
import subprocess

import pytest

from seal_lightning.cli import main
from seal_lightning.outer.ledger import read_ledger

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
INJECTED = '<img src=x onerror="document.title=1"></script><b>bold</b>'  # model output is text, never HTML


def _browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.skip(
            "no headless Chromium on PATH (Debian: apt-get install chromium-headless-shell); .ci/run installs it"
        )
    return found


def _run_dir(tmp_path, n=5000):
    """A run directory with an ``n``-record ledger over 3 rounds, a test results.json with texts, a config."""
    rng = random.Random(0)
    run = tmp_path / "run"
    (run / "logs" / "version_0").mkdir(parents=True)
    records = []
    for i in range(n):
        epoch, context, sample = i // (n // 3 + 1), (i // 5) % 400, i % 5
        text = " ".join(
            rng.choice(["Velmora", "river", "copper", "founded", "1542", "mayor"]) for _ in range(rng.randint(3, 90))
        )
        reward = round(rng.uniform(-0.3, 0.5), 4)
        records.append(
            {
                "context_id": f"p{context}",
                "epoch": epoch,
                "global_step": i // 10,
                "sample": sample,
                "rank": 0,
                "text": INJECTED if i == 7 else text,
                "baseline": 0.1,
                "post": 0.1 + reward,
                "reward": reward,
                "kept": sample == 0,
                "inner_loss": 0.5,
                "seconds": 1.0,
            }
        )
    (run / "self_edits.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = []
    for j in range(6):
        rows.append({"context_id": f"t{j}", "condition": "base_self_edit", "f1": 0.1, "texts": [f"before {j}"]})
        rows.append({"context_id": f"t{j}", "condition": "self_edit", "f1": 0.1 + 0.05 * j, "texts": [INJECTED]})
    summary = {c: {"n": 6, "f1": 0.1, "f1_se": 0.01} for c in ("base_self_edit", "self_edit")}
    (run / "logs" / "version_0" / "results.json").write_text(
        json.dumps(
            {"stage": "test", "global_step": 9, "epoch": 2, "summary": summary, "labels": {}, "per_context": rows}
        )
    )
    (run / "logs" / "version_0" / "config.yaml").write_text("model:\n  model: tiny-random-llama\n")
    return run, records


def _dom(browser, page, fragment=""):
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"{page.as_uri()}{fragment}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _rewards(dom):
    body = dom.split('<table id="edits">', 1)[1]
    return [float(v) for v in re.findall(r'<tr class="[^"]*" data-reward="([-0-9.e]+)"', body)]


def test_page_of_5000_self_edits_loads_sorts_and_filters_in_chromium(tmp_path):
    run, records = _run_dir(tmp_path)
    main(["report", str(run)])
    page = run / "report" / "index.html"
    size = page.stat().st_size
    assert 1_000_000 < size < 8_000_000  # the whole ledger and the charts, embedded
    source = page.read_text()
    assert "<script src" not in source and "http://" not in source and "https://" not in source  # no network
    assert INJECTED not in source  # escaped in the embedded data
    browser = _browser()

    dom = _dom(browser, page)
    assert re.search(r'<span id="count">(\d+)</span>', dom)[1] == str(len(records))
    assert len(_rewards(dom)) == len(records)
    assert "<b>bold</b>" not in dom and html.escape(INJECTED, quote=False) in dom  # shown as text

    ranked = _rewards(_dom(browser, page, "#sort=reward&dir=desc"))
    assert ranked == sorted((r["reward"] for r in records), reverse=True)
    kept = _rewards(_dom(browser, page, "#kept=yes&round=1&min=0.2"))
    expected = [r["reward"] for r in records if r["kept"] and r["epoch"] == 1 and r["reward"] >= 0.2]
    assert kept == expected and 0 < len(kept) < len(records)

    heldout = dom.split('<table id="heldout">', 1)[1].split("</table>", 1)[0]
    assert heldout.count("<tr>") == 7 and "before 3" in heldout  # header + 6 contexts
    assert "f1: Δ 0.125 ± 0.038" in dom  # paired mean and standard error of 0, .05, ..., .25

    shot = tmp_path / "index.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1280,1600",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


def test_corrupt_ledger_lines_are_skipped_with_their_line_numbers(tmp_path):
    path = tmp_path / "self_edits.jsonl"
    good = [
        {"context_id": f"c{i}", "epoch": 0, "sample": i, "text": "t", "reward": 0.1 * i, "kept": False}
        for i in range(4)
    ]
    lines = [
        json.dumps(good[0]),
        json.dumps(good[1])[:-7] + "garbage",
        json.dumps(good[2]),
        "[1, 2]",
        json.dumps(good[3])[:25],
    ]  # a corrupt line, a non-record and a truncated last line (a killed write)
    path.write_text("\n".join(lines))
    with pytest.warns(UserWarning) as caught:
        records = read_ledger(path)
    assert records == [good[0], good[2]]
    messages = [str(w.message) for w in caught]
    assert [m.split(":")[1].strip() for m in messages] == ["line 2", "line 4", "line 5"]
    assert all(str(path) in m for m in messages)
