"""`seal report` on a real (tiny) two-round run: plots, report.md and index.html; `seal collect`'s log parsing;
the per-phase time and memory figures."""

import json
import mmap
import time

import pytest
import torch
from conftest import CONFIGS

from seal_lightning.cli import main
from seal_lightning.cli.collect import collect, resumed_stats, time_stats
from seal_lightning.utils import Span, rss_bytes

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_writes_plots_and_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONFIGS / "tiny.yaml"), "--trainer.max_epochs", "2", "--test_after_fit", "true"])
    run = tmp_path / "checkpoints" / "tiny"
    main(["report", str(run)])
    assert "report.md" in capsys.readouterr().out
    out = run / "report"
    for name in (
        "rewards.png",
        "training.png",
        "conditions.png",
        "rounds.png",
        "length_vs_reward.png",
        "deltas.png",
        "rounds_deltas.png",
    ):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    report = (out / "report.md").read_text()
    assert "24 self-edits over 2 round(s) and 4 contexts" in report  # 4 passages x K=3 x 2 rounds
    assert "test (step" in report and "no_update" in report and "oracle" in report
    assert report.count("![") == 7 and "## Best self-edits" in report and "## Worst self-edits" in report
    assert "## Validation by ReST-EM round" in report and "self_edit (round 2)" in report  # val each epoch
    assert report.count("round 1, sample") + report.count("round 0, sample") == 6
    # the page embeds the same ledger, the held-out self-edits and the run's command and commit
    page = (out / "index.html").read_text()
    data = json.loads(page.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0])
    assert len(data["ledger"]) == 24 and len(data["charts"]) == 7 and "model: tiny-random-llama" in data["config"]
    assert len(data["heldout"]["rows"]) == 2 and all(len(r["texts"]) == 1 for r in data["heldout"]["rows"])
    (invocation,) = json.loads((run / "run.json").read_text())["invocations"]
    assert invocation["command"][:2] == ["seal", "fit"] and data["invocations"] == [invocation]
    assert invocation["commit"] is None or len(invocation["commit"]) == 40


def test_report_on_a_directory_without_a_ledger_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no self_edits.jsonl, logs/version_.*/results.json or rounds.json"):
        main(["report", str(tmp_path)])


def test_collect_reads_gnu_time_figures_and_names_a_log_without_them(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(
        'Epoch 2: done\n\tCommand being timed: "python -m seal_lightning fit"\n'
        "\tPercent of CPU this job got: 198%\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:45:47\n"
        "\tMaximum resident set size (kbytes): 15412344\n\tExit status: 0\n"
    )
    assert time_stats(log) == {"cpu_percent": "198%", "wall_clock": "1:45:47", "peak_rss_gb": 15.78, "exit_status": 0}
    resumed = tmp_path / "resumed.log"  # the run resumed with --ckpt_path last
    resumed.write_text(log.read_text().replace("1:45:47", "39:15.11").replace("15412344", "6705668"))
    both = resumed_stats([log, resumed])
    assert both["wall_clock"] == "2:25:02.11" and both["peak_rss_gb"] == 15.78 and both["exit_status"] == 0
    assert both["parts"] == [time_stats(log), time_stats(resumed)] and resumed_stats([log]) == time_stats(log)
    log.write_text("Command terminated by signal 9\n" + log.read_text())
    assert time_stats(log)["terminated_by_signal"] == 9
    log.write_text("Killed\n")
    with pytest.raises(ValueError, match=r"run.log: no 'Maximum resident set size' line"):
        time_stats(log)
    with pytest.raises(FileNotFoundError, match="no rounds.json nor evaluations"):
        collect(tmp_path, tmp_path / "out")


def test_span_sees_a_short_lived_allocation_and_its_time():
    # Fresh anonymous pages: a tensor could reuse heap pages freed earlier in the session and
    # leave the resident size unchanged (it did in CI, with 7.6 GB resident).
    before = rss_bytes()
    with Span(interval=0.01) as span:
        pages = mmap.mmap(-1, 400_000_000)
        block = torch.frombuffer(pages, dtype=torch.uint8)
        block.fill_(1)  # 0.4 GB made resident, gone before the span ends
        time.sleep(0.2)
        deadline = time.monotonic() + 10  # a loaded machine may schedule the sampler late
        while span.peak - before < 0.35e9 and time.monotonic() < deadline:
            time.sleep(0.01)
        del block
        pages.close()
    stats = span.stats("x/")
    assert stats["x/seconds"] >= 0.2 and stats["x/peak_rss_gb"] * 1e9 - before > 0.35e9
    assert rss_bytes() - before < 0.1e9
